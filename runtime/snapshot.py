"""Images made from a root filesystem: `commit` (a container's changes) and `import` (a
tarball), as `docker commit` and `docker import` make them.

commit: the layer is the container's overlay upper dir written as an OCI changeset by
build.layerdiff (the writer `pyinspect build` uses: whiteouts, opaque directories, and
not the files the runtime writes into every container); the config is the container's
own (containers.docker_config: its Cmd, Env, WorkingDir...) with the `--change`
instructions applied on top, and one history step created by the container's command.
A running container is frozen while its upper dir is read (`pause`, on by default).

import: the tarball (plain or gzip/bzip2/xz) is the one layer, extracted with the same
checks as a loaded layer; the config holds only what the `--change` instructions set.
"""

import bz2
import contextlib
import gzip
import http.client
import io
import json
import lzma
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pyinspect.errors import CorruptInputError, NotFoundError, PyinspectError, UsageError

from . import state
from .build import configsteps, dockerfile, layerdiff
from .build.state import DEFAULT_SHELL, now_rfc3339
from .imageref import parse_reference
from .images import Image, ImageStore

# what Docker's commit and import accept in --change
CHANGE_INSTRUCTIONS = frozenset(
    "CMD ENTRYPOINT ENV EXPOSE HEALTHCHECK LABEL ONBUILD USER VOLUME WORKDIR".split()
)
FETCH_TIMEOUT_S = 60  # import from a URL: connecting, and each read of the body
_MAGIC = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


@dataclass
class ImageOptions:
    """What commit and import were asked for besides their source."""

    repo: str | None = None  # REPOSITORY[:TAG] to tag the new image with
    changes: list = field(default_factory=list)  # --change: Dockerfile instructions
    message: str = ""  # -m: the commit message (history comment)
    author: str = ""  # -a (commit)
    pause: bool = True  # -p (commit): freeze a running container meanwhile


def parse_changes(changes: Iterable[str]) -> list[dockerfile.Instruction]:
    """The --change instructions; UsageError (Docker's words) for one they cannot be."""
    out: list[dockerfile.Instruction] = []
    for text in changes:
        word = text.split(None, 1)[0] if text.strip() else ""
        if word.upper() not in CHANGE_INSTRUCTIONS:
            raise UsageError(
                f"{word.lower() or repr(text)} is not a valid change command",
                "use CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL, ONBUILD, USER, "
                "VOLUME or WORKDIR",
            )
        try:
            out.extend(dockerfile.parse(text))
        except UsageError as exc:
            why = exc.message.split(": ", 1)[-1] if exc.message.startswith("Dockerfile") else exc
            raise UsageError(f"--change {text!r}: {why}") from None
    return out


def apply_changes(settings: dict, instructions: list[dockerfile.Instruction]) -> dict:
    """`settings` (an image config's "config" part) with `instructions` applied in order."""
    cmd_set = False
    for ins in instructions:
        env = dict(item.partition("=")[::2] for item in settings.get("Env") or [])
        shell = list(settings.get("Shell") or DEFAULT_SHELL)
        step = configsteps.apply(settings, ins, env, "\\", cmd_set, shell)
        settings, cmd_set = step.settings, step.cmd_set
    return settings


def _tags(repo: str | None) -> list[str]:
    if not repo:
        return []
    return [parse_reference(repo)]


def commit(runtime, ref: str, opts: ImageOptions) -> Image:
    """Store container `ref`'s changes and settings as a new image."""
    from .containers import docker_config

    instructions = parse_changes(opts.changes)  # bad input makes nothing
    tags = _tags(opts.repo)
    c = runtime.get(ref)
    store = ImageStore(runtime.root)
    base_path = os.path.join(store.configs, f"{c.image_id.split(':', 1)[-1]}.json")
    try:
        with open(base_path, "rb") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise NotFoundError(
            f"commit {c.name}: its image {c.image} ({c.image_id[7:19]}) is no longer stored"
        ) from None
    container_cfg = docker_config(c)
    with store.staging() as staging:
        tar = os.path.join(staging, "layer.tar")
        frozen = False
        if opts.pause and c.status == "running" and state.init_alive(c) and not c.paused:
            try:
                runtime.pause(c.id)
                frozen = True
            except PyinspectError:
                pass  # it stopped meanwhile, or this host has no cgroup2 freezer: read live
        try:
            layerdiff.write_layer(os.path.join(c.path, "upper"), c.layers, tar, True)
        finally:
            if frozen:
                runtime.unpause(c.id)
        diff_id = store.add_layer(tar)
    created = now_rfc3339()
    cfg["created"] = created
    cfg["config"] = apply_changes(container_cfg, instructions)
    cfg["container"] = c.id
    cfg["container_config"] = container_cfg
    for key, value in (("author", opts.author), ("comment", opts.message)):
        if value:
            cfg[key] = value
        else:
            cfg.pop(key, None)
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []}).setdefault("diff_ids", [])
    cfg["rootfs"]["diff_ids"].append(diff_id)
    step = {"created": created, "author": opts.author, "created_by": " ".join(
        container_cfg.get("Cmd") or []
    ), "comment": opts.message}  # fmt: skip
    cfg.setdefault("history", []).append({k: v for k, v in step.items() if v})
    return store.add_image(json.dumps(cfg).encode(), tags)


def _decompressed(src: BinaryIO, out_path: str) -> None:
    """Copy `src` (a buffered reader) to `out_path`, undoing gzip, bzip2 or xz as `docker
    import` does."""
    head = src.peek(6)[:6] if hasattr(src, "peek") else b""
    reader: Any = src
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            reader = opener(src, "rb")
            break
    with open(out_path, "wb") as out:
        try:
            shutil.copyfileobj(reader, out, 1 << 20)
        except (OSError, EOFError, lzma.LZMAError, http.client.HTTPException) as exc:
            raise UsageError(f"import: reading the input failed: {exc!r}") from None


def import_from(root, source: str, opts: ImageOptions, stdin: BinaryIO) -> Image:
    """`docker import`'s sources: "-" (`stdin`, not a terminal), an http:// or https://
    URL (fetched; the comment is `Imported from URL`, as the daemon writes it), or a
    file (its comment is `Imported from -`: Docker's CLI sends a file as its stdin)."""
    if source.startswith(("http://", "https://")):
        with _fetched(source) as body:
            return import_image(root, body, source, opts, comment=f"Imported from {source}")
    if source == "-":
        if stdin.isatty():
            raise UsageError("import: no input on standard input", "pipe a tarball or give FILE")
        return import_image(root, stdin, "-", opts)
    try:
        f = open(source, "rb")  # noqa: SIM115 closed below
    except FileNotFoundError:
        raise NotFoundError(f"open {source}: no such file or directory") from None
    except OSError as exc:
        raise UsageError(f"open {source}: {exc.strerror}") from None
    with f:
        return import_image(root, f, source, opts)


@contextlib.contextmanager
def _fetched(url: str) -> Iterator[BinaryIO]:
    """The body of a GET of `url`, buffered (peek() tells its compression); one error
    line when the server cannot be reached or does not answer 200."""
    try:
        resp = urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S)  # noqa: S310 http(s) only
    except urllib.error.HTTPError as exc:
        raise NotFoundError(f"import: GET {url}: {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", exc)
        why = getattr(why, "strerror", None) or why
        raise UsageError(f"import: GET {url}: {why}") from None
    with resp:
        yield io.BufferedReader(resp, 1 << 20)


def import_image(
    root, src: BinaryIO, source_name: str, opts: ImageOptions, comment: str = ""
) -> Image:
    """Store the root filesystem tarball read from `src` as a one-layer image (the
    history comment: -m, else `comment`, else `Imported from -`)."""
    settings = apply_changes({}, parse_changes(opts.changes))
    tags = _tags(opts.repo)
    store = ImageStore(root)
    with store.staging() as staging:
        tar = os.path.join(staging, "layer.tar")
        _decompressed(src, tar)
        try:
            diff_id = store.add_layer(tar)
        except CorruptInputError as exc:
            why = exc.message.removeprefix("layer tar is corrupt: ")
            raise CorruptInputError(f"import {source_name}: not a tar archive: {why}") from None
    created = now_rfc3339()
    comment = opts.message or comment or "Imported from -"
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "comment": comment,
        "config": settings,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "comment": comment}],
    }
    return store.add_image(json.dumps(cfg).encode(), tags)
