"""Hostile-input-safe extraction of image layer tars into overlayfs lower directories.

`extract_layer(tar_path, dest)` unpacks one uncompressed layer tar into the empty
directory `dest` and never writes outside it:

- member names that are absolute or contain `..` are rejected;
- a member whose parent path crosses a symlink is rejected (no write-through);
- hardlinks must point at a file, symlink, device or fifo extracted earlier from the
  same tar;
- character/block devices and fifos are created as Docker creates them when it runs as
  root (mknod); where mknod is not allowed (no root, a user namespace) the node is
  skipped and a note says so;
- sparse files (GNU and PAX sparse formats) keep their holes;
- whiteouts `.wh.<name>` become overlayfs whiteouts (a 0/0 character device) and
  `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory; whiteout names with
  path tricks (`.wh.`, `.wh..`, `.wh...`) are rejected;
- xattrs (PAX `SCHILY.xattr.*`, libarchive's `LIBARCHIVE.xattr.*`) are applied for
  `user.*`, `security.capability` and POSIX ACLs; `trusted.*` (overlayfs' own control
  xattrs) and other namespaces never come from an archive;
- with a `layerstream.Budget`, every regular file's size (a sparse file's full size) is
  charged before it is written: size bombs stop at the limit.

Every rejection is a CorruptInputError naming the member. The caller extracts into a
temporary directory and renames it into place only after success.
Stdlib only for uncompressed layers: this module sits on the `pyinspect run` path when
busybox is built.
"""

import base64
import errno
import hashlib
import json
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from pyinspect.errors import (
    CorruptInputError,
    NotFoundError,
    UnavailableError,
    UsageError,
)

from . import imagemeta
from .fsutil import atomic_write
from .imageref import parse_reference
from .layerstream import GZIP_MAGIC, ZSTD_MAGIC, Budget, decompress_to

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_ALLOWED_XATTRS = ("security.capability", "system.posix_acl_access", "system.posix_acl_default")
_ALLOWED_XATTR_PREFIXES = ("user.",)


def _xattr_allowed(attr):
    return attr in _ALLOWED_XATTRS or attr.startswith(_ALLOWED_XATTR_PREFIXES)


def _xattrs(member):
    """[(name, raw value)] of a member's PAX xattr records."""
    out = []
    for key, value in (member.pax_headers or {}).items():
        if key.startswith("SCHILY.xattr."):
            out.append((key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape")))
        elif key.startswith("LIBARCHIVE.xattr."):
            try:
                name = unquote_to_bytes(key[len("LIBARCHIVE.xattr.") :]).decode()
                raw = base64.b64decode(value + "=" * (-len(value) % 4))
            except (ValueError, UnicodeDecodeError):
                raise CorruptInputError(
                    f"member {member.name!r}: malformed xattr {key!r}"
                ) from None
            out.append((name, raw))
    return out


def clean_member_name(name):
    """A tar member name as a tuple of path components; CorruptInputError if it escapes."""
    if name.startswith("/"):
        raise CorruptInputError(f"member {name!r}: absolute path not allowed")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise CorruptInputError(f"member {name!r}: '..' in path not allowed")
        if "\0" in part:
            raise CorruptInputError(f"member {name!r}: NUL in path")
        parts.append(part)
    return tuple(parts)


class _Extractor:
    def __init__(self, dest, budget=None, notes=None):
        self.dest = os.fspath(dest)
        self.seen = {}  # components -> kind ('file', 'dir', 'link', 'dev', 'wh')
        self.dir_times = []  # (path, mtime) applied last, deepest first
        self.is_root = os.geteuid() == 0
        self.budget = budget
        self.notes = notes if notes is not None else []
        self.skipped_devices = []
        self.skipped_parts = set()

    def path(self, parts):
        return os.path.join(self.dest, *parts) if parts else self.dest

    def ensure_parents(self, name, parts):
        """Create missing parent directories; refuse to go through symlinks or files."""
        for i in range(1, len(parts)):
            p = self.path(parts[:i])
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                os.mkdir(p, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise CorruptInputError(
                    f"member {name!r}: path goes through symlink {'/'.join(parts[:i])!r}"
                )
            if not stat.S_ISDIR(st.st_mode):
                raise CorruptInputError(
                    f"member {name!r}: parent {'/'.join(parts[:i])!r} is not a directory"
                )

    def clear(self, name, parts, keep_dir):
        """Make room for a member; an existing directory stays when a directory replaces it."""
        p = self.path(parts)
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return
        if self.seen.get(parts) == "wh":
            raise CorruptInputError(f"member {name!r}: conflicts with a whiteout in the same layer")
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(p)
        else:
            os.unlink(p)

    def meta(self, member, p, is_link=False):
        if self.is_root:
            try:
                os.chown(p, member.uid, member.gid, follow_symlinks=False)
            except OSError as exc:
                raise CorruptInputError(f"member {member.name!r}: chown: {exc.strerror}") from None
        if not is_link:
            os.chmod(p, member.mode & 0o7777)
        for attr, raw in _xattrs(member):
            if _xattr_allowed(attr) and not is_link:
                try:
                    os.setxattr(p, attr, raw, follow_symlinks=False)
                except OSError:
                    pass  # an attribute the filesystem cannot hold is not fatal (as Docker)
        try:
            os.utime(p, (member.mtime, member.mtime), follow_symlinks=False)
        except (OSError, OverflowError, ValueError):
            pass

    def whiteout(self, member, parts):
        name = member.name
        base = parts[-1]
        parent = parts[:-1]
        if not member.isfile():
            raise CorruptInputError(f"member {name!r}: whiteout is not a regular file")
        self.ensure_parents(name, parts)
        if base == WHITEOUT_OPAQUE:
            d = self.path(parent)
            try:
                os.setxattr(d, OPAQUE_XATTR, b"y", follow_symlinks=False)
            except OSError as exc:
                raise _unavailable("set the overlay opaque xattr", exc) from None
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not content, ignored
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", "..") or target.startswith(WHITEOUT_PREFIX):
            raise CorruptInputError(f"member {name!r}: bad whiteout name")
        tparts = parent + (target,)
        if tparts in self.seen:
            raise CorruptInputError(f"member {name!r}: whiteout of a path this layer also adds")
        p = self.path(tparts)
        try:
            os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise CorruptInputError(f"member {name!r}: whiteout target exists") from None
            raise _unavailable("create an overlay whiteout", exc) from None
        self.seen[tparts] = "wh"

    def add(self, tf, member):
        name = member.name
        if self.budget is not None:
            self.budget.charge_entry(f"member {name!r}")
        parts = clean_member_name(name)
        if not parts:
            if member.isdir():
                self.dir_times.append((self.dest, member.mtime))
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(member, parts)
            return
        if not (
            member.isfile()
            or member.isdir()
            or member.issym()
            or member.islnk()
            or member.ischr()
            or member.isblk()
            or member.isfifo()
        ):
            raise CorruptInputError(f"member {name!r}: unsupported tar member type {member.type!r}")
        self.ensure_parents(name, parts)
        p = self.path(parts)
        if member.isdir():
            self.clear(name, parts, keep_dir=True)
            if not os.path.isdir(p):
                os.mkdir(p, 0o755)
            self.meta(member, p)
            os.chmod(p, (member.mode & 0o7777) | 0o700)  # children still to come
            self.dir_times.append((p, member.mtime, member.mode & 0o7777))
            self.seen[parts] = "dir"
            return
        self.clear(name, parts, keep_dir=False)
        if member.isfile():
            if self.budget is not None:
                self.budget.charge(member.size, f"member {name!r}", meter="extracted")
                data = (
                    member.size
                    if member.sparse is None
                    else sum(n for _, n in member.sparse if n > 0)
                )
                if data >= 1 << 20:
                    self.budget.check_disk(f"member {name!r}", upcoming=data)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                self.write_data(tf, member, out)
            self.meta(member, p)
            self.seen[parts] = "file"
        elif member.ischr() or member.isblk() or member.isfifo():
            self.device(member, parts, p)
        elif member.issym():
            # Stored, never followed here: inside the container it resolves within the rootfs.
            if "\0" in member.linkname or not member.linkname:
                raise CorruptInputError(f"member {name!r}: bad symlink target")
            os.symlink(member.linkname, p)
            self.meta(member, p, is_link=True)
            self.seen[parts] = "link"
        else:  # hardlink
            try:
                tparts = clean_member_name(member.linkname)
            except CorruptInputError:
                raise CorruptInputError(
                    f"member {name!r}: hardlink target {member.linkname!r} escapes the layer"
                ) from None
            if tparts in self.skipped_parts:
                self.skipped_devices.append(name)  # a link to a node mknod refused
                return
            if self.seen.get(tparts) not in ("file", "link", "dev"):
                raise CorruptInputError(
                    f"member {name!r}: hardlink target {member.linkname!r} is not a file "
                    f"extracted earlier from this layer"
                )
            self.ensure_parents(name, tparts)  # the target's own path must be symlink-free
            os.link(self.path(tparts), p, follow_symlinks=False)
            self.seen[parts] = self.seen[tparts]

    def write_data(self, tf, member, out):
        """A regular member's data; a sparse member's holes stay holes."""
        name = member.name
        src = tf.extractfile(member)
        regions = [(0, member.size)]
        if member.sparse is not None:
            regions = []
            for off, size in member.sparse:
                if off < 0 or size < 0 or off + size > member.size:
                    raise CorruptInputError(f"member {name!r}: sparse map beyond the file")
                if size:
                    regions.append((off, size))
        for off, size in regions:
            if member.sparse is not None:
                src.seek(off)
                out.seek(off)
            remaining = size
            while remaining:
                chunk = src.read(min(remaining, 1 << 20))
                if not chunk:
                    raise CorruptInputError(f"member {name!r}: truncated data")
                out.write(chunk)
                remaining -= len(chunk)
        if member.sparse is not None:
            out.truncate(member.size)

    def device(self, member, parts, p):
        """mknod a device or fifo as Docker does as root; skipped (noted) where refused."""
        name = member.name
        if member.isfifo():
            kind, fmt = "fifo", stat.S_IFIFO
        else:
            kind = "character device" if member.ischr() else "block device"
            fmt = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            dev = os.makedev(member.devmajor, member.devminor)
        except (OverflowError, ValueError):
            raise CorruptInputError(f"member {name!r}: bad device numbers") from None
        try:
            os.mknod(p, (member.mode & 0o7777) | fmt, dev)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES) and kind != "fifo":
                self.skipped_devices.append(name)
                self.skipped_parts.add(parts)
                return
            raise
        self.meta(member, p)
        self.seen[parts] = "wh" if member.ischr() and dev == 0 else "dev"

    def finish(self):
        for item in reversed(self.dir_times):
            if len(item) == 2:
                p, mtime = item
            else:
                p, mtime, mode = item
                os.chmod(p, mode)
            try:
                os.utime(p, (mtime, mtime), follow_symlinks=False)
            except (OSError, OverflowError, ValueError):
                pass
        if self.skipped_devices:
            first = ", ".join(self.skipped_devices[:3])
            more = len(self.skipped_devices) - 3
            self.notes.append(
                f"skipped {len(self.skipped_devices)} device node(s) ({first}"
                f"{f' and {more} more' if more > 0 else ''}): mknod is not "
                "allowed here (Docker skips them the same way without root)"
            )


def _unavailable(what, exc):
    return UnavailableError(
        f"cannot {what}: {exc.strerror}",
        "extracting image layers needs root on a filesystem with trusted xattrs and mknod",
    )


def extract_layer(tar_path, dest, budget=None, notes=None):
    """Extract the uncompressed layer tar at `tar_path` into the existing empty dir `dest`.

    `budget`: a layerstream.Budget charged with every file's size; `notes`: a list that
    gets one line per kind of thing skipped.
    """
    try:
        with tarfile.open(tar_path, "r:") as tf:
            ex = _Extractor(dest, budget, notes)
            for member in tf:
                try:
                    ex.add(tf, member)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise UnavailableError(f"extracting layer: {exc.strerror}") from None
                    if exc.errno in (errno.EPERM, errno.EACCES):
                        raise _unavailable("extract the layer", exc) from None
                    raise CorruptInputError(f"member {member.name!r}: {exc.strerror}") from None
            ex.finish()
    except tarfile.TarError as exc:
        raise CorruptInputError(f"layer tar is corrupt: {exc}") from None
    except EOFError:
        raise CorruptInputError("layer tar is truncated") from None


# ---- image archives: docker save (legacy and OCI-style) and OCI layouts ---------------------


_MAX_JSON = 16 << 20
_MAX_LINK_DEPTH = 16
MT_OCI_INDEX = imagemeta.MT_OCI_INDEX
MT_OCI_MANIFEST = imagemeta.MT_OCI_MANIFEST
MT_OCI_CONFIG = imagemeta.MT_OCI_CONFIG
MT_OCI_LAYER = imagemeta.MT_OCI_LAYER
MT_DOCKER_LIST = imagemeta.MT_DOCKER_LIST
MT_DOCKER_MANIFEST = imagemeta.MT_DOCKER_MANIFEST


@dataclass
class Loaded:
    """One image a load stored, with the names the archive gave it (not the store's)."""

    image: object
    names: list = field(default_factory=list)


class _DirSource:
    """Files of an OCI layout directory; names from the (untrusted) JSON stay inside it."""

    def __init__(self, path):
        self.base = os.path.realpath(path)

    def _path(self, name):
        p = os.path.join(self.base, *clean_member_name(name))
        real = os.path.realpath(p)
        if real != self.base and not real.startswith(self.base + os.sep):
            raise CorruptInputError(f"{name!r}: points outside the layout directory")
        return real

    def has(self, name):
        try:
            return os.path.isfile(self._path(name))
        except CorruptInputError:
            return False

    def open(self, name):
        try:
            return open(self._path(name), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise CorruptInputError(f"{name!r}: missing from the archive") from None

    def close(self):
        pass


class _TarSource:
    """Members of an uncompressed tar file, looked up by name (symlinks followed inside)."""

    def __init__(self, path):
        self.tf = None
        try:
            self.tf = tarfile.open(path, "r:")
            self.members = {}
            for m in self.tf:
                parts = clean_member_name(m.name)
                self.members["/".join(parts)] = m
        except CorruptInputError as exc:
            self.close()
            raise CorruptInputError(f"archive {exc}") from None
        except (tarfile.TarError, EOFError) as exc:
            self.close()
            raise CorruptInputError(f"not a tar archive or truncated: {exc}") from None

    def _member(self, name, depth=0):
        key = "/".join(clean_member_name(name))
        m = self.members.get(key)
        if m is None:
            raise CorruptInputError(f"{name!r}: missing from the archive")
        if m.issym() or m.islnk():
            if depth > _MAX_LINK_DEPTH:
                raise CorruptInputError(f"{name!r}: too many links")
            if m.issym():
                if m.linkname.startswith("/"):
                    raise CorruptInputError(f"{name!r}: absolute symlink in the archive")
                target = os.path.normpath(os.path.join(os.path.dirname(key), m.linkname))
                if target == ".." or target.startswith("../"):
                    raise CorruptInputError(f"{name!r}: symlink points outside the archive")
            else:
                target = m.linkname
            return self._member(target, depth + 1)
        if not m.isfile():
            raise CorruptInputError(f"{name!r}: not a regular file in the archive")
        return m

    def has(self, name):
        try:
            self._member(name)
            return True
        except CorruptInputError:
            return False

    def open(self, name):
        if self.tf is None:
            raise CorruptInputError(f"{name!r}: the archive is closed")
        return self.tf.extractfile(self._member(name))

    def close(self):
        if self.tf is not None:
            self.tf.close()


def _read_json(src, name):
    try:
        with src.open(name) as f:
            data = f.read(_MAX_JSON + 1)
    except (tarfile.TarError, EOFError) as exc:
        raise CorruptInputError(f"{name!r}: truncated: {exc}") from None
    if len(data) > _MAX_JSON:
        raise CorruptInputError(f"{name!r}: JSON file too large")
    try:
        return data, json.loads(data)
    except ValueError as exc:
        raise CorruptInputError(f"{name!r}: not valid JSON: {exc}") from None


def _names(raw, what):
    out = []
    for name in raw or []:
        try:
            out.append(parse_reference(name))
        except UsageError as exc:
            raise CorruptInputError(f"{what}: bad image name in the archive: {exc}") from None
    return out


def _oci_images(src):
    """[(config_name, [layer (name, digest hex)], [tags])] from an OCI image layout."""
    _, index = _read_json(src, "index.json")
    descs = imagemeta.index(index, "index.json")

    def manifest_entry(desc, names, depth, where):
        name = f"blobs/sha256/{desc.hex}"
        raw, doc = _read_json(src, name)
        if hashlib.sha256(raw).hexdigest() != desc.hex:
            raise CorruptInputError(f"{name}: content does not match its digest")
        if len(raw) != desc.size:
            raise CorruptInputError(f"{where}: size {desc.size} but {name} has {len(raw)} bytes")
        if not isinstance(doc, dict):
            raise CorruptInputError(f"{name} is not an object")
        declared = desc.media_type if desc.media_type in imagemeta.INDEX_TYPES else ""
        if imagemeta.is_index(doc, declared):
            if depth > 4:
                raise CorruptInputError("index.json: image indexes nested too deep")
            subs = imagemeta.index(doc, name)
            pick = imagemeta.pick_platform(subs, imagemeta.host_arch(), name)
            return manifest_entry(pick, names, depth + 1, f"{name}: manifests entry")
        man = imagemeta.manifest(doc, name, desc.media_type)
        return (
            f"blobs/sha256/{man.config.hex}",
            [(f"blobs/sha256/{d.hex}", d.hex) for d in man.layers],
            names,
        )

    arch = imagemeta.host_arch()
    mine = [
        d
        for d in descs
        if not d.platform
        or (d.platform.get("os") == "linux" and d.platform.get("architecture") == arch)
    ]
    if not mine:
        imagemeta.pick_platform(descs, imagemeta.host_arch(), "index.json")  # raises, naming them
    out = []
    for i, desc in enumerate(mine):
        ann = desc.annotations
        ref = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name")
        names = []
        if ref and ("/" in ref or ":" in ref or ref == ann.get("io.containerd.image.name")):
            names = _names([ref], "index.json")
        out.append(manifest_entry(desc, names, 0, f"index.json: manifests[{i}]"))
    return out


def _docker_images(src):
    """[(config_name, [layer (name, None)], [tags])] from a docker-save manifest.json."""
    _, manifest = _read_json(src, "manifest.json")
    return [
        (e.config, [(x, None) for x in e.layers], _names(e.repo_tags, "manifest.json"))
        for e in imagemeta.save_manifest(manifest)
    ]


def _open_source(path, staging, label, budget):
    if os.path.isdir(path):
        return _DirSource(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise NotFoundError(f"loading {label}: no such file") from None
    except OSError as exc:
        raise CorruptInputError(f"loading {label}: cannot read: {exc.strerror}") from None
    with f:
        head = f.read(4)
        if not head:
            raise CorruptInputError(f"loading {label}: empty file")
        if head[:2] == GZIP_MAGIC or head == ZSTD_MAGIC:
            f.seek(0)
            plain = staging / "input.tar"
            decompress_to(f, plain, f"loading {label}", budget, meter="archive")
            path = plain
        elif head[:3] in (b"BZh", b"\xfd7zX"):
            raise CorruptInputError(
                f"loading {label}: only plain, gzip'd or zstd'd tar archives are supported"
            )
    try:
        return _TarSource(path)
    except CorruptInputError as exc:
        raise CorruptInputError(f"loading {label}: {exc}") from None


def _input_size(path):
    """Bytes of input a load reads: the file's size, or a layout directory's total."""
    if not os.path.isdir(path):
        return os.stat(path).st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


def load(store, path, notes=None):
    """Import every image of a docker-save archive or OCI layout into `store`; [Loaded].

    `path` is a file, a directory or a binary stream (copied into the store's staging
    area first). Writing is limited by the root's image-limits (layerstream.Budget).
    """
    from .image_settings import load_settings

    settings = load_settings(store.root)
    staging = store._new_staging()
    src = None
    label = path
    try:
        label = "stdin" if hasattr(path, "read") else os.fspath(path)
        if hasattr(path, "read"):
            spooled = staging / "input.bin"
            with open(spooled, "wb") as out:
                shutil.copyfileobj(path, out, 1 << 20)
            path = spooled
        path = os.fspath(path)
        try:
            budget = Budget(settings.limits, _input_size(path), store.dir)
        except FileNotFoundError:
            raise NotFoundError(f"loading {label}: no such file") from None
        src = _open_source(path, staging, label, budget)
        if src.has("manifest.json"):
            entries = _docker_images(src)
        elif src.has("index.json"):
            entries = _oci_images(src)
        else:
            raise CorruptInputError(
                f"loading {label}: neither a docker-save archive "
                "(manifest.json) nor an OCI layout (index.json)"
            )
        images = []
        staged = set()
        for config_name, layers, names in entries:
            config_bytes, config = _read_json(src, config_name)
            image_hex = hashlib.sha256(config_bytes).hexdigest()
            what = f"loading {label}: image sha256:{image_hex[:12]}"
            base = config_name.rsplit("/", 1)[-1]
            stem = base.removesuffix(".json")
            if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem) and stem != image_hex:
                raise CorruptInputError(f"{what}: config does not match its digest {stem[:12]}")
            diff_ids = imagemeta.image_config(config, f"{what}: config")
            if len(diff_ids) != len(layers):
                raise CorruptInputError(
                    f"{what}: {len(layers)} layers but the config lists {len(diff_ids)} diff_ids"
                )
            pairs = zip(layers, diff_ids, strict=True)
            for i, ((layer_name, blob_hex), diff_id) in enumerate(pairs):
                diff_hex = diff_id[7:]
                if diff_hex in staged or (store.layers / diff_hex).exists():
                    continue
                blob = staging / f"{diff_hex}.tar"
                lwhat = f"{what}: layer {i + 1} ({layer_name})"
                try:
                    with src.open(layer_name) as fin:
                        raw_hex, plain_hex, _ = decompress_to(fin, blob, lwhat, budget)
                except (tarfile.TarError, EOFError) as exc:
                    raise CorruptInputError(f"{lwhat}: truncated: {exc}") from None
                if blob_hex is not None and raw_hex != blob_hex:
                    raise CorruptInputError(f"{lwhat}: content does not match its digest")
                if plain_hex != diff_hex:
                    raise CorruptInputError(
                        f"{lwhat}: content digest sha256:{plain_hex[:12]} "
                        f"does not match the config's diff_id "
                        f"sha256:{diff_hex[:12]}"
                    )
                try:
                    store._stage_layer(staging, blob, diff_hex, budget=budget, notes=notes)
                except CorruptInputError as exc:
                    raise CorruptInputError(f"{lwhat}: {exc.message}", exc.hint) from None
                staged.add(diff_hex)
            images.append((config_bytes, names))
        src.close()
        src = None
        stored = store._commit(staging, images)
        return [
            Loaded(image=im, names=list(names))
            for im, (_, names) in zip(stored, images, strict=True)
        ]
    except CorruptInputError as exc:
        if exc.message.startswith("loading "):
            raise
        raise CorruptInputError(f"loading {label}: {exc.message}", exc.hint) from None
    except UnavailableError as exc:
        if exc.message.startswith("loading "):
            raise
        raise UnavailableError(f"loading {label}: {exc.message}", exc.hint) from None
    finally:
        if src is not None:
            src.close()
        shutil.rmtree(staging, ignore_errors=True)


def _tarinfo(name, size=0, kind=tarfile.REGTYPE, mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = mode if kind == tarfile.REGTYPE else 0o755
    ti.mtime = 0
    ti.uid = ti.gid = 0
    return ti


def save(store, refs, out):
    """Write the images to `out` (a path, or a binary file object) as one docker-save archive.

    The archive is the OCI-style layout Docker >= 25 writes (index.json, oci-layout,
    blobs/sha256/*) plus manifest.json and repositories, which every `docker load` reads.
    Deterministic: same images and names give the same bytes.
    """
    import io

    if not refs:
        raise UsageError("save: no images given")
    chosen: dict[str, tuple] = {}  # image id -> (Image, [names])
    tags = store._tags()
    for ref in refs:
        image = store.resolve(ref)
        names = chosen.setdefault(image.id, (image, []))[1]
        found = store._find(ref, tags)
        if found and found[1] and found[1] not in names:
            names.append(found[1])
    blobs: dict = {}  # hex -> (path or bytes)
    manifest_json: list = []
    index_entries: list = []
    repositories: dict = {}
    for image_id in sorted(chosen):  # sorted: the same set of images gives the same bytes
        image, names = chosen[image_id]
        names.sort()
        cfg_hex = image.id[7:]
        cfg_bytes = (store.configs / f"{cfg_hex}.json").read_bytes()
        blobs[cfg_hex] = cfg_bytes
        layer_descs = []
        for d in image.diff_ids:
            h = d[7:]
            p = store.blobs / h
            try:
                size = os.stat(p).st_size
            except FileNotFoundError:
                raise CorruptInputError(
                    f"saving {image.short_id}: layer sha256:{h[:12]} is missing from the store",
                    "rmi and load it again",
                ) from None
            blobs[h] = p
            layer_descs.append({"mediaType": MT_OCI_LAYER, "digest": d, "size": size})
        man = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MT_OCI_MANIFEST,
                "config": {"mediaType": MT_OCI_CONFIG, "digest": image.id, "size": len(cfg_bytes)},
                "layers": layer_descs,
            },
            separators=(",", ":"),
        ).encode()
        man_hex = hashlib.sha256(man).hexdigest()
        blobs[man_hex] = man
        desc = {"mediaType": MT_OCI_MANIFEST, "digest": f"sha256:{man_hex}", "size": len(man)}
        for name in names:
            repo, tag = name.rsplit(":", 1)
            full = (
                name
                if "/" in repo and ("." in repo.split("/")[0] or ":" in repo.split("/")[0])
                else (f"docker.io/{name}" if "/" in repo else f"docker.io/library/{name}")
            )
            index_entries.append(
                {
                    **desc,
                    "annotations": {
                        "io.containerd.image.name": full,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            )
            if image.diff_ids:
                repositories.setdefault(repo, {})[tag] = image.diff_ids[-1][7:]
        if not names:
            index_entries.append(desc)
        manifest_json.append(
            {
                "Config": f"blobs/sha256/{cfg_hex}",
                "RepoTags": names or None,
                "Layers": [f"blobs/sha256/{d[7:]}" for d in image.diff_ids],
            }
        )
    files = {
        "index.json": json.dumps(
            {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index_entries}
        ).encode(),
        "manifest.json": json.dumps(manifest_json).encode(),
        "oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
        "repositories": json.dumps(repositories).encode(),
    }

    def write(fileobj):
        with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            tf.addfile(_tarinfo("blobs", kind=tarfile.DIRTYPE))
            tf.addfile(_tarinfo("blobs/sha256", kind=tarfile.DIRTYPE))
            for h in sorted(blobs):
                b = blobs[h]
                if isinstance(b, bytes):
                    tf.addfile(_tarinfo(f"blobs/sha256/{h}", len(b), mode=0o444), io.BytesIO(b))
                else:
                    with open(b, "rb") as f:
                        size = os.fstat(f.fileno()).st_size
                        tf.addfile(_tarinfo(f"blobs/sha256/{h}", size, mode=0o444), f)
            for name in sorted(files):
                tf.addfile(_tarinfo(name, len(files[name])), io.BytesIO(files[name]))

    if hasattr(out, "write"):
        write(out)
        return
    with atomic_write(out) as f:
        write(f)
