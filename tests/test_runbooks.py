"""Runbooks are the package's data: doctor names them, the dashboard shows them, and a
built wheel carries them (an installed pyinspect has no docs/ to read them from)."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pyinspect.doctor import checks, model
from pyinspect.errors import NotFoundError

REPO = Path(__file__).resolve().parent.parent


def runbooks_named_by_checks():
    tree = ast.parse(Path(checks.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_finding":
            book = (
                node.args[6]
                if len(node.args) > 6
                else next((k.value for k in node.keywords if k.arg == "book"), None)
            )
            if isinstance(book, ast.Constant):
                names.add(book.value)
    return names


def test_every_runbook_a_check_names_is_package_data():
    names = runbooks_named_by_checks()
    assert len(names) >= 10
    assert model.RUNBOOK_DIR.is_relative_to(Path(model.__file__).parent)
    for name in names:
        ref = model.runbook(name)
        assert model.runbook_file(ref) == model.RUNBOOK_DIR / f"{name}.md"
        assert model.read_runbook(ref).strip(), name


def test_bad_runbook_names_are_not_found():
    for bad in ("../../setup.cfg", "nosuch", "UPPER", ""):
        with pytest.raises(NotFoundError):
            model.read_runbook(bad)


@pytest.mark.slow
def test_a_built_wheel_carries_the_runbooks(tmp_path):
    """Built from a copy of the checkout's files (no egg-info or build/ left from an
    earlier build that could list the runbooks for setuptools)."""
    src = tmp_path / "src"
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, files):
        path = REPO / rel
        if not path.is_file() or path.is_symlink() or rel.startswith("tests/"):
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(path.read_bytes())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("pyinspect-*.whl"))
    inside = set(zipfile.ZipFile(wheel).namelist())
    for path in model.RUNBOOK_DIR.glob("*.md"):
        assert f"pyinspect/doctor/runbooks/{path.name}" in inside
    assert "pyinspect/doctor/runner.py" in inside
