"""The trace view's data: a session (or one flow) as a ladder of capture points.

Columns are the session's capture points in the order a packet from outside meets them
(uplink, bridge, host veth, container eth0: the tracer stores them so). Each row is one
packet's journey: its captures at the points (the journey row the analysis wrote for
it), each with the tuple read from the segment file at that point,
so a NAT rewrite shows where it happened; the netfilter hops stored for it (the rule
path); and the rule that rewrote it. Drops come from the drops table. Everything is
read through the store's methods and `pcap.pcapng.Segment.packet_at`.

`ladder(store, session_id, flow_id)` gives the whole view; `journeys(...)` and
`drops(...)` give what was stored past a cursor (ids), for the live stream.
"""

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CorruptInputError, NotFoundError
from ..pcap.export import point_name
from ..pcap.pcapng import Segment
from ..trace.flows import parse_frame, rule_label, tcp_flag_text

NAT_VERDICTS = ("DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP")


@dataclass
class Column:
    point_id: int
    name: str  # as pcap export names it: eth0@host, br0, vethab@host (web), web/eth0
    role: str  # uplink | bridge | veth | container
    ifindex: int | None = None


@dataclass
class Capture:
    point_id: int
    ts_ns: int
    direction: str | None
    len: int | None
    tuple: str = ""  # "10.0.0.2:40000 -> 10.0.0.1:8088" read from the packet at this point


@dataclass
class Rewrite:
    """Where NAT changed the packet's tuple: between captures `at - 1` and `at`."""

    at: int
    kind: str  # DNAT | un-DNAT | SNAT | un-SNAT
    before: str
    after: str
    rule: str  # the netfilter rule that did it, or what did (conntrack for replies)
    rule_text: str = ""  # that rule as iptables-save prints it


@dataclass
class Hop:
    table: str
    chain: str
    rule_num: int | None  # iptables: the rule's position; nf_tables: its handle
    rule_text: str
    verdict: str
    handle: bool = False  # rule_num is an nf_tables handle (`nft -a list` shows it)

    @classmethod
    def from_rule(cls, rule: dict) -> "Hop":
        """The hop a flow's stored NAT rule (its detail's `nat_rule`) describes."""
        return cls(
            rule["table"],
            rule["chain"],
            rule.get("rule_num"),
            rule.get("rule_text") or "",
            rule["verdict"],
            bool(rule.get("handle")),
        )

    @property
    def num(self) -> str:
        return rule_label(self.rule_num, self.handle) if self.rule_num else "policy"

    @property
    def text(self) -> str:
        return f"{self.table}:{self.chain} {self.num} -> {self.verdict or 'continue'}"


@dataclass
class Journey:
    id: int  # its row in the store's journeys (the stream's cursor)
    flow_id: int | None
    ts_ns: int
    proto: str = ""
    flags: str = ""
    len: int | None = None
    way: str = ""  # "in" (towards the container) | "out"
    captures: list[Capture] = field(default_factory=list)
    rewrites: list[Rewrite] = field(default_factory=list)
    hops: list[dict] = field(default_factory=list)
    kind: str = "packet"


@dataclass
class Drop:
    id: int
    ts_ns: int
    reason: str
    location: str
    flow_id: int | None
    point_id: int | None  # the capture point of its interface, when it is one
    explanation: str = ""
    tuple: str = ""
    kind: str = "drop"


@dataclass
class Ladder:
    session: dict
    columns: list[Column]
    journeys: list[Journey]
    drops: list[Drop]
    flow: dict | None = None
    flows: list[dict] = field(default_factory=list)
    truncated: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _role(description: str | None) -> str:
    role = (description or "").split(":", 1)[0].strip()
    return role if role in ("uplink", "bridge", "veth", "container") else "veth"


def columns(store, session_id: int, container: str | None) -> list[Column]:
    return [
        Column(
            p["id"],
            point_name(p["name"], p["description"], container) or f"point{p['id']}",
            _role(p["description"]),
            p["ifindex"],
        )
        for p in store.capture_point_rows(session_id)
    ]


def _tuple(pkt) -> str:
    if pkt is None:
        return ""
    if pkt.proto == "icmp":
        return f"{pkt.src} -> {pkt.dst}"
    return f"{pkt.src}:{pkt.sport} -> {pkt.dst}:{pkt.dport}"


class _Frames:
    """Segment files opened once per call; packet bytes by (path, offset)."""

    def __init__(self, store) -> None:
        self.store = store
        self.open: dict[str, Segment | None] = {}

    def packet(self, path: str | None, offset: int):
        if path is None:
            return None
        if path in self.open:
            seg = self.open[path]
        else:
            seg = None
            with contextlib.suppress(NotFoundError, CorruptInputError, OSError):
                seg = Segment(self.store.segment_path(path)).read_header()
            self.open[path] = seg
        if seg is None:
            return None
        try:
            return parse_frame(seg.packet_at(offset).data)
        except (CorruptInputError, ValueError, IndexError):
            return None  # not written yet or cut off (a killed trace)

    def close(self) -> None:
        for seg in self.open.values():
            if seg is not None:
                seg.close()


def journeys(
    store,
    session_id: int,
    flow_id: int | None = None,
    after_id: int = 0,
    limit: int = 2000,
    flows: dict | None = None,
) -> tuple[list[Journey], bool]:
    """The journeys stored past journey id `after_id` and whether more are waiting (the
    limit cut them)."""
    rows = store.journey_rows(session_id, flow_id, after_id, limit)
    more = len(rows) >= limit
    paths = {g.id: g.path for g in store.segments([session_id])}
    frames = _Frames(store)
    try:
        packets = [
            [frames.packet(paths.get(c.segment_id), c.offset) for c in caps]
            for _jid, _fid, caps in rows
        ]
    finally:
        frames.close()
    if flows is None:
        flows = store.flow_rows(fid for _jid, fid, _caps in rows if fid is not None)
    hops: dict[int, list[Hop]] = {}
    for jid, table, chain, num, text, verdict, detail in store.hops_of_journeys(
        session_id, [jid for jid, _fid, _caps in rows]
    ):
        d = _json(detail)
        by_handle = isinstance(d, dict) and bool(d.get("handle"))
        hops.setdefault(jid, []).append(
            Hop(table, chain, num, text or "", verdict or "", by_handle)
        )
    return [
        _journey(jid, caps, pkts, hops.get(jid, []), flows.get(fid) if fid else None, fid)
        for (jid, fid, caps), pkts in zip(rows, packets, strict=True)
    ], more


def _journey(
    jid: int, caps: list, pkts: list, hops: list[Hop], flow: dict | None, fid: int | None
) -> Journey:
    """A stored journey (its IndexCaptures and their parsed packets) for the ladder."""
    pkt = next((p for p in pkts if p is not None), None)
    j = Journey(
        id=jid,
        flow_id=fid,
        ts_ns=caps[0].ts_ns,
        proto=pkt.proto if pkt else "",
        flags=tcp_flag_text(pkt.flags) if pkt else "",
        len=caps[0].len,
        captures=[
            Capture(c.point_id, c.ts_ns, c.direction, c.len, _tuple(p))
            for c, p in zip(caps, pkts, strict=True)
        ],
        hops=[dict(asdict(h), text=h.text) for h in hops],
    )
    # point ids follow the column order (outside first): towards the container is "in"
    j.way = "in" if j.captures[0].point_id <= j.captures[-1].point_id else "out"
    nat_hop = next(
        (h for h in hops if h.table.split()[-1:] == ["nat"] and h.verdict.startswith(NAT_VERDICTS)),
        None,
    )
    for i in range(1, len(pkts)):
        before, after = pkts[i - 1], pkts[i]
        if before is None or after is None or _tuple(before) == _tuple(after):
            continue
        j.rewrites.append(
            Rewrite(
                i,
                _rewrite_kind(before, after, flow),
                _tuple(before),
                _tuple(after),
                *_rule_text(nat_hop, flow, _original(before, flow)),
            )
        )
    return j


def _original(pkt, flow: dict | None) -> bool:
    """Whether `pkt` goes the flow's original way (its source is the connection's
    originator, before or after SNAT); True when the flow is unknown."""
    if not flow:
        return True
    src = (pkt.src, pkt.sport)
    return src in (
        (flow.get("orig_src"), flow.get("orig_sport")),
        (flow.get("reply_dst"), flow.get("reply_dport")),
    )


def _rewrite_kind(before, after, flow: dict | None) -> str:
    dst = (before.dst, before.dport) != (after.dst, after.dport)
    src = (before.src, before.sport) != (after.src, after.sport)
    original = _original(before, flow)
    if dst and src:
        return "DNAT+SNAT" if original else "un-NAT"
    if dst:
        return "DNAT" if original else "un-SNAT"
    return "SNAT" if original else "un-DNAT"


def _rule_text(hop: Hop | None, flow: dict | None, original: bool) -> tuple[str, str]:
    """(which rule rewrote the packet, its text) from the journey's NAT hop, else the
    flow's NAT rule (replies are un-NATed by conntrack, without a rule of their own)."""
    if hop is not None:
        return f"{hop.table} {hop.chain} {hop.num} -> {hop.verdict}", hop.rule_text
    detail = _json(flow.get("detail")) if flow else None
    rule = (detail or {}).get("nat_rule") if isinstance(detail, dict) else None
    if rule:
        r = Hop.from_rule(rule)
        via = "" if original else "conntrack, reply of "
        return f"{via}{r.table} {r.chain} {r.num} -> {r.verdict}", r.rule_text
    return ("" if original else "conntrack"), ""


def _json(text):
    if isinstance(text, str):
        try:
            return json.loads(text)
        except ValueError:
            return None
    return text


def drops(
    store, session_id: int, flow_id: int | None = None, after_id: int = 0, cols=None
) -> list[Drop]:
    """The session's (or flow's) drops past drop id `after_id`."""
    by_ifindex = {c.ifindex: c.point_id for c in cols or [] if c.ifindex}
    out = []
    for r in store.session_drop_rows(session_id, flow_id, after_id):
        d = _json(r["detail"]) or {}
        tup = ""
        if d.get("src"):
            tup = f"{d.get('src')}:{d.get('sport')} -> {d.get('dst')}:{d.get('dport')}"
        out.append(
            Drop(
                r["id"],
                r["ts_ns"],
                r["reason"] or "",
                r["location"] or "",
                r["flow_id"],
                by_ifindex.get(r["ifindex"]),
                d.get("explanation") or "",
                tup,
            )
        )
    return out


def ladder(store, session_id: int, flow_id: int | None = None, limit: int = 2000) -> Ladder:
    """The whole view of a session (or one of its flows)."""
    session = store.trace_session(session_id)
    if session is None:
        raise NotFoundError(f"no trace session {session_id}")
    flow = None
    if flow_id is not None:
        flow = store.flow_rows([flow_id]).get(flow_id)
        if flow is None or flow["session_id"] != session_id:
            raise NotFoundError(f"no flow {flow_id} in trace session {session_id}")
    cols = columns(store, session_id, session.get("container_name"))
    all_flows = store.recent_flows(session_id, limit=500)
    flows = {f["id"]: f for f in all_flows}
    rows, more = journeys(store, session_id, flow_id, 0, limit, flows=flows)
    session.pop("summary", None)
    return Ladder(
        session=session,
        columns=cols,
        journeys=rows,
        drops=drops(store, session_id, flow_id, 0, cols),
        flow=flow,
        flows=[_flow_brief(f) for f in sorted(all_flows, key=lambda f: f["id"])],
        truncated=more,
    )


def _flow_brief(f: dict) -> dict:
    sport = f"{f['orig_sport']}" if f.get("orig_sport") is not None else ""
    dport = f"{f['orig_dport']}" if f.get("orig_dport") is not None else ""
    src = f"{f['orig_src']}:{sport}" if sport else f"{f['orig_src']}"
    dst = f"{f['orig_dst']}:{dport}" if dport else f"{f['orig_dst']}"
    return {
        "id": f["id"],
        "text": f"{f['proto']} {src} -> {dst}",
        "nat": f.get("nat") or "",
        "packets": f.get("packets", 0),
    }


def root_store(root: str | Path):
    """A Store of a state root (the caller closes it)."""
    from ..config import database_path
    from ..store import Store

    return Store(database_path(root))


# -- by state root (what the dashboard calls) ------------------------------------------------
def view(root: str | Path, session_id: int, flow_id: int | None = None) -> dict:
    """ladder() of the store under `root`, as JSON-ready dicts."""
    with root_store(root) as store:
        return ladder(store, session_id, flow_id).to_dict()


def new_journeys(root: str | Path, session_id: int, flow_id: int | None, after_id: int) -> list:
    """Journeys stored past journey id `after_id` (dicts; `id` is the cursor)."""
    with root_store(root) as store:
        rows, _ = journeys(store, session_id, flow_id, after_id, limit=500)
    return [asdict(j) for j in rows]


def new_drops(root: str | Path, session_id: int, flow_id: int | None, after_id: int) -> list:
    """Drops stored past drop id `after_id` (dicts), placed at their capture point."""
    with root_store(root) as store:
        cols = columns(store, session_id, None)
        return [asdict(d) for d in drops(store, session_id, flow_id, after_id, cols)]


def session_info(root: str | Path, session_id: int) -> dict:
    """A session's row (no summary) with its flows (counted and listed) and indexed
    packets; NotFoundError."""
    with root_store(root) as store:
        row = store.trace_session(session_id)
        if row is None:
            raise NotFoundError(f"no trace session {session_id}")
        row.pop("summary", None)
        flows = sorted(store.recent_flows(session_id, limit=500), key=lambda f: f["id"])
        row["flows"] = store.flow_counts().get(session_id, 0)
        row["flow_list"] = [_flow_brief(f) for f in flows]
        row["packets_indexed"] = store.indexed_count(session_id=session_id)
    return row
