"""The CLI shell: every command has help, errors are one line with a non-zero exit."""

import subprocess

from pyinspect.cli import COMMANDS, cli

from conftest import PYINSPECT


def test_help_lists_every_command():
    out = subprocess.run([PYINSPECT, "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert f"  {name} " in out, name


def test_every_built_command_has_help():
    ctx = cli.make_context("pyinspect", ["--help"], resilient_parsing=True)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        if cmd is None:
            continue  # not built yet; listed with its one-line help
        assert cmd.help or cmd.short_help, f"{name} has no help"


def test_unknown_command_is_one_line_error():
    proc = subprocess.run(
        [PYINSPECT, "no-such-command"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "No such command" in proc.stderr


def test_version():
    out = subprocess.run([PYINSPECT, "--version"], capture_output=True, text=True, check=True)
    assert "pyinspect" in out.stdout
