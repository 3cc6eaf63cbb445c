"""What doctor keeps in the store: its findings per run, the facts it remembers between
runs (working port paths, acknowledgements), and what trace sessions saw dropped. All
through the store's findings/doctor_memory/trace methods."""

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .model import Finding

if TYPE_CHECKING:
    from ..store import Store


def open_store(root: str | Path) -> "Store":
    from ..config import database_path
    from ..store import Store

    return Store(database_path(root))


def load_memory(store: "Store") -> dict:
    return store.doctor_memory()


def save_memory(store: "Store", items: dict, drop: Iterable[str] = ()) -> None:
    store.remember(items, drop)


def save_findings(store: "Store", findings: list[Finding], run_ns: int) -> None:
    store.insert_findings(
        [
            {
                "run_ns": run_ns,
                "check_name": f.check,
                "severity": f.severity,
                "container": f.container or "",
                "summary": f.summary,
                "evidence": "\n".join(f.evidence),
                "fix": f.fix,
                "runbook": Path(f.runbook).stem,
            }  # the runbook's name (the web app links it)
            for f in findings
        ]
    )


def add_trace_evidence(store: "Store", findings: list[Finding]) -> None:
    """Append what the container's latest trace session saw dropped (drops and DROP hops)."""
    cache: dict[str, list[str]] = {}
    for f in findings:
        if not f.container or f.check == "oom_killed":
            continue
        if f.container not in cache:
            lines = []
            row = store.latest_session_of(f.container)
            if row:
                sid, started = row
                age = max(0, (time.time_ns() - (started or 0)) // 1_000_000_000)
                for reason, location, n in store.drop_reasons(sid, limit=3):
                    lines.append(
                        f"trace session {sid} ({age}s ago): {n} packet(s) dropped, "
                        f"{reason} at {location}"
                    )
                for table, chain, num, text, verdict, n in store.dropping_hops(sid, limit=3):
                    lines.append(
                        f"trace session {sid} hop: {table}:{chain}:{num or 'policy'} "
                        f"{verdict} x{n} {text or ''}".rstrip()
                    )
            cache[f.container] = lines
        f.evidence.extend(cache[f.container])
