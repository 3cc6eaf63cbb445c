"""A build's image state: the OCI image config after each step, and its layer dirs.

A state's id is the sha256 of its config bytes, exactly as a stored image's id is;
the last state of the target stage is stored as the built image.
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyinspect.runtime.images import ImageStore

DEFAULT_SHELL = ["/bin/sh", "-c"]


def now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


@dataclass
class ImageState:
    """An image config (parsed and its exact bytes) with its id."""

    config: dict
    config_bytes: bytes
    id: str

    @classmethod
    def from_bytes(cls, data: bytes) -> "ImageState":
        return cls(
            config=json.loads(data),
            config_bytes=data,
            id="sha256:" + hashlib.sha256(data).hexdigest(),
        )

    @classmethod
    def scratch(cls) -> "ImageState":
        cfg = {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [],
        }
        return cls.from_bytes(json.dumps(cfg, sort_keys=True).encode())

    @property
    def short_id(self) -> str:
        return self.id[7:19]

    @property
    def diff_ids(self) -> list[str]:
        return list(self.config.get("rootfs", {}).get("diff_ids") or [])

    @property
    def settings(self) -> dict:
        """The config's "config" part: Env, Cmd, Entrypoint, WorkingDir..."""
        return self.config.get("config") or {}

    def layer_dirs(self, store: "ImageStore") -> list[str]:
        """Overlay lower dirs, base first (a repeated layer keeps its topmost place)."""
        hexes = [d.split(":", 1)[-1] for d in self.diff_ids]
        return [
            os.path.join(store.layers, h) for i, h in enumerate(hexes) if h not in hexes[i + 1 :]
        ]

    def env(self) -> dict:
        out = {}
        for item in self.settings.get("Env") or []:
            k, _, v = item.partition("=")
            out[k] = v
        return out

    def shell(self) -> list[str]:
        return list(self.settings.get("Shell") or DEFAULT_SHELL)

    def derive(
        self, created_by: str, settings: dict | None = None, diff_id: str | None = None
    ) -> "ImageState":
        """A new state: `settings` replaces the "config" part, `diff_id` adds a layer, and
        a history entry records `created_by`."""
        cfg = json.loads(self.config_bytes)
        created = now_rfc3339()
        cfg["created"] = created
        if settings is not None:
            cfg["config"] = settings
        rootfs = cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
        rootfs.setdefault("diff_ids", [])
        hist: dict[str, object] = {"created": created, "created_by": created_by}
        if diff_id:
            rootfs["diff_ids"].append(diff_id)
        else:
            hist["empty_layer"] = True
        cfg.setdefault("history", []).append(hist)
        cfg.setdefault("architecture", "amd64")
        cfg.setdefault("os", "linux")
        return ImageState.from_bytes(json.dumps(cfg).encode())
