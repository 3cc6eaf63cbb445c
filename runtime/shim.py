"""The container monitor ("shim"): the detached parent of a container's init.

`launch()` forks the shim from the calling process (no new interpreter, so a
start costs a fork, not an exec of Python). The shim starts its own session
(so it outlives the CLI), creates the cgroups, forks the container init into
new pid/mount/uts/ipc(/net) namespaces, relays the init's output into the log
file (and to the attached terminal, if any), waits for it, records the exit
code and OOM kill, and cleans up: cgroups, network, and with --rm the whole
container. It holds the container's lock for its whole life, so "lock free"
means "no shim", which is what the reconciler checks.

The init, between fork and exec: joins the cgroups, unshares namespaces, waits
for the network (bridge mode), sets the hostname, mounts the overlay root,
/proc, /dev, /sys and volumes, pivots into it, writes /etc/hosts & co, and
execs the user's command. A failure before exec is reported on a close-on-exec
pipe, so `run` fails with that message instead of a silent exit code.
"""

import json
import os
import select
import signal
import sys
import time
from types import ModuleType
from typing import BinaryIO, Protocol

from pyinspect.errors import PyinspectError, UnavailableError

from . import child, isolation, restart, state
from .attach import DETACH_KEYS, Listener, copy_window_size, parse_detach_keys, split_detach
from .cgroups import Cgroup
from .ctrlog import record

SHIM_COMM = "pyinspect-shim"
EXIT_SETUP_FAILED = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
CANCEL_SIGNAL = signal.SIGUSR1  # to the shim: the user stops it, restart no more


class StartError(PyinspectError):
    """The container's command could not be started."""

    def __init__(self, message, exit_code=EXIT_SETUP_FAILED, hint=None):
        super().__init__(message, hint)
        self.exit_code = exit_code


def launch(runtime, c, lock_fd, attach=False):
    """Fork the shim for container `c` (whose lock `lock_fd` the caller holds).

    Returns (shim pid, exit fd) once the user's command has been exec'd; with
    `attach` the exit fd yields the exit code as soon as it is recorded (the
    shim then frees cgroups and files on its own), else it is None. Raises
    StartError (with the container's exit code, 127 for a missing command)
    when it could not start. With `attach`, the shim mirrors output to this
    process's stdout/stderr and passes stdin through (-i).
    """
    _reap_finished()
    status_r, status_w = os.pipe()
    exit_r, exit_w = os.pipe() if attach else (None, None)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(status_r)
            if exit_r is not None:
                os.close(exit_r)
            code = Shim(runtime, c, lock_fd, status_w, attach, exit_w).main()
        except BaseException as exc:  # noqa: BLE001 never return into the CLI's stack
            child.report(status_w, "err", f"{EXIT_SETUP_FAILED} {exc}")
        finally:
            os._exit(code & 0xFF)
    os.close(status_w)
    if exit_w is not None:
        os.close(exit_w)
    kind, rest = child.read_report(status_r) or ("", "")
    if not (attach and kind == "ok"):
        _unreaped.append(pid)  # detached (or failed): reaped by a later launch or exit
    if kind == "ok":
        return pid, exit_r
    if exit_r is not None:
        os.close(exit_r)
    status, _, text = rest.partition(" ")
    if kind == "err" and status.isdigit():
        raise StartError(text or "container failed to start", int(status))
    raise StartError("container failed to start: the monitor process died")


_unreaped: list[int] = []  # shims that reported an exit code and were still cleaning up


def _reap_finished():
    """Reap shims of earlier attached runs (long-lived callers collect no zombies)."""
    for pid in list(_unreaped):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _unreaped.remove(pid)


def wait_exit(pid, exit_fd) -> int | None:
    """The exit code an attached shim reports (or its own exit status if it died);
    None when the detach keys let the CLI go (the container runs on)."""
    data = child.read_all(exit_fd)
    os.close(exit_fd)
    if data == DETACHED:
        _unreaped.append(pid)  # (it runs on: reaped once it ends, if this process lasts)
        return None
    if data.strip().isdigit():
        _unreaped.append(pid)
        _reap_finished()
        return int(data)
    return child.wait(pid)


class RuntimeView(Protocol):
    """What the shim uses of the runtime that launches it (containers.Runtime)."""

    root: str

    def get(self, ref: str) -> state.Container: ...

    def container_files(self, c: state.Container) -> dict[str, str]: ...


DETACH_BYTES = parse_detach_keys(DETACH_KEYS)  # `run -it` without --detach-keys: Docker's
DETACHED = b"detached"  # what the exit pipe says when the CLI is let go


def _stdio_to_devnull() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


class Shim:
    def __init__(self, runtime: RuntimeView, c, lock_fd, status_w, attach, exit_w=None):
        self.rt = runtime
        self.exit_w = exit_w
        self.c = c
        self.lock_fd = lock_fd
        self.status_w = status_w
        self.attach = attach
        self.cg: Cgroup | None = None
        self.netmod: ModuleType | None = None
        self.dns = None  # the embedded DNS of a container on a user network (netdns.py)
        self.log: BinaryIO | None = None
        self.rootfs_mounted = False
        self.stdin_w: int | None = None
        self.listener: Listener | None = None  # `attach` clients' stdin (detached -i)

    # -- the shim's life, in order -------------------------------------------------
    def main(self):
        c = self.c
        os.setsid()
        isolation.set_comm(SHIM_COMM)
        isolation.set_cmdline(f"{SHIM_COMM} {c.id[:12]} {c.name} {self.rt.root}")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.cancelled = False
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.signal(CANCEL_SIGNAL, self._cancel)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # an attached CLI blocks some
        state.mark("shim_forked")
        # (no state write here: the held lock is what says "a shim owns this")
        c.shim_pid, c.shim_start = os.getpid(), state.proc_start(os.getpid())
        if c.spec.interactive and not self.attach:
            try:
                self.listener = Listener(c.path)
            except OSError:
                self.listener = None  # `attach` then forwards no stdin (it says so)
        try:
            return self._runs()
        finally:
            if self.listener is not None:
                self.listener.close()

    def _runs(self):
        """Start the container, relay and wait, restart as its policy says; its last code."""
        c = self.c
        policy = restart.parse(c.spec.restart)
        backoff = restart.Backoff()
        first = True
        while True:
            c.pid = c.pid_start = 0
            c.error = ""
            if not first:
                self._reread()
            try:
                self.start_init()
            except BaseException as exc:  # noqa: BLE001 a failed start is recorded, the loop goes on
                code = getattr(exc, "exit_code", EXIT_SETUP_FAILED)
                if not isinstance(code, int) or code == 0:
                    code = EXIT_SETUP_FAILED
                msg = (
                    str(exc) if isinstance(exc, PyinspectError) else f"{type(exc).__name__}: {exc}"
                )
                self.finish(code, error=msg)
                self.report(f"err {code} {msg}")
                return code
            if first:
                self.report("ok")
            elif self.cancelled:  # stopped while it was being restarted
                self.kill_init()
            started = time.monotonic()
            code = self.relay_and_wait()
            state.mark("init_exited")
            self._reread()
            policy = restart.parse(c.spec.restart)  # `update --restart` may have changed it
            again = not self.cancelled and restart.should_restart(
                policy, code, c.manually_stopped, c.restart_count
            )
            if not again:
                self.finish(code)
                state.mark("shim_cleaned_up")
                return code
            self.finish(code, restarting=True)
            first = False
            if not self.wait_backoff(backoff.next(time.monotonic() - started)):
                c.restarting = False
                c.manually_stopped = True
                c.shim_pid = c.shim_start = 0
                state.save(c)
                os.close(self.lock_fd)
                return code

    def _reread(self):
        """Take what `rename` and `update` may have changed meanwhile: the name (its `ip
        netns` link and its --rm removal go by it), the limits and the restart policy."""
        fresh = state.load(self.c.path)
        if fresh is not None:
            self.c.name, self.c.spec = fresh.name, fresh.spec
            self.c.process = {**self.c.process, "limits": fresh.process.get("limits", {})}

    def _cancel(self, signum, frame):
        """CANCEL_SIGNAL (from `stop`, `kill`, `rm -f`): no more restarts."""
        self.cancelled = True
        self.c.manually_stopped = True
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def wait_backoff(self, delay):
        """Sleep `delay` seconds before a restart; False when cancelled meanwhile."""
        deadline = time.monotonic() + delay
        while not self.cancelled:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            select.select([self.wake_r], [], [], left)
        return False

    def report(self, msg):
        if self.status_w is None:
            return
        try:
            child.write_all(self.status_w, msg.encode())
            os.close(self.status_w)
        except OSError:
            pass  # the CLI is gone; the state file has it all
        self.status_w = None
        if not self.attach:
            _stdio_to_devnull()

    def start_init(self):
        c, spec = self.c, self.c.spec
        mode = spec.network_mode or "bridge"
        limits = c.process.get("limits", {})
        self.cg = Cgroup(c.id, c.cgroup or None, cpu=bool(limits.get("cpus")))
        if limits.get("cpus") and not self.cg.v2 and "cpu" not in self.cg.paths:
            self.cg = Cgroup(c.id, None, cpu=True)  # `update --cpus` since the last start
        join_net = None
        if mode.startswith("container:"):
            other = self.rt.get(mode.split(":", 1)[1])
            if other.status != "running" or not state.init_alive(other):
                raise UnavailableError(
                    f"cannot join the network of {other.name}: it is not running"
                )
            join_net = os.open(f"/proc/{other.pid}/ns/net", os.O_RDONLY)
        if mode == "bridge":
            from .netmod import network_module

            self.netmod = network_module()
        files = self.rt.container_files(c) if mode != "bridge" else None
        self.log = open(c.log_path, "ab", buffering=0)
        # stdio of the init
        self.master = self.out_r = self.err_r = self.stdin_w = None
        child_fds = []
        if spec.tty:
            import pty

            self.master, slave = pty.openpty()
            if self.attach:
                copy_window_size(0, slave)  # the CLI's terminal's size, as Docker's run -it
            stdio = (slave, slave, slave)
            child_fds.append(slave)
        else:
            self.out_r, out_w = os.pipe()
            self.err_r, err_w = os.pipe()
            child_fds += [out_w, err_w]
            if spec.interactive and self.attach:
                stdin = 0
            elif spec.interactive:
                stdin, self.stdin_w = os.pipe()  # kept open: `sh` waits like under docker -di
                child_fds.append(stdin)
            else:
                stdin = os.open(os.devnull, os.O_RDONLY)
                child_fds.append(stdin)
            stdio = (stdin, out_w, err_w)
        err_r, err_w = os.pipe()  # close-on-exec: EOF means exec succeeded
        sync_r, sync_w = os.pipe()  # shim -> init: in its cgroups (+ network); files
        ready_r, ready_w = os.pipe()  # init -> shim: in its namespaces (bridge)
        # cgroups first: the init is cloned straight into the cgroup2 one and moves its
        # only thread into the v1 ones itself (`tasks`), so no cgroup.procs write (each
        # first one waits for an RCU grace period, ~10 ms) is on the start path
        self.cg.create(limits.get("memory"), limits.get("cpus"), limits.get("pids"))
        c.cgroup = self.cg.paths
        state.mark("cgroups_created")
        # the root is mounted here, in the host's mount namespace, as Docker's is: `mount`
        # on the host shows it and MergedDir is browsable while the container runs (the
        # init's copy of it is private; /proc, /dev, /sys and volumes exist only there)
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
        self.rootfs_mounted = True
        state.mark("rootfs_mounted")
        my_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        isolation.unshare(isolation.CLONE_NEWPID)
        shim_pid = os.getpid()
        pid, tasks = self.fork_init()
        if pid == 0:
            os.close(err_r)
            os.close(sync_w)
            os.close(ready_r)
            self.init(
                stdio, err_w, sync_r, ready_w, join_net, files, shim_pid, tasks
            )  # never returns
        isolation.setns(my_pidns, isolation.CLONE_NEWPID)
        os.close(my_pidns)
        for fd in child_fds + [err_w, sync_r, ready_w]:
            os.close(fd)
        if join_net is not None:
            os.close(join_net)
        c.pid, c.pid_start = pid, state.proc_start(pid)
        try:
            # while the init unshares and mounts its root
            if self.netmod is not None:  # bridge mode
                if child.read_all(ready_r) != b"r":
                    raise UnavailableError("container init died before its network was set up")
                c.network = self.netmod.connect(str(self.rt.root), c, pid) or {}
                self.dns = self.netmod.start_dns(str(self.rt.root), c, pid)
                files = self.netmod.container_files(c)
            if tasks is None:  # forked the plain way: the shim puts it in its cgroups
                assert self.cg is not None  # start_init made it
                self.cg.join(pid)
                state.mark("cgroups_joined")
            try:
                child.write_all(sync_w, json.dumps(files or {}).encode())
            except BrokenPipeError:
                pass  # the init failed already (a bad mount): its reason is on err_r
            os.close(sync_w)
            os.close(ready_r)
            failure = child.read_report(err_r)
            state.mark("init_execed")
        except BaseException:
            self.kill_init()
            raise
        if failure:
            code, msg = failure
            self.kill_init()
            self.reap()
            err = StartError(msg, int(code) if code.isdigit() else EXIT_SETUP_FAILED)
            raise err
        c.status = "running"
        c.started_at = state.now_rfc3339()
        c.finished_at = ""
        c.exit_code = 0
        c.oom_killed = False
        c.creator = []
        state.save(c)

    def fork_init(self):
        """Fork the init: (pid, the v1 `tasks` files it joins itself), or (pid, None) when
        it had to be forked the plain way (the shim joins it then). Cloned into its
        cgroup2 directory where the kernel can (CLONE_INTO_CGROUP, Linux 5.7)."""
        assert self.cg is not None  # start_init made it
        v2_dir = self.cg.paths.get("unified")
        fd = None
        if v2_dir:
            try:
                fd = os.open(v2_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                fd = None
        if fd is not None:
            try:
                pid = isolation.fork_into_cgroup(fd)
            except OSError:
                pid = None  # an older kernel: fork, then join
            finally:
                if pid != 0:
                    os.close(fd)
            if pid is not None:
                if pid == 0:
                    os.close(fd)
                return pid, [f"{p}/tasks" for name, p in self.cg.paths.items() if name != "unified"]
        return os.fork(), None

    def kill_init(self):
        try:
            os.kill(self.c.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def reap(self):
        return child.wait(self.c.pid)

    # -- inside the new namespaces (never returns) --------------------------------
    def init(self, stdio, err_w, sync_r, ready_w, join_net, files, shim_pid, tasks=None):
        c, spec = self.c, self.c.spec
        code = EXIT_SETUP_FAILED
        try:
            for path in tasks or ():  # v1 hierarchies: this (only) thread moves itself,
                with open(path, "w") as f:  # which needs no RCU grace period
                    f.write("0")
            state.mark("init_in_cgroups")
            # (pid 1 of a new pid namespace: getppid() is 0, so a shim that died
            # before this line goes unnoticed; the reconciler settles that case)
            isolation.set_parent_death_signal(signal.SIGKILL)
            for sig in (
                signal.SIGPIPE,
                signal.SIGXFSZ,
                signal.SIGINT,
                signal.SIGTERM,
                signal.SIGHUP,
                CANCEL_SIGNAL,
            ):
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())  # exec keeps the mask
            mode = spec.network_mode or "bridge"
            flags = isolation.CLONE_NEWNS | isolation.CLONE_NEWUTS | isolation.CLONE_NEWIPC
            if mode in ("none", "bridge"):
                flags |= isolation.CLONE_NEWNET
            isolation.unshare(flags)
            state.mark("init_unshared")
            if mode in ("none", "bridge"):
                isolation.loopback_up()
            if join_net is not None:
                isolation.setns(join_net, isolation.CLONE_NEWNET)
                os.close(join_net)
            if mode == "bridge":
                child.write_all(ready_w, b"r")
            os.close(ready_w)
            isolation.sethostname(c.hostname)
            from .volumes import record_mounts

            volumes = record_mounts(c)
            isolation.prepare_root(
                os.path.join(c.path, "rootfs"),
                c.layers,
                os.path.join(c.path, "upper"),
                os.path.join(c.path, "work"),
                volumes,
                mount_overlay=False,
            )
            isolation.pivot_into(os.path.join(c.path, "rootfs"))
            state.mark("init_pivoted")
            data = child.read_all(sync_r)  # the shim put us in the cgroups (and the network)
            if not data:
                os._exit(EXIT_SETUP_FAILED)  # the shim failed and says why
            os.close(sync_r)
            state.mark("init_synced")
            files = json.loads(data)
            for path, text in (files or {}).items():
                try:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "w") as f:
                        f.write(text)
                except OSError:
                    pass  # a read-only or odd image; not fatal, like docker
            proc = c.process
            cwd = proc.get("cwd") or "/"
            try:
                os.makedirs(cwd, exist_ok=True)
                os.chdir(cwd)
            except (FileExistsError, NotADirectoryError):  # e.g. a volume put a file there
                raise StartError(f"working directory {cwd!r} is not a directory") from None
            user = proc.get("user")
            if user:
                uid, _, gid = str(user).partition(":")
                os.setgroups([])
                os.setgid(int(gid or uid))
                os.setuid(int(uid))
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            if spec.tty:
                os.setsid()
                import fcntl
                import termios

                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            argv = proc["argv"]
            env = dict(e.split("=", 1) for e in proc["env"])
            code = EXIT_NOT_FOUND
            state.mark("init_exec")
            try:
                os.execvpe(argv[0], argv, env)
            except FileNotFoundError:
                raise StartError(
                    f'exec: "{argv[0]}": executable file not found in $PATH', EXIT_NOT_FOUND
                ) from None
            except PermissionError:
                raise StartError(
                    f'exec: "{argv[0]}": permission denied', EXIT_NOT_EXECUTABLE
                ) from None
            except OSError as exc:
                raise StartError(
                    f'exec: "{argv[0]}": {exc.strerror}', EXIT_NOT_EXECUTABLE
                ) from None
        except BaseException as exc:  # noqa: BLE001 the forked init reports everything and exits
            code = getattr(exc, "exit_code", EXIT_SETUP_FAILED)
            if isinstance(exc, PyinspectError):
                msg = str(exc)
            else:
                msg = f"container init failed: {exc}"
            child.report(err_w, code, msg)
        os._exit(code)

    # -- while it runs -------------------------------------------------------------
    def _log(self, stream, data):
        assert self.log is not None  # open while the init runs
        self.log.write(record(stream, data))

    def relay_and_wait(self):
        """Copy the init's output into the log (and the terminal); return its exit code."""
        sources = {}
        if self.master is not None:
            sources[self.master] = ("stdout", 1)
        else:
            assert self.out_r is not None and self.err_r is not None  # the pipes' read ends
            sources[self.out_r] = ("stdout", 1)
            sources[self.err_r] = ("stderr", 2)
        mirror = self.attach
        stdin_fd = (
            0 if (self.attach and self.master is not None and self.c.spec.interactive) else None
        )
        lst = self.listener
        if lst is not None:
            lst.attach_to(self.master if self.master is not None else self.stdin_w)
        held = b""  # typed bytes that may start the detach keys
        keys = DETACH_BYTES
        if self.c.spec.detach_keys:
            try:
                keys = parse_detach_keys(self.c.spec.detach_keys)
            except PyinspectError:
                pass  # (checked by create: only an edited record holds a bad one)
        poller = select.poll()
        polled: dict[int, int] = {}
        for fd in sources:
            polled[fd] = select.POLLIN
        if stdin_fd is not None:
            polled[stdin_fd] = select.POLLIN
        for fd, mask in polled.items():
            poller.register(fd, mask)
        while sources:
            if lst is not None:
                self._poll_attach(poller, polled, sources, lst)
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, ev in sorted(events):  # stdout's pipe before stderr's when both wait
                if lst is not None and lst.owns(fd):
                    if ev & select.POLLOUT or fd not in sources:
                        lst.ready(fd)
                    if fd not in sources or not ev & (select.POLLIN | select.POLLHUP):
                        continue
                if fd == stdin_fd:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:
                        data = b""
                    eof, detached = not data, False
                    if eof:
                        data, held = held + b"\x04", b""  # ^D: EOF for the tty
                    else:
                        data, held, detached = split_detach(held + data, keys)
                    if eof or detached:
                        poller.unregister(fd)
                        polled.pop(fd, None)
                        stdin_fd = None
                    assert self.master is not None  # stdin is relayed to a terminal only
                    try:
                        if data:
                            child.write_all(self.master, data)
                    except OSError:
                        pass  # the container closed its terminal
                    if detached:
                        mirror = False
                        lst = self._detach()
                    continue
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the pty's other side is closed
                    data = b""
                if not data:
                    poller.unregister(fd)
                    polled.pop(fd, None)
                    os.close(fd)
                    del sources[fd]
                    continue
                stream, out = sources[fd]
                self._log(stream, data)
                if mirror:
                    try:
                        child.write_all(out, data)
                    except OSError:
                        mirror = False  # the CLI went away: keep logging
        if lst is not None:
            lst.end_run()
        return self.reap()

    def _let_cli_go(self, message: bytes) -> None:
        """Tell an attached CLI `message` (an exit code, or DETACHED) and let go of its
        stdio, so whoever reads it sees EOF now; the shim runs on detached."""
        if self.exit_w is not None:
            try:
                child.write_all(self.exit_w, message)
                os.close(self.exit_w)
            except OSError:
                pass
            self.exit_w = None
        _stdio_to_devnull()
        self.attach = False

    def _detach(self) -> "Listener | None":
        """The detach keys were typed in `run -it`: tell the CLI (it exits 0, as Docker's),
        let go of its terminal and run on detached, stdin open to `attach`."""
        self._let_cli_go(DETACHED)
        try:
            self.listener = Listener(self.c.path)
        except OSError:
            return None
        self.listener.attach_to(self.master)
        return self.listener

    @staticmethod
    def _poll_attach(poller, polled: dict[int, int], sources: dict, lst: "Listener") -> None:
        """Poll what the attach listener wants now, beside the container's output."""
        want = {fd: select.POLLIN for fd in sources}
        for fd, inp in lst.wanted().items():
            want[fd] = want.get(fd, 0) | (select.POLLIN if inp else select.POLLOUT)
        for fd in [fd for fd in polled if fd not in want and fd not in sources]:
            poller.unregister(fd)
            del polled[fd]
        for fd, mask in want.items():
            if fd not in polled:
                poller.register(fd, mask)
            elif polled[fd] != mask:
                poller.modify(fd, mask)
            polled[fd] = mask

    # -- after it exited -----------------------------------------------------------
    def finish(self, code, error="", restarting=False):
        """Record the exit, free the kernel objects (with --rm, hide the container at
        once and remove it), then tell an attached CLI the exit code. `restarting`:
        the policy restarts it, so the lock stays held (and the files stay)."""
        c = self.c
        if c.pid:
            self.reap()
        oom = False
        if self.cg is not None:
            try:
                oom = self.cg.oom_kills() > 0
            except (OSError, ValueError):
                pass
        if self.stdin_w is not None:
            os.close(self.stdin_w)
            self.stdin_w = None
        c.status = "exited"
        c.exit_code = code
        c.oom_killed = oom
        c.finished_at = state.now_rfc3339()
        c.error = error
        c.pid = c.pid_start = 0
        c.creator = []
        c.restarting = restarting
        if restarting:
            c.restart_count += 1
        else:
            c.shim_pid = c.shim_start = 0
        # everything is freed before an attached CLI hears the exit, as Docker's
        # `run` returns after the cleanup (and, with --rm, after the removal)
        problems = []
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        if self.netmod is not None and len(c.network or {}) > 1:
            try:
                self.netmod.disconnect(str(self.rt.root), c)
            except Exception as exc:  # noqa: BLE001 pyroute2, python-iptables: own Exceptions
                problems.append(f"network: {exc}")
            if restarting:  # the next start connects it afresh
                c.network = {"mode": c.network.get("mode", "bridge")}
        c.error = "; ".join([e for e in [error] + problems if e])
        trash = None
        if c.spec.auto_remove:
            state.keep_exit_code(c)
            self._reread()
            trash = state.hide_record(self.rt.root, c)
        else:
            state.save(c)
        if self.rootfs_mounted:
            try:
                isolation.umount(os.path.join(trash or c.path, "rootfs"))
            except OSError as exc:
                problems.append(str(exc))
            self.rootfs_mounted = False
        if self.cg is not None:
            try:
                self.cg.remove()
            except PyinspectError as exc:
                problems.append(str(exc))
        if self.log is not None:
            self.log.close()
            self.log = None
        if trash:
            state.remove_tree(trash)
            from .volumes import remove_anonymous

            remove_anonymous(self.rt.root, c)
        elif problems:
            c.error = "; ".join([e for e in [error] + problems if e])
            state.save(c)
        if self.exit_w is not None and self.status_w is None:
            self._let_cli_go(str(code).encode())  # (a restart runs detached)
        if not restarting:
            os.close(self.lock_fd)
