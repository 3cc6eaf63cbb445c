"""docs/cli.md is generated from the real `--help`; every command exists and explains itself."""

import importlib.util
import os
import subprocess
import sys

import click
import pytest

from pyinspect.cli import COMMANDS

from conftest import PYINSPECT, REPO

sys.path.insert(0, str(REPO / "scripts"))
import gen_cli_docs  # noqa: E402

REGEN = ".venv/bin/python scripts/gen_cli_docs.py"


def test_every_command_module_in_commands_exists():
    missing = []
    for name, (module, attr, _help) in sorted(COMMANDS.items()):
        full = f"pyinspect.commands.{module}"
        if importlib.util.find_spec(full) is None:
            missing.append(f"{name}: module {full} does not exist")
            continue
        obj = getattr(importlib.import_module(full), attr, None)
        if not isinstance(obj, click.Command):
            missing.append(f"{name}: {full}.{attr} is not a click command")
    assert not missing, "COMMANDS names code that is not there:\n" + "\n".join(missing)


def test_docs_cli_md_is_current():
    current = gen_cli_docs.DOC.read_text() if gen_cli_docs.DOC.exists() else ""
    assert current == gen_cli_docs.render(), (
        f"docs/cli.md differs from the commands' --help: run `{REGEN}` and commit docs/cli.md"
    )


def test_every_command_and_option_has_help():
    lacking = []
    for path, command, _text in gen_cli_docs.walk():
        if not (command.help or command.short_help):
            lacking.append(f"{path}: no help text")
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help:
                lacking.append(f"{path} {param.opts[0]}: option without help")
    assert not lacking, "\n".join(lacking)


def test_walk_reaches_every_subcommand():
    paths = {path for path, _c, _t in gen_cli_docs.walk()}
    assert {f"pyinspect {name}" for name in COMMANDS} <= paths
    for group in ("pcap", "network"):  # groups are walked, not just listed
        assert any(p.startswith(f"pyinspect {group} ") for p in paths), group


@pytest.mark.parametrize("path", ["pyinspect", "pyinspect run", "pyinspect pcap export"])
def test_generated_text_is_what_help_prints(path):
    """The generator renders exactly what the console script prints at 80 columns."""
    text = {p: t for p, _c, t in gen_cli_docs.walk()}[path]
    real = subprocess.run(
        [PYINSPECT, *path.split()[1:], "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "80"},
    ).stdout
    assert real.rstrip() == text.rstrip()


def test_check_mode_reports_stale_docs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen_cli_docs, "DOC", tmp_path / "cli.md")
    (tmp_path / "cli.md").write_text("# stale\n")
    assert gen_cli_docs.main(["--check"]) == 1
    assert "gen_cli_docs.py" in capsys.readouterr().err
    assert gen_cli_docs.main([]) == 0
    assert gen_cli_docs.main(["--check"]) == 0


def test_the_code_the_docs_name_exists():
    """`from pyinspect.X import a, b` in docs/ imports; every repository path they name is
    there (modules move: the docs must follow)."""
    import re

    wrong = []
    for doc in sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]:
        text = doc.read_text()
        for mod, names in re.findall(r"^\s*from (pyinspect[\w.]*) import ([\w, ]+)$", text, re.M):
            try:
                m = importlib.import_module(mod)
            except ImportError as exc:
                wrong.append(f"{doc.name}: from {mod}: {exc}")
                continue
            wrong += [
                f"{doc.name}: {mod}.{n} does not exist"
                for n in (x.strip() for x in names.split(","))
                if not hasattr(m, n)
            ]
        files = (
            r"\b(?:agent|probes|runtime|web|bench|tests|scripts)/[\w/.-]+?\.(?:py|c|h|md|sh|js)\b"
        )
        for path in set(re.findall(files, text)):
            if not (REPO / path).exists():
                wrong.append(f"{doc.name}: {path} does not exist")
    assert not wrong, "\n".join(wrong)
