"""Run a function chrooted in an image's merged filesystem, in a forked child.

The child unshares its mount namespace, makes every mount private, mounts overlayfs
(the layers, plus an upper and work dir when it may write) and chroots into it; the
mount disappears with the child's namespace, so nothing is left mounted even when
the build is killed. Inside the chroot, absolute and `..` symlinks resolve inside the
image, as they do in a container. Used for COPY/ADD/WORKDIR (writing into a fresh
upper dir that becomes the layer) and for reading `COPY --from` sources.
"""

import os
from dataclasses import dataclass

from pyinspect.errors import UsageError
from pyinspect.runtime import child, isolation


def _overlay_options(lower_dirs, upper, work, empty):
    lowers = [os.fspath(d) for d in lower_dirs]
    if upper is None:
        while len(lowers) < 2:  # a read-only overlay needs two lower dirs
            lowers.insert(0, os.fspath(empty))
        return "lowerdir=" + ":".join(reversed(lowers))
    if not lowers:
        lowers = [os.fspath(empty)]
    return isolation.overlay_data(lowers, upper, work)


class ChildFailed(UsageError):
    """What the chrooted child reported."""


@dataclass
class Child:
    """A started child: its pid, the read end of its report pipe, its mount point."""

    pid: int
    err_r: int | None
    mnt: str
    reaped: bool = False


def start(
    scratch: str,
    lower_dirs: list,
    body,
    upper: str | None = None,
    work: str | None = None,
    close_fds: tuple = (),
) -> Child:
    """Fork a child that runs body() chrooted in the merged view of `lower_dirs` (base
    first); with `upper`/`work` it writes there, else the view is read-only. `scratch`
    is a private directory of the build for the mount point. Returns the Child for
    finish(); `close_fds` are closed in the child first."""
    mnt = os.path.join(scratch, f"mnt-{os.urandom(4).hex()}")
    empty = os.path.join(scratch, "empty")
    os.makedirs(mnt)
    os.makedirs(empty, exist_ok=True)
    data = _overlay_options(lower_dirs, upper, work, empty)

    def run():
        for fd in close_fds:
            os.close(fd)
        isolation.unshare(isolation.CLONE_NEWNS)
        isolation.mount(None, "/", None, isolation.MS_REC | isolation.MS_PRIVATE)
        flags = isolation.MS_RDONLY if upper is None else 0
        isolation.mount("overlay", mnt, "overlay", flags, data)
        os.chroot(mnt)
        os.chdir("/")
        body()

    pid, err_r = child.fork_call(run)
    return Child(pid=pid, err_r=err_r, mnt=mnt)


def finish(c: Child) -> None:
    """Wait for the child; ChildFailed with its message if it failed."""
    assert c.err_r is not None, "finish() runs once"
    try:
        failure = child.read_report(c.err_r)  # closes err_r
    except BaseException:  # interrupted: the child goes too
        kill(c)
        raise
    c.err_r = None
    code = child.wait(c.pid)
    c.reaped = True
    try:
        os.rmdir(c.mnt)
    except OSError:
        pass
    if failure:
        raise ChildFailed(failure[1])
    if code:
        raise ChildFailed(f"the copy process exited with {code}")


def kill(c: Child) -> None:
    """Stop an unfinished child (SIGKILL) and reap it."""
    import signal

    if not c.reaped:  # never signal a pid already reaped (it may be another process now)
        try:
            os.kill(c.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait(c.pid)
        c.reaped = True
    if c.err_r is not None:
        try:
            os.close(c.err_r)
        except OSError:
            pass
        c.err_r = None
    try:
        os.rmdir(c.mnt)
    except OSError:
        pass


def run(
    scratch: str, lower_dirs: list, body, upper: str | None = None, work: str | None = None
) -> None:
    """start() and finish() in one."""
    finish(start(scratch, lower_dirs, body, upper, work))
