"""The libraries stay libraries: runtime/ and probes/ never import click or flask."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


def test_libraries_do_not_import_ui_frameworks():
    for folder in ("runtime", "probes"):
        for path in (REPO / folder).glob("*.py"):
            bad = {"click", "flask"} & set(imported_modules(path))
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_no_generic_top_level_modules_installed():
    """Only `pyinspect` is installed: checked from / so the checkout is not on sys.path."""
    import subprocess
    import sys
    code = ("import importlib.util as u; "
            "print([n for n in ('runtime','probes','web','agent') if u.find_spec(n)])")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
    out = subprocess.run([sys.executable, "-c", "import pyinspect.runtime"], cwd="/")
    assert out.returncode == 0
