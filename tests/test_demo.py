"""The README's first command runs `pyinspect demo`: the whole walkthrough, end to end, in
namespaces of its own (the machine's routes and firewall untouched), and nothing left."""

import os
import subprocess

import pytest

from conftest import Cli
from helpers.signals import signal_at

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
    got = signal_at(
        Cli(state_root).argv("demo", "--serve-seconds", "120"),
        lambda line: line.startswith("The dashboard stays up"),
    )
    last = got.out.split("The dashboard stays up", 1)[1].splitlines()[0]
    assert "?token=" in last, got.out
    _check_walkthrough(got.out)
    assert "Demo finished: everything it made is removed." in got.out, got.out + got.err
    assert "Traceback" not in got.err, got.err


def test_demo_stopped_midway_cleans_up_and_says_so(state_root):
    """SIGTERM while `pyinspect run` creates the container: the run ends first (killed half
    way it left /run/netns/test with no container to remove it by), then the clean-up."""
    got = signal_at(
        Cli(state_root).argv("demo", "--serve-seconds", "0"),
        lambda line: "pyinspect run -d --name test" in line,  # the step's command started
        timeout=120,
    )
    out = got.out
    assert got.returncode == 130, out + got.err
    assert "== cleaning up ==" in out and "Traceback" not in got.err, out + got.err
    assert out.rstrip().endswith("Demo stopped before its end: everything it made is removed.")
    assert not os.path.exists("/run/netns/test"), out
