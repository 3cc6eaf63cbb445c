"""The store's schema: versioned migrations, each run once, in order.

Later features add tables by appending to MIGRATIONS, never by editing an applied step.
Packet bytes live in pcapng segment files under `<database dir>/pcap/<session id>/`.
"""

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from .rows import IndexCapture, pack_capture

# a sqlite_utils.Database (typed loosely: db["name"] is Table | View to mypy, and
# migrations only ever make tables)
Db = Any


def _m1_base(db: Db) -> None:
    db["containers"].create(
        {"id": str, "name": str, "image": str, "created_ns": int, "removed_ns": int, "detail": str},
        pk="id",
        if_not_exists=True,
    )
    db["events"].create(
        {
            "id": int,
            "ts_ns": int,
            "kind": str,
            "pid": int,
            "ppid": int,
            "comm": str,
            "cgroup_id": int,
            "netns": int,
            "pidns": int,
            "mntns": int,
            "container_id": str,
            "container_name": str,
            "session_id": int,
            "detail": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["events"].create_index(["ts_ns"], if_not_exists=True)
    db["events"].create_index(["container_id", "ts_ns"], if_not_exists=True)
    db["events"].create_index(["kind", "ts_ns"], if_not_exists=True)
    db["probe_loss"].create(
        {"id": int, "ts_ns": int, "probe": str, "lost": int, "session_id": int},
        pk="id",
        if_not_exists=True,
    )


def _m2_network_and_traces(db: Db) -> None:
    db["interfaces"].create(
        {
            "id": int,
            "snapshot_ns": int,
            "netns": int,
            "netns_name": str,
            "ifindex": int,
            "ifname": str,
            "kind": str,
            "iflink": int,
            "peer_ifname": str,
            "peer_netns": int,
            "mac": str,
            "addrs": str,
            "master": str,
            "state": str,
            "container_id": str,
            "container_name": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["interfaces"].create_index(["snapshot_ns"], if_not_exists=True)
    db["trace_sessions"].create(
        {
            "id": int,
            "container_id": str,
            "container_name": str,
            "started_ns": int,
            "stopped_ns": int,
            "filter": str,
            "snaplen": int,
            "status": str,
            "pcap_path": str,
            "summary": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["capture_points"].create(
        {
            "id": int,
            "session_id": int,
            "name": str,
            "description": str,
            "ifindex": int,
            "netns": int,
            "linktype": int,
        },
        pk="id",
        if_not_exists=True,
    )
    db["packets"].create(
        {
            "id": int,
            "session_id": int,
            "ts_ns": int,
            "point_id": int,
            "direction": str,
            "len": int,
            "caplen": int,
            "data": bytes,
            "flow_id": int,
            "comment": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["packets"].create_index(["session_id", "ts_ns"], if_not_exists=True)
    db["packets"].create_index(["flow_id"], if_not_exists=True)
    db["flows"].create(
        {
            "id": int,
            "session_id": int,
            "ct_id": int,
            "proto": str,
            "orig_src": str,
            "orig_sport": int,
            "orig_dst": str,
            "orig_dport": int,
            "reply_src": str,
            "reply_sport": int,
            "reply_dst": str,
            "reply_dport": int,
            "nat": str,
            "first_ns": int,
            "last_ns": int,
            "detail": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["flows"].create_index(["session_id"], if_not_exists=True)
    db["hops"].create(
        {
            "id": int,
            "session_id": int,
            "flow_id": int,
            "packet_id": int,
            "ts_ns": int,
            "table_name": str,
            "chain": str,
            "rule_num": int,
            "rule_text": str,
            "verdict": str,
            "detail": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["hops"].create_index(["session_id", "ts_ns"], if_not_exists=True)
    db["drops"].create(
        {
            "id": int,
            "session_id": int,
            "ts_ns": int,
            "reason": str,
            "location": str,
            "ifindex": int,
            "flow_id": int,
            "detail": str,
        },
        pk="id",
        if_not_exists=True,
    )


def _m3_findings(db: Db) -> None:
    db["findings"].create(
        {
            "id": int,
            "run_ns": int,
            "check_name": str,
            "severity": str,
            "container": str,
            "summary": str,
            "evidence": str,
            "fix": str,
            "runbook": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db["findings"].create_index(["run_ns"], if_not_exists=True)


def _m4_probe_loss_lag(db: Db) -> None:
    for column in ("lag_ns", "detail"):
        if column not in db["probe_loss"].columns_dict:
            db["probe_loss"].add_column(column, int if column == "lag_ns" else str)


def _m5_doctor_memory(db: Db) -> None:
    db["doctor_memory"].create(
        {"key": str, "value": str, "updated_ns": int}, pk="key", if_not_exists=True
    )


SEGMENT_DIR = "pcap"  # <database dir>/pcap/<session id>/seg-00001.pcapng ...


def segment_name(seq: int) -> str:
    return f"seg-{seq:05d}.pcapng"


def _m6_packets_in_segment_files(db: Db) -> None:
    """Packet bytes move out of SQLite into one pcapng segment file per session.

    Adds `pcap_segments`, `packet_index`, `trace_sessions.pid` and `capture_points.seq`
    (rank of the point in its session by id, from 0: the interface id in the segment
    files). The rows of `packets` are written, per session in (ts_ns, id) order, to
    `pcap/<session>/seg-00001.pcapng` (one IDB per capture point in seq order, then one
    per point id missing from capture_points, named `point<ID>`; each EPB keeps the
    row's direction, length and comment); each row becomes a `packet_index` row with
    the same id (so `hops.packet_id` keeps pointing at it) and the EPB's offset. Old
    sessions still marked running are marked killed (they have no pid to check). Then
    `packets` is dropped. Files are written and fsynced before the transaction commits:
    a failed migration leaves the packets in SQLite and is redone (files rewritten).
    """
    from ..pcap.export import point_name  # the names the tracer gives its segment files
    from ..pcap.pcapng import PcapNgWriter

    conn = db.conn
    conn.execute("""CREATE TABLE IF NOT EXISTS pcap_segments (
        id INTEGER PRIMARY KEY, session_id INTEGER, seq INTEGER, path TEXT,
        started_ns INTEGER, ended_ns INTEGER, bytes INTEGER, complete INTEGER)""")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS idx_pcap_segments_session_id_seq"
        " ON pcap_segments (session_id, seq)"
    )
    conn.execute("""CREATE TABLE IF NOT EXISTS packet_index (
        id INTEGER PRIMARY KEY, session_id INTEGER, segment_id INTEGER, offset INTEGER,
        ts_ns INTEGER, point_id INTEGER, flow_id INTEGER, direction TEXT, len INTEGER)""")
    conn.execute("CREATE INDEX IF NOT EXISTS idx_packet_index_flow_id ON packet_index (flow_id)")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS idx_packet_index_segment_id_offset"
        " ON packet_index (segment_id, offset)"
    )
    if "pid" not in db["trace_sessions"].columns_dict:
        conn.execute("ALTER TABLE trace_sessions ADD COLUMN pid INTEGER")
    if "seq" not in db["capture_points"].columns_dict:
        conn.execute("ALTER TABLE capture_points ADD COLUMN seq INTEGER")
    conn.execute("""UPDATE capture_points SET seq = (SELECT count(*) FROM capture_points c
                    WHERE c.session_id = capture_points.session_id
                    AND c.id < capture_points.id)""")
    if "packets" not in db.table_names():
        return
    base = Path(conn.execute("PRAGMA database_list").fetchone()[2] or ".").parent
    sessions = [
        r[0] for r in conn.execute("SELECT DISTINCT session_id FROM packets ORDER BY session_id")
    ]
    for sid in sessions:
        info = conn.execute(
            "SELECT container_name, snaplen, started_ns, stopped_ns"
            " FROM trace_sessions WHERE id = ?",
            (sid,),
        ).fetchone()
        cname, snaplen, started, stopped = info or (None, 0, None, None)
        rel = Path(SEGMENT_DIR) / str(sid) / segment_name(1)
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".migrating")
        if_ids = {}
        first = last = None
        seg_id = conn.execute(
            "INSERT INTO pcap_segments (session_id, seq, path, complete) VALUES (?, 1, ?, 0)",
            (sid, str(rel)),
        ).lastrowid
        with open(tmp, "wb") as fh, PcapNgWriter(fh, flush_interval=None, flush_every=10_000) as w:
            for pid, name, desc, linktype in conn.execute(
                "SELECT id, name, description, linktype FROM capture_points"
                " WHERE session_id = ? ORDER BY id",
                (sid,),
            ).fetchall():
                if_ids[pid] = w.add_interface(
                    point_name(name, desc, cname) or f"point{pid}",
                    desc or "",
                    linktype or 1,
                    snaplen or 0,
                )
            for (pid,) in conn.execute(
                "SELECT DISTINCT point_id FROM packets WHERE session_id = ? ORDER BY point_id",
                (sid,),
            ).fetchall():
                if pid not in if_ids:
                    if_ids[pid] = w.add_interface(f"point{pid}", "capture point not in the store")
            batch = []
            cur = conn.execute(
                "SELECT id, ts_ns, point_id, direction, len, coalesce(data, x''), flow_id,"
                " comment FROM packets WHERE session_id = ? ORDER BY ts_ns, id",
                (sid,),
            )
            for pkt_id, ts, pid, direction, wirelen, data, fid, comment in cur:
                offset = w.tell()
                w.write_packet(
                    if_ids[pid],
                    ts,
                    data,
                    orig_len=len(data) if wirelen is None else wirelen,
                    direction=direction,
                    comment=comment,
                )
                batch.append((pkt_id, sid, seg_id, offset, ts, pid, fid, direction, wirelen))
                first = ts if first is None else first
                last = ts
                if len(batch) >= 10_000:
                    _insert_index_rows(conn, batch)
                    batch.clear()
            _insert_index_rows(conn, batch)
            w.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        conn.execute(
            "UPDATE pcap_segments SET started_ns = ?, ended_ns = ?, bytes = ?, complete = 1"
            " WHERE id = ?",
            (
                min(x for x in (started, first) if x is not None),
                max(x for x in (stopped, last) if x is not None),
                path.stat().st_size,
                seg_id,
            ),
        )
        _fsync_dir(path.parent)
    _fsync_dir(base / SEGMENT_DIR)
    conn.execute("""UPDATE trace_sessions SET status = 'killed',
                    stopped_ns = coalesce(stopped_ns,
                        (SELECT max(ts_ns) FROM packets p WHERE p.session_id = trace_sessions.id),
                        started_ns)
                    WHERE status = 'running'""")
    conn.execute("DROP TABLE packets")


def _insert_index_rows(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    conn.executemany(
        "INSERT INTO packet_index (id, session_id, segment_id, offset, ts_ns,"
        " point_id, flow_id, direction, len) VALUES (?,?,?,?,?,?,?,?,?)",
        rows,
    )


def _fsync_dir(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _m7_lean_packet_index(db: Db) -> None:
    """Every analysed packet is a packet_index row, so each index on it is paid per packet.
    Nothing looks packets up by session and time (export goes by segment, then by flow);
    a session's packets are counted through its segments."""
    db.conn.execute("DROP INDEX IF EXISTS idx_packet_index_session_id_ts_ns")


def _m8_journeys(db: Db) -> None:
    """One index row per journey (a packet's way through the capture points) instead of
    one per capture: `journeys` holds its flow, its first capture's time and every
    capture packed in one column (rows.CAPTURE), so the tracer writes one row, not ~4, per
    packet it analyses. Old `packet_index` rows are grouped as the tracer wrote them
    (consecutive ids of one session and flow; a capture point seen again, or a row a hop
    points at, starts the next journey), each journey keeping its first row's id, so
    `hops.packet_id` (now `journey_id`) still points at it."""
    conn = db.conn
    conn.execute("""CREATE TABLE IF NOT EXISTS journeys (
        id INTEGER PRIMARY KEY, session_id INTEGER, flow_id INTEGER, ts_ns INTEGER,
        capture_count INTEGER, captures BLOB)""")
    conn.execute("CREATE INDEX IF NOT EXISTS idx_journeys_flow_id ON journeys (flow_id)")
    conn.execute("CREATE INDEX IF NOT EXISTS idx_journeys_session_id ON journeys (session_id)")
    if "packet_id" in db["hops"].columns_dict:
        conn.execute("ALTER TABLE hops RENAME COLUMN packet_id TO journey_id")
    if "packet_index" not in db.table_names():
        return
    starts = {
        r[0]
        for r in conn.execute("SELECT DISTINCT journey_id FROM hops WHERE journey_id IS NOT NULL")
    }
    batch: list[tuple] = []
    cur: list = []  # the journey being grouped: its first row's (id, session, flow, ts)
    caps: list[bytes] = []
    points: set[int] = set()

    def close() -> None:
        if cur:
            batch.append((*cur, len(caps), b"".join(caps)))
            if len(batch) >= 10_000:
                conn.executemany("INSERT INTO journeys VALUES (?,?,?,?,?,?)", batch)
                batch.clear()

    rows = conn.execute(
        "SELECT id, session_id, segment_id, offset, ts_ns, point_id, flow_id, direction, len"
        " FROM packet_index ORDER BY id"
    )
    for rid, sid, seg, off, ts, point, fid, direction, wirelen in rows:
        if not cur or rid in starts or point in points or (sid, fid) != (cur[1], cur[2]):
            close()
            cur, caps, points = [rid, sid, fid, ts], [], set()
        points.add(point)
        caps.append(
            pack_capture(IndexCapture(seg or 0, off or 0, ts or 0, point or 0, direction, wirelen))
        )
    close()
    conn.executemany("INSERT INTO journeys VALUES (?,?,?,?,?,?)", batch)
    conn.execute("DROP TABLE packet_index")


# Append only: a new step gets the next version. Never edit an applied step.
MIGRATIONS = [
    ("base: containers, events, probe_loss", _m1_base),
    (
        "interfaces, trace sessions, capture points, packets, flows, hops, drops",
        _m2_network_and_traces,
    ),
    ("doctor findings", _m3_findings),
    ("probe_loss: reader lag and detail", _m4_probe_loss_lag),
    ("doctor memory: remembered port mappings and acknowledged counters", _m5_doctor_memory),
    (
        "packets in pcapng segment files: pcap_segments, packet_index, session pid, point seq",
        _m6_packets_in_segment_files,
    ),
    ("packet_index without its (session_id, ts_ns) index", _m7_lean_packet_index),
    ("journeys: one index row per analysed packet, its captures packed", _m8_journeys),
]
