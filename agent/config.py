"""Where pyinspect keeps its state: one root directory, overridable per process."""

import os
from pathlib import Path

DEFAULT_ROOT = "/var/lib/pyinspect"
ROOT_ENV = "PYINSPECT_ROOT"


def state_root(explicit=None):
    """The state root: `explicit`, else $PYINSPECT_ROOT, else /var/lib/pyinspect."""
    return Path(explicit or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def database_path(root):
    """The one SQLite database under `root`."""
    return Path(root) / "pyinspect.db"
