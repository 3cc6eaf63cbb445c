"""What doctor keeps in the store: its findings per run, the facts it remembers between
runs (working port paths, acknowledgements), and what trace sessions saw dropped."""

import json
import time
from pathlib import Path

from .model import Finding


def open_store(root):
    from ..config import database_path
    from ..store import Store
    return Store(database_path(root))


def load_memory(store):
    return {r["key"]: json.loads(r["value"]) for r in store.db["doctor_memory"].rows}


def save_memory(store, items, drop=()):
    now = time.time_ns()
    with store.db.conn:
        for k in drop:
            store.db["doctor_memory"].delete_where("key = ?", [k])
        if items:
            store.db["doctor_memory"].upsert_all(
                [{"key": k, "value": json.dumps(v, sort_keys=True), "updated_ns": now}
                 for k, v in items.items()], pk="key")


def save_findings(store, findings, run_ns):
    rows = [{"run_ns": run_ns, "check_name": f.check, "severity": f.severity,
             "container": f.container or "", "summary": f.summary,
             "evidence": "\n".join(f.evidence), "fix": f.fix,
             "runbook": Path(f.runbook).stem}  # the name: docs/runbooks/<name>.md (web links it)
            for f in findings]
    if rows:
        with store.db.conn:
            store.db["findings"].insert_all(rows)


def add_trace_evidence(store, findings: list[Finding]) -> None:
    """Append what the container's latest trace session saw dropped (drops and DROP hops)."""
    db = store.db
    cache = {}
    for f in findings:
        if not f.container or f.check == "oom_killed":
            continue
        if f.container not in cache:
            lines = []
            row = db.execute("SELECT id, started_ns FROM trace_sessions WHERE container_name = ? "
                             "ORDER BY id DESC LIMIT 1", [f.container]).fetchone()
            if row:
                sid, started = row
                age = max(0, (time.time_ns() - (started or 0)) // 1_000_000_000)
                for reason, location, n in db.execute(
                        "SELECT reason, location, count(*) FROM drops WHERE session_id = ? "
                        "GROUP BY reason, location ORDER BY count(*) DESC LIMIT 3", [sid]):
                    lines.append(f"trace session {sid} ({age}s ago): {n} packet(s) dropped, "
                                 f"{reason} at {location}")
                for table, chain, num, text, verdict, n in db.execute(
                        "SELECT table_name, chain, rule_num, rule_text, verdict, count(*) FROM hops "
                        "WHERE session_id = ? AND verdict IN ('DROP', 'REJECT') "
                        "GROUP BY table_name, chain, rule_num ORDER BY count(*) DESC LIMIT 3",
                        [sid]):
                    lines.append(f"trace session {sid} hop: {table}:{chain}:{num or 'policy'} "
                                 f"{verdict} x{n} {text or ''}".rstrip())
            cache[f.container] = lines
        f.evidence.extend(cache[f.container])


def latest_findings(root):
    """Findings of the most recent doctor run (for the dashboard)."""
    with open_store(root) as store:
        row = store.db.execute("SELECT max(run_ns) FROM findings").fetchone()
        if not row or row[0] is None:
            return []
        return list(store.db["findings"].rows_where("run_ns = ?", [row[0]], order_by="id"))



