"""Run mypy on the `pyinspect` package as it is installed, from the checkout.

setup.cfg maps several folders onto one import name (agent/ -> pyinspect, runtime/ ->
pyinspect.runtime, ...), which mypy cannot read; this builds that tree from symlinks in a
temporary directory, runs `mypy -p pyinspect` there (configuration: pyproject.toml
[tool.mypy]) and prints the findings with the checkout's paths.

    .venv/bin/python scripts/typecheck.py [extra mypy arguments]

Exit status: mypy's.
"""

import configparser
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def package_dirs() -> dict[str, Path]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    out = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, folder = (p.strip() for p in line.partition("="))
        out[name] = REPO / folder
    return out


def build_tree(base: Path) -> dict[Path, Path]:
    """Symlink every module into base/<package path>; {link: real file}."""
    links = {}
    for name, folder in package_dirs().items():
        dest = base.joinpath(*name.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for path in folder.glob("*.py"):
            link = dest / path.name
            if not link.exists():
                link.symlink_to(path)
                links[link] = path
    return links


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="pyinspect-mypy-") as tmp:
        links = build_tree(Path(tmp))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mypy",
                "--config-file",
                str(REPO / "pyproject.toml"),
                "-p",
                "pyinspect",
                *argv,
            ],
            cwd=tmp,
            capture_output=True,
            text=True,
            env={**os.environ, "MYPYPATH": tmp},
            check=False,
        )
        for line in (proc.stdout + proc.stderr).splitlines():
            path, sep, rest = line.partition(":")
            real = links.get(Path(tmp) / path)
            print(f"{real.relative_to(REPO)}{sep}{rest}" if real else line)
        return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
