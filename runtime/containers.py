"""The container lifecycle facade: `Runtime(root)` creates, starts, stops, execs,
lists, inspects and removes containers, returning `state.Container` records.

The start path (`run`) imports only the stdlib modules it needs; the network
module (pyroute2, iptables) is imported only for bridge networking, and the
heavier helpers (tarfile for `cp`) only by the commands that use them.
"""

import errno
import fcntl
import os
import re
import signal as _signal
import time

from pyinspect.errors import (
    ConflictError,
    CorruptInputError,
    NotFoundError,
    PyinspectError,
    UnavailableError,
    UsageError,
)

from . import state
from . import volumes as _volumes
from .ctrlog import read_records
from .netmod import network_module
from .state import TMP_PREFIX, Container, ContainerSpec

__all__ = ["Runtime", "Container", "ContainerSpec", "network_module"]

NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NETWORK_MODES = ("bridge", "none", "host")
STALE_TMP_SECONDS = 30
CREATE_GRACE_SECONDS = 2  # a `.tmp-<id>` whose lock is not held this long after its
# last change lost its creator (it locks microseconds after
# mkdir and holds the lock until the rename)

_LEFT = (
    "admiring",
    "brave",
    "clever",
    "dazzling",
    "eager",
    "festive",
    "gallant",
    "happy",
    "jolly",
    "keen",
    "lucid",
    "modest",
    "nifty",
    "optimistic",
    "quirky",
    "serene",
    "stoic",
    "tender",
    "upbeat",
    "vibrant",
    "wizardly",
    "zealous",
)
_RIGHT = (
    "babbage",
    "curie",
    "dijkstra",
    "einstein",
    "feynman",
    "goldwasser",
    "hopper",
    "johnson",
    "knuth",
    "lamport",
    "lovelace",
    "mccarthy",
    "noether",
    "pike",
    "ritchie",
    "shannon",
    "thompson",
    "turing",
    "wozniak",
    "yonath",
)


def _generate_name(taken):
    rnd = os.urandom(2)
    for i in range(50):
        name = f"{_LEFT[(rnd[0] + i) % len(_LEFT)]}_{_RIGHT[(rnd[1] + i * 7) % len(_RIGHT)]}"
        if i > 20:
            name += str(i)
        if name not in taken(name):
            return name
    raise ConflictError("cannot generate a container name: all tried names are taken")


GONE = -1  # _lock(): the lock file (so the container) no longer exists


def _check_name(name):
    if not NAME_RE.match(name) or len(name) > 128:
        raise UsageError(
            f"invalid container name {name!r}: only "
            f"[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, 2 to 128 characters"
        )


def _lock(path, blocking=False, timeout=None, create=False):
    """Open and flock `path`; returns the fd, None if held elsewhere (after `timeout`
    when blocking), or GONE if the file does not exist (unless `create`)."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
    except FileNotFoundError:
        return GONE
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not blocking or (deadline is not None and time.monotonic() > deadline):
                os.close(fd)
                return None
            time.sleep(0.01)


def parse_signal(sig):
    """'KILL', 'SIGKILL', '9' or 9 -> signal number (UsageError otherwise)."""
    if isinstance(sig, int):
        return sig
    text = str(sig).strip().upper()
    if text.isdigit():
        num = int(text)
        if 0 < num < 65:
            return num
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        if hasattr(_signal.Signals, name):
            return int(_signal.Signals[name])
    raise UsageError(f"invalid signal {sig!r}: expected a name like KILL or a number")


class Runtime:
    """Containers under one state root."""

    def __init__(self, root):
        self.root = os.path.abspath(str(root))
        self.cdir = state.containers_dir(self.root)
        self.ndir = state.names_dir(self.root)

    # -- lookup ----------------------------------------------------------------------
    def _name_target(self, name):
        try:
            return os.readlink(os.path.join(self.ndir, name))
        except OSError:
            return None

    def get(self, ref, damaged=False):
        """The container named `ref`, with id `ref`, or with the unique id prefix `ref`.

        A damaged record raises CorruptInputError saying what is wrong, unless
        `damaged` (then it comes back with status "damaged", for `rm`)."""
        if not ref:
            raise NotFoundError("container '': no such container")
        ref = ref.lstrip("/")
        cid = self._name_target(ref)
        c = None
        if cid:
            c = state.load(os.path.join(self.cdir, cid), damaged=True)
        if c is None and re.fullmatch(r"[0-9a-f]{1,64}", ref):
            try:
                hits = [e for e in os.listdir(self.cdir) if len(e) == 64 and e.startswith(ref)]
            except FileNotFoundError:
                hits = []
            if len(hits) > 1:
                raise UsageError(
                    f"container {ref!r}: ambiguous id prefix ({len(hits)} containers match)",
                    "give more characters",
                )
            if hits:
                c = state.load(os.path.join(self.cdir, hits[0]), damaged=True)
        if c is None:
            raise NotFoundError(
                f"container {ref!r}: no such container", "pyinspect ps -a lists them"
            )
        if c.status == state.DAMAGED and not damaged:
            raise damaged_error(c)
        return c

    def list(self, all=False):
        """Containers (running or restarting, like Docker's, unless `all`), newest first,
        after reconciling.
        With `all`, damaged records are listed too (status "damaged")."""
        self.reconcile()
        out = state.load_all(self.root, damaged=all)
        out.reverse()
        return out if all else [c for c in out if c.status == "running" or c.restarting]

    # -- create ----------------------------------------------------------------------
    def _validate(self, spec):
        from .cgroups import parse_cpus, parse_memory, parse_pids
        from .volumes import all_args, parse_volumes_from

        if spec.name is not None:
            _check_name(spec.name)
        limits = {
            "memory": parse_memory(spec.memory),
            "cpus": parse_cpus(spec.cpus),
            "pids": parse_pids(spec.pids_limit),
        }
        all_args(spec)  # -v, --mount, --tmpfs
        for item in spec.volumes_from or ():
            self.get(parse_volumes_from(item)[0])  # NotFoundError names it
        import ipaddress

        for ns in spec.dns or ():
            try:
                ipaddress.ip_address(ns)
            except ValueError:
                raise UsageError(f"invalid --dns {ns!r}: not an IP address") from None
        mode = spec.network_mode or "bridge"
        if mode.startswith("container:") and (spec.dns or spec.dns_search or spec.dns_options):
            raise UsageError("conflicting options: --dns* and --network container:NAME")
        if mode.startswith("container:"):
            other = mode.split(":", 1)[1]
            target = self.get(other)
            if target.status != "running":
                raise ConflictError(
                    f"cannot join the network of container {other!r}: it is not running"
                )
        elif mode not in NETWORK_MODES:
            raise UsageError(
                f"invalid network mode {mode!r}", "use bridge, none, host or container:NAME"
            )
        if mode != "bridge" and (spec.publish or spec.publish_all):
            if mode != "host" or spec.publish:
                raise UsageError(f"conflicting options: port publishing and network mode {mode}")
        from . import restart
        from .attach import parse_detach_keys

        if spec.detach_keys:
            parse_detach_keys(spec.detach_keys)  # UsageError when it names no key
        policy = restart.parse(spec.restart)
        if policy.name != "no" and spec.auto_remove:
            raise UsageError(
                "conflicting options: --restart and --rm",
                "a container removed when it exits cannot be restarted",
            )
        if spec.workdir and not spec.workdir.startswith("/"):
            raise UsageError(
                f"invalid working directory {spec.workdir!r}: it must be an absolute path"
            )
        if spec.hostname is not None and not re.fullmatch(
            r"[A-Za-z0-9][A-Za-z0-9.-]{0,62}", spec.hostname
        ):
            raise UsageError(f"invalid hostname {spec.hostname!r}")
        return limits

    def _check_workdir(self, spec, cwd, layers):
        """Refuse a working directory the image has as a file (the init could not make
        it): like Docker's start failure (exit 125), but before anything is recorded."""
        if cwd in ("", "/"):
            return
        from .isolation import non_directory_in_image
        from .shim import StartError

        try:
            blocker = non_directory_in_image(layers, cwd)
        except OSError as exc:
            raise StartError(f"invalid working directory {cwd!r}: {exc.strerror}") from None
        if blocker is None:
            return
        why = "it" if blocker == os.path.normpath(cwd) else blocker
        raise StartError(
            f"invalid working directory {cwd!r}: {why} is not a directory in image {spec.image}"
        )

    def _process(self, spec, image_config, hostname):
        cfg = image_config or {}
        if spec.entrypoint is not None:
            entry = [spec.entrypoint] if spec.entrypoint else []
            cmd = list(spec.command or [])
        else:
            entry = list(cfg.get("Entrypoint") or [])
            cmd = list(spec.command or cfg.get("Cmd") or [])
        argv = entry + cmd
        if not argv:
            raise UsageError(
                f"no command specified for image {spec.image!r}",
                "give a command after the image name",
            )
        env = {}
        for item in cfg.get("Env") or []:
            k, _, v = item.partition("=")
            env[k] = v
        env.setdefault("PATH", DEFAULT_PATH)
        env["HOSTNAME"] = hostname
        for item in spec.env:
            k, eq, v = item.partition("=")
            if not k or "\0" in item:
                raise UsageError(f"invalid environment variable {item!r}: expected KEY=VALUE")
            if eq:
                env[k] = v
            elif k in os.environ:
                env[k] = os.environ[k]
        if spec.tty:
            env.setdefault("TERM", "xterm")
        env.setdefault("HOME", "/root")
        user = cfg.get("User") or ""
        if user and not re.fullmatch(r"\d+(:\d+)?", user):
            user = ""  # named users need the image's passwd; run as root like the image says
        return {
            "argv": argv,
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": spec.workdir or cfg.get("WorkingDir") or "/",
            "user": user,
        }

    def create(self, spec, image=None):
        """Validate `spec`, resolve the image, and record a new 'created' container.
        `image` (an images.Image) replaces the lookup of spec.image: `pyinspect build`
        runs its RUN steps on image states that are not stored images."""
        return self._create(spec, image, run=False)[0]

    def _create(self, spec, image, run) -> tuple[Container, int]:
        """create(); with `run` the container's lock stays held and its fd comes back
        with it (the shim takes it over: `run` is one step), else the fd is -1."""
        from .images import ImageStore

        limits = self._validate(spec)
        if spec.restart:
            from .restart import parse

            spec.restart = str(parse(spec.restart))
        image = image or ImageStore(self.root).resolve(spec.image)
        mode = spec.network_mode or "bridge"
        if mode == "bridge" or mode.startswith("container:"):  # the latter refuses --hostname
            network_module().prepare(self.root, spec, image.config)
        cid = os.urandom(32).hex()
        if mode == "host" and not spec.hostname:
            hostname = os.uname().nodename
        else:
            hostname = spec.hostname or cid[:12]
        process = self._process(spec, image.config, hostname)
        process["limits"] = limits
        self._check_workdir(spec, process["cwd"], image.layer_dirs)
        os.makedirs(self.cdir, exist_ok=True)
        os.makedirs(self.ndir, exist_ok=True)
        name = (spec.name or "").lstrip("/") or _generate_name(
            lambda n: {n} if self._name_target(n) else set()
        )
        tmp = os.path.join(self.cdir, f"{TMP_PREFIX}{cid}")
        os.mkdir(tmp)
        lock_fd = _lock(os.path.join(tmp, "lock"), create=True)
        c = Container(
            id=cid,
            name=name,
            image=spec.image,
            image_id=image.id,
            created=state.now_rfc3339(),
            spec=spec,
            process=process,
            layers=[str(p) for p in image.layer_dirs],
            image_config=image.config or {},
            hostname=hostname,
            network={"mode": mode},
            path=tmp,
        )
        if run:
            c.creator = [os.getpid(), state.proc_start(os.getpid())]
        try:
            # only now that the input is valid: bad input makes nothing
            c.mounts = self._make_mounts(spec, image.config)
            for d in ("upper", "work", "rootfs"):
                os.mkdir(os.path.join(tmp, d), 0o755)
            state.save(c, static=True)
            final = os.path.join(self.cdir, cid)
            os.rename(tmp, final)
            c.path = final
            self._reserve_name(c)
        except BaseException:
            self._remove_hidden(c.path)
            _volumes.remove_anonymous(self.root, c)
            os.close(lock_fd)
            raise
        if run:
            return c, lock_fd
        os.close(lock_fd)
        return c, -1

    def _volumes_from(self, spec, taken):
        """The bind and volume mounts of the --volumes-from containers (`REF[:ro|rw]`)
        at paths `taken` does not hold, as Docker's."""
        out = []
        for item in spec.volumes_from or ():
            ref, mode = _volumes.parse_volumes_from(item)
            for m in _volumes.record_mounts(self.get(ref)):
                if m["type"] in ("bind", "volume") and m["destination"] not in taken:
                    ro = m.get("ro", False) if mode is None else mode == "ro"
                    out.append(
                        {**m, "ro": ro, "mode": "", "fill": False, "origin": "--volumes-from"}
                    )  # (Docker shows no mode for them)
                    taken.add(m["destination"])
        return out

    def _make_mounts(self, spec, image_config):
        """The container's mounts: `-v` host paths (made when missing, as Docker's),
        volumes (made when missing), the --volumes-from containers' and anonymous volumes
        for the image's VOLUME paths."""
        args = _volumes.all_args(spec)
        taken = {a.destination for a in args}
        inherited = self._volumes_from(spec, taken)  # (adds its paths to `taken`)
        args += _volumes.image_volume_args(image_config, taken)
        store = _volumes.VolumeStore(self.root)
        out = list(inherited)
        for a in args:
            if a.kind != "volume":
                if a.kind == "bind" and not os.path.exists(a.source):
                    os.makedirs(a.source, exist_ok=True)  # like docker -v
                out.append(_volumes.mount_record(a))
                continue
            vol, _new = store.create(a.source, dict(a.labels), made_by="run")
            out.append(_volumes.mount_record(a, vol, empty=not os.listdir(vol.mountpoint)))
        return out

    def rename(self, ref, new_name):
        """Give container `ref` the name `new_name` (Docker's rename): its name link, its
        record, its `ip netns` link and its name in user networks' DNS."""
        _check_name(new_name)
        new_name = new_name.lstrip("/")
        c = self.get(ref)
        if new_name == c.name:
            raise UsageError(
                f"container {c.name} is already named {new_name}", "choose another name"
            )
        live = c.status == "running" and bool((c.network or {}).get("netns_path"))
        if live:
            network_module().rename_link_free(new_name)
        old_name = c.name
        c.name = new_name
        self._reserve_name(c)  # ConflictError when it is taken
        try:
            path = network_module().rename(self.root, c, new_name) if live else None
        except BaseException:
            os.unlink(os.path.join(self.ndir, new_name))
            raise
        fresh = state.load(c.path) or c  # (the monitor writes only the dynamic state)
        fresh.name = fresh.spec.name = new_name
        if path:
            fresh.network = {**(fresh.network or {}), "netns_path": path}
        state.save(fresh, static=True)
        link = os.path.join(self.ndir, old_name)
        if self._name_target(old_name) == c.id:
            os.unlink(link)
        return fresh

    def update(self, ref, memory=None, cpus=None, pids_limit=None, restart=None):
        """Change container `ref`'s limits and restart policy, as `docker update`: in its
        cgroups at once when it runs, and in its record for every later start (the
        monitor rereads it before deciding on and making a restart)."""
        from .cgroups import parse_cpus, parse_memory, parse_pids

        mem, cpu = parse_memory(memory), parse_cpus(cpus)
        pids = None if pids_limit is None else (parse_pids(pids_limit) or "max")
        c = self.get(ref)
        if restart is not None:
            from . import restart as policies

            policy = policies.parse(restart)
            if c.spec.auto_remove and policy.name != "no":
                raise ConflictError(
                    f"Cannot update container {c.id}: Restart policy cannot be updated "
                    "because AutoRemove is enabled for the container"
                )
            restart = str(policy)
        if c.status == "running" and state.init_alive(c) and c.cgroup:
            cg = self._cgroup(c)
            try:
                cg.update(mem, cpu, pids)
            except OSError as exc:
                raise ConflictError(
                    f"Cannot update container {c.id}: {exc.strerror or exc}"
                ) from None
        fresh = state.load(c.path) or c  # (the monitor writes only the dynamic state)
        limits = dict(fresh.process.get("limits") or {})
        for key, value, text in (("memory", mem, memory), ("cpus", cpu, cpus)):
            if value is not None:
                limits[key] = value
                setattr(fresh.spec, key, text)
        if pids is not None:
            limits["pids"] = None if pids == "max" else pids
            fresh.spec.pids_limit = None if pids == "max" else pids
        if restart is not None:
            fresh.spec.restart = restart
        fresh.process = {**fresh.process, "limits": limits}
        state.save_static(fresh)
        return fresh

    def _reserve_name(self, c):
        link = os.path.join(self.ndir, c.name)
        for attempt in (1, 2):
            try:
                os.symlink(c.id, link)
                return
            except FileExistsError:
                other = self._name_target(c.name)
                if other and attempt == 1 and not os.path.isdir(os.path.join(self.cdir, other)):
                    try:  # a leftover of a removal that was killed half-way
                        os.unlink(link)
                    except FileNotFoundError:
                        pass
                    continue
                raise ConflictError(
                    f'container name "{c.name}" is already in use by '
                    f'container "{(other or "?")[:12]}"',
                    "remove that container or choose another name",
                ) from None

    # -- start / run -----------------------------------------------------------------
    def _launch(self, c, lock_fd, attach):
        from . import shim

        try:
            return shim.launch(self, c, lock_fd, attach=attach)[0]
        finally:
            os.close(lock_fd)

    def start(self, ref, attach=False):
        """Start a created or exited container. No-op if it is running. Like `docker
        start`, it resets the restart count and forgets a `stop`. `attach`: relay its
        output here and wait, as `run` without -d does (the container comes back with
        its `exit_code`)."""
        return self._start(ref, by_policy=False, attach=attach)

    def _start(self, ref, by_policy, attach=False):
        c = self.get(ref)
        if c.status == "running" and state.init_alive(c):
            return self._already_running(c, attach)
        lock_fd = _lock(os.path.join(c.path, "lock"), blocking=True, timeout=10)
        if lock_fd == GONE:
            raise NotFoundError(f"container {ref!r}: no such container (it was removed)")
        if lock_fd is None:
            c = self.get(c.id)
            if c.status == "running":
                return self._already_running(c, attach)
            raise ConflictError(f"container {c.name}: busy (being started, stopped or removed)")
        fresh = state.load(c.path)  # under the lock
        if fresh is not None and fresh.status == "running":  # its shim died: settle it first
            self._settle(fresh, lock_fd)
            fresh = state.load(c.path)
        if fresh is None:
            os.close(lock_fd)
            raise NotFoundError(f"container {ref!r}: no such container (it was removed)")
        c = fresh
        if by_policy:
            c.restart_count += 1
        else:
            c.restart_count = 0
            c.manually_stopped = False
        c.restarting = False
        if attach:
            return self._attached(c, lock_fd)
        self._launch(c, lock_fd, attach=False)
        return self.get(c.id)

    def _already_running(self, c, attach):
        """What `start` of a running container gives: itself, or for -a a refusal."""
        if attach:
            raise ConflictError(
                f"container {c.name} is already running: start -a attaches only as it starts",
                f"pyinspect logs -f {c.name}",
            )
        return c

    def run(self, spec, detach=False, image=None):
        """Create and start. Detached: return the running container. Attached: relay
        its output to this process's stdout/stderr, wait, and return the container
        with its `exit_code` set (also when --rm removed it); with -it, the detach keys
        return it still running."""
        state.mark("run_entered")
        c, lock_fd = self._create(spec, image, run=True)
        state.mark("created")
        if detach:
            self._launch(c, lock_fd, attach=False)
            return self._refresh(c)
        return self._attached(c, lock_fd)

    def _attached(self, c, lock_fd):
        """Start `c` with its lock held (the shim takes it over), relay its output to
        this process's stdout/stderr, wait; `c` with its `exit_code`."""
        from . import shim

        # SIGINT/SIGTERM wait (blocked) until the forwarding handler is in place
        proxied = {_signal.SIGINT, _signal.SIGTERM}
        mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, proxied)
        try:
            try:
                shim_pid, exit_fd = shim.launch(self, c, lock_fd, attach=True)
            except shim.StartError:
                os.close(lock_fd)
                raise
            os.close(lock_fd)
            c = self._refresh(c)
            code = self._wait_attached(shim_pid, exit_fd, c, mask)
        finally:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        if code is None:  # detached (the detach keys): it runs on
            return self._refresh(c)
        state.mark("shim_reaped")
        c = self._refresh(c)
        c.exit_code = code
        return c

    def _refresh(self, c):
        """The latest record of `c`, or `c` itself once it is gone (--rm)."""
        return state.load(c.path) or c

    def _wait_attached(self, shim_pid, exit_fd, c, mask):
        """Wait for the shim of an attached run, forwarding SIGINT/SIGTERM to the init
        (they were blocked since before the start; unblocked here to `mask`)."""

        def forward(signum, frame):
            if c.pid and state.init_alive(c):
                try:
                    os.kill(c.pid, signum)
                except ProcessLookupError:
                    pass

        from .attach import resize_container_terminal
        from .shim import wait_exit

        old = {s: _signal.signal(s, forward) for s in (_signal.SIGINT, _signal.SIGTERM)}

        def resize(signum, frame):
            if c.pid:
                resize_container_terminal(0, c.pid)

        if c.spec.tty and os.isatty(0):  # the terminal's new size goes on to the container's
            old[_signal.SIGWINCH] = _signal.signal(_signal.SIGWINCH, resize)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        try:
            return wait_exit(shim_pid, exit_fd)
        finally:
            for s, h in old.items():
                _signal.signal(s, h)

    # -- stop / kill / restart / remove ------------------------------------------------
    def _running(self, ref):
        c = self.get(ref)
        if c.status != "running" or not state.init_alive(c):
            raise ConflictError(f"container {c.name} is not running")
        return c

    def _wait_exit(self, c, timeout):
        """Wait until the shim released the lock (the exit is recorded); True if it did."""
        fd = _lock(os.path.join(c.path, "lock"), blocking=True, timeout=timeout)
        if fd is None:
            return False
        if fd != GONE:
            os.close(fd)
        return True

    def _cancel_restarts(self, c):
        """Tell a live monitor that the user stops `c`: no more restarts (and remember it
        for unless-stopped). True when there was a monitor to tell."""
        if not (c.shim_pid and state.shim_alive(c)):
            return False
        from .shim import CANCEL_SIGNAL

        try:
            os.kill(c.shim_pid, CANCEL_SIGNAL)
        except ProcessLookupError:
            return False
        return True

    def stop(self, ref, timeout=10):
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the stopped container.
        Its restart policy does not restart it (until the next `start`)."""
        c = self.get(ref)
        told = self._cancel_restarts(c)
        if c.status != "running":
            if told:  # waiting to be restarted: its monitor ends now
                self._wait_exit(c, 10)
            return self._refresh(c)
        for sig, wait in ((_signal.SIGTERM, max(0.0, float(timeout))), (_signal.SIGKILL, 10)):
            if state.init_alive(c):
                self._signal(c, sig)
            else:
                self._thaw_if_paused(c)
            if self._wait_exit(c, wait):
                break
        else:
            raise UnavailableError(f"cannot stop container {c.name}: it did not exit after SIGKILL")
        c = self._refresh(c)
        if c.status == "running":  # its shim had died: settle the record
            self._settle_if_free(c, manually_stopped=True)
            c = self._refresh(c)
        return c

    def _settle_if_free(self, c, manually_stopped=False):
        fd = _lock(os.path.join(c.path, "lock"))
        if fd is None or fd == GONE:
            return
        try:
            fresh = state.load(c.path)
            if fresh is not None and fresh.status == "running":
                self._settle(fresh, fd, manually_stopped=manually_stopped)
        finally:
            os.close(fd)

    def kill(self, ref, signal="KILL"):
        """Send `signal` to the container's init; waits for the exit on SIGKILL."""
        sig = parse_signal(signal)
        c = self.get(ref)
        if c.restarting and self._cancel_restarts(c):  # Docker: no signal, no restart
            self._wait_exit(c, 10)
            return self._refresh(c)
        c = self._running(ref)
        self._cancel_restarts(c)  # like Docker: a killed container counts as stopped
        if not self._signal(c, sig):
            raise ConflictError(f"container {c.name} is not running")
        if sig == _signal.SIGKILL:
            self._wait_exit(c, 10)
        return self._refresh(c)

    # -- pause / unpause / wait ------------------------------------------------------
    def pause(self, ref):
        """Freeze every process of running container `ref` (cgroup2's freezer)."""
        c = self.get(ref)
        if c.status != "running" or not state.init_alive(c):
            raise ConflictError(f"Container {c.id} is not running")
        if c.paused:
            raise ConflictError(f"Container {c.id} is already paused")
        self._cgroup(c).freeze(True)
        return c

    def unpause(self, ref):
        """Let a paused container's processes run again."""
        c = self.get(ref)
        if not c.paused:
            raise ConflictError(f"Container {c.id} is not paused")
        self._cgroup(c).freeze(False)
        return c

    def _cgroup(self, c):
        from .cgroups import Cgroup

        return Cgroup(c.id, c.cgroup)

    def _thaw_if_paused(self, c):
        if c.paused:
            self._cgroup(c).freeze(False)

    def _signal(self, c, sig) -> bool:
        """Send `sig` to `c`'s init, then thaw a paused container so it acts on it (as
        Docker does); False when the init is gone."""
        try:
            os.kill(c.pid, sig)
        except ProcessLookupError:
            return False
        finally:
            self._thaw_if_paused(c)
        return True

    def wait(self, ref, poll_s=0.05) -> int:
        """Block until container `ref` stops (at once if it is stopped), as `docker
        wait`; its exit code, also when --rm removes it meanwhile."""
        c = self.get(ref)
        if c.status == "exited" and not c.restarting:
            return c.exit_code
        # an --rm container's monitor writes the code into this file before it removes
        # the record: the open fd still reads it once the directory is gone
        try:
            fd = os.open(os.path.join(c.path, state.EXIT_CODE_FILE), os.O_RDONLY | os.O_CREAT)
        except FileNotFoundError:
            raise NotFoundError(f"container {ref!r}: no such container (it was removed)") from None
        try:
            while True:
                now = state.load(c.path, damaged=True)
                if now is None:
                    code = state.kept_exit_code(fd)
                    if code is not None:
                        return code
                    raise NotFoundError(f"container {c.name} was removed before it stopped")
                if now.status == "exited" and now.finished_at != c.finished_at:
                    return now.exit_code
                if now.status == state.DAMAGED:
                    raise damaged_error(now)
                time.sleep(poll_s)
        finally:
            os.close(fd)

    def restart(self, ref, timeout=10):
        c = self.stop(ref, timeout)
        return self.start(c.id)

    def remove(self, ref, force=False, volumes=False):
        """Remove a stopped container (with `force`, kill it first); with `volumes`, its
        anonymous volumes too (`rm -v`).

        A damaged record is removed too (its name freed): its processes, if a
        monitor still runs it, are found by its cgroup (`force` kills them)."""
        c = self.get(ref, damaged=True)
        if c.restarting and state.shim_alive(c):
            if not force:
                raise ConflictError(
                    f"cannot remove restarting container {c.name}", "stop it first or use rm -f"
                )
            self._cancel_restarts(c)
        if c.status == "running" and state.init_alive(c):
            if not force and c.paused:
                raise ConflictError(
                    f"You cannot remove a paused container {c.id}. Unpause and then stop "
                    "the container before attempting removal or force remove"
                )
            if not force:
                raise ConflictError(
                    f"cannot remove running container {c.name}", "stop it first or use rm -f"
                )
            self._signal(c, _signal.SIGKILL)
        lock_fd = _lock(os.path.join(c.path, "lock"), blocking=True, timeout=0.5)
        deadline = time.monotonic() + 15
        while lock_fd is None and force and time.monotonic() < deadline:
            now = state.load(c.path, damaged=True)  # it may have been starting: kill it
            if now is not None and now.status == "running" and state.init_alive(now):
                try:
                    os.kill(now.pid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
            elif now is not None and now.status == state.DAMAGED:
                self._kill_cgroup(now)  # no pid to trust: its cgroup says who it is
            elif now is not None and now.shim_pid:
                self._cancel_restarts(now)  # it was being restarted
            lock_fd = _lock(os.path.join(c.path, "lock"), blocking=True, timeout=0.2)
        if lock_fd is None and not force and c.status == state.DAMAGED:
            raise ConflictError(
                f"cannot remove container {c.name or c.short_id}: its monitor "
                f"still runs it (and its record is damaged)",
                "use rm -f",
            )
        if lock_fd is None and not force:
            lock_fd = _lock(os.path.join(c.path, "lock"), blocking=True, timeout=15)
        if lock_fd == GONE:
            return c  # removed meanwhile (--rm)
        if lock_fd is None:
            raise ConflictError(f"cannot remove container {c.name}: it is busy")
        try:
            c = state.load(c.path, damaged=True)
            if c is None:
                return None
            if c.status == "running":
                self._settle(c, None)
            self._cleanup_kernel(c)
            state.keep_exit_code(c, waited_only=True)  # for a `wait` on it
            self._remove_files(c)
            if volumes:
                _volumes.remove_anonymous(self.root, c)
        finally:
            os.close(lock_fd)
        if c.status == state.DAMAGED:  # its network record is unknown: drop dead leases
            self._reconcile_network(force=True)
        return c

    def _kill_cgroup(self, c):
        from .cgroups import Cgroup

        cg = Cgroup(c.id, c.cgroup or None)
        if cg.exists():
            cg.kill_all(9)

    def _cleanup_kernel(self, c):
        """Free what a dead container may still hold: processes, cgroups, network."""
        from .cgroups import Cgroup
        from .isolation import mounted_at, umount

        rootfs = os.path.join(c.path, "rootfs")
        if mounted_at(rootfs):  # its monitor died before unmounting the root
            try:
                umount(rootfs)
            except OSError as exc:
                raise UnavailableError(f"cannot unmount the root of {c.name}: {exc}") from None
        cg = Cgroup(c.id, c.cgroup or None)  # default paths if the shim died before saving
        if cg.exists():
            cg.kill_all(9)
            cg.remove()
        if (c.network or {}).get("mode", "bridge") == "bridge" and len(c.network or {}) > 1:
            try:
                network_module().disconnect(self.root, c)
            except PyinspectError:
                raise
            except Exception as exc:  # noqa: BLE001 pyroute2, python-iptables: own Exceptions
                raise UnavailableError(f"cannot disconnect {c.name}: {exc}") from None

    def _remove_files(self, c):
        self._remove_hidden(self._hide(c))

    def _hide(self, c):
        return state.hide_record(self.root, c)

    def _remove_hidden(self, trash):
        state.remove_tree(trash)

    # -- reconcile -------------------------------------------------------------------
    def _settle(self, c, lock_fd, manually_stopped=False):
        """Record the end of a container whose shim died (lock is held by the caller)."""
        from .cgroups import Cgroup

        oom = False
        if c.cgroup:
            cg = Cgroup(c.id, c.cgroup)
            try:
                oom = cg.oom_kills() > 0
            except (OSError, ValueError):
                pass
        if c.pid and state.init_alive(c):
            try:
                os.kill(c.pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self._cleanup_kernel(c)
        except PyinspectError as exc:
            c.error = str(exc)
        c.status = "exited"
        c.exit_code = 137 if c.started_at else 255
        c.oom_killed = oom
        c.finished_at = state.now_rfc3339()
        c.pid = c.pid_start = c.shim_pid = c.shim_start = 0
        c.restarting = False
        c.manually_stopped = c.manually_stopped or manually_stopped
        c.error = c.error or "the container's monitor process died"
        if c.spec.auto_remove:
            state.keep_exit_code(c)
            self._remove_files(c)
            _volumes.remove_anonymous(self.root, c)
        else:
            state.save(c)

    @staticmethod
    def writable_bytes(c) -> int:
        """The bytes of container `c`'s writable layer (Docker's SizeRw): its overlay
        upper dir, less the files the runtime writes into every container (Docker
        bind-mounts those: they are in no writable layer)."""
        from .build.layerdiff import RUNTIME_FILES
        from .fsutil import tree_bytes

        runtime_files = frozenset("/".join(parts) for parts in RUNTIME_FILES)
        return tree_bytes(os.path.join(c.path, "upper"), runtime_files)

    def prune(self):
        """Remove every stopped container (created or exited), as `docker container
        prune`: their ids and the bytes their writable layers held."""
        removed, freed = [], 0
        for c in self.list(all=True):
            if c.status not in ("created", "exited") or c.restarting:
                continue
            size = self.writable_bytes(c)
            try:
                self.remove(c.id)
            except (ConflictError, NotFoundError):
                continue  # started or removed meanwhile
            removed.append(c.id)
            freed += size
        return removed, freed

    def reconcile(self, restart=True):
        """Settle containers whose monitor died, remove half-created leftovers and
        dangling names, then let the network module re-check its rules. With
        `restart`, a settled container whose restart policy says so is started
        again (its monitor would have restarted it; RestartCount counts it)."""
        try:
            entries = os.listdir(self.cdir)
        except FileNotFoundError:
            return []
        changed = []
        orphans = []  # were waiting for a restart when their monitor died
        now = time.time()
        for entry in entries:
            path = os.path.join(self.cdir, entry)
            if entry.startswith(TMP_PREFIX):
                # being removed (.tmp-rm-<id>) without a lock file: mid-rmtree, only when
                # old; being created (.tmp-<id>) with its lock free or not yet made: its
                # creator was killed, once past CREATE_GRACE_SECONDS
                removing = entry.startswith(TMP_PREFIX + "rm-")
                try:
                    age = now - os.lstat(path).st_mtime
                except FileNotFoundError:
                    continue
                fd = _lock(os.path.join(path, "lock"))
                if fd is None:
                    continue
                if fd == GONE:
                    if age > (STALE_TMP_SECONDS if removing else CREATE_GRACE_SECONDS):
                        self._remove_tmp(path, entry)
                    continue
                try:
                    if removing or age > CREATE_GRACE_SECONDS:
                        self._remove_tmp(path, entry)
                finally:
                    os.close(fd)
                continue
            if len(entry) != 64:
                continue
            c = state.load(path)
            if c is None:
                continue
            if (c.status == "exited" and not c.restarting) or (
                c.status == "created" and not c.creator
            ):
                continue
            fd = _lock(os.path.join(path, "lock"))
            if fd is None or fd == GONE:
                continue  # a live shim or command owns it, or it is being removed
            try:
                c = state.load(path)
                if c is None:
                    continue
                if c.status == "running":
                    self._settle(c, fd)
                    changed.append(c)
                elif c.status == "exited" and c.restarting:
                    c.restarting = False
                    c.shim_pid = c.shim_start = 0
                    state.save(c)
                    orphans.append(c)
                elif c.status == "created" and c.creator and not state.creator_alive(c):
                    # a `run` killed before its container started: nothing to keep
                    try:
                        self._cleanup_kernel(c)
                    except PyinspectError:
                        pass
                    self._remove_files(c)
                    changed.append(c)
            finally:
                os.close(fd)
        self._reconcile_names()
        self._reconcile_network(
            force=any((c.spec.network_mode or "bridge") == "bridge" for c in changed)
        )
        if restart:
            self._restart_by_policy([c for c in changed + orphans if not c.spec.auto_remove])
        return changed

    def _restart_by_policy(self, containers, at_boot=False):
        """Start those of `containers` (exited, no monitor) whose restart policy says so;
        returns the started ones. A failed start is recorded in its record."""
        from . import restart

        started = []
        for c in containers:
            policy = restart.parse(c.spec.restart)
            if policy.name == "no" or not c.started_at:
                continue
            if not restart.should_restart(
                policy, c.exit_code, c.manually_stopped, c.restart_count, at_boot=at_boot
            ):
                continue
            try:
                started.append(self._start(c.id, by_policy=True))
            except PyinspectError:
                continue
        return started

    def autostart(self, boot=False):
        """Bring back containers whose restart policy wants them running and whose
        monitor is gone (a killed monitor, a reboot): `always`, `unless-stopped` not
        stopped by the user, `on-failure` after a failure under its limit. With `boot`
        (Docker's daemon start), `always` ones the user had stopped come back too.
        Returns the containers started."""
        self.reconcile(restart=False)  # settles dead monitors: the pass below starts them
        waiting = [
            c for c in state.load_all(self.root) if c.status == "exited" and not self._shim_busy(c)
        ]
        return self._restart_by_policy(waiting, at_boot=boot)

    def _remove_tmp(self, path, entry):
        from .isolation import mounted_at, umount

        rootfs = os.path.join(path, "rootfs")
        if mounted_at(rootfs):  # a monitor died between hiding and unmounting it
            try:
                umount(rootfs)
            except OSError:
                return  # never walk into a mounted root
        cid = entry[len(TMP_PREFIX) :]
        if cid.startswith("rm-"):
            cid = cid[3:]
        if len(cid) == 64:
            from .cgroups import Cgroup

            try:
                cg = Cgroup(cid)
                if cg.exists():
                    cg.kill_all(9)
                    cg.remove()
            except PyinspectError:
                pass
        self._remove_hidden(path)

    def _reconcile_names(self):
        try:
            names = os.listdir(self.ndir)
        except FileNotFoundError:
            return
        for name in names:
            cid = self._name_target(name)
            if cid is None:
                continue
            if not os.path.exists(os.path.join(self.cdir, cid)):
                try:
                    os.unlink(os.path.join(self.ndir, name))
                except FileNotFoundError:
                    pass

    def _reconcile_network(self, force=False):
        containers = state.load_all(self.root)
        if not force and not any((c.spec.network_mode or "bridge") == "bridge" for c in containers):
            return
        try:
            net = network_module()
        except UnavailableError:
            return
        net.reconcile(self.root, containers)

    # -- files the runtime writes into the container --------------------------------
    def container_files(self, c):
        """/etc/hostname, /etc/hosts (and /etc/resolv.conf for host mode) for non-bridge modes."""
        mode = c.spec.network_mode or "bridge"
        files = {"/etc/hostname": c.hostname + "\n"}
        if mode == "host":
            for path in ("/etc/hosts", "/etc/resolv.conf"):
                try:
                    with open(path) as f:
                        files[path] = f.read()
                except OSError:
                    pass
        else:
            files["/etc/hosts"] = (
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost "
                f"ip6-loopback\n127.0.0.1\t{c.hostname}\n"
            )
        return files

    # -- exec ------------------------------------------------------------------------
    def exec(self, ref, argv, env=(), workdir=None, interactive=False, tty=False):
        """Run `argv` inside running container `ref` (all its namespaces and cgroups);
        returns its exit code. Stdio is this process's (stdin only with `interactive`)."""
        from . import child, isolation

        c = self._running(ref)
        if c.paused:  # a process that joined its cgroup would freeze too
            raise ConflictError(
                f"Container {c.name} is paused, unpause the container before exec",
                f"pyinspect unpause {c.name}",
            )
        if not argv:
            raise UsageError("exec: no command given")
        envd = dict(e.split("=", 1) for e in c.process.get("env", []))
        for item in env:
            k, eq, v = item.partition("=")
            if not k:
                raise UsageError(f"invalid environment variable {item!r}: expected KEY=VALUE")
            if eq:
                envd[k] = v
            elif k in os.environ:
                envd[k] = os.environ[k]
        cwd = workdir or c.process.get("cwd") or "/"
        if not cwd.startswith("/"):
            raise UsageError(f"invalid working directory {cwd!r}: it must be absolute")
        from .cgroups import Cgroup

        procs = Cgroup(c.id, c.cgroup).procs_files() if c.cgroup else []
        err_r, err_w = os.pipe()
        import sys

        master = slave = None
        if tty:
            import pty
            import termios

            master, slave = pty.openpty()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 126
            try:
                os.close(err_r)
                if master is not None:
                    os.close(master)
                # Only the process that runs `argv` joins the container's cgroups: this
                # forked copy of pyinspect stays outside them, so the container's OOM killer
                # and pids limit see the command, not pyinspect (as `docker exec`).
                cgroup_fds = isolation.open_cgroups(procs)
                isolation.enter(c.pid)
                inner = os.fork()
                if inner == 0:
                    isolation.join_cgroups(cgroup_fds)
                    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
                    if slave is not None:
                        os.setsid()
                        for fd in (0, 1, 2):
                            os.dup2(slave, fd)
                        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
                    elif not interactive:
                        devnull = os.open("/dev/null", os.O_RDONLY)
                        os.dup2(devnull, 0)
                    code = 126  # Docker's exec: 126 for a missing, refused or misplaced one
                    try:
                        os.chdir(cwd)
                    except OSError as exc:
                        raise OSError(exc.errno, f"chdir to {cwd}: {exc.strerror}") from None
                    try:
                        os.execvpe(argv[0], argv, envd)
                    except FileNotFoundError:
                        raise OSError(
                            errno.ENOENT, f'exec: "{argv[0]}": executable file not found in $PATH'
                        ) from None
                    except PermissionError:
                        raise OSError(
                            errno.EACCES, f'exec: "{argv[0]}": permission denied'
                        ) from None
                os.close(err_w)
                code = child.wait(inner)
            except BaseException as exc:  # noqa: BLE001 the forked child reports everything and exits
                child.report(
                    err_w, code, exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                )
            os._exit(code)
        os.close(err_w)
        if slave is not None:
            os.close(slave)
            _relay_pty(master, interactive)
        failure = child.read_report(err_r)
        code = child.wait(pid)
        if failure:
            from .shim import StartError

            num, text = failure
            raise StartError(f"exec in {c.name}: {text}", int(num) if num.isdigit() else code)
        return code

    def diff(self, ref):
        """What container `ref` changed in its root (runtime.changes.Change, by path), as
        `docker diff` lists it; running or stopped."""
        from .changes import changes

        c = self.get(ref)
        return changes(c.layers, os.path.join(c.path, "upper"))

    def image_id(self, ref):
        """The id of image `ref` if it is here (nothing is built or pulled), else None."""
        from .images import ImageStore

        return ImageStore(self.root).find_id(ref)

    def image_descends(self, image_id, ancestor_id) -> bool:
        """Whether image `image_id` is `ancestor_id` or was made on top of it."""
        from .images import ImageStore

        return ImageStore(self.root).descends(image_id, ancestor_id)

    # -- inspect / top / logs ----------------------------------------------------------
    def inspect(self, ref):
        """Docker-like JSON for a container; for an image name, the image's inspect."""
        try:
            c = self.get(ref)
        except NotFoundError:
            from .images import ImageStore

            try:
                return ImageStore(self.root).inspect(ref)
            except (NotFoundError, UsageError):
                raise NotFoundError(f"{ref!r}: no such container or image") from None
        return self._inspect(c)

    def inspect_container(self, ref):
        """Docker-like JSON for a container (NotFoundError for anything else)."""
        return self._inspect(self.get(ref))

    def _inspect(self, c):
        if c.status == "running" and not state.init_alive(c):
            self.reconcile()
            c = self.get(c.id)
        return container_json(c)

    def top(self, ref, ps_args=None):
        """{"Titles": [...], "Processes": [[...], ...]} for a running container, like
        Docker's: the host's `ps` run with `ps_args` (default -ef), only the rows of
        the container's processes. Without a `ps` command on the host (and without
        `ps_args`), the processes are read from /proc with Docker's `ps -ef` titles."""
        import shutil

        from .cgroups import Cgroup

        c = self._running(ref)
        pids = set(Cgroup(c.id, c.cgroup).pids() if c.cgroup else [c.pid])
        ps = shutil.which("ps")
        if ps is None:
            if ps_args:
                raise UnavailableError(
                    "top with ps options needs the ps command on the host",
                    "install procps, or run top without options",
                )
            return _top_from_proc(pids)
        import subprocess

        args = list(ps_args or ["-ef"])
        for a in args:
            m = re.search(r"([^\s=]*)=\s*(PID\S*)", a)
            if m and m.group(1) != "pid":
                raise UsageError(
                    f'invalid ps options: specifying "{m.group(1)}={m.group(2)}" is not allowed'
                )
        proc = subprocess.run(
            [ps, *args],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "COLUMNS": "4096"},
        )
        if proc.returncode != 0:
            why = (proc.stderr or proc.stdout).strip().splitlines()
            raise UsageError(
                f"ps {' '.join(args)} failed: {why[0] if why else f'exit status {proc.returncode}'}"
            )
        return parse_ps_output(proc.stdout, pids)

    def logs(self, ref, follow=False, tail=None):
        """Yield (stream, bytes) from the container's log; `follow` waits for more
        until the container stops. `tail` keeps the last N lines."""
        c = self.get(ref)
        try:
            f = open(c.log_path, "rb")
        except FileNotFoundError:
            return
        with f:
            pieces: list[tuple[str, bytes]] = []
            for s, d in read_records(f):
                pieces.extend((s, line) for line in d.splitlines(keepends=True))
            if tail is not None and tail >= 0:
                pieces = pieces[len(pieces) - tail :] if tail else []
            yield from pieces
            while follow:
                running = self._shim_busy(c)
                yield from read_records(f)
                if not running:
                    return
                time.sleep(0.05)

    def _shim_busy(self, c):
        fd = _lock(os.path.join(c.path, "lock"))
        if fd is None:
            return True
        if fd != GONE:
            os.close(fd)
        return False

    # -- cp --------------------------------------------------------------------------
    def cp(self, src, dst):
        """Copy `CONTAINER:PATH` to a host path or a host path to `CONTAINER:PATH`."""
        from . import copy

        s_ref, s_path = split_cp_arg(src)
        d_ref, d_path = split_cp_arg(dst)
        if (s_ref is None) == (d_ref is None):
            raise UsageError("cp: exactly one of SRC and DEST must be CONTAINER:PATH")
        for side, arg, ref, path in (("SRC", src, s_ref, s_path), ("DEST", dst, d_ref, d_path)):
            if not path:
                raise UsageError(
                    f"cp: empty path in {side} {arg!r}",
                    f"give {ref}:/PATH, e.g. {ref}:/" if ref else "give a host path",
                )
        if s_ref is not None:
            c = self.get(s_ref)
            return copy.from_container(self, c, s_path, d_path)
        c = self.get(d_ref)
        return copy.to_container(self, c, s_path, d_path)


def parse_ps_output(output, pids):
    """Docker's parsePSOutput: the titles of `ps` output and the rows whose PID is in
    `pids` (thread rows, PID "-", follow their process); the last column takes the
    rest of the line."""
    lines = output.split("\n")
    titles = lines[0].split()
    if "PID" not in titles:
        raise UsageError("couldn't find PID field in ps output", "keep pid in -o")
    at = titles.index("PID")
    rows, keep = [], False
    for line in lines[1:]:
        fields = line.split()
        if not fields:
            continue
        if fields[at] == "-":
            if keep:
                rows.append(_ps_fields(fields, len(titles)))
            continue
        try:
            pid = int(fields[at])
        except ValueError:
            raise UsageError(f"unexpected pid {fields[at]!r} in ps output") from None
        keep = pid in pids
        if keep:
            rows.append(_ps_fields(fields, len(titles)))
    return {"Titles": titles, "Processes": rows}


def _ps_fields(fields, n):
    return fields[: n - 1] + [" ".join(fields[n - 1 :])]


def _top_from_proc(pids):
    """`ps -ef`'s columns for `pids`, read from /proc (hosts without ps)."""
    titles = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    hz = os.sysconf("SC_CLK_TCK")
    try:
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        btime = 0
    rows = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        comm = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
        fields = data[data.rindex(b")") + 2 :].split()
        secs = (int(fields[11]) + int(fields[12])) // hz
        stime = time.strftime("%H:%M", time.localtime(btime + int(fields[19]) // hz))
        try:
            import pwd

            user = pwd.getpwuid(uid).pw_name
        except (KeyError, ImportError):
            user = str(uid)
        rows.append(
            [
                user,
                str(pid),
                fields[1].decode(),
                "0",
                stime,
                "?",
                f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}",
                cmd or f"[{comm}]",
            ]
        )
    return {"Titles": titles, "Processes": rows}


def damaged_error(c):
    """The one-line error for using the damaged record `c`."""
    label = f"{c.name} ({c.short_id})" if c.name else c.short_id
    return CorruptInputError(
        f"container {label}: its record is damaged: {c.error}",
        f"pyinspect rm -f {c.name or c.short_id} removes it",
    )


def _relay_pty(master, interactive):
    """Copy stdin -> pty master and master -> stdout until the pty's other side closes."""
    import select

    poller = select.poll()
    poller.register(master, select.POLLIN)
    stdin_open = interactive
    if stdin_open:
        poller.register(0, select.POLLIN)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        for fd, _ in events:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if fd == master:
                if not data:
                    os.close(master)
                    return
                try:
                    os.write(1, data)
                except OSError:
                    pass
            elif not data:
                poller.unregister(0)
                stdin_open = False
                os.write(master, b"\x04")
            else:
                os.write(master, data)


def split_cp_arg(arg):
    """'name:/path' -> ('name', '/path'); a host path -> (None, path). 'name:' gives an
    empty path (which `cp` refuses, like Docker)."""
    if arg.startswith("/") or arg.startswith(".") or ":" not in arg:
        return None, arg
    ref, _, path = arg.partition(":")
    return ref, path


def port_bindings(publish) -> dict[str, list[dict[str, str]]]:
    """HostConfig.PortBindings as Docker keeps it: each `-p` as asked (`HostIp` "" unless
    one was given, `HostPort` "" when the host picks it); `-P` adds nothing."""
    from .ports import parse

    out: dict[str, list[dict[str, str]]] = {}
    for raw in publish or ():
        try:
            bindings = parse(raw)
        except UsageError:  # (checked at `run`: only a damaged record holds one)
            continue
        parts = raw.rpartition("/")[0 if "/" in raw else 2].split(":")
        ip = parts[0] if len(parts) == 3 else ""
        for b in bindings:
            out.setdefault(f"{b['container_port']}/{b['proto']}", []).append(
                {"HostIp": ip, "HostPort": str(b["host_port"] or "")}
            )
    return out


def docker_env(c) -> list:
    """The container's Env as Docker records it: the -e variables first, then the image's
    that they do not set (not HOSTNAME, HOME or TERM, which the start adds)."""
    resolved = dict(item.partition("=")[::2] for item in c.process.get("env", []))
    user: dict[str, str] = {}
    for item in c.spec.env:
        k = item.partition("=")[0]
        if k in resolved:
            user[k] = resolved[k]
        else:
            user.pop(k, None)  # -e NAME of a variable the CLI did not have
    out = [f"{k}={v}" for k, v in user.items()]
    for item in c.image_config.get("Env") or []:
        if item.partition("=")[0] not in user:
            out.append(item)
    return out


def docker_config(c) -> dict:
    """The container's "Config" as Docker's inspect shows it (and commit stores it)."""
    spec, img = c.spec, c.image_config
    if spec.entrypoint is not None:
        entrypoint = [spec.entrypoint] if spec.entrypoint else None
        cmd = spec.command or None
    else:
        entrypoint = img.get("Entrypoint")
        cmd = spec.command or img.get("Cmd")
    out = {
        "Hostname": c.hostname,
        "Domainname": "",
        "User": img.get("User") or "",
        "AttachStdin": spec.interactive,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": spec.tty,
        "OpenStdin": spec.interactive,
        "StdinOnce": False,
        "Env": docker_env(c),
        "Cmd": cmd,
        "Image": c.image,
        "Volumes": img.get("Volumes") or None,
        "WorkingDir": spec.workdir or img.get("WorkingDir") or "",
        "Entrypoint": entrypoint,
        "OnBuild": img.get("OnBuild") or None,
        "Labels": img.get("Labels") or {},
    }
    if img.get("ExposedPorts"):
        out["ExposedPorts"] = img["ExposedPorts"]
    for key in ("StopSignal", "Healthcheck", "Shell"):
        if img.get(key):
            out[key] = img[key]
    return out


def container_json(c):
    """The Docker-like inspect document of container `c`."""
    from .cgroups import parse_memory

    spec, proc, net = c.spec, c.process, c.network or {}
    argv = proc.get("argv") or [""]
    running = c.status == "running" or c.restarting  # Docker: Running while restarting
    paused = c.paused
    records = _volumes.record_mounts(c)
    mounts = _volumes.inspect_mounts(records)
    binds = [v for v in spec.volumes if ":" in v]  # (Docker's: not the anonymous ones)
    published: dict[str, list[dict[str, str]]] = {}
    for p in net.get("ports") or []:
        key = f"{p.get('container_port')}/{p.get('proto', 'tcp')}"
        published.setdefault(key, []).append(
            {"HostIp": p.get("host_ip", ""), "HostPort": str(p.get("host_port", ""))}
        )
    ports: dict[str, list[dict[str, str]] | None] = dict(published)
    for key in c.image_config.get("ExposedPorts") or {}:
        ports.setdefault(key, None)  # exposed, not published
    mode = spec.network_mode or "bridge"
    # a container that is not running has no address and publishes nothing (Docker
    # releases its network at the stop); its HostConfig keeps what it asked for
    attached = c.status == "running"
    live = net if attached else {}
    endpoint = {
        "IPAddress": live.get("ip", ""),
        "IPPrefixLen": live.get("prefixlen", 0),
        "Gateway": live.get("gateway", ""),
        "MacAddress": live.get("mac", ""),
    }
    cpus = float(spec.cpus) if spec.cpus else 0
    limits = proc.get("limits", {})
    from .restart import RestartPolicy, parse

    try:
        policy = parse(spec.restart)
    except UsageError:
        policy = RestartPolicy()
    return {
        "Id": c.id,
        "Created": c.created,
        "Path": argv[0],
        "Args": argv[1:],
        "State": {
            "Status": "restarting" if c.restarting else "paused" if paused else c.status,
            "Running": running,
            "Paused": paused,
            "Restarting": c.restarting,
            "OOMKilled": c.oom_killed,
            "Dead": False,
            "Pid": c.pid if running else 0,
            "ExitCode": c.exit_code,
            "Error": c.error,
            "StartedAt": c.started_at or "0001-01-01T00:00:00Z",
            "FinishedAt": c.finished_at or "0001-01-01T00:00:00Z",
        },
        "Image": c.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": c.log_path,
        "Name": "/" + c.name,
        "RestartCount": c.restart_count,
        "Driver": "overlay",
        "HostConfig": {
            "Binds": binds or None,
            "Mounts": _volumes.host_config_mounts(records),
            "Tmpfs": _volumes.host_config_tmpfs(spec),
            "VolumesFrom": list(spec.volumes_from) or None,
            "NetworkMode": mode,
            "PortBindings": port_bindings(spec.publish),
            "PublishAllPorts": bool(spec.publish_all),
            "AutoRemove": spec.auto_remove,
            "RestartPolicy": {"Name": policy.name, "MaximumRetryCount": policy.max_retries},
            "Memory": limits.get("memory") or (parse_memory(spec.memory) or 0),
            "MemorySwap": limits.get("memory") or 0,
            "NanoCpus": int(cpus * 1e9),
            "CpuPeriod": 100000 if cpus else 0,
            "CpuQuota": int(cpus * 100000),
            "PidsLimit": limits.get("pids") or 0,
        },
        "GraphDriver": {
            "Name": "overlay",
            "Data": {
                "LowerDir": ":".join(reversed(c.layers)),
                "UpperDir": os.path.join(c.path, "upper"),
                "WorkDir": os.path.join(c.path, "work"),
                "MergedDir": os.path.join(c.path, "rootfs"),
            },
        },
        "Mounts": mounts,
        "Config": docker_config(c),
        "NetworkSettings": {
            "SandboxKey": net.get("netns_path", ""),
            "Ports": ports if attached else {},
            **endpoint,
            "Bridge": live.get("bridge", ""),
            "Networks": {
                mode: {
                    **endpoint,
                    "HostVeth": live.get("veth_host", ""),
                    "HostVethIfindex": live.get("veth_host_ifindex", 0),
                }
            },
        },
        "Cgroups": c.cgroup,
    }
