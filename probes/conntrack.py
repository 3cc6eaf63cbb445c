"""Conntrack events from ctnetlink (NEW/UPDATE/DESTROY), decoded by a direct attribute walk.

`ConntrackEvents(netns=None, match=callable)` opens a NETLINK_NETFILTER socket in the given
network namespace (conntrack is per namespace: open it where the NAT happens), subscribes to
the ctnetlink event groups and yields plain dicts:
    {ts_ns, kind: new|update|destroy, id, proto, orig: (src, sport, dst, dport),
     reply: (src, sport, dst, dport), status: [...], nat: 'dnat'|'snat'|'dnat+snat'|'',
     tcp_state}
`dump()` lists the current table once (same dicts, kind 'existing'). IPv4 and IPv6
alike: addresses are text (`inet_ntop`), IPv6 ones as `fd00::2`.

The decoder walks the netlink attributes with struct and reads only what the dict holds:
pyroute2's nfct_msg decoded every attribute into objects, ~1 ms an event here, which
made conntrack the largest cost of a trace's analysis under many short connections.
"""

import select
import socket
import struct
import time
from typing import Any

from pyinspect.errors import UnavailableError

from .netlink import NETLINK_NETFILTER, Receiver
from .netns import in_netns

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
IPS_SRC_NAT, IPS_DST_NAT = 16, 32
STATUS_BITS = [
    "EXPECTED",
    "SEEN_REPLY",
    "ASSURED",
    "CONFIRMED",
    "SRC_NAT",
    "DST_NAT",
    "SEQ_ADJUST",
    "SRC_NAT_DONE",
    "DST_NAT_DONE",
    "DYING",
    "FIXED_TIMEOUT",
    "TEMPLATE",
    "UNTRACKED",
    "HELPER",
    "OFFLOAD",
]
# attribute types (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_ID = 1, 2, 3, 4, 12
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
_NLA = struct.Struct("=HH")
GROUPS = 1 | 2 | 4  # NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY
NLM_F_CREATE = 0x400
PROTOS: dict[int | None, str] = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6", 132: "sctp"}
TCP_STATES = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
]


def _attrs(data: bytes, off: int, end: int) -> dict[int, tuple[int, int]]:
    """{type: (start, end)} of the attributes in data[off:end] (last one of a type wins)."""
    out: dict[int, tuple[int, int]] = {}
    unpack = _NLA.unpack_from
    while off + 4 <= end:
        ln, typ = unpack(data, off)
        if ln < 4:
            break
        out[typ & 0x3FFF] = (off + 4, off + ln)
        off += (ln + 3) & ~3
    return out


def _ip(data: bytes, span: tuple[int, int]) -> str:
    a, b = span
    return socket.inet_ntop(socket.AF_INET if b - a == 4 else socket.AF_INET6, data[a:b])


def _tuple(
    data: bytes, span: tuple[int, int]
) -> tuple[int | None, tuple[str | None, int, str | None, int]]:
    """A CTA_TUPLE_* nest -> (proto number, (src, sport, dst, dport))."""
    t = _attrs(data, *span)
    src = dst = None
    num, sport, dport = None, 0, 0
    if CTA_TUPLE_IP in t:
        ip = _attrs(data, *t[CTA_TUPLE_IP])
        s_, d_ = (
            ip.get(CTA_IP_V4_SRC) or ip.get(CTA_IP_V6_SRC),
            ip.get(CTA_IP_V4_DST) or ip.get(CTA_IP_V6_DST),
        )
        src = _ip(data, s_) if s_ else None
        dst = _ip(data, d_) if d_ else None
    if CTA_TUPLE_PROTO in t:
        pr = _attrs(data, *t[CTA_TUPLE_PROTO])
        if CTA_PROTO_NUM in pr:
            num = data[pr[CTA_PROTO_NUM][0]]
        if CTA_PROTO_SRC_PORT in pr:
            sport = struct.unpack_from("!H", data, pr[CTA_PROTO_SRC_PORT][0])[0]
        if CTA_PROTO_DST_PORT in pr:
            dport = struct.unpack_from("!H", data, pr[CTA_PROTO_DST_PORT][0])[0]
    return num, (src, sport, dst, dport)


def decode(
    data: bytes, off: int, end: int, kind: str | None = None, ts_ns: int | None = None
) -> dict[str, Any] | None:
    """One ctnetlink message (its attributes after the nfgenmsg) -> event dict, or None
    when it carries no tuple."""
    a = _attrs(data, off, end)
    if CTA_TUPLE_ORIG not in a:
        return None
    orig = _tuple(data, a[CTA_TUPLE_ORIG])
    reply = _tuple(data, a[CTA_TUPLE_REPLY]) if CTA_TUPLE_REPLY in a else None
    status = struct.unpack_from("!I", data, a[CTA_STATUS][0])[0] if CTA_STATUS in a else 0
    nat = []
    if status & IPS_DST_NAT:
        nat.append("dnat")
    if status & IPS_SRC_NAT:
        nat.append("snat")
    tcp_state = None
    if CTA_PROTOINFO in a:
        tcp = _attrs(data, *a[CTA_PROTOINFO]).get(CTA_PROTOINFO_TCP)
        st = _attrs(data, *tcp).get(CTA_PROTOINFO_TCP_STATE) if tcp else None
        if st is not None and data[st[0]] < len(TCP_STATES):
            tcp_state = TCP_STATES[data[st[0]]]
    return {
        "ts_ns": ts_ns or time.time_ns(),
        "kind": kind,
        "id": struct.unpack_from("!I", data, a[CTA_ID][0])[0] if CTA_ID in a else None,
        "proto": PROTOS.get(orig[0], str(orig[0])),
        "orig": orig[1],
        "reply": reply[1] if reply else None,
        "status": [name for i, name in enumerate(STATUS_BITS) if status & (1 << i)],
        "nat": "+".join(nat),
        "tcp_state": tcp_state,
    }


class ConntrackEvents(Receiver):
    """Subscribe to conntrack events in one network namespace. Context manager.

    `read(timeout)` returns the events available now (see the module docstring)."""

    def __init__(self, netns: str | None = None, rcvbuf: int = 8 << 20) -> None:
        self.netns = netns
        self.rcvbuf = rcvbuf
        self.sock = None
        self.lost = 0  # ENOBUFS overruns (events the kernel could not queue)

    def start(self) -> "ConntrackEvents":
        try:
            with in_netns(self.netns):
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise UnavailableError(f"cannot open ctnetlink: {exc.strerror}") from exc
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, self.rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        s.bind((0, GROUPS))
        s.setblocking(False)
        self.sock = s
        return self

    @staticmethod
    def _parse(data: bytes, now: int, kind_override: str | None = None) -> list[dict]:
        out = []
        off = 0
        while off + 16 <= len(data):
            ln, mtype, flags = struct.unpack_from("=IHH", data, off)
            if ln < 16:
                break
            if (mtype >> 8) == NFNL_SUBSYS_CTNETLINK:
                sub = mtype & 0xFF
                if sub == IPCTNL_MSG_CT_DELETE:
                    kind = "destroy"
                else:
                    kind = "new" if flags & NLM_F_CREATE else "update"
                try:
                    ev = decode(data, off + 20, off + ln, kind_override or kind, now)
                except (struct.error, IndexError, ValueError, OSError):
                    ev = None
                if ev:
                    out.append(ev)
            off += (ln + 3) & ~3
        return out

    def dump(self, timeout: float = 2.0) -> list[dict]:
        """The conntrack table now (IPv4 and IPv6 entries), as event dicts with kind
        'existing'."""
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            out.extend(self._dump_family(family, timeout))
        return out

    def _dump_family(self, family: int, timeout: float) -> list[dict]:
        with in_netns(self.netns):
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        out = []
        try:
            s.bind((0, 0))
            body = struct.pack("=BBH", family, 0, 0)
            hdr = struct.pack(
                "=IHHII",
                16 + len(body),
                (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                0x1 | 0x300,
                1,
                0,
            )  # NLM_F_REQUEST | NLM_F_DUMP
            s.send(hdr + body)
            deadline = time.time() + timeout
            while time.time() < deadline:
                if not select.select([s], [], [], 0.2)[0]:
                    continue
                data = s.recv(1 << 20)
                done = False
                off = 0
                while off + 16 <= len(data):
                    ln, mtype = struct.unpack_from("=IH", data, off)
                    if mtype in (2, 3) or ln < 16:  # NLMSG_ERROR / NLMSG_DONE
                        done = True
                        break
                    off += (ln + 3) & ~3
                out.extend(self._parse(data, time.time_ns(), "existing"))
                if done:
                    break
        finally:
            s.close()
        return out

    def stop(self) -> None:
        if self.sock:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> "ConntrackEvents":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def events_enabled(netns: str | None = None) -> bool:
    """True unless net.netfilter.nf_conntrack_events is 0 in that namespace."""
    from ..runtime import sysctl  # the one sysctl reader

    try:
        with in_netns(netns):
            return sysctl.read("net.netfilter.nf_conntrack_events") != "0"
    except UnavailableError:
        return True


__all__ = ["ConntrackEvents", "decode", "events_enabled"]
