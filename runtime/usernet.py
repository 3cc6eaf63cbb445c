"""User-defined networks (`pyinspect network create`), kept as Docker keeps them.

A user network is a bridge network of its own: bridge `br-<12 hex of its id>` (or the
`com.docker.network.bridge.name` option), its own subnet and gateway, and a state file
`<root>/network/<bridge>.json` like the default bridge's (ipam.py) with `user`, `name`,
`id`, `internal`, `mtu`, `ipv6` and `options` added. Its bridge and rules exist while it
has containers (network.py); containers on it resolve each other's names through the
embedded DNS (netdns.py) and are isolated from other networks (portmap.py).
"""

import ipaddress
import re
import secrets
import socket
import time

from ..errors import ConflictError, NotFoundError, UsageError
from . import ipam

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
RESERVED = ("bridge", "host", "none", "default")
MTU_OPT = "com.docker.network.driver.mtu"
BRIDGE_OPT = "com.docker.network.bridge.name"
KNOWN_OPTS = (MTU_OPT, BRIDGE_OPT)
# Docker's default address pools, after the default bridge's: /16s of 172.18-31, then
# /20s of 192.168.0.0/16
POOL = [f"172.{n}.0.0/16" for n in range(18, 32)] + [f"192.168.{n}.0/20" for n in range(0, 256, 16)]


def parse_mtu(value) -> int:
    """An MTU from an option or config (68-65535), or UsageError."""
    try:
        mtu = int(str(value).strip())
    except ValueError:
        raise UsageError(f"invalid MTU {value!r}: not a number") from None
    if not 68 <= mtu <= 65535:
        raise UsageError(f"invalid MTU {mtu}: must be 68-65535")
    return mtu


def all_user(root) -> list[dict]:
    return [s for s in ipam.all_states(root) if s.get("user")]


def find(root, name: str) -> dict:
    """The state of user network `name` (its name, a unique id prefix or its bridge)."""
    states = all_user(root)
    for s in states:
        if s["name"] == name:
            return s
    by_id = [s for s in states if len(name) >= 3 and s["id"].startswith(name)]
    if len(by_id) == 1:
        return by_id[0]
    for s in states:
        if s["bridge"] == name:
            return s
    raise NotFoundError(f"network {name} not found", hint="see `pyinspect network ls`")


def _local_networks():
    """IPv4 networks of this netns's addresses and routes (default route ignored)."""
    from pyroute2 import IPRoute

    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=socket.AF_INET):
            net = ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", False)
            out.append((net, names.get(a["index"])))
        for r in ipr.get_routes(family=socket.AF_INET, table=254):
            if r.get_attr("RTA_DST") and r["dst_len"]:
                net = ipaddress.IPv4Network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}", False)
                out.append((net, names.get(r.get_attr("RTA_OIF"))))
    return out


def _taken(root, default_subnet):
    """Subnets already used: pyinspect's networks of this root (and the default one)."""
    taken = [(ipaddress.IPv4Network(default_subnet), "the default bridge network")]
    for s in ipam.all_states(root):
        taken.append((ipaddress.IPv4Network(s["subnet"]), s.get("name") or s["bridge"]))
    return taken


def _parse_options(options: dict) -> tuple[int | None, str | None]:
    for key in options:
        if key not in KNOWN_OPTS:
            raise UsageError(
                f"unsupported network option {key!r}", hint=f"supported: {', '.join(KNOWN_OPTS)}"
            )
    mtu = parse_mtu(options[MTU_OPT]) if MTU_OPT in options else None
    return mtu, options.get(BRIDGE_OPT)


def create(
    root,
    name: str,
    *,
    default_subnet: str,
    default_bridge: str,
    subnet: str | None = None,
    gateway: str | None = None,
    internal: bool = False,
    ipv6: bool = False,
    subnet6: str | None = None,
    options: dict | None = None,
) -> dict:
    """Record a new user network; returns its state. Nothing is made in the kernel yet:
    the bridge and rules come with its first container."""
    if (
        not NAME_RE.match(name or "")
        or name in RESERVED
        or name == default_bridge
        or name.startswith("container:")
    ):
        raise UsageError(
            f"invalid network name {name!r}",
            hint="letters, digits, '_', '.', '-'; not bridge, host, none or default",
        )
    options = dict(options or {})
    mtu, bridge = _parse_options(options)
    subnet6 = ipam.check_subnet6(subnet6) if subnet6 else None
    try:
        find(root, name)
    except NotFoundError:
        pass
    else:
        raise ConflictError(f"network with name {name} already exists")
    net_id = secrets.token_hex(32)
    bridge = bridge or f"br-{net_id[:12]}"
    if not IFNAME_RE.match(bridge) or bridge == default_bridge or ipam.load(root, bridge):
        raise UsageError(f"invalid or used bridge name {bridge!r}")
    taken = _taken(root, default_subnet)
    local = _local_networks()
    if subnet:
        try:
            net = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as exc:
            raise UsageError(f"invalid subnet {subnet!r}: {exc}") from None
        if net.prefixlen > 29 or net.is_loopback or net.is_multicast or net.is_link_local:
            raise UsageError(
                f"invalid subnet {subnet}: need a unicast IPv4 network of /29 or larger"
            )
        for other, who in taken + local:
            if other.overlaps(net):
                raise ConflictError(f"subnet {net} overlaps {other} ({who})")
    else:
        for cand in POOL:
            net = ipaddress.IPv4Network(cand)
            if not any(other.overlaps(net) for other, _ in taken + local):
                break
        else:
            raise ConflictError("no free subnet left in the default pools", hint="give --subnet")
    state = ipam.empty_state(bridge, str(net))
    if gateway:
        try:
            gw = ipaddress.IPv4Address(gateway)
        except ValueError:
            raise UsageError(f"invalid gateway {gateway!r}: not an IPv4 address") from None
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise UsageError(f"invalid gateway {gateway}: not a host address of {net}")
        state["gateway"] = str(gw)
    state.update(
        user=True,
        name=name,
        id=net_id,
        internal=bool(internal),
        ipv6=bool(ipv6),
        subnet6=subnet6,
        mtu=mtu,
        options=options,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    with ipam.locked(root, bridge, str(net)) as st:
        if st["leases"] or st.get("user"):
            raise ConflictError(f"bridge {bridge} is in use by another network")
        st.update(state)
    return state


def delete(root, state: dict) -> None:
    """Forget a user network with no containers (the caller checked)."""
    for path in (
        ipam.state_path(root, state["bridge"]),
        ipam.network_dir(root) / f"{state['bridge']}.lock",
    ):
        path.unlink(missing_ok=True)
