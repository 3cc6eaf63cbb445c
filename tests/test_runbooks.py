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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the checkout's files (no egg-info or build/ left from
    an earlier build that could list the runbooks for setuptools)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
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
            str(tmp),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return next(tmp.glob("pyinspect-*.whl"))


@pytest.mark.slow
def test_a_built_wheel_carries_the_runbooks(wheel):
    inside = set(zipfile.ZipFile(wheel).namelist())
    for path in model.RUNBOOK_DIR.glob("*.md"):
        assert f"pyinspect/doctor/runbooks/{path.name}" in inside
    assert "pyinspect/doctor/runner.py" in inside


@pytest.mark.slow
def test_installed_not_editable_doctor_shows_its_runbooks(wheel, tmp_path, make_netns):
    """`pip install` of the wheel into a fresh venv (not editable; its dependencies come
    from the checkout's venv through a .pth, which does not carry the editable finder),
    then `pyinspect doctor` in a namespace with a DNAT rule and forwarding off names the
    runbook, a file of the installed package that is not in the checkout."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", str(venv)],
        check=True,
        timeout=120,
    )
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "pi-test-deps.pth").write_text(f"{deps}\n")
    py = venv / "bin" / "python"
    proc = subprocess.run(
        [py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    where = subprocess.run(
        [py, "-c", "import pyinspect; print(pyinspect.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout
    ns = make_netns("pi-rbk")
    ns.sh("iptables-legacy -w -t nat -A PREROUTING -p tcp --dport 8080 -j DNAT --to 10.9.9.9:80")
    ns.sh("sysctl -qw net.ipv4.ip_forward=0")
    root = tmp_path / "root"
    proc = subprocess.run(
        ["nsenter", f"--net={ns.path}", venv / "bin" / "pyinspect", "--root", root, "doctor"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[error] ip_forward:" in proc.stdout, proc.stdout
    books = [
        Path(line.split("runbook: ", 1)[1])
        for line in proc.stdout.splitlines()
        if line.strip().startswith("runbook: ")
    ]
    book = site / "pyinspect" / "doctor" / "runbooks" / "ip-forward-off.md"
    assert book in books, proc.stdout
    assert book.read_text().strip()
    assert all(b.is_relative_to(site) and b.is_file() for b in books), books
