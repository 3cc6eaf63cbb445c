"""Talking to a forked child: its report pipe and its exit status (stdlib only).

A child that fails before it execs (or before it finishes its work) writes one
report `<word> <text>` on a pipe (the word is an exit code or a kind); the
parent reads to EOF: nothing means it went well (a close-on-exec pipe closes
at exec).
"""

import os
from collections.abc import Callable


def read_all(fd: int) -> bytes:
    """Everything readable from `fd` until EOF (the fd stays open)."""
    chunks: list[bytes] = []
    while True:
        try:
            b = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


def report(fd: int, word: object, text: object) -> None:
    """In the child: write the report `<word> <text>` (ignored if the parent is gone)."""
    try:
        write_all(fd, f"{word} {text}".encode())
    except OSError:
        pass


def read_report(fd: int) -> tuple[str, str] | None:
    """In the parent: read the child's report to EOF and close `fd`.

    Returns (word, text), or None when the child wrote nothing."""
    data = read_all(fd)
    os.close(fd)
    if not data:
        return None
    word, _, text = data.decode(errors="replace").partition(" ")
    return word, text


def wait(pid: int) -> int:
    """Wait for child `pid`: its exit code, 128+N if killed by signal N, 255 if it
    is not our child (already reaped)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            return 255
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def fork_call(fn: Callable[[], None]) -> tuple[int, int]:
    """Fork a child that runs fn() and exits 0, or writes its exception as the report
    (`notfound <text>` for a missing file, else `error <text>`) and exits 1. In the
    parent: (pid, the report's read end), for read_report and wait."""
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(err_r)
            fn()
        except BaseException as exc:  # noqa: BLE001 the forked child reports everything and exits
            code = 1
            from pyinspect.errors import NotFoundError, PyinspectError

            if isinstance(exc, PyinspectError):
                msg = exc.message
            elif isinstance(exc, OSError) and exc.strerror:
                msg = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
            else:
                msg = str(exc) or type(exc).__name__
            missing = isinstance(exc, (FileNotFoundError, NotFoundError))
            report(err_w, "notfound" if missing else "error", msg)
        os._exit(code)
    os.close(err_w)
    return pid, err_r
