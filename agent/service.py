"""The systemd unit that brings containers back at boot (`pyinspect install-service`).

Docker's daemon starts the containers whose restart policy says so when it starts;
pyinspect has no daemon, so a oneshot unit runs `pyinspect autostart --boot` once
the machine is up. The containers' monitors outlive the unit's command
(`KillMode=process`, `RemainAfterExit=yes`), so stopping the unit leaves them be.
"""

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

from .errors import UnavailableError, UsageError
from .runtime.fsutil import atomic_write

UNIT_NAME = "pyinspect-autostart.service"


@dataclass
class Installed:
    """What install() did: the unit file written, and a note when it was not enabled."""

    path: str
    note: str = ""


def pyinspect_command() -> str:
    """The absolute path of the `pyinspect` console script running now (or on PATH)."""
    here = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.basename(here) == "pyinspect" and os.access(here, os.X_OK):
        return here
    beside = os.path.join(os.path.dirname(sys.executable), "pyinspect")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("pyinspect")
    if not found:
        raise UnavailableError(
            "cannot find the pyinspect command to put in the unit",
            "install pyinspect (make install)",
        )
    return os.path.abspath(found)


def unit_text(root: str, command: str) -> str:
    """The unit file's text for state root `root`."""
    exec_start = " ".join(
        shlex.quote(a) for a in (command, "--root", os.path.abspath(root), "autostart", "--boot")
    )
    return (
        "[Unit]\n"
        "Description=pyinspect: start containers whose restart policy says so\n"
        "After=local-fs.target network.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={exec_start}\n"
        "RemainAfterExit=yes\n"
        "KillMode=process\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def install(root: str, unit_dir: str = "/etc/systemd/system", enable: bool = True) -> Installed:
    """Write the unit into `unit_dir`; with `enable`, `systemctl enable` it (when systemd
    runs this machine; otherwise the note says the unit was written only)."""
    if not os.path.isdir(unit_dir):
        raise UsageError(f"invalid unit directory {unit_dir!r}: not a directory")
    path = os.path.join(unit_dir, UNIT_NAME)
    with atomic_write(path, "w", perms=0o644) as f:
        f.write(unit_text(root, pyinspect_command()))
    if not enable:
        return Installed(path)
    if not os.path.isdir("/run/systemd/system") or not shutil.which("systemctl"):
        return Installed(
            path,
            "systemd does not run this machine: the unit was written but "
            f"not enabled (run `pyinspect --root {root} autostart --boot` "
            "from your init system at boot)",
        )
    for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", UNIT_NAME]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise UnavailableError(
                f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()[:200]}"
            )
    return Installed(path)
