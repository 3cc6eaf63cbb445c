"""Small file helpers shared by the runtime and the agent (stdlib only, cheap to import:
the container start path uses them).

`atomic_write(path)` replaces a file whole: the data goes to a hidden temp file
in the same directory, which is renamed over `path` only when everything was
written; on any failure the temp file is removed and `path` is untouched.
"""

import os
from types import TracebackType
from typing import IO, Any, Literal


def atomic_write(
    path: str | os.PathLike, mode: str = "wb", fsync: bool = False, perms: int | None = None
) -> "AtomicFile":
    """`with atomic_write(path) as f: f.write(...)` replaces `path` atomically.

    The temp file is created (O_EXCL, so threads and processes never share one) by
    this call, so a caller can tell "cannot write there" (OSError here) from a
    failure while writing. `mode` is "wb" or "w"; `fsync` flushes the data to
    disk before the rename; `perms` chmods the result (default: 0666 minus the
    umask, like open()).
    """
    return AtomicFile(path, mode, fsync, perms)


class AtomicFile:
    """The context manager `atomic_write` returns."""

    def __init__(
        self,
        path: str | os.PathLike,
        mode: str = "wb",
        fsync: bool = False,
        perms: int | None = None,
    ) -> None:
        self.path: str = os.fspath(path)
        head, name = os.path.split(self.path)
        self.tmp = os.path.join(head, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        try:
            self.file: IO[Any] = os.fdopen(fd, mode)
        except BaseException:
            os.close(fd)
            self.discard()
            raise
        self.fsync = fsync
        self.perms = perms

    def __enter__(self) -> IO[Any]:
        return self.file

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc_type is not None:
            self.file.close()
            self.discard()
            return False
        try:
            if self.fsync:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            if self.perms is not None:
                os.chmod(self.tmp, self.perms)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.file.close()
            self.discard()
            raise
        return False

    def discard(self) -> None:
        """Remove the temp file (`path` is left as it was)."""
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def tree_bytes(path: str | os.PathLike, skip: frozenset = frozenset()) -> int:
    """Docker's size of a layer directory: its regular files' bytes (a hard link counted
    once) and its symlinks' target lengths, less the paths in `skip` (relative, "a/b");
    0 when `path` is missing."""
    import stat

    top = os.fspath(path)
    total, seen = 0, set()
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if skip and os.path.relpath(full, top) in skip:
                continue
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
            elif stat.S_ISLNK(st.st_mode):
                total += st.st_size  # a symlink's size is its target's length
    return total
