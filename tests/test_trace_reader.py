"""The analysis reader's shortcuts, without a kernel: each gives what the plain way gives."""

import gc
import random
import struct
import threading
import types

from pyinspect.probes.packets import AREC
from pyinspect.trace import flows as F
from pyinspect.trace import session as S
from pyinspect.trace.evidence import EvidenceWriter, _Placed
from pyinspect.trace.sinks import LiveText


class Point:
    def __init__(self, name, netns=None):
        self.name, self.netns, self.description = name, netns, ""


POINTS = [Point("up0"), Point("br0"), Point("eth0", "/proc/1/ns/net")]


def frame(src, sport, dst, dport, ipid, flags=0x18, proto=6, ihl=5):
    l4 = (
        struct.pack("!HHIIBBHHH", sport, dport, ipid, 0, 0x50, flags, 512, 0, 0)
        if proto == 6
        else struct.pack("!HHHH", sport, dport, 12, 0)
    )
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(l4),
        ipid,
        0,
        64,
        proto,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    return b"\0" * 12 + b"\x08\x00" + ip + b"\x01" * 4 * (ihl - 5) + l4


def packets():
    """(ts, point, dir, len, frame, cpu, pos): TCP, TCP with IP options, UDP, at 3 points."""
    out = []
    t = 5_000
    for k in range(30):
        for proto, ihl in ((6, 5), (6, 6), (17, 5)):
            for p in range(3):
                dst = "10.0.0.1" if p == 0 else "172.30.0.2"
                fr = frame("10.0.0.9", 4000 + proto, dst, 80, k, proto=proto, ihl=ihl)
                out.append((t, p, k % 2, len(fr), fr, p % 2, len(out) * 64))
                t += 700
    return out


def test_records_parse_what_parse_frame_parses():
    """records() parses IPv4 TCP inline and shares one parse between captures with the
    same bytes: every capture still carries what parse_frame gives for its frame."""
    offset = 1_000_000
    recs = packets()
    many = F.Correlator(offset, 20)
    raws = [
        AREC.pack(ts + offset, pos, ln, len(fr), cpu, p, d) + fr
        for ts, p, d, ln, fr, cpu, pos in recs
    ]
    counts = many.records(raws, AREC)
    assert counts == {0: 90, 1: 90, 2: 90}
    assert [c.pkt for c in many.pending] == [F.parse_frame(r[4]) for r in recs]
    assert [(c.ts_ns, c.point, c.dir, c.len, c.cpu, c.pos) for c in many.pending] == [
        (ts + offset, p, "out" if d else "in", ln, cpu, pos) for ts, p, d, ln, fr, cpu, pos in recs
    ]
    one = F.Correlator(offset, 20)  # record(): one at a time, CLOCK_MONOTONIC
    for r in recs:
        one.record(*r)
    assert one.pending == many.pending


def test_settle_takes_what_is_older_than_the_cutoff_across_polls():
    # 1.4 ms apart: quiet gaps (F.QUIET_NS) between the captures, so a cut stays put
    recs = [(r[0] * 2000, *r[1:]) for r in packets()]
    c = F.Correlator(0, 20)
    settled = []  # (ts, stream position) of what settled: journeys' and the fast path's

    def take(s):
        return [(x.ts_ns, x.pos) for j in s.journeys for x in j.captures] + [
            (ts, pos) for ts, _p, _d, _l, _cpu, pos, _f in s.fast
        ]

    for n in range(0, len(recs), 50):
        for r in recs[n : n + 50]:
            c.record(*r)
        cutoff = recs[min(n + 50, len(recs)) - 1][0] - 20_000  # the poll's last 20 us wait
        settled += take(c.settle(cutoff))
        assert all(ts < cutoff for ts, _pos in settled)
        assert all(x[0] >= cutoff for b in c._held for x in b[2])
    settled += take(c.settle(None))
    assert c.fast_packets  # past 20 journeys a flow takes the fast path
    assert sorted(pos for _ts, pos in settled) == [r[6] for r in recs]


def test_a_packet_across_the_settle_cut_settles_as_one_journey():
    """A poll's cut that falls between one packet's captures (uplink in before it, the
    bridge and the container after) moves back to the quiet gap before that packet: its
    captures settle together, as one journey, in the next poll."""
    c = F.Correlator(0, 20)
    t = 50_000_000
    early = frame("10.0.0.9", 4000, "10.0.0.1", 80, 1)
    c.record(t - 5_000_000, 0, 0, len(early), early, 0, -1)  # an earlier packet, 5 ms before
    pkt = frame("10.0.0.9", 4000, "10.0.0.1", 80, 2)
    for p, dt in enumerate((0, 64_000, 66_000)):
        c.record(t + dt, p, 0, len(pkt), pkt, 0, -1)
    first = c.settle(t + 10_000).journeys  # the cut: after its uplink capture
    assert [len(j.captures) for j in first] == [1]
    assert first[0].captures[0].ts_ns == t - 5_000_000
    (j,) = c.settle(None).journeys
    assert [x.point for x in j.captures] == [0, 1, 2]


def test_steady_traffic_keeps_the_settle_cut():
    """No quiet gap within the look-back (a capture every 0.5 ms for 40 ms): the cut stays
    where the poll put it."""
    c = F.Correlator(0, 20)
    for k in range(80):
        fr = frame("10.0.0.9", 4000 + k, "10.0.0.1", 80, k)
        c.record(1_000_000 + k * 500_000, 0, 0, len(fr), fr, 0, -1)
    cut = 1_000_000 + 60 * 500_000 + 1
    settled = c.settle(cut).journeys
    assert len(settled) == 61 and all(j.captures[0].ts_ns < cut for j in settled)


def _two_flows_dropped_by_policy():
    """The settled journeys of two flows seen at 3 points, each with a FORWARD policy
    DROP hop."""
    c = F.Correlator(0, 20)
    for n, port in enumerate((4000, 4001)):
        for p in range(3):
            fr = frame("10.0.0.9", port, "10.0.0.1", 80, 7)
            c.record(1000 + n * 10_000 + p * 1234, p, 0, len(fr), fr, 0, -1)
    hop = {
        "table": "filter",
        "chain": "FORWARD",
        "kind": "policy",
        "rule_num": 0,
        "rule_text": "policy DROP",
        "verdict": "DROP",
        "backend": "legacy",
        "hook": "FORWARD",
    }
    journeys = c.settle(None).journeys
    for j in journeys:
        j.nf.append(dict(hop))
    return journeys


def test_live_lines_keep_each_flows_tag_and_offsets():
    journeys = _two_flows_dropped_by_policy()
    live = LiveText(POINTS, 20, "web")
    for j in journeys:
        items = live.journey(j)
        tag = f"[{j.flow.id}]"
        assert all(i["text"].startswith(tag + " ") for i in items)
        assert f"{tag} {'':>11}  netfilter filter:FORWARD -> DROP (policy)" in [
            i["text"] for i in items
        ]
        caps = [i["text"] for i in items if i.get("hop") == "capture"]
        assert [t[len(tag) :].split("us")[0].strip() for t in caps] == ["+0.0", "+1.2", "+2.5"]


def _nft_hop(chain, handle, verdict, kind="rule"):
    return {
        "table": "ip filter",
        "chain": chain,
        "kind": kind,
        "rule_num": handle,
        "handle": handle,
        "rule_text": f"-A {chain} -j {verdict}" if kind == "rule" else "end of chain",
        "verdict": verdict,
        "backend": "nftables",
        "hook": "FORWARD",
    }


def test_a_rule_path_is_shown_whole_until_it_repeats():
    """Live lines: a flow's first rule path each way is printed hop by hop, and so is a
    later packet's that differs (a FIN accepted by the ESTABLISHED rule after a SYN
    accepted by the published port's); a repeated path is one line with its verdict."""
    c = F.Correlator(0, 20)
    for k, flags in enumerate((0x02, 0x10, 0x11, 0x10)):  # SYN, ACK, FIN, ACK
        fr = frame("10.0.0.9", 4000, "10.0.0.1", 80, 10 + k, flags=flags)
        c.record(1000 + k * 10_000, 0, 0, len(fr), fr, 0, -1)
    syn, ack, fin, ack2 = c.settle(None).journeys
    to_port = [_nft_hop("FORWARD", 6, "JUMP PI"), _nft_hop("PI", 14, "ACCEPT")]
    established = [
        _nft_hop("FORWARD", 6, "JUMP PI"),
        _nft_hop("PI", 0, "RETURN", "return"),
        _nft_hop("FORWARD", 8, "ACCEPT"),
    ]
    syn.nf, ack.nf, fin.nf, ack2.nf = to_port, list(to_port), established, list(established)
    same = "[1]              netfilter: the same rule path as before ({} steps) -> ACCEPT"
    for fields in (True, False):
        live = LiveText(POINTS, 20, "web", fields=fields)
        syn.flow.paths_shown = set()
        items = [live.journey(j) for j in (syn, ack, fin, ack2)]
        nf_lines = [
            [ln for i in x for ln in i["text"].splitlines() if "netfilter" in ln] for x in items
        ]
        assert [len(x) for x in nf_lines] == [2, 1, 3, 1]
        assert "PI handle 14 -> ACCEPT" in nf_lines[0][1]
        assert nf_lines[1] == [same.format(2)]
        assert "FORWARD handle 8 -> ACCEPT" in nf_lines[2][2]
        assert nf_lines[3] == [same.format(3)]
        if fields:
            (item,) = [i for i in items[3] if i.get("hop") == "netfilter"]
            assert (item["same_path"], item["steps"]) == (True, 3)
            assert (item["chain"], item["handle"], item["verdict"]) == ("FORWARD", 8, "ACCEPT")


def test_text_view_is_the_json_views_lines_one_item_a_journey():
    """LiveText without fields: each journey is one item whose text is the JSON view's
    lines (header, captures, netfilter hops) in the same order, joined."""
    journeys = _two_flows_dropped_by_policy()
    full, text = LiveText(POINTS, 20, "web"), LiveText(POINTS, 20, "web", fields=False)
    for j in journeys:
        j.flow.paths_shown = set()
        lines = [i["text"] for i in full.journey(j)]
        j.flow.paths_shown = set()
        (item,) = text.journey(j)
        assert len(lines) == 1 + 3 + 1  # the flow's header, 3 captures, the DROP hop
        assert item == {"_ts": j.first_ns, "text": "\n".join(lines)}


def test_locate_many_finds_what_locate_finds():
    rnd = random.Random(1)
    w = types.SimpleNamespace(lock=threading.Lock(), starts={}, placed={})
    for cpu in (0, 1):
        pos = 1000
        for k in range(50):
            size = rnd.randrange(8, 4000, 8)
            w.placed.setdefault(cpu, []).append(
                _Placed(pos, pos + size, k % 3 + 1, rnd.randrange(10**6))
            )
            w.starts.setdefault(cpu, []).append(pos)
            pos += size + rnd.choice([0, 0, 64])
    locate = EvidenceWriter.locate_many(w)
    for _ in range(5000):
        cpu, p = rnd.choice([0, 1, 2]), rnd.randrange(-10, 120000)
        assert locate(cpu, p) == EvidenceWriter.locate(w, cpu, p)


def test_own_gc_collects_and_freezes_every_interval(tmp_path, monkeypatch):
    s = S.TraceSession(tmp_path, "web", S.TraceOptions(own_gc=True))
    assert s._collect() == 0.0  # not started: the collector is the process's
    frozen = gc.get_freeze_count()
    try:
        gc.disable()
        survivors = [[k] for k in range(100)]  # tracked objects made since: frozen by it
        s._gc_ns = 1
        monkeypatch.setattr(S, "GC_EVERY_S", 0)
        assert s._collect() >= 0.0
        assert gc.get_freeze_count() >= frozen + len(survivors) and s._gc_ns > 1
        s._teardown()
        assert gc.isenabled() and not s._gc_ns
    finally:
        gc.unfreeze()
        gc.enable()


def test_journeys_kept_for_drop_explanations_are_bounded(monkeypatch):
    """A long trace of many connections keeps the latest journeys of the most recently
    active flows only (they explain drops), not of every flow it ever saw."""
    monkeypatch.setattr(F, "FLOWS_WITH_JOURNEYS", 5)
    monkeypatch.setattr(F, "JOURNEYS_PER_FLOW", 3)
    c = F.Correlator(0, 20)
    t = 1_000
    for conn in range(8):
        for k in range(4):
            fr = frame("10.0.0.9", 5000 + conn, "10.0.0.1", 80, k)
            c.record(t, 0, 0, len(fr), fr, 0, t)
            t += 1_000
    # the first connection is active again: it becomes the most recent
    fr = frame("10.0.0.9", 5000, "10.0.0.1", 80, 9)
    c.record(t, 0, 0, len(fr), fr, 0, t)
    settled = c.settle(None)
    assert len(settled.journeys) == 33
    kept = {c.journeys[f][0].flow.orig[1]: len(js) for f, js in c.journeys.items()}
    assert kept == {5004: 3, 5005: 3, 5006: 3, 5007: 3, 5000: 1}, kept  # 5000: evicted, back
    assert list(kept)[-1] == 5000  # least recently active first


def test_a_long_trace_lets_idle_stored_flows_go(monkeypatch):
    """Past FLOWS_KEPT flows the idle stored ones leave memory (index, journeys, fast
    path); the summary keeps their number and names the first ones; a later packet of
    a forgotten tuple is a new flow."""
    monkeypatch.setattr(F, "FLOWS_KEPT", 4)
    monkeypatch.setattr(F, "FLOW_IDLE_S", 60.0)
    monkeypatch.setattr(F, "GONE_LISTED", 2)
    c = F.Correlator(0, 20)
    t = 1_000
    for conn in range(8):
        fr = frame("10.0.0.9", 6000 + conn, "10.0.0.1", 80, conn)
        c.record(t, 0, 0, len(fr), fr, 0, t)
        t += 1_000
    c.settle(None)
    flows = sorted(c.flows.flows.values(), key=lambda f: f.id)
    assert len(flows) == 8
    for i, f in enumerate(flows):
        f.store_id = 100 + i
        f.touched = 1000.0 + i  # the first ones idle longest
    flows[7].store_id = None  # not stored yet: never let go
    assert c.let_go(now=1000.0 + 30) == []  # none idle for 60 s yet
    gone = c.let_go(now=1000.0 + 70)
    assert [f.id for f in gone] == [f.id for f in flows[:5]]  # down to 3 (3/4 of 4)
    assert sorted(c.flows.flows) == [f.id for f in flows[5:]]
    for f in gone:
        assert f.id not in c.journeys
        assert all(hit[0] is not f for hit in c.flows.index.values())
    assert c.gone.flows == 5 and c.gone.headers == [flows[0].header(), flows[1].header()]
    # the same tuple again: a new flow
    fr = frame("10.0.0.9", 6000, "10.0.0.1", 80, 99)
    c.record(t, 0, 0, len(fr), fr, 0, t)
    (j,) = c.settle(None).journeys
    assert j.flow.id not in [f.id for f in flows] and j.flow.orig == flows[0].orig
    # it looks at every flow only every LET_GO_EVERY_S
    for f in c.flows.flows.values():
        f.store_id, f.touched = 1, 0.0
    for k in range(4):
        fr = frame("10.0.0.9", 7000 + k, "10.0.0.1", 80, k)
        c.record(t, 0, 0, len(fr), fr, 0, t)
    for f in c.settle(None).journeys:
        f.flow.store_id, f.flow.touched = 1, 0.0
    assert len(c.flows.flows) == 8
    assert c.let_go(now=1000.0 + 75) == []  # 5 s after the last look
    assert len(c.let_go(now=1000.0 + 80)) == 5


def test_summary_text_says_how_many_connections_it_does_not_list():
    from pyinspect.trace.summary import format_summary

    s = {
        "container": "web",
        "duration_s": 3600.0,
        "flows": 20001,
        "traced_packets": 5,
        "connections": ["tcp 10.0.0.9:6000 -> 10.0.0.1:80"],
        "connections_not_listed": 20000,
        "session_id": 7,
        "packets_per_point": {},
        "nat": [],
        "drops": [],
        "loss": dict.fromkeys(
            (
                "capture",
                "capped",
                "shed",
                "analysis_lost",
                "drops",
                "conntrack_overruns",
                "trace_overruns",
            ),
            0,
        ),
    }
    text = "\n".join(format_summary(s))
    assert "  ... and 20000 more that ended earlier (the store has them: pyinspect pcap " in text
