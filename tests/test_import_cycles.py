"""No import cycles among pyinspect's modules: every import (at module level or inside a
function: both run) is read from the source, resolved to a module of the package, and
the graph must have no strongly connected component bigger than one module."""

import ast
import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def package_modules():
    """{module name: file} of every module of the installed package (setup.cfg's
    package_dir, and the subpackages under each folder)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    dirs = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, folder = (p.strip() for p in line.partition("="))
        dirs[name] = REPO / folder
    out = {}
    for pkg, folder in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts]
            if any(
                not (folder.joinpath(*parts[:i]) / "__init__.py").exists()
                for i in range(1, len(parts))
            ):
                continue  # not in a package (a script or data folder)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.setdefault(".".join([pkg, *parts]), path)
    return out


def _resolve(importer, is_package, node, modules):
    """The package modules an import statement names."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
        return [n for n in names if n in modules] + [
            n.rsplit(".", 1)[0]
            for n in names
            if n not in modules and n.rsplit(".", 1)[0] in modules
        ]
    if node.level:
        base = importer if is_package else importer.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            base = base.rsplit(".", 1)[0]
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        if sub in modules:
            out.append(sub)  # from pkg import module
        elif target in modules:
            out.append(target)  # from module import name
    return out


def _under_type_checking(tree):
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    return skip


def import_graph():
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _under_type_checking(tree)
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                deps.update(_resolve(name, path.name == "__init__.py", node, modules))
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package():
    graph = import_graph()
    assert {
        "pyinspect.cli",
        "pyinspect.store",
        "pyinspect.doctor.runner",
        "pyinspect.probes.iptsave",
        "pyinspect.runtime.sysctl",
    } <= set(graph)
    assert "pyinspect.probes.iptsave" in graph["pyinspect.doctor.hostview"]
    assert "pyinspect.errors" in graph["pyinspect.runtime.sysctl"]


def test_the_walk_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]


def test_no_import_cycles():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_module_imports():
    """Each module imports on its own (in a fresh interpreter): an annotation naming
    something imported only under TYPE_CHECKING fails here, not in a user's command."""
    import subprocess
    import sys

    names = sorted(m for m in package_modules() if not m.endswith("__main__"))
    code = (
        "import importlib, sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException as exc:\n"
        "        bad.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(bad))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *names],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert proc.stdout.strip() == "", proc.stdout
    assert len(names) > 100
