"""Container cgroups on v1 (a hierarchy per controller) and v2 (one unified tree).

Every container gets `pyinspect/<id>` in each hierarchy it uses; the
`pyinspect` parent is removed again once it is empty. On a hybrid host (v1
controllers plus an empty cgroup2 at /sys/fs/cgroup/unified) the container
also gets a cgroup2 directory, so `bpf_get_current_cgroup_id()` tells
containers apart. `Cgroup.paths` maps controller name (or "unified") to path.
"""

import errno
import os
import re
import time

from pyinspect.errors import UnavailableError, UsageError

BASE = "/sys/fs/cgroup"
PARENT = "pyinspect"
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
V2_CONTROLLERS = ("memory", "cpu", "pids")

_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*$", re.I)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_MEMORY = 6 << 20  # Docker's minimum
PID_MAX_LIMIT = 4 << 20  # pids.max refuses more (include/linux/threads.h, 64-bit)


def parse_bytes(text, what: str) -> int:
    """Docker's byte counts (`30m`, `1g`, `512k`, `1048576`); UsageError naming `what`."""
    m = _MEM_RE.match(str(text))
    if not m:
        raise UsageError(
            f"invalid {what} {text!r}: expected a number with an "
            f"optional unit b, k, m or g (e.g. 30m)"
        )
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value >= 2**63:  # also inf, from hundreds of digits
        raise UsageError(f"invalid {what} {text!r}: too large")
    return int(value)


def parse_memory(text):
    """Docker's memory strings: `30m`, `1g`, `512k`, `1048576` -> bytes (>= 6 MiB)."""
    if text is None or text == "":
        return None
    value = parse_bytes(text, "memory limit")
    if value < MIN_MEMORY:
        raise UsageError(f"invalid memory limit {text!r}: the minimum is 6m")
    return value


def parse_cpus(text):
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid --cpus {text!r}: expected a number such as 0.5") from None
    ncpu = os.cpu_count() or 1
    if not 0 < value <= ncpu:  # also nan
        raise UsageError(f"invalid --cpus {text!r}: must be above 0 and at most {ncpu}")
    return value


def parse_pids(value):
    if value is None:
        return None
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"invalid --pids-limit {value!r}: expected an integer") from None
    if value > PID_MAX_LIMIT:
        raise UsageError(
            f"invalid --pids-limit {value}: at most {PID_MAX_LIMIT} "
            "(the kernel's PID_MAX_LIMIT; 0 or -1 for no limit)"
        )
    return value if value > 0 else None


def version():
    """2 on a pure cgroup2 host, 1 on a v1 or hybrid host."""
    if os.path.exists(f"{BASE}/cgroup.controllers"):
        return 2
    if os.path.exists(f"{BASE}/memory/cgroup.procs"):
        return 1
    raise UnavailableError(
        f"cgroups: neither cgroup v1 controllers nor cgroup2 are mounted under {BASE}"
    )


def _hierarchies(controllers=V1_CONTROLLERS):
    """name -> mount directory of each hierarchy pyinspect uses on this host."""
    if version() == 2:
        return {"unified": BASE}
    out, seen = {}, set()
    for c in controllers:
        d = f"{BASE}/{c}"
        real = os.path.realpath(d)
        if real in seen or not os.path.exists(f"{d}/cgroup.procs"):
            continue
        seen.add(real)
        out[c] = d
    if os.path.exists(f"{BASE}/unified/cgroup.procs"):
        out["unified"] = f"{BASE}/unified"
    return out


def _write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def _read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def _events_frozen(events_file: str) -> bool:
    return "frozen 1" in _read(events_file).splitlines()


def frozen_by(pid: int) -> str | None:
    """The freezer file that holds process `pid` frozen (cgroup2's cgroup.events, or v1's
    freezer.state as Docker's runc uses on v1 and hybrid hosts), or None while it runs."""
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if hid == "0" and ctrls == "":
            for mount in (f"{BASE}/unified", BASE):
                if _events_frozen(f"{mount}{path}/cgroup.events"):
                    return f"{mount}{path}/cgroup.events"
        elif "freezer" in ctrls.split(","):
            state_file = f"{BASE}/freezer{path}/freezer.state"
            if _read(state_file).strip() == "FROZEN":
                return state_file
    return None


class Cgroup:
    """The cgroups of one container (existing or to be created)."""

    def __init__(self, cid, paths=None, cpu=True):
        """`paths` of an existing container, or None for the default layout (every
        hierarchy; with `cpu=False` a v1 host skips cpu/cpuacct: each hierarchy
        joined costs the start path a cgroup.procs write)."""
        self.id = cid
        self.v2 = None
        if paths is None:
            hier = _hierarchies(V1_CONTROLLERS if cpu else ("memory", "pids"))
            self.v2 = list(hier) == ["unified"] and hier["unified"] == BASE
            paths = {name: f"{base}/{PARENT}/{cid}" for name, base in hier.items()}
        self.paths = dict(paths)
        if self.v2 is None:
            self.v2 = list(self.paths) == ["unified"] and os.path.exists(
                f"{BASE}/cgroup.controllers"
            )

    def _enable_v2_controllers(self, parent_dir):
        avail = set(_read(f"{BASE}/cgroup.controllers").split())
        want = [c for c in V2_CONTROLLERS if c in avail]
        for d in (BASE, parent_dir):
            have = set(_read(f"{d}/cgroup.subtree_control").split())
            missing = [c for c in want if c not in have]
            if missing:
                try:
                    _write(f"{d}/cgroup.subtree_control", " ".join("+" + c for c in missing))
                except OSError:
                    pass  # reported when the limit itself cannot be written

    def create(self, memory=None, cpus=None, pids=None):
        """Make the directories and write the limits; returns `paths`."""
        for path in self.paths.values():
            parent = os.path.dirname(path)
            for _ in range(20):  # another container may rmdir the parent meanwhile
                try:
                    os.makedirs(parent, exist_ok=True)
                    if self.v2:
                        self._enable_v2_controllers(parent)
                    os.mkdir(path)
                    break
                except FileExistsError:
                    break
                except FileNotFoundError:
                    time.sleep(0.001)
            else:
                raise UnavailableError(f"cannot create cgroup {path}: parent keeps vanishing")
        try:
            self._limits(memory, cpus, pids)
        except OSError as exc:
            self.remove()
            raise UnavailableError(f"cannot set cgroup limits: {exc}") from None
        return self.paths

    def _limits(self, memory, cpus, pids):
        p = self.paths
        if self.v2:
            d = p["unified"]
            if memory:
                _write(f"{d}/memory.max", memory)
                if os.path.exists(f"{d}/memory.swap.max"):
                    _write(f"{d}/memory.swap.max", 0)
            if cpus:
                _write(f"{d}/cpu.max", f"{int(cpus * 100000)} 100000")
            if pids:
                _write(f"{d}/pids.max", pids)
            return
        if memory:
            mem = f"{p['memory']}/memory.limit_in_bytes"
            sw = f"{p['memory']}/memory.memsw.limit_in_bytes"  # no swap: the limit is the limit
            # memsw may never be below the memory limit: raise it first, lower it last
            order = [sw, mem] if int(_read(mem, "0") or 0) < memory else [mem, sw]
            for path in order:
                if path == mem or os.path.exists(sw):
                    _write(path, memory)
        if cpus:
            if "cpu" not in p:  # made without --cpus: `update` adds it
                self._add_hierarchy("cpu")
            _write(f"{p['cpu']}/cpu.cfs_period_us", 100000)
            _write(f"{p['cpu']}/cpu.cfs_quota_us", int(cpus * 100000))
        if pids:
            if "pids" not in p:
                raise OSError(errno.ENOENT, "the pids controller is not mounted")
            _write(f"{p['pids']}/pids.max", pids)

    def update(self, memory=None, cpus=None, pids=None):
        """Change the limits of a live container (`pyinspect update`): None leaves one
        as it is, pids "max" removes that limit. A v1 host whose container has no cpu
        cgroup yet (made without --cpus) gets one, and its processes move into it."""
        self._limits(memory, cpus, pids)

    def _add_hierarchy(self, name):
        """Make this container's cgroup in v1 hierarchy `name` and move its processes
        there (until no new one appears: they may fork meanwhile)."""
        base = _hierarchies((name,)).get(name)
        if base is None:
            raise OSError(errno.ENOENT, f"the {name} controller is not mounted")
        path = f"{base}/{PARENT}/{self.id}"
        os.makedirs(path, exist_ok=True)
        self.paths[name] = path
        for _ in range(100):
            moved = set(self.pids()) - {int(x) for x in _read(f"{path}/cgroup.procs").split()}
            if not moved:
                return
            for pid in moved:
                try:
                    _write(f"{path}/cgroup.procs", pid)
                except ProcessLookupError:
                    pass  # it exited meanwhile
        raise OSError(errno.EAGAIN, "its processes kept forking while they were moved")

    def procs_files(self):
        """The cgroup.procs files a process writes itself into to join."""
        return [f"{path}/cgroup.procs" for path in self.paths.values()]

    def join(self, pid=0):
        for f in self.procs_files():
            _write(f, pid)

    def pids(self):
        """Host pids of every process in the container's cgroup."""
        path = next(iter(self.paths.values()), None)
        if path is None:
            return []
        return [int(x) for x in _read(f"{path}/cgroup.procs").split()]

    def oom_kills(self):
        """How many processes the kernel OOM-killed in this cgroup."""
        if self.v2:
            text = _read(f"{self.paths['unified']}/memory.events")
        elif "memory" in self.paths:
            text = _read(f"{self.paths['memory']}/memory.oom_control")
        else:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def limits(self):
        """The limits in force, for inspect: memory bytes, cpu quota/period, pids."""
        out = {}
        if self.v2:
            d = self.paths.get("unified", "")
            out["memory"] = _read(f"{d}/memory.max").strip()
            out["pids"] = _read(f"{d}/pids.max").strip()
        else:
            out["memory"] = _read(f"{self.paths.get('memory', '')}/memory.limit_in_bytes").strip()
            out["pids"] = _read(f"{self.paths.get('pids', '')}/pids.max").strip()
        return out

    def kill_all(self, sig=9):
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if self.frozen():  # a paused container: its processes take the signal now
            self.freeze(False)

    # -- pause / unpause: cgroup2's freezer (cgroup.freeze), the container's own directory
    # in the unified tree on v2 and hybrid hosts alike
    def frozen(self) -> bool:
        """True while `pause` holds every process (cgroup.events says `frozen 1`)."""
        d = self.paths.get("unified")
        return bool(d) and _events_frozen(f"{d}/cgroup.events")

    def freeze(self, on: bool, timeout: float = 5.0) -> None:
        """Freeze (`on`) or thaw every process; returns once the kernel says it is done."""
        d = self.paths.get("unified")
        if not d or not os.path.exists(f"{d}/cgroup.freeze"):
            raise UnavailableError(
                "pause needs the cgroup2 freezer (cgroup v2, or a hybrid host's "
                f"{BASE}/unified), and this container has no cgroup2 directory"
            )
        try:
            _write(f"{d}/cgroup.freeze", 1 if on else 0)
        except OSError as exc:
            raise UnavailableError(f"cannot write {d}/cgroup.freeze: {exc.strerror}") from None
        deadline = time.monotonic() + timeout
        while self.frozen() != on:
            if time.monotonic() > deadline:
                raise UnavailableError(
                    f"cgroup {d} did not {'freeze' if on else 'thaw'} within {timeout:g} s"
                )
            time.sleep(0.002)

    def remove(self, timeout=5.0):
        """rmdir every directory (waiting for exiting processes), then the empty parents;
        also one `update` made in a hierarchy this record does not list."""
        deadline = time.monotonic() + timeout
        known = set(self.paths.values())
        if not self.v2:
            hier = _hierarchies()
            known |= {f"{b}/{PARENT}/{self.id}" for b in hier.values()}
        for path in sorted(known):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise UnavailableError(
                            f"cannot remove cgroup {path}: {exc.strerror}"
                        ) from None
                    self.kill_all(9)
                    time.sleep(0.002)
            try:
                os.rmdir(os.path.dirname(path))  # the shared `pyinspect` parent, if empty
            except OSError:
                pass

    def exists(self):
        return any(os.path.isdir(p) for p in self.paths.values())
