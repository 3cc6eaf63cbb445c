"""An overlayfs upper directory -> one OCI layer tar (the changes a build step made).

OCI's layer changeset format: added and changed files as tar members; a deleted path
as an empty file `.wh.<name>` beside it (overlayfs keeps a 0/0 character device);
a directory whose lower contents are hidden as `<dir>/.wh..wh..opq` (overlayfs sets
`trusted.overlay.opaque=y`). A directory copied up only because something below it
changed is written when it holds a change; its own metadata comes from the upper.
Files the runtime writes into every container (/etc/hostname, /etc/hosts,
/etc/resolv.conf) and the mount points it creates (/proc, /sys, /dev) are not the
step's changes and are left out, as Docker leaves them out of its commits.
Members are sorted and hard links inside the layer are kept, so the same upper
gives the same bytes.
"""

import os
import stat
import tarfile
from dataclasses import dataclass

from pyinspect.runtime.archive import OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX

RUNTIME_FILES = {("etc", "hostname"), ("etc", "hosts"), ("etc", "resolv.conf")}
MOUNT_POINTS = {("proc",), ("sys",), ("dev",)}
_KEEP_XATTRS = ("security.capability",)


@dataclass
class _Entry:
    """One member to write: a whiteout (`st` None) or an upper dir entry."""

    name: str
    st: os.stat_result | None = None
    path: str = ""


def _is_whiteout(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path):
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def lower_stat(lower_dirs: list, parts: tuple) -> os.stat_result | None:
    """lstat of `parts` in the merged lower layers (top layer first), or None if absent."""
    found = lower_path(lower_dirs, parts)
    return found[1] if found else None


def lower_path(lower_dirs: list, parts: tuple) -> tuple[str, os.stat_result] | None:
    """(host path, lstat) of `parts` in the topmost layer that has it, or None when the
    merged view lacks it (a whiteout or an opaque directory above hides the rest)."""
    for d in reversed(lower_dirs):
        p = os.path.join(d, *parts)
        try:
            st = os.lstat(p)
        except (FileNotFoundError, NotADirectoryError):
            # an opaque or whiteout parent in this layer hides the lower ones
            for i in range(len(parts) - 1, 0, -1):
                q = os.path.join(d, *parts[:i])
                try:
                    qst = os.lstat(q)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if _is_whiteout(qst) or (stat.S_ISDIR(qst.st_mode) and _opaque(q)):
                    return None
                break
            continue
        return None if _is_whiteout(st) else (p, st)
    return None


def _same_meta(a, b):
    return (
        stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode)
        and a.st_mode == b.st_mode
        and a.st_uid == b.st_uid
        and a.st_gid == b.st_gid
    )


class _Writer:
    def __init__(self, upper, lower_dirs, tf, skip_runtime_files):
        self.upper = upper
        self.lower = list(lower_dirs)
        self.tf = tf
        self.skip = skip_runtime_files
        self.links = {}  # (dev, ino) -> member name of the first copy
        self.count = 0

    def info(self, name, st, path):
        ti = tarfile.TarInfo(name)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime = int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            ti.size = st.st_size
        elif stat.S_ISFIFO(st.st_mode):
            ti.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        else:
            return None  # sockets: not content
        if not stat.S_ISLNK(st.st_mode):
            pax = {}
            for attr in _KEEP_XATTRS:
                try:
                    value = os.getxattr(path, attr, follow_symlinks=False)
                except OSError:
                    continue
                pax["SCHILY.xattr." + attr] = value.decode("utf-8", "surrogateescape")
            if pax:
                ti.pax_headers = pax
        return ti

    def entries(self, parts):
        """Members for the directory `parts` of the upper (its children), in order."""
        d = os.path.join(self.upper, *parts)
        out = []
        for name in sorted(os.listdir(d)):
            cparts = parts + (name,)
            path = os.path.join(d, name)
            st = os.lstat(path)
            rel = "/".join(cparts)
            if self.skip and cparts in RUNTIME_FILES and not stat.S_ISDIR(st.st_mode):
                continue
            if _is_whiteout(st):
                wh = "/".join(parts + (WHITEOUT_PREFIX + name,))
                out.append(_Entry(wh))
                continue
            if stat.S_ISDIR(st.st_mode):
                lst = lower_stat(self.lower, cparts)
                opaque = _opaque(path)
                inner = self.entries(cparts)
                if self.skip and cparts in MOUNT_POINTS and not inner and lst is None:
                    continue
                if inner or opaque or lst is None or not _same_meta(st, lst):
                    out.append(_Entry(rel, st, path))
                    if opaque:
                        out.append(_Entry(f"{rel}/{WHITEOUT_OPAQUE}"))
                    out.extend(inner)
                continue
            out.append(_Entry(rel, st, path))
        return out

    def write(self):
        for e in self.entries(()):
            name, st, path = e.name, e.st, e.path
            if st is None:
                ti = tarfile.TarInfo(name)
                ti.mode, ti.mtime = 0o644, 0
                self.tf.addfile(ti)
            else:
                ti = self.info(name, st, path)
                if ti is None:
                    continue
                key = (st.st_dev, st.st_ino)
                if ti.isreg() and st.st_nlink > 1:
                    if key in self.links:
                        ti.type, ti.linkname, ti.size = tarfile.LNKTYPE, self.links[key], 0
                        self.tf.addfile(ti)
                        self.count += 1
                        continue
                    self.links[key] = name
                if ti.isreg():
                    with open(path, "rb") as f:
                        self.tf.addfile(ti, f)
                else:
                    self.tf.addfile(ti)
            self.count += 1


def write_layer(upper, lower_dirs: list, out_path, skip_runtime_files: bool = True) -> int:
    """Write the changes in `upper` (over `lower_dirs`, base first) as a layer tar at
    `out_path`; the number of members written (0: the step changed nothing)."""
    with (
        open(out_path, "wb") as f,
        tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        w = _Writer(os.fspath(upper), [os.fspath(d) for d in lower_dirs], tf, skip_runtime_files)
        w.write()
    return w.count
