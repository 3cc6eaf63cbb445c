"""Container records on disk and the reconciler's view of them.

Layout under the state root:

    containers/<id>/config.json   what was asked for (spec, resolved process, image)
    containers/<id>/state.json    what is happening (status, pids, exit code, OOM)
    containers/<id>/upper, work   the overlayfs upper and work dirs
    containers/<id>/rootfs        the (empty) mount point of the container's root
    containers/<id>/container.log the log (JSON lines: stream, time, text)
    names/<name>                  symlink -> "<id>" reserving a name atomically

Both JSON files are replaced atomically (write a temp file, rename). A record
is only complete once config.json exists. A `<id>` directory whose files cannot
be read as a record is "damaged": `load_all` skips it (unless asked for it), and
the runtime lists it in `ps -a` and lets `rm` remove it, never repairs it.
`load_all` is read-only and cheap: discovery, the web app and doctor call it.
"""

import json
import os
import time
from dataclasses import asdict, dataclass, field

from pyinspect.proc import start_ticks

from .fsutil import atomic_write

STATIC_FIELDS = (
    "id",
    "name",
    "image",
    "image_id",
    "created",
    "spec",
    "process",
    "layers",
    "image_config",
    "hostname",
    "mounts",
)


@dataclass
class ContainerSpec:
    """What `run`/`create` was asked for (raw user values, validated by the runtime)."""

    image: str
    command: list | None = None  # CMD override (None: the image's Cmd)
    entrypoint: str | None = None  # --entrypoint (None: the image's; "": none)
    name: str | None = None
    env: list = field(default_factory=list)  # ["K=V", ...]
    volumes: list = field(default_factory=list)  # -v: ["/host:/ctr[:ro]", "name:/ctr", ...]
    mount: list = field(default_factory=list)  # --mount: ["type=bind,src=/a,dst=/b", ...]
    tmpfs: list = field(default_factory=list)  # --tmpfs: ["/run:size=64m", ...]
    volumes_from: list = field(default_factory=list)  # --volumes-from: ["web:ro", ...]
    workdir: str | None = None
    hostname: str | None = None
    memory: str | None = None
    cpus: str | None = None
    pids_limit: int | None = None
    interactive: bool = False
    tty: bool = False
    auto_remove: bool = False
    network_mode: str = "bridge"
    network_name: str = ""  # --network NAME: a user-defined network (network_mode bridge)
    network_aliases: list = field(default_factory=list)  # --network-alias
    dns: list = field(default_factory=list)  # --dns: nameservers (a user network's upstreams)
    dns_search: list = field(default_factory=list)  # --dns-search
    dns_options: list = field(default_factory=list)  # --dns-option
    publish: list = field(default_factory=list)
    publish_all: bool = False
    restart: str = "no"  # --restart: no | always | unless-stopped | on-failure[:N]
    detach_keys: str = ""  # --detach-keys of an attached -it run ("": Docker's ctrl-p,ctrl-q)

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
    status: str = "created"  # created | running | exited
    pid: int = 0
    exit_code: int = 0
    oom_killed: bool = False
    created: str = ""
    started_at: str = ""
    finished_at: str = ""
    spec: ContainerSpec = field(default_factory=lambda: ContainerSpec(image=""))
    network: dict = field(default_factory=dict)
    cgroup: dict = field(default_factory=dict)
    # runtime bookkeeping
    process: dict = field(default_factory=dict)  # argv, env, cwd, user
    layers: list = field(default_factory=list)  # image layer dirs, base first
    image_config: dict = field(default_factory=dict)
    hostname: str = ""
    mounts: list = field(default_factory=list)  # binds and volumes (volumes.mount_record)
    pid_start: int = 0  # /proc start time of `pid` (guards against pid reuse)
    shim_pid: int = 0
    shim_start: int = 0
    creator: list = field(default_factory=list)  # [pid, start] of a `run` still starting it
    restart_count: int = 0  # restarts by the policy since the last `start` (Docker's)
    restarting: bool = False  # exited, and its monitor waits to restart it
    manually_stopped: bool = False  # `stop`/`kill` since the last start (unless-stopped)
    error: str = ""
    path: str = ""

    @property
    def short_id(self):
        return self.id[:12]

    @property
    def paused(self) -> bool:
        """Frozen by `pause`: read from the kernel's cgroup2 freezer, never stored."""
        if self.status != "running" or not self.cgroup:
            return False
        from .cgroups import Cgroup

        return Cgroup(self.id, self.cgroup).frozen()

    @property
    def log_path(self):
        return os.path.join(self.path, "container.log")

    def static(self):
        d = {k: getattr(self, k) for k in STATIC_FIELDS}
        d["spec"] = asdict(self.spec) if self.spec else None
        return d

    def dynamic(self):
        return {k: v for k, v in asdict(self).items() if k not in STATIC_FIELDS and k != "path"}


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


TMP_PREFIX = ".tmp-"  # entries of containers/ that are not (yet, or any more) records


EXIT_CODE_FILE = "exit_code"  # an --rm container's last exit code, for `wait` (see below)


def keep_exit_code(c, waited_only=False) -> None:
    """Write `c`'s exit code into its EXIT_CODE_FILE in place (no rename), before its
    record is removed: a `wait` that opened the file earlier reads it through its fd
    afterwards. `waited_only`: only when a `wait` made the file."""
    flags = os.O_WRONLY | (0 if waited_only else os.O_CREAT)
    try:
        fd = os.open(os.path.join(c.path, EXIT_CODE_FILE), flags, 0o644)
    except OSError:
        return
    try:
        data = str(c.exit_code).encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    except OSError:
        pass
    finally:
        os.close(fd)


def kept_exit_code(fd: int) -> int | None:
    """The code keep_exit_code wrote into the EXIT_CODE_FILE open as `fd` (opened, with
    O_CREAT, before the record went), or None when none was written."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def hide_record(root, c) -> str:
    """Free `c`'s name and rename its directory to `.tmp-rm-<id>` (so a half-done
    removal never looks like a container); returns the new path (c.path if the rename
    failed)."""
    link = os.path.join(names_dir(root), c.name)
    try:
        mine = os.readlink(link) == c.id
    except OSError:
        mine = False
    if mine:
        try:
            os.unlink(link)
        except FileNotFoundError:
            pass
    trash = os.path.join(containers_dir(root), f"{TMP_PREFIX}rm-{c.id}")
    try:
        os.rename(c.path, trash)
    except OSError:
        trash = c.path
    return trash


def remove_tree(trash: str) -> None:
    """rm -rf without following links (and without importing shutil); what cannot be
    removed is left for the reconciler."""
    for top, dirs, files in os.walk(trash, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(top, name))
            except OSError:
                pass
        for name in dirs:
            p = os.path.join(top, name)
            try:
                os.unlink(p) if os.path.islink(p) else os.rmdir(p)
            except OSError:
                pass
    try:
        os.rmdir(trash)
    except OSError:
        pass  # gone, or left for the reconciler (as .tmp-rm-<id>)


def write_json(path, data):
    """Replace `path` atomically with `data` as JSON (not fsynced: the start path)."""
    with atomic_write(path, "w") as f:
        f.write(json.dumps(data))  # dumps without indent: the C encoder (start path)


def save(c, static=False):
    """Write the state file (and the config file too with `static`)."""
    if static:
        write_json(os.path.join(c.path, "config.json"), c.static())
    write_json(os.path.join(c.path, "state.json"), c.dynamic())


def save_static(c):
    """Write only the config file (name, spec, process): what the monitor never writes."""
    write_json(os.path.join(c.path, "config.json"), c.static())


DAMAGED = "damaged"
STATUSES = ("created", "running", "exited")

# the JSON type each recorded field must have (a record that breaks this is damaged)
_FIELD_TYPES = {
    **dict.fromkeys(
        (
            "id",
            "name",
            "image",
            "image_id",
            "status",
            "created",
            "started_at",
            "finished_at",
            "hostname",
            "error",
        ),
        str,
    ),
    **dict.fromkeys(
        ("pid", "exit_code", "pid_start", "shim_pid", "shim_start", "restart_count"), int
    ),
    **dict.fromkeys(("oom_killed", "restarting", "manually_stopped"), bool),
    **dict.fromkeys(("network", "cgroup", "process", "image_config"), dict),
    **dict.fromkeys(("layers", "creator", "mounts"), list),
}
_NONE = type(None)
_SPEC_TYPES = {
    "image": str,
    "command": (list, _NONE),
    **dict.fromkeys(
        (
            "env",
            "volumes",
            "mount",
            "tmpfs",
            "volumes_from",
            "publish",
            "network_aliases",
            "dns",
            "dns_search",
            "dns_options",
        ),
        list,
    ),
    **dict.fromkeys(
        (
            "entrypoint",
            "name",
            "workdir",
            "hostname",
            "network_mode",
            "network_name",
            "restart",
            "detach_keys",
        ),
        (str, _NONE),
    ),
    **dict.fromkeys(("memory", "cpus", "pids_limit"), (str, int, float, _NONE)),
    **dict.fromkeys(("interactive", "tty", "auto_remove", "publish_all"), bool),
}
_PROCESS_TYPES = {"argv": list, "env": list, "cwd": str, "user": str, "limits": dict}


def _read_json(path: str, name: str, missing_ok: bool = False) -> tuple[dict | None, str | None]:
    """(data, None), or (None, why) in one line; missing_ok: a missing file is {}."""
    try:
        with open(os.path.join(path, name), "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        if missing_ok:
            return {}, None
        return None, f"{name} is missing"
    except OSError as exc:
        return None, f"{name}: {exc.strerror}"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return None, f"{name} is not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"{name} is not a JSON object"
    return data, None


def _wrong_types(data, types):
    """The keys of `data` whose value is not of the type `types` gives them, sorted."""
    return sorted(
        k
        for k, t in types.items()
        if k in data and (not isinstance(data[k], t) or (t is int and isinstance(data[k], bool)))
    )


def _check(path, static, dynamic):
    """Why the record in `path` is damaged, or None."""
    for name, data in (("config.json", static), ("state.json", dynamic)):
        bad = _wrong_types(data, _FIELD_TYPES)
        if bad:
            return f"{name}: wrong type for {', '.join(bad)}"
    missing = [k for k in ("id", "name", "image") if k not in static]
    if missing:
        return f"config.json: no {', '.join(missing)}"
    if static["id"] != os.path.basename(path):
        return "config.json: its id is not the directory's name"
    status = dynamic.get("status", "created")
    if status not in STATUSES:
        return f"state.json: unknown status {str(status)[:40]!r}"
    spec = static.get("spec")
    if spec is not None:
        if not isinstance(spec, dict):
            return "config.json: wrong type for spec"
        bad = _wrong_types(spec, _SPEC_TYPES)
        if bad:
            return f"config.json: wrong type for spec {', '.join(bad)}"
    process = static.get("process", {})
    bad = _wrong_types(process, _PROCESS_TYPES) + [
        k
        for k in ("argv", "env")
        if isinstance(process.get(k), list) and not all(isinstance(a, str) for a in process[k])
    ]
    if bad:
        return f"config.json: wrong type for process {', '.join(sorted(set(bad)))}"
    return None


def read_record(path):
    """(container, None) for a sound record in directory `path`; (None, why) for a
    damaged one (`why` says what is wrong in one line); (None, None) if there is
    no such directory."""
    static, why = _read_json(path, "config.json")
    if why and not os.path.isdir(path):
        return None, None  # removed meanwhile (or never a record)
    dynamic = None
    if not why:
        dynamic, why = _read_json(path, "state.json", missing_ok=True)
    if not why:
        why = _check(path, static, dynamic)
    if why:
        return None, why
    assert static is not None and dynamic is not None
    data = {**dynamic, **static}
    data["spec"] = ContainerSpec.from_dict(data.get("spec") or {"image": data.get("image", "")})
    data = {k: v for k, v in data.items() if k in Container.__dataclass_fields__}
    c = Container(**data)
    c.path = path
    return c, None


def damaged_record(path, why):
    """A stand-in Container (status "damaged", `error` = why) for the damaged record in
    `path`: what can still be told (name, image, created) is filled in; its name is
    the one reserved for its id under names/ when there is one."""
    cid = os.path.basename(path)
    static, _ = _read_json(path, "config.json")
    static = static or {}

    def text(key):
        value = static.get(key)
        return value if isinstance(value, str) else ""

    name = _reserved_name(os.path.dirname(os.path.dirname(path)), cid) or text("name")
    created = text("created")
    if not created:
        secs, ns = divmod(_oldest_mtime_ns(path), 10**9)
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}Z"
    process = static.get("process")
    argv = process.get("argv") if isinstance(process, dict) else None
    ok_argv = isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    c = Container(
        id=cid,
        name=name,
        image=text("image"),
        created=created,
        status=DAMAGED,
        spec=ContainerSpec(image=text("image"), network_mode=""),
        error=why,
        process={"argv": argv} if ok_argv else {},
    )
    c.path = path
    return c


def _oldest_mtime_ns(path):
    """The oldest mtime of record directory `path` and its entries: close to when the
    container was created, and unlike the directory's own mtime not moved by a file
    removed from it (a missing config.json made a damaged record look newest)."""
    times = []
    try:
        entries = [os.path.join(path, n) for n in os.listdir(path)]
    except OSError:
        entries = []
    for p in [path] + entries:
        try:
            times.append(os.lstat(p).st_mtime_ns)
        except OSError:
            continue
    return min(times, default=0)


def _reserved_name(root, cid):
    """The name under names/ that points at `cid`, or ""."""
    ndir = names_dir(root)
    try:
        names = os.listdir(ndir)
    except OSError:
        return ""
    for name in sorted(names):
        try:
            if os.readlink(os.path.join(ndir, name)) == cid:
                return name
        except OSError:
            continue
    return ""


def load(path, damaged=False):
    """The container recorded in directory `path`, or None if there is none.

    A damaged record (unreadable, invalid JSON, wrong fields) is None too, unless
    `damaged`: then it is a stand-in with status "damaged" (see damaged_record)."""
    c, why = read_record(path)
    if why and damaged:
        return damaged_record(path, why)
    return c


def load_all(root, damaged=False):
    """Every complete container record under `root`, oldest first. Read-only.

    Damaged records are skipped, unless `damaged` (then they come as stand-ins
    with status "damaged"); one never stops the others from being listed."""
    base = containers_dir(root)
    try:
        entries = os.listdir(base)
    except FileNotFoundError:
        return []
    out = []
    for name in entries:
        if len(name) != 64:
            continue
        c = load(os.path.join(base, name), damaged=damaged)
        if c is not None:
            out.append(c)
    out.sort(key=lambda c: c.created)
    return out


def proc_start(pid):
    """The start time (clock ticks since boot) of `pid`, or 0 if it does not exist."""
    return start_ticks(pid)


def alive(pid, start):
    """True when `pid` exists and is still the process that started at `start`."""
    return bool(pid) and proc_start(pid) == start and start != 0


def shim_alive(c):
    return alive(c.shim_pid, c.shim_start)


def init_alive(c):
    return alive(c.pid, c.pid_start)


def creator_alive(c):
    return bool(c.creator) and alive(c.creator[0], c.creator[1])
