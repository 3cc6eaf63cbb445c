"""The event path: what the process/cgroup probes cost, and how fast events reach SQLite.

1. Fork+exec storm: a shell runs `/bin/true` N times (one fork, exec and exit each).
   Its rate is measured with no probes, then with the agent's event path running in
   another process (ProcessProbe + CgroupProbe -> attribution -> batched SQLite
   inserts, i.e. what `pyinspect events --follow`/`serve` run), alternating runs.
   Reported: median execs/s of each and the ratio (target >= 0.9), and for the probed
   runs that every fork/exec/exit of the storm reached the store with 0 lost.
2. Ingest: P storms in parallel, so the consumer is pushed harder; reported: events/s
   that reached SQLite (storm events stored / storm wall time) with the kernel's lost
   counter, and the largest P that kept lost == 0.
3. Thread storms (Python threads created and joined in a loop, thread events turned
   on): a faster generator, to find the rate where the path starts to lose (lost > 0
   or fewer stored than generated).
4. Store only: Recorder.add() of synthetic records into SQLite (no kernel), events/s.

    sudo .venv/bin/python bench/event_path.py [-n 3000] [--repeat 3] [--json]
"""

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONSUMER = r"""
import signal, sys
from pyinspect.host.events import Follower
from pyinspect.store import Store
root = sys.argv[1]
filters = __import__("json").loads(sys.argv[2])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
store = Store(root + "/pyinspect.db")
with Follower(root, store, filters=filters) as f:
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print("ready", ru.ru_utime + ru.ru_stime, flush=True)
    while not stop:
        f.poll(100)
    f.poll(0)
    lost = {p.NAME: p.lost for p in f.probes}
    lag = {p.NAME: getattr(p, "max_lag_ns", 0) for p in f.probes}
ru = resource.getrusage(resource.RUSAGE_SELF)
print(__import__("json").dumps({"lost": lost, "lag_ns": lag,
                                "cpu_s": ru.ru_utime + ru.ru_stime}), flush=True)
"""


def _children_cpu():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def storm(n, tag):
    """Run n fork+exec of /bin/true from one shell; (shell pid, wall s, CPU s of the storm)."""
    script = f"i=0; while [ $i -lt {n} ]; do /bin/true {tag}; i=$((i+1)); done"
    c0 = _children_cpu()
    t0 = time.perf_counter()
    p = subprocess.Popen(["sh", "-c", script])
    p.wait()
    return p.pid, time.perf_counter() - t0, _children_cpu() - c0


def parallel_storms(n, parallel, tag):
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true {tag}; i=$((i+1)); done"]
        )
        for _ in range(parallel)
    ]
    for p in procs:
        p.wait()
    return [p.pid for p in procs], time.perf_counter() - t0


class Consumer:
    """The agent's event path in its own process, recording into a temp state root."""

    def __init__(self, root, filters=None):
        self.root = root
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONSUMER, str(root), json.dumps(filters or {})],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            raise SystemExit("event_path: the consumer did not start")
        self.cpu_at_ready = float(line[1])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        res = json.loads(out.strip().splitlines()[-1])
        res["cpu_s"] -= self.cpu_at_ready  # the event path only, not compiling the probes
        return res


def count_storm_events(root, shell_pids):
    from pyinspect.store import Store

    with Store(Path(root) / "pyinspect.db") as store:
        marks = ",".join("?" * len(shell_pids))
        rows = store.db.execute(
            f"SELECT kind, count(*) FROM events WHERE ppid IN ({marks}) "
            "AND kind IN ('fork','exec','exit') GROUP BY kind",
            list(shell_pids),
        ).fetchall()
    return dict(rows)


def bench_storm(n, repeat, tmp):
    base, probed, checks, base_cpu, probed_cpu = [], [], [], [], []
    storm(200, "warmup")
    for i in range(repeat):
        _, dt, cpu = storm(n, "base")
        base.append(n / dt)
        base_cpu.append(cpu / n)
        root = Path(tmp) / f"storm{i}"
        root.mkdir()
        c = Consumer(root)
        pid, dt, cpu = storm(n, "probed")
        probed.append(n / dt)
        probed_cpu.append(cpu / n)
        # the storm is over: stop the consumer once it has drained (it flushes on stop)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = count_storm_events(root, [pid])
            if got.get("exit", 0) >= n:
                break
            time.sleep(0.2)
        res = c.stop()
        got = count_storm_events(root, [pid])
        checks.append(
            {
                "stored": got,
                "expected_each": n,
                "lost": res["lost"],
                "consumer_cpu_s": res["cpu_s"],
                "max_lag_ms": {k: v / 1e6 for k, v in res["lag_ns"].items()},
            }
        )
    return {
        "n": n,
        "repeat": repeat,
        "baseline_execs_per_s": statistics.median(base),
        "probed_execs_per_s": statistics.median(probed),
        "ratio": statistics.median(probed) / statistics.median(base),
        "baseline_cpu_us_per_exec": statistics.median(base_cpu) * 1e6,
        "probed_cpu_us_per_exec": statistics.median(probed_cpu) * 1e6,
        "cpu_ratio": statistics.median(base_cpu) / statistics.median(probed_cpu),
        "runs": checks,
        "consumer_cpu_us_per_exec": statistics.median(c["consumer_cpu_s"] for c in checks)
        / n
        * 1e6,
        "zero_loss": all(
            c["lost"]["process"] == 0
            and all(c["stored"].get(k, 0) == n for k in ("fork", "exec", "exit"))
            for c in checks
        ),
    }


def bench_ingest(n, tmp, max_parallel=4):
    out = []
    for parallel in range(1, max_parallel + 1):
        root = Path(tmp) / f"ingest{parallel}"
        root.mkdir()
        c = Consumer(root)
        pids, dt = parallel_storms(n, parallel, "ingest")
        deadline = time.monotonic() + 120
        expected = 3 * n * parallel
        while time.monotonic() < deadline:
            if sum(count_storm_events(root, pids).values()) >= expected:
                break
            time.sleep(0.2)
        res = c.stop()
        stored = sum(count_storm_events(root, pids).values())
        out.append(
            {
                "parallel": parallel,
                "storm_s": dt,
                "expected": expected,
                "stored": stored,
                "lost": res["lost"]["process"],
                "generated_events_per_s": expected / dt,
                "stored_events_per_s": stored / dt,
                "max_lag_ms": res["lag_ns"]["process"] / 1e6,
            }
        )
    zero = [r for r in out if r["lost"] == 0 and r["stored"] == r["expected"]]
    best = max(zero, key=lambda r: r["stored_events_per_s"]) if zero else None
    return {"runs": out, "max_events_per_s_zero_loss": best and best["stored_events_per_s"]}


THREAD_STORM = (
    "import threading\nfor _ in range({n}):\n    t = threading.Thread(target=int)\n"
    "    t.start()\n    t.join()\n"
)


def count_thread_events(root, pids):
    from pyinspect.store import Store

    with Store(Path(root) / "pyinspect.db") as store:
        marks = ",".join("?" * len(pids))
        rows = store.db.execute(
            f"SELECT kind, count(*) FROM events WHERE pid IN ({marks}) "
            "AND kind IN ('fork','exit') GROUP BY kind",
            list(pids),
        ).fetchall()
    return dict(rows)


def bench_threads(tmp, n=20000, max_parallel=3):
    """Thread storms (create+join, 2 events each) with thread events on: a faster
    generator than fork+exec, to find where the event path starts to lose."""
    out = []
    for parallel in range(1, max_parallel + 1):
        root = Path(tmp) / f"threads{parallel}"
        root.mkdir()
        c = Consumer(root, {"process": {"threads": True}})
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-c", THREAD_STORM.format(n=n)])
            for _ in range(parallel)
        ]
        for p in procs:
            p.wait()
        dt = time.perf_counter() - t0
        pids = [p.pid for p in procs]
        expected = (2 * n + 2) * parallel  # each thread: fork + exit; the process: the same
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if sum(count_thread_events(root, pids).values()) >= expected:
                break
            time.sleep(0.2)
        res = c.stop()
        stored = sum(count_thread_events(root, pids).values())
        out.append(
            {
                "parallel": parallel,
                "expected": expected,
                "stored": stored,
                "lost": res["lost"]["process"],
                "storm_s": dt,
                "generated_events_per_s": expected / dt,
                "stored_events_per_s": stored / dt,
                "consumer_cpu_s": res["cpu_s"],
                "max_lag_ms": res["lag_ns"]["process"] / 1e6,
            }
        )
    zero = [r for r in out if r["lost"] == 0 and r["stored"] == r["expected"]]
    best = max(zero, key=lambda r: r["stored_events_per_s"]) if zero else None
    return {"runs": out, "max_events_per_s_zero_loss": best and best["stored_events_per_s"]}


def bench_store(tmp, count=50000):
    from pyinspect.host.events import Recorder
    from pyinspect.store import Store

    store = Store(Path(tmp) / "store.db")
    rec = Recorder(store, resolver=None)
    ev = {
        "ts_ns": 0,
        "kind": "exec",
        "pid": 1,
        "ppid": 1,
        "comm": "true",
        "cgroup_id": 1,
        "netns": 1,
        "pidns": 1,
        "mntns": 1,
        "container_id": None,
        "container_name": None,
        "detail": {"filename": "/bin/true", "argv": ["/bin/true", "x"]},
    }
    t0 = time.perf_counter()
    for i in range(count):
        e = dict(ev)
        e["ts_ns"] = i
        rec.add(e)
    rec.flush()
    dt = time.perf_counter() - t0
    store.close()
    return {"events": count, "events_per_s": count / dt}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000, help="execs per storm")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=20000, help="threads per thread storm")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("event_path: needs root (eBPF)")
    with tempfile.TemporaryDirectory(prefix="pa-bench-") as tmp:
        result = {
            "storm": bench_storm(args.n, args.repeat, tmp),
            "ingest": bench_ingest(args.n, tmp, args.max_parallel),
            "threads": bench_threads(tmp, args.threads, args.max_parallel),
            "store_only": bench_store(tmp),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    s, g, st = result["storm"], result["ingest"], result["store_only"]
    print(f"fork+exec storm, {s['n']} execs x {s['repeat']}:")
    print(f"  no probes   {s['baseline_execs_per_s']:8.0f} execs/s")
    print(
        f"  with probes {s['probed_execs_per_s']:8.0f} execs/s   ratio {s['ratio']:.3f} "
        f"(target >= 0.9)"
    )
    print(
        f"  storm CPU per exec: {s['baseline_cpu_us_per_exec']:.0f} us without, "
        f"{s['probed_cpu_us_per_exec']:.0f} us with probes (ratio {s['cpu_ratio']:.3f}; "
        "less sensitive to other load than wall time)"
    )
    print(
        f"  consumer (probes + attribution + SQLite) CPU per exec: "
        f"{s['consumer_cpu_us_per_exec']:.0f} us (3 events; after start-up)"
    )
    print(f"  every fork/exec/exit stored, 0 lost: {s['zero_loss']}")
    print("ingest (parallel storms -> probes -> SQLite):")
    for r in g["runs"]:
        print(
            f"  x{r['parallel']}: {r['stored']}/{r['expected']} stored, lost {r['lost']}, "
            f"{r['stored_events_per_s']:.0f} events/s, max reader lag {r['max_lag_ms']:.0f} ms"
        )
    best = g["max_events_per_s_zero_loss"]
    print(f"  max events/s with zero loss: {best:.0f}" if best else "  loss at every rate")
    print("thread storms (thread events on: fork + exit per thread):")
    for r in result["threads"]["runs"]:
        print(
            f"  x{r['parallel']}: {r['stored']}/{r['expected']} stored, lost {r['lost']}, "
            f"generated {r['generated_events_per_s']:.0f}/s, consumer CPU "
            f"{r['consumer_cpu_s']:.1f} s, max reader lag {r['max_lag_ms']:.0f} ms"
        )
    best = result["threads"]["max_events_per_s_zero_loss"]
    print(f"  max events/s with zero loss: {best:.0f}" if best else "  loss at every rate")
    print(f"store only (Recorder batches): {st['events_per_s']:.0f} events/s")


if __name__ == "__main__":
    main()
