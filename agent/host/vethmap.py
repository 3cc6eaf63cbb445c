"""The veth map: every interface in every network namespace, with its peer and container.

This is the usual `cat /sys/class/net/eth0/iflink` + `grep -l $iflink
/sys/class/net/veth*/ifindex` loop, done from netlink for every namespace at once and
without exec'ing anything into a container:

1. find every network namespace: the host's, `ip netns` names (/run/netns), nsfs bind
   mounts (Docker's /run/docker/netns/...), and each process's /proc/<pid>/ns/net,
   deduplicated by inode;
2. open each namespace file and dump links and addresses over a netlink socket created
   inside it (setns on this thread only, see `pyinspect.probes.netns`);
3. a veth's IFLA_LINK is its peer's ifindex; IFLA_LINK_NETNSID (absent when the peer is
   in the same namespace) is the peer namespace's id *as seen from this namespace*.
   Ids are resolved to namespaces with RTM_GETNSID queries on the same socket against
   the namespace fds we hold, never by guessing from ifindex numbers alone;
4. attach the owning container (`pyinspect.host.discovery`) by namespace inode.
"""

import errno
import json
import os
import time

from .discovery import Resolver, containers, host_namespaces, named_netns, scan_processes

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
IFF_LOWER_UP = 0x10000  # the link has carrier
COUNTERS = ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped")
COLUMNS = ("NETNS", "IFINDEX", "IFNAME", "PEER", "MASTER", "MAC", "ADDRS", "CONTAINER")


def _nsfs_mounts():
    """{inode: [mount points]} of network namespace files bind-mounted anywhere."""
    out: dict[int, list[str]] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                if not post.startswith("nsfs "):
                    continue
                fields = pre.split()
                root, mnt = fields[3], fields[4]
                if root.startswith("net:["):
                    ino = int(root[5:-1])
                    out.setdefault(ino, []).append(mnt.replace("\\040", " "))
    except (OSError, ValueError):
        pass
    return out


def namespaces(procs=None, host=None):
    """{inode: {"paths": [...], "names": [...], "pids": [...], "host": bool}} for every netns."""
    procs = scan_processes() if procs is None else procs
    host = host_namespaces() if host is None else host
    out: dict[int, dict] = {}

    def entry(ino):
        return out.setdefault(
            ino, {"inode": ino, "paths": [], "names": [], "pids": [], "host": ino == host["net"]}
        )

    for ino, names in named_netns().items():
        e = entry(ino)
        e["names"] = names
        e["paths"] += [f"/run/netns/{n}" for n in names]
    for ino, mnts in _nsfs_mounts().items():
        e = entry(ino)
        e["paths"] += [m for m in mnts if m not in e["paths"]]
    for pid, ns in sorted(procs.items()):
        e = entry(ns["net"])
        e["pids"].append(pid)
    for e in out.values():
        e["paths"] += [f"/proc/{p}/ns/net" for p in e["pids"][:3]]
    if host["net"] not in out:
        entry(host["net"])["paths"] += ["/proc/2/ns/net", "/proc/1/ns/net"]
    return out


def _open(e):
    """An fd for the namespace `e`; OSError (the last one) if no path to it works."""
    from ..probes.netns import open_ns

    last = OSError(errno.ENOENT, "no path to the namespace")
    for path in e["paths"]:
        try:
            fd, ino = open_ns(path)
        except OSError as exc:
            last = exc
            continue
        if ino == e["inode"]:
            return fd
        os.close(fd)
    raise last


def _kind(link):
    if link["kind"]:
        return link["kind"]
    return "loopback" if link["flags"] & IFF_LOOPBACK else "device"


class _Ns:
    """One open namespace: its fd, socket, links and addresses."""

    def __init__(self, info, fd):
        from ..probes.netns import RtnlSocket

        self.info, self.fd, self.inode = info, fd, info["inode"]
        self.sock = RtnlSocket(fd)
        self.links = {ln["index"]: ln for ln in self.sock.links(stats=True)}
        self.addrs: dict[int, list[str]] = {}
        for a in self.sock.addrs():
            if a["address"]:
                self.addrs.setdefault(a["index"], []).append(f"{a['address']}/{a['prefixlen']}")
        self.nsids = {}  # nsid (as seen from here) -> inode, filled on demand
        self.asked = set()

    def close(self):
        self.sock.close()
        os.close(self.fd)


def _peer_index(idx, link):
    """The peer's (or lower device's) ifindex, or None.

    In another namespace it may equal our own ifindex (both ends are often ifindex 2);
    in the same namespace an IFLA_LINK equal to our own index means "no link", and 0
    means the peer is gone.
    """
    peer = link["link"]
    if link["link_netnsid"] is not None:
        return peer if peer else (idx if peer is None else None)
    return peer if peer and peer != idx else None


def _resolve_nsid(ns, nsid, peer_ifindex, my_ifindex, all_ns, by_pair):
    """The namespace (`_Ns`) that `ns` calls `nsid`, asking the kernel (RTM_GETNSID).

    Namespaces holding the expected peer (ifindex `peer_ifindex` whose own link is
    `my_ifindex`) are asked first; the kernel's answer decides, not the match.
    """
    if nsid in ns.nsids:
        return all_ns.get(ns.nsids[nsid])
    likely = by_pair.get((peer_ifindex, my_ifindex), [])
    for other in likely + [o for o in all_ns.values() if o not in likely]:
        if other is ns or other.inode in ns.asked:
            continue
        ns.asked.add(other.inode)
        got = ns.sock.nsid_of(other.fd)
        if got is not None:
            ns.nsids[got] = other.inode
        if got == nsid:
            return other
    return None


def owners(found, host):
    """{netns inode: Discovered} of running containers, the best-ranked source's."""
    rank = Resolver.SOURCE_RANK
    out: dict = {}
    for d in sorted(
        found,
        key=lambda d: (
            rank.get(d.source, 3),
            str(d.detail.get("network_mode")).startswith("container:"),
            d.name,
        ),
    ):
        if d.netns and d.netns != host["net"] and d.pid:
            out.setdefault(d.netns, d)
    return out


def _attach(kind, owner, peer_owner):
    """The container an interface belongs to: its namespace's, or for a host-side veth
    the one its peer sits in. A real container (pyinspect, runc, Docker...) wins over a
    bare foreign namespace, so a veth in a netns that merely plays the host (and holds
    shim processes) is still attached to the container at its other end."""

    def real(d):
        return d is not None and d.source not in ("netns", "pidns")

    if real(owner):
        return owner
    if kind == "veth" and real(peer_owner):
        return peer_owner
    return owner or (peer_owner if kind == "veth" else None)


def _label(info, owner):
    if info["host"]:
        return "host"
    if info["names"]:
        return info["names"][0]
    if owner is not None:
        return owner.name
    return f"netns:{info['inode']}"


def build(root=None, found=None, errors=None, procs=None, host=None):
    """Every interface of every network namespace, as dicts (see docs/vethmap.md).

    Namespaces that cannot be read (gone meanwhile, or no permission to setns) are
    skipped; pass a list as `errors` to receive (inode, reason) for each. `procs` and
    `host` (from `discovery.scan_processes()` / `host_namespaces()`) save a second scan."""
    procs = scan_processes() if procs is None else procs
    host = host_namespaces() if host is None else host
    if found is None:
        found = containers(root, procs=procs, host=host)
    by_netns = owners(found, host)
    infos = namespaces(procs, host)
    opened = {}
    unreadable = []
    try:
        for ino, info in infos.items():
            try:
                fd = _open(info)
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EACCES):
                    unreadable.append((ino, exc.strerror))
                continue  # otherwise it went away while we looked
            try:
                opened[ino] = _Ns(info, fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EPERM, errno.EACCES):
                    unreadable.append((ino, exc.strerror))
        by_pair: dict = {}  # (ifindex, its IFLA_LINK) -> namespaces holding such a link
        for ns in opened.values():
            for idx, link in ns.links.items():
                peer_idx = _peer_index(idx, link)
                if peer_idx is not None:
                    by_pair.setdefault((idx, peer_idx), []).append(ns)
        rows = []
        for ns in opened.values():
            owner = by_netns.get(ns.inode)
            for idx, link in sorted(ns.links.items()):
                rows.append(_row(ns, idx, link, owner, opened, by_netns, by_pair))
    finally:
        for ns in opened.values():
            ns.close()
    rows.sort(key=lambda r: (r["netns_name"] != "host", r["netns_name"], r["netns"], r["ifindex"]))
    if errors is not None:
        errors.extend(unreadable)
    return rows


def _row(ns, idx, link, owner, opened, by_netns, by_pair):
    info = ns.info
    iflink = link["link"]
    peer_idx = _peer_index(idx, link)
    nsid = link["link_netnsid"]
    master_idx = link["master"]
    master = ns.links.get(master_idx) if master_idx else None
    kind = _kind(link)
    peer_ns, peer = None, None
    if peer_idx is not None:
        if nsid is None:
            peer_ns = ns
        else:
            peer_ns = _resolve_nsid(ns, nsid, peer_idx, idx, opened, by_pair)
        peer = peer_ns.links.get(peer_idx) if peer_ns else None
    peer_owner = by_netns.get(peer_ns.inode) if peer_ns is not None else None
    attached = _attach(kind, owner, peer_owner)
    return {
        "netns": ns.inode,
        "netns_name": _label(info, owner),
        "netns_names": list(info["names"]),
        "netns_owner": owner.name if owner else None,
        "ifindex": idx,
        "ifname": link["ifname"],
        "kind": kind,
        "iflink": iflink or idx,
        "link_netnsid": nsid,
        "peer_ifindex": peer_idx,
        "peer_ifname": peer["ifname"] if peer is not None else None,
        "peer_netns": peer_ns.inode if peer_ns is not None else None,
        "peer_netns_name": (
            _label(peer_ns.info, peer_owner)
            if peer_ns is not None
            else (f"nsid:{nsid}" if nsid is not None else None)
        ),
        "mac": link["address"],
        "addrs": ns.addrs.get(idx, []),
        "master": master["ifname"] if master is not None else None,
        "master_ifindex": master_idx or None,
        "state": link["operstate"],
        "up": bool(link["flags"] & IFF_UP),
        "carrier": bool(link["flags"] & IFF_LOWER_UP),
        "mtu": link["mtu"],
        **{k: link.get(k) for k in COUNTERS},
        "container_id": attached.id if attached else None,
        "container_name": attached.name if attached else None,
    }


TABLE_COLUMNS = (
    "netns",
    "netns_name",
    "ifindex",
    "ifname",
    "kind",
    "iflink",
    "peer_ifname",
    "peer_netns",
    "mac",
    "addrs",
    "master",
    "state",
    "container_id",
    "container_name",
)


def snapshot(store, rows=None, root=None):
    """Write one snapshot of the map into the `interfaces` table; returns its snapshot_ns."""
    rows = build(root) if rows is None else rows
    ts = time.time_ns()
    out = []
    for r in rows:
        row = {k: r.get(k) for k in TABLE_COLUMNS}
        row["addrs"] = json.dumps(r.get("addrs") or [])
        row["snapshot_ns"] = ts
        out.append(row)
    store.insert_interfaces(out)
    return ts


def latest(store):
    """The rows of the most recent snapshot in the store (addrs decoded)."""
    rows = store.latest_interfaces()
    for r in rows:
        r["addrs"] = json.loads(r["addrs"] or "[]")
    return rows


def peer_label(row):
    """`ifname@netns` of the peer (or lower device), or '-'."""
    if row.get("peer_ifindex") is None and row.get("peer_ifname") is None:
        return "-"
    name = row.get("peer_ifname") or f"if{row.get('peer_ifindex')}"
    where = row.get("peer_netns_name")
    if where is None or row.get("peer_netns") == row.get("netns"):
        return name
    return f"{name}@{where}"
