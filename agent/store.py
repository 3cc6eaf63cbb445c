"""The SQLite store (sqlite-utils, WAL): schema, versioned migrations, queries.

Open it with `Store(path)`; every migration runs once, in order, and the
version reached is kept in the `schema_version` table. Later features add
tables by appending to MIGRATIONS, never by editing an applied step.
"""

import json
import time
from pathlib import Path

import sqlite_utils

from .errors import CorruptInputError, UnavailableError


def _m1_base(db):
    db["containers"].create(
        {"id": str, "name": str, "image": str, "created_ns": int, "removed_ns": int,
         "detail": str},
        pk="id", if_not_exists=True)
    db["events"].create(
        {"id": int, "ts_ns": int, "kind": str, "pid": int, "ppid": int, "comm": str,
         "cgroup_id": int, "netns": int, "pidns": int, "mntns": int,
         "container_id": str, "container_name": str, "session_id": int, "detail": str},
        pk="id", if_not_exists=True)
    db["events"].create_index(["ts_ns"], if_not_exists=True)
    db["events"].create_index(["container_id", "ts_ns"], if_not_exists=True)
    db["events"].create_index(["kind", "ts_ns"], if_not_exists=True)
    db["probe_loss"].create(
        {"id": int, "ts_ns": int, "probe": str, "lost": int, "session_id": int},
        pk="id", if_not_exists=True)


def _m2_network_and_traces(db):
    db["interfaces"].create(
        {"id": int, "snapshot_ns": int, "netns": int, "netns_name": str, "ifindex": int,
         "ifname": str, "kind": str, "iflink": int, "peer_ifname": str, "peer_netns": int,
         "mac": str, "addrs": str, "master": str, "state": str, "container_id": str,
         "container_name": str},
        pk="id", if_not_exists=True)
    db["interfaces"].create_index(["snapshot_ns"], if_not_exists=True)
    db["trace_sessions"].create(
        {"id": int, "container_id": str, "container_name": str, "started_ns": int,
         "stopped_ns": int, "filter": str, "snaplen": int, "status": str, "pcap_path": str,
         "summary": str},
        pk="id", if_not_exists=True)
    db["capture_points"].create(
        {"id": int, "session_id": int, "name": str, "description": str, "ifindex": int,
         "netns": int, "linktype": int},
        pk="id", if_not_exists=True)
    db["packets"].create(
        {"id": int, "session_id": int, "ts_ns": int, "point_id": int, "direction": str,
         "len": int, "caplen": int, "data": bytes, "flow_id": int, "comment": str},
        pk="id", if_not_exists=True)
    db["packets"].create_index(["session_id", "ts_ns"], if_not_exists=True)
    db["packets"].create_index(["flow_id"], if_not_exists=True)
    db["flows"].create(
        {"id": int, "session_id": int, "ct_id": int, "proto": str,
         "orig_src": str, "orig_sport": int, "orig_dst": str, "orig_dport": int,
         "reply_src": str, "reply_sport": int, "reply_dst": str, "reply_dport": int,
         "nat": str, "first_ns": int, "last_ns": int, "detail": str},
        pk="id", if_not_exists=True)
    db["flows"].create_index(["session_id"], if_not_exists=True)
    db["hops"].create(
        {"id": int, "session_id": int, "flow_id": int, "packet_id": int, "ts_ns": int,
         "table_name": str, "chain": str, "rule_num": int, "rule_text": str,
         "verdict": str, "detail": str},
        pk="id", if_not_exists=True)
    db["hops"].create_index(["session_id", "ts_ns"], if_not_exists=True)
    db["drops"].create(
        {"id": int, "session_id": int, "ts_ns": int, "reason": str, "location": str,
         "ifindex": int, "flow_id": int, "detail": str},
        pk="id", if_not_exists=True)


def _m3_findings(db):
    db["findings"].create(
        {"id": int, "run_ns": int, "check_name": str, "severity": str, "container": str,
         "summary": str, "evidence": str, "fix": str, "runbook": str},
        pk="id", if_not_exists=True)
    db["findings"].create_index(["run_ns"], if_not_exists=True)


def _m4_probe_loss_lag(db):
    for column in ("lag_ns", "detail"):
        if column not in db["probe_loss"].columns_dict:
            db["probe_loss"].add_column(column, int if column == "lag_ns" else str)


def _m5_doctor_memory(db):
    db["doctor_memory"].create({"key": str, "value": str, "updated_ns": int},
                               pk="key", if_not_exists=True)


# Append only: a new step gets the next version. Never edit an applied step.
MIGRATIONS = [
    ("base: containers, events, probe_loss", _m1_base),
    ("interfaces, trace sessions, capture points, packets, flows, hops, drops",
     _m2_network_and_traces),
    ("doctor findings", _m3_findings),
    ("probe_loss: reader lag and detail", _m4_probe_loss_lag),
    ("doctor memory: remembered port mappings and acknowledged counters", _m5_doctor_memory),
]


class Store:
    """The pyinspect database. Cheap to open; safe for one writer and many readers."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UnavailableError(f"cannot create the state directory {self.path.parent}: "
                                   f"{exc.strerror}", "use another --root") from None
        try:
            self.db = sqlite_utils.Database(str(self.path))
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.execute("PRAGMA synchronous=NORMAL")
        except Exception as exc:  # sqlite3.DatabaseError: not a database
            raise CorruptInputError(f"cannot open store {self.path}: {exc}",
                                    "move the file away or use another --root") from exc
        self._migrate()

    def _migrate(self):
        self.db["schema_version"].create(
            {"version": int, "description": str, "applied_ns": int},
            pk="version", if_not_exists=True)
        done = {row["version"] for row in self.db["schema_version"].rows}
        for version, (description, step) in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            with self.db.conn:
                step(self.db)
                self.db["schema_version"].insert(
                    {"version": version, "description": description,
                     "applied_ns": time.time_ns()})

    @property
    def version(self):
        row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- events -----------------------------------------------------------------
    def insert_events(self, events):
        """Write a batch of event dicts in one transaction (`detail` may be a dict)."""
        rows = []
        for ev in events:
            row = dict(ev)
            if isinstance(row.get("detail"), (dict, list)):
                row["detail"] = json.dumps(row["detail"], sort_keys=True)
            rows.append(row)
        if rows:
            with self.db.conn:
                self.db["events"].insert_all(rows, alter=True)
        return len(rows)
