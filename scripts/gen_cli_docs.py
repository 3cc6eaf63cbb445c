"""Generate docs/cli.md from the real click `--help` of every pyinspect command.

Walks `pyinspect.cli.COMMANDS` (the lazy group imports each module) and every
subcommand of the groups, recursively, and renders each help page at a fixed
width of 80 columns so the output does not depend on the terminal.

    .venv/bin/python scripts/gen_cli_docs.py           # rewrite docs/cli.md
    .venv/bin/python scripts/gen_cli_docs.py --check   # exit 1 if docs/cli.md is stale
"""

import sys
from pathlib import Path

import click

from pyinspect.cli import COMMANDS, cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
WIDTH = 80

HEADER = """\
# Command line reference

Generated from each command's `--help` by `scripts/gen_cli_docs.py`; do not edit by hand.
`tests/test_docs.py` fails when this file is out of date: run
`.venv/bin/python scripts/gen_cli_docs.py` after changing a command.

Every command takes the global options of `pyinspect` before its name
(`pyinspect --root /tmp/x ps`). Errors are one line on stderr, `Error: <what failed>: <why>`,
with a non-zero exit code: 1 general, 2 bad input, 3 not found, 4 conflict,
5 unavailable here, 125-127 a container that could not start (as Docker),
70 internal error (`--debug` or `PYINSPECT_DEBUG=1` shows the traceback).
Bad input changes nothing stored: `tests/test_cli_errors.py` runs every command with
bad arguments, damaged stores and damaged records, and checks both promises.
"""


def _context(command, name, parent):
    # what `COLUMNS=80 pyinspect ... --help` prints: click wraps at the terminal width - 2
    return click.Context(
        command,
        info_name=name,
        parent=parent,
        terminal_width=WIDTH - 2,
        max_content_width=WIDTH,
        help_option_names=["-h", "--help"],
    )


def walk(command=cli, name="pyinspect", parent=None):
    """Yield (path, command, help text) for `command` and every command below it."""
    ctx = _context(command, name, parent)
    yield ctx.command_path, command, command.get_help(ctx)
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            child = command.get_command(ctx, sub)
            if child is None:
                raise SystemExit(
                    f"gen_cli_docs: command {sub!r} cannot be loaded "
                    f"(module pyinspect.commands.{COMMANDS[sub][0]} missing?)"
                )
            yield from walk(child, sub, ctx)


def render():
    """The full text of docs/cli.md."""
    parts = [HEADER]
    for path, _command, text in walk():
        parts.append(f"\n## {path}\n\n```\n{text.rstrip()}\n```\n")
    return "".join(parts)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            print(
                f"{DOC} is out of date: run .venv/bin/python scripts/gen_cli_docs.py",
                file=sys.stderr,
            )
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
