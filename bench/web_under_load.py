"""Dashboard under load: requests/s served while a trace ingests a UDP flood, and loss.

    .venv/bin/python bench/web_under_load.py [--seconds 5] [--clients 4]

Builds the trace benchmark's topology (testbed/tracetopo.py, namespaces this script owns),
runs `pyinspect serve` (agent probes on) on loopback over the same state root as the
trace, and measures dashboard requests/s (timeline, flows, traces pages' API calls from
`--clients` threads) first idle, then while `pyinspect trace` captures a UDP flood into the
container. Prints the ratio of the two rates, the timeline events the agent's probes lost
(probe_loss rows; target 0) and whether every flood packet is accounted for by the trace
(captured, lost in the ring, or shed over its CPU budget, each counted in the kernel).
"""

import argparse
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import trace_flood  # noqa: E402
from trace_flood import PYINSPECT, SINK, UDP_PORT, tracetopo  # noqa: E402

PATHS = ["api/timeline?limit=100", "api/flows", "api/traces", "api/containers"]


def hammer(base, seconds, clients, token):
    """Requests/s over `seconds` from `clients` threads cycling through PATHS."""
    auth = {"Authorization": f"Bearer {token}"}
    counts, errors = [0] * clients, [0] * clients
    end = time.monotonic() + seconds

    def worker(i):
        k = i
        while time.monotonic() < end:
            try:
                req = urllib.request.Request(base + PATHS[k % len(PATHS)], headers=auth)
                with urllib.request.urlopen(req, timeout=30) as r:
                    r.read()
                counts[i] += 1
            except OSError:
                errors[i] += 1
            k += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0), sum(errors)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    topo = tracetopo.Topology(prefix="pwb")
    sink = server = None
    try:
        ip = topo.ctr_ips[0]
        tracetopo.sh(
            topo.host,
            f"iptables-legacy -w -t nat -A PREROUTING ! -i pt-br0 -p udp "
            f"--dport {UDP_PORT} -j DNAT --to-destination {ip}:{UDP_PORT}",
        )
        sink = subprocess.Popen(["ip", "netns", "exec", topo.ctrs[0], "python3", "-c", SINK])
        with tempfile.TemporaryDirectory(prefix="pwb-") as root:
            server = subprocess.Popen(
                [PYINSPECT, "--root", root, "serve", "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            base = tracetopo.dashboard_url(server)
            if not base:
                raise SystemExit("serve did not start")
            token = (Path(root) / "web-token").read_text().strip()  # serve's token
            idle_rps, idle_err = hammer(base, args.seconds, args.clients, token)
            trace = trace_flood.start_trace(topo, root)
            result = {}
            flood = threading.Thread(
                target=lambda: result.update(
                    zip(("sent", "pps"), trace_flood.send(topo, args.seconds + 1), strict=True)
                )
            )
            flood.start()
            busy_rps, busy_err = hammer(base, args.seconds, args.clients, token)
            flood.join()
            summary = trace_flood.stop_trace(trace)
            server.terminate()
            server.wait(timeout=60)
            db = sqlite3.connect(Path(root) / "pyinspect.db")
            probe_lost = db.execute(
                "SELECT coalesce(sum(lost), 0) FROM probe_loss WHERE session_id IS NULL"
            ).fetchone()[0]
            db.close()
        veth = summary["packets_per_point"]["vc0 (veth)"]
        shed = veth["matched_in_kernel"] - veth["captured"] - veth["lost"]
        print(f"dashboard requests/s idle      {idle_rps:8.0f}  (errors {idle_err})")
        print(f"dashboard requests/s under load {busy_rps:8.0f}  (errors {busy_err})")
        print(f"ratio under load / idle         {busy_rps / idle_rps:8.2f}")
        print(
            f"flood: {result.get('sent', 0)} UDP packets at {result.get('pps', 0):.0f}/s; "
            f"trace on the veth captured {veth['captured']}, ring-buffer lost {veth['lost']}, "
            f"shed {shed} of {veth['matched_in_kernel']} matched in the kernel"
        )
        print(f"agent probes: {probe_lost} records lost")
        accounted = veth["captured"] + veth["lost"] + shed == veth["matched_in_kernel"]
        print(
            f"timeline events lost: {probe_lost}; trace packets accounted for exactly "
            f"(captured + lost + shed == matched): {'yes' if accounted else 'NO'}"
        )
        print(
            "(shed = over the tracer's automatic CPU budget, counted in the kernel; "
            "`trace --max-rate 0` takes everything the ring can hold)"
        )
    finally:
        if server and server.poll() is None:
            server.kill()
        if sink:
            sink.kill()
            sink.wait()
        topo.close()


if __name__ == "__main__":
    main()
