"""The README's first command runs `pyinspect demo`: the whole walkthrough, end to end, in
namespaces of its own (the machine's routes and firewall untouched), and nothing left."""

import os
import signal
import subprocess

import pytest

from conftest import Cli

pytestmark = pytest.mark.root


def _check_walkthrough(out):
    assert "== pyinspect demo: a container `test` published on port 8088" in out, out
    # the trace followed the fetch through DNAT at every point into the container
    assert "flow 1: DNAT 10.203.0.1:8088 -> " in out, out
    assert "test/eth0\t10.203.0.2\t" in out, out
    # the rule that did it and conntrack's entry
    assert "DNAT" in out.split("-- the rules and the conntrack entry")[1], out
    assert "dport=8088" in out, out
    assert "No problems found." in out.split("-- doctor --")[1], out
    pages = [ln for ln in out.splitlines() if ln.startswith("GET http://127.0.0.1:")]
    assert len(pages) >= 6 and all(" -> 200 " in ln for ln in pages), pages


def test_demo_runs_end_to_end_and_cleans_up(state_root):
    proc = subprocess.run(
        Cli(state_root).argv("demo", "--serve-seconds", "0"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_walkthrough(proc.stdout)
    assert proc.stdout.rstrip().endswith("Demo finished: everything it made is removed.")


def test_demo_stops_cleanly_on_sigterm_while_serving(state_root):
    """Background jobs of a non-interactive shell ignore SIGINT: SIGTERM ends it too."""
    proc = subprocess.Popen(
        Cli(state_root).argv("demo", "--serve-seconds", "120"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("The dashboard stays up"):
                break
        assert "?token=" in lines[-1], "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    _check_walkthrough(out)
    assert "Demo finished: everything it made is removed." in out, out + err
    assert "Traceback" not in err, err


def test_demo_stopped_midway_cleans_up_and_says_so(state_root):
    """SIGTERM while `pyinspect run` creates the container: the run ends first (killed half
    way it left /run/netns/test with no container to remove it by), then the clean-up."""
    proc = subprocess.Popen(
        Cli(state_root).argv("demo", "--serve-seconds", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "pyinspect run -d --name test" in line:  # the step's command has started
                break
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out + err
    assert "== cleaning up ==" in out and "Traceback" not in err, out + err
    assert out.rstrip().endswith("Demo stopped before its end: everything it made is removed.")
    assert not os.path.exists("/run/netns/test"), out
