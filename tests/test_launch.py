"""The console script's fast path for `run`: it parses exactly as click does (or leaves
the arguments to click), starts containers without importing click, and the
site-less console script `make install` writes runs every command."""

import os
import subprocess
import sys

import pytest

from pyinspect.commands.containers import run as run_command
from pyinspect.commands.run_options import parse_run_argv

SAME_AS_CLICK = [
    ["busybox"],
    ["-d", "--name", "web", "busybox"],
    ["-dit", "busybox", "sh"],
    ["-eA=1", "-e", "B=2", "--env=C=3", "busybox", "env"],
    ["--net=none", "--rm", "busybox", "true"],
    ["--network", "host", "-p", "80:80", "-p", "127.0.0.1:81:81/udp", "-P", "nginx"],
    ["--pids-limit", "5", "-m", "30m", "--cpus", "0.5", "busybox"],
    ["--restart", "on-failure:3", "-v", "/a:/b:ro", "-w", "/tmp", "busybox", "pwd"],
    ["--entrypoint", "", "--hostname", "h1", "busybox", "-x", "--name", "y"],
    ["-it", "-e", "-not-an-option", "busybox"],
    ["--", "busybox", "--rm"],
    ["-de", "K=V", "busybox"],
]


@pytest.mark.parametrize("args", SAME_AS_CLICK)
def test_fast_parse_is_clicks(args):
    parsed = parse_run_argv(["--root", "/tmp/x", "run", *args])
    assert parsed is not None, args
    root, debug, values = parsed
    assert root == "/tmp/x" and not debug
    ctx = run_command.make_context("run", list(args))
    assert values == ctx.params


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["-h"],
        ["--bogus", "busybox"],
        ["--pids-limit", "x", "busybox"],
        ["--rm=1", "busybox"],
        [],
        ["-Z", "busybox"],
        ["--name"],
        ["-d"],
    ],
)
def test_what_is_not_plainly_well_formed_goes_to_click(args):
    assert parse_run_argv(["run", *args]) is None
    assert parse_run_argv(["--weird", "run", "busybox"]) is None
    assert parse_run_argv(["ps"]) is None


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "pyinspect"
    subprocess.run(
        [sys.executable, "-m", "pyinspect.launch", "--write-script", str(path)], check=True
    )
    return path


def test_written_script_starts_without_site(script):
    first = script.read_text().splitlines()[0]
    assert first == f"#!{sys.executable} -S"
    assert os.stat(script).st_mode & 0o777 == 0o755
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("pyinspect, version")


@pytest.mark.root
def test_run_never_imports_click_and_other_commands_work(script, state_root):
    argv = [str(script), "--root", str(state_root)]
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            "-X",
            "importtime",
            *argv,
            "run",
            "--rm",
            "--net",
            "none",
            "busybox",
            "echo",
            "hi",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hi\n"
    imported = {
        line.split("|")[-1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "pyinspect.runtime.containers" in imported
    assert not {m for m in imported if m == "click" or m.startswith("click.")}
    assert "site" not in imported  # the .pth files were not run either
    # errors on the fast path read as the CLI's
    bad = subprocess.run(
        [*argv, "run", "--net", "none", "no-such-image"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        bad.returncode == 3
        and bad.stderr.startswith("Error: ")
        and len(bad.stderr.splitlines()) == 1
    ), bad.stderr
    # everything else loads site and click: usage errors, other commands
    usage = subprocess.run(
        [*argv, "run", "--bogus", "busybox"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2 and "No such option '--bogus'" in usage.stderr
    ps = subprocess.run(
        [*argv, "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=False
    )
    assert ps.returncode == 0 and ps.stdout == "", ps.stderr
