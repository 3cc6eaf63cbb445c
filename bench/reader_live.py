"""The trace reader's cost per analysed record, live: short connections through DNAT.

    .venv/bin/python bench/reader_live.py [--conns 200] [--rounds 5] [--pace 0.02] [--json]

Topology: testbed/tracetopo.py (client -> host netns with DNAT 8088 -> bridge -> veth ->
container eth0 running busybox httpd). Each round starts `pyinspect trace --max-rate 0`
(every record analysed: no budget; text lines, as by default, or with `--json` its JSON
lines) in the host namespace, fetches the page `--conns` times from the client (busybox
wget, one connection each), stops the trace and prints from its summary (in the store):
records analysed, the reader's learned cost per record
(`reader_cost.per_record_us`: what a record adds to a poll, an average moving 20% a
poll from 10 us, so the load is spread over many polls: --pace) and the reader thread's
whole CPU over records (`reader_us_per_record`, polls' own cost included). The trace's
lines are read as they come (an unread pipe would stop its poll loop). The synthetic
counterpart (no kernel, thread CPU of the analysis alone) is bench/analysis_cost.py.
Set PYTHONPATH to trace with another checkout (e.g. a directory holding a `pyinspect`
symlink to an older agent/) for a before/after on the same machine.
"""

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout: testbed/ (shared with the tests)
from pyinspect.store import Store  # noqa: E402

from testbed import tracetopo  # noqa: E402


def one_round(topo, conns, pace, as_json):
    root = tempfile.mkdtemp(prefix="pi-reader-")
    argv = [
        "nsenter",
        f"--net=/run/netns/{topo.host}",
        sys.executable,  # not the console script: it ignores PYTHONPATH
        "-m",
        "pyinspect",
        "--root",
        root,
        "trace",
        "--container",
        topo.ctrs[0],
        *(["--json"] if as_json else []),
        "--max-rate",
        "0",
    ]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert p.stdout is not None
        if not p.stdout.readline():
            raise SystemExit(f"trace did not start: {p.stderr.read() if p.stderr else ''}")
        # its lines are read as they come: a full pipe would stop the trace's poll loop
        # in its write, and the whole load would be analysed in one poll at the end
        drain = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
        drain.start()
        url = f"http://{topo.host_ip}:{topo.dnat_port}/"
        tracetopo.sh(
            topo.client,
            f"for i in $(seq {conns}); do busybox wget -q -O /dev/null {url} || exit 1;"
            f" sleep {pace}; done",
            timeout=30 + conns * (1 + pace),
        )
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
        drain.join(timeout=30)
        err = p.stderr.read() if p.stderr else ""
        with Store(Path(root) / "pyinspect.db") as store:
            rows = store.session_list()
        if not lines or not rows or not rows[0]["summary"]:
            raise SystemExit(f"trace gave no summary: {err[-2000:]}")
        return json.loads(rows[0]["summary"])
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--pace",
        type=float,
        default=0.02,
        help="seconds between fetches (0.02: ~40 polls of ~240 records for 200 "
        "connections, so the learned cost is measured, not its 10 us starting value)",
    )
    ap.add_argument("--json", action="store_true", help="the trace's JSON lines (--json)")
    a = ap.parse_args(argv)
    topo = tracetopo.Topology(prefix="prl")
    learned, thread = [], []
    try:
        for r in range(a.rounds):
            s = one_round(topo, a.conns, a.pace, a.json)
            learned.append(s["reader_cost"]["per_record_us"])
            thread.append(s["reader_us_per_record"])
            analysed = sum(v.get("analysed", 0) for v in s["packets_per_point"].values())
            print(
                f"round {r + 1}: {analysed:>6} records analysed  learned "
                f"{s['reader_cost']['per_record_us']:5.1f} us/record  reader thread "
                f"{s['reader_us_per_record']:5.1f} us/record  (poll "
                f"{s['reader_cost']['per_poll_ms']} ms, shed {s['loss']['shed']})",
                flush=True,
            )
    finally:
        topo.close()
    print(
        f"median of {len(learned)} rounds: learned {statistics.median(learned):.1f} us/record,"
        f" reader thread {statistics.median(thread):.1f} us/record"
        " (the issue's goal: < 7.9 learned, 10x below the ~79 of the tracer before)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
