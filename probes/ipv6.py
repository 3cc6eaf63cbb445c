"""IPv6 facts of this thread's network namespace that doctor needs: the default routes
and how each was learned (a router advertisement: `proto ra`), and the interfaces'
global IPv6 addresses. Read with iproute2's JSON output (`ip -6 -j`), which names the
route protocol and the remaining lifetime of RA-learned routes."""

import json
import shutil
import subprocess
from dataclasses import dataclass


@dataclass
class Route6:
    """One IPv6 default route."""

    dev: str
    gateway: str | None
    protocol: str  # 'ra' (learned from a router advertisement), 'static', 'kernel', ...
    expires: int | None  # seconds left (RA-learned routes), None: permanent


def _ip_json(*args: str) -> list[dict]:
    ip = shutil.which("ip")
    if not ip:
        return []
    try:
        proc = subprocess.run(
            [ip, "-6", "-j", *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        return []
    return out if isinstance(out, list) else []


def default_routes() -> list[Route6]:
    """The IPv6 default routes of the main table."""
    out = []
    for r in _ip_json("route", "show", "default"):
        if not r.get("dev"):
            continue
        exp = r.get("expires")
        if isinstance(exp, str):
            exp = int("".join(ch for ch in exp if ch.isdigit()) or 0)
        out.append(Route6(r["dev"], r.get("gateway"), str(r.get("protocol") or ""), exp))
    return out


def global_addrs() -> dict[str, list[str]]:
    """{ifname: ['fd00::1/64', ...]}: the IPv6 addresses of global scope (ULA included)."""
    out: dict[str, list[str]] = {}
    for link in _ip_json("addr", "show", "scope", "global"):
        for a in link.get("addr_info") or []:
            if a.get("family") == "inet6" and a.get("local"):
                out.setdefault(link["ifname"], []).append(f"{a['local']}/{a.get('prefixlen')}")
    return out
