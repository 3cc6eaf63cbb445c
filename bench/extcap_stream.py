"""Live capture into dumpcap (issue 22): `pyinspect extcap` against `trace -w`, side by side.

    .venv/bin/python bench/extcap_stream.py [--seconds 3] [--rounds 3] [--json]

The UDP flood of bench/evidence.py (64-byte frames through DNAT into the container, the
C sender, the four capture points of testbed/tracetopo.py) while, in turns, each round
rotated: (c) `pyinspect trace -w` (segment files); (e) `pyinspect extcap --capture --fifo
FIFO` with dumpcap reading the fifo into a file (what Wireshark and tshark run), with NAT
comments (the stream holds packets back up to 1 s); (f) the same with `--comments-delay
0`; (g) `--comments-delay 0` with `cat` reading the fifo (the stream alone, without
dumpcap's cost). Per mode (medians): sender packets/s, and per point packets in the file /
packets the interface counted (target >= 0.999, as for `trace -w`); sender packets/s of
each extcap mode / (c) (target >= 0.95). dumpcap reads a pcapng pipe block by block (one
block a packet), so (e)/(f) against (g) is dumpcap's limit, not the stream's. Everything lives
in namespaces this script creates and a temp dir it removes.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import evidence  # noqa: E402  (bench/: the flood, the topology, the counters)
import trace_flood  # noqa: E402

from testbed import pointcap  # noqa: E402

TARGET_RATIO = 0.95
MODES = {
    "trace_w": "(c) trace -w",
    "extcap": "(e) extcap -> dumpcap",
    "extcap_nodelay": "(f) extcap, no comments",
    "extcap_cat": "(g) extcap -> cat",
}


class Bench(evidence.Bench):
    def start(self, mode, tag):
        if mode == "trace_w":
            return super().start(mode, tag)
        root = tempfile.mkdtemp(dir=self.tmp)
        fifo, out = os.path.join(root, "fifo"), os.path.join(root, "out.pcapng")
        os.mkfifo(fifo)
        reader = (
            ["sh", "-c", f"exec cat {fifo} > {out}"]
            if mode == "extcap_cat"
            else ["dumpcap", "-q", "-i", fifo, "-w", out]
        )
        dump = subprocess.Popen(reader, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        xc = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{self.topo.host}",
                trace_flood.PYINSPECT,
                "--root",
                root,
                "extcap",
                "--extcap-interface",
                f"pyinspect-{self.topo.ctrs[0]}",
                "--capture",
                "--fifo",
                fifo,
                "--points",
                "uplink,bridge,veth,container",
                *(["--comments-delay", "0"] if mode in ("extcap_nodelay", "extcap_cat") else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs += [xc, dump]
        state = Path(root) / "trace"
        deadline = time.monotonic() + 60
        while not (
            state.is_dir() and any("added_clsact" in p.read_text() for p in state.glob("*.json"))
        ):
            if xc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"extcap did not start: {xc.stderr.read().decode()}")
            time.sleep(0.05)
        time.sleep(0.5)
        return ("extcap", xc, root, out, dump)

    def stop(self, handle, t0_ns=None, t1_ns=None):
        if handle is None or handle[0] != "extcap":
            return super().stop(handle, t0_ns, t1_ns)
        _, xc, root, out, dump = handle
        xc.send_signal(signal.SIGTERM)  # the stream's end: dumpcap sees EOF
        err = xc.communicate(timeout=120)[1]
        dump.wait(timeout=60)
        self.procs.remove(xc)
        self.procs.remove(dump)
        if xc.returncode:
            raise SystemExit(f"extcap failed: {err.decode()[-2000:]}")
        counts = pointcap.count_packets(out, None, t0_ns, t1_ns)
        shutil.rmtree(root, ignore_errors=True)
        return {p.name: counts.get(p.name, 0) for p in self.points}, {}


def report(runs, points):
    out = {}
    for mode, label in MODES.items():
        rs = [r for r in runs if r["mode"] == mode]
        if not rs:
            continue
        o = out[mode] = {
            "pps": evidence.med(r["pps"] for r in rs),
            "points": {},
            "capture_cpu_s": evidence.med(r["capture_cpu_s"] for r in rs),
        }
        print(
            f"  {label:<26} sender {o['pps']:>10,.0f} pkt/s   capture CPU s "
            f"{o['capture_cpu_s']:.2f}"
        )
        for p in points:
            share = evidence.med(r["points"][p.name]["share"] for r in rs)
            cap = evidence.med(r["points"][p.name]["captured"] for r in rs)
            counter = evidence.med(r["points"][p.name]["counter"] for r in rs)
            o["points"][p.name] = {"share": share, "captured": cap, "counter": counter}
            ok = "" if share is None else ("ok" if share >= evidence.TARGET_POINT else "BELOW")
            print(
                f"      {p.name:<32} captured/counter {evidence.fmt(share)} ({cap:,.0f} of "
                f"{counter:,.0f}; target {evidence.TARGET_POINT}: {ok})"
            )
    for mode in ("extcap", "extcap_nodelay", "extcap_cat"):
        if mode in out and "trace_w" in out:
            x = out[mode]["pps"] / out["trace_w"]["pps"]
            out[f"sender_ratio_{mode}_vs_trace_w"] = x
            print(
                f"  sender packets/s {MODES[mode][:3]}/(c): x{x:.3f} (target >= "
                f"{TARGET_RATIO}: {'met' if x >= TARGET_RATIO else 'NOT met'})"
            )
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.no_pin = True
    if not shutil.which("dumpcap"):
        raise SystemExit("dumpcap is not installed (Debian: tshark)")
    tmp = tempfile.mkdtemp(prefix="pi-bench-extcap-")
    bench = None
    old = signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    try:
        bench = Bench(args, tmp)
        runs = []
        modes = list(MODES)
        for r in range(args.rounds):
            for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                runs.append(bench.flood(mode, r))
        print(
            f"UDP 64-byte flood through DNAT, {args.seconds}s x {args.rounds} rounds, "
            f"modes rotated (medians)"
        )
        out = report(runs, bench.points)
        if args.json:
            print(json.dumps(out))
    finally:
        signal.signal(signal.SIGTERM, old)
        if bench:
            bench.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
