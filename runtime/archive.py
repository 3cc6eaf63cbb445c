"""Hostile-input-safe extraction of image layer tars into overlayfs lower directories.

`extract_layer(tar_path, dest)` unpacks one uncompressed layer tar into the empty
directory `dest` and never writes outside it:

- member names that are absolute or contain `..` are rejected;
- a member whose parent path crosses a symlink is rejected (no write-through);
- hardlinks must point at a regular file or symlink extracted earlier from the same tar;
- character/block devices and fifos are rejected;
- whiteouts `.wh.<name>` become overlayfs whiteouts (a 0/0 character device) and
  `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory; whiteout names with
  path tricks (`.wh.`, `.wh..`, `.wh...`) are rejected;
- xattrs from the archive are applied only for `security.capability`; `trusted.*`
  (overlayfs' own control xattrs) never come from an archive.

Every rejection is a CorruptInputError naming the member. The caller extracts into a
temporary directory and renames it into place only after success.
Stdlib only: this module sits on the `pyinspect run` path when busybox is built.
"""

import errno
import os
import stat
import tarfile

from pyinspect.errors import CorruptInputError, UnavailableError

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_ALLOWED_XATTRS = ("security.capability",)


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
    def __init__(self, dest):
        self.dest = os.fspath(dest)
        self.seen = {}          # components -> kind ('file', 'dir', 'link', 'wh')
        self.dir_times = []     # (path, mtime) applied last, deepest first
        self.is_root = os.geteuid() == 0

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
                    f"member {name!r}: path goes through symlink {'/'.join(parts[:i])!r}")
            if not stat.S_ISDIR(st.st_mode):
                raise CorruptInputError(
                    f"member {name!r}: parent {'/'.join(parts[:i])!r} is not a directory")

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
            import shutil
            shutil.rmtree(p)
        else:
            os.unlink(p)

    def meta(self, member, p, is_link=False):
        if self.is_root:
            try:
                os.chown(p, member.uid, member.gid, follow_symlinks=False)
            except OSError as exc:
                raise CorruptInputError(f"member {member.name!r}: chown: {exc.strerror}")
        if not is_link:
            os.chmod(p, member.mode & 0o7777)
        for key, value in (member.pax_headers or {}).items():
            if key.startswith("SCHILY.xattr."):
                attr = key[len("SCHILY.xattr."):]
                if attr in _ALLOWED_XATTRS and not is_link:
                    raw = value.encode("utf-8", "surrogateescape")
                    try:
                        os.setxattr(p, attr, raw, follow_symlinks=False)
                    except OSError:
                        pass  # a capability the filesystem cannot hold is not fatal
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
                raise _unavailable("set the overlay opaque xattr", exc)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not content, ignored
        target = base[len(WHITEOUT_PREFIX):]
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
                raise CorruptInputError(f"member {name!r}: whiteout target exists")
            raise _unavailable("create an overlay whiteout", exc)
        self.seen[tparts] = "wh"

    def add(self, tf, member):
        name = member.name
        parts = clean_member_name(name)
        if not parts:
            if member.isdir():
                self.dir_times.append((self.dest, member.mtime))
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(member, parts)
            return
        if member.ischr() or member.isblk() or member.isfifo():
            kind = "character device" if member.ischr() else (
                "block device" if member.isblk() else "fifo")
            raise CorruptInputError(f"member {name!r}: {kind} not allowed in an image layer")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
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
            src = tf.extractfile(member)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                remaining = member.size
                while remaining:
                    chunk = src.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise CorruptInputError(f"member {name!r}: truncated data")
                    out.write(chunk)
                    remaining -= len(chunk)
            self.meta(member, p)
            self.seen[parts] = "file"
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
                    f"member {name!r}: hardlink target {member.linkname!r} escapes the layer")
            if self.seen.get(tparts) not in ("file", "link"):
                raise CorruptInputError(
                    f"member {name!r}: hardlink target {member.linkname!r} is not a file "
                    f"extracted earlier from this layer")
            self.ensure_parents(name, tparts)  # the target's own path must be symlink-free
            os.link(self.path(tparts), p, follow_symlinks=False)
            self.seen[parts] = self.seen[tparts]

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


def _unavailable(what, exc):
    return UnavailableError(f"cannot {what}: {exc.strerror}",
                            "extracting image layers needs root on a filesystem with "
                            "trusted xattrs and mknod")


def extract_layer(tar_path, dest):
    """Extract the uncompressed layer tar at `tar_path` into the existing empty dir `dest`."""
    try:
        with tarfile.open(tar_path, "r:") as tf:
            ex = _Extractor(dest)
            for member in tf:
                ex.add(tf, member)
            ex.finish()
    except tarfile.TarError as exc:
        raise CorruptInputError(f"layer tar is corrupt: {exc}")
    except EOFError:
        raise CorruptInputError("layer tar is truncated")
