"""Dashboard benchmark: timeline API p95 latency with 1M events stored (target < 100 ms).

Fills a fresh store with N synthetic-but-realistic events (many containers, kinds and
pids, spread over a day), serves the real app with waitress, and times the timeline
queries the pages make: newest page, a container's page, a kind filter, a deep page
and a live-tail poll. Prints p50/p95 per query and the ratio of p95 to the target.

    .venv/bin/python bench/web_latency.py [--events 1000000] [--requests 200]
"""

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

KINDS = ["exec", "fork", "exit", "setns", "cgroup_attach_task", "link_up", "clone"]


def fill(store, n, containers=50, batch=50_000):
    now = time.time_ns()
    rng = random.Random(1)
    start = now - 86400 * 10**9
    step = 86400 * 10**9 // n
    db = store.db
    cols = (
        "ts_ns",
        "kind",
        "pid",
        "ppid",
        "comm",
        "cgroup_id",
        "netns",
        "pidns",
        "mntns",
        "container_id",
        "container_name",
        "detail",
    )
    sql = f"INSERT INTO events ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
    for base in range(0, n, batch):
        rows = []
        for i in range(base, min(n, base + batch)):
            c = rng.randrange(containers + 1)
            cid = f"{c:064x}" if c else None
            rows.append(
                (
                    start + i * step,
                    rng.choice(KINDS),
                    rng.randrange(2, 60000),
                    1,
                    "sh",
                    c,
                    4026530000 + c,
                    4026540000 + c,
                    4026550000 + c,
                    cid,
                    f"c{c}" if c else None,
                    json.dumps({"argv": ["sh", "-c", "true"]}),
                )
            )
        with db.conn:
            db.conn.executemany(sql, rows)


def timed(url, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()

    import waitress

    from pyinspect.config import database_path
    from pyinspect.store import Store
    from pyinspect.web.app import create_app

    root = Path(tempfile.mkdtemp(prefix="pyinspect-bench-web-"))
    t = time.perf_counter()
    with Store(database_path(root)) as s:
        fill(s, args.events)
    print(f"stored {args.events} events in {time.perf_counter() - t:.1f}s")
    app = create_app(root)
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{server.effective_port}/api/timeline"
    last = app.extensions["pyinspect"].last_event_id()
    queries = {
        "newest 100": base,
        "container c7": base + "?container=c7",
        "kind exec": base + "?kind=exec",
        "container + kind": base + "?container=c7&kind=exec",
        "page 50 (offset 5000)": base + "?offset=5000",
        "live tail (after_id)": base + f"?after_id={last - 10}",
    }
    worst = 0.0
    print(f"{'query':28} {'p50 ms':>8} {'p95 ms':>8} {'p95/100ms':>10}")
    for label, url in queries.items():
        timed(url, 3)
        ms = timed(url, args.requests)
        p95 = statistics.quantiles(ms, n=20)[18]
        worst = max(worst, p95)
        print(f"{label:28} {statistics.median(ms):8.1f} {p95:8.1f} {p95 / 100:10.2f}")
    print(f"worst p95 {worst:.1f} ms: {'meets' if worst < 100 else 'misses'} the < 100 ms target")
    server.close()


if __name__ == "__main__":
    main()
