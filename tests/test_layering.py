"""The libraries stay libraries: runtime/ and probes/ never import click or flask."""

import ast
import re
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

    code = (
        "import importlib.util as u; "
        "print([n for n in ('runtime','probes','web','agent') if u.find_spec(n)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"
    out = subprocess.run([sys.executable, "-c", "import pyinspect.runtime"], cwd="/", check=False)
    assert out.returncode == 0


# -- SQL only inside the store ------------------------------------------------------------
PACKAGE_DIRS = ("agent", "probes", "runtime", "web")
STORE = {f"agent/store/{m}.py" for m in ("__init__", "database", "migrations", "rows")}
SQL_WORDS = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(TABLE|INDEX)|DROP\s+(TABLE|INDEX)|ALTER\s+TABLE|PRAGMA)\b",
    re.S,
)
DB_CALLS = {
    "execute",
    "executemany",
    "executescript",
    "rows_where",
    "query",
    "insert_all",
    "upsert_all",
    "delete_where",
}


def package_files():
    for folder in PACKAGE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path.relative_to(REPO).as_posix(), path


def _docstrings(tree):
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def sql_uses(path):
    """(line, what) of each SQL text, sqlite_utils import or database call in a module."""
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docs
            and SQL_WORDS.search(node.value)
        ):
            yield node.lineno, f"SQL text {node.value.strip()[:40]!r}"
        elif isinstance(node, ast.Attribute) and node.attr == "db":
            yield node.lineno, "reaches into Store.db"
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in DB_CALLS
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("db", "conn")
        ):
            yield node.lineno, f"database call .{node.value.attr}.{node.attr}"
    for name in imported_modules(path):
        if name == "sqlite_utils":  # (sqlite3 may be imported for its exception types)
            yield 0, f"imports {name}"


def test_sql_only_inside_the_store():
    bad = [
        f"{rel}:{line}: {what}"
        for rel, path in package_files()
        if rel not in STORE
        for line, what in sql_uses(path)
    ]
    assert not bad, "SQL outside agent/store/:\n" + "\n".join(bad)


def test_the_sql_check_sees_sql():
    """The check above finds what it is meant to find (in the store, where SQL is)."""
    found = {what.split()[0] for _line, what in sql_uses(REPO / "agent/store/database.py")}
    assert {"SQL", "reaches", "imports"} <= found


# -- bench/ stands on its own -------------------------------------------------------------
def test_bench_does_not_import_tests():
    test_modules = {p.stem for p in (REPO / "tests").rglob("*.py")} | {"tests", "helpers"}
    bad = []
    for path in sorted((REPO / "bench").glob("*.py")):
        text = path.read_text()
        names = set(imported_modules(path))
        if names & test_modules:
            bad.append(f"{path.name} imports {sorted(names & test_modules)}")
        if re.search(r"sys\.path\.(insert|append)\(.*[\"']tests[\"'/]", text):
            bad.append(f"{path.name} puts tests/ on sys.path")
    assert not bad, "\n".join(bad)


# -- agent/'s subpackages import downwards only -------------------------------------------
# what each folder may not import: the runtime and the probes stand below the agent (they
# share only errors, config and proc with it), and inside the agent the dashboard stands
# on the host readers, which stand on Docker's text forms
AGENT = {"host", "dashboard", "dockerfmt", "trace", "doctor", "pcap", "store", "commands", "web"}
FORBIDDEN = {
    ("runtime", "pyinspect.runtime"): AGENT,
    ("probes", "pyinspect.probes"): AGENT,
    ("agent/dockerfmt", "pyinspect.dockerfmt"): AGENT - {"dockerfmt"},
    ("agent/host", "pyinspect.host"): {"dashboard", "trace", "doctor", "pcap", "commands", "web"},
    ("agent/dashboard", "pyinspect.dashboard"): {"commands", "web"},
}


def pyinspect_imports(path, package):
    """The `pyinspect.*` modules a file imports, relative imports resolved against
    `package` (its dotted package)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("pyinspect."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.startswith("pyinspect"):
                yield mod
                yield from (f"{mod}.{a.name}" for a in node.names)


def layering_violations(folder, package, forbidden):
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        sub = path.parent.relative_to(REPO / folder).parts
        for mod in pyinspect_imports(path, ".".join((package, *sub))):
            top = mod.split(".")[1] if mod.count(".") else ""
            if top in forbidden:
                bad.append(f"{path.relative_to(REPO)} imports {mod}")
    return bad


def test_packages_import_downwards():
    bad = [
        b for (folder, pkg), no in FORBIDDEN.items() for b in layering_violations(folder, pkg, no)
    ]
    assert not bad, "\n".join(bad)


def test_the_layering_check_sees_imports():
    """The check resolves relative imports (also in a sub-folder): the dashboard does
    import the host readers, and runtime/build reaches runtime's own modules."""
    mods = set(pyinspect_imports(REPO / "agent/dashboard/overview.py", "pyinspect.dashboard"))
    assert "pyinspect.host.discovery" in mods and "pyinspect.store" in mods
    assert layering_violations("agent/dashboard", "pyinspect.dashboard", {"host"})
    assert layering_violations("runtime", "pyinspect.runtime", {"runtime"})
