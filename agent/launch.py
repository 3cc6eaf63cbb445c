"""The `pyinspect` console script: `run` without click when it can, else the click CLI.

`pyinspect run ...` is the latency-critical command (docs/runtime.md, "Start
latency"). When its arguments are plainly well-formed (commands/run_options.py
parses them from the same option table the click command is built from), the
container starts without importing click and the command table; everything
else, including every usage error and --help, goes through `pyinspect.cli.main`.
Errors are reported as the CLI reports them: `Error: <what>` and the exit code.

`make install` replaces pip's console script with one written by
`python -m pyinspect.launch --write-script PATH`: it starts Python without site
(`-S`: the .pth files of the venv and the system, such as an editable install's
import finder, cost a start 20-30 ms), puts the site directories on sys.path as
they are and finds pyinspect's packages where they were at install time. Every
command but a plain `run` then loads site properly before anything else.
"""

import os
import sys


def main():
    fast = _fast_run(sys.argv[1:])
    if fast is None:
        _full_site()
        from .cli import main as cli_main

        cli_main()
        return
    root, debug, values = fast
    from .commands import run_options
    from .errors import PyinspectError

    if debug:
        os.environ["PYINSPECT_DEBUG"] = "1"
    try:
        code = run_options.execute(root, values)
    except PyinspectError as exc:
        if debug:
            raise
        sys.stderr.write(f"Error: {exc}\n")
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # last resort: never a traceback without --debug
        if debug:
            raise
        sys.stderr.write(
            f"Error: internal error: {type(exc).__name__}: {exc} "
            f"(run with --debug for the traceback)\n"
        )
        code = 70
    run_options.exit_now(code)


def _full_site():
    """Under the site-less console script, do now what site does at a normal start."""
    if sys.flags.no_site and getattr(sys, "_pyinspect_no_site", False):
        import site

        site.main()


def _fast_run(argv):
    """(root, debug, values) when `argv` is a plain `run` the fast path takes, else None."""
    if "run" not in argv[:4]:
        return None
    from .commands.run_options import parse_run_argv

    parsed = parse_run_argv(argv)
    if parsed is None:
        return None
    explicit, debug, values = parsed
    from .config import state_root

    root = str(state_root(explicit))
    if os.path.isfile(root):
        return None  # click says what is wrong with --root
    try:
        if os.listdir(os.path.join(root, "trace")):
            return None  # maybe a killed trace to clean up: the CLI's group does that
    except OSError:
        pass
    debug = debug or os.environ.get("PYINSPECT_DEBUG", "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
        "off",
    )
    return root, debug, values


SCRIPT = """#!{python} -S
# pyinspect's console script, written by `make install` (python -m pyinspect.launch
# --write-script): it starts without site, see pyinspect/launch.py.
import sys
from importlib.machinery import ModuleSpec, SourceFileLoader

PACKAGES = {packages!r}
SITE_DIRS = {site_dirs!r}


class PyinspectPackages:
    \"\"\"Finds pyinspect's packages where make install found them.\"\"\"

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        where = PACKAGES.get(name)
        if where is None:
            return None
        init = where + "/__init__.py"
        spec = ModuleSpec(name, SourceFileLoader(name, init), origin=init, is_package=True)
        spec.submodule_search_locations = [where]
        spec.has_location = True
        return spec


if __name__ == "__main__":
    sys._pyinspect_no_site = True
    sys.path.extend(d for d in SITE_DIRS if d not in sys.path)
    sys.meta_path.insert(0, PyinspectPackages)
    from pyinspect.launch import main
    sys.exit(main())
"""


def script_text() -> str:
    """The console script for this interpreter and this installation of pyinspect."""
    import importlib.util
    import site

    packages = {}
    for name in (
        "pyinspect",
        "pyinspect.commands",
        "pyinspect.trace",
        "pyinspect.runtime",
        "pyinspect.probes",
        "pyinspect.web",
    ):
        spec = importlib.util.find_spec(name)  # located, not run (flask, bcc stay out)
        if spec is not None and spec.submodule_search_locations:
            packages[name] = os.path.abspath(next(iter(spec.submodule_search_locations)))
    site_dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    return SCRIPT.format(python=sys.executable, packages=packages, site_dirs=site_dirs)


def write_script(path):
    """Replace the console script at `path` (atomically, mode 0755)."""
    from .runtime.fsutil import atomic_write

    with atomic_write(path, "w", perms=0o755) as f:
        f.write(script_text())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-script"] and len(sys.argv) == 3:
        write_script(sys.argv[2])
    else:
        main()
