"""`attach`: a running container's output from now on, its stdin when it was created with
-i, until it exits, as `docker attach`.

The output is read from the container's log as the monitor writes it (the log holds
every byte the container writes, so attaching never slows the container, however slow
the reader). Stdin goes through a unix socket the monitor of a detached `-i` container
listens on (`attach.sock` in its state directory): the monitor copies what each client
sends to the container's stdin (its pipe, or its terminal with -t) and never closes that
stdin when a client goes, as Docker keeps an attached container's stdin open.
"""

import contextlib
import fcntl
import os
import signal
import socket
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

from pyinspect.errors import ConflictError, NotFoundError, PyinspectError, UsageError

from . import state
from .ctrlog import read_records

if TYPE_CHECKING:
    from .containers import Runtime

SOCKET_NAME = "attach.sock"
PENDING_MAX = 1 << 16  # bytes a client may have sent that the container has not read yet
FOLLOW_POLL_S = 0.05


def _socket_path(dir_fd: int) -> str:
    """A short path to `attach.sock` in the directory open as `dir_fd` (a state dir's
    full path can pass the 108 bytes a unix socket address holds)."""
    return f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"


class Listener:
    """The monitor's end: accepts attach clients and copies what they send to `target`
    (the container's stdin pipe or terminal). The monitor polls `fds()` with its output
    and calls `ready(fd, events)`; nothing here blocks."""

    def __init__(self, state_dir: str) -> None:
        self.dir_fd = os.open(state_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(state_dir, SOCKET_NAME))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(_socket_path(self.dir_fd))
        os.chmod(os.path.join(state_dir, SOCKET_NAME), 0o600)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.path = os.path.join(state_dir, SOCKET_NAME)
        self.clients: dict[int, socket.socket] = {}
        self.pending: dict[int, bytes] = {}  # client fd -> bytes not yet written to target
        self.target: int | None = None

    def attach_to(self, target: int | None) -> None:
        """The container's stdin for this run (a new pipe or terminal each start)."""
        self.target = target
        if target is not None:
            os.set_blocking(target, False)

    def wanted(self) -> dict[int, bool]:
        """{fd: True to poll it for input, False for room to write}."""
        out = {self.sock.fileno(): True}
        for fd in self.clients:
            if fd not in self.pending:
                out[fd] = True
        if self.pending and self.target is not None:
            out[self.target] = False
        return out

    def owns(self, fd: int) -> bool:
        return fd == self.sock.fileno() or fd in self.clients or fd == self.target

    def ready(self, fd: int) -> None:
        if fd == self.sock.fileno():
            with contextlib.suppress(BlockingIOError, InterruptedError):
                conn, _ = self.sock.accept()
                conn.setblocking(False)
                self.clients[conn.fileno()] = conn
            return
        if fd == self.target:
            for cfd in list(self.pending):
                self._write(cfd, self.pending.pop(cfd))
            return
        client = self.clients.get(fd)
        if client is None:
            return
        try:
            data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(fd)
            return
        self._write(fd, data)

    def _write(self, fd: int, data: bytes) -> None:
        """Write what fits now; keep the rest (at most PENDING_MAX) until there is room."""
        if self.target is None:
            return  # (between two runs: dropped, as a stopped container reads nothing)
        try:
            n = os.write(self.target, data)
        except BlockingIOError:
            n = 0
        except OSError:  # the container closed its stdin: nothing more goes to it
            self.pending.clear()
            self.target = None
            return
        if n < len(data):
            self.pending[fd] = self.pending.get(fd, b"") + data[n:]
            if len(self.pending[fd]) > PENDING_MAX:
                self._drop(fd)  # the container does not read its stdin

    def _drop(self, fd: int) -> None:
        self.pending.pop(fd, None)
        conn = self.clients.pop(fd, None)
        if conn is not None:
            conn.close()

    def end_run(self) -> None:
        """The container exited: its attach clients are done."""
        for fd in list(self.clients):
            self._drop(fd)
        self.target = None

    def close(self) -> None:
        self.end_run()
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.dir_fd)


def connect(c: state.Container) -> socket.socket | None:
    """A connection to the stdin of container `c` (running, created with -i), or None
    when its monitor takes none."""
    dir_fd = os.open(c.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(_socket_path(dir_fd))
        except OSError:
            sock.close()
            return None
        return sock
    finally:
        os.close(dir_fd)


def attachable(runtime: "Runtime", ref: str) -> state.Container:
    """Container `ref`, which must be running and not paused (Docker's refusals)."""
    c = runtime.get(ref)
    if c.status != "running" or c.restarting or not state.init_alive(c):
        raise ConflictError("You cannot attach to a stopped container, start it first")
    if c.paused:
        raise ConflictError("You cannot attach to a paused container, unpause it first")
    return c


class Attachment:
    """Following one run of a container: `output()` yields (stream, bytes) from now until
    the run ends; `exit_code` is then its code."""

    def __init__(self, c: state.Container) -> None:
        self.c = c
        self.exit_code: int | None = None
        # an --rm container's monitor writes the code here before it removes the record
        self._code_fd = os.open(
            os.path.join(c.path, state.EXIT_CODE_FILE), os.O_RDONLY | os.O_CREAT
        )
        self._log: BinaryIO | None
        try:
            self._log = open(c.log_path, "rb")  # noqa: SIM115 closed by close()
        except FileNotFoundError:
            self._log = None
        if self._log is not None:
            self._log.seek(0, os.SEEK_END)
            read_records(self._log)  # (a record being written: the end is before it)

    def output(self, stop: Callable[[], bool] | None = None) -> Iterator[tuple[str, bytes]]:
        """(stream, bytes) as the container writes them, until its run ends (or `stop()`)."""
        while True:
            ended = self._ended()
            if self._log is not None:
                yield from read_records(self._log)
            if ended or (stop is not None and stop()):
                return
            time.sleep(FOLLOW_POLL_S)

    def _ended(self) -> bool:
        now = state.load(self.c.path, damaged=True)
        if now is None:  # removed (--rm): the code is in the file
            self.exit_code = state.kept_exit_code(self._code_fd)
            if self.exit_code is None:
                raise NotFoundError(f"container {self.c.name} was removed while attached")
            return True
        if now.finished_at != self.c.finished_at and now.status in ("exited", "created"):
            self.exit_code = now.exit_code
            return True
        if now.started_at != self.c.started_at or now.restarting:
            self.exit_code = now.exit_code  # exited, and already restarting
            return True
        return False

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
        os.close(self._code_fd)


DETACH_KEYS = "ctrl-p,ctrl-q"  # Docker's default


def parse_detach_keys(spec: str) -> bytes:
    """Docker's --detach-keys: comma-separated `ctrl-<x>` (x a letter or one of @[\\]^_)
    or single characters, e.g. "ctrl-p,ctrl-q" -> b"\\x10\\x11"."""
    out = bytearray()
    for key in spec.split(","):
        k = key.strip()
        if k.lower().startswith("ctrl-") and len(k) == 6:
            ch = k[5].upper()
            if "@" <= ch <= "_":
                out.append(ord(ch) - 64)
                continue
        elif len(k) == 1 and k.isprintable():
            out.append(ord(k))
            continue
        raise UsageError(
            f"invalid detach keys {spec!r}: {k!r} is not a key",
            "e.g. ctrl-p,ctrl-q (ctrl- with a letter or @[\\]^_, or one character)",
        )
    return bytes(out)


def copy_window_size(src_fd: int, dst_fd: int) -> None:
    """Give terminal `dst_fd` the rows and columns of terminal `src_fd` (the kernel then
    tells the processes on `dst_fd` with SIGWINCH); nothing when either is no terminal."""
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst_fd, termios.TIOCSWINSZ, size)


def resize_container_terminal(src_fd: int, pid: int) -> None:
    """The container whose init is `pid` (created with -t) gets terminal `src_fd`'s size,
    as Docker's CLI resizes it on attach and when its own terminal changes size."""
    try:
        fd = os.open(f"/proc/{pid}/fd/0", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        copy_window_size(src_fd, fd)
    finally:
        os.close(fd)


def split_detach(data: bytes, keys: bytes) -> tuple[bytes, bytes, bool]:
    """(what to send on, what to hold back as a possible start of `keys`, whether the
    keys were typed) for terminal input `data` (held bytes of the last call first)."""
    at = data.find(keys)
    if at >= 0:
        return data[:at], b"", True
    for keep in range(min(len(keys) - 1, len(data)), 0, -1):
        if keys.startswith(data[-keep:]):
            return data[:-keep], data[-keep:], False
    return data, b"", False


class StdinPump(threading.Thread):
    """Copies the CLI's stdin to an attach socket; with `detach` (a terminal), stops at
    that key sequence and sets `detached` (the keys are not sent, as Docker's)."""

    def __init__(self, fd: int, sock: socket.socket, detach: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.fd, self.sock, self.detach = fd, sock, detach
        self.detached = threading.Event()

    def run(self) -> None:
        held = b""  # the start of a detach sequence, sent on when it is not one
        try:
            while True:
                data = os.read(self.fd, 4096)
                if not data:
                    return  # EOF: the container's stdin stays open, as Docker's
                if self.detach:
                    data, held, found = split_detach(held + data, self.detach)
                    if found:
                        self.detached.set()
                        if data:
                            self.sock.sendall(data)
                        return
                if data:
                    self.sock.sendall(data)
        except OSError:
            return  # the container exited (the monitor closed the socket)


def attach(
    runtime: "Runtime",
    ref: str,
    stdin_fd: int | None,
    out: BinaryIO,
    err: BinaryIO,
    sig_proxy: bool = True,
    detach_keys: str = DETACH_KEYS,
) -> int:
    """`docker attach`: print container `ref`'s output from now on (stdout to `out`,
    stderr to `err`), send `stdin_fd` to its stdin when it was created with -i (a
    terminal in raw mode when it has one too; the detach keys leave it running), pass
    SIGINT and SIGTERM on to it (`sig_proxy`, without -t), and return its exit code
    when it exits (0 when detached)."""
    keys = parse_detach_keys(detach_keys)
    c = attachable(runtime, ref)
    att = Attachment(c)
    pump = None
    restore = None
    old_handlers = {}
    try:
        if stdin_fd is not None and c.spec.interactive:
            sock = connect(c)
            if sock is None:
                err.write(f"pyinspect: {c.name} takes no stdin now; output only\n".encode())
                err.flush()
            else:
                tty_in = c.spec.tty and os.isatty(stdin_fd)
                if tty_in:
                    restore = termios.tcgetattr(stdin_fd)
                    tty.setraw(stdin_fd)
                    resize_container_terminal(stdin_fd, c.pid)
                    old_handlers[signal.SIGWINCH] = signal.signal(
                        signal.SIGWINCH,
                        lambda *_: resize_container_terminal(stdin_fd, c.pid),
                    )
                pump = StdinPump(stdin_fd, sock, keys if tty_in else b"")
                pump.start()
        if sig_proxy and not c.spec.tty:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old_handlers[sig] = signal.signal(sig, _proxy(runtime, c))
        stop = pump.detached.is_set if pump is not None else None
        for stream, data in att.output(stop):
            (err if stream == "stderr" else out).write(data)
            (err if stream == "stderr" else out).flush()
        if pump is not None and pump.detached.is_set():
            if restore is not None and stdin_fd is not None:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, restore)
                restore = None
            err.write(b"read escape sequence\n")
            return 0
        return att.exit_code if att.exit_code is not None else 0
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if restore is not None and stdin_fd is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, restore)
        if pump is not None:
            pump.sock.close()
        att.close()


def _proxy(runtime: "Runtime", c: state.Container):
    def forward(signum, frame):
        with contextlib.suppress(PyinspectError):
            runtime.kill(c.id, signal.Signals(signum).name)

    return forward
