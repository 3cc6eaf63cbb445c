"""`attach` on pyinspect's own containers (Docker's outputs: test_docker_engine.py): the
output from now on and the exit code, stdin of a `-di` container (kept open when a client
goes, shared by two clients), SIGINT passed on (or not, with --sig-proxy=false), a
terminal's detach keys, and the refusals."""

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

from helpers.pccli import one_line_error

pytestmark = pytest.mark.root


def _wait_for(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_output_from_now_on_and_the_exit_code(pc):
    pc("run", "-d", "--name", "at-out", "--net", "none", "busybox", "sh", "-c",
       "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo tick $i; echo tock $i >&2; sleep 0.25;"
       " done; exit 3")  # fmt: skip
    time.sleep(0.6)  # some ticks before the attach: not shown again
    proc = pc("attach", "at-out", input="", check=False)
    assert proc.returncode == 3, proc.stderr
    ticks = proc.stdout.splitlines()
    assert ticks and ticks[-1] == "tick 12" and "tick 1" not in ticks, ticks
    first = int(ticks[0].split()[1])
    assert ticks == [f"tick {i}" for i in range(first, 13)]
    assert proc.stderr.splitlines()[-1] == "tock 12", proc.stderr


def test_stdin_of_a_detached_interactive_container(pc):
    """Two clients in turn: the first one's EOF leaves the container's stdin open, the
    second one's input reaches it too; both see it exit."""
    script = 'while read l; do echo "got $l"; [ "$l" = bye ] && exit 5; done; echo eof; exit 9'
    pc("run", "-di", "--name", "at-in", "--net", "none", "busybox", "sh", "-c", script)
    first = subprocess.Popen(
        pc.argv("attach", "at-in"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first.stdin.write(b"hello\n")
    first.stdin.close()  # EOF: the container must not see one
    log = lambda: pc("logs", "at-in").stdout  # noqa: E731
    _wait_for(lambda: "got hello" in log())
    assert pc.inspect("at-in")["State"]["Running"]
    second = pc("attach", "at-in", input="bye\n", check=False)
    assert second.returncode == 5 and second.stdout == "got bye\n", second
    first.wait(timeout=30)
    out, err = first.stdout.read(), first.stderr.read()
    assert first.returncode == 5 and out == b"got hello\ngot bye\n", (out, err)
    assert "eof" not in log()


def test_sigint_is_passed_on_unless_told_not_to(pc):
    script = 'trap "echo caught; exit 7" INT; echo ready; while true; do sleep 0.1; done'
    for name in ("at-sig", "at-nosig"):
        pc("run", "-d", "--name", name, "--net", "none", "busybox", "sh", "-c", script)
        _wait_for(lambda name=name: "ready" in pc("logs", name).stdout)
    proxied = subprocess.Popen(pc.argv("attach", "at-sig"), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    plain = subprocess.Popen(pc.argv("attach", "--sig-proxy=false", "at-nosig"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)  # fmt: skip
    time.sleep(1.5)  # both attached
    proxied.send_signal(signal.SIGINT)
    plain.send_signal(signal.SIGINT)
    out, err = proxied.communicate(timeout=30)
    assert proxied.returncode == 7 and out == b"caught\n", (out, err)
    assert pc.inspect("at-sig")["State"]["ExitCode"] == 7
    out, err = plain.communicate(timeout=30)
    assert plain.returncode == 130 and b"Traceback" not in err, err
    assert pc.inspect("at-nosig")["State"]["Running"]  # not told


def _own_terminal():
    """In the child: a session of its own whose controlling terminal is its stdin (as a
    shell's command on a terminal: resizes reach it as SIGWINCH)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class _Terminal:
    """A command on a pseudo-terminal of its own, and what it has printed so far."""

    def __init__(self, argv, rows=24, cols=80):
        self.master, slave = pty.openpty()
        self.resize(rows, cols, slave)
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                     close_fds=True, preexec_fn=_own_terminal)  # fmt: skip
        os.close(slave)
        self.seen = b""

    def resize(self, rows, cols, fd=None):
        """A new size (the kernel tells the foreground process group: SIGWINCH)."""
        fcntl.ioctl(self.master if fd is None else fd, termios.TIOCSWINSZ,
                    struct.pack("HHHH", rows, cols, 0, 0))  # fmt: skip

    def type(self, data):
        os.write(self.master, data)

    def read_until(self, word, timeout=15):
        deadline = time.monotonic() + timeout
        while word not in self.seen and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:
                    break
        return word in self.seen

    def close(self):
        os.close(self.master)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_terminal_detach_keys_leave_it_running(pc):
    pc("run", "-dit", "--name", "at-tty", "--net", "none", "busybox", "sh")
    term = _Terminal(pc.argv("attach", "at-tty"))
    try:
        time.sleep(1)  # attached (the terminal in raw mode)
        term.type(b"echo $((6*7))x\r")
        assert term.read_until(b"42x"), term.seen
        term.type(b"\x10\x11")  # ctrl-p ctrl-q
        assert term.read_until(b"read escape sequence"), term.seen
        assert term.proc.wait(timeout=15) == 0
    finally:
        term.close()
    assert pc.inspect("at-tty")["State"]["Running"]


def test_run_it_detaches_and_attach_comes_back(pc):
    """`run -it`, the detach keys (exit 0, nothing said, as Docker's), the container runs
    on with its terminal; `attach` types into it again and gets its exit code."""
    argv = pc.argv("run", "-it", "--name", "at-run", "--net", "none", "busybox", "sh")
    term = _Terminal(argv, rows=33, cols=101)
    try:
        assert term.read_until(b"# "), term.seen  # the shell's prompt
        time.sleep(0.5)
        term.type(b"echo $((6*7))x; stty size\r")
        assert term.read_until(b"42x"), term.seen
        assert term.read_until(b"33 101"), term.seen  # the terminal's size, as Docker's
        term.resize(40, 120)
        time.sleep(0.5)
        term.type(b"stty size\r")
        assert term.read_until(b"40 120"), term.seen
        term.type(b"\x10")
        time.sleep(0.3)  # the keys in two reads: the first one held back, not typed
        term.type(b"\x11")
        assert term.proc.wait(timeout=15) == 0, term.seen
        assert b"escape" not in term.seen
    finally:
        term.close()
    assert pc.inspect("at-run")["State"]["Running"]
    again = _Terminal(pc.argv("attach", "at-run"), rows=50, cols=132)
    try:
        time.sleep(1)
        again.type(b"echo again$((1+1)); stty size\r")
        assert again.read_until(b"again2"), again.seen
        assert again.read_until(b"50 132"), again.seen  # attach resizes it, as Docker's
        again.type(b"exit 4\r")
        assert again.proc.wait(timeout=15) == 4
    finally:
        again.close()
    assert b"\x10" not in pc("logs", "at-run", text=False).stdout


def test_refusals(pc):
    pc("run", "--name", "at-done", "--net", "none", "busybox", "true")
    pc("run", "-d", "--name", "at-paused", "--net", "none", "busybox", "sleep", "600")
    pc("pause", "at-paused")
    try:
        for args, code, said in (
            (["at-done"], 4, "You cannot attach to a stopped container, start it first"),
            (["at-paused"], 4, "You cannot attach to a paused container, unpause it first"),
            (["at-nosuch"], 3, "at-nosuch"),
            (["--detach-keys", "ctrl-pp", "at-paused"], 2, "invalid detach keys"),
        ):
            proc = pc("attach", *args, input="", check=False)
            assert said in one_line_error(proc, code), (args, proc.stderr)
    finally:
        pc("unpause", "at-paused")


def test_run_detach_keys_of_its_own(pc):
    """`run -it --detach-keys ctrl-x,x`: those keys detach; Docker's do not."""
    argv = pc.argv("run", "-it", "--detach-keys", "ctrl-x,x", "--name", "at-keys", "--net",
                   "none", "busybox", "sh")  # fmt: skip
    term = _Terminal(argv)
    try:
        assert term.read_until(b"# "), term.seen
        time.sleep(0.5)
        term.type(b"\x10\x11echo still$((2+3))\r")  # ctrl-p ctrl-q: just typed
        assert term.read_until(b"still5"), term.seen
        term.type(b"\x18x")  # ctrl-x x
        assert term.proc.wait(timeout=15) == 0, term.seen
    finally:
        term.close()
    assert pc.inspect("at-keys")["State"]["Running"]


def test_output_only_when_its_stdin_is_the_cli_s(pc):
    """A container run attached with -i reads the CLI's stdin: an attach says it sends
    none (one line) and shows the output; an --rm one's code comes from its kept file."""
    first = subprocess.Popen(
        pc.argv("run", "-i", "--name", "at-att", "--net", "none", "busybox", "sh", "-c",
                'read l; echo "got $l"; exit 3'),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _wait_for(lambda: pc("ps", "-q", "--filter", "name=at-att").stdout.strip())
    second = subprocess.Popen(pc.argv("attach", "at-att"), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    time.sleep(1)  # attached
    second.stdin.write(b"not sent\n")
    second.stdin.flush()
    first.stdin.write(b"hi\n")
    first.stdin.flush()
    second.wait(timeout=30)
    out, err = second.stdout.read(), second.stderr.read()
    assert second.returncode == 3 and out == b"got hi\n", (out, err)
    assert err == b"pyinspect: at-att takes no stdin now; output only\n", err
    first.wait(timeout=30)
    first.stdin.close()
    assert first.returncode == 3 and first.stdout.read() == b"got hi\n"
    pc("run", "-d", "--rm", "--name", "at-rm", "--net", "none", "busybox", "sh", "-c",
       "sleep 1; echo bye; exit 6")  # fmt: skip
    proc = pc("attach", "at-rm", input="", check=False)
    assert (proc.returncode, proc.stdout) == (6, "bye\n"), proc
