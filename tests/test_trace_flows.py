"""NAT hop reconstruction without a kernel: conntrack tuples, packet parsing, hop order."""

import struct

import pytest

from pyinspect.probes.iptsave import parse_nft_text
from pyinspect.probes.nftrace import RuleBook, TraceRules, nft_expr, packet_headers
from pyinspect.trace import flows as F


def frame(src, dst, sport, dport, proto=6, ipid=7, seq=1, ack=0, flags=0x02):
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40,
        ipid,
        0,
        64,
        proto,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 0, 0, 0)
    return b"\x00" * 12 + b"\x08\x00" + ip + l4


CT = {
    "ts_ns": 1,
    "kind": "new",
    "id": 42,
    "proto": "tcp",
    "orig": ("10.0.0.2", 5555, "10.0.0.1", 8088),
    "reply": ("172.30.0.10", 80, "10.0.0.2", 5555),
    "tcp_state": "SYN_SENT",
}


def test_conntrack_tuples_index_all_four_wire_views():
    t = F.FlowTable()
    f = t.conntrack(CT)
    assert f.nat == "dnat"
    assert f.nat_text() == "DNAT 10.0.0.1:8088 -> 172.30.0.10:80"
    views = {
        ("tcp", "10.0.0.2", 5555, "10.0.0.1", 8088): ("orig", "pre"),  # uplink in
        ("tcp", "10.0.0.2", 5555, "172.30.0.10", 80): ("orig", "post"),  # bridge, eth0
        ("tcp", "172.30.0.10", 80, "10.0.0.2", 5555): ("reply", "pre"),  # container answers
        ("tcp", "10.0.0.1", 8088, "10.0.0.2", 5555): ("reply", "post"),  # uplink out
    }
    for tup, (direction, stage) in views.items():
        hit = t.lookup(tup)
        assert hit and hit[0] is f and hit[1:] == (direction, stage), tup
    # a later event for the same id updates, never duplicates
    assert t.conntrack(dict(CT, kind="update", tcp_state="ESTABLISHED")) is f
    assert len(t.flows) == 1 and f.tcp_state == "ESTABLISHED"


def test_masquerade_is_snat():
    t = F.FlowTable()
    f = t.conntrack(
        dict(
            CT,
            orig=("172.30.0.10", 40000, "10.88.0.2", 80),
            reply=("10.88.0.2", 80, "10.88.0.1", 40000),
        )
    )
    assert f.nat == "snat"
    assert f.nat_text() == "SNAT 172.30.0.10:40000 -> 10.88.0.1:40000"


def test_packet_before_conntrack_event_joins_the_flow():
    t = F.FlowTable()
    pkt = F.parse_frame(frame("10.0.0.2", "10.0.0.1", 5555, 8088))
    f1, d, _ = t.for_packet(pkt, 1)
    assert d == "orig" and not f1.nat
    f2 = t.conntrack(CT)
    assert f2 is f1 and f1.nat == "dnat"


def test_parse_frame_and_ident_survive_nat():
    a = F.parse_frame(frame("10.0.0.2", "10.0.0.1", 5555, 8088, seq=99))
    b = F.parse_frame(frame("10.0.0.2", "172.30.0.10", 5555, 80, seq=99))
    assert a.tuple == ("tcp", "10.0.0.2", 5555, "10.0.0.1", 8088)
    assert a.ident == b.ident and F.tcp_flag_text(a.flags) == "[S]"
    assert F.parse_frame(b"\x00" * 12 + b"\x08\x06" + b"\x00" * 28) is None  # ARP


def test_journey_places_netfilter_between_host_in_and_out():
    t = F.FlowTable()
    f = t.conntrack(CT)
    j = F.Journey(f, "orig", (7, 1, 0, 40))
    for ts, point, d in ((1, 0, "in"), (3, 2, "out"), (4, 3, "out"), (5, 4, "in")):
        j.captures.append(F.Capture(ts, point, d, 40, b"", None, 0, -1))
    # placed on the journey in another order than the kernel sent them (seq)
    j.nf = [
        {"table": "filter", "chain": "FORWARD", "hook": "FORWARD", "seq": 3},
        {"table": "nat", "chain": "PREROUTING", "hook": "PREROUTING", "seq": 2},
        {"table": "raw", "chain": "PREROUTING", "hook": "PREROUTING", "seq": 1},
    ]
    order = [
        (k, h.point if k == "capture" else h["table"]) for k, h in j.hops(host_points={0, 2, 3})
    ]
    assert order == [
        ("capture", 0),
        ("netfilter", "raw"),
        ("netfilter", "nat"),
        ("netfilter", "filter"),
        ("capture", 2),
        ("capture", 3),
        ("capture", 4),
    ]


def test_drop_explanations():
    t = F.FlowTable()
    f = t.conntrack(CT)
    j = F.Journey(f, "orig", (1,))
    j.nf = [
        {
            "table": "filter",
            "chain": "FORWARD",
            "kind": "policy",
            "rule_num": 3,
            "rule_text": "policy DROP",
            "verdict": "DROP",
        }
    ]
    drop = {
        "reason": "NETFILTER_DROP",
        "location": "nf_hook_slow+0x7d",
        "proto": "tcp",
        "dport": 80,
        "netns": 5,
    }
    assert F.explain_drop(drop, f, [j], "web", 5) == "dropped in FORWARD: policy DROP"
    nosock = dict(drop, reason="NO_SOCKET")
    assert F.explain_drop(nosock, f, [], "web", 5) == "no listener on port 80 in web: RST"


def test_rule_book_names_rules_and_policies():
    rb = RuleBook.__new__(RuleBook)
    rb.rules = {
        ("nat", "PREROUTING"): [
            "PREROUTING -p tcp --dport 8088 -j DNAT --to-destination 172.30.0.10:80"
        ],
        ("filter", "FORWARD"): ["FORWARD -j ACCEPT"],
    }
    rb.policies = {("filter", "FORWARD"): "DROP"}
    assert rb.describe("nat", "PREROUTING", "rule", 1)[1] == "DNAT 172.30.0.10:80"
    assert rb.describe("filter", "FORWARD", "policy", 2) == ("policy DROP", "DROP")
    # an unconditional verdict rule is reported by the kernel as "policy:<its number>"
    assert rb.describe("filter", "FORWARD", "policy", 1)[1] == "ACCEPT"


def test_trace_rules_sample_floods_but_keep_tcp_control_packets():
    specs = TraceRules.expand(["-p", "udp", "--dport", "9000"])
    assert specs == [
        ["-p", "udp", "--dport", "9000", "-m", "limit", "--limit", "50/sec", "--limit-burst", "200"]
    ]
    tcp = TraceRules.expand(["-s", "172.30.0.10"])
    assert tcp[0] == ["-p", "tcp", "-s", "172.30.0.10"]
    assert [r[:2] for r in tcp[1:]] == [["-p", "udp"], ["-p", "icmp"]]
    # TCP is not rate limited: data packets never reach these rules (the chain's first rule
    # returns them), SYN/FIN/RST all do
    assert TraceRules.expand(["-p", "tcp", "--dport", "8088"]) == [["-p", "tcp", "--dport", "8088"]]
    assert (
        nft_expr(["-p", "tcp", "-d", "1.2.3.4", "--dport", "80"])
        == "meta l4proto tcp ip daddr 1.2.3.4 tcp dport 80"
    )


def test_nft_trace_headers_and_rule_texts():
    # a trace event's IPv4 header (its first 40 bytes hold L4 too) and transport header
    # make one packet head; NAT keeps its ident
    f = frame("10.0.0.2", "10.0.0.1", 37800, 8088, ipid=41879, seq=5)
    head = packet_headers(f[14:54], f[34:54])
    p = F.parse_ip(head)
    assert p.tuple == ("tcp", "10.0.0.2", 37800, "10.0.0.1", 8088) and p.ipid == 41879
    assert nft_expr(["-s", "fd00::2"]) == "ip6 saddr fd00::2"
    text = (
        "table ip docker-bridges { # handle 1\n"
        "\tmap filter-forward-in-jumps { # handle 11\n"
        "\t\ttype ifname : verdict\n"
        '\t\telements = { "br0" : jump filter-forward-in__br0 }\n'
        "\t}\n"
        "\tchain nat-PREROUTING { # handle 2\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        "\t\tfib daddr type local counter packets 3 bytes 180 jump nat-dnat # handle 20\n"
        "\t}\n"
        "}\n"
    )
    assert parse_nft_text(text) == {
        ("ip", "docker-bridges", "nat-PREROUTING", 20): "fib daddr type local counter jump nat-dnat"
    }


def test_nf_hops_keep_the_kernel_order_and_merge_by_hook():
    nft = [
        {"backend": "nftables", "hook": "FORWARD", "prio": 0, "seq": 7, "chain": "FORWARD"},
        {"backend": "nftables", "hook": "PREROUTING", "prio": -100, "seq": 5, "chain": "DOCKER"},
        {"backend": "nftables", "hook": "PREROUTING", "prio": -100, "seq": 4, "chain": "PRE"},
    ]
    assert [h["chain"] for h in F.nf_order(nft)] == ["PRE", "DOCKER", "FORWARD"]
    legacy = {"backend": "iptables-legacy", "hook": "FORWARD", "prio": -150, "seq": 1}
    merged = F.nf_order([*nft, dict(legacy, chain="mangle FORWARD")])
    assert [h["chain"] for h in merged] == ["PRE", "DOCKER", "mangle FORWARD", "FORWARD"]


def test_drop_watch_without_usable_btf_is_unavailable(tmp_path, monkeypatch):
    """No usable kernel BTF (here: a file that is not BTF): the drop probe refuses in one
    line naming the cause and the fix, and the tracer turns that into a note."""
    from pyinspect.errors import UnavailableError
    from pyinspect.probes import btf, drops, packets

    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\0" * 64)
    monkeypatch.setattr(btf, "VMLINUX", str(bad))
    with pytest.raises(UnavailableError) as err:
        drops.DropWatch(packets.Target(addrs=["172.30.1.10"])).start()
    assert "no usable kernel BTF" in str(err.value) and "\n" not in str(err.value)


def test_store_keeps_a_rule_path_once_per_flow_and_direction(tmp_path):
    """A journey whose netfilter path is the flow's previous one that way is counted, not
    stored again; a path that differs (another rule, another verdict) is stored."""
    from pyinspect.store import Store
    from pyinspect.trace.sinks import StoreSink
    from pyinspect.trace.target import TraceTarget

    def hop(table, chain, num, verdict):
        return {
            "table": table,
            "chain": chain,
            "rule_num": num,
            "rule_text": f"r{num}",
            "verdict": verdict,
            "kind": "rule",
            "backend": "legacy",
            "hook": chain,
        }

    accept = [
        hop("nat", "PREROUTING", 1, "DNAT to:172.30.0.10:80"),
        hop("filter", "FORWARD", 3, "ACCEPT"),
    ]
    dropped = [
        hop("nat", "PREROUTING", 1, "DNAT to:172.30.0.10:80"),
        hop("filter", "FORWARD", 0, "DROP"),
    ]
    with Store(tmp_path / "pyinspect.db") as store:
        sid, pids = store.begin_trace(
            container_id="c", container_name="web", started_ns=0, points=[{"name": "up0"}]
        )
        sink = StoreSink(
            store, sid, pids, TraceTarget("web", "c", "/proc/1/ns/net", 1, ["172.30.0.10"]), 0
        )
        f = F.FlowTable().conntrack(CT)
        paths = [accept, accept, accept, dropped, accept, accept]
        journeys = []
        for n, path in enumerate(paths):
            j = F.Journey(f, "orig" if n < 5 else "reply", (n, 1, 0, 40), nf=list(path))
            journeys.append(j)
        sink.settled(F.Settled(journeys=journeys), lambda cpu, pos: None)
        sink.finish([f], {})
        stored = list(store.db["hops"].rows_where("session_id = ?", [sid]))
        detail = store.db["flows"].get(f.store_id)["detail"]
    # orig: accept (stored), accept x2 (repeats), dropped (stored), accept (stored again:
    # it differs from the path before it); reply: accept (stored)
    assert len(stored) == 2 * 4
    assert [h["verdict"] for h in stored][2:4] == ["DNAT to:172.30.0.10:80", "DROP"]
    assert '"repeated_rule_paths": 2' in detail


def test_store_sink_writes_what_settled_at_its_flush(tmp_path):
    """Polls' journeys reach the store in one transaction at the flush: a flow first seen
    then gets its id on every index row that waited for it, a journey's hops point at its
    first index row, a late hop and an event land too; before the flush nothing is
    written. With every_s=0 each poll is written at once."""
    from pyinspect.store import Store
    from pyinspect.trace.evidence import Segment
    from pyinspect.trace.sinks import StoreSink
    from pyinspect.trace.target import TraceTarget

    def hop(chain, verdict):
        return {
            "table": "filter",
            "chain": chain,
            "rule_num": 1,
            "rule_text": "r1",
            "verdict": verdict,
            "kind": "rule",
            "backend": "legacy",
            "hook": chain,
        }

    def cap(ts, point, pos):
        return F.Capture(ts, point, "in", 60, b"", None, 0, pos)

    def counts(store):
        return [
            store.db["flows"].count,
            store.indexed_count(session_id=sid),
            store.db["hops"].count,
            store.db["events"].count,
        ]

    target = TraceTarget("web", "c", "/proc/1/ns/net", 1, ["172.30.0.10"])
    event = {"ts_ns": 5, "kind": "fork", "pid": 1, "ppid": 0, "comm": "sh", "detail": {}}
    with Store(tmp_path / "pyinspect.db") as store:
        sid, pids = store.begin_trace(
            container_id="c",
            container_name="web",
            started_ns=0,
            points=[{"name": "up0"}, {"name": "eth0"}],
        )
        sink = StoreSink(store, sid, pids, target, 0, every_s=3600)
        sink.segments([Segment(1, tmp_path / "seg-00001.pcapng", -1, 0, 0)])
        f = F.FlowTable().conntrack(CT)
        at = {0: 100, 1: 200, 2: 300, 3: 400}.get  # stream position -> offset in segment 1

        def locate(cpu, pos):
            return (1, at(pos)) if at(pos) else None

        first = F.Journey(
            f, "orig", (1, 1, 0, 40), [cap(10, 0, 0), cap(11, 1, 1)], [hop("FORWARD", "ACCEPT")]
        )
        sink.settled(F.Settled(journeys=[first]), locate)
        assert counts(store) == [0, 0, 0, 0] and sink.pending and f.store_id is None
        second = F.Journey(f, "reply", (2, 1, 0, 40), [cap(20, 1, 2), cap(21, 0, 3), cap(22, 0, 9)])
        sink.settled(
            F.Settled(journeys=[second], late_hops=[(first, hop("INPUT", "DROP"))], events=[event]),
            locate,
        )
        assert counts(store) == [0, 0, 0, 0]
        sink.flush()
        assert not sink.pending and f.store_id is not None
        # the capture at position 9 is not in the files: no row
        assert counts(store) == [1, 4, 2, 1]
        rows = store.journey_rows(sid)
        assert [
            (fid, [(c.offset, c.ts_ns, c.direction) for c in caps]) for _j, fid, caps in rows
        ] == [
            (f.store_id, [(100, 10, "in"), (200, 11, "in")]),
            (f.store_id, [(300, 20, "in"), (400, 21, "in")]),
        ]
        hops = list(store.db.execute("SELECT journey_id, chain, detail FROM hops ORDER BY id"))
        assert hops[0][:2] == (rows[0][0], "FORWARD")
        assert hops[1][:2] == (None, "INPUT") and '"late": true' in hops[1][2]
        # every_s=0: written by the poll that settled it
        now = StoreSink(store, sid, pids, target, 0, every_s=0)
        now.segments([Segment(1, tmp_path / "seg-00001.pcapng", -1, 0, 0)])
        g = F.FlowTable().conntrack({**CT, "id": 43, "orig": ("10.0.0.3", 5556, "10.0.0.1", 8088)})
        now.settled(
            F.Settled(journeys=[F.Journey(g, "orig", (3, 1, 0, 40), [cap(30, 0, 0)])]), locate
        )
        assert not now.pending and g.store_id is not None
        assert counts(store) == [2, 5, 2, 1]
