"""Polling waits shared by the tests, testbed/tracetopo.py and the benches that use it."""

import re
import subprocess
import time


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    """pred()'s first true value, polled every `interval` s; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"{what} not met in time")


def listening(ns, port):
    """Whether a TCP socket listens on `port` in the named netns `ns` (None: this one)."""
    argv = ["ip", "netns", "exec", ns] if ns else []
    out = subprocess.run(
        [*argv, "cat", "/proc/net/tcp", "/proc/net/tcp6"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return re.search(rf":{port:04X} [0-9A-F:]+ 0A ", out) is not None


def wait_listen(ns, port, timeout=10.0):
    """Wait until something listens on TCP `port` in netns `ns`."""
    wait_for(lambda: listening(ns, port), timeout, 0.05, f"a listener on {port} in {ns}")
