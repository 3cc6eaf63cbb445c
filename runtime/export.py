"""`export`: a container's root filesystem as one tar stream, as `docker export` writes it.

A forked child chroots into the container's root and writes the tar from there, so no
symlink in the container leads the walk out of it. The root is the container's overlay
as the host sees it: none of the container's own mounts (/proc, /sys, /dev, volumes) are
in it, as none are in Docker's export. A stopped container's root is mounted in a
private mount namespace of the child's, which vanishes with it. Owners are numeric only:
no NSS module of the container is ever loaded.
"""

import os
import tarfile

from pyinspect.errors import PyinspectError, UsageError

from . import child, isolation


def _enter_root(c) -> None:
    """In the child: chroot into `c`'s root, mounting it privately if it is not mounted."""
    rootfs = os.path.join(c.path, "rootfs")
    if not isolation.mounted_at(rootfs):
        isolation.unshare(isolation.CLONE_NEWNS)
        isolation.mount(None, "/", None, isolation.MS_REC | isolation.MS_PRIVATE)
        upper, work = os.path.join(c.path, "upper"), os.path.join(c.path, "work")
        data = isolation.overlay_data(c.layers, upper, work)
        isolation.mount("overlay", rootfs, "overlay", isolation.ROOTFS_FLAGS, data)
    os.chdir(rootfs)
    os.chroot(".")
    os.chdir("/")


def _write_tar(out_fd: int) -> None:
    tarfile.pwd = tarfile.grp = None  # type: ignore[attr-defined]  # numeric ids only
    with (
        os.fdopen(out_fd, "wb", closefd=False) as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(os.listdir(".")):
            tar.add(name)  # recursive, sorted, links not followed


def export(runtime, ref: str, out_fd: int) -> None:
    """Write container `ref`'s root filesystem (running or stopped) to `out_fd` as a tar."""
    c = runtime.get(ref)

    def run():
        _enter_root(c)
        _write_tar(out_fd)

    pid, err_r = child.fork_call(run)
    failure = child.read_report(err_r)
    child.wait(pid)
    if failure:
        raise PyinspectError(f"export {c.name}: {failure[1]}")


def export_file(runtime, ref: str, path: str) -> None:
    """export() into the file `path`: written beside it and renamed into place only when
    whole, so a failed export leaves an existing file as it was."""
    runtime.get(ref)  # no such container: nothing is written
    tmp = f"{path}.pyinspect-{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise UsageError(f"export: cannot write {path}: {exc.strerror}") from None
    try:
        try:
            export(runtime, ref, fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
