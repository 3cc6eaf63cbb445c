"""NAT hop reconstruction: packets, conntrack entries and netfilter trace lines -> flows.

A conntrack entry has an original tuple (a:p -> b:q) and a reply tuple (c:r -> d:s). The
same connection shows up on the wire as four 5-tuples, which `FlowTable` indexes:
    original direction before NAT  a:p -> b:q      (the client's packet on the uplink)
    original direction after NAT   d:s -> c:r      (after DNAT: on the bridge, veth, eth0)
    reply direction before NAT     c:r -> d:s      (the container's answer)
    reply direction after NAT      b:q -> a:p      (un-NATed, back on the uplink)
DNAT is b:q != c:r, SNAT/MASQUERADE is a:p != d:s. Connections that never reach conntrack's
confirm step (dropped in FORWARD) get their translation from the trace lines instead.

One packet crossing the host is a `Journey`: its captures at each point plus the netfilter
hops, grouped by flow, direction and what NAT does not change (IP id, TCP seq/ack, length).
"""

import socket
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

TCP_FLAGS = ((0x02, "S"), (0x10, "."), (0x08, "P"), (0x01, "F"), (0x04, "R"))


def tcp_flag_text(flags):
    if flags is None:
        return ""
    out = "".join(c for bit, c in TCP_FLAGS if flags & bit)
    return f"[{out}]" if out else ""


class Pkt(NamedTuple):
    """The parts of an IPv4 packet the correlation needs."""
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    ipid: int
    seq: int
    ack: int
    iplen: int
    flags: int = None

    @property
    def tuple(self):
        return (self.proto, self.src, self.sport, self.dst, self.dport)

    @property
    def ident(self):
        """What NAT leaves alone: identifies one packet across capture points."""
        return (self.ipid, self.seq, self.ack, self.iplen)


PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}
_IPH = struct.Struct("!BxHH3xB2x4s4s")
_TCP = struct.Struct("!HHII")
_PORTS = struct.Struct("!HH")
_addr_cache = {}


def _ntoa(b):
    a = _addr_cache.get(b)
    if a is None:
        if len(_addr_cache) > 65536:
            _addr_cache.clear()
        a = _addr_cache[b] = socket.inet_ntoa(b)
    return a


def parse_ip(ip, off=0):
    """IPv4 header bytes (+ L4) at `off` -> Pkt, or None."""
    if len(ip) < off + 20:
        return None
    vihl, iplen, ipid, proto, src, dst = _IPH.unpack_from(ip, off)
    if vihl >> 4 != 4:
        return None
    l4 = off + (vihl & 0xf) * 4
    pname = PROTO_NAMES.get(proto) or str(proto)
    if proto == 6 and len(ip) >= l4 + 14:
        sport, dport, seq, ack = _TCP.unpack_from(ip, l4)
        return Pkt(pname, _ntoa(src), sport, _ntoa(dst), dport, ipid, seq, ack, iplen,
                   ip[l4 + 13])
    if proto == 17 and len(ip) >= l4 + 4:
        sport, dport = _PORTS.unpack_from(ip, l4)
        return Pkt(pname, _ntoa(src), sport, _ntoa(dst), dport, ipid, 0, 0, iplen)
    if proto == 1 and len(ip) >= l4 + 2:
        return Pkt(pname, _ntoa(src), ip[l4], _ntoa(dst), ip[l4 + 1], ipid, 0, 0, iplen)
    return Pkt(pname, _ntoa(src), 0, _ntoa(dst), 0, ipid, 0, 0, iplen)


def parse_frame(frame):
    """Ethernet frame -> Pkt (IPv4 only; VLAN tags skipped), or None."""
    if len(frame) < 34:
        return None
    if frame[12] == 8 and frame[13] == 0:
        return parse_ip(frame, 14)
    etype = struct.unpack_from("!H", frame, 12)[0]
    off = 14
    while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
        etype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if etype != 0x0800:
        return None
    return parse_ip(frame, off)


def ep(ip, port):
    return f"{ip}:{port}"


@dataclass
class Flow:
    id: int
    proto: str
    orig: tuple                 # (src, sport, dst, dport)
    reply: tuple = None
    ct_id: int = None
    nat: str = ""               # 'dnat', 'snat', 'dnat+snat' or ''
    nat_rule: dict = None       # the netfilter hop that did the translation
    first_ns: int = 0
    last_ns: int = 0
    packets: int = 0
    journeys: int = 0
    shown: int = 0
    tcp_state: str = None
    drops: list = field(default_factory=list)
    drop_counts: dict = field(default_factory=dict)   # explanation -> count
    notes: list = field(default_factory=list)
    matched: bool = False
    store_id: int = None
    dirs_shown: set = field(default_factory=set)

    def nat_text(self):
        """`a:p -> b:q` for each translation, e.g. 'DNAT 10.0.0.1:8088 -> 172.30.0.2:80'."""
        if not self.reply:
            return ""
        a, p, b, q = self.orig
        c, r, d, s = self.reply
        parts = []
        if (b, q) != (c, r):
            parts.append(f"DNAT {ep(b, q)} -> {ep(c, r)}")
        if (a, p) != (d, s):
            parts.append(f"SNAT {ep(a, p)} -> {ep(d, s)}")
        return ", ".join(parts)

    def header(self):
        a, p, b, q = self.orig
        text = f"{self.proto} {ep(a, p)} -> {ep(b, q)}"
        nat = self.nat_text()
        if nat:
            text += f"  {nat}"
            if self.nat_rule:
                r = self.nat_rule
                num = f" {r['rule_num']}" if r.get("rule_num") else ""
                text += f" ({r['table']} {r['chain']} rule{num})"
        return text


def _nat_kind(orig, reply):
    if not reply:
        return ""
    a, p, b, q = orig
    c, r, d, s = reply
    kinds = []
    if (b, q) != (c, r):
        kinds.append("dnat")
    if (a, p) != (d, s):
        kinds.append("snat")
    return "+".join(kinds)


class FlowTable:
    """Flows indexed by every 5-tuple they appear as (see module doc)."""

    def __init__(self):
        self.flows = {}
        self.index = {}         # (proto, src, sport, dst, dport) -> (flow, dir, stage)
        self.by_ct = {}
        self._next = 1

    def _new(self, proto, orig, ts):
        f = Flow(self._next, proto, orig, first_ns=ts, last_ns=ts)
        self._next += 1
        self.flows[f.id] = f
        return f

    def _index(self, f):
        proto = f.proto
        a, p, b, q = f.orig
        self.index[(proto, a, p, b, q)] = (f, "orig", "pre")
        if f.reply:
            c, r, d, s = f.reply
            self.index.setdefault((proto, d, s, c, r), (f, "orig", "post"))
            self.index[(proto, c, r, d, s)] = (f, "reply", "pre")
            self.index.setdefault((proto, b, q, a, p), (f, "reply", "post"))
        else:
            self.index.setdefault((proto, b, q, a, p), (f, "reply", "post"))

    def conntrack(self, ev):
        """Create or update a flow from a conntrack event dict; returns the flow."""
        if not ev.get("orig") or not ev.get("reply"):
            return None
        f = self.by_ct.get(ev["id"]) if ev.get("id") is not None else None
        if f is None:
            hit = self.index.get((ev["proto"], *ev["orig"]))
            f = hit[0] if hit else None
            if f is None:
                f = self._new(ev["proto"], tuple(ev["orig"]), ev["ts_ns"])
            f.ct_id = ev.get("id")
            self.by_ct[f.ct_id] = f
        f.orig = tuple(ev["orig"])
        f.reply = tuple(ev["reply"])
        f.nat = _nat_kind(f.orig, f.reply)
        if ev.get("tcp_state"):
            f.tcp_state = ev["tcp_state"]
        self._index(f)
        return f

    def lookup(self, tup):
        return self.index.get(tup)

    def for_packet(self, pkt, ts):
        """(flow, direction, stage) for a packet, creating a flow if none matches."""
        hit = self.index.get(pkt.tuple)
        if hit:
            return hit
        f = self._new(pkt.proto, (pkt.src, pkt.sport, pkt.dst, pkt.dport), ts)
        self._index(f)
        return self.index[pkt.tuple]

    def learn_nat(self, f, before, after, hop):
        """A trace showed `before` (a Pkt) become `after` in the original direction."""
        if f.reply is None and before.tuple != after.tuple:
            f.reply = (after.dst, after.dport, after.src, after.sport)
            f.nat = _nat_kind(f.orig, f.reply)
            self._index(f)
        if hop and not f.nat_rule:
            f.nat_rule = hop


@dataclass
class Journey:
    """One packet's way through the host: captures and netfilter hops."""
    flow: Flow
    direction: str              # 'orig' | 'reply'
    ident: tuple
    captures: list = field(default_factory=list)   # dicts: ts_ns, point, dir, pkt, len, ...
    nf: list = field(default_factory=list)         # hop dicts from probes.nftrace
    first_ns: int = 0

    def hops(self, host_points):
        """Captures and netfilter hops in path order.

        Netfilter runs in the host namespace between the last capture there on the way in
        and the first on the way out; trace lines carry no comparable clock, so they are
        placed there, in the order the kernel emitted them.
        """
        caps = sorted(self.captures, key=lambda c: c["ts_ns"])
        if not self.nf:
            return [("capture", c) for c in caps]
        nf = sorted(enumerate(self.nf), key=_nf_rank)
        host_in = [i for i, c in enumerate(caps)
                   if c["point"] in host_points and c["dir"] == "in"]
        host_out = [i for i, c in enumerate(caps)
                    if c["point"] in host_points and c["dir"] == "out"]
        if host_in:
            cut = host_in[-1] + 1
            if host_out and host_out[0] < cut:
                cut = host_out[0]
        elif host_out:
            cut = host_out[0]
        else:
            cut = len(caps)
        out = [("capture", c) for c in caps[:cut]]
        out += [("netfilter", h) for _, h in nf]
        out += [("capture", c) for c in caps[cut:]]
        return out


HOOK_RANK = {"PREROUTING": 0, "OUTPUT": 0, "INPUT": 1, "FORWARD": 1, "POSTROUTING": 2}
TABLE_RANK = {"raw": 0, "mangle": 1, "nat": 2, "filter": 3, "security": 4}


def _nf_rank(item):
    """Order trace lines of one packet: by hook, then by table priority, then as received.

    Legacy lines carry their hook; nf_tables lines are ranked by their chain's name when
    it is a hook name (iptables-nft), else kept where they came."""
    i, h = item
    hook = h.get("hook") or h["chain"].upper()
    table = h["table"].split()[-1]
    rank = HOOK_RANK.get(hook, 9)
    if rank == 2 and table == "nat":
        return (rank, 9, i)             # SNAT runs after the POSTROUTING filters
    return (rank, TABLE_RANK.get(table, 5), i)


BENIGN_DROP_REASONS = {"QUEUE_PURGE", "SOCKET_CLOSE"}   # a closing socket freeing its queue


def explain_drop(drop, flow, journeys, container_name, container_netns):
    """A one-line explanation of a kfree_skb drop, e.g. 'dropped in FORWARD: policy DROP'."""
    reason = drop["reason"]
    if reason == "NETFILTER_DROP":
        last = None
        for j in journeys:
            for h in j.nf:
                if h.get("verdict", "").startswith("DROP") or h.get("verdict") == "REJECT":
                    last = h
        if last:
            what = last["rule_text"] if last["kind"] != "policy" or \
                not last["rule_text"].startswith("policy") else last["rule_text"]
            if last["kind"] == "policy" and last["rule_text"].startswith("policy"):
                return f"dropped in {last['chain']}: {what}"
            return (f"dropped in {last['chain']}: {last['table']} rule {last['rule_num']} "
                    f"({what})")
        return "dropped by a netfilter rule (no trace line for it)"
    if reason == "NO_SOCKET":
        where = container_name if drop.get("netns") == container_netns else \
            f"netns {drop.get('netns')}"
        if drop["proto"] == "tcp":
            return f"no listener on port {drop['dport']} in {where}: RST"
        return f"no listener on port {drop['dport']} in {where}: ICMP port unreachable"
    if reason == "NOT_SPECIFIED":
        return f"freed without a reason at {drop['location']}"
    return f"dropped: {reason} at {drop['location']}"
