"""portmap.sync() per change on each writer: iptables-nft-restore (nft), python-iptables
(legacy) and iptables-legacy-restore (legacy when python-iptables cannot load).

In a network namespace of its own (with a network's base rules in place), each writer
runs in a child process that adds and removes one container's published port, one sync
per change, `-n` times, and reports the median and p90 per change; the first sync of a
process is reported apart (python-iptables' import and libxtables load). Ratios are to
the nft restore path, measured in the same run.

    python bench/iptables_writer.py [-n 100]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
from pyinspect.runtime import iptables, portmap
backend, n = sys.argv[1], int(sys.argv[2])
base = portmap.base_rules("pibench0", "10.91.0.0/24")
t0 = time.perf_counter()
portmap.sync("pibench0", base, backend)
first = time.perf_counter() - t0
port = [{"host_ip": "0.0.0.0", "host_port": 8080, "container_port": 80, "proto": "tcp"}]
with_port = base + portmap.container_rules("pibench0", "b" * 64, "10.91.0.2", port)
times = []
for i in range(n):
    t0 = time.perf_counter()
    portmap.sync("pibench0", with_port if i % 2 == 0 else base, backend)
    times.append(time.perf_counter() - t0)
portmap.sync("pibench0", [], backend)
print(json.dumps({"writer": iptables.writer(backend), "first": first, "times": times}))
"""


def _run(ns: str, backend: str, n: int, env: dict[str, str]) -> dict:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CHILD, backend, str(n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{backend}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="changes per writer (default 100)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ns = f"pi-bench-ipt{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        env = dict(os.environ)
        env.pop("PYINSPECT_IPTABLES", None)
        # python-iptables' own switch: look for a libxtables.so.99 that does not exist
        broken = dict(env, PYTHON_IPTABLES_XTABLES_VERSION="99")
        runs = [
            ("nft", _run(ns, "nft", args.n, env)),
            ("legacy", _run(ns, "legacy", args.n, env)),
            ("legacy", _run(ns, "legacy", args.n, broken)),
        ]
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    ref = statistics.median(runs[0][1]["times"])
    print(f"sync per change (add or remove one published port, 4 rules), {args.n} changes each")
    print(f"{'backend':<8} {'writer':<24} {'median':>9} {'p90':>9} {'first':>9} {'x nft':>6}")
    for backend, r in runs:
        t = sorted(r["times"])
        med = statistics.median(t)
        p90 = t[int(len(t) * 0.9) - 1]
        print(
            f"{backend:<8} {r['writer']:<24} {med * 1e3:7.1f}ms {p90 * 1e3:7.1f}ms "
            f"{r['first'] * 1e3:7.1f}ms {med / ref:6.2f}"
        )
    print("(first = a process's first sync, with the base rules: python-iptables' import)")


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
    print(f"({time.monotonic() - t0:.1f}s)")
