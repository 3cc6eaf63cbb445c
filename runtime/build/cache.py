"""The build cache: which image config a step produced from a parent, like Docker's
classic builder.

A step's key is the sha256 of (the parent state's id, the step's instruction as
expanded, and what else it reads: build args for RUN, the sources' content digest for
COPY/ADD, the source stage's id for `--from`). The record `<root>/build/cache/<key>.json`
holds the resulting image config, byte for byte, so a cached step gives the same id as
the first build. A record whose layers are no longer stored (an `rmi` garbage-collected
them) is a miss.
"""

import hashlib
import json
import os
from typing import TYPE_CHECKING

from pyinspect.runtime.fsutil import atomic_write

if TYPE_CHECKING:
    from pyinspect.runtime.images import ImageStore


def step_key(parent_id: str, parts: list) -> str:
    """The cache key of a step: parent state id + the step's inputs (JSON-able)."""
    data = json.dumps([parent_id, parts], separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(data.encode("utf-8", "surrogateescape")).hexdigest()


class BuildCache:
    """Records under `<root>/build/cache`."""

    def __init__(self, root: str | os.PathLike, store: "ImageStore") -> None:
        self.dir = os.path.join(os.fspath(root), "build", "cache")
        self.store = store

    def get(self, key: str) -> bytes | None:
        """The config bytes recorded for `key`, or None (missing, damaged or layers gone)."""
        try:
            with open(os.path.join(self.dir, f"{key}.json"), "rb") as f:
                rec = json.loads(f.read())
            config = rec["config"].encode("utf-8", "surrogateescape")
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if not all(self.store.has_layer(d) for d in diff_ids):
            return None
        return config

    def put(self, key: str, config_bytes: bytes) -> None:
        os.makedirs(self.dir, exist_ok=True)
        data = json.dumps({"config": config_bytes.decode("utf-8", "surrogateescape")})
        with atomic_write(os.path.join(self.dir, f"{key}.json")) as f:
            f.write(data.encode("utf-8", "surrogateescape"))
