"""Where settled analysis goes: live lines (`LiveText`) and the store (`StoreSink`).

The packets themselves are not here: the evidence path has already written them to the
segment files (trace/evidence.py). The store gets flows, netfilter hops (a journey's rule
path when it differs from the flow's previous one that way; repeats are counted on the
flow), drops, the container's events and an index row per analysed packet's journey (its
flow, and each capture's segment, offset, time, point, direction and length packed in one
column) pointing into those files.
"""

import json
import os
import time

from ..store import DropRow, FlowRow
from ..store.rows import CAPTURE
from . import flows as F
from .dns import dns_item
from .target import role

LIVE_DROPS_PER_CAUSE = 3
PATHS_SHOWN_PER_FLOW = 16  # distinct rule paths a flow remembers having printed
# the store's transaction: at most one a second (a poll is every 0.1-0.25 s), so its
# commit and its statements are paid once for ~4-10 polls
STORE_EVERY_S = 1.0
DROP_DETAIL = ("explanation", "proto", "src", "sport", "dst", "dport", "netns", "tcpflags")


class LiveText:
    """Output items (dicts with a `text` line) for journeys, drops and events. With
    `fields` False a journey's items hold only their `text` (and `_ts`, the sort key): what
    a text view prints, without the JSON view's fields."""

    def __init__(self, points, live_per_flow, target_name, fields=True):
        self.fields = fields
        self.points = points
        self.live_per_flow = live_per_flow
        self.target_name = target_name
        self.host_points = {i for i, p in enumerate(points) if p.netns is None}
        self._where = [(p.name, role(p), f"{p.name:<8} {role(p):<9}") for p in points]
        # per point: its name, role and the middle of a capture line by direction
        # (`us  POINT ROLE DIR `)
        self._point = [
            (w[0], w[1], {d: f"us  {w[2]} {d:<3} " for d in ("in", "out")}) for w in self._where
        ]
        self._ends: dict[tuple, str] = {}  # (proto, src, sport, dst, dport) -> `a:p -> b:q `
        self._us: dict[int, str] = {}  # 0.1 us since a journey's first capture -> its text
        self._hop_text: dict[tuple, str] = {}  # a netfilter hop's text after `[N] `

    def journey(self, j):
        """The flow's header line on its first journey, then one line per capture and per
        netfilter hop for its first `live_per_flow` journeys: a rule path the flow has not
        shown that way yet in full, a repeated one as one line. Without `fields`, one item
        holds the journey's lines."""
        f = j.flow
        items: list = []  # without fields: the lines
        fields = self.fields
        if j.seq == 1 and not fields:
            items.append(f"[{f.id}] {f.header()}")
        elif j.seq == 1:
            items.append(
                {
                    "type": "flow",
                    "flow": f.id,
                    "_ts": j.first_ns,
                    "text": f"[{f.id}] {f.header()}",
                    "proto": f.proto,
                    "orig": f.orig,
                    "reply": f.reply,
                    "nat": f.nat,
                }
            )
        if j.seq > self.live_per_flow:
            return items if fields else self._block(j, items)
        if j.nf:
            caps, cut, nf = j.path(self.host_points)
            rule_path = self._rule_path(f, j, nf)
        else:
            caps, cut, rule_path = sorted(j.captures, key=F._capture_ts), -1, []
        tag = f"[{f.id}]"
        point_of = self._point
        add = items.append
        t0 = caps[0][0] if caps else 0
        # captures sharing a Pkt (flows.Correlator.records): one text of their endpoints
        # and one item to copy (a dict's copy keeps its keys' order: the JSON lines')
        last_pk, last_what, base, icmp6 = None, "", {}, False
        ends, us_of = self._ends, self._us
        fid, first_ns = f.id, j.first_ns
        for i, c in enumerate(caps):
            if i == cut:
                items += rule_path
            ts, point, d, ln, data, pk, _cpu, _pos = c
            name, r, mids = point_of[point]
            if pk is not last_pk:
                last_pk = pk
                proto, src, sport, dst, dport = pk[:5]
                icmp6 = proto == "icmp6"
                # a flow's endpoints, as text once a tuple
                e = ends.get(pk[:5])
                if e is None:
                    if len(ends) >= 4096:
                        ends.clear()
                    e = ends[pk[:5]] = f"{F.ep(src, sport)} -> {F.ep(dst, dport)} "
                last_what = e + F.tcp_flag_text(pk[9])
                if fields:
                    base = {
                        "type": "hop",
                        "flow": fid,
                        "hop": "capture",
                        "ts_ns": ts,
                        "_ts": first_ns,
                        "point": name,
                        "role": r,
                        "dir": d,
                        "src": src,
                        "sport": sport,
                        "dst": dst,
                        "dport": dport,
                        "len": ln,
                        "text": "",
                    }
            if icmp6 and (ndp := F.ndp_text(pk, data)):
                # ICMPv6: what it is instead of ports (neighbour discovery: its target)
                what = f"{pk.src} -> {pk.dst} {ndp}"
                item = self._capture(f, j, c, name, r) if fields else None
                if item is not None:
                    item["ndp"] = ndp
            elif not fields:
                what = last_what
                item = None
            else:
                what = last_what
                item = base.copy()
                item["ts_ns"] = ts
                item["point"] = name
                item["role"] = r
                item["dir"] = d
                item["len"] = ln
            dt = ts - t0
            if 0 <= dt < 10**15 and dt % 100 != 50:
                # what f"{dt / 1000:+9.1f}" prints, without formatting a float (no tie
                # to round: the float's binary error cannot cross the .05 us boundary),
                # formatted once a value
                t = (dt + 50) // 100
                us = us_of.get(t)
                if us is None:
                    if len(us_of) >= 4096:
                        us_of.clear()
                    us = us_of[t] = f"{t // 10:+7d}.{t % 10}"
            else:
                us = f"{dt / 1000:+9.1f}"
            text = f"{tag} {us}{mids[d]}{what} len {ln}"
            if item is None:
                add(text)
            else:
                item["text"] = text
                add(item)
        if cut >= len(caps):
            items += rule_path
        return items if fields else self._block(j, items)

    @staticmethod
    def _block(j, lines):
        """A journey's lines as one item (the text view's)."""
        return [{"_ts": j.first_ns, "text": "\n".join(lines)}] if lines else []

    @staticmethod
    def _capture(f, j, c, name, r):
        """A capture's live item; its text is set by journey()."""
        pk = c.pkt
        return {
            "type": "hop",
            "flow": f.id,
            "hop": "capture",
            "ts_ns": c.ts_ns,
            "_ts": j.first_ns,
            "point": name,
            "role": r,
            "dir": c.dir,
            "src": pk.src,
            "sport": pk.sport,
            "dst": pk.dst,
            "dport": pk.dport,
            "len": c.len,
            "text": "",
        }

    def _rule_path(self, f, j, nf):
        """A journey's netfilter hops (`nf`, in order): each one when the flow has not shown
        this rule path that way yet, else one line saying it is the same, with its verdict
        (a later FIN accepted by another rule than the SYN is a new path, shown whole). In
        the JSON view that line carries its last hop's fields, `same_path` and `steps`."""
        key = (j.direction, j.rule_path_key())
        shown = f.paths_shown
        if key not in shown:
            if len(shown) < PATHS_SHOWN_PER_FLOW:
                shown.add(key)
            return [self._hop(f, j, h) for h in nf]
        verdict = nf[-1]["verdict"]
        what = f"the same rule path as before ({len(nf)} steps) -> {verdict}"
        text = f"[{f.id}] {'':>11}  netfilter: {what}"
        if not self.fields:
            return [text]
        item = self._hop(f, j, nf[-1])  # the JSON view: the fields of its last hop
        item.update(text=text, same_path=True, steps=len(nf))
        return [item]

    def _hop(self, f, j, h):
        """`netfilter TABLE:CHAIN rule N -> VERDICT  (rule text)`; nf_tables hops name the
        rule by its handle (`nft -a list` shows it), a chain's end as `end of chain`."""
        nft = h.get("backend") == "nftables"
        key = (h["table"], h["chain"], h["kind"], h["rule_num"], h["rule_text"], h["verdict"], nft)
        what = self._hop_text.get(key)  # the text after the flow's tag: few distinct ones
        if what is None:
            what = self._hop_what(h)
            if len(self._hop_text) >= 4096:
                self._hop_text.clear()
            self._hop_text[key] = what
        text = f"[{f.id}] {what}"
        if not self.fields:
            return text  # a line of journey()'s text block
        return {
            "type": "hop",
            "flow": f.id,
            "hop": "netfilter",
            "_ts": j.first_ns,
            "table": h["table"],
            "chain": h["chain"],
            "kind": h["kind"],
            "rule_num": h["rule_num"],
            "rule_text": h["rule_text"],
            "verdict": h["verdict"],
            "backend": h["backend"],
            "hook": h.get("hook"),
            "handle": h.get("handle"),
            "text": text,
        }

    @staticmethod
    def _hop_what(h):
        """A netfilter hop's line after its flow's `[N] `."""
        where = f"{h['table']}:{h['chain']}"
        rule = h["rule_text"]
        if h.get("backend") == "nftables":
            what = {"policy": " policy", "return": " end of chain"}.get(
                h["kind"], f" {F.rule_label(h['rule_num'], True)}"
            )
            text = f"{'':>11}  netfilter {where}{what} -> {h['verdict']}"
            if h["kind"] == "rule" and rule:
                text += f"  ({rule})"
        else:
            num = ""
            if h["kind"] == "rule" or not rule.startswith("policy"):
                num = f" {F.rule_label(h['rule_num'], False)}"
            text = f"{'':>11}  netfilter {where}{num} -> {h['verdict']}"
            if rule and rule != f"policy {h['verdict']}":
                text += f"  ({rule})"
            elif h["kind"] == "policy":
                text += " (policy)"
        return text

    def link(self, lp):
        """One neighbour discovery / multicast listener packet, with where it was seen."""
        where = ", ".join(
            f"{self._where[c.point][0]} {c.dir}" for c in sorted(lp.captures, key=lambda c: c.ts_ns)
        )
        return {
            "type": "ndp",
            "_ts": lp.first_ns,
            "what": lp.what,
            "src": lp.src,
            "dst": lp.dst,
            "points": [
                [self._where[c.point][0], c.dir] for c in sorted(lp.captures, key=lambda c: c.ts_ns)
            ],
            "text": f"[nd] {lp.src} -> {lp.dst} {lp.what}: {where}",
        }

    @staticmethod
    def drop(flow, d, n):
        if n > LIVE_DROPS_PER_CAUSE:
            return None
        return {
            "type": "drop",
            "flow": flow.id,
            "_ts": d["ts_ns"],
            "text": f"[{flow.id}] DROP {d['explanation']} (kfree_skb reason "
            f"{d['reason']} at {d['location']})",
            "reason": d["reason"],
            "explanation": d["explanation"],
        }

    def event(self, ev):
        """A process/link/cgroup event line (None for setns: stored only)."""
        if ev["kind"] == "setns":
            return None  # tools looking into the namespace
        if ev["kind"] == "dns":
            return dns_item(ev)  # a DNS lookup (trace/dns.py)
        d = ev.get("detail") or {}
        what = {
            "exec": " ".join(d.get("argv") or [d.get("filename", "")]),
            "exit": f"code {d.get('code')}"
            if "code" in d
            else (f"signal {d.get('signal')}" if "signal" in d else ""),
            "fork": f"from {d.get('parent_pid')}",
        }.get(ev["kind"], "")
        if ev["kind"].startswith("link_"):
            what = f"{ev.get('ifname')} {json.dumps(d, sort_keys=True)[:80]}"
        elif ev["kind"].startswith("cgroup_"):
            what = f"{d.get('controllers') or 'v2'}:{d.get('path')}"
        text = (
            f"[{self.target_name}] {ev['kind']:<5} pid {ev['pid']} ({ev['comm']}) {what}"
        ).rstrip()
        return {
            "type": "event",
            "_ts": ev["ts_ns"],
            "ts_ns": ev["ts_ns"],
            "kind": ev["kind"],
            "pid": ev["pid"],
            "comm": ev["comm"],
            "text": text,
        }


def rule_ref(f):
    r = f.nat_rule
    if not r:
        return None
    ref = {
        "table": r["table"],
        "chain": r["chain"],
        "rule_num": r["rule_num"],
        "rule_text": r["rule_text"],
        "verdict": r["verdict"],
    }
    if r.get("handle"):  # nf_tables: rule_num is the rule's handle
        ref["handle"] = True
    return ref


class StoreSink:
    """Writes one session's analysis through the store's trace methods."""

    def __init__(self, store, session_id, point_ids, target, offset, every_s=STORE_EVERY_S):
        self.store = store
        self.offset = offset  # fast-path times are CLOCK_MONOTONIC
        self.session_id = session_id
        self.point_ids = point_ids
        self.target = target
        self.every_ns = int(every_s * 1e9)  # 0: a transaction a poll
        self.segment_ids = {}  # segment number -> store id
        self._segments_done = set()
        self._last_path = {}  # (flow id, direction) -> the last rule path stored
        self._hop_details: dict[tuple, str] = {}
        self.events_seen = 0
        # what the next flush writes: journey rows' values, row after row
        # (Store.add_journey_values), with the Flow itself where its row's flow had no id
        # yet (`_holes`: those positions); flows without an id, by first journey; hops as
        # (journey, hop, its journey's row number in `_values` or None, ts, late); drops
        # as (flow, drop); event dicts
        self._flushed_ns = time.monotonic_ns()
        self._values: list = []
        self._holes: list[int] = []
        self._new_flows: dict[int, F.Flow] = {}
        self._hops: list[tuple] = []
        self._drops: list[tuple] = []
        self._events: list[dict] = []

    def segments(self, segments):
        """Record new segment files, and finished ones (from the writer's snapshot)."""
        for seg in segments:
            if seg.seq not in self.segment_ids:
                self.segment_ids[seg.seq] = self.store.add_segment(
                    self.session_id, seg.seq, seg.path, seg.started_ns
                )
            if seg.ended_ns and seg.seq not in self._segments_done:
                self._segments_done.add(seg.seq)
                self.store.finish_segment(self.segment_ids[seg.seq], seg.size, seg.ended_ns)

    def flow_row(self, f):
        o = f.orig
        r = f.reply or (None, None, None, None)
        return FlowRow(
            self.session_id,
            f.proto,
            o[0],
            o[1],
            o[2],
            o[3],
            r[0],
            r[1],
            r[2],
            r[3],
            ct_id=f.ct_id,
            nat=f.nat_text() or "",
            first_ns=f.first_ns,
            last_ns=f.last_ns,
            detail={
                "packets": f.packets,
                "traced_packets": f.journeys,
                "tcp_state": f.tcp_state,
                "nat_rule": rule_ref(f),
                "drops": f.drop_counts,
                "repeated_rule_paths": f.repeated_paths,
            },
        )

    def flow_id(self, f):
        if f.store_id is None:
            f.store_id = self.store.insert_flow(self.flow_row(f))
        return f.store_id

    def settled(self, s, locate):
        """Take a poll's settled journeys (their packets located now: `locate(cpu, pos)`
        -> (segment number, offset) or None), hops, drops and events; they reach the
        store at the next flush, at most `every_s` later. Fast-path packets (a long
        flow's bulk) get no index row of their own: they are in the files, and `pcap
        export --flow` finds them by the flow's tuples and time range."""
        sid, pids, seg_ids = self.session_id, self.point_ids, self.segment_ids
        values = self._values
        add = values.extend
        holes, new_flows, hops = self._holes, self._new_flows, self._hops
        pack = CAPTURE.pack
        for j in s.journeys:
            f = j.flow
            fid = f.store_id
            if fid is None:
                fid = new_flows.setdefault(f.id, f)  # its id at the flush
            caps: list[bytes] = []
            for ts, point, d, ln, _data, _pkt, cpu, pos in j.captures:
                loc = locate(cpu, pos)
                if loc is None:
                    continue  # not in the files (ring full, size cap): counted as lost
                seg = seg_ids.get(loc[0])
                if seg is not None:
                    if not caps:
                        first_ts = ts
                    # rows.pack_capture's bytes, inline (a call per capture less)
                    caps.append(pack(seg, loc[1], ts, pids[point], ln, d == "out"))
            row = None
            if caps:
                row = len(values) // 5
                if fid is f:
                    holes.append(len(values) + 1)
                add((sid, fid, first_ts, len(caps), b"".join(caps)))
            if j.nf and not self._same_path(j):
                ts = j.captures[0].ts_ns if j.captures else j.first_ns
                hops += [(j, h, row, ts, False) for h in j.nf]
        for j, h in s.late_hops:
            ts = j.captures[0].ts_ns if j.captures else j.first_ns
            hops.append((j, h, None, ts, True))
        self._drops += [(f, d) for f, d, _n, stored in s.drops if stored]
        self._events += s.events
        if time.monotonic_ns() - self._flushed_ns >= self.every_ns:
            self.flush()

    @property
    def pending(self):
        """True while settled() holds what a flush has not written yet."""
        return bool(self._values or self._new_flows or self._hops or self._drops or self._events)

    def flush(self):
        """Write what settled() took since the last flush, in one transaction."""
        self._flushed_ns = time.monotonic_ns()
        if not self.pending:
            return
        values, holes, hops = self._values, self._holes, self._hops
        drops, events = self._drops, self._events
        new = [f for f in self._new_flows.values() if f.store_id is None]
        self._values, self._holes, self._new_flows = [], [], {}
        self._hops, self._drops, self._events = [], [], []
        with self.store.batch():
            if new:  # the new flows in one statement, numbered in their journeys' order
                ids = self.store.insert_flows([self.flow_row(f) for f in new])
                for f, fid in zip(new, ids, strict=True):
                    f.store_id = fid
            for i in holes:
                values[i] = values[i].store_id
            first_id = self.store.add_journey_values(values) if values else 0
            rows = [
                self._hop_row(j, h, None if row is None else first_id + row, ts, late)
                for j, h, row, ts, late in hops
                if j.flow.store_id is not None
            ]
            if rows:
                self.store.insert_hops(rows)
            if drops:
                self.store.insert_drops(
                    [
                        DropRow(
                            self.session_id,
                            d["ts_ns"],
                            d["reason"],
                            d["location"],
                            d["ifindex"],
                            self.flow_id(f),
                            {k: d[k] for k in DROP_DETAIL},
                        )
                        for f, d in drops
                    ]
                )
            self.events(events)

    def _same_path(self, j):
        """True (and counted on the flow) when the journey's netfilter rule path is the
        one stored for the flow's previous journey that way: the rows would repeat it."""
        path = j.rule_path_key()
        key = (j.flow.id, j.direction)
        if self._last_path.get(key) == path:
            j.flow.repeated_paths += 1
            return True
        self._last_path[key] = path
        return False

    def events(self, events):
        me = os.getpid()
        rows = [ev for ev in events if ev["pid"] != me]
        self.events_seen += len(rows)
        if rows:
            self.store.insert_events(
                rows,
                session_id=self.session_id,
                container_id=self.target.id,
                container_name=self.target.name,
            )

    def _hop_row(self, j, h, journey_id, ts, late):
        key = (h["kind"], h["backend"], h["hook"], h.get("handle") or None, late)
        detail = self._hop_details.get(key)  # its JSON text: few distinct ones a trace
        if detail is None:
            d = {"kind": h["kind"], "backend": h["backend"], "hook": h["hook"]}
            if h.get("handle"):
                d["handle"] = h["handle"]
            if late:
                d["late"] = True
            detail = json.dumps(d, sort_keys=True)  # as the store writes a dict detail
            if len(self._hop_details) < 4096:
                self._hop_details[key] = detail
        return (  # HopRow's values (Store.insert_hops)
            self.session_id,
            j.flow.store_id,
            journey_id,
            ts,
            h["table"],
            h["chain"],
            h["rule_num"],
            h["rule_text"],
            h["verdict"],
            detail,
        )

    def flows_done(self, flows):
        """The last update of flows the trace forgets before it ends (Correlator.let_go)."""
        for f in flows:
            if f.store_id is not None:
                self.store.update_flow(f.store_id, self.flow_row(f))
            for d in ("orig", "reply"):
                self._last_path.pop((f.id, d), None)

    def finish(self, flows, summary):
        self.flush()
        for f in flows:
            if f.store_id is not None:
                self.store.update_flow(f.store_id, self.flow_row(f))
        self.store.end_trace(self.session_id, "stopped", summary)
