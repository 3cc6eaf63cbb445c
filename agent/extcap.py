"""Wireshark's extcap interface for pyinspect: one capture interface per running container.

Wireshark (and tshark, through dumpcap) runs every executable in its extcap folder with
`--extcap-interfaces`, `--extcap-dlts`, `--extcap-config`, and to capture with
`--capture --extcap-interface X --fifo PATH`; what they print here is this module's job.
The capture itself is a trace (agent/trace) whose evidence goes to the fifo as one pcapng
stream. `install()` puts a small launcher script into an extcap folder.

Interface names are `pyinspect-<container name>` (the name a trace resolves).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UnavailableError, UsageError

PREFIX = "pyinspect-"
LAUNCHER = "pyinspect"  # the file's name in the extcap folder
ROLES = ("uplink", "bridge", "veth", "container")
DEFAULT_SNAPLEN = 262144
SKIPPED_SOURCES = ("pidns",)  # in the host's network namespace: nothing to trace


@dataclass
class ExtcapInterface:
    value: str  # what Wireshark passes back as --extcap-interface
    display: str
    container: str  # what the trace resolves


def interfaces(root=None) -> list[ExtcapInterface]:
    """One interface per running container of every runtime discovery finds."""
    from .host import discovery

    out, seen = [], set()
    for d in discovery.containers(root):
        if d.status != "running" or not d.pid or d.source in SKIPPED_SOURCES:
            continue
        if d.name in seen or d.name.startswith(("netns:", "pidns:")):
            continue  # unnamed namespaces: nothing to call them
        seen.add(d.name)
        out.append(
            ExtcapInterface(
                PREFIX + d.name, f"pyinspect: {d.name} ({d.source}, all capture points)", d.name
            )
        )
    return out


def container_of(interface: str) -> str:
    """The container an interface value names."""
    if not interface.startswith(PREFIX) or len(interface) == len(PREFIX):
        raise UsageError(
            f"extcap: {interface!r} is not a pyinspect interface",
            "pyinspect extcap --extcap-interfaces lists them",
        )
    return interface[len(PREFIX) :]


def _field(text: str) -> str:
    """A value inside {...}: Wireshark's parser ends it at the first '}'."""
    return str(text).replace("{", "(").replace("}", ")")


def interfaces_text(ifaces: list[ExtcapInterface], version: str) -> str:
    docs = Path(__file__).resolve().parent.parent / "docs" / "wireshark.md"
    helps = f"{{help=file://{docs}}}" if docs.exists() else ""
    lines = [f"extcap {{version={_field(version)}}}{helps}{{display=pyinspect container capture}}"]
    lines += [
        f"interface {{value={_field(i.value)}}}{{display={_field(i.display)}}}" for i in ifaces
    ]
    return "\n".join(lines) + "\n"


def dlts_text(interface: str) -> str:
    container_of(interface)
    return "dlt {number=1}{name=EN10MB}{display=Ethernet (pcapng: one interface a point)}\n"


def config_text(interface: str) -> str:
    """The options Wireshark shows for an interface (its gear dialog)."""
    ctr = container_of(interface)
    roles = "".join(f"value {{arg=3}}{{value={r}}}{{display={r}}}{{default=true}}\n" for r in ROLES)
    return (
        f"arg {{number=0}}{{call=--container}}{{display=Container}}{{type=string}}"
        f"{{default={_field(ctr)}}}{{tooltip=Container name or id (any runtime)}}\n"
        "arg {number=1}{call=--filter}{display=Filter}{type=string}"
        "{tooltip=pcap-filter expression (tcpdump syntax): only matching packets are "
        "captured}\n"
        f"arg {{number=2}}{{call=--snaplen}}{{display=Snap length}}{{type=integer}}"
        f"{{range=0,{DEFAULT_SNAPLEN}}}{{default={DEFAULT_SNAPLEN}}}"
        "{tooltip=Bytes kept per packet (0: whole packets)}\n"
        "arg {number=3}{call=--points}{display=Capture points}{type=multicheck}"
        "{tooltip=Which capture points to capture at (default: all)}\n"
        + roles
        + "arg {number=4}{call=--comments-delay}{display=NAT comments delay (s)}"
        "{type=double}{range=0,10}{default=1.0}{tooltip=Packets are held back this long "
        "so the analysis can comment them with their flow and NAT; 0: no comments}\n"
    )


def parse_points(text: str | None) -> list[str] | None:
    """--points: comma-separated roles (Wireshark's multicheck sends them so); None = all."""
    if not text:
        return None
    roles = [r.strip() for r in text.split(",") if r.strip()]
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise UsageError(
            f"extcap: bad --points {', '.join(bad)}", f"give some of {', '.join(ROLES)}"
        )
    return None if set(roles) == set(ROLES) else roles


def join_filters(*exprs: str | None) -> str | None:
    given = [e.strip() for e in exprs if e and e.strip()]
    if not given:
        return None
    return given[0] if len(given) == 1 else " and ".join(f"({e})" for e in given)


def check_filter(expr: str) -> None:
    """UsageError when libpcap does not compile `expr` for Ethernet frames."""
    from pyinspect.probes.pcapfilter import BpfFilter

    BpfFilter(expr)


CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39


def check_privileges(status_path: str = "/proc/self/status") -> None:
    """UnavailableError unless this process may attach capture programs (CAP_NET_ADMIN and
    CAP_BPF or CAP_SYS_ADMIN): a capture started by a user's Wireshark says why."""
    eff = 0
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                eff = int(line.split()[1], 16)
    has = lambda cap: bool(eff >> cap & 1)  # noqa: E731
    if not (has(CAP_NET_ADMIN) and (has(CAP_BPF) or has(CAP_SYS_ADMIN))):
        raise UnavailableError(
            "extcap: capturing needs root (CAP_NET_ADMIN and CAP_BPF)",
            "run Wireshark's launcher through sudo: pyinspect extcap --install --install-sudo, "
            "see docs/wireshark.md",
        )


# -- the extcap folder --------------------------------------------------------------------


def extcap_dirs() -> list[Path]:
    """Wireshark's extcap folders, as `tshark -G folders` names them (personal first,
    where the version has one); [] without tshark."""
    try:
        out = subprocess.run(
            ["tshark", "-G", "folders"], check=False, capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if "extcap" in key.lower() and value.strip():
            found[key.strip().lower()] = Path(value.strip())
    # root (make install) installs for every user: the global folder first
    personal_first = os.geteuid() != 0
    return sorted(
        found.values(),
        key=lambda p: 0 if (".local" in str(p) or "/home/" in str(p)) == personal_first else 1,
    )


def launcher_text(argv0: str | None = None, root: str | None = None, sudo: bool = False) -> str:
    """The script Wireshark runs: this pyinspect's `extcap` command (and state root);
    with `sudo`, through `sudo -n` (Wireshark run by a user: a sudoers rule lets it)."""
    exe = argv0 or _pyinspect_exe()
    args = (
        (["sudo", "-n"] if sudo else []) + [exe] + (["--root", root] if root else []) + ["extcap"]
    )
    return (
        "#!/bin/sh\n# Wireshark extcap launcher for pyinspect (pyinspect extcap --install)\n"
        f'exec {" ".join(shlex.quote(a) for a in args)} "$@"\n'
    )


def _pyinspect_exe() -> str:
    here = Path(sys.executable).parent / "pyinspect"
    return str(here) if here.exists() else "pyinspect"


def install(directory: Path | None = None, root: str | None = None, sudo: bool = False) -> Path:
    """Write the launcher into `directory` (default: Wireshark's extcap folder); returns its
    path. Rewrites it atomically, so a rerun is safe."""
    if directory is None:
        dirs = extcap_dirs()
        if not dirs:
            raise UnavailableError(
                "extcap: no Wireshark extcap folder found",
                "install tshark or Wireshark, or give --install-dir",
            )
        directory = dirs[0]
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pyinspect-", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(launcher_text(root=root, sudo=sudo))
        os.chmod(tmp, 0o755)
        os.replace(tmp, directory / LAUNCHER)
    except OSError as exc:
        raise UnavailableError(
            f"extcap: cannot install into {directory}: {exc.strerror}",
            "run as root, or give --install-dir",
        ) from None
    return directory / LAUNCHER
