"""`Store`: the pyinspect database and its per-table methods (the only SQL)."""

import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from ..errors import CorruptInputError, UnavailableError
from ..proc import pid_alive, started_by
from .migrations import MIGRATIONS
from .rows import (
    _FLOW_COLS,
    _FLOW_QS,
    _FLOW_SET,
    _SEGMENT_COLS,
    _SESSION_REF_COLS,
    CAPTURE,
    DropRow,
    FlowRow,
    HopRow,
    IndexCapture,
    JourneyRow,
    SegmentIndex,
    SegmentInfo,
    SessionRef,
    TraceIds,
    TracePoint,
    _json_sorted,
    _with_json,
    pack_capture,
    unpack_captures,
)

ROWS_PER_INSERT = 50  # rows a statement, for the tracer's many-row inserts


@functools.cache
def _inserts(head: str, ncols: int) -> list[tuple[int, str]]:
    """(rows, SQL) for `INSERT INTO table (cols) VALUES` statements of ROWS_PER_INSERT,
    10 and 1 rows of `ncols` values."""
    row = "(" + ",".join("?" * ncols) + ")"
    return [(k, f"{head} VALUES {','.join([row] * k)}") for k in (ROWS_PER_INSERT, 10, 1)]


class Store:
    """The pyinspect database. Cheap to open; safe for one writer and many readers."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(
                f"cannot create the state directory {self.path.parent}: {exc.strerror}",
                "use another --root",
            ) from None
        try:
            self.db = sqlite_utils.Database(str(self.path))
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.execute("PRAGMA synchronous=NORMAL")
        except Exception as exc:  # sqlite3.DatabaseError: not a database
            raise CorruptInputError(
                f"cannot open store {self.path}: {exc}", "move the file away or use another --root"
            ) from exc
        self._depth = 0
        self._event_columns: set[str] | None = None  # the events table's columns, once read
        self._migrate()
        self.reap_killed_traces()

    def _migrate(self) -> None:
        self.db.table("schema_version").create(
            {"version": int, "description": str, "applied_ns": int},
            pk="version",
            if_not_exists=True,
        )
        done = {row["version"] for row in self.db.table("schema_version").rows}
        conn = self.db.conn
        for version, (description, step) in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            # one write transaction per step; another process may have applied it while
            # this one waited for the lock (moving packets out takes a while: wait long)
            conn.execute("PRAGMA busy_timeout=600000")
            try:
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    if conn.execute(
                        "SELECT 1 FROM schema_version WHERE version = ?", (version,)
                    ).fetchone():
                        continue
                    step(self.db)
                    conn.execute(
                        "INSERT INTO schema_version (version, description,"
                        " applied_ns) VALUES (?, ?, ?)",
                        (version, description, time.time_ns()),
                    )
            finally:
                conn.execute("PRAGMA busy_timeout=5000")

    @property
    def version(self) -> int:
        row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- events -----------------------------------------------------------------
    def insert_events(self, events: Iterable[dict], **common: object) -> int:
        """Write a batch of event dicts in one transaction (`detail` may be a dict);
        `common`: columns every one of them gets (over its own)."""
        rows = []
        keys = set(common)
        for ev in events:
            row = {**ev, **common}
            detail = row.get("detail")
            if isinstance(detail, (dict, list)):
                row["detail"] = _json_sorted(detail)
            keys.update(row)
            rows.append(row)
        if not rows:
            return 0
        cols = self._event_columns
        with self.batch():
            if cols is None or not keys <= cols:
                # a column the table does not have yet: sqlite-utils adds it
                self.db.table("events").insert_all(rows, alter=True)
                self._event_columns = set(self.db["events"].columns_dict)
            else:  # the usual case: one prepared statement, rows bound by name
                names = sorted(keys)
                blank = dict.fromkeys(names)
                for i, row in enumerate(rows):
                    if len(row) < len(names):
                        rows[i] = {**blank, **row}
                self.db.conn.executemany(
                    f"INSERT INTO events ({', '.join(names)})"
                    f" VALUES ({', '.join(':' + k for k in names)})",
                    rows,
                )
        return len(rows)

    def reattribute_events(self, events: Iterable[dict]) -> int:
        """Replace stored events that have no container yet with these attributed copies
        (found by ts_ns, kind and pid: a record stored at once, attributed later), in one
        transaction; the copies get new row ids, so live tails by id see them. The
        number of rows replaced."""
        rows = [e for e in events if e.get("container_id")]
        if not rows:
            return 0
        with self.batch():
            cur = self.db.conn.executemany(
                "DELETE FROM events WHERE ts_ns = ? AND kind = ? AND pid IS ?"
                " AND container_id IS NULL",
                [(e["ts_ns"], e["kind"], e.get("pid")) for e in rows],
            )
            replaced = cur.rowcount
            self.insert_events(rows)
        return replaced

    # -- transactions -------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator["Store"]:
        """One write transaction around several of the methods below (they nest)."""
        conn = self.db.conn
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            with conn:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                yield self
        finally:
            self._depth = 0

    def _run(self, sql: str, args: Sequence = ()) -> sqlite3.Cursor:
        with self.batch():
            return self.db.conn.execute(sql, args)

    def _insert(self, sql: str, args: Sequence = ()) -> int:
        """Run one INSERT; the new row's id."""
        rowid = self._run(sql, args).lastrowid
        assert rowid is not None  # an INSERT sets it
        return rowid

    def _run_many(self, sql: str, rows: Iterable[Sequence]) -> None:
        with self.batch():
            self.db.conn.executemany(sql, rows)

    # -- trace sessions (the tracer's writes) ------------------------------------------
    def begin_trace(
        self,
        *,
        container_id: str,
        container_name: str,
        started_ns: int,
        points: Iterable[TracePoint | dict],
        pid: int | None = None,
        filter: str = "",
        snaplen: int = 0,
        pcap_path: str | Path = "",
    ) -> TraceIds:
        """A `running` session row and its capture points (seq = position in `points`:
        the interface id in the segment files). `points` are TracePoint (or dicts of
        its fields). Returns TraceIds(session_id, point_ids)."""
        pts = [p if isinstance(p, TracePoint) else TracePoint(**p) for p in points]
        with self.batch():
            sid = self._insert(
                "INSERT INTO trace_sessions (container_id, container_name, started_ns,"
                " filter, snaplen, status, pcap_path, pid) VALUES (?,?,?,?,?,'running',?,?)",
                (
                    container_id,
                    container_name,
                    started_ns,
                    filter or "",
                    snaplen,
                    str(pcap_path or ""),
                    os.getpid() if pid is None else pid,
                ),
            )
            ids = [
                self._insert(
                    "INSERT INTO capture_points (session_id, seq, name, description, ifindex,"
                    " netns, linktype) VALUES (?,?,?,?,?,?,?)",
                    (sid, seq, p.name, p.description, p.ifindex, p.netns, p.linktype),
                )
                for seq, p in enumerate(pts)
            ]
        return TraceIds(sid, ids)

    def end_trace(
        self,
        session_id: int,
        status: str = "stopped",
        summary: dict | None = None,
        stopped_ns: int | None = None,
    ) -> None:
        """Mark a session ended with its summary (a dict, stored as JSON)."""
        self._run(
            "UPDATE trace_sessions SET stopped_ns = ?, status = ?, summary = ? WHERE id = ?",
            (
                time.time_ns() if stopped_ns is None else stopped_ns,
                status,
                None if summary is None else json.dumps(summary),
                session_id,
            ),
        )

    def fail_trace(self, session_id: int, why: str) -> None:
        """Mark a session `failed: <why>` (cut at 200 characters)."""
        self._run(
            "UPDATE trace_sessions SET stopped_ns = ?, status = ? WHERE id = ?",
            (time.time_ns(), f"failed: {why}"[:200], session_id),
        )

    def add_segment(self, session_id: int, seq: int, path: str | Path, started_ns: int) -> int:
        """A segment file the trace has opened; `path` is absolute or relative to the
        database's directory (stored relative when it is under it). Returns its id."""
        return self._insert(
            "INSERT INTO pcap_segments (session_id, seq, path, started_ns, complete)"
            " VALUES (?, ?, ?, ?, 0)",
            (session_id, seq, self._relative(path), started_ns),
        )

    def finish_segment(self, segment_id: int, nbytes: int, ended_ns: int) -> None:
        """A segment file closed complete with `nbytes` bytes."""
        self._run(
            "UPDATE pcap_segments SET bytes = ?, ended_ns = ?, complete = 1 WHERE id = ?",
            (nbytes, ended_ns, segment_id),
        )

    def add_journeys(self, rows: list[JourneyRow]) -> list[int]:
        """JourneyRows in one transaction; returns their ids in order (hops refer to them
        as journey_id)."""
        values: list = []
        for r in rows:
            caps = r.captures
            values += (
                r.session_id,
                r.flow_id,
                caps[0].ts_ns,
                len(caps),
                b"".join(pack_capture(c) for c in caps),
            )
        first = self.add_journey_values(values)
        return list(range(first, first + len(rows)))

    def add_journey_values(self, values: list) -> int:
        """add_journeys() for rows given as one flat list of their column values (session
        id, flow id, first capture's ts_ns, capture count, packed captures: rows.CAPTURE),
        row after row: what the tracer makes, without a tuple a row; returns the first
        row's id (the rest follow it), or 0 for none."""
        return self._insert_flat(
            "INSERT INTO journeys (session_id, flow_id, ts_ns, capture_count, captures)", 5, values
        )

    def _insert_flat(self, head: str, ncols: int, values: list) -> int:
        """Rows of `ncols` values given as one flat list, many rows a statement (SQLite's
        per-statement work, not per row); returns the first row's id (the rest follow
        it: one writer holds the lock for the whole insert), or 0 for none."""
        n_rows = len(values) // ncols
        if not n_rows:
            return 0
        with self.batch():
            conn = self.db.conn
            done = 0
            for k, sql in _inserts(head, ncols):
                n = (n_rows - done) // k * k
                if n:
                    step = k * ncols
                    conn.executemany(
                        sql,
                        [
                            values[i : i + step]
                            for i in range(done * ncols, (done + n) * ncols, step)
                        ],
                    )
                    done += n
            last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        return last - n_rows + 1

    def insert_flow(self, row: FlowRow) -> int:
        """A FlowRow; returns its id."""
        return self._insert(
            f"INSERT INTO flows ({_FLOW_COLS}) VALUES ({_FLOW_QS})", _with_json(row)
        )

    def insert_flows(self, rows: list[FlowRow]) -> list[int]:
        """FlowRows in one statement; returns their ids in order."""
        if not rows:
            return []
        with self.batch():
            conn = self.db.conn
            conn.executemany(
                f"INSERT INTO flows ({_FLOW_COLS}) VALUES ({_FLOW_QS})", map(_with_json, rows)
            )
            last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        # one writer holds the lock for the whole insert: the ids are consecutive
        return list(range(last - len(rows) + 1, last + 1))

    def update_flow(self, flow_id: int, row: FlowRow) -> None:
        """Replace a flow's columns with a FlowRow's."""
        self._run(f"UPDATE flows SET {_FLOW_SET} WHERE id = ?", (*_with_json(row), flow_id))

    def insert_hops(self, rows: Iterable[HopRow | tuple]) -> None:
        """HopRow rows in one transaction; a row may also be a tuple of HopRow's values
        with its detail as JSON text already (the tracer's, made per netfilter hop)."""
        values: list = []
        for r in rows:
            values += r if type(r) is tuple else _with_json(r)
        self._insert_flat(
            "INSERT INTO hops (session_id, flow_id, journey_id, ts_ns, table_name, chain,"
            " rule_num, rule_text, verdict, detail)",
            10,
            values,
        )

    def insert_drops(self, rows: Iterable[DropRow]) -> None:
        """DropRow rows in one transaction."""
        self._run_many(
            "INSERT INTO drops (session_id, ts_ns, reason, location, ifindex, flow_id,"
            " detail) VALUES (?,?,?,?,?,?,?)",
            [_with_json(r) for r in rows],
        )

    # -- killed traces ---------------------------------------------------------------
    def reap_killed_traces(self) -> list[int]:
        """Mark `running` sessions whose process is gone as `killed`; returns their ids.
        A process that started after the session did is not its trace (a recycled pid).

        stopped_ns is the newest segment file's mtime (else started_ns); segments the
        trace never finished get their file's size, mtime and complete = 0. Cheap when
        nothing is running (one indexed-free query on a small table).
        """
        try:
            rows = self.db.conn.execute(
                "SELECT id, pid, started_ns FROM trace_sessions"
                " WHERE status = 'running' AND pid IS NOT NULL"
            ).fetchall()
        except Exception:  # noqa: BLE001 - a store being migrated by an older version
            return []
        dead = [
            (sid, started)
            for sid, pid, started in rows
            if not (started_by(pid, started) if started else pid_alive(pid))
        ]
        reaped = []
        for sid, started in dead:
            with contextlib.suppress(Exception), self.batch():
                conn = self.db.conn
                if conn.execute(
                    "SELECT status FROM trace_sessions WHERE id = ?", (sid,)
                ).fetchone() != ("running",):
                    continue  # another process reaped it first
                newest = started
                for seg in self.segments([sid]):
                    st = self._stat(seg.path)
                    if st is None:
                        continue
                    mtime = st.st_mtime_ns
                    newest = mtime if newest is None else max(newest, mtime)
                    if not seg.complete:
                        conn.execute(
                            "UPDATE pcap_segments SET bytes = coalesce(bytes, ?),"
                            " ended_ns = coalesce(ended_ns, ?) WHERE id = ?",
                            (st.st_size, mtime, seg.id),
                        )
                conn.execute(
                    "UPDATE trace_sessions SET status = 'killed', stopped_ns = ? WHERE id = ?",
                    (newest, sid),
                )
                reaped.append(sid)
        return reaped

    # -- segments and the packet index (read) -------------------------------------------
    def segment_path(self, path: str | Path) -> Path:
        """The absolute path of a segment row's `path`."""
        return self.path.parent / path

    def _relative(self, path: str | Path) -> str:
        path = Path(path)
        if not path.is_absolute():
            return str(path)
        with contextlib.suppress(ValueError):
            return str(path.relative_to(self.path.parent.absolute()))
        return str(path)

    def _stat(self, rel: str) -> os.stat_result | None:
        try:
            return os.stat(self.segment_path(rel))
        except OSError:
            return None

    def segments(self, session_ids: Sequence[int]) -> list[SegmentInfo]:
        """SegmentInfo of the sessions, by session then seq."""
        if not session_ids:
            return []
        qs = ",".join("?" * len(session_ids))
        return [
            SegmentInfo(*r)
            for r in self.db.conn.execute(
                f"SELECT {_SEGMENT_COLS} FROM pcap_segments WHERE session_id IN ({qs})"
                " ORDER BY session_id, seq, id",
                list(session_ids),
            )
        ]

    def segment_index(self, session_ids: Iterable[int]) -> dict[int, SegmentIndex]:
        """Per segment id of these sessions: the span of its indexed packets' times and
        the offsets (sorted) and flow ids of those indexed to a flow."""
        ids = list(session_ids)
        out: dict[int, SegmentIndex] = {}
        if not ids:
            return out
        w = _Where()
        w.add_in("session_id", ids)
        spans: dict[int, list[int]] = {}
        by_seg: dict[int, list[tuple[int, int]]] = {}
        for fid, blob in self.db.execute(
            "SELECT flow_id, captures FROM journeys" + w.sql(), w.params
        ):
            for seg, off, ts, _point, _ln, _out in CAPTURE.iter_unpack(blob):
                span = spans.get(seg)
                if span is None:
                    spans[seg] = [ts, ts]
                elif ts < span[0]:
                    span[0] = ts
                elif ts > span[1]:
                    span[1] = ts
                if fid is not None:
                    by_seg.setdefault(seg, []).append((off, fid))
        for seg, (lo, hi) in spans.items():
            pairs = sorted(by_seg.get(seg, ()))
            out[seg] = SegmentIndex(lo, hi, [o for o, _f in pairs], [f for _o, f in pairs])
        return out

    def indexed_packets(self, flow_ids: Iterable[int]) -> list[tuple[int, int, int]]:
        """(segment_id, offset, ts_ns) of the packets indexed to these flows, by segment,
        time and offset."""
        flow_ids = list(flow_ids)
        if not flow_ids:
            return []
        w = _Where()
        w.add_in("flow_id", flow_ids)
        out = []
        for (blob,) in self.db.execute("SELECT captures FROM journeys" + w.sql(), w.params):
            out += [(seg, off, ts) for seg, off, ts, *_rest in CAPTURE.iter_unpack(blob)]
        return sorted(out)

    def indexed_count(self, session_id: int | None = None, flow_id: int | None = None) -> int:
        """Indexed packets (captures) of a session or a flow."""
        col, val = ("flow_id", flow_id) if flow_id is not None else ("session_id", session_id)
        return self.db.conn.execute(
            f"SELECT coalesce(sum(capture_count), 0) FROM journeys WHERE {col} = ?", (val,)
        ).fetchone()[0]

    # -- trace sessions (read: pcap ls/export) --------------------------------------------
    def session_list(self) -> list[dict]:
        """Every trace session (newest first) with its counts of capture points and
        segment files, the segments' bytes, and its summary (JSON text)."""
        cur = self.db.execute("""
            SELECT s.id, s.container_id, s.container_name, s.started_ns, s.stopped_ns,
                   s.status, s.filter, s.pcap_path, s.summary,
                   (SELECT count(*) FROM capture_points c WHERE c.session_id = s.id) AS points,
                   (SELECT count(*) FROM pcap_segments g WHERE g.session_id = s.id)
                       AS segments,
                   (SELECT sum(g.bytes) FROM pcap_segments g WHERE g.session_id = s.id)
                       AS bytes
            FROM trace_sessions s ORDER BY s.started_ns DESC, s.id DESC""")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def session_ref(self, session_id: int) -> "SessionRef | None":
        """A session by id, or None."""
        row = self.db.execute(
            f"SELECT {_SESSION_REF_COLS} FROM trace_sessions WHERE id = ?", (session_id,)
        ).fetchone()
        return SessionRef(*row) if row else None

    def sessions_of(self, container: str, id_prefix: bool = False) -> "list[SessionRef]":
        """A container's sessions by name or full id (or, with id_prefix, by id prefix),
        oldest first."""
        if id_prefix:
            rows = self.db.execute(
                f"SELECT {_SESSION_REF_COLS} FROM trace_sessions"
                " WHERE container_id LIKE ? ORDER BY id",
                (container + "%",),
            ).fetchall()
        else:
            rows = self.db.execute(
                f"SELECT {_SESSION_REF_COLS} FROM trace_sessions"
                " WHERE container_name = ? OR container_id = ? ORDER BY id",
                (container, container),
            ).fetchall()
        return [SessionRef(*r) for r in rows]

    def session_points(self, session_ids: list[int]) -> list[tuple]:
        """(session_id, seq, name, description, linktype, container_name) of the sessions'
        capture points, by id."""
        w = _Where()
        w.add_in("c.session_id", session_ids)
        return self.db.execute(
            "SELECT c.session_id, c.seq, c.name, c.description, c.linktype, s.container_name"
            " FROM capture_points c JOIN trace_sessions s ON s.id = c.session_id"
            f"{w.sql()} ORDER BY c.id",
            w.params,
        ).fetchall()

    def flow_sides(self, session_ids: list[int]) -> list[tuple]:
        """(id, proto, orig src/sport/dst/dport, reply src/sport/dst/dport) of the
        sessions' flows."""
        w = _Where()
        w.add_in("session_id", session_ids)
        return self.db.execute(
            "SELECT id, proto, orig_src, orig_sport, orig_dst, orig_dport,"
            " reply_src, reply_sport, reply_dst, reply_dport FROM flows" + w.sql(),
            w.params,
        ).fetchall()

    def flow_nats(self, session_ids: list[int]) -> dict[int, str | None]:
        """{flow id: its NAT text} of the sessions' flows."""
        w = _Where()
        w.add_in("session_id", session_ids)
        return dict(self.db.execute("SELECT id, nat FROM flows" + w.sql(), w.params))

    def flow_span(self, flow_ids: Sequence[int]) -> tuple[int | None, int | None]:
        """(first_ns, last_ns) over the flows, or (None, None) if any of them lacks one."""
        if not flow_ids:
            return None, None
        w = _Where()
        w.add_in("id", sorted(flow_ids))
        first, last, unknown = self.db.execute(
            "SELECT min(first_ns), max(last_ns), sum(first_ns IS NULL OR last_ns IS NULL)"
            " FROM flows" + w.sql(),
            w.params,
        ).fetchone()
        return (None, None) if unknown else (first, last)

    # -- events, probe loss ----------------------------------------------------------------
    def insert_probe_loss(self, rows: list[dict]) -> None:
        """probe_loss rows (dicts) in one transaction."""
        if rows:
            with self.batch():
                self.db.table("probe_loss").insert_all(rows)

    def last_event_id(self) -> int:
        """The newest events row id (0 when there is none)."""
        return self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]

    def event_counts(self, since_ns: int | None = None) -> tuple[dict[str, int], int]:
        """({kind: stored events}, events at or after `since_ns`)."""
        by_kind = dict(self.db.execute("SELECT kind, count(*) FROM events GROUP BY kind"))
        recent = 0
        if since_ns is not None:
            recent = self.db.execute(
                "SELECT count(*) FROM events WHERE ts_ns >= ?", (since_ns,)
            ).fetchone()[0]
        return by_kind, recent

    def probe_records_lost(self) -> int:
        return self.db.execute("SELECT coalesce(sum(lost), 0) FROM probe_loss").fetchone()[0]

    def timeline(self, q: "TimelineQuery") -> list[dict]:
        """Rows (dicts, detail as stored) of a TimelineQuery: stored events, and with
        `q.packets` each traced connection (`flow`, at its first packet) and explained drop
        (`drop`) of the trace sessions, merged in time order."""
        w = _Where()
        if q.after_id is not None:
            w.add("id > ?", int(q.after_id))
        if q.container:
            w.add("(container_name = ? OR container_id LIKE ?)", q.container, f"{q.container}%")
        if q.since_ns is not None:
            w.add("ts_ns >= ?", q.since_ns)
        if q.until_ns is not None:
            w.add("ts_ns <= ?", q.until_ns)
        if q.kinds:
            w.add_in("kind", q.kinds)
        cond, params = w.sql(), w.params
        if q.after_id is not None:  # a live tail: what was stored since, in storage order
            order = " ORDER BY id DESC" if q.newest_first else " ORDER BY id"
        else:
            order = " ORDER BY ts_ns DESC, id DESC" if q.newest_first else " ORDER BY ts_ns, id"
        page = " LIMIT ? OFFSET ?" if q.limit is not None else ""
        if q.packets:
            # each source is filtered, ordered and cut on its own (the events one walks its
            # ts_ns index and stops), then the few rows left are merged: ordering the UNION
            # as a whole sorted every stored event (2.5 s with 1M events)
            arm_page = " LIMIT ?" if q.limit is not None else ""
            arms = [
                f"SELECT * FROM (SELECT * FROM ({src}){cond}{order}{arm_page})"
                for src in (_EVENT_ROWS, _FLOW_ROWS, _DROP_ROWS)
            ]
            sql = " UNION ALL ".join(arms) + order + page
            arm_params = params + ([int(q.limit) + int(q.offset)] if q.limit is not None else [])
            params = arm_params * len(arms)
        else:
            sql = f"SELECT * FROM ({_EVENT_ROWS}){cond}{order}{page}"
        if q.limit is not None:
            params += [int(q.limit), int(q.offset)]
        try:
            cur = self.db.execute(sql, params)
            names = [c[0] for c in cur.description]
            rows = cur.fetchall()
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # locked, busy...: not damage
                raise
            raise CorruptInputError(
                f"reading events from store {self.path}: {exc}",
                "move the file away or use another --root",
            ) from exc
        return [dict(zip(names, r, strict=False)) for r in rows]

    # -- flows and hops (read) --------------------------------------------------------------
    def flow_counts(self) -> dict[int, int]:
        """{session id: flows}."""
        return dict(
            self.db.execute("SELECT session_id, count(*) FROM flows GROUP BY session_id").fetchall()
        )

    def flow_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM flows").fetchone()[0]

    def last_flow_id(self) -> int:
        return self.db.execute("SELECT coalesce(max(id), 0) FROM flows").fetchone()[0]

    def recent_flows(
        self, session_id: int | None = None, after_id: int | None = None, limit: int = 500
    ) -> list[dict]:
        """Flow rows (dicts, newest first) with `packets`: how many packets the trace's
        analysis indexed to each (the segment files may hold more)."""
        w = _Where()
        if session_id is not None:
            w.add("f.session_id = ?", session_id)
        if after_id is not None:
            w.add("f.id > ?", after_id)
        cur = self.db.execute(
            "SELECT f.*, (SELECT coalesce(sum(j.capture_count), 0) FROM journeys j"
            " WHERE j.flow_id = f.id)"
            f" AS packets FROM flows f{w.sql()} ORDER BY f.id DESC LIMIT ?",
            [*w.params, limit],
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=False)) for r in cur.fetchall()]

    def flow_tuple(self, flow_id: int, session_id: int) -> tuple | None:
        """(proto, orig_src, orig_sport, orig_dst, orig_dport) of a session's flow, or None."""
        return self.db.execute(
            "SELECT proto, orig_src, orig_sport, orig_dst, orig_dport FROM flows "
            "WHERE id = ? AND session_id = ?",
            (flow_id, session_id),
        ).fetchone()

    def flow_rule_hops(self, session_id: int, flow_id: int, limit: int = 200) -> list[tuple]:
        """(table, chain, rule_num, verdict) of a session's flow's rule hops (not its
        captures), in time order (the session bounds the look: its hops' index)."""
        return self.db.execute(
            "SELECT table_name, chain, rule_num, verdict FROM hops WHERE session_id = ?"
            " AND flow_id = ? AND table_name != 'capture' ORDER BY ts_ns LIMIT ?",
            (session_id, flow_id, limit),
        ).fetchall()

    def session_summaries(self) -> list[str | None]:
        """The summary column (JSON text or None) of every trace session."""
        return [r[0] for r in self.db.execute("SELECT summary FROM trace_sessions")]

    def latest_session_of(self, container_name: str) -> tuple[int, int | None] | None:
        """(id, started_ns) of the newest trace session of a container, or None."""
        return self.db.execute(
            "SELECT id, started_ns FROM trace_sessions WHERE"
            " container_name = ? ORDER BY id DESC LIMIT 1",
            [container_name],
        ).fetchone()

    def drop_reasons(self, session_id: int, limit: int = 3) -> list[tuple[str, str, int]]:
        """[(reason, location, count)] of a session's drops, most frequent first."""
        return self.db.execute(
            "SELECT reason, location, count(*) FROM drops WHERE session_id = ? "
            "GROUP BY reason, location ORDER BY count(*) DESC LIMIT ?",
            [session_id, limit],
        ).fetchall()

    def dropping_hops(self, session_id: int, limit: int = 3) -> list[tuple]:
        """[(table, chain, rule_num, rule_text, verdict, count)] of a session's DROP/REJECT
        hops, most frequent first."""
        return self.db.execute(
            "SELECT table_name, chain, rule_num, rule_text, verdict, count(*) FROM hops "
            "WHERE session_id = ? AND verdict IN ('DROP', 'REJECT') "
            "GROUP BY table_name, chain, rule_num ORDER BY count(*) DESC LIMIT ?",
            [session_id, limit],
        ).fetchall()

    # -- the trace view (ladder) ------------------------------------------------------------
    def trace_session(self, session_id: int) -> dict | None:
        """One trace session row (dict, summary as JSON text), or None."""
        cur = self.db.execute("SELECT * FROM trace_sessions WHERE id = ?", (session_id,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None

    def capture_point_rows(self, session_id: int) -> list[dict]:
        """(id, seq, name, description, ifindex, netns) of a session's points, by seq."""
        cur = self.db.execute(
            "SELECT id, seq, name, description, ifindex, netns FROM capture_points"
            " WHERE session_id = ? ORDER BY seq, id",
            (session_id,),
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def journey_rows(
        self, session_id: int, flow_id: int | None = None, after_id: int = 0, limit: int = 2000
    ) -> list[tuple[int, int | None, list[IndexCapture]]]:
        """(id, flow_id, captures) of a session's (or one flow's) journeys past
        `after_id`, by id."""
        w = _Where()
        w.add("session_id = ?", session_id)
        w.add("id > ?", after_id)
        if flow_id is not None:
            w.add("flow_id = ?", flow_id)
        return [
            (jid, fid, unpack_captures(blob))
            for jid, fid, blob in self.db.execute(
                f"SELECT id, flow_id, captures FROM journeys{w.sql()} ORDER BY id LIMIT ?",
                [*w.params, limit],
            ).fetchall()
        ]

    def hops_of_journeys(self, session_id: int, journey_ids: Iterable[int]) -> list[tuple]:
        """(journey_id, table, chain, rule_num, rule_text, verdict, detail JSON) of the
        rule hops stored for these journeys of a session, in stored order (the session
        bounds the look through the hops table: its (session_id, ts_ns) index)."""
        ids = list(journey_ids)
        if not ids:
            return []
        w = _Where()
        w.add("session_id = ?", session_id)
        w.add_in("journey_id", ids)
        return self.db.execute(
            "SELECT journey_id, table_name, chain, rule_num, rule_text, verdict, detail FROM hops"
            f"{w.sql()} AND table_name != 'capture' ORDER BY id",
            w.params,
        ).fetchall()

    def flow_rows(self, flow_ids: Iterable[int]) -> dict[int, dict]:
        """{id: flow row (dict)} of these flows."""
        ids = sorted(set(flow_ids))
        if not ids:
            return {}
        w = _Where()
        w.add_in("id", ids)
        cur = self.db.execute("SELECT * FROM flows" + w.sql(), w.params)
        cols = [d[0] for d in cur.description]
        return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}

    def session_drop_rows(
        self, session_id: int, flow_id: int | None = None, after_id: int = 0, limit: int = 500
    ) -> list[dict]:
        """A session's (or flow's) drops past `after_id`, by id (dicts, detail as JSON)."""
        w = _Where()
        w.add("session_id = ?", session_id)
        w.add("id > ?", after_id)
        if flow_id is not None:
            w.add("flow_id = ?", flow_id)
        cur = self.db.execute(
            "SELECT id, ts_ns, reason, location, ifindex, flow_id, detail FROM drops"
            f"{w.sql()} ORDER BY id LIMIT ?",
            [*w.params, limit],
        )
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    # -- doctor: findings and memory ----------------------------------------------------------
    def insert_findings(self, rows: list[dict]) -> None:
        """findings rows (dicts) in one transaction."""
        if rows:
            with self.batch():
                self.db.table("findings").insert_all(rows)

    def recent_findings(self, limit: int = 200) -> list[dict]:
        """findings rows (dicts), newest run first."""
        cur = self.db.execute("SELECT * FROM findings ORDER BY run_ns DESC, id LIMIT ?", (limit,))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=False)) for r in cur.fetchall()]

    def doctor_memory(self) -> dict:
        """{key: value} doctor remembered (values decoded from JSON)."""
        return {r["key"]: json.loads(r["value"]) for r in self.db.table("doctor_memory").rows}

    def remember(self, items: dict, drop: Iterable[str] = ()) -> None:
        """Keep doctor's `items` ({key: JSON-able value}) and forget the keys in `drop`."""
        now = time.time_ns()
        with self.batch():
            for k in drop:
                self.db.table("doctor_memory").delete_where("key = ?", [k])
            if items:
                self.db.table("doctor_memory").upsert_all(
                    [
                        {"key": k, "value": json.dumps(v, sort_keys=True), "updated_ns": now}
                        for k, v in items.items()
                    ],
                    pk="key",
                )

    # -- interfaces (veth map snapshots) -------------------------------------------------------
    def insert_interfaces(self, rows: list[dict]) -> None:
        """One veth map snapshot's rows (dicts) in one transaction."""
        if rows:
            with self.batch():
                self.db.table("interfaces").insert_all(rows)

    def latest_interfaces(self) -> list[dict]:
        """The rows (dicts) of the most recent veth map snapshot, by id."""
        row = self.db.execute("SELECT max(snapshot_ns) FROM interfaces").fetchone()
        if not row or row[0] is None:
            return []
        return list(
            self.db.query("SELECT * FROM interfaces WHERE snapshot_ns = ? ORDER BY id", [row[0]])
        )


class _Where:
    """A WHERE clause built from conditions and their parameters."""

    def __init__(self) -> None:
        self.conds: list[str] = []
        self.params: list = []

    def add(self, cond: str, *params: object) -> None:
        self.conds.append(cond)
        self.params.extend(params)

    def add_in(self, column: str, values: Iterable) -> None:
        values = list(values)
        self.add(f"{column} IN ({','.join('?' * len(values))})", *values)

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.conds)) if self.conds else ""


@dataclass
class TimelineQuery:
    """What `Store.timeline()` returns: filters (epoch ns), paging and order."""

    container: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    kinds: list | None = None
    limit: int | None = 100
    offset: int = 0
    after_id: int | None = None
    newest_first: bool = False
    packets: bool = False


# a trace session stores the container's process events while `serve` (or `events -f`)
# may be recording the same ones: a session's copy is shown only where no agent row is
_NOT_A_SESSION_COPY = """NOT (e.session_id IS NOT NULL AND EXISTS (
    SELECT 1 FROM events a WHERE a.kind = e.kind AND a.ts_ns BETWEEN e.ts_ns - 5000000
    AND e.ts_ns + 5000000 AND a.pid IS e.pid AND a.session_id IS NULL))"""

# The timeline's sources, each a SELECT with the same columns: stored events (less a trace
# session's copies), and, with packets, traced connections and explained drops (negative
# ids: they are not `events` rows).
_EVENT_ROWS = (
    """
    SELECT id, ts_ns, kind, pid, ppid, comm, cgroup_id, netns, pidns, mntns,
           container_id, container_name, session_id, detail FROM events AS e
    WHERE """
    + _NOT_A_SESSION_COPY
)
_FLOW_ROWS = """
    SELECT -f.id AS id, f.first_ns AS ts_ns, 'flow' AS kind, NULL AS pid, NULL AS ppid,
           NULL AS comm, NULL AS cgroup_id, NULL AS netns, NULL AS pidns, NULL AS mntns,
           s.container_id AS container_id, s.container_name AS container_name,
           f.session_id AS session_id,
           json_object('proto', f.proto, 'src', f.orig_src, 'sport', f.orig_sport,
                       'dst', f.orig_dst, 'dport', f.orig_dport, 'nat', f.nat,
                       'to', f.reply_src, 'to_port', f.reply_sport) AS detail
    FROM flows f JOIN trace_sessions s ON s.id = f.session_id"""
_DROP_ROWS = """
    SELECT -1000000000000 - d.id AS id, d.ts_ns AS ts_ns, 'drop' AS kind, NULL AS pid,
           NULL AS ppid, NULL AS comm, NULL AS cgroup_id, NULL AS netns, NULL AS pidns,
           NULL AS mntns, s.container_id AS container_id,
           s.container_name AS container_name, d.session_id AS session_id,
           json_object('reason', d.reason, 'location', d.location, 'flow', d.flow_id)
           AS detail
    FROM drops d JOIN trace_sessions s ON s.id = d.session_id"""


# -- typed rows ------------------------------------------------------------------------
