"""Container records on disk and the reconciler's view of them.

Layout under the state root:

    containers/<id>/config.json   what was asked for (spec, resolved process, image)
    containers/<id>/state.json    what is happening (status, pids, exit code, OOM)
    containers/<id>/upper, work   the overlayfs upper and work dirs
    containers/<id>/rootfs        the (empty) mount point of the container's root
    containers/<id>/container.log the log (JSON lines: stream, time, text)
    names/<name>                  symlink -> "<id>" reserving a name atomically

Both JSON files are replaced atomically (write a temp file, rename). A record
is only complete once config.json exists; `load_all` skips anything else.
`load_all` is read-only and cheap: discovery, the web app and doctor call it.
"""

import json
import os
import time
from dataclasses import asdict, dataclass, field

STATIC_FIELDS = ("id", "name", "image", "image_id", "created", "spec", "process",
                 "layers", "image_config", "hostname")


@dataclass
class ContainerSpec:
    """What `run`/`create` was asked for (raw user values, validated by the runtime)."""

    image: str
    command: list = None          # CMD override (None: the image's Cmd)
    entrypoint: str = None        # --entrypoint (None: the image's; "": none)
    name: str = None
    env: list = field(default_factory=list)       # ["K=V", ...]
    volumes: list = field(default_factory=list)   # ["/host:/ctr[:ro]", ...]
    workdir: str = None
    hostname: str = None
    memory: str = None
    cpus: str = None
    pids_limit: int = None
    interactive: bool = False
    tty: bool = False
    auto_remove: bool = False
    network_mode: str = "bridge"
    publish: list = field(default_factory=list)
    publish_all: bool = False

    @classmethod
    def from_dict(cls, d):
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Container:
    """One container: its static config and its current state."""

    id: str
    name: str
    image: str
    image_id: str = ""
    status: str = "created"       # created | running | exited
    pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    created: str = ""
    started_at: str = ""
    finished_at: str = ""
    spec: ContainerSpec = None
    network: dict = field(default_factory=dict)
    cgroup: dict = field(default_factory=dict)
    # runtime bookkeeping
    process: dict = field(default_factory=dict)   # argv, env, cwd, user
    layers: list = field(default_factory=list)    # image layer dirs, base first
    image_config: dict = field(default_factory=dict)
    hostname: str = ""
    pid_start: int = 0            # /proc start time of `pid` (guards against pid reuse)
    shim_pid: int = 0
    shim_start: int = 0
    creator: list = field(default_factory=list)   # [pid, start] of a `run` still starting it
    restart_count: int = 0
    error: str = ""
    path: str = ""

    @property
    def short_id(self):
        return self.id[:12]

    @property
    def log_path(self):
        return os.path.join(self.path, "container.log")

    def static(self):
        d = {k: getattr(self, k) for k in STATIC_FIELDS}
        d["spec"] = asdict(self.spec) if self.spec else None
        return d

    def dynamic(self):
        return {k: v for k, v in asdict(self).items()
                if k not in STATIC_FIELDS and k != "path"}


_TIMING = os.environ.get("PYINSPECT_TIMING")
_timing_fd = None


def mark(stage):
    """Append `stage time_ns` to the file named by $PYINSPECT_TIMING (benchmarks only).

    The file is opened once and the fd inherited by the shim and the init, so
    marks work after pivot_root too."""
    global _timing_fd
    if not _TIMING:
        return
    try:
        if _timing_fd is None:
            _timing_fd = os.open(_TIMING, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(_timing_fd, f"{stage} {time.time_ns()}\n".encode())
    except OSError:
        pass


def now_rfc3339():
    """UTC now as RFC 3339 with nanoseconds, like Docker's timestamps."""
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def containers_dir(root):
    return os.path.join(str(root), "containers")


def names_dir(root):
    return os.path.join(str(root), "names")


def write_json(path, data):
    """Replace `path` atomically with `data` as JSON."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(json.dumps(data))  # dumps without indent: the C encoder (start path)
    os.rename(tmp, path)


def save(c, static=False):
    """Write the state file (and the config file too with `static`)."""
    if static:
        write_json(os.path.join(c.path, "config.json"), c.static())
    write_json(os.path.join(c.path, "state.json"), c.dynamic())


def load(path):
    """The container recorded in directory `path`, or None if incomplete/unreadable."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            static = json.load(f)
        try:
            with open(os.path.join(path, "state.json")) as f:
                dynamic = json.load(f)
        except FileNotFoundError:
            dynamic = {}
    except (OSError, ValueError):
        return None
    if not isinstance(static, dict) or not isinstance(dynamic, dict):
        return None
    data = {**dynamic, **static}
    data["spec"] = ContainerSpec.from_dict(data.get("spec") or {"image": data.get("image", "")})
    data = {k: v for k, v in data.items() if k in Container.__dataclass_fields__}
    try:
        c = Container(**data)
    except TypeError:
        return None
    c.path = path
    return c


def load_all(root):
    """Every complete container record under `root`, oldest first. Read-only."""
    base = containers_dir(root)
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return []
    out = []
    for name in entries:
        if len(name) != 64:
            continue
        c = load(os.path.join(base, name))
        if c is not None:
            out.append(c)
    out.sort(key=lambda c: c.created)
    return out


def proc_start(pid):
    """The start time (clock ticks since boot) of `pid`, or 0 if it does not exist."""
    if not pid:
        return 0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return 0  # a zombie is as good as dead
    return int(fields[19])


def alive(pid, start):
    """True when `pid` exists and is still the process that started at `start`."""
    return bool(pid) and proc_start(pid) == start and start != 0


def shim_alive(c):
    return alive(c.shim_pid, c.shim_start)


def init_alive(c):
    return alive(c.pid, c.pid_start)


def creator_alive(c):
    return bool(c.creator) and alive(c.creator[0], c.creator[1])
