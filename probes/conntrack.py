"""Conntrack events from ctnetlink (NEW/UPDATE/DESTROY), decoded with pyroute2's nfct_msg.

`ConntrackEvents(netns=None, match=callable)` opens a NETLINK_NETFILTER socket in the given
network namespace (conntrack is per namespace: open it where the NAT happens), subscribes to
the ctnetlink event groups and yields plain dicts:
    {ts_ns, kind: new|update|destroy, id, proto, orig: (src, sport, dst, dport),
     reply: (src, sport, dst, dport), status: [...], nat: 'dnat'|'snat'|'dnat+snat'|'',
     tcp_state}
`dump()` lists the current table once (same dicts, kind 'existing').
"""

import select
import socket
import struct
import time

from pyroute2.netlink.nfnetlink import nfctsocket as _ct

from pyinspect.errors import UnavailableError

from .netlink import NETLINK_NETFILTER, Receiver
from .netns import in_netns

NFNL_SUBSYS_CTNETLINK = 1
GROUPS = 1 | 2 | 4            # NFNLGRP_CONNTRACK_NEW, _UPDATE, _DESTROY
NLM_F_CREATE = 0x400
PROTOS = {6: "tcp", 17: "udp", 1: "icmp", 132: "sctp"}
TCP_STATES = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"]


def _tuple(t):
    if t is None:
        return None
    ip = t.get_attr("CTA_TUPLE_IP")
    proto = t.get_attr("CTA_TUPLE_PROTO")
    src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC") if ip else None
    dst = ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST") if ip else None
    num = proto.get_attr("CTA_PROTO_NUM") if proto else None
    sport = proto.get_attr("CTA_PROTO_SRC_PORT") if proto else None
    dport = proto.get_attr("CTA_PROTO_DST_PORT") if proto else None
    return num, (src, sport or 0, dst, dport or 0)


def decode(msg, kind=None, ts_ns=None):
    """One nfct_msg -> event dict (None if it carries no tuple)."""
    orig = _tuple(msg.get_attr("CTA_TUPLE_ORIG"))
    reply = _tuple(msg.get_attr("CTA_TUPLE_REPLY"))
    if orig is None:
        return None
    status = msg.get_attr("CTA_STATUS") or 0
    names = [name for bit, name in sorted(_ct.IPSBIT_TO_NAME.items()) if status & bit] \
        if hasattr(_ct, "IPSBIT_TO_NAME") else []
    nat = []
    if status & _ct.IPS_DST_NAT:
        nat.append("dnat")
    if status & _ct.IPS_SRC_NAT:
        nat.append("snat")
    tcp_state = None
    pinfo = msg.get_attr("CTA_PROTOINFO")
    if pinfo is not None:
        tcp = pinfo.get_attr("CTA_PROTOINFO_TCP")
        if tcp is not None:
            st = tcp.get_attr("CTA_PROTOINFO_TCP_STATE")
            if st is not None and st < len(TCP_STATES):
                tcp_state = TCP_STATES[st]
    return {
        "ts_ns": ts_ns or time.time_ns(),
        "kind": kind,
        "id": msg.get_attr("CTA_ID"),
        "proto": PROTOS.get(orig[0], str(orig[0])),
        "orig": orig[1],
        "reply": reply[1] if reply else None,
        "status": [str(n) for n in names],
        "nat": "+".join(nat),
        "tcp_state": tcp_state,
    }


class ConntrackEvents(Receiver):
    """Subscribe to conntrack events in one network namespace. Context manager.

    `read(timeout)` returns the events available now (see the module docstring)."""

    def __init__(self, netns=None, rcvbuf=8 << 20):
        self.netns = netns
        self.rcvbuf = rcvbuf
        self.sock = None
        self.lost = 0      # ENOBUFS overruns (events the kernel could not queue)

    def start(self):
        try:
            with in_netns(self.netns):
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise UnavailableError(f"cannot open ctnetlink: {exc.strerror}") from exc
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, self.rcvbuf)   # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        s.bind((0, GROUPS))
        s.setblocking(False)
        self.sock = s
        return self

    @staticmethod
    def _parse(data, now, kind_override=None):
        out = []
        off = 0
        while off + 16 <= len(data):
            ln, mtype, flags = struct.unpack_from("=IHH", data, off)
            if ln < 16:
                break
            if (mtype >> 8) == NFNL_SUBSYS_CTNETLINK:
                sub = mtype & 0xff
                if sub == _ct.IPCTNL_MSG_CT_DELETE:
                    kind = "destroy"
                else:
                    kind = "new" if flags & NLM_F_CREATE else "update"
                msg = _ct.nfct_msg(data[off:off + ln])
                try:
                    msg.decode()
                    ev = decode(msg, kind_override or kind, now)
                except Exception:
                    ev = None
                if ev:
                    out.append(ev)
            off += (ln + 3) & ~3
        return out

    def dump(self, timeout=2.0):
        """The conntrack table now, as event dicts with kind 'existing'."""
        with in_netns(self.netns):
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        out = []
        try:
            s.bind((0, 0))
            body = struct.pack("=BBH", socket.AF_INET, 0, 0)
            hdr = struct.pack("=IHHII", 16 + len(body),
                              (NFNL_SUBSYS_CTNETLINK << 8) | _ct.IPCTNL_MSG_CT_GET,
                              0x1 | 0x300, 1, 0)      # NLM_F_REQUEST | NLM_F_DUMP
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
                    if mtype in (2, 3) or ln < 16:     # NLMSG_ERROR / NLMSG_DONE
                        done = True
                        break
                    off += (ln + 3) & ~3
                out.extend(self._parse(data, time.time_ns(), "existing"))
                if done:
                    break
        finally:
            s.close()
        return out

    def stop(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def events_enabled(netns=None):
    """True unless net.netfilter.nf_conntrack_events is 0 in that namespace."""
    try:
        with in_netns(netns):
            with open("/proc/sys/net/netfilter/nf_conntrack_events") as f:
                return f.read().strip() != "0"
    except (OSError, UnavailableError):
        return True


__all__ = ["ConntrackEvents", "decode", "events_enabled"]
