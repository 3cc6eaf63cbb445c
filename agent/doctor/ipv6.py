"""The doctor's IPv6 checks (a dual-stack bridge, ports published with ip6tables): IPv6
forwarding, and router advertisements that forwarding makes the kernel ignore.

Listed in `CHECKS`; runner.py runs them after checks.CHECKS.
"""

from collections.abc import Iterator

from ..probes import iptsave as ipt
from ..probes import ipv6 as probe6
from .checks import _finding, _sysctl_line
from .hostview import HostView
from .model import Finding

FORWARDING = "net.ipv6.conf.all.forwarding"


def _v6_bridges(view: HostView, addrs: dict[str, list[str]]) -> list[str]:
    """Bridges with a global IPv6 address and at least one port: dual-stack networks."""
    ported = {ln.master for ln in view.links.values() if ln.master}
    return sorted(
        n for n, ln in view.links.items() if ln.kind == "bridge" and n in ported and addrs.get(n)
    )


def _v6_dnat(view: HostView) -> list[str]:
    """ip6tables DNAT rules (both backends; only tables that exist are read)."""
    out = []
    for backend in ipt.BACKENDS6:
        rs = ipt.load(backend)
        if rs.error:
            continue
        out += [r.text() for r in rs.rules("nat") if ipt.dnat_target(r)]
    return out


def ip6_forward(view: HostView) -> Iterator[Finding]:
    addrs = probe6.global_addrs()
    bridges = _v6_bridges(view, addrs)
    dnat = _v6_dnat(view)
    if not bridges and not dnat:
        return
    if view.sysctl(FORWARDING) != "0":
        return
    yield _finding(
        "ip6_forward",
        "error",
        None,
        "IPv6 forwarding is off: ports published on IPv6 and the containers' IPv6 traffic "
        "cannot be routed",
        [_sysctl_line(view, FORWARDING)]
        + [f"dual-stack bridge {b}: {', '.join(addrs[b])}" for b in bridges]
        + dnat[:3],
        [("run", ["sysctl", "-w", f"{FORWARDING}=1"])],
        "ipv6-forwarding-off",
        safe=False,  # it changes how every interface treats router advertisements
    )


def accept_ra(view: HostView) -> Iterator[Finding]:
    """With forwarding on, the kernel acts as a router and ignores router advertisements on
    interfaces whose accept_ra is 1: a default route learned from them is not renewed."""
    if view.sysctl(FORWARDING) != "1":
        return
    for r in probe6.default_routes():
        if r.protocol != "ra":
            continue
        key = f"net.ipv6.conf.{r.dev}.accept_ra"
        if view.sysctl(key) != "1":
            continue
        left = f", expires in {r.expires}s" if r.expires is not None else ""
        yield _finding(
            "accept_ra",
            "warning",
            None,
            f"IPv6 forwarding is on and {r.dev} has accept_ra=1: router advertisements are "
            f"ignored, so its default route (learned from one) will not be renewed",
            [
                _sysctl_line(view, FORWARDING),
                _sysctl_line(view, key),
                f"default via {r.gateway} dev {r.dev} proto ra{left} (`ip -6 route show default`)",
            ],
            [("run", ["sysctl", "-w", f"{key}=2"])],
            "ipv6-accept-ra",
            safe=True,
        )


# (name, check) in the order they run, after checks.CHECKS
CHECKS = [("ip6_forward", ip6_forward), ("accept_ra", accept_ra)]
