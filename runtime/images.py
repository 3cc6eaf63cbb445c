"""The image store: content-addressed layers, image configs and tags under `<root>/images`.

Layout (see docs/images.md):
    images/layers/sha256/<diff_id hex>/   extracted layer, an overlayfs lower directory
    images/blobs/sha256/<diff_id hex>     the layer's uncompressed tar (for `save`)
    images/configs/<image id hex>.json    the image config, byte for byte (id = its sha256)
    images/repositories.json              {"tags": {"name:tag": "sha256:<id>"}}, atomic
    images/digests.json                   {"name@sha256:<manifest>": "sha256:<id>"}: the
                                          registry digests of pulled/pushed images
    images/blob-digests.json              {"<diff_id>": [{digest, size, mediaType}]}: the
                                          compressed blobs a layer was pulled/pushed as
    images/lock                           fcntl.flock for every change
    images/tmp/<pid>-<rand>/              staging; renamed into place only on success

Importing this module is cheap (stdlib only, heavy modules imported lazily) because it
sits on the `pyinspect run` start path.
"""

import contextlib
import dataclasses
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pyinspect.errors import (
    ConflictError,
    CorruptInputError,
    NotFoundError,
    UnavailableError,
    UsageError,
)
from pyinspect.proc import pid_alive

from .fsutil import atomic_write
from .imageref import parse_reference

DEFAULT_IMAGE = "busybox:latest"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEXPFX = re.compile(r"^[0-9a-f]{1,64}$")


@dataclass
class Image:
    """One stored image. `layer_dirs` lists overlay lower directories, base layer first."""

    id: str  # "sha256:<hex of the config JSON>"
    repo_tags: list
    config: dict  # the config's "config": Env, Cmd, Entrypoint, WorkingDir...
    layer_dirs: list
    created: str
    size: int
    diff_ids: list = field(default_factory=list)
    architecture: str = ""
    os: str = ""
    raw: dict = field(default_factory=dict, repr=False)  # the whole image config
    repo_digests: list = field(default_factory=list)  # "name@sha256:..." (list() fills it)

    @property
    def short_id(self):
        return self.id.split(":", 1)[1][:12]


@dataclass(frozen=True)
class HistoryEntry:
    """One step of an image's history, as `docker history` lists it."""

    image_id: str  # the image's id on its newest step, "<missing>" on the others
    created: str  # RFC 3339
    created_by: str
    size: int  # bytes of the layer the step made
    comment: str


def _atomic_write(path, data):
    with atomic_write(path, fsync=True) as f:
        f.write(data)


class ImageStore:
    """Images under `<root>/images`: resolve, list, load, save, tag, remove, inspect."""

    def __init__(self, root):
        self.root = Path(root)
        self.dir = self.root / "images"
        self.layers = self.dir / "layers" / "sha256"
        self.blobs = self.dir / "blobs" / "sha256"
        self.configs = self.dir / "configs"
        self.repos = self.dir / "repositories.json"
        self.digests_file = self.dir / "digests.json"
        self.blob_digests_file = self.dir / "blob-digests.json"
        self.tmp = self.dir / "tmp"
        self.sizes = self.dir / "layer-sizes"  # layer_size()'s, one small file a layer

    # ---- storage helpers -------------------------------------------------------------
    def _ensure(self):
        for d in (self.layers, self.blobs, self.configs, self.tmp):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UnavailableError(
                    f"cannot create the image store {self.dir}: {exc.strerror}",
                    "use another --root",
                ) from None

    @contextmanager
    def _locked(self):
        import fcntl

        self._ensure()
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _tags(self):
        try:
            data = self.repos.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            tags = json.loads(data)["tags"]
            if not isinstance(tags, dict):
                raise ValueError
            return tags
        except (ValueError, KeyError, TypeError):
            raise CorruptInputError(
                f"image tags {self.repos}: not valid JSON",
                "restore or remove the file; images stay by id",
            ) from None

    def _write_tags(self, tags):
        data = json.dumps({"tags": dict(sorted(tags.items()))}, indent=1).encode()
        _atomic_write(self.repos, data)

    def _digests(self):
        """{"name@sha256:<manifest digest>": "sha256:<image id>"} (RepoDigests)."""
        try:
            data = json.loads(self.digests_file.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            raise CorruptInputError(
                f"image digests {self.digests_file}: not valid JSON",
                "restore or remove the file; images stay by id",
            ) from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise CorruptInputError(f"image digests {self.digests_file}: not an object")
        return data

    def add_repo_digest(self, name_at_digest, image_id):
        """Remember that `name@sha256:...` (a registry manifest) is the image `image_id`."""
        with self._locked():
            digests = self._digests()
            digests[name_at_digest] = image_id
            _atomic_write(
                self.digests_file, json.dumps(dict(sorted(digests.items())), indent=1).encode()
            )

    def blob_digests(self, diff_id):
        """[{"digest", "size", "mediaType", "source"}]: compressed blobs known to hold this
        layer (pulled as, or pushed as; source: the "registry/repository" it is in), so a
        push can HEAD or mount them instead of compressing."""
        try:
            data = json.loads(self.blob_digests_file.read_bytes())
        except (FileNotFoundError, ValueError):
            return []  # a cache: unreadable means unknown, never an error
        entries = data.get(diff_id) if isinstance(data, dict) else None
        return [
            e
            for e in entries or []
            if isinstance(e, dict)
            and isinstance(e.get("digest"), str)
            and isinstance(e.get("size"), int)
            and isinstance(e.get("mediaType"), str)
        ]

    def add_blob_digests(self, entries):
        """Record [(diff_id, digest, size, media type, source)] for blob_digests()."""
        if not entries:
            return
        with self._locked():
            try:
                data = json.loads(self.blob_digests_file.read_bytes())
                if not isinstance(data, dict):
                    data = {}
            except (FileNotFoundError, ValueError):
                data = {}
            for diff_id, digest, size, media_type, source in entries:
                known = [
                    e
                    for e in data.get(diff_id) or []
                    if isinstance(e, dict)
                    and (e.get("digest"), e.get("source")) != (digest, source)
                ]
                data[diff_id] = [
                    {"digest": digest, "size": size, "mediaType": media_type, "source": source},
                    *known,
                ][:8]
            _atomic_write(
                self.blob_digests_file, json.dumps(dict(sorted(data.items())), indent=1).encode()
            )

    def _ids(self):
        try:
            names = os.listdir(self.configs)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and _HEX64.match(n[:-5]))

    def _load_image(self, hexid, tags):
        path = self.configs / f"{hexid}.json"
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"image sha256:{hexid[:12]}: no such image") from None
        except ValueError:
            raise CorruptInputError(
                f"image sha256:{hexid[:12]}: stored config is not JSON",
                "remove it with pyinspect rmi and load it again",
            ) from None
        image_id = f"sha256:{hexid}"
        diff_ids = list(raw.get("rootfs", {}).get("diff_ids", []))
        dirs = []
        size = sum(self.layer_size(h) for h in {d.split(":", 1)[-1] for d in diff_ids})
        # A layer repeated in the stack keeps only its topmost place (same merged view).
        for i, d in enumerate(diff_ids):
            h = d.split(":", 1)[-1]
            if all(x.split(":", 1)[-1] != h for x in diff_ids[i + 1 :]):
                dirs.append(self.layers / h)
        return Image(
            id=image_id,
            repo_tags=sorted(t for t, v in tags.items() if v == image_id),
            config=dict(raw.get("config") or {}),
            layer_dirs=dirs,
            created=raw.get("created", ""),
            size=size,
            diff_ids=diff_ids,
            architecture=raw.get("architecture", ""),
            os=raw.get("os", ""),
            raw=raw,
        )

    # ---- lookup ----------------------------------------------------------------------
    def _find(self, ref, tags):
        """(hex id, matched tag or None), or None when nothing matches."""
        if not isinstance(ref, str) or not ref:
            raise UsageError("image reference: empty")
        ids = None
        if "@" in ref:
            from pyinspect.runtime.registry.reference import parse

            r = parse(ref)
            image_id = self._digests().get(f"{r.familiar}@{r.digest}")
            if image_id and (self.configs / f"{image_id[7:]}.json").exists():
                return image_id[7:], None
            return None
        if ref.startswith("sha256:"):
            prefix = ref[7:]
            if not _HEXPFX.match(prefix):
                raise UsageError(f"image reference {ref!r}: not a sha256 id")
            ids = self._ids()
            return self._by_prefix(ref, prefix, ids)
        try:
            name = parse_reference(ref)
        except UsageError:
            name = None
            if not _HEXPFX.match(ref):
                raise
        if name and name in tags:
            hexid = tags[name].split(":", 1)[-1]
            if (self.configs / f"{hexid}.json").exists():
                return hexid, name
        if _HEXPFX.match(ref):
            return self._by_prefix(ref, ref, self._ids())
        return None

    def _by_prefix(self, ref, prefix, ids):
        hits = [i for i in ids if i.startswith(prefix)]
        if len(hits) > 1:
            raise UsageError(
                f"image reference {ref!r}: ambiguous id prefix ({len(hits)} images match)",
                "give more characters",
            )
        return (hits[0], None) if hits else None

    def find_id(self, ref):
        """'sha256:<id>' of the image `ref` names if it is here (nothing is built or
        pulled), else None (also for what is no image reference)."""
        try:
            found = self._find(ref, self._tags())
        except (UsageError, NotFoundError):
            return None
        return f"sha256:{found[0]}" if found else None

    def descends(self, image_id, ancestor_id) -> bool:
        """True when image `image_id` is `ancestor_id` or was made on top of it (a build
        FROM it, a commit of a container of it): the ancestor's layers and history steps
        are where the image's begin."""
        if image_id == ancestor_id:
            return True
        tags = self._tags()
        found = [self._find(i, tags) for i in (image_id, ancestor_id)]
        if not all(found):
            return False
        im, anc = (self._load_image(f[0], tags) for f in found)
        steps = anc.raw.get("history") or []
        n = len(anc.diff_ids)
        return bool(n or steps) and (
            im.diff_ids[:n] == anc.diff_ids and (im.raw.get("history") or [])[: len(steps)] == steps
        )

    def resolve(self, ref):
        """The Image for a name[:tag], id, unique id prefix or 'sha256:...'.

        'busybox' / 'busybox:latest' builds the embedded image when it is missing.
        """
        tags = self._tags()
        found = self._find(ref, tags)
        if found:
            return self._load_image(found[0], tags)
        try:
            wanted = parse_reference(ref)
        except UsageError:
            wanted = None
        if wanted == DEFAULT_IMAGE:
            return self.build_busybox()
        raise NotFoundError(
            f"image {ref!r}: no such image",
            "pyinspect images lists them; pyinspect pull NAME or pyinspect load -i FILE brings one",
        )

    def exists(self, ref):
        """Whether `ref` names a stored image (no busybox build, no image loaded)."""
        try:
            return self._find(ref, self._tags()) is not None
        except UsageError:
            return False

    def by_tag(self, name):
        """The image tagged `name` (name:tag form), never by id; NotFoundError otherwise."""
        name = parse_reference(name)
        tags = self._tags()
        if name not in tags or not (self.configs / f"{tags[name][7:]}.json").exists():
            raise NotFoundError(
                f"image {name!r}: no image has this tag", f"pyinspect tag IMAGE {name}"
            )
        return self._load_image(tags[name][7:], tags)

    def list(self):
        """Every stored image, newest first."""
        tags = self._tags()
        digests = self._digests()
        images = [self._load_image(h, tags) for h in self._ids()]
        for im in images:
            im.repo_digests = sorted(k for k, v in digests.items() if v == im.id)
        images.sort(key=lambda im: (im.created, im.id), reverse=True)
        return images

    def inspect(self, ref):
        """Docker-like JSON for one image."""
        im = self.resolve(ref)
        return {
            "Id": im.id,
            "RepoTags": im.repo_tags,
            "RepoDigests": sorted(k for k, v in self._digests().items() if v == im.id),
            "Comment": str(im.raw.get("comment") or ""),
            "Created": im.created,
            "Container": str(im.raw.get("container") or ""),
            "ContainerConfig": im.raw.get("container_config") or {},
            "Author": str(im.raw.get("author") or ""),
            "Architecture": im.architecture,
            "Os": im.os,
            "Config": im.config,
            "RootFS": {"Type": "layers", "Layers": im.diff_ids},
            "Size": im.size,
            "GraphDriver": {
                "Name": "overlay",
                "Data": {"LowerDirs": [str(p) for p in im.layer_dirs]},
            },
            "History": im.raw.get("history", []),
        }

    def history(self, ref):
        """The image's history, newest first (HistoryEntry): each step of its config's
        `history`, with the size of the layer it made (0 for a step that made none)."""
        im = self.resolve(ref)
        layers = [d.split(":", 1)[-1] for d in im.diff_ids]
        steps = im.raw.get("history")
        if not isinstance(steps, list) or not steps:  # no history: one step a layer
            steps = [{} for _ in layers] or [{"empty_layer": True}]
        out, at = [], 0
        for step in steps:
            step = step if isinstance(step, dict) else {}
            size = 0
            if not step.get("empty_layer") and at < len(layers):
                size, at = self.layer_size(layers[at]), at + 1
            out.append(
                HistoryEntry(
                    "<missing>",
                    str(step.get("created") or ""),
                    str(step.get("created_by") or ""),
                    size,
                    str(step.get("comment") or ""),
                )
            )
        out.reverse()
        out[0] = dataclasses.replace(out[0], image_id=im.id)
        return out

    # ---- staging and commit (shared by load and the busybox build) ----------------------
    def _new_staging(self):
        import shutil
        import uuid

        self._ensure()
        for entry in os.listdir(self.tmp):  # leftovers of killed pyinspect processes
            pid = entry.split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(self.tmp / entry, ignore_errors=True)
        d = self.tmp / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        d.mkdir()
        return d

    @contextlib.contextmanager
    def staging(self):
        """A private directory on the store's filesystem (a layer written there moves in
        without a copy), removed afterwards; one a killed process left goes at the next."""
        import shutil

        d = self._new_staging()
        try:
            yield os.fspath(d)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def _stage_layer(self, staging, blob_path, diff_hex, budget=None, notes=None):
        """Extract the uncompressed layer tar at blob_path into staging/<hex>.layer.

        `budget` (layerstream.Budget) charges the extracted sizes; `notes` (a list)
        collects what was skipped (device nodes where mknod is not allowed).
        """
        from pyinspect.runtime.archive import extract_layer

        dest = staging / f"{diff_hex}.layer"
        dest.mkdir(mode=0o755)
        extract_layer(blob_path, dest, budget=budget, notes=notes)
        os.chmod(dest, 0o755)
        return dest

    def _commit(self, staging, images, digests=()):
        """Move staged layers into place and record images: [(config bytes, [tags])].

        `digests`: "name@sha256:..." registry digests of the (first) image.
        Runs under the lock; returns the Images. Each needed layer must be stored already
        or staged as staging/<hex>.layer + staging/<hex>.tar.
        """
        with self._locked():
            for config_bytes, _ in images:
                for d in json.loads(config_bytes)["rootfs"]["diff_ids"]:
                    h = d.split(":", 1)[1]
                    final = self.layers / h
                    staged = staging / f"{h}.layer"
                    if final.exists():
                        continue
                    if not staged.exists():
                        raise ConflictError(
                            f"storing layer sha256:{h[:12]}: it was removed while loading",
                            "run the command again",
                        )
                    os.replace(staging / f"{h}.tar", self.blobs / h)
                    os.rename(staged, final)
                    self.layer_size(h)  # read its size while the tar is in the cache
            tags = self._tags()
            out = []
            for config_bytes, names in images:
                import hashlib  # not at the top: `run` resolves images without hashing

                hexid = hashlib.sha256(config_bytes).hexdigest()
                path = self.configs / f"{hexid}.json"
                if not path.exists():
                    _atomic_write(path, config_bytes)
                for name in names:
                    tags[name] = f"sha256:{hexid}"
                out.append(hexid)
            self._write_tags(tags)
            if digests:
                known = self._digests()
                for d in digests:
                    known[d] = f"sha256:{out[0]}"
                _atomic_write(
                    self.digests_file, json.dumps(dict(sorted(known.items())), indent=1).encode()
                )
            return [self._load_image(h, tags) for h in out]

    # ---- public building blocks for `pyinspect build` -----------------------------------
    def add_layer(self, tar_path):
        """Store the uncompressed layer tar at `tar_path` (moved, not copied); its diff_id.

        The layer is usable as an overlay lower dir at once; until an image config names
        it, the next `rmi` may garbage-collect it (the build cache then misses)."""
        import hashlib
        import shutil

        h = hashlib.sha256()
        with open(tar_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        diff_hex = h.hexdigest()
        if (self.layers / diff_hex).exists():
            os.unlink(tar_path)
            return f"sha256:{diff_hex}"
        staging = self._new_staging()
        try:
            blob = staging / f"{diff_hex}.tar"
            shutil.move(os.fspath(tar_path), blob)
            staged = self._stage_layer(staging, blob, diff_hex)
            with self._locked():
                if not (self.layers / diff_hex).exists():
                    os.replace(blob, self.blobs / diff_hex)
                    os.rename(staged, self.layers / diff_hex)
                    self.layer_size(diff_hex)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return f"sha256:{diff_hex}"

    def layer_size(self, h):
        """Docker's size of layer `h` (overlay2's DiffSize): the bytes of its regular files
        (a hard link counted once) and of its symlinks' targets. Read from the layer's
        tar once, then kept."""
        cache = self.sizes / h
        try:
            return int(cache.read_text())
        except (OSError, ValueError):
            pass
        import tarfile

        size = 0
        try:
            with tarfile.open(self.blobs / h, "r:") as tar:
                for m in tar:
                    size += m.size if m.isreg() else len(m.linkname.encode()) if m.issym() else 0
        except (OSError, tarfile.TarError):
            return 0  # no blob (or not a tar): nothing to count, nothing kept
        try:
            self.sizes.mkdir(parents=True, exist_ok=True)
            _atomic_write(cache, str(size).encode())
        except OSError:
            pass
        return size

    def has_layer(self, diff_id):
        """True when the layer `sha256:<hex>` is stored (dir and blob)."""
        h = diff_id.split(":", 1)[-1]
        return (self.layers / h).is_dir() and (self.blobs / h).is_file()

    def add_image(self, config_bytes, tags=()):
        """Record an image config whose layers are all stored, and give it `tags`."""
        import shutil

        staging = self._new_staging()
        try:
            return self._commit(staging, [(config_bytes, [parse_reference(t) for t in tags])])[0]
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def build_busybox(self):
        """Build (or rebuild) the embedded busybox:latest image from the host's busybox."""
        import shutil

        from pyinspect.runtime import busybox_image

        with self._locked():
            tags = self._tags()
            found = self._find(DEFAULT_IMAGE, tags)
            if found:
                return self._load_image(found[0], tags)
        layer, mtime, version = busybox_image.build_layer()
        import hashlib

        diff_hex = hashlib.sha256(layer).hexdigest()
        config = busybox_image.image_config(f"sha256:{diff_hex}", mtime, version)
        staging = self._new_staging()
        try:
            if not (self.layers / diff_hex).exists():
                blob = staging / f"{diff_hex}.tar"
                blob.write_bytes(layer)
                self._stage_layer(staging, blob, diff_hex)
            return self._commit(staging, [(config, [DEFAULT_IMAGE])])[0]
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # ---- changes -----------------------------------------------------------------------
    def tag(self, src, dst):
        """Give the image `src` the name `dst` (moved if another image had it)."""
        image = self.resolve(src)
        name = parse_reference(dst)
        with self._locked():
            tags = self._tags()
            if not (self.configs / f"{image.id[7:]}.json").exists():
                raise NotFoundError(f"image {src!r}: removed meanwhile")
            tags[name] = image.id
            self._write_tags(tags)
        return name

    def _users(self, image_id):
        """Containers (id, name) whose config.json names this image_id."""
        users: list[tuple] = []
        cdir = self.root / "containers"
        try:
            entries = os.listdir(cdir)
        except FileNotFoundError:
            return users
        for entry in sorted(entries):
            try:
                cfg = json.loads((cdir / entry / "config.json").read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(cfg, dict) and cfg.get("image_id") == image_id:
                users.append((cfg.get("id", entry), cfg.get("name") or entry[:12]))
        return users

    def remove(self, ref, force=False):
        """Untag or delete an image; returns Docker-like [{"Untagged": t} | {"Deleted": id}].

        A tag of an image with other tags is only untagged. Deleting an image a container
        uses is a ConflictError; with force its tags go and the data stays until unused.
        """
        with self._locked():
            tags = self._tags()
            found = self._find(ref, tags)
            if not found:
                raise NotFoundError(f"removing image {ref!r}: no such image")
            hexid, by_tag = found
            image_id = f"sha256:{hexid}"
            mine = sorted(t for t, v in tags.items() if v == image_id)
            if by_tag and len(mine) > 1:
                del tags[by_tag]
                self._write_tags(tags)
                return [{"Untagged": by_tag}]
            if not by_tag and len(mine) > 1 and not force:
                raise ConflictError(
                    f"removing image {ref!r}: it has several tags ({', '.join(mine)})",
                    "remove tags one by one or use -f",
                )
            users = self._users(image_id)
            if users and not force:
                cid, cname = users[0]
                raise ConflictError(
                    f"removing image {ref!r}: container {cname} ({str(cid)[:12]}) uses it",
                    "remove the container first, or -f to drop only the tags",
                )
            result = [{"Untagged": t} for t in mine]
            for t in mine:
                del tags[t]
            self._write_tags(tags)
            if users:
                return result
            os.unlink(self.configs / f"{hexid}.json")
            digests = self._digests()
            if any(v == image_id for v in digests.values()):
                _atomic_write(
                    self.digests_file,
                    json.dumps(
                        {k: v for k, v in sorted(digests.items()) if v != image_id}, indent=1
                    ).encode(),
                )
            result.append({"Deleted": image_id})
            self._gc()
            return result

    def _gc(self) -> int:
        """Remove layers no stored image references (caller holds the lock); the bytes
        they held (Docker's layer size)."""
        import shutil

        keep: set[str] = set()
        for h in self._ids():
            try:
                raw = json.loads((self.configs / f"{h}.json").read_bytes())
                keep.update(d.split(":", 1)[-1] for d in raw["rootfs"]["diff_ids"])
            except (OSError, ValueError, KeyError, TypeError):
                return 0  # an unreadable config: keep every layer rather than guess
        freed = 0
        for h in os.listdir(self.layers):
            if h in keep or not _HEX64.match(h):
                continue
            freed += self.layer_size(h)
            doomed = self.tmp / f"{os.getpid()}-gc-{h[:12]}"
            os.rename(self.layers / h, doomed)
            for path in (self.blobs / h, self.sizes / h):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            shutil.rmtree(doomed, ignore_errors=True)
        return freed

    def prune(self, every=False):
        """Delete the images no container uses: untagged ones (`image prune`), or with
        `every` tagged ones too (`-a`). Docker-like [{"untagged": t} | {"deleted": id}]
        and the bytes freed."""
        with self._locked():
            tags = self._tags()
            tagged: dict[str, list[str]] = {}
            for t, v in tags.items():
                tagged.setdefault(v, []).append(t)
            out: list[dict] = []
            doomed = []
            for h in sorted(self._ids()):
                image_id = f"sha256:{h}"
                if (tagged.get(image_id) and not every) or self._users(image_id):
                    continue
                for t in sorted(tagged.get(image_id, ())):
                    del tags[t]
                    out.append({"untagged": t})
                doomed.append(image_id)
                out.append({"deleted": image_id})
            if not doomed:
                return out, 0
            self._write_tags(tags)
            for image_id in doomed:
                os.unlink(self.configs / f"{image_id[7:]}.json")
            digests = self._digests()
            if any(v in doomed for v in digests.values()):
                kept = {k: v for k, v in sorted(digests.items()) if v not in doomed}
                _atomic_write(self.digests_file, json.dumps(kept, indent=1).encode())
            return out, self._gc()

    # ---- archives ----------------------------------------------------------------------
    def load(self, path):
        """Import every image in a docker-save archive or OCI layout (dir or tar, gzip or not)."""
        return [loaded.image for loaded in self.load_images(path)]

    def load_images(self, path, notes=None):
        """Like load, but [archive.Loaded]: each image with the names the archive gave it.

        `notes` (a list) collects what was skipped with a reason (device nodes where
        mknod is not allowed).
        """
        from pyinspect.runtime import archive

        return archive.load(self, path, notes=notes)

    def save(self, refs, out):
        """Write images to `out` (path or binary file) as a docker-save archive (OCI-style)."""
        from pyinspect.runtime import archive

        return archive.save(self, refs, out)
