"""Address leases for one bridge network, in `<root>/network/<bridge>.json`.

Every read-modify-write happens under an exclusive fcntl lock on
`<root>/network/<bridge>.lock`, so concurrent `pyinspect run`s never hand out
the same address. Addresses are handed out round-robin after the last one
given (like Docker's IPAM), which avoids reusing a just-freed address while
stale ARP or conntrack entries may still point at it. The file is written
atomically (rename), so a crash leaves the old or the new state, never half.

The same file records the published ports of each lease and the sysctls
pyinspect changed (see sysctl.py), so teardown reverts only those.

A dual-stack network (Docker's `--ipv6`) also has `subnet6` (e.g. a ULA fd00:.../64),
`gateway6` (its first address, on the bridge) and `last6`; each lease then has `ip6`,
handed out the same round-robin way (`allocate6`).
"""

import contextlib
import fcntl
import ipaddress
import json
from pathlib import Path

from ..errors import ConflictError, CorruptInputError, UsageError
from .fsutil import atomic_write

VERSION = 1
DEFAULT_SUBNET = "172.29.0.0/16"


def network_dir(root):
    return Path(root) / "network"


def state_path(root, bridge):
    return network_dir(root) / f"{bridge}.json"


def empty_state(bridge, subnet):
    net = ipaddress.IPv4Network(subnet)
    return {
        "version": VERSION,
        "bridge": bridge,
        "subnet": str(net),
        "gateway": str(net.network_address + 1),
        "last": None,
        "leases": {},
        "sysctls": {},
    }


def load(root, bridge):
    """The state for `bridge`, or None if pyinspect never used it (read-only, no lock)."""
    path = state_path(root, bridge)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("leases"), dict):
            raise ValueError("no leases table")
    except ValueError as exc:
        raise CorruptInputError(
            f"network state {path}: {exc}", hint="move the file away; `pyinspect ps` reconciles"
        ) from None
    return data


def all_states(root):
    """Every bridge state file under root: [state dict]."""
    out = []
    d = network_dir(root)
    if d.is_dir():
        for path in sorted(d.glob("*.json")):
            if path.name == "config.json":
                continue
            state = load(root, path.stem)
            if state:
                out.append(state)
    return out


def _write(path, data):
    with atomic_write(path, "w", fsync=True) as f:
        json.dump(data, f, indent=1, sort_keys=True)


@contextlib.contextmanager
def locked(root, bridge, subnet=None):
    """Hold the network lock; yield the (mutable) state dict; save it when it changed.

    `subnet` is the configured one (None: keep the stored one). A stored state
    with another subnet while it still has leases is a ConflictError
    (renumbering live containers is not supported); without leases the new
    subnet replaces the old one. The state is saved also when the body raises:
    callers undo their kernel changes first, so the file matches the kernel.
    """
    d = network_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    lock = open(d / f"{bridge}.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load(root, bridge)
        if state is None:
            state = empty_state(bridge, subnet or DEFAULT_SUBNET)
        elif subnet and state["subnet"] != str(ipaddress.IPv4Network(subnet)):
            if state["leases"]:
                raise ConflictError(
                    f"network {bridge}: subnet {subnet} asked for, but {state['subnet']} is in use "
                    f"by {len(state['leases'])} container(s)",
                    hint="remove them first",
                )
            fresh = empty_state(bridge, subnet)
            for key in ("sysctls", "active", "bridge_created", "netns_inode"):
                if key in state:
                    fresh[key] = state[key]
            state = fresh
        before = json.dumps(state, sort_keys=True)
        try:
            yield state
        finally:
            if json.dumps(state, sort_keys=True) != before:
                _write(state_path(root, bridge), state)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def save(root, state):
    """Write the state now (inside `locked()`): a write-ahead record before kernel changes."""
    _write(state_path(root, state["bridge"]), state)


def allocate(state, container_id, name):
    """Lease the next free address to `container_id`; return it as text."""
    net = ipaddress.IPv4Network(state["subnet"])
    gateway = ipaddress.IPv4Address(state["gateway"])
    for ip, lease in state["leases"].items():
        if lease.get("id") == container_id:
            raise ConflictError(f"container {name}: already has address {ip}")
    hosts = net.num_addresses - 2
    if hosts < 2:
        raise UsageError(f"network {state['bridge']}: subnet {net} is too small")
    first = int(net.network_address) + 1
    start = int(ipaddress.IPv4Address(state["last"])) + 1 if state.get("last") else first
    for i in range(hosts):
        cand = ipaddress.IPv4Address(first + (start - first + i) % hosts)
        if cand == gateway or str(cand) in state["leases"]:
            continue
        ip = str(cand)
        state["leases"][ip] = {"id": container_id, "name": name, "ip": ip}
        state["last"] = ip
        return ip
    raise ConflictError(f"network {state['bridge']}: no free address left in {net}")


def check_subnet6(text):
    """An IPv6 subnet for a dual-stack network, normalized; UsageError naming the problem.
    A /64 or larger, not link-local, multicast or loopback (Docker's rule for --ipv6)."""
    try:
        net = ipaddress.IPv6Network(text, strict=True)
    except ValueError as exc:
        raise UsageError(
            f"invalid IPv6 subnet {text!r}: {exc}", hint="a ULA /64 such as fd00:1:2:3::/64"
        ) from None
    if net.prefixlen > 64 or net.is_link_local or net.is_multicast or net.is_loopback:
        raise UsageError(
            f"invalid IPv6 subnet {text!r}: need a unicast IPv6 network of /64 or larger",
            hint="a ULA /64 such as fd00:1:2:3::/64",
        )
    return str(net)


def ula_for(seed):
    """A unique local /64 (fd00::/8, RFC 4193 style) derived from `seed` (a network id):
    what a dual-stack network without an IPv6 --subnet gets."""
    import hashlib

    h = hashlib.sha256(seed.encode()).digest()
    return str(ipaddress.IPv6Network((b"\xfd" + h[:5] + b"\0\0" + bytes(8), 64)))


def set_subnet6(state, subnet6):
    """Make the network dual-stack with `subnet6` (None: IPv4 only). Refused while
    containers hold addresses of another IPv6 subnet."""
    if subnet6 is None:
        if any(lease.get("ip6") for lease in state["leases"].values()):
            return  # live IPv6 leases: keep the network as it is until they leave
        for key in ("subnet6", "gateway6", "last6"):
            state.pop(key, None)
        state["ipv6"] = False
        return
    net = ipaddress.IPv6Network(subnet6)
    if state.get("subnet6") == str(net) and state.get("gateway6"):
        return
    if state.get("subnet6") not in (None, str(net)) and any(
        lease.get("ip6") for lease in state["leases"].values()
    ):
        raise ConflictError(
            f"network {state['bridge']}: IPv6 subnet {net} asked for, but "
            f"{state.get('subnet6')} is in use",
            hint="remove its containers first",
        )
    state.update(ipv6=True, subnet6=str(net), gateway6=str(net.network_address + 1), last6=None)


def allocate6(state, container_id):
    """Give `container_id`'s lease the next free IPv6 address of `subnet6` (round-robin
    after the last one given); None when the network is IPv4 only."""
    if not state.get("subnet6"):
        return None
    _ip, lease = find(state, container_id)
    if lease is None:
        raise ConflictError(f"container {container_id[:12]}: no IPv4 lease to add IPv6 to")
    net = ipaddress.IPv6Network(state["subnet6"])
    used = {x.get("ip6") for x in state["leases"].values()} | {state["gateway6"]}
    first = int(net.network_address) + 1
    hosts = min(net.num_addresses - 2, 1 << 20)  # a /64 is never searched to its end
    if hosts < 2:
        raise UsageError(f"network {state['bridge']}: IPv6 subnet {net} is too small")
    last = state.get("last6")
    start = int(ipaddress.IPv6Address(last)) + 1 if last else first
    for i in range(hosts):
        cand = str(ipaddress.IPv6Address(first + (start - first + i) % hosts))
        if cand not in used:
            lease["ip6"] = cand
            state["last6"] = cand
            return cand
    raise ConflictError(f"network {state['bridge']}: no free IPv6 address left in {net}")


def find(state, container_id):
    """(ip, lease) held by `container_id`, or (None, None)."""
    for ip, lease in state["leases"].items():
        if lease.get("id") == container_id:
            return ip, lease
    return None, None


def release(state, container_id):
    """Free the address of `container_id`; return the lease dict (None if it had none)."""
    ip, lease = find(state, container_id)
    if ip is not None:
        del state["leases"][ip]
    return lease


def published(state, exclude_id=None):
    """Every port binding held by the network's leases (with the holder's name and id)."""
    out = []
    for lease in state["leases"].values():
        if lease.get("id") == exclude_id:
            continue
        for b in lease.get("ports", []):
            out.append(dict(b, name=lease.get("name"), id=lease.get("id")))
    return out
