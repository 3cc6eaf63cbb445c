"""A command stopped by a signal once its output reaches a given line."""

import signal
import subprocess
from dataclasses import dataclass


@dataclass
class Stopped:
    returncode: int
    out: str  # all of its stdout: the lines before the signal and the rest
    err: str


def signal_at(argv, reached, sig=signal.SIGTERM, timeout=60, stderr=subprocess.PIPE) -> Stopped:
    """Run `argv`, read its stdout until `reached(line)` is true, send `sig` and wait up to
    `timeout` s (it is killed if still running)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if reached(line):
                break
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Stopped(proc.returncode, "".join(lines) + (rest or ""), err or "")
