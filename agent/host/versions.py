"""`pyinspect version`: pyinspect's version and those of what it runs on, in the shape of
`docker version` (a Client and a Server with its Components), for bug reports."""

import importlib.metadata
import platform
import re
import shutil
import sqlite3
import subprocess
import sys

# the Python libraries pyinspect's work goes through
LIBRARIES = ("bcc", "scapy", "pyroute2", "python-iptables", "sqlite-utils", "flask", "click")
# the host tools it reads the firewall with: (component name, argv)
TOOLS = (
    ("iptables-legacy", ["iptables-legacy", "--version"]),
    ("iptables-nft", ["iptables-nft", "--version"]),
    ("nftables", ["nft", "--version"]),
)
_VERSION = re.compile(r"v?(\d+(?:\.\d+)+\S*)")


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _library(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        if name == "bcc":  # Debian's python3-bpfcc has no package metadata
            try:
                import bcc

                return getattr(bcc, "__version__", None)
            except ImportError:
                return None
        return None


def _tool(argv: list[str]) -> str | None:
    if not shutil.which(argv[0]):
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(out)
    return m.group(1) if m else None


def versions() -> dict:
    """Docker's `version` JSON shape: Client (pyinspect, Python) and Server (the
    engine: pyinspect on this kernel; a component for each library and tool, Version
    "" when it is missing)."""
    mine = importlib.metadata.version("pyinspect")
    python = platform.python_version()
    kernel = platform.release()
    components = [
        {
            "Name": "Engine",
            "Version": mine,
            "Details": {
                "KernelVersion": kernel,
                "Os": "linux",
                "Arch": _arch(),
                "PythonVersion": python,
                "Executable": sys.executable,
            },
        }
    ]
    components += [{"Name": n, "Version": _library(n) or ""} for n in LIBRARIES]
    components.append({"Name": "sqlite", "Version": sqlite3.sqlite_version})
    components += [{"Name": n, "Version": _tool(argv) or ""} for n, argv in TOOLS]
    return {
        "Client": {
            "Platform": {"Name": "pyinspect"},
            "Version": mine,
            "PythonVersion": python,
            "Os": "linux",
            "Arch": _arch(),
        },
        "Server": {
            "Platform": {"Name": "pyinspect"},
            "Components": components,
            "Version": mine,
            "KernelVersion": kernel,
            "Os": "linux",
            "Arch": _arch(),
        },
    }


def render(v: dict) -> list[str]:
    """The text `docker version` prints, for pyinspect's components."""
    c, s = v["Client"], v["Server"]
    lines = [
        "Client:",
        f" Version:           {c['Version']}",
        f" Python version:    {c['PythonVersion']}",
        f" OS/Arch:           {c['Os']}/{c['Arch']}",
        "",
        "Server:",
    ]
    for comp in s["Components"]:
        lines.append(f" {comp['Name']}:")
        lines.append(f"  {'Version:':<18}{comp['Version'] or '(not installed)'}")
        if comp["Name"] == "Engine":
            d = comp["Details"]
            lines.append(f"  {'Kernel version:':<18}{d['KernelVersion']}")
            lines.append(f"  {'OS/Arch:':<18}{d['Os']}/{d['Arch']}")
            lines.append(f"  {'Python:':<18}{d['PythonVersion']} ({d['Executable']})")
    return lines
