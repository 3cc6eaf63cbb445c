"""What a container changed in its root filesystem: `docker diff`'s lines.

The overlay's upper directory holds everything the container wrote: an entry there is
`A` (added) when the image layers do not have it, `C` (changed) when they do, and a
whiteout (a 0/0 character device) is `D` (deleted). A directory the image has is `C`
only when something below it changed or its own mode or owner did (overlayfs copies a
directory up whenever a child is written; one removed and made again is opaque, and
is not a change by itself, as in Docker). /etc/hostname, /etc/hosts and
/etc/resolv.conf are left out: pyinspect writes them for the runtime, where Docker
bind-mounts them from outside the container's layer, so they are never in its diff.
Lines are sorted by path, as Docker sorts them.
"""

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .isolation import OPAQUE_XATTR, layer_entry

RUNTIME_FILES = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})


@dataclass(frozen=True)
class Change:
    kind: str  # "A" added, "C" changed, "D" deleted
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def changes(layers: list[str], upper: str | Path) -> list[Change]:
    """The changes of the upper directory `upper` over the image `layers` (base first)."""
    out: list[Change] = []
    _walk(list(layers), str(upper), [], out, hidden=False)
    return sorted(out, key=lambda c: c.path)


def _walk(layers: list[str], directory: str, parts: list[str], out: list[Change], hidden: bool):
    """Append the changes below `directory` (container path `parts`); `hidden`: an
    opaque directory above hides the image's entries (all below it is added)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return
    for name in names:
        path_parts = [*parts, name]
        cpath = "/" + "/".join(path_parts)
        if cpath in RUNTIME_FILES:
            continue
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            out.append(Change("D", cpath))
            continue
        was = None if hidden else layer_entry(layers, path_parts)
        if not stat.S_ISDIR(st.st_mode):
            out.append(Change("C" if was is not None else "A", cpath))
            continue
        opaque = _is_opaque(full)
        before = len(out)
        _walk(layers, full, path_parts, out, hidden or opaque)
        if was is None:
            out.append(Change("A", cpath))
        elif len(out) > before or _own_change(st, was[1]):
            out.append(Change("C", cpath))


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _own_change(now: os.stat_result, image: os.stat_result) -> bool:
    """A directory's own change: its type, mode or owner differ from the image's."""
    return (now.st_mode, now.st_uid, now.st_gid) != (image.st_mode, image.st_uid, image.st_gid)
