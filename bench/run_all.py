"""Run every benchmark in bench/ one after another and print their reports (`make bench`).

Each benchmark measures pyinspect side by side with a baseline in the same run and prints
ratios; absolute numbers on a shared 2-core VM move, ratios much less. Run on a quiet
machine: other work skews them.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("container start latency vs runc (issue: runtime)", "start_latency.py", []),
    ("NAT throughput vs plain veth (issue: network)", "nat_throughput.py", []),
    ("event path: fork/exec storm with probes, SQLite ingest (issue: probes)", "event_path.py", []),
    ("veth map scale", "vethmap_scale.py", ["-n", "50"]),
    ("trace under a UDP flood vs tcpdump (issue: trace)", "trace_flood.py", []),
    (
        "complete evidence: trace -w vs tcpdump on the four capture points (issue 17)",
        "evidence.py",
        [],
    ),
    ("where trace's cost goes under iperf3: BPF programs, the trace process", "trace_cost.py", []),
    ("the trace reader's cost per analysed record, live (issue 17)", "reader_live.py", []),
    ("the analysis path's cost per record, synthetic (issue 17)", "analysis_cost.py", []),
    ("live capture: pyinspect extcap into dumpcap vs trace -w (issue 22)", "extcap_stream.py", []),
    ("IPv6 DNAT throughput vs IPv4 DNAT (issue 23)", "ipv6_nat.py", []),
    ("DNS lookups: embedded DNS vs the upstream directly (issue 23)", "dns_latency.py", []),
    ("capture program ns/packet: IPv4-only vs current (issue 23)", "capture_cost.py", []),
    (
        "rule sync per change: python-iptables vs the restore tools (issue 23)",
        "iptables_writer.py",
        [],
    ),
    ("pcapng export vs mergecap (issue: pcapng)", "pcap_export.py", []),
    ("dashboard pages + API with 100 containers and 1M events (issue 21)", "web_latency.py", []),
    ("dashboard requests/s while a trace ingests a flood (issue: web)", "web_under_load.py", []),
    ("dashboard: 50 SSE clients while a flood is traced (issue 21)", "sse_flood.py", []),
    ("pyinspect build: 20 steps cold, fully cached, and by hand (issue 18)", "build_cache.py", []),
    (
        "registry pull/push vs skopeo against a local docker-registry (issue 19)",
        "registry_pull.py",
        [],
    ),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help="run only these (file names, e.g. evidence.py)")
    a = ap.parse_args()
    unknown = set(a.only) - {script for _t, script, _a in BENCHES}
    if unknown:
        ap.error(f"no such benchmark: {', '.join(sorted(unknown))}")
    failed = []
    for title, script, args in BENCHES:
        if a.only and script not in a.only:
            continue
        print(f"\n===== {title}: bench/{script} {' '.join(args)}", flush=True)
        t = time.monotonic()
        rc = subprocess.call([sys.executable, str(HERE / script), *args])
        print(f"----- {script}: exit {rc}, {time.monotonic() - t:.0f}s", flush=True)
        if rc:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
