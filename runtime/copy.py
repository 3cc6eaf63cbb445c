"""`cp` between the host and a container, without ever following a link out of it.

The container side runs in a forked child that is chrooted into the container's
root: for a running container it joins the container's mount namespace (so
volumes are seen as the container sees them); for a stopped one it mounts the
overlay root in a private mount namespace of its own, which vanishes with the
child. Inside a chroot, absolute and `..` symlinks resolve inside the
container. The two sides exchange a tar stream over a pipe. The host side
extracts with its own checks: no absolute or `..` names, no writing through a
symlink, hard links only to files of the same copy, no device nodes.
The child never looks up user or group names (no NSS modules are loaded from
the container, cf. CVE-2019-14271).
"""

import errno
import os
import stat
import tarfile

from pyinspect.errors import CorruptInputError, NotFoundError, UsageError

from . import child, isolation, state


def _enter_container(rt, c):
    """In a forked child: chroot into container `c` (running or stopped)."""
    if c.status == "running" and state.init_alive(c):
        isolation.enter(c.pid, namespaces=("mnt",))
        return
    isolation.unshare(isolation.CLONE_NEWNS)
    isolation.mount(None, "/", None, isolation.MS_REC | isolation.MS_PRIVATE)
    rootfs = os.path.join(c.path, "rootfs")
    isolation.mount(
        "overlay",
        rootfs,
        "overlay",
        isolation.ROOTFS_FLAGS,
        isolation.overlay_data(
            c.layers, os.path.join(c.path, "upper"), os.path.join(c.path, "work")
        ),
    )
    os.chdir(rootfs)
    os.chroot(".")
    os.chdir("/")


def _child(rt, c, body):
    """Fork; the child enters the container and runs body(); errors come back as text."""

    def run():
        # numeric ids only: no NSS inside the container (attributes typeshed lacks)
        tarfile.pwd = tarfile.grp = None  # type: ignore[attr-defined]
        _enter_container(rt, c)
        body()

    return child.fork_call(run)


def _finish(pid, err_r, c, what):
    failure = child.read_report(err_r)
    child.wait(pid)
    if failure:
        kind, msg = failure
        cls = NotFoundError if kind == "notfound" else UsageError
        raise cls(f"cp {what} container {c.name}: {msg}")


def _arcname(path):
    base = os.path.basename(os.path.normpath(path))
    return base if base not in ("", ".", "/") else "."


def from_container(rt, c, path, dest):
    """Copy `path` inside container `c` to `dest` on the host (Docker's cp rules)."""
    if not path.startswith("/"):
        path = "/" + path
    dest = os.path.abspath(dest)
    if os.path.isdir(dest):
        target = os.path.join(dest, _arcname(path)) if _arcname(path) != "." else dest
    else:
        if not os.path.isdir(os.path.dirname(dest)):
            raise NotFoundError(f"cp: destination directory {os.path.dirname(dest)} does not exist")
        target = dest
    r, w = os.pipe()

    def send():
        os.close(r)
        with os.fdopen(w, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tf:
            os.lstat(path)  # FileNotFoundError names the path
            tf.add(path, arcname=_arcname(path), recursive=True)

    pid, err_r = _child(rt, c, send)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as inp:
            try:
                with tarfile.open(fileobj=inp, mode="r|") as tf:
                    safe_extract(tf, target)
            except tarfile.ReadError:
                pass  # the child failed before writing; its message follows
    finally:
        _finish(pid, err_r, c, "from")
    return target


def to_container(rt, c, src, dest):
    """Copy host path `src` to `dest` inside container `c`."""
    src = os.path.abspath(src)
    if not os.path.lexists(src):
        raise NotFoundError(f"cp: {src}: no such file or directory")
    if not dest.startswith("/"):
        dest = "/" + dest
    arc = _arcname(src)
    r, w = os.pipe()

    def receive():
        os.close(w)
        d = os.path.normpath(dest)
        if os.path.isdir(d):
            target = os.path.join(d, arc)
        else:
            if not os.path.isdir(os.path.dirname(d) or "/"):
                raise FileNotFoundError(errno.ENOENT, "no such directory", os.path.dirname(d))
            target = d
        with os.fdopen(r, "rb") as inp, tarfile.open(fileobj=inp, mode="r|") as tf:
            for m in tf:
                rest = m.name.split("/", 1)[1] if "/" in m.name else ""
                m.name = os.path.join(target, rest) if rest else target
                if m.islnk():
                    lrest = m.linkname.split("/", 1)[1] if "/" in m.linkname else ""
                    m.linkname = os.path.join(target, lrest) if lrest else target
                if m.ischr() or m.isblk():
                    continue
                tf.extract(m, "/", set_attrs=True)

    pid, err_r = _child(rt, c, receive)
    os.close(r)
    try:
        with os.fdopen(w, "wb") as out, tarfile.open(fileobj=out, mode="w|") as tf:
            tf.add(src, arcname=arc, recursive=True)
    except BrokenPipeError:
        pass  # the child failed; it says why
    finally:
        _finish(pid, err_r, c, "into")
    return dest


def _no_links_between(base, path):
    """Raise if any existing component of `path` below `base` is a symlink."""
    rel = os.path.relpath(path, base)
    cur = base
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) and cur != path:
            raise CorruptInputError(f"cp: refusing to write through the symlink {cur}")


def safe_extract(tf, target):
    """Extract a tar stream whose top entry becomes `target`, never leaving it."""
    base = os.path.dirname(target)
    done = {}
    for m in tf:
        parts = m.name.split("/")
        if m.name.startswith("/") or ".." in parts:
            raise CorruptInputError(f"cp: unsafe name in the copy stream: {m.name!r}")
        rest = [p for p in parts[1:] if p not in ("", ".")]
        path = os.path.join(target, *rest)
        _no_links_between(base, path)
        if os.path.islink(path) or (
            os.path.lexists(path) and not m.isdir() and not os.path.isdir(path)
        ):
            os.unlink(path)
        if m.isdir():
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
        elif m.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                src = tf.extractfile(m)
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
        elif m.issym():
            os.symlink(m.linkname, path)
            done[m.name] = path
            continue
        elif m.islnk():
            src_path = done.get(m.linkname)
            if src_path is None or os.path.islink(src_path):
                raise CorruptInputError(
                    f"cp: hard link {m.name!r} to {m.linkname!r} outside the copy"
                )
            os.link(src_path, path)
            done[m.name] = path
            continue
        else:
            continue  # device nodes and fifos are not copied out
        os.chmod(path, m.mode & 0o1777)
        os.utime(path, (m.mtime, m.mtime))
        done[m.name] = path
    return target
