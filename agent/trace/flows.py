"""Correlation: packets, conntrack entries and netfilter trace lines -> flows and journeys.

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

import bisect
import collections
import functools
import itertools
import operator
import re
import socket
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

TCP_FLAGS = ((0x02, "S"), (0x10, "."), (0x08, "P"), (0x01, "F"), (0x04, "R"))


@functools.cache
def tcp_flag_text(flags):
    """`[S.]`-style text of TCP flags (tcpdump's letters); "" for none."""
    if flags is None:
        return ""
    out = "".join(c for bit, c in TCP_FLAGS if flags & bit)
    return f"[{out}]" if out else ""


def rule_label(num, handle) -> str:
    """How pyinspect names a netfilter rule: `handle N` on nf_tables (what `nft -a list`
    shows), `rule N` on x_tables (its position), `rule` without a number."""
    if not num:
        return "rule"
    return f"{'handle' if handle else 'rule'} {num}"


class Pkt(NamedTuple):
    """The parts of an IPv4 or IPv6 packet the correlation needs. IPv6 has no IP id:
    `ipid` is then a hash of the first payload bytes after the L4 header (NAT leaves them
    alone), so same-length packets of one flow stay apart."""

    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    ipid: int
    seq: int
    ack: int
    iplen: int
    flags: int | None = None

    @property
    def tuple(self):
        """(proto, src, sport, dst, dport): the first five fields."""
        return self[:5]

    @property
    def ident(self):
        """What NAT leaves alone: identifies one packet across capture points
        (ipid, seq, ack, iplen: the next four fields)."""
        return self[5:9]


PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp"}
PROTO6_NAMES = {6: "tcp", 17: "udp", 58: "icmp6"}
V6_EXT = (0, 43, 60)  # hop-by-hop, routing, destination options: skipped to reach L4
NDP_TYPES = {
    133: "router solicitation",
    134: "router advertisement",
    135: "neighbor solicitation",
    136: "neighbor advertisement",
    137: "redirect",
}
ICMP6_TYPES = {
    1: "destination unreachable",
    2: "packet too big",
    3: "time exceeded",
    128: "echo request",
    129: "echo reply",
    130: "multicast listener query",
    131: "multicast listener report",
    143: "multicast listener report v2",
    **NDP_TYPES,
}
# link-local control (neighbour discovery, multicast listeners): link lines, not flows
LINK_ICMP6 = {130, 131, 132, 133, 134, 135, 136, 137, 143}
_IPH = struct.Struct("!BxHH3xB2x4s4s")
_TCP = struct.Struct("!HHII")
_PORTS = struct.Struct("!HH")
# an Ethernet frame's bytes 12..48 when it carries IPv4 without options and TCP: ethertype,
# version/IHL, total length, id, protocol, addresses, ports, seq, ack, TCP flags
_V4TCP = struct.Struct("!HBxHH3xB2x4s4sHHIIxB")
# the same from byte 12 on, without what the caller checked (ethertype, IHL, protocol)
_HEAD_V4TCP = struct.Struct("!4xHH6x4s4sHHIIxB")
_addr_cache: dict[bytes, str] = {}
_new_tuple = tuple.__new__
_capture_ts = operator.itemgetter(0)  # sort key of Captures: ts_ns


def _ntoa(b):
    a = _addr_cache.get(b)
    if a is None:
        if len(_addr_cache) > 65536:
            _addr_cache.clear()
        a = _addr_cache[b] = socket.inet_ntoa(b)
    return a


def _ntop6(b):
    a = _addr_cache.get(b)
    if a is None:
        if len(_addr_cache) > 65536:
            _addr_cache.clear()
        a = _addr_cache[b] = socket.inet_ntop(socket.AF_INET6, b)
    return a


def parse_ip6(ip, off=0):
    """IPv6 header bytes (+ extension headers + L4) at `off` -> Pkt, or None."""
    if len(ip) < off + 40 or ip[off] >> 4 != 6:
        return None
    plen = struct.unpack_from("!H", ip, off + 4)[0]
    nh = ip[off + 6]
    src, dst = _ntop6(bytes(ip[off + 8 : off + 24])), _ntop6(bytes(ip[off + 24 : off + 40]))
    l4 = off + 40
    later_fragment = False
    for _ in range(4):
        if nh in V6_EXT and len(ip) >= l4 + 2:
            nh, l4 = ip[l4], l4 + (ip[l4 + 1] + 1) * 8
        elif nh == 44 and len(ip) >= l4 + 8:
            later_fragment = bool(struct.unpack_from("!H", ip, l4 + 2)[0] & 0xFFF8)
            nh, l4 = ip[l4], l4 + 8
        else:
            break
    pname = PROTO6_NAMES.get(nh) or str(nh)
    iplen = plen + 40
    if later_fragment:
        return Pkt(pname, src, 0, dst, 0, 0, 0, 0, iplen)
    if nh == 6 and len(ip) >= l4 + 14:
        sport, dport, seq, ack = _TCP.unpack_from(ip, l4)
        hl = (ip[l4 + 12] >> 4) * 4
        h = zlib.crc32(ip[l4 + hl : l4 + hl + 16]) & 0xFFFF
        return Pkt(pname, src, sport, dst, dport, h, seq, ack, iplen, ip[l4 + 13])
    if nh == 17 and len(ip) >= l4 + 4:
        sport, dport = _PORTS.unpack_from(ip, l4)
        h = zlib.crc32(ip[l4 + 8 : l4 + 24]) & 0xFFFF
        return Pkt(pname, src, sport, dst, dport, h, 0, 0, iplen)
    if nh == 58 and len(ip) >= l4 + 2:
        h = zlib.crc32(ip[l4 + 8 : l4 + 40]) & 0xFFFF
        return Pkt(pname, src, ip[l4], dst, ip[l4 + 1], h, 0, 0, iplen)
    return Pkt(pname, src, 0, dst, 0, 0, 0, 0, iplen)


def parse_ip(ip, off=0):
    """IPv4 (or IPv6) header bytes (+ L4) at `off` -> Pkt, or None."""
    if len(ip) < off + 20:
        return None
    vihl, iplen, ipid, proto, src, dst = _IPH.unpack_from(ip, off)
    if vihl >> 4 != 4:
        return parse_ip6(ip, off) if vihl >> 4 == 6 else None
    l4 = off + (vihl & 0xF) * 4
    pname = PROTO_NAMES.get(proto) or str(proto)
    if proto == 6 and len(ip) >= l4 + 14:
        sport, dport, seq, ack = _TCP.unpack_from(ip, l4)
        return Pkt(pname, _ntoa(src), sport, _ntoa(dst), dport, ipid, seq, ack, iplen, ip[l4 + 13])
    if proto == 17 and len(ip) >= l4 + 4:
        sport, dport = _PORTS.unpack_from(ip, l4)
        return Pkt(pname, _ntoa(src), sport, _ntoa(dst), dport, ipid, 0, 0, iplen)
    if proto == 1 and len(ip) >= l4 + 2:
        return Pkt(pname, _ntoa(src), ip[l4], _ntoa(dst), ip[l4 + 1], ipid, 0, 0, iplen)
    return Pkt(pname, _ntoa(src), 0, _ntoa(dst), 0, ipid, 0, 0, iplen)


def parse_frame(frame):
    """Ethernet frame -> Pkt (IPv4 or IPv6; VLAN tags skipped), or None."""
    if len(frame) < 34:
        return None
    if frame[12] == 8 and frame[13] == 0:
        if len(frame) >= 48 and frame[14] == 0x45 and frame[23] == 6:  # the usual: one unpack
            _e, _v, iplen, ipid, _p, src, dst, sport, dport, seq, ack, flags = _V4TCP.unpack_from(
                frame, 12
            )
            a = _addr_cache.get(src) or _ntoa(src)
            b = _addr_cache.get(dst) or _ntoa(dst)
            # a Pkt without NamedTuple's Python-level __new__ (all ten fields given)
            return _new_tuple(Pkt, ("tcp", a, sport, b, dport, ipid, seq, ack, iplen, flags))
        return parse_ip(frame, 14)
    etype = struct.unpack_from("!H", frame, 12)[0]
    off = 14
    while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
        etype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if etype == 0x86DD:
        return parse_ip6(frame, off)
    if etype != 0x0800:
        return None
    return parse_ip(frame, off)


def ep(ip, port):
    """`ip:port`; `[ip6]:port` for IPv6 (as URLs and ss(8) write it)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def ndp_text(pkt, data=None):
    """What an ICMPv6 packet is, e.g. 'neighbor solicitation (who has fd00::2)' (`data`:
    the frame, for the target of neighbour discovery), or '' for anything else."""
    if pkt is None or pkt.proto != "icmp6":
        return ""
    text = ICMP6_TYPES.get(pkt.sport) or f"type {pkt.sport}"
    if pkt.sport in (135, 136) and data is not None:
        off = _l4_offset6(data)
        if off is not None and len(data) >= off + 24:
            tgt = _ntop6(bytes(data[off + 8 : off + 24]))
            text += f" ({'who has' if pkt.sport == 135 else 'is at'} {tgt})"
    return text


def _l4_offset6(frame):
    """Offset of the ICMPv6 header in an Ethernet frame carrying IPv6, or None."""
    if len(frame) < 54 or frame[12:14] != b"\x86\xdd":
        return None
    nh, off = frame[20], 54
    for _ in range(4):
        if nh in V6_EXT and len(frame) >= off + 2:
            nh, off = frame[off], off + (frame[off + 1] + 1) * 8
        else:
            break
    return off if nh == 58 else None


@dataclass
class Flow:
    id: int
    proto: str
    orig: tuple  # (src, sport, dst, dport)
    reply: tuple | None = None
    ct_id: int | None = None
    nat: str = ""  # 'dnat', 'snat', 'dnat+snat' or ''
    nat_rule: dict | None = None  # the netfilter hop that did the translation
    first_ns: int = 0
    last_ns: int = 0
    packets: int = 0
    journeys: int = 0
    shown: int = 0
    tcp_state: str | None = None
    drops: list = field(default_factory=list)
    drop_counts: dict = field(default_factory=dict)  # explanation -> count
    notes: list = field(default_factory=list)
    matched: bool = False
    store_id: int | None = None
    paths_shown: set = field(default_factory=set)  # (direction, rule path key) printed live
    repeated_paths: int = 0  # journeys whose rule path was the previous one's (not stored)
    touched: float = 0.0  # CLOCK_MONOTONIC s when a packet or conntrack last spoke of it
    keys: list = field(default_factory=list)  # the index keys it was put under

    def drop_lines(self):
        """`[N] explanation (xCOUNT)` for each distinct drop of this flow (the summary's)."""
        return [
            f"[{self.id}] {t}" + (f" (x{n})" if n > 1 else "") for t, n in self.drop_counts.items()
        ]

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
        if self.proto == "icmp6":  # type and code, not ports
            return f"icmp6 {a} -> {b} {ICMP6_TYPES.get(p) or f'type {p}'}"
        text = f"{self.proto} {ep(a, p)} -> {ep(b, q)}"
        nat = self.nat_text()
        if nat:
            text += f"  {nat}"
            if self.nat_rule:
                r = self.nat_rule
                label = rule_label(r.get("rule_num"), r.get("handle"))
                text += f" ({r['table']} {r['chain']} {label})"
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
        self.index = {}  # (proto, src, sport, dst, dport) -> (flow, dir, stage)
        self.by_ct = {}
        self._next = 1

    def _new(self, proto, orig, ts):
        f = Flow(self._next, proto, orig, first_ns=ts, last_ns=ts, touched=time.monotonic())
        self._next += 1
        self.flows[f.id] = f
        return f

    def _index(self, f):
        proto = f.proto
        a, p, b, q = f.orig
        keys = [(proto, a, p, b, q), (proto, b, q, a, p)]
        self.index[keys[0]] = (f, "orig", "pre")
        if f.reply:
            c, r, d, s = f.reply
            keys += [(proto, d, s, c, r), (proto, c, r, d, s)]
            self.index.setdefault(keys[2], (f, "orig", "post"))
            self.index[keys[3]] = (f, "reply", "pre")
        self.index.setdefault(keys[1], (f, "reply", "post"))
        f.keys.extend(k for k in keys if k not in f.keys)

    def drop(self, f):
        """Forget flow `f`: a later packet of its tuples makes a new flow."""
        self.flows.pop(f.id, None)
        for k in f.keys:
            hit = self.index.get(k)
            if hit is not None and hit[0] is f:
                del self.index[k]
        ct = f.ct_id
        if ct is not None and self.by_ct.get(ct) is f:
            del self.by_ct[ct]

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
        f.touched = time.monotonic()
        f.nat = _nat_kind(f.orig, f.reply)
        if ev.get("tcp_state"):
            f.tcp_state = ev["tcp_state"]
        self._index(f)
        return f

    def lookup(self, tup):
        return self.index.get(tup)

    def for_packet(self, pkt, ts):
        """(flow, direction, stage) for a packet, creating a flow if none matches."""
        tup = pkt[:5]  # pkt.tuple
        hit = self.index.get(tup)
        if hit:
            return hit
        f = self._new(pkt.proto, (pkt.src, pkt.sport, pkt.dst, pkt.dport), ts)
        self._index(f)
        return self.index[tup]

    def learn_nat(self, f, before, after, hop):
        """A trace showed `before` (a Pkt) become `after` in the original direction."""
        if f.reply is None and before.tuple != after.tuple:
            f.reply = (after.dst, after.dport, after.src, after.sport)
            f.nat = _nat_kind(f.orig, f.reply)
            self._index(f)
        if hop and not f.nat_rule:
            f.nat_rule = hop


@dataclass
class GoneFlows:
    """The flows a long trace let go of (Correlator.let_go), as its summary needs them."""

    flows: int = 0  # shown ones (a journey or a drop)
    headers: list = field(default_factory=list)
    nat: set = field(default_factory=set)
    drops: list = field(default_factory=list)


@dataclass(slots=True)
class Journey:
    """One packet's way through the host: captures and netfilter hops."""

    flow: Flow
    direction: str  # 'orig' | 'reply'
    ident: tuple
    captures: list = field(default_factory=list)  # Captures (times CLOCK_REALTIME)
    nf: list = field(default_factory=list)  # hop dicts from probes.nftrace
    first_ns: int = 0
    seq: int = 0  # its place in the flow: 1 for the flow's first journey

    def rule_path_key(self):
        """The journey's rule path (table, chain, rule, verdict of each hop) as a key:
        equal keys are the same path."""
        return tuple((h["table"], h["chain"], h["rule_num"], h["verdict"]) for h in self.nf)

    def hops(self, host_points):
        """Captures and netfilter hops in path order.

        Netfilter runs in the host namespace between the last capture there on the way in
        and the first on the way out; trace lines carry no comparable clock, so they are
        placed there, in the order the kernel emitted them.
        """
        caps, cut, nf = self.path(host_points)
        out = [("capture", c) for c in caps[:cut]]
        out += [("netfilter", h) for h in nf]
        out += [("capture", c) for c in caps[cut:]]
        return out

    def path(self, host_points):
        """hops() as (captures in time order, how many of them come before the netfilter
        hops, the netfilter hops in the kernel's order)."""
        caps = sorted(self.captures, key=_capture_ts)
        if not self.nf:
            return caps, len(caps), []
        nf = nf_order(self.nf)
        host_in = [i for i, c in enumerate(caps) if c.point in host_points and c.dir == "in"]
        host_out = [i for i, c in enumerate(caps) if c.point in host_points and c.dir == "out"]
        if host_in:
            cut = host_in[-1] + 1
            if host_out and host_out[0] < cut:
                cut = host_out[0]
        elif host_out:
            cut = host_out[0]
        else:
            cut = len(caps)
        return caps, cut, nf


HOOK_RANK = {"PREROUTING": 0, "OUTPUT": 0, "INPUT": 1, "FORWARD": 1, "POSTROUTING": 2}


def nf_order(hops):
    """One packet's trace hops in the kernel's order.

    Each source numbers its hops as the kernel sent them (`seq`: nfnetlink_log lines,
    nf_tables trace events); hops of one source keep that order. Hops of both (mode both:
    x_tables and nf_tables chains on the same hooks) are merged by hook, then by the
    priority of the table or base chain on it, then by their own order."""
    if len({h.get("backend") for h in hops}) <= 1:
        return sorted(hops, key=lambda h: h.get("seq", 0))
    return sorted(
        hops,
        key=lambda h: (
            HOOK_RANK.get(h.get("hook") or "", 9),
            h.get("prio", 0),
            h.get("backend", ""),
            h.get("seq", 0),
        ),
    )


BENIGN_DROP_REASONS = {"QUEUE_PURGE", "SOCKET_CLOSE"}  # a closing socket freeing its queue


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
            what = last["rule_text"]
            if last["kind"] == "policy" and last["rule_text"].startswith("policy"):
                return f"dropped in {last['chain']}: {what}"
            label = rule_label(last["rule_num"], last.get("handle"))
            return f"dropped in {last['chain']}: {last['table']} {label} ({what})"
        return "dropped by a netfilter rule (no trace line for it)"
    if reason == "NO_SOCKET":
        where = (
            container_name if drop.get("netns") == container_netns else f"netns {drop.get('netns')}"
        )
        if drop["proto"] == "tcp":
            return f"no listener on port {drop['dport']} in {where}: RST"
        return f"no listener on port {drop['dport']} in {where}: ICMP port unreachable"
    if reason == "NOT_SPECIFIED":
        return f"freed without a reason at {drop['location']}"
    return f"dropped: {reason} at {drop['location']}"


# -- correlation -----------------------------------------------------------------------
SETTLE_NS = 250_000_000  # a packet waits this long for its conntrack and trace lines
# one packet's captures at every point lie closer together than QUIET_NS: a settle cut
# moves back (at most CUT_LOOKBACK_NS) to a gap that long, so they settle together
QUIET_NS = 1_000_000
CUT_LOOKBACK_NS = 20_000_000
RECENT_JOURNEYS = 4096
FLOWS_KEPT = 16384  # flows held in memory; past it, those idle FLOW_IDLE_S are let go
FLOW_IDLE_S = 120.0
LET_GO_EVERY_S = 10.0
GONE_LISTED = 1000  # let-go flows still named in the summary (the store has them all)
JOURNEYS_PER_FLOW = 64  # a flow's latest journeys, kept to explain its drops
FLOWS_WITH_JOURNEYS = 4096  # flows whose journeys are kept, the most recently active
FLOW_PROTOS = {"tcp", "udp", "icmp", "icmp6"}
MAX_DROP_ROWS_PER_FLOW = 100  # stored drop rows per flow; all are counted
PARSE_CACHE = 1024  # parsed headers kept for the next captures of the same packet


class Capture(NamedTuple):
    """One analysis record: a packet seen at one capture point (a NamedTuple: one is made
    per record, without a Python-level __init__)."""

    ts_ns: int  # CLOCK_REALTIME
    point: int
    dir: str  # 'in' | 'out'
    len: int
    data: bytes
    pkt: Pkt | None
    cpu: int
    pos: int  # its evidence record's stream position (-1: none)


@dataclass
class LinkPacket:
    """One ICMPv6 neighbour discovery or multicast listener packet across the capture
    points: link-local control, shown as a line of its own rather than as a flow."""

    what: str  # e.g. 'neighbor solicitation (who has fd00::2)'
    src: str
    dst: str
    first_ns: int  # CLOCK_REALTIME
    captures: list = field(default_factory=list)  # Captures


@dataclass
class Settled:
    """What one settle step produced, in the order the sinks take it."""

    journeys: list = field(default_factory=list)  # Journeys, time order
    links: list = field(default_factory=list)  # LinkPackets, time order
    late_hops: list = field(default_factory=list)  # (Journey, hop): packet shown earlier
    fast: list = field(default_factory=list)  # (ts, point, dir, len, cpu, pos, Flow)
    drops: list = field(default_factory=list)  # (Flow, drop, count of its cause, stored)
    events: list = field(default_factory=list)  # process/link/cgroup event dicts


def fast_key(frame):
    """The bytes that name an IPv4 or IPv6 TCP/UDP packet's 5-tuple (protocol, addresses,
    ports), or None for anything else and for TCP packets that open, close or reset (those
    always take the full path: the netfilter trace follows them)."""
    if frame[14:15] == b"\x45" and frame[12:14] == b"\x08\x00" and len(frame) >= 48:
        proto = frame[23]  # the usual case: no IP options
        if proto == 17 or (proto == 6 and not frame[47] & 0x07):
            return frame[23:24] + frame[26:38]
        return None
    if frame[12:14] == b"\x86\xdd":
        if len(frame) < 68 or frame[14] >> 4 != 6:  # IPv6 without extension headers
            return None
        nh = frame[20]
        if nh == 17 or (nh == 6 and not frame[67] & 0x07):
            return frame[20:21] + frame[22:58]
        return None
    if len(frame) < 38 or frame[12] != 8 or frame[13] != 0 or frame[14] >> 4 != 4:
        return None
    proto = frame[23]
    l4 = 14 + (frame[14] & 0xF) * 4
    if proto == 6:
        if len(frame) < l4 + 14 or frame[l4 + 13] & 0x07:
            return None
    elif proto != 17 or len(frame) < l4 + 4:
        return None
    return frame[23:24] + frame[26:34] + frame[l4 : l4 + 4]


class Correlator:
    """Captures, conntrack events, trace lines and drops -> flows and journeys.

    Packets settle SETTLE_NS after capture so their conntrack event and trace lines are in
    hand; then each packet's captures at every point become one Journey with its
    netfilter hops. A flow past `live_per_flow` journeys takes the fast path: its packets
    are found by their 5-tuple bytes and only counted — no parse, no journey, no index
    row (not with `count`, which counts packets one by one)."""

    def __init__(
        self, offset, live_per_flow, pfilter=None, count=None, target_name="", target_netns=0
    ):
        self.flows = FlowTable()
        self.offset = offset  # CLOCK_REALTIME - CLOCK_MONOTONIC
        self.live_per_flow = live_per_flow
        self.pfilter = pfilter
        self.count = count
        self.target_name = target_name
        self.target_netns = target_netns
        self.pending = []  # Captures since the last settle
        self._held: list[tuple[int, int, list]] = []  # (oldest, newest, Captures) of a poll
        self.nf_pending = []  # hop dicts
        self.drop_pending = []
        self.ev_pending = []
        # flow id -> its latest Journeys (for drop explanations), least recently active
        # flow first: bounded, so a long trace of many connections does not grow with them
        self.journeys: collections.OrderedDict[int, list] = collections.OrderedDict()
        self.recent = collections.OrderedDict()
        self.fast = {}  # 5-tuple bytes -> Flow
        self._fast_by_flow = {}
        self.fastq = []
        self._parsed: dict[bytes, Pkt | None] = {}  # frame bytes 12..48 -> their Pkt
        self.traced_packets = 0
        self.filtered_out = 0
        self.fast_packets = 0
        self.link_packets = 0  # neighbour discovery / multicast listener packets shown
        self.done = False  # --count reached
        self.gone = GoneFlows()  # what the summary keeps of the flows let_go() forgot
        self._let_go_at = -float("inf")

    # -- memory ----------------------------------------------------------------------------
    def let_go(self, now=None) -> list:
        """Past FLOWS_KEPT flows, forget the stored ones idle FLOW_IDLE_S (oldest first, down
        to 3/4 of it); returns them, for their last store update. What the summary says
        of them is kept in `gone` (their number, and the first GONE_LISTED headers, NAT
        texts and drop lines)."""
        table = self.flows.flows
        if len(table) <= FLOWS_KEPT:
            return []
        now = time.monotonic() if now is None else now
        if now - self._let_go_at < LET_GO_EVERY_S:
            return []  # a look at every flow: not at every poll
        self._let_go_at = now
        idle = sorted(
            (
                f
                for f in table.values()
                if f.store_id is not None and now - f.touched >= FLOW_IDLE_S
            ),
            key=operator.attrgetter("touched"),
        )[: len(table) - FLOWS_KEPT * 3 // 4]
        gone = self.gone
        for f in idle:
            self.flows.drop(f)
            self.journeys.pop(f.id, None)
            for key in self._fast_by_flow.pop(f.id, ()):
                self.fast.pop(key, None)
            if f.journeys or f.drops:
                gone.flows += 1
                if len(gone.headers) < GONE_LISTED:
                    gone.headers.append(f.header())
                    nat = f.nat_text()
                    if nat:
                        gone.nat.add(nat)
                    gone.drops += f.drop_lines()
        return idle

    # -- input ---------------------------------------------------------------------------
    def conntrack(self, ev):
        f = self.flows.conntrack(ev)
        if f and ev["kind"] in ("new", "destroy"):
            for key in self._fast_by_flow.pop(f.id, ()):  # a new connection may reuse
                self.fast.pop(key, None)  # the tuples
        return f

    def record(self, ts, point, d, ln, data, cpu, pos):
        """One analysis record (ts in CLOCK_MONOTONIC; `d` 1 for out), through records()."""
        from pyinspect.probes.packets import AREC

        head = AREC.pack(ts + self.offset, pos, ln, len(data), cpu, point, d)
        self.records((head + bytes(data),), AREC)

    def records(self, raws, header):
        """records_at() of a poll's analysis records given as their bytes."""
        if not raws:
            return collections.Counter()
        starts = list(itertools.accumulate((len(r) for r in raws[:-1]), initial=0))
        return self.records_at(b"".join(raws), starts, header)

    def records_at(self, buf, starts, header):
        """A poll's analysis records, at `starts` in `buf`: `header` is a struct.Struct
        whose unpack_from gives (ts CLOCK_REALTIME, stream position, length, captured
        length, cpu, point, direction) and whose size is where the packet starts. Returns
        {point: records}.

        One packet is captured at several points with the same headers but for what NAT
        and routing rewrite: IPv4 without options is parsed once per distinct bytes 12..48
        (all its Pkt depends on), and its captures share that Pkt."""
        unpack = header.unpack_from
        hdr = header.size
        points: list[int] = []
        seen = points.append
        add = self.pending.append
        fast, fastq, off = self.fast, self.fastq, self.offset
        parsed = self._parsed
        v4tcp, addrs = _HEAD_V4TCP.unpack, _addr_cache
        for start in starts:
            ts, pos, ln, caplen, cpu, point, d = unpack(buf, start)
            seen(point)
            start += hdr
            data = buf[start : start + caplen]
            if fast:
                key = fast_key(data)
                f = fast.get(key) if key else None
                if f is not None:
                    fastq.append((ts - off, point, d, ln, cpu, pos, f))
                    continue
            head = data[12:48]
            if len(head) == 36 and head[2] == 0x45 and head[0] == 8 and head[1] == 0:
                pkt = parsed.get(head)
                if pkt is None:
                    if head[11] == 6:  # TCP: parse_frame's usual case, inlined
                        iplen, ipid, src, dst, sport, dport, seq, ack, flags = v4tcp(head)
                        a = addrs.get(src) or _ntoa(src)
                        b = addrs.get(dst) or _ntoa(dst)
                        pkt = _new_tuple(
                            Pkt, ("tcp", a, sport, b, dport, ipid, seq, ack, iplen, flags)
                        )
                    else:
                        pkt = parse_frame(data)
                    if len(parsed) >= PARSE_CACHE:
                        parsed.clear()
                    parsed[head] = pkt
            else:
                pkt = parse_frame(data)
            add(_new_tuple(Capture, (ts, point, "out" if d else "in", ln, data, pkt, cpu, pos)))
        return collections.Counter(points)

    # -- settling ------------------------------------------------------------------------
    def settle(self, cutoff):
        """Everything older than `cutoff` (CLOCK_MONOTONIC ns; None: everything)."""
        out = Settled()
        out.fast = self._take(self, "fastq", cutoff, lambda q: q[0])
        for q in out.fast:
            f = q[6]
            f.packets += 1
            f.last_ns = max(f.last_ns, q[0] + self.offset)
        self.fast_packets += len(out.fast)
        ready = self._ready(cutoff)
        if ready:
            self._journeys(ready, cutoff, out)
        out.drops = self._settle_drops(cutoff)
        limit = None if cutoff is None else cutoff + self.offset
        out.events = self._take(self, "ev_pending", limit, lambda e: e["ts_ns"])
        return out

    def _ready(self, cutoff):
        """The pending captures older than `cutoff` (CLOCK_MONOTONIC; None: all), in the
        order they came. Each poll's captures are held as one batch with its oldest and
        newest time, so a capture is looked at again only in the polls whose cutoff falls
        within its batch."""
        held = self._held
        if self.pending:
            batch, self.pending = self.pending, []
            held.append((min(map(_capture_ts, batch)), max(map(_capture_ts, batch)), batch))
        if cutoff is None:
            self._held = []
            return [c for _old, _new, batch in held for c in batch]
        real = self._quiet_cut(held, cutoff + self.offset)  # captures keep CLOCK_REALTIME
        ready: list = []
        keep = []
        for oldest, newest, batch in held:
            if newest < real:
                ready += batch
            elif oldest >= real:
                keep.append((oldest, newest, batch))
            else:
                ready += [c for c in batch if c.ts_ns < real]
                rest = [c for c in batch if c.ts_ns >= real]
                keep.append((min(map(_capture_ts, rest)), newest, rest))
        self._held = keep
        return ready

    @staticmethod
    def _quiet_cut(held, real):
        """`real`, or the start of the run of captures (each within QUIET_NS of the next)
        that it falls in: a packet whose first captures are older than the cut and its
        last ones not would otherwise settle as two journeys. A run longer than
        CUT_LOOKBACK_NS (steady traffic: no quiet gap) keeps `real`."""
        lo, hi = real - CUT_LOOKBACK_NS, real + QUIET_NS
        ts: list[int] = []
        for oldest, newest, batch in held:
            if oldest < hi and newest >= lo:
                ts.extend(map(_capture_ts, batch))
        ts.sort()
        i = bisect.bisect_left(ts, real)
        if i == len(ts) or ts[i] >= hi:
            return real  # nothing just after the cut: no packet straddles it
        cut = ts[i]
        for k in range(i - 1, -1, -1):
            t = ts[k]
            if cut - t >= QUIET_NS:
                return cut
            if t < lo:
                return real
            cut = t
        return cut

    @staticmethod
    def _take(obj, name, cutoff, ts):
        items = getattr(obj, name)
        if cutoff is None:
            setattr(obj, name, [])
            return items
        ready = [i for i in items if ts(i) < cutoff]
        if ready:
            setattr(obj, name, [i for i in items if ts(i) >= cutoff])
        return ready

    def _journeys(self, ready, cutoff, out):
        ready.sort(key=_capture_ts)
        journeys: dict[tuple, Journey] = {}
        order = []
        links: dict[tuple, LinkPacket] = {}
        # captures sharing one parsed Pkt (records()) are one packet: looked up once
        by_pkt: dict[int, list] = {}  # id(Pkt) -> its journey's captures
        for_packet = self.flows.for_packet
        for c in ready:
            pkt = c.pkt
            caps = by_pkt.get(id(pkt))
            if caps is not None:
                caps.append(c)
                continue
            if pkt is None or pkt.proto not in FLOW_PROTOS:
                continue  # ARP, IGMP...: in the files, no flow
            if pkt.proto == "icmp6" and pkt.sport in LINK_ICMP6:
                lkey = (pkt.src, pkt.dst, pkt.sport, pkt.ident)
                lp = links.get(lkey)
                if lp is None:
                    what = ndp_text(pkt, c.data)
                    lp = links[lkey] = LinkPacket(what, pkt.src, pkt.dst, c.ts_ns)
                lp.captures.append(c)
                continue
            flow, direction, _stage = for_packet(pkt, c.ts_ns)
            ident = pkt[5:9]  # pkt.ident
            key = (flow.id, direction, ident)
            j = journeys.get(key)
            if j is None:
                j = journeys[key] = Journey(flow, direction, ident, [c], [], c.ts_ns)
                order.append(j)
            else:
                j.captures.append(c)
            by_pkt[id(pkt)] = j.captures
        self._place_hops(journeys, order, cutoff, out)
        out.links = [
            lp
            for lp in links.values()
            if not self.pfilter or any(self.pfilter.match(c.data, c.len) for c in lp.captures)
        ]
        self.link_packets += len(out.links)
        if self.pfilter:
            for j in order:
                if any(self.pfilter.match(c.data, c.len) for c in j.captures):
                    j.flow.matched = True
            for j in order:
                if not j.flow.matched:
                    self.filtered_out += len(j.captures)
            order = [j for j in order if j.flow.matched]
        if self.count:
            room = max(0, self.count - self.traced_packets)
            if len(order) > room:
                order = order[:room]  # --count: nothing past the Nth packet
                self.done = True
        recent, live_per_flow, count = self.recent, self.live_per_flow, self.count
        by_flow = self.journeys
        now = time.monotonic()
        for j in order:
            f = j.flow
            f.touched = now
            f.journeys += 1
            j.seq = f.journeys
            f.packets += len(j.captures)
            if j.first_ns > f.last_ns:
                f.last_ns = j.first_ns
            kept = by_flow.get(f.id)
            if kept is None:
                kept = by_flow[f.id] = []
                if len(by_flow) > FLOWS_WITH_JOURNEYS:
                    by_flow.popitem(last=False)
            else:
                by_flow.move_to_end(f.id)
            kept.append(j)
            if len(kept) > JOURNEYS_PER_FLOW:
                del kept[:-JOURNEYS_PER_FLOW]
            # recent journeys: a trace line that arrives after its packet was settled
            # still lands on it (in the store)
            recent[(f.id, j.direction, j.ident)] = j
            if len(recent) > RECENT_JOURNEYS:
                recent.popitem(last=False)
            if not count and f.journeys >= live_per_flow:
                self._learn_fast(j)
        self.traced_packets += len(order)
        out.journeys = order

    def _place_hops(self, journeys, order, cutoff, out):
        """Netfilter trace lines onto the journey of the same packet."""
        keep = []
        now = time.time_ns()
        index = self.flows.index
        for hop in self.nf_pending:  # each looked at in every poll until it is placed
            pk = hop.get("pkt")
            if pk and pk[0] == "icmp6" and pk[2] in LINK_ICMP6:
                continue  # neighbour discovery: a link line, no flow to put a rule path on
            placed = False
            if pk:
                hit = index.get(pk[:5])  # pk.tuple
                j = journeys.get((hit[0].id, hit[1], pk[5:9])) if hit else None  # pk.ident
                if j is not None:
                    self._nf_into(j, hop)
                    placed = True
            if not placed and cutoff is not None and now - hop["ts_ns"] < 2 * SETTLE_NS:
                keep.append(hop)
            elif not placed and pk:
                late = self._recent_journey(pk, hop)
                if late is not None:
                    out.late_hops.append((late, hop))  # its packet was already shown
                    continue
                # a packet the trace saw but no capture point did (e.g. dropped before
                # leaving the host): it still belongs to its flow
                j = self._orphan_journey(hop, journeys, order)
                if j:
                    self._nf_into(j, hop)
        self.nf_pending = keep

    def _learn_fast(self, j):
        f = j.flow
        if self.count or f.journeys < self.live_per_flow:
            return
        keys = self._fast_by_flow.setdefault(f.id, set())
        for c in j.captures:
            key = fast_key(c.data)
            if key and key not in keys:
                keys.add(key)
                self.fast[key] = f

    def _recent_journey(self, pk, hop):
        hit = self.flows.lookup(pk.tuple)
        if not hit:
            return None
        return self.recent.get((hit[0].id, hit[1], pk.ident))

    def _nf_into(self, j, hop):
        j.nf.append(hop)
        v = hop.get("verdict", "")
        if v.startswith(("DNAT", "SNAT", "MASQUERADE")):
            if j.flow.nat_rule is None:
                j.flow.nat_rule = hop
            if not j.flow.reply and hop.get("pkt") and v.startswith("DNAT"):
                to = v.split()[1] if len(v.split()) > 1 else ""
                m = re.match(r"(\d+\.\d+\.\d+\.\d+)(?::(\d+))?", to) or re.match(
                    r"\[?([0-9a-fA-F:]*:[0-9a-fA-F:.]*?)\]?(?::(\d+))?$", to
                )
                if m:
                    a, p, _b, q = j.flow.orig
                    j.flow.reply = (m.group(1), int(m.group(2) or q), a, p)
                    j.flow.nat = "dnat"
                    self.flows._index(j.flow)

    def _orphan_journey(self, hop, journeys, order):
        pkt = hop["pkt"]
        flow, direction, _ = self.flows.for_packet(pkt, hop["ts_ns"])
        key = (flow.id, direction, pkt.ident)
        j = journeys.get(key)
        if j is None:
            j = Journey(flow, direction, pkt.ident, first_ns=hop["ts_ns"])
            journeys[key] = j
            order.append(j)
        return j

    def _settle_drops(self, cutoff):
        """Drops that have settled -> [(flow, drop with its explanation, count of that
        explanation in the flow, whether it gets a row)]."""
        out = []
        keep = []
        for d in self.drop_pending:
            if cutoff is not None and d["ts_ns"] >= cutoff:
                keep.append(d)
                continue
            if d["reason"] in BENIGN_DROP_REASONS:
                continue
            if d["reason"] == "NO_SOCKET" and d["proto"] in ("icmp", "icmp6"):
                # an echo reply a raw-socket ping already got its copy of (ping_rcv frees
                # the original): no port, and nothing was lost
                continue
            tup = (d["proto"], d["src"], d["sport"], d["dst"], d["dport"])
            hit = self.flows.lookup(tup)
            if hit is None:
                pkt = Pkt(d["proto"], d["src"], d["sport"], d["dst"], d["dport"], 0, 0, 0, 0)
                hit = self.flows.for_packet(pkt, d["ts_ns"] + self.offset)
            flow = hit[0]
            if self.pfilter and not flow.matched:
                continue
            text = explain_drop(
                d, flow, self.journeys.get(flow.id, []), self.target_name, self.target_netns
            )
            d = dict(d, ts_ns=d["ts_ns"] + self.offset, explanation=text)
            n = flow.drop_counts.get(text, 0) + 1
            flow.drop_counts[text] = n
            stored = len(flow.drops) < MAX_DROP_ROWS_PER_FLOW  # the rest are counted
            if stored:
                flow.drops.append(d)
            out.append((flow, d, n, stored))
        self.drop_pending = keep
        return out
