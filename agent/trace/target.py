"""Which container a trace follows, and where it captures.

`resolve(root, ref)` finds the container (pyinspect's own, then anything discovery sees,
then a named netns); `capture_points(target, via)` picks the interfaces from the veth map:
the uplinks, the bridge, the host end of its veth and its own interfaces.
"""

import contextlib
import os
from dataclasses import dataclass, field

from ..errors import NotFoundError, UnavailableError, UsageError


@dataclass
class TraceTarget:
    """The container as the tracer needs it."""

    name: str
    id: str
    netns_path: str
    netns: int
    addrs: list
    ports: list = field(default_factory=list)  # (host_ip or None, host_port, proto, ctr_port)
    source: str = ""
    pid: int = 0


def paused_note(t: TraceTarget) -> str | None:
    """A note when a freezer holds the container's processes (`pause`): packets reach
    it and wait, and nothing in it runs to answer them."""
    from pyinspect.runtime.cgroups import frozen_by

    if not t.pid or not frozen_by(t.pid):
        return None
    tool = "docker" if t.source == "docker" else "pyinspect"
    return (
        f"{t.name} is paused: its processes are frozen, so packets reach it and wait "
        f"unanswered ({tool} unpause {t.name})"
    )


def self_netns():
    return os.stat("/proc/thread-self/ns/net").st_ino


def resolve(root, ref):
    """Find `ref` (name, id or id prefix; or a named netns) -> TraceTarget."""
    if not ref:
        raise UsageError("trace: --container is required")
    own = None
    try:
        from pyinspect.runtime import state

        for c in state.load_all(root):
            if ref in (c.name, c.id) or (len(ref) >= 4 and c.id.startswith(ref)):
                own = c
                break
    except (ImportError, OSError):  # runtime not importable or no state: discovery
        own = None
    if own is not None:
        if own.status != "running" or not own.pid:
            raise UsageError(
                f"trace: container {own.name} is not running ({own.status})",
                f"pyinspect start {own.name}",
            )
        net = own.network or {}
        path = f"/proc/{own.pid}/ns/net"
        ports = [
            (
                p.get("host_ip") or None,
                int(p["host_port"]),
                p.get("proto", "tcp"),
                int(p["container_port"]),
            )
            for p in net.get("ports") or []
        ]
        addrs = [net["ip"]] if net.get("ip") else []
        return TraceTarget(
            own.name, own.id, path, os.stat(path).st_ino, addrs, ports, "pyinspect", own.pid
        )
    found = None
    with contextlib.suppress(Exception):
        from pyinspect.host import discovery

        for d in discovery.containers(root):
            names = [d.name, d.id] + list((d.detail or {}).get("netns_names") or [])
            if ref in names or (len(ref) >= 4 and d.id.startswith(ref)):
                found = d
                break
    if found is not None and found.netns_path:
        return TraceTarget(
            found.name,
            found.id,
            found.netns_path,
            os.stat(found.netns_path).st_ino,
            [],
            [],
            found.source,
            found.pid,
        )
    path = f"/run/netns/{ref}"
    if "/" not in ref and os.path.exists(path):
        return TraceTarget(
            ref, f"netns:{os.stat(path).st_ino}", path, os.stat(path).st_ino, [], [], "netns"
        )
    raise NotFoundError(
        f"trace: no such container: {ref}",
        "pyinspect ps -a lists pyinspect's; pyinspect map shows namespaces",
    )


def dnat_ports(addrs):
    """Published ports from DNAT rules (legacy and nft backends) pointing at `addrs`."""
    from ..probes.iptsave import published_ports

    return published_ports(addrs)


def capture_points(target, via=None, rows=None):
    """CapturePoints for `target` from the veth map: uplinks, bridge, host veth, eth0."""
    from pyinspect.probes.packets import CapturePoint

    if rows is None:
        from pyinspect.host import vethmap

        rows = vethmap.build()
    here = self_netns()
    mine = [r for r in rows if r["netns"] == here]
    inner = [
        r
        for r in rows
        if r["netns"] == target.netns and r["kind"] != "loopback" and r.get("ifname") != "lo"
    ]
    if not inner:
        raise UnavailableError(
            f"trace: {target.name} has no network interfaces", "is it running with --network none?"
        )
    points = []
    host_veths = []
    for r in inner:
        # IPv4 and IPv6 (link-local too: the container's NDP and router solicitations)
        for a in (a.split("/")[0] for a in r.get("addrs") or []):
            if a not in target.addrs:
                target.addrs.append(a)
        if r.get("peer_netns") == here:
            host = next((h for h in mine if h["ifindex"] == r["peer_ifindex"]), None)
            if host:
                host_veths.append(host)
        points.append(
            CapturePoint(
                r["ifname"],
                r["ifindex"],
                target.netns_path,
                "all",
                f"{r['ifname']} in {target.name}",
                target.netns,
                r["ifname"],
            )
        )
    if not host_veths:
        peers = {r.get("peer_netns_name") or r.get("peer_netns") for r in inner}
        raise UsageError(
            f"trace: {target.name}'s veth peer is not in this network namespace "
            f"(it is in {', '.join(map(str, peers))})",
            "run pyinspect trace in the namespace that holds the bridge",
        )
    bridges = []
    for h in host_veths:
        points.append(
            CapturePoint(
                h["ifname"],
                h["ifindex"],
                None,
                "all+learn",
                f"host end of {target.name}'s veth",
                here,
                h["ifname"],
            )
        )
        if h.get("master_ifindex"):
            br = next((b for b in mine if b["ifindex"] == h["master_ifindex"]), None)
            if br and br not in bridges:
                bridges.append(br)
    for br in bridges:
        points.append(
            CapturePoint(
                br["ifname"], br["ifindex"], None, "filtered", "bridge", here, br["ifname"]
            )
        )
    taken = {p.ifindex for p in points if p.netns is None}
    if via:
        names = {r["ifname"]: r for r in mine}
        for name in via:
            if name not in names:
                raise NotFoundError(
                    f"trace: --via {name}: no such interface here",
                    f"interfaces: {', '.join(sorted(names))}",
                )
            r = names[name]
            if r["ifindex"] not in taken:
                points.append(
                    CapturePoint(name, r["ifindex"], None, "filtered", "uplink", here, name)
                )
    else:
        for r in mine:
            if (
                r["ifindex"] in taken
                or r.get("kind") in ("bridge", "loopback")
                or r.get("ifname") == "lo"
                or r.get("master_ifindex")
                or not r.get("up")
            ):
                continue
            if r.get("kind") == "veth" and r.get("peer_netns") == target.netns:
                continue
            points.append(
                CapturePoint(
                    r["ifname"], r["ifindex"], None, "filtered", "uplink", here, r["ifname"]
                )
            )
    order = {"uplink": 0, "bridge": 1}
    points.sort(key=lambda p: order.get(p.description, 2 if p.netns is None else 3))
    return points


def role(p):
    if p.netns is not None:
        return "container"
    if p.description in ("uplink", "bridge"):
        return p.description
    return "veth"


def describe(p):
    r = role(p)
    return r if p.description == r else f"{r}: {p.description}"
