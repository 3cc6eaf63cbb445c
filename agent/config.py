"""Where pyinspect keeps its state: one root directory, overridable per process."""

import os
from pathlib import Path

DEFAULT_ROOT = "/var/lib/pyinspect"
ROOT_ENV = "PYINSPECT_ROOT"


def state_root(explicit: str | os.PathLike | None = None) -> Path:
    """The state root: `explicit`, else $PYINSPECT_ROOT, else /var/lib/pyinspect."""
    return Path(explicit or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def database_path(root: str | os.PathLike) -> Path:
    """The one SQLite database under `root`."""
    return Path(root) / "pyinspect.db"
