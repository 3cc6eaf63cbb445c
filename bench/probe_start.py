"""How long the probes a trace starts take to start, and a whole `pyinspect trace` to ready.

    sudo .venv/bin/python bench/probe_start.py [-n 5] [--no-trace] [--json] [--pythonpath DIR]

--pythonpath runs everything against another tree laid out as the package (DIR/pyinspect,
e.g. an older commit's probes), for before/after numbers on the same machine and day.

Each probe is started alone in a fresh child process (so nothing is cached in the
interpreter but what an installed system keeps on disk: the compiled-object cache), n
times; printed: the median wall time of start() and, inside it, the time spent building the
program (bcc: compile + load in BPF(); libbpf: open + load of the cached object) and in
attaching tracepoints. Then `pyinspect trace --container X --json --duration 1` on a
testbed/tracetopo.py topology, from spawn to its ready line, n times (median).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHILD = r"""
import json, sys, time
from pyinspect.probes import packets
phase = {"build": 0.0, "attach": 0.0}
def wrap(obj, name, key):
    fn = getattr(obj, name)
    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            phase[key] += time.perf_counter() - t
    setattr(obj, name, timed)
try:
    import bcc
    wrap(bcc.BPF, "__init__", "build")
    wrap(bcc.BPF, "attach_tracepoint", "attach")
except ImportError:
    pass
try:
    from pyinspect.probes import bpfobj
    wrap(bpfobj.BpfObject, "open", "build")
    wrap(bpfobj.BpfObject, "load", "build")
    if hasattr(bpfobj.BpfObject, "attach_tracepoint"):
        wrap(bpfobj.BpfObject, "attach_tracepoint", "attach")
except ImportError:
    pass
which = sys.argv[1]
t0 = time.perf_counter()
if which == "process":
    from pyinspect.probes.process import ProcessProbe
    tps = {k: v for k, v in ProcessProbe.TRACEPOINTS.items() if not k.startswith("syscalls:")}
    p = ProcessProbe(tracepoints=tps).start({"namespaces": [1]})
elif which == "process-all":
    from pyinspect.probes.process import ProcessProbe
    p = ProcessProbe().start()
elif which == "cgroup":
    from pyinspect.probes.cgroups import CgroupProbe
    p = CgroupProbe().start()
elif which == "drops":
    from pyinspect.probes import drops
    p = drops.DropWatch(packets.Target(addrs=["172.30.1.10"], ports=[("", 8088, "tcp")]),
                        {1}).start()
total = time.perf_counter() - t0
p.stop()
print(json.dumps({"total": total, **phase}))
"""

PROBES = ("process", "cgroup", "drops", "process-all")
ENV = dict(os.environ)


def probe_times(which, n):
    rows = []
    for _ in range(n):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, which],
            capture_output=True,
            env=ENV,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"{which}: {out.stderr.strip()[-500:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def trace_times(n):
    sys.path.insert(0, str(REPO))  # the checkout: testbed/ (shared with the tests)
    import tempfile

    from testbed import tracetopo

    exe = [
        sys.executable,
        "-c",
        "import sys; from pyinspect.cli import main; sys.argv[0] = 'pyinspect'; sys.exit(main())",
    ]
    out = []
    with tracetopo.Topology(prefix="ps") as topo, tempfile.TemporaryDirectory() as root:
        for _ in range(n):
            argv = [
                "nsenter",
                f"--net=/run/netns/{topo.host}",
                *exe,
                "--root",
                root,
                "trace",
                "--container",
                topo.ctrs[0],
                "--json",
                "--duration",
                "1",
            ]
            t0 = time.perf_counter()
            p = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
            )
            line = p.stdout.readline()
            ready = time.perf_counter() - t0
            _rest, err = p.communicate(timeout=60)
            total = time.perf_counter() - t0
            if not line or json.loads(line).get("type") != "ready":
                raise SystemExit(f"trace did not get ready: {line} {err[-500:]}")
            out.append({"ready": ready, "total": total, "notes": json.loads(line).get("notes")})
    return {
        "ready": statistics.median(r["ready"] for r in out),
        "ready_all": [round(r["ready"], 2) for r in out],
        "total": statistics.median(r["total"] for r in out),
        "notes": out[-1]["notes"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--no-trace", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--probes", default=",".join(PROBES))
    ap.add_argument("--pythonpath")
    a = ap.parse_args()
    if a.pythonpath:
        ENV["PYTHONPATH"] = a.pythonpath
    res = {"probes": {w: probe_times(w, a.n) for w in a.probes.split(",") if w}}
    if not a.no_trace:
        res["trace"] = trace_times(a.n)
    if a.json:
        print(json.dumps(res))
        return
    for w, r in res["probes"].items():
        print(
            f"{w:12s} start {r['total']:.3f} s  (build {r['build']:.3f} s, "
            f"attach {r['attach']:.3f} s)"
        )
    if "trace" in res:
        t = res["trace"]
        print(
            f"trace to ready: median {t['ready']:.2f} s {t['ready_all']}; "
            f"1 s trace wall {t['total']:.2f} s; notes {t['notes']}"
        )


if __name__ == "__main__":
    main()
