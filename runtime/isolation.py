"""Namespaces, mounts and the container root, through raw syscalls (ctypes).

Python 3.11 has no os.unshare/os.setns/mount, so this module calls libc. The
steps a container's init takes, in order, are `prepare_root()` (overlayfs root,
/proc, /dev, /sys, volumes, mounted while the host paths are still visible),
then `pivot_into()` (pivot_root and detach the old root). Paths inside the
container are resolved with `secure_join`, which never follows a link out of
the container root. Stdlib only: this module is on the `pyinspect run` path.
"""

import ctypes
import errno
import os
import stat

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
# The image root is mounted nodev: device nodes an image holds (Docker loads them too) stay
# inert, as Docker's device cgroup keeps them; the container's /dev is its own tmpfs.
ROOTFS_FLAGS = MS_NODEV
MNT_DETACH = 2

CLONE_INTO_CGROUP = 0x200000000
SYS_CLONE3 = 435  # x86_64 (and every 64-bit arch with the generic syscall table)
SIGCHLD = 17

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
SYS_PIVOT_ROOT = 155  # x86_64

# Namespace file name under /proc/<pid>/ns -> clone flag, in the order exec joins them.
NAMESPACES = (
    ("ipc", CLONE_NEWIPC),
    ("uts", CLONE_NEWUTS),
    ("net", CLONE_NEWNET),
    ("pid", CLONE_NEWPID),
    ("mnt", CLONE_NEWNS),
)

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc.unshare.argtypes = [ctypes.c_int]
        _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    return _libc


def _check(rv, what):
    if rv != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s):
    return None if s is None else os.fsencode(s)


class _CloneArgs(ctypes.Structure):
    """struct clone_args (clone3(2)), up to `cgroup` (CLONE_ARGS_SIZE_VER2)."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


_pylibc = None


def fork_into_cgroup(cgroup_fd):
    """os.fork(), but the child starts in the cgroup2 directory open at `cgroup_fd`
    (clone3 with CLONE_INTO_CGROUP): no migration, so no cgroup.procs write and its
    wait for an RCU grace period. Like os.fork(), Python's fork hooks run around it
    and the GIL is held across it. For single-threaded callers; OSError when the
    kernel cannot (ENOSYS before Linux 5.3, E2BIG/EINVAL before 5.7, EBADF, ...)."""
    global _pylibc
    if _pylibc is None:
        _pylibc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held
        _pylibc.syscall.restype = ctypes.c_long
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=SIGCHLD, cgroup=cgroup_fd)
    api = ctypes.pythonapi
    api.PyOS_BeforeFork()
    pid = _pylibc.syscall(
        ctypes.c_long(SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))
    )
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone3 into a cgroup: {os.strerror(err)}")
    return pid


def unshare(flags):
    """unshare(2)."""
    _check(libc().unshare(flags), "unshare")


def setns(fd, nstype=0):
    """setns(2) into the namespace open at `fd`."""
    _check(libc().setns(fd, nstype), "setns")


def mount(source, target, fstype=None, flags=0, data=None):
    """mount(2); raises OSError naming the target."""
    rv = libc().mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    if rv != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def umount(target, flags=MNT_DETACH):
    _check(libc().umount2(_b(target), flags), f"umount {target}")


def mounted_at(path):
    """True when something is mounted at `path` in this mount namespace."""
    path = os.path.abspath(path)
    want = path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")
    want = want.replace("\n", "\\012")
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split(" ", 5)[4] == want for line in f)
    except OSError:
        return False


def pivot_root(new_root, put_old):
    _check(libc().syscall(SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root")


def set_parent_death_signal(sig):
    libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def set_comm(name):
    """Set this process's comm (shown by ps/top, 15 bytes)."""
    libc().prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def set_cmdline(text):
    """Best effort: rewrite this process's argv area so ps and /proc/<pid>/cmdline show
    `text` (truncated to the original length). Python keeps its own copy of argv."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        size = end - start
        data = text.encode()[: size - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(data + b"\0" * (size - len(data)))
    except (OSError, ValueError, IndexError):
        pass


def secure_join(root, path, max_links=40):
    """`path` resolved inside `root` like the kernel would in a chroot at `root`.

    Symlinks (absolute or relative) are followed but interpreted inside `root`,
    and `..` never climbs above it; missing trailing components are kept as
    they are. Returns a host path under `root`.
    """
    root = os.path.abspath(root)

    def entry(parts):
        candidate = os.path.join(root, *parts)
        try:
            return candidate, os.lstat(candidate)
        except FileNotFoundError:
            return None

    parts, _ = _resolve_in_root(path, entry, max_links=max_links)
    return os.path.join(root, *parts)


def _resolve_in_root(path, entry, stop=None, max_links=40):
    """Walk `path` component by component the way a chroot would: `..` never climbs
    above the root, symlinks are followed but read inside it. `entry(parts)` gives
    (host path, lstat) of the resolved container path `parts`, or None when missing;
    `stop(parts, lstat or None)` may end the walk by returning something not None.
    Returns (resolved parts, what stop returned or None)."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        found = entry(done + [part])
        if found is not None and stat.S_ISLNK(found[1].st_mode):
            links += 1
            if links > max_links:
                raise OSError(errno.ELOOP, f"too many symlinks resolving {path}")
            target = os.readlink(found[0])
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
        why = stop(done, found and found[1]) if stop else None
        if why is not None:
            return done, why
    return done, None


OPAQUE_XATTR = "trusted.overlay.opaque"


def layer_entry(layers, parts):
    """(host path, lstat) of container path `parts` as overlayfs would show the image
    `layers` (base first): the top-most layer that has it wins; a whiteout (a 0/0
    character device), a non-directory on the way, or an opaque directory hides
    what lower layers have. None when the image has no such entry."""
    for layer in reversed(list(layers)):
        cur, hidden, reached = str(layer), False, True
        for comp in parts[:-1]:
            cur = os.path.join(cur, comp)
            try:
                st = os.lstat(cur)
            except (FileNotFoundError, NotADirectoryError):
                reached = False
                break
            if not stat.S_ISDIR(st.st_mode):
                return None
            try:
                hidden = hidden or os.getxattr(cur, OPAQUE_XATTR) == b"y"
            except OSError:
                pass
        if reached:
            path = os.path.join(cur, parts[-1])
            try:
                entry: os.stat_result | None = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                entry = None
            if entry is not None:
                if stat.S_ISCHR(entry.st_mode) and entry.st_rdev == 0:
                    return None
                return path, entry
        if hidden:
            return None
    return None


def non_directory_in_image(layers, path, max_links=40):
    """The first component of container path `path` that the image `layers` (base
    first) hold as something other than a directory, as a container path; None
    when every component the image has is a directory (missing ones can be made).
    Symlinks resolve inside the image, like `secure_join`; reads the layer
    directories only (no mount)."""

    def stop(parts, st):
        if st is None:
            return ""  # missing: so is all below it
        if not stat.S_ISDIR(st.st_mode):
            return "/" + "/".join(parts)
        return None

    _, blocker = _resolve_in_root(path, lambda parts: layer_entry(layers, parts), stop, max_links)
    return blocker or None


def overlay_data(lower_dirs, upper, work):
    """overlayfs mount data; `lower_dirs` base layer first (reversed here, top first)."""
    lowers = ":".join(str(d) for d in reversed(list(lower_dirs)))
    return f"lowerdir={lowers},upperdir={upper},workdir={work}"


_DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)


def _mkdirp(path, mode=0o755):
    os.makedirs(path, mode=mode, exist_ok=True)


def _make_dev(rootfs):
    dev = secure_join(rootfs, "/dev")  # an image's /dev symlink stays inside the root
    _mkdirp(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name, major, minor in _DEVICES:
        os.mknod(os.path.join(dev, name), 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(os.path.join(dev, name), 0o666)
    for name in ("pts", "shm"):
        os.mkdir(os.path.join(dev, name), 0o755)
    mount(
        "devpts",
        os.path.join(dev, "pts"),
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    mount(
        "shm",
        os.path.join(dev, "shm"),
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "mode=1777,size=65536k",
    )
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    os.symlink("/proc/self/fd", os.path.join(dev, "fd"))
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", os.path.join(dev, name))


def _mount_volume(rootfs, vol):
    source, target, readonly = vol["source"], vol["destination"], vol.get("ro", False)
    dest = secure_join(rootfs, target)
    if vol.get("type") == "tmpfs":  # Docker's: nosuid, nodev, noexec unless asked
        given = set(vol.get("flags") or ())
        flags = (0 if "suid" in given else MS_NOSUID) | (0 if "dev" in given else MS_NODEV)
        flags |= (0 if "exec" in given else MS_NOEXEC) | (MS_RDONLY if readonly else 0)
        _mkdirp(dest)
        mount("tmpfs", dest, "tmpfs", flags, vol.get("options") or None)
        return
    if os.path.isdir(source):
        _mkdirp(dest)
    else:
        _mkdirp(os.path.dirname(dest))
        if not os.path.lexists(dest):
            open(dest, "a").close()
    mount(source, dest, None, MS_BIND | MS_REC)
    if readonly:
        mount(None, dest, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)


def prepare_root(
    rootfs, lower_dirs, upper, work, volumes=(), readonly_sys=True, mount_overlay=True
):
    """Mount the container's root at `rootfs` in the current (new) mount namespace.

    Makes every existing mount private first so nothing propagates to the host,
    then: overlayfs (image layers + per-container upper dir; unless
    `mount_overlay` is false because the caller mounted it on the host already),
    /proc (of the current pid namespace), a minimal /dev on tmpfs, read-only
    /sys, volumes.
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    if mount_overlay:
        mount("overlay", rootfs, "overlay", ROOTFS_FLAGS, overlay_data(lower_dirs, upper, work))
    proc = secure_join(rootfs, "/proc")
    _mkdirp(proc)
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _make_dev(rootfs)
    sys_dir = secure_join(rootfs, "/sys")
    _mkdirp(sys_dir)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | (MS_RDONLY if readonly_sys else 0)
    mount("sysfs", sys_dir, "sysfs", flags)
    from .volumes import fill_from_image

    for vol in volumes:  # a new volume takes the image's content first (Docker's)
        if vol.get("fill"):
            fill_from_image(secure_join(rootfs, vol["destination"]), vol)
        _mount_volume(rootfs, vol)


def pivot_into(rootfs):
    """pivot_root into `rootfs` and lazily detach the old root (runc's '.' trick)."""
    os.chdir(rootfs)
    pivot_root(".", ".")
    umount(".", MNT_DETACH)
    os.chdir("/")


def ns_fds(pid, which=None):
    """Open /proc/<pid>/ns/<name> for each namespace (all of NAMESPACES by default)."""
    out = []
    try:
        for name, flag in NAMESPACES:
            if which is None or name in which:
                out.append((os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY), flag))
    except FileNotFoundError:
        for fd, _ in out:
            os.close(fd)
        raise
    return out


def same_ns(pid, name, other="self"):
    try:
        return (
            os.stat(f"/proc/{pid}/ns/{name}").st_ino == os.stat(f"/proc/{other}/ns/{name}").st_ino
        )
    except OSError:
        return False


def open_cgroups(cgroup_procs):
    """Open a container's cgroup.procs files (write-only, close-on-exec) for `join_cgroups`."""
    return [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in cgroup_procs]


def join_cgroups(fds):
    """Move the calling process into the cgroups whose cgroup.procs `fds` are open."""
    for fd in fds:
        os.write(fd, b"0")


def enter(pid, namespaces=None):
    """Join container `pid`'s namespaces and chroot into its root.

    For use in a freshly forked, single-threaded child. The pid namespace only
    applies to the caller's future children, so callers fork once more.
    Namespaces the caller already shares (e.g. --net host) are skipped.
    """
    root_fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    wanted = [
        name
        for name, _ in NAMESPACES
        if (namespaces is None or name in namespaces) and not same_ns(pid, name)
    ]
    fds = ns_fds(pid, wanted)
    for fd, flag in fds:
        setns(fd, flag)
        os.close(fd)
    os.fchdir(root_fd)
    os.chroot(".")
    os.close(root_fd)


def sethostname(name):
    """sethostname(2) (without importing socket, which the start path does not need)."""
    raw = name.encode()
    _check(libc().sethostname(raw, len(raw)), "sethostname")


def loopback_up():
    """Bring `lo` up in the current network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    import struct
    from fcntl import ioctl

    fd = libc().socket(2, 2 | 0o2000000, 0)  # AF_INET, SOCK_DGRAM | SOCK_CLOEXEC
    if fd < 0:
        _check(-1, "socket")
    try:
        flags = struct.unpack("16sh", ioctl(fd, 0x8913, struct.pack("16sh", b"lo", 0)))[1]
        ioctl(fd, 0x8914, struct.pack("16sh", b"lo", flags | 1))
    finally:
        os.close(fd)
