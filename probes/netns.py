"""Netlink (rtnetlink) sockets bound to any network namespace, without forking or exec.

A netlink socket belongs to the network namespace of the thread that created it.
`RtnlSocket(ns_fd)` enters the namespace with setns(2) on the calling thread only,
creates the socket, and returns to the thread's own namespace at once; the socket
then answers for that namespace for as long as it lives. This is ~50x faster than
pyroute2's `IPRoute(netns=...)`, which forks a helper process per socket (0.6 ms vs
29 ms per namespace, bench/vethmap_scale.py; docs/vethmap.md).

Dumps (links, addresses) and RTM_GETNSID are encoded and decoded here with struct,
reading only the attributes the veth map needs (pyroute2's generic decoder cost more
than the syscalls: a 43-namespace map took 218 ms with it, 46 ms without).
Multicast notifications (`recv_events`, the links probe) use pyroute2's decoder.
"""

import contextlib
import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import (
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETNSID,
    RTM_GETROUTE,
    RTMGRP_LINK,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from pyinspect.errors import UnavailableError

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
NSID_NOT_ASSIGNED = -1
NETNSA_NSID, NETNSA_FD = 1, 3
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_EXT_MASK = 16, 18, 1, 29
IFLA_LINK_NETNSID, IFLA_NEW_NETNSID, IFLA_NEW_IFINDEX = 37, 45, 49
IFLA_STATS64 = 23  # struct rtnl_link_stats64: rx/tx packets, rx/tx bytes, ... (u64 each)
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
NDA_DST = 1
NDA_LLADDR = 2
RT_TABLE_MAIN = 254
RTEXT_FILTER_SKIP_STATS = 1 << 3
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
NLA_TYPE_MASK = 0x3FFF
NLM_F_DUMP_INTR = 0x10

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace behind `fd`."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(path: str | None) -> Iterator[None]:
    """Run the body with this thread in the network namespace at `path` (None: stay), then
    come back. Entering fails with UnavailableError; not coming back ends the process (the
    thread would go on acting in the wrong namespace)."""
    if not path:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
    except OSError as exc:
        os.close(own)
        raise UnavailableError(f"cannot enter network namespace {path}: {exc.strerror}") from None
    try:
        try:
            setns(target)
        except OSError as exc:
            raise UnavailableError(
                f"cannot enter network namespace {path}: {exc.strerror}"
            ) from None
        try:
            yield
        finally:
            try:
                setns(own)
            except OSError as exc:
                raise SystemExit(
                    f"pyinspect: cannot return to the original network namespace: {exc.strerror}"
                ) from None
    finally:
        os.close(target)
        os.close(own)


def list_netns(processes: bool = True) -> dict[int, tuple[list[str], list[str]]]:
    """{inode: ([paths], [ip netns names])} for every network namespace reachable now:
    `/run/netns` names, nsfs bind mounts, and (processes=True) /proc/<pid>/ns/net."""
    nsfs = os.stat("/proc/self/ns/net").st_dev
    out: dict[int, tuple[list[str], list[str]]] = {}
    try:
        names = sorted(os.listdir("/run/netns"))
    except OSError:
        names = []
    for name in names:
        path = f"/run/netns/{name}"
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_dev == nsfs:
            entry = out.setdefault(st.st_ino, ([], []))
            entry[0].append(path)
            entry[1].append(name)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fields = pre.split()
                if post.startswith("nsfs ") and fields[3].startswith("net:["):
                    entry = out.setdefault(int(fields[3][5:-1]), ([], []))
                    if fields[4] not in entry[0]:
                        entry[0].append(fields[4])
    except (OSError, ValueError):
        pass
    if processes:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            path = f"/proc/{pid}/ns/net"
            try:
                ino = os.stat(path).st_ino
            except OSError:
                continue
            entry = out.setdefault(ino, ([], []))
            if len(entry[0]) < 3:
                entry[0].append(path)
    return out


def open_ns(path: str) -> tuple[int, int]:
    """Open a namespace file read-only; returns (fd, inode). OSError if it is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd).st_ino
    except OSError:
        os.close(fd)
        raise


def netlink_socket_in(ns_fd: int | None = None, groups: int = 0) -> socket.socket:
    """A bound NETLINK_ROUTE socket created inside the netns `ns_fd` (None: our own)."""
    if ns_fd is None or os.fstat(ns_fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    else:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(ns_fd)
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            finally:
                setns(home)
        finally:
            os.close(home)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


class RtnlSocket:
    """Dumps and queries over one rtnetlink socket living in one network namespace."""

    def __init__(self, ns_fd: int | None = None, groups: int = 0) -> None:
        self.sock = netlink_socket_in(ns_fd, groups)
        self.marshal: Any = None  # pyroute2's decoder, made on first recv_events()
        self.seq = 0
        self.interrupted = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RtnlSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _request(
        self, msg_type: int, flags: int, body: bytes
    ) -> Iterator[tuple[int, bytes, int, int]]:
        """Send one request; yield (type, data, offset, length) of each reply to it."""
        self.seq += 1
        seq = self.seq
        self.sock.send(struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body)
        self.interrupted = False
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, mtype, mflags, mseq, _pid = struct.unpack_from("=IHHII", data, off)
                if length < 16:
                    break
                if mseq == seq:
                    if mflags & NLM_F_DUMP_INTR:
                        self.interrupted = True
                    if mtype == NLMSG_DONE:
                        return
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, off + 16)[0]
                        if code:
                            raise OSError(code, os.strerror(code))
                        return  # an ACK
                    yield mtype, data, off, length
                    if not flags & NLM_F_DUMP:
                        return
                off += (length + 3) & ~3

    def _dump(
        self,
        msg_type: int,
        body: bytes,
        decode: Callable[[bytes, int, int], dict],
        attempts: int = 5,
    ) -> list[dict]:
        """A whole dump, decoded; redone if the kernel flags it as changed meanwhile
        (NLM_F_DUMP_INTR: links came or went during the dump)."""
        for _ in range(attempts):
            out = [
                decode(d, o, n)
                for _t, d, o, n in self._request(msg_type, NLM_F_REQUEST | NLM_F_DUMP, body)
            ]
            if not self.interrupted:
                break
        return out

    def links(self, stats: bool = False) -> list[dict]:
        """RTM_GETLINK dump: every link in this namespace, as `decode_link` dicts (with the
        kernel's rx/tx packet and byte counters when `stats`)."""
        body = struct.pack("=BxHiII", 0, 0, 0, 0, 0)
        if not stats:
            body += struct.pack("=HHI", 8, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
        return self._dump(RTM_GETLINK, body, decode_link)

    def addrs(self) -> list[dict]:
        """RTM_GETADDR dump: every address in this namespace, as `decode_addr` dicts."""
        return self._dump(RTM_GETADDR, struct.pack("=BBBBI", 0, 0, 0, 0, 0), decode_addr)

    def routes(self, family: int = socket.AF_INET, table: int = RT_TABLE_MAIN) -> list[dict]:
        """RTM_GETROUTE dump of one routing table, as `decode_route` dicts."""
        body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0)
        return [r for r in self._dump(RTM_GETROUTE, body, decode_route) if r["table"] == table]

    def route_get(self, dst: str) -> int | None:
        """The ifindex the kernel would send a packet to `dst` out of (`ip route get`), or
        None when it has no route."""
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        raw = socket.inet_pton(fam, dst)
        body = (
            struct.pack("=BBBBBBBBI", fam, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0)
            + struct.pack("=HH", 4 + len(raw), RTA_DST)
            + raw
        )
        try:
            for _t, data, off, length in self._request(RTM_GETROUTE, NLM_F_REQUEST, body):
                return decode_route(data, off, length)["oif"]
        except OSError:  # ENETUNREACH, EHOSTUNREACH...: no route
            return None
        return None

    def neighbours(self, family: int = socket.AF_INET) -> list[dict]:
        """RTM_GETNEIGH dump: the neighbour table, as `decode_neigh` dicts."""
        body = struct.pack("=BxxxiHBB", family, 0, 0, 0, 0)
        return self._dump(RTM_GETNEIGH, body, decode_neigh)

    def nsid_of(self, fd: int) -> int | None:
        """The id this namespace gives the namespace behind `fd`, or None (RTM_GETNSID).

        Read-only: the kernel does not assign an id for this query.
        """
        body = struct.pack("=Bxxx", 0) + struct.pack("=HHI", 8, NETNSA_FD, fd)
        try:
            for _t, data, off, length in self._request(RTM_GETNSID, NLM_F_REQUEST, body):
                for atype, aoff, _alen in _attrs(data, off + 20, off + length):
                    if atype == NETNSA_NSID:
                        nsid = struct.unpack_from("=i", data, aoff)[0]
                        return None if nsid == NSID_NOT_ASSIGNED else nsid
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
                return None
            raise
        return None

    def recv_events(self) -> list:
        """Read one batch of multicast messages (blocks unless the socket is non-blocking)."""
        if self.marshal is None:
            self.marshal = MarshalRtnl()
        data = self.sock.recv(1 << 20)
        return list(self.marshal.parse(data))


LINK_GROUPS = RTMGRP_LINK  # link notifications only (addresses would only fill the buffer)


def _attrs(data: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload offset, payload length) of each netlink attribute in data[off:end]."""
    while off + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            return
        yield atype & NLA_TYPE_MASK, off + 4, alen - 4
        off += (alen + 3) & ~3


def _cstr(data: bytes, off: int, n: int) -> str:
    return bytes(data[off : off + n]).split(b"\0", 1)[0].decode(errors="replace")


def decode_link(data: bytes, off: int, length: int) -> dict[str, Any]:
    """An RTM_NEWLINK message as a dict (index, flags, ifname, kind, link, link_netnsid...)."""
    family, _type, index, flags, _change = struct.unpack_from("=BxHiII", data, off + 16)
    out: dict[str, Any] = {
        "index": index,
        "family": family,
        "flags": flags,
        "ifname": None,
        "address": None,
        "mtu": None,
        "link": None,
        "master": None,
        "operstate": None,
        "kind": None,
        "link_netnsid": None,
        "new_netnsid": None,
        "new_ifindex": None,
    }
    for atype, aoff, alen in _attrs(data, off + 32, off + length):
        if atype == IFLA_IFNAME:
            out["ifname"] = _cstr(data, aoff, alen)
        elif atype == IFLA_ADDRESS:
            out["address"] = ":".join(f"{b:02x}" for b in data[aoff : aoff + alen])
        elif atype == IFLA_MTU:
            out["mtu"] = struct.unpack_from("=I", data, aoff)[0]
        elif atype == IFLA_LINK:
            out["link"] = struct.unpack_from("=I", data, aoff)[0]
        elif atype == IFLA_MASTER:
            out["master"] = struct.unpack_from("=I", data, aoff)[0]
        elif atype == IFLA_OPERSTATE:
            op = data[aoff]
            out["operstate"] = OPERSTATES[op] if op < len(OPERSTATES) else str(op)
        elif atype == IFLA_LINK_NETNSID:
            out["link_netnsid"] = struct.unpack_from("=i", data, aoff)[0]
        elif atype == IFLA_NEW_NETNSID:
            out["new_netnsid"] = struct.unpack_from("=i", data, aoff)[0]
        elif atype == IFLA_NEW_IFINDEX:
            out["new_ifindex"] = struct.unpack_from("=i", data, aoff)[0]
        elif atype == IFLA_LINKINFO:
            for itype, ioff, ilen in _attrs(data, aoff, aoff + alen):
                if itype == IFLA_INFO_KIND:
                    out["kind"] = _cstr(data, ioff, ilen)
        elif atype == IFLA_STATS64 and alen >= 64:
            (
                out["rx_packets"],
                out["tx_packets"],
                out["rx_bytes"],
                out["tx_bytes"],
                out["rx_errors"],
                out["tx_errors"],
                out["rx_dropped"],
                out["tx_dropped"],
            ) = struct.unpack_from("=8Q", data, aoff)
    return out


def decode_addr(data: bytes, off: int, length: int) -> dict[str, Any]:
    """An RTM_NEWADDR message as a dict (index, family, prefixlen, address)."""
    family, prefixlen, _flags, _scope, index = struct.unpack_from("=BBBBI", data, off + 16)
    local = address = None
    for atype, aoff, alen in _attrs(data, off + 24, off + length):
        if atype in (IFA_LOCAL, IFA_ADDRESS):
            raw = bytes(data[aoff : aoff + alen])
            fam = socket.AF_INET if alen == 4 else socket.AF_INET6
            text = socket.inet_ntop(fam, raw)
            if atype == IFA_LOCAL:
                local = text
            else:
                address = text
    return {"index": index, "family": family, "prefixlen": prefixlen, "address": local or address}


def decode_route(data: bytes, off: int, length: int) -> dict[str, Any]:
    """An RTM_NEWROUTE message as a dict (family, table, dst or None, dst_len, gateway, oif)."""
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = struct.unpack_from(
        "=BBBBBBBBI", data, off + 16
    )
    out: dict[str, Any] = {
        "family": family,
        "table": table,
        "type": rtype,
        "dst": None,
        "dst_len": dst_len,
        "gateway": None,
        "oif": None,
    }
    for atype, aoff, alen in _attrs(data, off + 28, off + length):
        if atype in (RTA_DST, RTA_GATEWAY):
            text = socket.inet_ntop(
                socket.AF_INET if alen == 4 else socket.AF_INET6, bytes(data[aoff : aoff + alen])
            )
            out["dst" if atype == RTA_DST else "gateway"] = text
        elif atype == RTA_OIF:
            out["oif"] = struct.unpack_from("=I", data, aoff)[0]
        elif atype == RTA_TABLE:
            out["table"] = struct.unpack_from("=I", data, aoff)[0]
    return out


def decode_neigh(data: bytes, off: int, length: int) -> dict[str, Any]:
    """An RTM_NEWNEIGH message as a dict (ifindex, state, ip, mac: None when unresolved)."""
    family, ifindex, state, _flags, _type = struct.unpack_from("=BxxxiHBB", data, off + 16)
    out: dict[str, Any] = {
        "family": family,
        "ifindex": ifindex,
        "state": state,
        "ip": None,
        "mac": None,
    }
    for atype, aoff, alen in _attrs(data, off + 28, off + length):
        if atype == NDA_DST:
            out["ip"] = socket.inet_ntop(
                socket.AF_INET if alen == 4 else socket.AF_INET6, bytes(data[aoff : aoff + alen])
            )
        elif atype == NDA_LLADDR:
            out["mac"] = ":".join(f"{b:02x}" for b in data[aoff : aoff + alen])
    return out


def link_from_message(msg: Any) -> dict[str, Any]:
    """A pyroute2 ifinfmsg (from recv_events) as the same dict `decode_link` returns."""
    op = msg.get_attr("IFLA_OPERSTATE")
    return {
        "index": msg["index"],
        "family": msg["family"],
        "flags": msg["flags"],
        "ifname": msg.get_attr("IFLA_IFNAME"),
        "address": msg.get_attr("IFLA_ADDRESS"),
        "mtu": msg.get_attr("IFLA_MTU"),
        "link": msg.get_attr("IFLA_LINK"),
        "master": msg.get_attr("IFLA_MASTER"),
        "operstate": op,
        "kind": msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND"),
        "link_netnsid": msg.get_attr("IFLA_LINK_NETNSID"),
        "new_netnsid": msg.get_attr("IFLA_NEW_NETNSID"),
        "new_ifindex": msg.get_attr("IFLA_NEW_IFINDEX"),
    }
