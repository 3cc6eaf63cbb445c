"""A container's resource use and limits from its cgroup files, on cgroup v1, v2 and the
hybrid layout (v1 controllers with an empty cgroup2 beside them).

The cgroups of a process come from /proc/<pid>/cgroup resolved against the cgroup mounts
in /proc/self/mountinfo, so the same reader serves pyinspect's, Docker's, Podman's,
containerd's and plain runc's containers. Each value is read from whichever hierarchy
has its controller: v1 files (memory.usage_in_bytes, cpuacct.usage, pids.current,
blkio.throttle.io_service_bytes) or v2 files (memory.current, cpu.stat, pids.current,
io.stat).
"""

import os
from dataclasses import dataclass

UNLIMITED_V1 = 1 << 62  # memory.limit_in_bytes of an unlimited v1 cgroup is about this


@dataclass
class CgroupSample:
    """One reading of a container's cgroups (None: not available on this layout)."""

    cpu_ns: int | None = None  # CPU time used, cumulative
    mem_usage: int | None = None  # bytes, page cache that can be dropped excluded (as Docker)
    mem_limit: int | None = None  # bytes; None = unlimited
    pids: int | None = None
    pids_limit: int | None = None  # None = unlimited
    cpus_limit: float | None = None  # CFS quota / period; None = unlimited
    blk_read: int | None = None  # bytes
    blk_write: int | None = None
    oom_kills: int | None = None
    version: str = ""  # v1 | v2 | hybrid (which files were read)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """{controller, or "" for cgroup2: mount point} of the mounted cgroup hierarchies."""
    out: dict[str, str] = {}
    try:
        with open(mountinfo) as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                parts = post.split()
                if len(parts) < 3:
                    continue
                mnt = pre.split()[4]
                if parts[0] == "cgroup2":
                    out.setdefault("", mnt)
                elif parts[0] == "cgroup":
                    for opt in parts[2].split(","):
                        if opt not in ("rw", "ro") and not opt.startswith(
                            ("relatime", "nosuid", "nodev", "noexec", "clone_children")
                        ):
                            out.setdefault(opt, mnt)
    except OSError:
        pass
    return out


def paths_of_pid(pid: int, mnts: dict[str, str] | None = None) -> dict[str, str]:
    """{controller or "": absolute cgroup directory} of a live process ({} once gone)."""
    mnts = mounts() if mnts is None else mnts
    out: dict[str, str] = {}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            _hid, ctrls, path = line.split(":", 2)
        except ValueError:
            continue
        for ctrl in ctrls.split(",") if ctrls else [""]:
            base = mnts.get(ctrl)
            if base:
                out[ctrl] = os.path.join(base, path.lstrip("/"))
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def _kv(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            continue
    return out


def _max(text: str | None) -> int | None:
    """A v2 limit file's value: None for "max" or unreadable."""
    if not text:
        return None
    v = text.split()[0]
    return None if v == "max" else int(v)


def read(paths: dict[str, str]) -> CgroupSample:
    """The sample of a container whose cgroups are `paths` ({controller or "": dir})."""
    s = CgroupSample()
    v1, v2 = set(), set()
    unified = paths.get("") or paths.get("unified")
    # memory
    mem = paths.get("memory")
    if mem and os.path.exists(f"{mem}/memory.usage_in_bytes"):
        v1.add("memory")
        usage = _int(f"{mem}/memory.usage_in_bytes")
        stat = _kv(_read(f"{mem}/memory.stat"))
        if usage is not None:
            s.mem_usage = max(0, usage - stat.get("total_inactive_file", 0))
        limit = _int(f"{mem}/memory.limit_in_bytes")
        s.mem_limit = None if limit is None or limit >= UNLIMITED_V1 else limit
        oom = _kv(_read(f"{mem}/memory.oom_control"))
        s.oom_kills = oom.get("oom_kill")
    elif unified and os.path.exists(f"{unified}/memory.current"):
        v2.add("memory")
        usage = _int(f"{unified}/memory.current")
        stat = _kv(_read(f"{unified}/memory.stat"))
        if usage is not None:
            s.mem_usage = max(0, usage - stat.get("inactive_file", 0))
        s.mem_limit = _max(_read(f"{unified}/memory.max"))
        s.oom_kills = _kv(_read(f"{unified}/memory.events")).get("oom_kill")
    # cpu time and quota
    acct = paths.get("cpuacct")
    if acct and os.path.exists(f"{acct}/cpuacct.usage"):
        v1.add("cpuacct")
        s.cpu_ns = _int(f"{acct}/cpuacct.usage")
    elif unified and os.path.exists(f"{unified}/cpu.stat"):
        v2.add("cpu")
        usec = _kv(_read(f"{unified}/cpu.stat")).get("usage_usec")
        s.cpu_ns = None if usec is None else usec * 1000
    cpu = paths.get("cpu")
    if cpu and os.path.exists(f"{cpu}/cpu.cfs_quota_us"):
        quota, period = _int(f"{cpu}/cpu.cfs_quota_us"), _int(f"{cpu}/cpu.cfs_period_us")
        if quota and quota > 0 and period:
            s.cpus_limit = quota / period
    elif unified and os.path.exists(f"{unified}/cpu.max"):
        parts = (_read(f"{unified}/cpu.max") or "max").split()
        if parts[0] != "max" and len(parts) > 1:
            s.cpus_limit = int(parts[0]) / int(parts[1])
    # pids
    pids = paths.get("pids")
    if pids and os.path.exists(f"{pids}/pids.current"):
        v1.add("pids")
        s.pids = _int(f"{pids}/pids.current")
        s.pids_limit = _max(_read(f"{pids}/pids.max"))
    elif unified and os.path.exists(f"{unified}/pids.current"):
        v2.add("pids")
        s.pids = _int(f"{unified}/pids.current")
        s.pids_limit = _max(_read(f"{unified}/pids.max"))
    # block I/O
    blk = paths.get("blkio")
    if blk and os.path.exists(f"{blk}/blkio.throttle.io_service_bytes"):
        v1.add("blkio")
        s.blk_read = s.blk_write = 0
        for line in (_read(f"{blk}/blkio.throttle.io_service_bytes") or "").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in ("Read", "Write"):
                if parts[1] == "Read":
                    s.blk_read += int(parts[2])
                else:
                    s.blk_write += int(parts[2])
    elif unified and os.path.exists(f"{unified}/io.stat"):
        v2.add("io")
        s.blk_read = s.blk_write = 0
        for line in (_read(f"{unified}/io.stat") or "").splitlines():
            for field in line.split()[1:]:
                k, _, v = field.partition("=")
                if k == "rbytes":
                    s.blk_read += int(v)
                elif k == "wbytes":
                    s.blk_write += int(v)
    s.version = "hybrid" if v1 and v2 else ("v2" if v2 else ("v1" if v1 else ""))
    return s


def host_memory() -> int | None:
    """MemTotal in bytes (what `docker stats` shows as the limit of an unlimited container)."""
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def net_dev(pid: int) -> tuple[int, int] | None:
    """(rx bytes, tx bytes) over every interface but lo of the process's network namespace."""
    text = _read(f"/proc/{pid}/net/dev")
    if text is None:
        return None
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            continue
        f = rest.split()
        if len(f) >= 9:
            rx += int(f[0])
            tx += int(f[8])
    return rx, tx
