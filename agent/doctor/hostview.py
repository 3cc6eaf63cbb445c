"""Doctor's read-only snapshot of the host network namespace and its containers.

The host is the network namespace of the calling thread (so tests and users can run
doctor inside any namespace with `nsenter --net=`). `HostView.collect()` reads iptables
rules of BOTH backends and the native nft tables (probes.iptsave), sysctls
(runtime.sysctl), links, routes and neighbours (probes.netns), conntrack counters, and
every container namespace whose veth peers sit in this namespace (pyinspect's, runc's,
Docker's or a bare `ip netns`: found by `pyinspect.host.discovery`, paired by
`pyinspect.host.vethmap`), with its links, routes, listening sockets (/proc/<pid>/net/tcp) and
memory cgroup.
"""

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..probes import iptsave as ipt
from ..probes.netns import RtnlSocket, in_netns
from ..runtime import cgroups as host_cgroups
from ..runtime import sysctl as host_sysctl
from .model import ContainerView, Link, PortMapping, Socket

if TYPE_CHECKING:
    from ..host.discovery import Discovered

# -- namespaces -------------------------------------------------------------------


def _ino(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _links_and_routes() -> tuple[dict[str, Link], list[dict]]:
    """Links (with IPv4 addresses) and IPv4 main-table routes of this thread's netns."""
    with RtnlSocket() as rtnl:
        msgs = rtnl.links()
        names = {m["index"]: m["ifname"] for m in msgs}
        by_index: dict[int, Link] = {}
        for m in msgs:
            link = Link(
                m["index"],
                m["ifname"],
                m["kind"] or "",
                bool(m["flags"] & 1),
                m["operstate"] or "",
                m["mtu"] or 0,
                names.get(m["master"]),
                m["link"],
                m["link_netnsid"],
                [],
                mac=m.get("address"),
            )
            by_index[link.ifindex] = link
        for a in rtnl.addrs():
            owner = by_index.get(a["index"])
            if owner and a["family"] == socket.AF_INET:
                owner.addrs.append((a["address"], a["prefixlen"]))
        routes = []
        for r in rtnl.routes(socket.AF_INET):
            oif = by_index.get(r["oif"])
            routes.append(
                {
                    "dst": f"{r['dst']}/{r['dst_len']}" if r["dst"] else "default",
                    "gateway": r["gateway"],
                    "dev": oif.name if oif else None,
                }
            )
    return {link.name: link for link in by_index.values()}, routes


def _route_get(ip: str) -> str | None:
    """The name of the interface this netns routes `ip` out of, or None (no route)."""
    try:
        with RtnlSocket() as rtnl:
            idx = rtnl.route_get(ip)
            if not idx:
                return None
            return next((m["ifname"] for m in rtnl.links() if m["index"] == idx), None)
    except OSError:  # netlink refused
        return None


def _hex_addr(text: str, v6: bool) -> str:
    raw = bytes.fromhex(text)
    if v6:
        words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
        return str(ipaddress.IPv6Address(b"".join(words)))
    return str(ipaddress.IPv4Address(raw[::-1]))


def parse_proc_net(text: str, proto: str, v6: bool) -> list[Socket]:
    """Listening TCP / bound UDP sockets from /proc/<pid>/net/{tcp,tcp6,udp,udp6} text."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4:
            continue
        state = f[3]
        if (proto == "tcp" and state != "0A") or (proto == "udp" and state != "07"):
            continue
        addr, _, port = f[1].partition(":")
        out.append(Socket(proto, _hex_addr(addr, v6), int(port, 16)))
    return out


def listeners(proc_net_dir: str) -> list[Socket]:
    """Listening sockets read from a /proc/.../net directory."""
    out = []
    for name, proto, v6 in (
        ("tcp", "tcp", False),
        ("tcp6", "tcp", True),
        ("udp", "udp", False),
        ("udp6", "udp", True),
    ):
        try:
            with open(f"{proc_net_dir}/{name}") as f:
                out += parse_proc_net(f.read(), proto, v6)
        except OSError:
            pass
    return out


def _bridge_ports() -> dict[str, bool]:
    """{port name: hairpin bool} from `bridge -j -d link show` (this netns)."""
    try:
        proc = subprocess.run(
            ["bridge", "-j", "-d", "link", "show"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return {p["ifname"]: bool(p.get("hairpin")) for p in json.loads(proc.stdout or "[]")}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def _nft_native_chains(nft: ipt.NftRuleset, unreadable: dict[str, str]) -> list[dict]:
    """Base chains iptables-*-save does not show (tables iptables-nft does not own:
    firewalld, nftables.conf; and base chains made with nft in its own tables, `unreadable`)
    from one ruleset read (`iptsave.read_nft_rules`): [{family, table, chain, hook,
    policy, rules: [expr JSON text]}]. Every packet passes them too."""
    chains = {}
    for c in nft.base_chains(skip_prefix="pyinspect_trace_"):
        if not nft.hidden_from_iptables(c, unreadable):
            continue
        chains[(c.family, c.table, c.name)] = {
            "family": c.family,
            "table": c.table,
            "chain": c.name,
            "hook": c.hook,
            "policy": c.policy or "accept",
            "rules": [
                json.dumps(nft.rules[(c.family, c.table, c.name, h)].expr, sort_keys=True)
                for h in nft.order.get((c.family, c.table, c.name), [])
            ],
        }
    return list(chains.values())


def _veth_pairs(
    rows: list[dict], host_ino: int | None, host_veths: dict[int, Link]
) -> dict[int, tuple[int, Link]]:
    """{netns inode: (container-side ifindex, host-side Link)} for the veths of this
    netns (`host_ino`) whose peer sits in another namespace; the lowest peer ifindex
    when a namespace has several."""
    out: dict[int, tuple[int, Link]] = {}
    for r in rows:
        hv = host_veths.get(r["ifindex"])
        if r["netns"] != host_ino or r["kind"] != "veth" or hv is None:
            continue
        ino, peer = r["peer_netns"], r["peer_ifindex"]
        if ino is None or ino == host_ino or peer is None or r["peer_ifname"] is None:
            continue
        if ino not in out or peer < out[ino][0]:
            out[ino] = (peer, hv)
    return out


def _ns_path(info: dict) -> str | None:
    """The first path to the namespace (`vethmap.namespaces()` entry) that still is it:
    its `ip netns` name, a bind mount (Docker's /run/docker/netns/...), a process's."""
    for path in info["paths"]:
        if _ino(path) == info["inode"]:
            return path
    return None


def _ns_label(path: str, owner: "Discovered | None") -> tuple[str, str, str]:
    """(name, id, source) of a container namespace: its owner's (discovery), else the
    namespace file's name, else `pid<N>` of the process whose /proc/<N>/ns/net it is."""
    if owner is None:
        if path.startswith("/proc/"):
            return f"pid{path.split('/')[2]}", "", "process"
        return os.path.basename(path), "", "netns"
    name = owner.name
    if name == owner.id and len(name) == 64:
        name = name[:12]  # a bare runc/Docker id, shortened as `docker ps` does
    return name, owner.id, owner.source


def _any_addr(ip: str | None) -> str:
    """'' for "every address" (0.0.0.0, ::, none), else the address."""
    return "" if not ip or ip in ("0.0.0.0", "::") else ip


def _memory_cgroup(pid: int) -> tuple[str, str] | None:
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    v2 = None
    for line in lines:
        hid, ctrls, path = line.split(":", 2)
        if "memory" in ctrls.split(","):
            return ("v1", path)
        if hid == "0" and ctrls == "":
            v2 = ("v2", path)
    return v2


def _read_int_file(path: str | Path, key: str | None = None) -> int | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    if key is None:
        t = text.strip()
        return None if t == "max" else int(t)
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return None


def memory_info(pid: int) -> dict:
    """OOM counters and limit of the memory cgroup `pid` is in (None at the root)."""
    cg = _memory_cgroup(pid)
    if not cg or cg[1] in ("/", ""):
        return {}
    ver, path = cg
    if ver == "v1":
        base = f"/sys/fs/cgroup/memory{path}"
        return {
            "cgroup": base,
            "version": 1,
            "oom_kill": _read_int_file(f"{base}/memory.oom_control", "oom_kill"),
            "limit": _read_int_file(f"{base}/memory.limit_in_bytes"),
            "max_usage": _read_int_file(f"{base}/memory.max_usage_in_bytes"),
            "limit_file": f"{base}/memory.limit_in_bytes",
            "counter_file": f"{base}/memory.oom_control",
            "memsw": _read_int_file(f"{base}/memory.memsw.limit_in_bytes"),
            "memsw_file": f"{base}/memory.memsw.limit_in_bytes",
        }
    for mount in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        base = f"{mount}{path}"
        if os.path.exists(f"{base}/memory.events"):
            return {
                "cgroup": base,
                "version": 2,
                "oom_kill": _read_int_file(f"{base}/memory.events", "oom_kill"),
                "limit": _read_int_file(f"{base}/memory.max"),
                "max_usage": _read_int_file(f"{base}/memory.peak"),
                "limit_file": f"{base}/memory.max",
                "counter_file": f"{base}/memory.events",
            }
    return {}


# -- the snapshot ------------------------------------------------------------------
def container_rulesets() -> dict[str, ipt.Ruleset]:
    """A container's own firewall, read in this thread's network namespace: legacy and
    iptables-nft rules, and native nft tables (with what iptables-nft could not show of
    its own tables)."""
    out = {b: ipt.load(b) for b in ("legacy", "nft")}
    nft = ipt.read_nft_rules()
    out["nftables"] = (
        ipt.native_ruleset(nft, unreadable=out["nft"].unreadable)
        if not nft.error
        else ipt.Ruleset("nftables", {}, None if nft.error == "nft not installed" else nft.error)
    )
    return out


class HostView:
    """A read-only snapshot of the host network namespace and its containers."""

    def __init__(self, root: str | Path, port_filter: int | None = None) -> None:
        self.root = Path(root)
        self.port_filter = port_filter  # doctor --port: the host port asked about, if any
        self.notes: list[str] = []  # what could not be read, shown to the user
        self.memory: dict = {}  # doctor's remembered facts (store), key -> value
        self._sysctl: dict[str, str | None] = {}
        self._routes_get: dict[str, str | None] = {}
        # filled by collect()
        self.host_ino: int | None = None
        self.links: dict[str, Link] = {}
        self.routes: list[dict] = []
        self.rulesets: dict[str, ipt.Ruleset] = {}
        self.nft_native: list[dict] = []
        self.local_addrs: frozenset[str] = frozenset()
        self.neighbours: list[dict] = []
        self.conntrack: dict = {}
        self.netstat: dict[str, int] = {}
        self.host_sockets: list[Socket] = []
        self.containers: list[ContainerView] = []

    @classmethod
    def collect(
        cls, root: str | Path, memory: dict | None = None, port_filter: int | None = None
    ) -> "HostView":
        """Read everything doctor needs; `memory` is what earlier runs remembered."""
        view = cls(root, port_filter)
        view.memory = dict(memory or {})
        view.host_ino = _ino("/proc/thread-self/ns/net")
        view.links, view.routes = _links_and_routes()
        hairpin = _bridge_ports()
        if not hairpin and any(ln.master for ln in view.links.values()):
            view.notes.append(
                "bridge port flags unknown (`bridge -j -d link show` failed): hairpin not checked"
            )
        for name, flag in hairpin.items():
            if name in view.links:
                view.links[name].hairpin = flag
        # one read of the nft ruleset: native tables as a third rule set, and their chains
        nft = ipt.read_nft_rules()
        view.rulesets = {b: ipt.load(b) for b in ipt.BACKENDS if b != "nftables"}
        view.rulesets["nftables"] = (
            ipt.native_ruleset(nft, unreadable=view.rulesets["nft"].unreadable)
            if not nft.error
            else ipt.Ruleset("nftables", {})
        )
        for rs in view.rulesets.values():
            if rs.error:
                view.notes.append(f"iptables {rs.backend}: {rs.error}")
        if nft.error and nft.error != "nft not installed":
            view.notes.append(nft.error)
        unreadable = view.rulesets["nft"].unreadable
        view.nft_native = _nft_native_chains(nft, unreadable) if not nft.error else []
        view.local_addrs = frozenset(ip for ln in view.links.values() for ip, _ in ln.addrs)
        view.neighbours = view._neighbours()
        view.conntrack = view._conntrack()
        view.netstat = view._netstat()
        view.host_sockets = listeners("/proc/thread-self/net")
        view.containers = view._containers()
        return view

    # -- host facts
    def sysctl(self, key: str) -> str | None:
        if key not in self._sysctl:
            self._sysctl[key] = host_sysctl.read(key)
        return self._sysctl[key]

    def route_dev(self, ip: str) -> str | None:
        if ip not in self._routes_get:
            self._routes_get[ip] = _route_get(ip)
        return self._routes_get[ip]

    def bridges(self) -> list[Link]:
        return [ln for ln in self.links.values() if ln.kind == "bridge"]

    def bridge_for(self, ip: str) -> tuple[Link | None, str | None]:
        """The bridge whose subnet holds `ip`, and that bridge's own address there."""
        addr = ipaddress.ip_address(ip)
        for br in self.bridges():
            for bip, plen in br.addrs:
                if addr in ipaddress.ip_interface(f"{bip}/{plen}").network:
                    return br, bip
        return None, None

    def uplink(self) -> str | None:
        """The interface of the host's default route, or None."""
        for r in self.routes:
            if r["dst"] == "default":
                return r["dev"]
        return None

    def external_if(self) -> str:
        return self.uplink() or ipt.EXTERNAL_IF

    def public_addr(self) -> str:
        """A host address a client outside would use: the uplink's, else any non-bridge one."""
        up = self.links.get(self.uplink() or "")
        if up and up.addrs:
            return up.addrs[0][0]
        container_bridges = {c.host_veth.master for c in self.containers if c.host_veth}
        for ln in self.links.values():
            if ln.name == "lo" or ln.kind == "bridge" or ln.name in container_bridges:
                continue
            for ip, _ in ln.addrs:
                return ip
        for ln in self.links.values():
            if ln.name != "lo" and ln.addrs:
                return ln.addrs[0][0]
        return "127.0.0.1"

    def active_rulesets(self) -> list[ipt.Ruleset]:
        return [rs for rs in self.rulesets.values() if rs.tables]

    def _neighbours(self) -> list[dict]:
        by_index = {ln.ifindex: ln.name for ln in self.links.values()}
        try:
            with RtnlSocket() as rtnl:
                return [
                    {
                        "ip": n["ip"],
                        "dev": by_index.get(n["ifindex"]),
                        "state": n["state"],
                        "mac": n["mac"],
                    }
                    for n in rtnl.neighbours(socket.AF_INET)
                ]
        except OSError as exc:
            self.notes.append(f"neighbours: {exc}")
            return []

    def _conntrack(self) -> dict[str, Any]:
        count = host_sysctl.read("net.netfilter.nf_conntrack_count")
        cmax = host_sysctl.read("net.netfilter.nf_conntrack_max")
        stats: dict[str, int] = {}
        ct = {
            "count": int(count) if count else None,
            "max": int(cmax) if cmax else None,
            "max_writable": os.access(host_sysctl.path("net.netfilter.nf_conntrack_max"), os.W_OK),
            "stats": stats,
        }
        try:
            lines = Path("/proc/thread-self/net/stat/nf_conntrack").read_text().splitlines()
            head = lines[0].split()
            for line in lines[1:]:
                for k, v in zip(head, line.split(), strict=False):
                    if k != "entries":
                        stats[k] = stats.get(k, 0) + int(v, 16)
        except (OSError, IndexError, ValueError):
            pass
        return ct

    def _netstat(self) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            lines = Path("/proc/thread-self/net/netstat").read_text().splitlines()
        except OSError:
            return out
        for head, vals in zip(lines[::2], lines[1::2], strict=False):
            prefix = head.split(":")[0]
            for k, v in zip(head.split()[1:], vals.split()[1:], strict=False):
                out[f"{prefix}.{k}"] = int(v)
        return out

    # -- containers
    def _containers(self) -> list[ContainerView]:
        """Every namespace a veth of this netns leads to, named after the container
        that owns it (`pyinspect.host.discovery`), paired through the veth map (`vethmap`)."""
        host_veths = {
            ln.ifindex: ln
            for ln in self.links.values()
            if ln.kind == "veth" and ln.link_netnsid is not None
        }
        if not host_veths:
            return []
        from ..host import discovery, vethmap

        procs, host = discovery.scan_processes(), discovery.host_namespaces()
        found = discovery.containers(self.root, procs=procs, host=host, errors=self.notes)
        try:
            pairs = _veth_pairs(
                vethmap.build(self.root, found=found, procs=procs, host=host),
                self.host_ino,
                host_veths,
            )
        except Exception as exc:  # noqa: BLE001 - netlink refused: no container is paired
            self.notes.append(f"veth map: {exc}")
            pairs = {}
        owners = {
            ino: d
            for ino, d in vethmap.owners(found, host).items()
            if d.source not in ("netns", "pidns")
        }  # bare namespaces: named below
        infos = vethmap.namespaces(procs, host)
        own_memory = memory_info(os.getpid())  # a namespace in our own cgroup is not a container's
        out = []
        for ino, (eth_index, hv) in sorted(pairs.items()):
            info = infos.get(ino)
            path = _ns_path(info) if info else None
            if path is None:
                continue  # gone meanwhile
            pids = info["pids"]
            try:
                with in_netns(path):
                    links, routes = _links_and_routes()
                    eth = next((ln for ln in links.values() if ln.ifindex == eth_index), None)
                    if eth is None:
                        continue
                    socks = listeners(f"/proc/{pids[0]}/net" if pids else "/proc/thread-self/net")
                    ns_sysctls = {k: host_sysctl.read(k) for k in ("net.ipv4.ip_forward",)}
                    ns_rules = container_rulesets()  # its own firewall
            except Exception as exc:  # noqa: BLE001 - the namespace vanished, netlink refused
                self.notes.append(f"cannot read {path}: {exc}")
                continue
            name, cid, source = _ns_label(path, owners.get(ino))
            cv = ContainerView(
                name,
                cid,
                source,
                path,
                ino,
                sorted(pids),
                links,
                routes,
                socks,
                eth,
                hv,
                sysctls=ns_sysctls,
            )
            if eth.addrs:
                cv.ip, cv.prefixlen = eth.addrs[0]
            if source == "pyinspect":
                cv.declared = dict(owners[ino].detail.get("network") or {})
                for p in cv.declared.get("ports") or []:
                    cv.ports.append(
                        PortMapping(
                            p.get("proto", "tcp"),
                            _any_addr(p.get("host_ip")),
                            int(p["host_port"]),
                            int(p["container_port"]),
                            "pyinspect",
                        )
                    )
            cv.rulesets = {b: rs for b, rs in ns_rules.items() if rs.tables}
            for rs in ns_rules.values():
                if rs.error and not rs.error.endswith(("not found", "not installed")):
                    self.notes.append(
                        f"{name}: its own firewall ({rs.backend}) cannot be read, so it is "
                        f"not checked: {rs.error}"
                    )
            cv.frozen_by = host_cgroups.frozen_by(cv.pids[0]) if cv.pids else None
            if cv.pids:
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    cv.resolv_conf = Path(f"/proc/{cv.pids[0]}/root/etc/resolv.conf").read_text()
            for pid in cv.pids:
                mi = memory_info(pid)
                if mi and mi["cgroup"] != own_memory.get("cgroup"):
                    cv.memory = mi
                    break
            out.append(cv)
        # pyinspect containers that are not running (e.g. OOM-killed) still matter
        running = {c.id for c in out if c.id}
        for d in found:
            if d.source == "pyinspect" and d.id not in running and d.status != "running":
                cv = ContainerView(d.name, d.id, "pyinspect", "", 0, [])
                cv.status, cv.oom_killed = d.status, bool(d.detail.get("oom_killed"))
                cv.declared = dict(d.detail.get("network") or {})
                out.append(cv)
        self._infer_ports(out)
        return out

    def _infer_ports(self, containers: list[ContainerView]) -> None:
        """Attach DNAT rules to the containers whose address they send to."""
        by_ip = {c.ip: c for c in containers if c.ip}
        for rs in self.rulesets.values():
            for rule in rs.rules("nat"):
                tgt = ipt.dnat_target(rule)
                if not tgt or tgt[0] not in by_ip:
                    continue
                c = by_ip[tgt[0]]
                hport = rule.get("dport")
                if not hport or not hport.isdigit():
                    continue
                dst = rule.get("dst") or ""
                entry = PortMapping(
                    rule.get("proto") or "tcp",
                    _any_addr(dst.split("/")[0]),
                    int(hport),
                    tgt[1] or int(hport),
                    "rule",
                    rule,
                )
                if not any(
                    p.host_port == entry.host_port
                    and p.proto == entry.proto
                    and p.host_ip == entry.host_ip
                    for p in c.ports
                ):
                    c.ports.append(entry)
                else:
                    for p in c.ports:
                        if p.host_port == entry.host_port and p.rule is None:
                            p.rule = rule

    def container_by_ip(self, ip: str) -> ContainerView | None:
        for c in self.containers:
            if c.ip == ip:
                return c
        return None
