"""Packets in pcapng segment files: the reader on hand-written files (filler blocks,
runs out of time order, a cut last block), export by session, --since and --flow (via
the index and via a scan), the migration of a store that kept packets in SQLite, and
traces whose process died (reaped on the next open)."""

import io
import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw

from pyinspect.config import database_path
from pyinspect.errors import CorruptInputError
from pyinspect.pcap.export import SKIP_SLACK_NS, export, list_sessions
from pyinspect.pcap.pcapng import Segment, read_packets
from pyinspect.store import MIGRATIONS, FlowRow, HopRow, IndexCapture, JourneyRow, Store
from pyinspect.store.rows import unpack_captures

from conftest import have, tshark_fields
from helpers.oldstore import make_old_store
from helpers.segfiles import FILLER_TYPE, Pkt, add_trace, segment_bytes

T0 = 1_764_417_600_000_000_000
A, B, NATTED = "10.1.0.2", "10.1.0.10", "172.18.0.2"
POINTS = [("eth0", "uplink"), ("eth0", "container: eth0 in web")]


def tcp(src, dst, sport, dport, flags="A", pad=0):
    return raw(
        Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / bytes(pad)
    )


def noise(i):
    return raw(Ether() / IP(src="10.9.9.9", dst=B) / UDP(sport=1000 + i, dport=53))


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- the reader -----------------------------------------------------------------------
def test_segment_reader_runs_fillers_and_cut_last_block(tmp_path):
    runs = [
        [Pkt(0, T0 + t, noise(t), "in") for t in (10, 40, 70)],
        [Pkt(1, T0 + t, noise(t), "out") for t in (20, 50)],
        [Pkt(0, T0 + t, noise(t)) for t in (5, 30, 60, 80)],
    ]
    data, placed = segment_bytes([("up@host", "uplink"), ("web/eth0", "container")], runs)
    assert data.count(struct.pack("<II", FILLER_TYPE, 24)) == 9
    path = tmp_path / "seg-00001.pcapng"
    path.write_bytes(data)
    # streamed: file order, offsets, fillers skipped; tshark agrees
    got = list(read_packets(path))
    assert [(p.ts_ns - T0, p.offset) for p in got] == [(p.ts - T0, o) for p, o in placed]
    assert [p.direction for p in got[:5]] == ["in"] * 3 + ["out"] * 2
    assert len(tshark_fields(path, "frame.number")) == 9
    # random access: keys in time order, packet_at decodes each
    with Segment(path) as seg:
        keys = seg.keys()
        assert seg.truncated_at is None
        pkts = [seg.packet_at(k & ((1 << 40) - 1)) for k in keys]
    assert [p.ts_ns - T0 for p in pkts] == [5, 10, 20, 30, 40, 50, 60, 70, 80]
    assert [p.interface.name for p in pkts[:3]] == ["up@host", "up@host", "web/eth0"]
    # cut inside the last EPB (a trace killed mid-write): everything before it, quietly
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[:-9])
    with pytest.raises(CorruptInputError, match="truncated"):
        list(read_packets(cut))
    assert len(list(read_packets(cut, partial_ok=True))) == 8
    with Segment(cut) as seg:
        assert len(seg.keys()) == 8 and seg.truncated_at == placed[-1][1]
    # cut inside a block header and right after a filler: the same
    for n in (placed[-1][1] + 4, placed[-1][1]):
        cut.write_bytes(data[:n])
        with Segment(cut) as seg:
            assert len(seg.keys()) == 8
    # a packet offset that is no EPB is damage, not a silent wrong packet
    with Segment(path) as seg, pytest.raises(CorruptInputError):
        seg.keys()
        seg.packet_at(placed[0][1] - 24)


# -- export from segment files --------------------------------------------------------
def flow_row(first, last):
    return {
        "ct_id": 7,
        "proto": "tcp",
        "orig_src": A,
        "orig_sport": 40000,
        "orig_dst": B,
        "orig_dport": 8080,
        "reply_src": NATTED,
        "reply_sport": 80,
        "reply_dst": A,
        "reply_dport": 40000,
        "nat": "DNAT 10.1.0.10:8080 -> 172.18.0.2:80",
        "first_ns": first,
        "last_ns": last,
    }


def three_segments():
    """Three files: the flow's start in the first two (runs out of order, the files
    overlapping in time), a later packet of the same flow a minute on in the third."""
    late = T0 + 60 * 10**9
    s1 = [
        [
            Pkt(0, T0 + 100, tcp(A, B, 40000, 8080, "S"), "in", flow=0),
            Pkt(0, T0 + 300, noise(1), "in"),
            Pkt(0, T0 + 500, tcp(B, A, 8080, 40000, "SA"), "out"),
        ],  # not indexed
        [
            Pkt(1, T0 + 150, tcp(A, NATTED, 40000, 80, "S"), "in", flow=0),
            Pkt(1, T0 + 450, tcp(NATTED, A, 80, 40000, "SA"), "out"),
        ],
    ]  # not indexed
    s2 = [
        [Pkt(0, T0 + 400, noise(2)), Pkt(1, T0 + 600, tcp(A, NATTED, 40000, 80), "in", flow=0)],
        [Pkt(0, T0 + 200, noise(3), "in"), Pkt(0, T0 + 550, tcp(A, B, 40000, 8080), "in")],
    ]  # not indexed
    s3 = [
        [
            Pkt(0, late, tcp(A, B, 40000, 8080, "F"), "in", flow=0),
            Pkt(0, late + 10, tcp(B, A, 8080, 40000, "FA"), "out"),  # not indexed
            Pkt(0, late + 20, noise(4), "in"),
        ]
    ]
    return [s1, s2, s3]


@pytest.fixture
def traced(state_root):
    with Store(database_path(state_root)) as store:
        sid, fids, _ = add_trace(
            store,
            "web",
            POINTS,
            three_segments(),
            flows=[flow_row(T0 + 100, T0 + 600)],
            summary={
                "packets_per_point": {
                    "eth0 (uplink)": {"captured": 9},
                    "eth0 (container)": {"captured": 3},
                }
            },
        )
    return state_root, sid, fids[0]


def exported(state_root, **kw):
    with Store(database_path(state_root)) as store:
        buf = io.BytesIO()
        res = export(store, out=buf, **kw)
    path = state_root / "out.pcapng"
    path.write_bytes(buf.getvalue())
    return res, list(read_packets(path)), path


def test_export_session_merges_runs_and_files(traced):
    root, sid, fid = traced
    res, pkts, path = exported(root, session_id=sid)
    assert res["packets"] == 12 and res["interfaces"] == 2 and res["missing"] == []
    ts = [p.ts_ns - T0 for p in pkts]
    assert ts == sorted(ts) and ts[:8] == [100, 150, 200, 300, 400, 450, 500, 550]
    assert {p.interface.name for p in pkts} == {"eth0@host", "web/eth0"}
    comments = {p.ts_ns - T0: p.comment for p in pkts}
    nat = f"flow {fid}: DNAT 10.1.0.10:8080 -> 172.18.0.2:80"
    assert comments[100] == comments[150] == comments[600] == nat  # indexed
    assert comments[450] is None and comments[300] is None  # not indexed
    assert [p.direction for p in pkts[:3]] == ["in", "in", "in"]
    assert tshark_fields(path, "frame.comment", filt="frame.comment")[0] == [nat]
    with Store(database_path(root)) as store:
        row = next(r for r in list_sessions(store) if r["id"] == sid)
    assert (row["packets"], row["segments"], row["status"]) == (12, 3, "stopped")
    assert row["bytes"] == sum(p.stat().st_size for p in (root / "pcap" / str(sid)).iterdir())


def test_export_since_until_skip_files(traced):
    root, sid, _ = traced
    # the first two files end long before --since: they are not even opened
    for seg in (root / "pcap" / str(sid)).glob("seg-0000[12].pcapng"):
        seg.rename(seg.with_suffix(".away"))
    res, pkts, _ = exported(root, session_id=sid, since=T0 + 60 * 10**9 + 5)
    assert res["missing"] == [] and [p.ts_ns - T0 - 60 * 10**9 for p in pkts] == [10, 20]
    res, pkts, _ = exported(root, session_id=sid, since=T0 + 10)
    assert len(res["missing"]) == 2 and len(pkts) == 3
    for seg in (root / "pcap" / str(sid)).glob("*.away"):
        seg.rename(seg.with_suffix(".pcapng"))
    res, pkts, _ = exported(root, session_id=sid, since=T0 + 200, until=T0 + 500)
    assert [p.ts_ns - T0 for p in pkts] == [200, 300, 400, 450, 500]


def test_export_flow_by_index_and_by_scan(traced):
    root, sid, _ = traced
    _, pkts, _ = exported(root, session_id=sid, flow=f"tcp {A}:40000->{B}:8080")
    # the first two files overlap the flow's time: every packet of its tuples (both NAT
    # sides, both directions), indexed or not; the third file is a minute later: only
    # its indexed packet (the FIN), not the unindexed FIN-ACK beside it
    assert [p.ts_ns - T0 for p in pkts] == [100, 150, 450, 500, 550, 600, 60 * 10**9]
    # asked by the container side of the NAT: the same connection
    _, pkts2, _ = exported(root, session_id=sid, flow=f"{NATTED}:80,{A}:40000")
    assert [p.ts_ns for p in pkts2] == [p.ts_ns for p in pkts]
    # with a filter on top
    _, syn, _ = exported(
        root,
        session_id=sid,
        flow=f"tcp {A}:40000->{B}:8080",
        bpf_filter="tcp[tcpflags] & tcp-syn != 0",
    )
    assert [p.ts_ns - T0 for p in syn] == [100, 150, 450, 500]


def test_export_flow_scans_all_files_when_the_flow_has_no_times(state_root):
    with Store(database_path(state_root)) as store:
        sid, _, _ = add_trace(store, "web", POINTS, three_segments(), flows=[flow_row(None, None)])
    _, pkts, _ = exported(state_root, session_id=sid, flow=f"tcp {A}:40000->{B}:8080")
    assert len(pkts) == 8 and pkts[-1].ts_ns == T0 + 60 * 10**9 + 10
    assert SKIP_SLACK_NS < 60 * 10**9


# -- killed traces ------------------------------------------------------------------
def test_killed_trace_is_reaped_and_exportable(state_root):
    db = database_path(state_root)
    with Store(db) as store:
        dead, _, _ = add_trace(
            store,
            "web",
            POINTS,
            three_segments()[:2],
            status="running",
            pid=dead_pid(),
            cut=30,
            flows=[flow_row(T0 + 100, T0 + 600)],
        )
        alive, _, _ = add_trace(
            store,
            "web",
            POINTS,
            three_segments()[:1],
            status="running",
            pid=os.getpid(),
            started=time.time_ns(),
            flows=[flow_row(T0 + 100, T0 + 600)],
        )
        # this process's pid on a session that started before it did: a recycled pid
        recycled, _, _ = add_trace(
            store,
            "web",
            POINTS,
            three_segments()[:1],
            status="running",
            pid=os.getpid(),
            flows=[flow_row(T0 + 100, T0 + 600)],
        )
        for n in (1, 2):
            seg = state_root / "pcap" / str(dead) / f"seg-0000{n}.pcapng"
            os.utime(seg, ns=(T0 + (5 + n) * 10**9, T0 + (5 + n) * 10**9))
    with Store(db) as store:  # the next command that opens the store
        rows = {r["id"]: r for r in list_sessions(store)}
        segrows = store.segments([dead])
        assert store.reap_killed_traces() == []  # once
    assert rows[dead]["status"] == "killed" and rows[dead]["stopped_ns"] == T0 + 7 * 10**9
    assert rows[alive]["status"] == "running"
    assert rows[recycled]["status"] == "killed"
    assert rows[dead]["packets"] == 3  # no summary: the index
    assert [(g.bytes, g.complete) for g in segrows] == [
        ((state_root / "pcap" / str(dead) / f"seg-0000{n}.pcapng").stat().st_size, 0)
        for n in (1, 2)
    ]
    res, pkts, path = exported(state_root, session_id=dead)
    # the cut last block (T0+550, the last written) is gone; everything before it is there
    assert res["packets"] == 8 and T0 + 550 not in {p.ts_ns for p in pkts}
    assert len(tshark_fields(path, "frame.number")) == 8


# -- the store API the tracer uses --------------------------------------------------
def test_store_trace_writes(tmp_path):
    with Store(tmp_path / "pyinspect.db") as store:
        sid, pids = store.begin_trace(
            container_id="c" * 64,
            container_name="web",
            started_ns=T0,
            snaplen=262144,
            pid=os.getpid(),
            points=[
                {"name": "eth0", "description": "uplink"},
                {"name": "eth0", "description": "container"},
            ],
        )
        seg = store.add_segment(sid, 1, tmp_path / "pcap" / str(sid) / "seg-00001.pcapng", T0)
        fid = store.insert_flow(
            FlowRow(
                session_id=sid,
                proto="tcp",
                orig_src=A,
                orig_sport=1,
                orig_dst=B,
                orig_dport=2,
                detail={"packets": 1},
            )
        )
        caps = [IndexCapture(seg, 100 + 40 * i, T0 + i, pids[i % 2], "in", 60) for i in range(5)]
        with store.batch():
            ids = store.add_journeys(
                [JourneyRow(sid, fid, caps[:3]), JourneyRow(sid, fid, caps[3:])]
            )
            store.insert_hops(
                [
                    HopRow(
                        sid,
                        fid,
                        ids[0],
                        T0,
                        "nat",
                        "PREROUTING",
                        1,
                        "-j DNAT",
                        "DNAT",
                        {"kind": "rule"},
                    )
                ]
            )
        store.update_flow(
            fid, FlowRow(session_id=sid, proto="tcp", orig_src=A, nat="dnat", last_ns=T0 + 4)
        )
        store.finish_segment(seg, 4096, T0 + 10)
        store.end_trace(sid, "stopped", {"packets_per_point": {"a": {"captured": 5}}})
        db = store.db
        assert db.execute("SELECT seq FROM capture_points ORDER BY id").fetchall() == [(0,), (1,)]
        assert len(ids) == 2 and ids[1] == ids[0] + 1
        assert store.journey_rows(sid) == [(ids[0], fid, caps[:3]), (ids[1], fid, caps[3:])]
        assert store.journey_rows(sid, after_id=ids[0]) == [(ids[1], fid, caps[3:])]
        assert store.indexed_count(session_id=sid) == store.indexed_count(flow_id=fid) == 5
        assert store.indexed_packets([fid]) == [(seg, 100 + 40 * i, T0 + i) for i in range(5)]
        (span,) = store.segment_index([sid]).values()
        assert (span.first_ns, span.last_ns, span.offsets) == (
            T0,
            T0 + 4,
            [100, 140, 180, 220, 260],
        )
        assert db.execute("SELECT journey_id, detail FROM hops").fetchone() == (
            ids[0],
            '{"kind": "rule"}',
        )
        assert db.execute("SELECT path, bytes, complete FROM pcap_segments").fetchone() == (
            f"pcap/{sid}/seg-00001.pcapng",
            4096,
            1,
        )
        assert db.execute("SELECT nat, last_ns, orig_dport FROM flows").fetchone() == (
            "dnat",
            T0 + 4,
            None,
        )
        row = db.execute("SELECT status, pid, summary FROM trace_sessions").fetchone()
        assert row[0] == "stopped" and row[1] == os.getpid() and json.loads(row[2])
        store.fail_trace(sid, "x" * 300)
        assert len(db.execute("SELECT status FROM trace_sessions").fetchone()[0]) == 200


# -- migration of a store that kept packets in SQLite ----------------------------------
GOLDEN = json.loads((Path(__file__).parent / "data" / "old-export-golden.json").read_text())


def test_old_store_migrates_and_exports_the_same(state_root):
    """The golden file is what `pcap export` wrote from this old store before the
    migration existed (tests/helpers/oldstore.py, the export code of that time), from the first
    interface block on (the section header names the machine)."""
    db = database_path(state_root)
    make_old_store(db)
    import sqlite3

    conn = sqlite3.connect(db)
    old = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT id, session_id, ts_ns, point_id, flow_id, direction, len FROM packets"
        )
    }
    hops = conn.execute("SELECT id, packet_id FROM hops ORDER BY id").fetchall()
    conn.close()
    with Store(db) as store:
        assert store.version == len(MIGRATIONS) and "packets" not in store.db.table_names()
        journeys = store.db.execute(
            "SELECT id, session_id, flow_id, capture_count, captures FROM journeys"
        ).fetchall()
        index = sorted(
            (sid, c.ts_ns, c.point_id, fid, c.direction, c.len)
            for _jid, sid, fid, n, blob in journeys
            for c in unpack_captures(blob)
        )
        assert index == sorted(old.values())  # every old packet, once
        assert {j[0] for j in journeys} <= set(old)  # a journey keeps its first packet's id
        # hops point at their journeys
        assert store.db.execute("SELECT id, journey_id FROM hops ORDER BY id").fetchall() == hops
        assert {h[1] for h in hops if h[1]} <= {j[0] for j in journeys}
        for key, hexed in GOLDEN.items():
            kw = dict(part.split("=", 1) for part in key.split(","))
            for k in ("session_id", "since", "until"):
                if k in kw:
                    kw[k] = int(kw[k])
            buf = io.BytesIO()
            export(store, out=buf, **kw)
            data = buf.getvalue()
            shb_len = struct.unpack("<I", data[4:8])[0]
            assert data[shb_len:].hex() == hexed, key
        # every indexed capture points at its packet in the file
        paths = {g.id: g.path for g in store.segments([1, 2, 3])}
        for _jid, _sid, _fid, _n, blob in journeys:
            for c in unpack_captures(blob):
                with Segment(store.segment_path(paths[c.segment_id])) as f:
                    f.keys()
                    assert f.packet_at(c.offset).ts_ns == c.ts_ns
    assert sorted(str(p.relative_to(state_root)) for p in state_root.rglob("*.pcapng")) == [
        f"pcap/{n}/seg-00001.pcapng" for n in (1, 2, 3)
    ]
    with Store(db) as store:  # opening again changes nothing
        assert (
            store.version == len(MIGRATIONS)
            and store.indexed_count(session_id=1)
            + store.indexed_count(session_id=2)
            + store.indexed_count(session_id=3)
            == 21
        )
        assert store.db["journeys"].count == len(journeys)


def test_packet_index_rows_migrate_into_journeys(tmp_path):
    """A store of schema 7 (one packet_index row per capture): consecutive rows of one
    flow become one journey until a point repeats, the flow changes or a hop points at
    the row; each journey keeps its first row's id, which the hops name."""
    import sqlite_utils

    from pyinspect.store.migrations import MIGRATIONS as STEPS

    path = tmp_path / "pyinspect.db"
    db = sqlite_utils.Database(path)
    db["schema_version"].create(
        {"version": int, "description": str, "applied_ns": int}, pk="version"
    )
    for version, (description, step) in enumerate(STEPS[:7], start=1):
        step(db)
        db["schema_version"].insert(
            {"version": version, "description": description, "applied_ns": 0}
        )
    rows = [  # id, session, segment, offset, ts, point, flow, direction, len
        (10, 1, 1, 100, 1000, 1, 7, "in", 60),  # journey 10: points 1..3
        (11, 1, 1, 200, 1001, 2, 7, "out", 60),
        (12, 1, 1, 300, 1002, 3, 7, "in", 60),
        (13, 1, 1, 400, 1003, 3, 7, "out", 52),  # point 3 again: journey 13
        (14, 1, 1, 500, 1004, 2, 7, "in", 52),
        (15, 1, 1, 600, 1005, 1, 7, "out", 52),  # a hop points here: journey 15
        (16, 1, 1, 700, 1006, 1, 8, "in", 52),  # another flow: journey 16
        (17, 2, 2, 800, 1007, 1, 8, "in", 52),  # another session: journey 17
    ]
    db.conn.executemany("INSERT INTO packet_index VALUES (?,?,?,?,?,?,?,?,?)", rows)
    db.conn.executemany(
        "INSERT INTO hops (session_id, flow_id, packet_id, table_name) VALUES (1, 7, ?, 'nat')",
        [(10,), (15,), (None,)],
    )
    db.conn.commit()
    db.close()
    with Store(path) as store:
        got = [
            (
                jid,
                sid,
                fid,
                ts,
                n,
                [(c.offset, c.point_id, c.direction, c.len) for c in unpack_captures(b)],
            )
            for jid, sid, fid, ts, n, b in store.db.execute("SELECT * FROM journeys ORDER BY id")
        ]
        assert got == [
            (10, 1, 7, 1000, 3, [(100, 1, "in", 60), (200, 2, "out", 60), (300, 3, "in", 60)]),
            (13, 1, 7, 1003, 2, [(400, 3, "out", 52), (500, 2, "in", 52)]),
            (15, 1, 7, 1005, 1, [(600, 1, "out", 52)]),
            (16, 1, 8, 1006, 1, [(700, 1, "in", 52)]),
            (17, 2, 8, 1007, 1, [(800, 1, "in", 52)]),
        ]
        assert [r[0] for r in store.db.execute("SELECT journey_id FROM hops ORDER BY id")] == [
            10,
            15,
            None,
        ]
        assert "packet_index" not in store.db.table_names()
        assert store.indexed_count(flow_id=7) == 6


def test_migration_marks_old_running_sessions_killed(state_root):
    db = database_path(state_root)
    make_old_store(db)
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("UPDATE trace_sessions SET status = 'running', stopped_ns = NULL WHERE id = 3")
    conn.commit()
    conn.close()
    with Store(db) as store:
        rows = {r["id"]: r for r in list_sessions(store)}
    assert rows[3]["status"] == "killed" and rows[3]["stopped_ns"] == T0 + 9 * 10**9 + 900
    assert rows[3]["packets"] == 7 and rows[1]["status"] == "stopped"


pytestmark = pytest.mark.skipif(not have("tshark"), reason="tshark not installed")


def test_a_journeys_captures_keep_their_direction_and_length_or_their_absence(tmp_path):
    """Each capture's fields come back as stored, an unknown direction or length (an old
    store's row) as None."""
    caps = [
        IndexCapture(1, 100, T0, 1, "in", 60),
        IndexCapture(1, 200, T0 + 1, 2, "out", 1514),
        IndexCapture(2, 300, T0 + 2, 3, None, None),
    ]
    with Store(tmp_path / "pyinspect.db") as store:
        (jid,) = store.add_journeys([JourneyRow(7, None, caps)])
        assert store.journey_rows(7) == [(jid, None, caps)]
        assert store.indexed_count(session_id=7) == 3
