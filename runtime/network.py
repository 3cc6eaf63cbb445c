"""Container networking hooks for the runtime: bridge, veth, IPAM, published ports.

The runtime calls, in order: `prepare()` before it creates anything,
`connect()` once the container's init waits in its new empty netns,
`container_files()` for /etc/hosts, /etc/hostname and /etc/resolv.conf, and
`disconnect()` on removal (idempotent). `reconcile()` repairs leases, netns
links and iptables rules after a crash. Everything acts on the network
namespace of the calling process ("the host"); pyroute2 (and python-iptables,
the legacy backend's writer) are imported only on the bridge path.

What `connect()` does, like Docker's bridge driver:
  1. ensure the bridge (default `pyinspect0`, gateway = first address of the
     subnet, default 172.29.0.0/16), refusing a subnet that overlaps an
     existing route or address;
  2. lease the next free address (ipam.py, under an fcntl lock);
  3. create a veth pair, host end `veth<7 hex>` on the bridge (hairpin on),
     the peer created directly inside the container netns as `eth0`;
  4. in the container: lo up, eth0 MAC 02:42:<ip>, address, up, default route;
  5. bind-mount /proc/<pid>/ns/net on /var/run/netns/<name> (`ip netns exec`);
  6. sysctls: ip_forward=1, route_localnet=1 on the bridge (localhost
     publishing), bridge-nf-call-iptables=1 when ports are published;
  7. iptables rules (portmap.py) for the network and each published port.
The last `disconnect()` of a network tears it all down again: rules, chains,
the bridge (if pyinspect made it) and the sysctls it changed.
"""

import ctypes
import ipaddress
import json
import os
import re
import secrets
import socket
import stat
from pathlib import Path

from ..errors import ConflictError, NotFoundError, UnavailableError, UsageError
from . import ipam, iptables, portmap, ports, sysctl, usernet
from .usernet import parse_mtu

DEFAULT_BRIDGE = "pyinspect0"
DEFAULT_SUBNET = "172.29.0.0/16"
BRIDGE_ENV = "PYINSPECT_BRIDGE"
SUBNET_ENV = "PYINSPECT_SUBNET"
MTU_ENV = "PYINSPECT_MTU"
IPV6_ENV = "PYINSPECT_IPV6"  # 1: the default bridge is dual-stack (Docker's daemon.json ipv6)
SUBNET6_ENV = "PYINSPECT_SUBNET6"  # its IPv6 subnet (Docker's fixed-cidr-v6)
DEFAULT_SUBNET6 = "fd00:7069::/64"
NETNS_DIR = "/var/run/netns"
MODES = ("bridge", "none", "host")
_IFNAME = usernet.IFNAME_RE
_DNS_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62})$")
DNS_ADDR = "127.0.0.11"


# --- configuration and validation --------------------------------------------------------


def config(root):
    """{"bridge", "subnet", "ipv6", "subnet6", "iptables", "mtu"}: env PYINSPECT_BRIDGE/
    PYINSPECT_SUBNET/PYINSPECT_IPV6/PYINSPECT_SUBNET6/PYINSPECT_IPTABLES/PYINSPECT_MTU,
    else <root>/config.json {"network": {"bridge", "subnet", "ipv6", "subnet6", "iptables",
    "mtu"}}, else pyinspect0, 172.29.0.0/16, IPv4 only (with ipv6 on and no subnet6:
    fd00:7069::/64), the host's iptables backend and the MTU of the default route's
    interface (mtu None)."""
    file_cfg: dict = {}
    path = Path(root) / "config.json"
    if path.is_file():
        try:
            file_cfg = (json.loads(path.read_text()) or {}).get("network") or {}
        except (ValueError, AttributeError):
            raise UsageError(f"config {path}: not a JSON object with a 'network' object") from None
    bridge = os.environ.get(BRIDGE_ENV) or file_cfg.get("bridge") or DEFAULT_BRIDGE
    subnet = os.environ.get(SUBNET_ENV) or file_cfg.get("subnet") or DEFAULT_SUBNET
    if not _IFNAME.match(bridge) or bridge in (".", ".."):
        raise UsageError(f"invalid bridge name {bridge!r}: 1-15 letters, digits, '-', '_' or '.'")
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise UsageError(
            f"invalid subnet {subnet!r}: {exc}", hint="an IPv4 network such as 172.29.0.0/16"
        ) from None
    if net.prefixlen > 29 or net.is_loopback or net.is_multicast or net.is_link_local:
        raise UsageError(f"invalid subnet {subnet!r}: need a unicast IPv4 network of /29 or larger")
    mtu = os.environ.get(MTU_ENV) or file_cfg.get("mtu")
    env6 = os.environ.get(IPV6_ENV)
    ipv6 = env6 not in ("", "0", "false", "no") if env6 is not None else bool(file_cfg.get("ipv6"))
    subnet6 = os.environ.get(SUBNET6_ENV) or file_cfg.get("subnet6")
    if subnet6 and env6 is None and "ipv6" not in file_cfg:
        ipv6 = True  # an IPv6 subnet alone switches it on
    return {
        "bridge": bridge,
        "subnet": str(net),
        "ipv6": ipv6,
        "subnet6": ipam.check_subnet6(subnet6 or DEFAULT_SUBNET6) if ipv6 else None,
        "iptables": iptables.backend(file_cfg.get("iptables")),
        "mtu": parse_mtu(mtu) if mtu else None,
        "dns_upstream": file_cfg.get("dns_upstream"),
    }


def mode_of(spec):
    """The network mode of a ContainerSpec ('bridge' when unset)."""
    return (getattr(spec, "network_mode", None) or "bridge").strip()


def _attr(obj, name, default=None):
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _image_config(container, image_config):
    if image_config is not None:
        return image_config
    return _attr(container, "image_config") or _attr(_attr(container, "spec"), "image_config")


def prepare(root, spec, image_config=None):
    """Validate the network mode, `-p`/`-P` and conflicts before anything is created."""
    mode = mode_of(spec)
    publish = list(_attr(spec, "publish") or [])
    publish_all = bool(_attr(spec, "publish_all"))
    if mode.startswith("container:"):
        if not mode.partition(":")[2]:
            raise UsageError("invalid network mode 'container:': no container name")
        if publish or publish_all:
            raise UsageError(
                "conflicting options: port publishing and the container type network mode"
            )
        if _attr(spec, "hostname"):
            raise UsageError("conflicting options: hostname and the network mode")
        return
    if mode not in MODES:
        raise UsageError(
            f"invalid network mode {mode!r}", hint="use bridge, host, none or container:NAME"
        )
    if mode != "bridge":
        return  # like Docker, published ports are discarded for host and none
    target(root, spec)  # a user network that does not exist: NotFoundError
    for alias in _attr(spec, "network_aliases") or ():
        if not _DNS_NAME.match(alias):
            raise UsageError(f"invalid network alias {alias!r}: letters, digits, '-', '_', '.'")
    bindings = ports.requested(publish, publish_all, image_config)
    published = _published(root)
    ports.check_local(bindings)
    ports.check(bindings, published)
    name = _attr(spec, "name")
    if name:
        link = Path(NETNS_DIR, name)
        if link.exists() or link.is_symlink():
            raise ConflictError(
                f"cannot expose network namespace {link}: it already exists",
                hint="choose another container name or remove it with `ip netns del`",
            )


def target(root, spec) -> dict:
    """The network state a bridged container joins: the default bridge's (it may not
    exist yet: {"bridge", "subnet"} only) or a user network's (NotFoundError if missing)."""
    name = _attr(spec, "network_name") or ""
    if not name or name == "bridge":
        cfg = config(root)
        return ipam.load(root, cfg["bridge"]) or ipam.empty_state(cfg["bridge"], cfg["subnet"])
    return usernet.find(root, name)


def _published(root, exclude_id=None):
    """Ports published by live leases of every network of this root (host ports are
    shared by all of them)."""
    out = []
    for state in ipam.all_states(root):
        live = {ip: lease for ip, lease in state["leases"].items() if _alive(lease)}
        out += ipam.published(dict(state, leases=live), exclude_id)
    return out


# --- connect -------------------------------------------------------------------------------


def _pyroute2():
    try:
        from pyroute2 import IPRoute, NetNS  # ~150 ms: only on the bridge path
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError as exc:
        raise UnavailableError(
            f"pyroute2 unavailable: {exc}", hint="pip install pyroute2"
        ) from None
    return IPRoute, NetNS, NetlinkError


def _mac_for(ip):
    b = ipaddress.IPv4Address(ip).packed
    return "02:42:" + ":".join(f"{x:02x}" for x in b)


def _link_kind(link):
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def uplink_mtu(ipr) -> int | None:
    """The MTU of the interface the default route of this netns leaves by (None: no
    default route), which a bridge pyinspect creates takes, as Docker recommends."""
    for r in ipr.get_routes(family=socket.AF_INET, table=254):
        if r["dst_len"] == 0 and r.get_attr("RTA_OIF"):
            links = ipr.get_links(r.get_attr("RTA_OIF"))
            if links:
                return links[0].get_attr("IFLA_MTU")
    return None


def _mtu_for(ipr, state, cfg_mtu):
    """The MTU of a network's bridge and veths: its own option, else the configured
    default (PYINSPECT_MTU / config.json), else the uplink's; None leaves the kernel's."""
    return state.get("mtu") or cfg_mtu or uplink_mtu(ipr)


def _ensure_bridge(ipr, bridge, subnet, gateway, mtu=None):
    """Index of the bridge, made if missing (with `mtu`). Returns (index, created)."""
    net = ipaddress.IPv4Network(subnet)
    found = ipr.link_lookup(ifname=bridge)
    if found:
        idx = found[0]
        link = ipr.get_links(idx)[0]
        if _link_kind(link) != "bridge":
            raise ConflictError(
                f"cannot use {bridge} as the container bridge: "
                f"a {_link_kind(link) or 'non-bridge'} interface has that name",
                hint=f"set {BRIDGE_ENV} to another name",
            )
        addrs = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in ipr.get_addr(family=socket.AF_INET, index=idx)
        }
        if (gateway, net.prefixlen) not in addrs:
            if addrs:
                have = ", ".join(f"{a}/{p}" for a, p in sorted(addrs))
                raise ConflictError(
                    f"bridge {bridge} has address {have}, not {gateway}/{net.prefixlen}",
                    hint=f"set {SUBNET_ENV} to match it or use another bridge",
                )
            _check_subnet_free(ipr, bridge, net)
            ipr.addr("add", index=idx, address=gateway, prefixlen=net.prefixlen)
        ipr.link("set", index=idx, state="up")
        return idx, False
    _check_subnet_free(ipr, bridge, net)
    mac = "02:42:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(4))
    ipr.link("add", ifname=bridge, kind="bridge", address=mac)
    idx = ipr.link_lookup(ifname=bridge)[0]
    if mtu:
        ipr.link("set", index=idx, mtu=mtu)
    ipr.addr("add", index=idx, address=gateway, prefixlen=net.prefixlen)
    ipr.link("set", index=idx, state="up")
    return idx, True


IFA_F_NODAD = 0x02


def _bridge_v6(ipr, idx, gateway6, prefixlen):
    """The bridge's IPv6 gateway address (no duplicate address detection: usable at once)."""
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET6, index=idx)}
    if gateway6 not in have:
        ipr.addr(
            "add",
            index=idx,
            address=gateway6,
            prefixlen=prefixlen,
            family=socket.AF_INET6,
            IFA_FLAGS=IFA_F_NODAD,
        )


def _check_subnet_free(ipr, bridge, net):
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    for a in ipr.get_addr(family=socket.AF_INET):
        other = ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
        if other.overlaps(net) and names.get(a["index"]) != bridge:
            raise ConflictError(
                f"subnet {net} overlaps {other} on {names.get(a['index'])}",
                hint=f"set {SUBNET_ENV} to a free subnet",
            )
    for r in ipr.get_routes(family=socket.AF_INET, table=254):
        dst = r.get_attr("RTA_DST")
        if dst is None or r["dst_len"] == 0:
            continue  # the default route overlaps everything; Docker ignores it too
        other = ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False)
        dev = names.get(r.get_attr("RTA_OIF"))
        if other.overlaps(net) and dev != bridge:
            raise ConflictError(
                f"subnet {net} overlaps the route to {other} via {dev}",
                hint=f"set {SUBNET_ENV} to a free subnet",
            )


def _netns_inode(pid):
    return os.stat(f"/proc/{pid}/ns/net").st_ino


_libc = None


def _mount_call(name, *args):
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _reserve_link(name):
    """Create the empty file /var/run/netns/<name> (O_EXCL, so it is surely ours)."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    target = os.path.join(NETNS_DIR, name)
    try:
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_RDONLY, 0o444))
    except FileExistsError:
        raise ConflictError(
            f"cannot expose network namespace {target}: it already exists",
            hint="choose another container name",
        ) from None
    return target


def _mount_link(target, pid):
    """Bind-mount the container's netns on the reserved file (what `ip netns` reads)."""
    try:
        _mount_call(
            "mount",
            f"/proc/{pid}/ns/net".encode(),
            target.encode(),
            None,
            ctypes.c_ulong(4096),
            None,
        )  # MS_BIND
    except OSError as exc:
        raise UnavailableError(
            f"cannot bind-mount the netns of pid {pid} on {target}: {exc.strerror}"
        ) from None


def _unexpose(path, inode):
    """Unmount and remove a netns link we made: the bind mount of our netns, or the empty
    file reserved for it (a crash between reserving and mounting)."""
    if not path:
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if inode and st.st_ino == inode:
        try:
            _mount_call("umount2", path.encode(), 2)  # MNT_DETACH
        except OSError:
            pass
    elif not (stat.S_ISREG(st.st_mode) and st.st_size == 0 and not os.path.ismount(path)):
        return  # replaced by something else: leave it
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _delete_link(ipr, NetlinkError, name):
    if not name:
        return
    try:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])
    except NetlinkError as exc:
        if exc.code != 19:  # ENODEV: the veth went with its netns
            raise


def _forget_flows(ip):
    """Delete conntrack entries whose reply comes from `ip` (flows DNATed to a container that
    is gone): a UDP client that keeps sending would otherwise stay stuck on the dead address
    even after the port is published again. Like Docker; skipped without `conntrack`."""
    import shutil
    import subprocess

    if ip and shutil.which("conntrack"):
        subprocess.run(
            ["conntrack", "-D", "--reply-src", ip], capture_output=True, timeout=10, check=False
        )


def _undo_lease(ipr, NetlinkError, lease):
    _delete_link(ipr, NetlinkError, lease.get("veth"))
    _unexpose(lease.get("netns_link"), lease.get("netns_inode"))
    if lease.get("ports"):
        _forget_flows(lease.get("ip"))
        _forget_flows(lease.get("ip6"))


def _sync(root, state):
    return portmap.sync(state["bridge"], portmap.desired(state), config(root)["iptables"])


def _teardown(root, ipr, NetlinkError, state):
    """The network has no containers left: remove rules, chains, our bridge, sysctl changes."""
    if state.get("active"):
        portmap.sync(state["bridge"], [], config(root)["iptables"])
        state["active"] = False
    if state.get("bridge_created"):
        _delete_link(ipr, NetlinkError, state["bridge"])
        state["bridge_created"] = False
    sysctl.revert(state)


def _container_side(NetNS, pid, ifname, ip, prefixlen, gateway, mac, mtu, v6=None):
    """lo up; `ifname` with its MAC, MTU, address, up; the default route via `gateway`
    (None: no default route, as on an --internal network or a second network). `v6`:
    (address, prefixlen, gateway or None) on a dual-stack network."""
    ns = NetNS(f"/proc/{pid}/ns/net", flags=0)
    try:
        lo = ns.link_lookup(ifname="lo")[0]
        ns.link("set", index=lo, state="up")
        eth = ns.link_lookup(ifname=ifname)[0]
        ns.link("set", index=eth, address=mac)
        if mtu:
            ns.link("set", index=eth, mtu=mtu)
        ns.addr("add", index=eth, address=ip, prefixlen=prefixlen)
        if v6:
            ns.addr(
                "add",
                index=eth,
                address=v6[0],
                prefixlen=v6[1],
                family=socket.AF_INET6,
                IFA_FLAGS=IFA_F_NODAD,
            )
        ns.link("set", index=eth, state="up")
        if gateway:
            ns.route("add", dst="default", gateway=gateway)
        if v6 and v6[2]:
            ns.route("add", dst="::/0", gateway=v6[2], family=socket.AF_INET6)
    finally:
        ns.close()


def _self_netns():
    return os.stat("/proc/self/ns/net").st_ino


def _claim_home(state, bridge):
    """Make sure this process runs in the network namespace that holds `bridge`'s network.

    The bridge, veths, rules and sysctls of a state root live in one netns ("home",
    recorded as `netns_inode` when the network is first set up). A network with
    nothing set up is claimed by the caller's netns. Returns True when the caller is
    home; False when the network is live in another netns, where acting would write
    rules into the wrong namespace's tables.
    """
    here = _self_netns()
    home = state.get("netns_inode")
    idle = not (state["leases"] or state.get("active") or state.get("bridge_created"))
    if home is None or home == here or idle:
        state["netns_inode"] = here
        return True
    return False


def _elsewhere(bridge, state):
    return ConflictError(
        f"network {bridge}: its bridge and rules live in another network namespace "
        f"(netns inode {state.get('netns_inode')}); run pyinspect in that namespace",
        hint="or use another --root or PYINSPECT_BRIDGE here",
    )


def _lease_ip(state, container_id):
    for ip, lease in state["leases"].items():
        if lease.get("id") == container_id:
            return ip
    return None


def _wire(root, ipr, NetNS, NetlinkError, state, container, pid, ifname, bindings, primary):
    """Lease an address on `state`'s network and plug the container's netns into it as
    `ifname`; write-ahead records in the state; rules synced. Returns the network dict."""
    bridge = state["bridge"]
    cid, name = _attr(container, "id"), _attr(container, "name")
    spec = _attr(container, "spec")
    net = ipaddress.IPv4Network(state["subnet"])
    internal = bool(state.get("internal"))
    if not ipr.link_lookup(ifname=bridge):
        state["bridge_created"] = True
        ipam.save(root, state)  # write-ahead: a crash from here on is undone by reconcile
    cfg = config(root)
    mtu = _mtu_for(ipr, state, cfg["mtu"])
    if state.get("user"):
        if state.get("ipv6"):  # network create --ipv6 [--subnet fd00:...::/64]
            ipam.set_subnet6(state, state.get("subnet6") or ipam.ula_for(state.get("id", bridge)))
    else:
        ipam.set_subnet6(state, cfg["subnet6"])  # PYINSPECT_IPV6 / config.json ipv6
    br_idx, _ = _ensure_bridge(ipr, bridge, state["subnet"], state["gateway"], mtu)
    net6 = ipaddress.IPv6Network(state["subnet6"]) if state.get("subnet6") else None
    if net6:
        _bridge_v6(ipr, br_idx, state["gateway6"], net6.prefixlen)
    ip = ipam.allocate(state, cid, name)
    lease = state["leases"][ip]
    ip6 = ipam.allocate6(state, cid)
    mac = _mac_for(ip)
    veth = "veth" + secrets.token_hex(4)[:7]
    lease.update(pid=pid, veth=veth, mac=mac, ports=[], netns_inode=_netns_inode(pid))
    lease.update(ifname=ifname, aliases=list(_attr(spec, "network_aliases") or []))
    if primary:
        lease["netns_link"] = _reserve_link(name)
    ipam.save(root, state)
    ipr.link("add", ifname=veth, kind="veth", peer={"ifname": ifname, "net_ns_pid": pid})
    vidx = ipr.link_lookup(ifname=veth)[0]
    if mtu:
        ipr.link("set", index=vidx, mtu=mtu)
    ipr.link("set", index=vidx, master=br_idx)
    ipr.brport("set", index=vidx, mode=1)  # hairpin: a container reaching itself via DNAT
    ipr.link("set", index=vidx, state="up")
    lease["veth_ifindex"] = vidx
    gateway = state["gateway"] if primary and not internal else None
    v6 = (ip6, net6.prefixlen, state["gateway6"] if gateway else None) if net6 else None
    _container_side(NetNS, pid, ifname, ip, net.prefixlen, gateway, mac, mtu, v6)
    if primary:
        _mount_link(lease["netns_link"], pid)
    sysctl.ensure(state, sysctl.IP_FORWARD, 1)
    sysctl.ensure(state, f"net.ipv4.conf.{bridge}.route_localnet", 1)
    if bindings:
        sysctl.ensure(state, sysctl.BRIDGE_NF_IPTABLES, 1, required=False)
    if net6:
        # as the IPv4 path: in this (the host's) namespace only, reverted with the network;
        # interfaces with accept_ra=1 then ignore router advertisements (doctor: accept_ra)
        sysctl.ensure(state, sysctl.IP6_FORWARD, 1)
        if bindings:
            sysctl.ensure(state, sysctl.BRIDGE_NF_IP6TABLES, 1, required=False)
    lease["ports"] = bindings
    state["active"] = True
    _sync(root, state)
    out = {
        "mode": "bridge",
        "network": state.get("name") or "bridge",
        "ip": ip,
        "prefixlen": net.prefixlen,
        "gateway": state["gateway"],
        "mac": mac,
        "bridge": bridge,
        "veth_host": veth,
        "veth_host_ifindex": vidx,
        "ifname": ifname,
        "mtu": mtu,
        "ports": [dict(b) for b in bindings],
    }
    if net6:
        out.update(ip6=ip6, prefixlen6=net6.prefixlen, gateway6=state["gateway6"])
    if primary:
        out["netns_path"] = lease["netns_link"]
    if state.get("user"):
        out["dns"] = DNS_ADDR
    return out


def _free_dead(ipr, NetlinkError, state):
    for ip, lease in list(state["leases"].items()):
        if not _alive(lease):  # its init died without a disconnect: free its ports now
            del state["leases"][ip]
            _undo_lease(ipr, NetlinkError, lease)


def connect(root, container, pid, image_config=None):
    """Wire the container's netns (init = pid) to its network; return the `network` dict."""
    spec = _attr(container, "spec")
    mode = mode_of(spec)
    if mode != "bridge":
        if mode == "none":
            _lo_up(pid)
        return {"mode": mode, "ports": []}
    want = target(root, spec)
    bridge = want["bridge"]
    cid = container.id
    bindings = ports.requested(
        _attr(spec, "publish"), _attr(spec, "publish_all"), _image_config(container, image_config)
    )
    subnet = None if want.get("user") else config(root)["subnet"]
    IPRoute, NetNS, NetlinkError = _pyroute2()
    with IPRoute() as ipr, ipam.locked(root, bridge, subnet) as state:
        if want.get("user") and state.get("id") != want.get("id"):
            raise NotFoundError(f"network {want.get('name')} not found (removed meanwhile)")
        if not _claim_home(state, bridge):
            raise _elsewhere(bridge, state)
        old = ipam.release(state, cid)
        if old:  # a previous run of the same container that was never disconnected
            _undo_lease(ipr, NetlinkError, old)
        _free_dead(ipr, NetlinkError, state)
        bindings = ports.assign(bindings, _published(root, exclude_id=cid))
        try:
            return _wire(
                root, ipr, NetNS, NetlinkError, state, container, pid, "eth0", bindings, True
            )
        except BaseException:
            lease = ipam.release(state, cid)
            if lease is not None:
                _undo_lease(ipr, NetlinkError, lease)
            if not state["leases"]:
                _teardown(root, ipr, NetlinkError, state)
            raise


def _lo_up(pid):
    IPRoute, NetNS, NetlinkError = _pyroute2()
    ns = NetNS(f"/proc/{pid}/ns/net", flags=0)
    try:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    finally:
        ns.close()


def _next_ifname(pid):
    """eth1, eth2...: the first ethN free in the container's netns."""
    taken = set()
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f.read().splitlines()[2:]:
            taken.add(line.split(":")[0].strip())
    n = 1
    while f"eth{n}" in taken:
        n += 1
    return f"eth{n}"


def attach(root, container, name, aliases=()):
    """`network connect NAME CONTAINER`: plug a running bridged container into another
    network as eth1, eth2...; returns the new interface's network dict."""
    pid = _attr(container, "pid")
    if _attr(container, "status") != "running" or not pid:
        raise ConflictError(f"container {_attr(container, 'name')} is not running")
    if mode_of(_attr(container, "spec")) != "bridge":
        raise ConflictError(
            f"container {_attr(container, 'name')} has network mode "
            f"{mode_of(_attr(container, 'spec'))}: only bridged containers join networks"
        )
    want = usernet.find(root, name) if name != "bridge" else target(root, {})
    for alias in aliases:
        if not _DNS_NAME.match(alias):
            raise UsageError(f"invalid network alias {alias!r}: letters, digits, '-', '_', '.'")
    rec = _Attached(container, list(aliases))
    IPRoute, NetNS, NetlinkError = _pyroute2()
    subnet = None if want.get("user") else config(root)["subnet"]
    with IPRoute() as ipr, ipam.locked(root, want["bridge"], subnet) as state:
        if not _claim_home(state, want["bridge"]):
            raise _elsewhere(want["bridge"], state)
        if ipam.find(state, rec.id)[0]:
            raise ConflictError(
                f"container {rec.name} is already connected to network "
                f"{want.get('name') or 'bridge'}"
            )
        _free_dead(ipr, NetlinkError, state)
        try:
            return _wire(
                root, ipr, NetNS, NetlinkError, state, rec, pid, _next_ifname(pid), [], False
            )
        except BaseException:
            lease = ipam.release(state, rec.id)
            if lease is not None:
                _undo_lease(ipr, NetlinkError, lease)
            if not state["leases"]:
                _teardown(root, ipr, NetlinkError, state)
            raise


class _Attached:
    """The container as `_wire` sees it when it joins a second network."""

    def __init__(self, container, aliases):
        self.id = _attr(container, "id")
        self.name = _attr(container, "name")
        self.spec = {"network_aliases": aliases}


def detach(root, container, name):
    """`network disconnect NAME CONTAINER`: unplug one network (its veth, lease, rules)."""
    want = usernet.find(root, name) if name != "bridge" else target(root, {})
    bridge = want["bridge"]
    cid = _attr(container, "id")
    IPRoute, NetNS, NetlinkError = _pyroute2()
    with IPRoute() as ipr, ipam.locked(root, bridge) as state:
        if not _claim_home(state, bridge):
            raise _elsewhere(bridge, state)
        lease = ipam.release(state, cid)
        if lease is None:
            raise NotFoundError(
                f"container {_attr(container, 'name')} is not connected to network {name}"
            )
        _undo_lease(ipr, NetlinkError, lease)
        if state["leases"]:
            _sync(root, state)
        else:
            _teardown(root, ipr, NetlinkError, state)


def rename_link_free(name):
    """ConflictError when /var/run/netns/<name> is taken (a renamed container's link
    moves there)."""
    link = Path(NETNS_DIR, name)
    if link.exists() or link.is_symlink():
        raise ConflictError(
            f"cannot expose network namespace {link}: it already exists",
            hint="choose another container name or remove it with `ip netns del`",
        )


def rename(root, container, new_name):
    """Give a renamed container's leases its new name (a user network's DNS answers to
    it) and move its `ip netns` link to /var/run/netns/<new_name>; returns the link's new
    path, or None when it has none."""
    cid = _attr(container, "id")
    moved = None
    for bridge in [s["bridge"] for s in ipam.all_states(root) if ipam.find(s, cid)[0]]:
        with ipam.locked(root, bridge) as state:
            lease = ipam.find(state, cid)[1]
            if lease is None:
                continue
            if not _claim_home(state, bridge):
                raise _elsewhere(bridge, state)
            old = lease.get("netns_link")
            if old:
                new = _reserve_link(new_name)
                try:
                    _mount_call(
                        "mount", old.encode(), new.encode(), None, ctypes.c_ulong(4096), None
                    )
                except OSError as exc:  # MS_BIND above
                    os.unlink(new)
                    raise UnavailableError(
                        f"cannot bind-mount {old} on {new}: {exc.strerror}"
                    ) from None
                lease["netns_link"] = moved = new
                _unexpose(old, lease.get("netns_inode"))
            lease["name"] = new_name
    return moved


# --- disconnect / reconcile ----------------------------------------------------------------


def disconnect(root, container):
    """Remove the container from every network it is on: veths, rules, leases, the netns
    link. Idempotent."""
    net = _attr(container, "network") or {}
    if mode_of(_attr(container, "spec")) != "bridge" and net.get("mode", "bridge") != "bridge":
        return
    cid = _attr(container, "id")
    held = [s["bridge"] for s in ipam.all_states(root) if ipam.find(s, cid)[0]]
    if not held and net.get("bridge") and ipam.load(root, net["bridge"]) is not None:
        held = [net["bridge"]]  # no lease left, but maybe a veth (a crash mid-connect)
    if not held:
        return
    IPRoute, NetNS, NetlinkError = _pyroute2()
    with IPRoute() as ipr:
        for bridge in held:
            with ipam.locked(root, bridge) as state:
                if not _claim_home(state, bridge):
                    # Not this namespace's network: drop only the global `ip netns` link;
                    # the lease, veth and rules go at the next reconcile in its own netns.
                    lease = state["leases"].get(_lease_ip(state, cid))
                    if lease:
                        _unexpose(lease.get("netns_link"), lease.get("netns_inode"))
                    continue
                lease = ipam.release(state, cid)
                if lease:
                    _undo_lease(ipr, NetlinkError, lease)
                elif net.get("veth_host") and net.get("bridge") == bridge:
                    _delete_link(ipr, NetlinkError, net["veth_host"])
                if state["leases"]:
                    if lease:
                        _sync(root, state)
                else:
                    _teardown(root, ipr, NetlinkError, state)


def _alive(lease, container=None):
    """The lease's init process still lives in the very netns the lease was made for.

    Judged from the lease itself (pid + netns inode recorded by connect), so a
    container that is still starting (its state not yet 'running') keeps its
    lease, and a reused pid in another netns does not.
    """
    for pid in (lease.get("pid"), _attr(container, "pid") if container is not None else None):
        if not pid:
            continue
        try:
            if _netns_inode(pid) == lease.get("netns_inode"):
                return True
        except OSError:
            continue
    return False


def _rules_look_right(root, state):
    """Cheap check (one `*-save` per family, no pyroute2): are our tagged rules in place?"""
    return portmap.in_place(state["bridge"], portmap.desired(state), config(root)["iptables"])


def reconcile(root, containers):
    """Drop leases, veths, netns links and rules of dead containers; re-add missing rules.

    Rules are compared in full (portmap.sync) only when a lease was dropped
    or the cheap per-owner count of our tagged rules is off, so calling this
    often (every `pyinspect ps`) stays cheap. Returns
    {bridge: {"released": [names], "added": n, "removed": n}}.
    """
    states = ipam.all_states(root)
    by_id = {_attr(c, "id"): c for c in containers}
    report = {}
    for snapshot in states:
        bridge = snapshot["bridge"]
        with ipam.locked(root, bridge) as state:
            if not _claim_home(state, bridge):
                report[bridge] = {
                    "released": [],
                    "added": 0,
                    "removed": 0,
                    "skipped": "network lives in another netns",
                }
                continue
            dead = {
                ip: lease
                for ip, lease in state["leases"].items()
                if not _alive(lease, by_id.get(lease.get("id")))
            }
            live = len(state["leases"]) - len(dead)
            counts = {"added": 0, "removed": 0}
            idle = not (state.get("active") or state.get("bridge_created") or state.get("sysctls"))
            if not dead and ((live and _rules_look_right(root, state)) or (not live and idle)):
                report[bridge] = {"released": [], **counts}
                continue
            IPRoute, NetNS, NetlinkError = _pyroute2()
            with IPRoute() as ipr:
                for ip, lease in dead.items():
                    del state["leases"][ip]
                    _undo_lease(ipr, NetlinkError, lease)
                if state["leases"]:
                    counts = _sync(root, state)
                    state["active"] = True
                else:
                    _teardown(root, ipr, NetlinkError, state)
            report[bridge] = {"released": [lease.get("name") for lease in dead.values()], **counts}
    return report


# --- files for the container ---------------------------------------------------------------

HOSTS_HEAD = (
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
)
FALLBACK_DNS = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _resolv_for_bridge(text):
    """Docker's rule: the host's resolv.conf without loopback nameservers (fallback: public DNS)."""
    out, servers = [], 0
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) > 1:
            try:
                if ipaddress.ip_address(parts[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
            servers += 1
        out.append(line)
    body = "\n".join(out).strip()
    if not servers:
        body = (body + "\n" if body else "") + FALLBACK_DNS.strip()
    return body + "\n"


def _resolv_embedded(text):
    """Docker's resolv.conf on a user network: the embedded DNS at 127.0.0.11 (which
    forwards other names to the host's resolvers) and the host's search/options lines."""
    keep = [
        line
        for line in text.splitlines()
        if line.split()[:1] in (["search"], ["domain"]) or line.startswith("options")
    ]
    return "\n".join([f"nameserver {DNS_ADDR}", *keep, "options ndots:0"]) + "\n"


def container_files(container):
    """{path: text} for /etc/hosts, /etc/hostname and /etc/resolv.conf inside the container."""
    spec = _attr(container, "spec")
    net = _attr(container, "network") or {}
    mode = net.get("mode") or mode_of(spec)
    cid = _attr(container, "id") or ""
    if mode == "host":
        hostname = socket.gethostname()
        return {
            "/etc/hosts": _read("/etc/hosts") or HOSTS_HEAD,
            "/etc/hostname": hostname + "\n",
            "/etc/resolv.conf": _read("/etc/resolv.conf"),
        }
    hostname = _attr(container, "hostname") or _attr(spec, "hostname") or cid[:12]
    hosts = HOSTS_HEAD
    if net.get("ip"):
        hosts += f"{net['ip']}\t{hostname}\n"
    if net.get("ip6"):
        hosts += f"{net['ip6']}\t{hostname}\n"
    host_resolv = _with_dns_flags(_read("/etc/resolv.conf"), spec)
    if mode == "none":
        resolv = ""
    elif net.get("dns"):  # --dns: the embedded DNS's upstreams (start_dns), as Docker's
        resolv = _resolv_embedded(_with_dns_flags(_read("/etc/resolv.conf"), spec, servers=False))
    else:
        resolv = _resolv_for_bridge(host_resolv)
    return {"/etc/hosts": hosts, "/etc/hostname": hostname + "\n", "/etc/resolv.conf": resolv}


def _with_dns_flags(text, spec, servers=True):
    """The host's resolv.conf text with what --dns, --dns-search and --dns-option give in
    place of its nameserver, search/domain and options lines (each only when given), as
    Docker builds a container's file."""
    dns = list(_attr(spec, "dns") or []) if servers else []
    search = list(_attr(spec, "dns_search") or [])
    options = list(_attr(spec, "dns_options") or [])
    if not (dns or search or options):
        return text
    keep = []
    for line in text.splitlines():
        word = (line.split() or [""])[0]
        if (dns and word == "nameserver") or (search and word in ("search", "domain")):
            continue
        if options and word == "options":
            continue
        keep.append(line)
    keep = [ln for ln in keep if ln.strip() and not ln.lstrip().startswith(("#", ";"))]
    # Docker's order: search, nameservers, options
    if search:
        out = ["search " + " ".join(search)]
    else:
        out = [ln for ln in keep if ln.split()[0] in ("search", "domain")]
    out += [f"nameserver {ns}" for ns in dns] + [ln for ln in keep if ln.split()[0] == "nameserver"]
    if options:
        out.append("options " + " ".join(options))
    else:
        out += [ln for ln in keep if ln.split()[0] == "options"]
    return "\n".join(out) + "\n"


def start_dns(root, container, pid):
    """Start the embedded DNS (127.0.0.11) of a container on a user network; returns the
    netdns.Resolver to stop() when the container stops, or None (default bridge)."""
    net = _attr(container, "network") or {}
    if not net.get("dns"):
        return None
    from . import netdns

    dns = _attr(_attr(container, "spec"), "dns") or []
    upstream = netdns.upstreams(",".join(dns) or config(root)["dns_upstream"])
    try:
        return netdns.Resolver(root, _attr(container, "id"), pid, upstream).start()
    except OSError as exc:
        raise UnavailableError(
            f"embedded DNS of {_attr(container, 'name')}: cannot listen on "
            f"{DNS_ADDR}:53 in its netns: {exc.strerror or exc}"
        ) from None


# --- user networks -------------------------------------------------------------------------


def create_network(
    root,
    name,
    subnets=(),
    gateway=None,
    internal=False,
    ipv6=False,
    options=None,
):
    """`pyinspect network create`: record a user network (see usernet.py); returns its
    inspect() view. `subnets` holds at most one IPv4 and (with --ipv6) one IPv6 network."""
    cfg = config(root)
    v4 = [s for s in subnets if ":" not in s]
    v6 = [s for s in subnets if ":" in s]
    if len(v4) > 1 or len(v6) > 1:
        raise UsageError("at most one IPv4 and one IPv6 --subnet")
    if v6 and not ipv6:
        raise UsageError(f"IPv6 subnet {v6[0]} given without --ipv6")
    usernet.create(
        root,
        name,
        default_subnet=cfg["subnet"],
        default_bridge=cfg["bridge"],
        subnet=v4[0] if v4 else None,
        gateway=gateway,
        internal=internal,
        ipv6=ipv6,
        subnet6=v6[0] if v6 else None,
        options=options,
    )
    return inspect(root, name)


def remove_network(root, name):
    """`pyinspect network rm`: refused while a running container is on it (Docker's
    "has active endpoints"); leases of dead containers are cleaned up first."""
    if name in ("bridge", "host", "none") or name == config(root)["bridge"]:
        raise UsageError(f"{name} is a pre-defined network and cannot be removed")
    state = usernet.find(root, name)
    bridge = state["bridge"]
    with ipam.locked(root, bridge) as st:
        live = [lease.get("name") for lease in st["leases"].values() if _alive(lease)]
        if live:
            raise ConflictError(
                f"error while removing network: network {state['name']} has active endpoints "
                f"({', '.join(sorted(live))})",
                hint="stop or disconnect them first",
            )
        if st["leases"] or st.get("active") or st.get("bridge_created"):
            if not _claim_home(st, bridge):
                raise _elsewhere(bridge, st)
            IPRoute, NetNS, NetlinkError = _pyroute2()
            with IPRoute() as ipr:
                for lease in st["leases"].values():
                    _undo_lease(ipr, NetlinkError, lease)
                st["leases"] = {}
                _teardown(root, ipr, NetlinkError, st)
    usernet.delete(root, state)
    return state["name"]


def prune_networks(root) -> list:
    """`network prune`, as Docker's: remove every user network no running container is
    on (a stopped container that named it does not keep it, as in Docker); their names,
    oldest first (by name within a second)."""
    removed = []
    for state in sorted(usernet.all_user(root), key=lambda s: (s.get("created", ""), s["name"])):
        try:
            removed.append(remove_network(root, state["name"]))
        except ConflictError:
            continue  # it has active endpoints
    return removed


# --- `pyinspect network ls / inspect` ------------------------------------------------------


def _link_exists(name):
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def networks(root):
    """[{"name", "driver", "bridge", "subnet", "gateway", "containers", "exists", "internal",
    "id"}]: the default bridge network (named by its bridge), user networks, host, none."""
    cfg = config(root)
    states = {s["bridge"]: s for s in ipam.all_states(root)}
    if cfg["bridge"] not in states:
        states[cfg["bridge"]] = ipam.empty_state(cfg["bridge"], cfg["subnet"])
    default: list[dict] = []
    users: list[dict] = []
    for _, s in sorted(states.items()):
        (users if s.get("user") else default).append(s)
    out = []
    for s in default + sorted(users, key=lambda u: u["name"]):
        out.append(
            {
                "name": s.get("name") or s["bridge"],
                "id": s.get("id", ""),
                "driver": "bridge",
                "bridge": s["bridge"],
                "subnet": s["subnet"],
                "gateway": s["gateway"],
                "internal": bool(s.get("internal")),
                "containers": len(s["leases"]),
                "exists": _link_exists(s["bridge"]),
            }
        )
    for name, driver in (("host", "host"), ("none", "null")):
        out.append(
            {
                "name": name,
                "id": "",
                "driver": driver,
                "bridge": "",
                "subnet": "",
                "gateway": "",
                "internal": False,
                "containers": None,
                "exists": True,
            }
        )
    return out


def inspect(root, name):
    """Docker-like details of one network (`bridge` names the configured bridge network)."""
    cfg = config(root)
    if name == "bridge":
        name = cfg["bridge"]
    if name in ("host", "none"):
        return {"Name": name, "Driver": "host" if name == "host" else "null", "Containers": {}}
    state = ipam.load(root, name) if _IFNAME.match(name) else None
    if state is None or (state.get("user") and name != state["bridge"]):
        try:
            state = usernet.find(root, name)
        except NotFoundError:
            if name != cfg["bridge"]:
                raise NotFoundError(
                    f"no such network: {name}", hint="see `pyinspect network ls`"
                ) from None
            state = ipam.empty_state(name, cfg["subnet"])
    bridge = state["bridge"]
    prefix = ipaddress.IPv4Network(state["subnet"]).prefixlen
    members = {}
    for ip, lease in sorted(state["leases"].items(), key=lambda kv: ipaddress.IPv4Address(kv[0])):
        members[lease["id"]] = {
            "Name": lease.get("name"),
            "IPv4Address": f"{ip}/{prefix}",
            "MacAddress": lease.get("mac"),
            "Interface": lease.get("ifname", "eth0"),
            "Aliases": lease.get("aliases", []),
            "VethHost": lease.get("veth"),
            "Pid": lease.get("pid"),
            "NetnsPath": lease.get("netns_link"),
            "Ports": lease.get("ports", []),
        }
        if lease.get("ip6"):
            plen6 = ipaddress.IPv6Network(state["subnet6"]).prefixlen
            members[lease["id"]]["IPv6Address"] = f"{lease['ip6']}/{plen6}"
    backend = cfg["iptables"]
    return {
        "Name": state.get("name") or bridge,
        "Id": state.get("id", ""),
        "Driver": "bridge",
        "Bridge": bridge,
        "Exists": _link_exists(bridge),
        "Subnet": state["subnet"],
        "Gateway": state["gateway"],
        "Internal": bool(state.get("internal")),
        "EnableIPv6": bool(state.get("ipv6")),
        "Subnet6": state.get("subnet6") or (cfg["subnet6"] if bridge == cfg["bridge"] else None),
        "Gateway6": state.get("gateway6"),
        "MTU": state.get("mtu") or cfg["mtu"],
        "Options": state.get("options", {}),
        "DNS": DNS_ADDR if state.get("user") else None,
        "BridgeCreatedByPyinspect": bool(state.get("bridge_created")),
        "Containers": members,
        "Sysctls": sysctl.report([state]),
        "Iptables": {
            "backend": backend,
            "show": f"{iptables.show_command(backend)} -t nat -nvL {portmap.NAT_CHAIN}",
            "show6": f"{iptables.show_command(backend, 6)} -t nat -nvL {portmap.NAT_CHAIN}",
            "chains": {
                "nat": [portmap.NAT_CHAIN],
                "filter": [
                    portmap.FORWARD_CHAIN,
                    portmap.FILTER_CHAIN,
                    portmap.ISOLATION1,
                    portmap.ISOLATION2,
                ],
            },
        },
    }
