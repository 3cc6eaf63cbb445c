"""Where a trace's cost goes: parts of one running trace switched off and on in place.

    .venv/bin/python bench/trace_toggle.py [--seconds 900] [--window 3]
                                           [--modes pause,auto] [--src FILE] [-- TRACE ARGS]

One iperf3 run through the DNAT port (tests/tracetopo.py topology, client -A 0, server
-A 1) under one `pyinspect trace` process whose state is switched every `--window`
seconds, in turn, through `--modes`:
  auto     the reader polls with its automatic budget (a normal trace);
  N        the reader polls with `--max-rate N`;
  pause    the reader sleeps (the capture stays attached; the kernel sheds past its
           last budget);
  nohooks  the reader sleeps and the capture programs are detached (tcx links closed;
           conntrack, TRACE rules, drops and process events stay);
  norules  the jumps to the TRACE chain are taken out of raw PREROUTING/OUTPUT;
  A+B      both (e.g. nohooks+norules: everything in the packet path off).
Each window of a mode is compared with the windows of the first mode either side of it
(0.5 s iperf3 intervals, the first 0.4 s after a switch left out), so 15 minutes give
~75-150 windows per mode, with no start-up or tear-down in between: a finer comparison
than bench/trace_flood.py's windows, which restart the trace for each window. The switch
is this script patching the trace's poll loop in the trace process (`--as-trace`), so it
measures parts, not the product as shipped: trace_flood.py does that. `--src FILE` compiles
the capture from a modified copy of probes/packets.bpf.c (bench/capture_runtime.py prices
such a variant in ns per program run).
"""

import argparse
import collections
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODE_ENV = "PI_TOGGLE_MODEFILE"
SRC_ENV = "PI_TOGGLE_SRC"


def as_trace(argv):
    """Run `pyinspect` (argv) with the poll loop reading its mode from $PI_TOGGLE_MODEFILE."""
    from pyinspect import tracer
    from pyinspect.cli import main
    from pyinspect.probes import packets
    if os.environ.get(SRC_ENV):
        packets.SRC = os.environ[SRC_ENV]
    modefile = os.environ[MODE_ENV]
    poll = tracer.TraceSession.poll

    def switched_poll(self, timeout=None, final=False):
        parts = {"auto"} if final else set(Path(modefile).read_text().strip().split("+"))
        set_hooks(self.cap, "nohooks" not in parts)
        set_rules(self.rules, "norules" not in parts)
        if parts & {"pause", "nohooks"}:
            time.sleep(self.poll_interval if timeout is None else timeout)
            return []
        rate = next((p for p in parts if p.isdigit()), None)
        self.opt.max_rate = int(rate) if rate else None
        return poll(self, timeout, final)

    tracer.TraceSession.poll = switched_poll
    return main(argv)


def set_hooks(cap, on):
    """Close or re-create the capture's tcx links (the programs stay loaded)."""
    from bcc import BPF
    from pyinspect.probes import packets
    if cap.attach_kind != "tcx":
        raise SystemExit("nohooks needs tcx links")
    if not on and cap.links:
        for fd in cap.links:
            os.close(fd)
        cap.links = []
    elif on and not cap.links:
        for i, point in enumerate(cap.points):
            for direction, prefix in (("ingress", "pi_in_"), ("egress", "pi_eg_")):
                fn = cap.bpf.load_func(f"{prefix}{i}", BPF.SCHED_CLS)
                cap.links.append(packets.tcx_attach(point, fn.fd, direction))


def set_rules(rules, on):
    """Delete or re-insert the jumps from raw PREROUTING/OUTPUT to the TRACE chain."""
    if rules is None:
        raise SystemExit("norules needs the legacy backend's TRACE rules")
    off = getattr(rules, "_toggled_off", False)
    if on == off:
        ok, err = rules._restore(rules._jumps("-I" if on else "-D"))
        if not ok:
            raise SystemExit(f"cannot switch the TRACE jumps: {err}")
        rules._toggled_off = not on


def run(seconds, window, modes, trace_args):
    sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]
    import trace_flood as TF
    import tracetopo
    modefile = tempfile.NamedTemporaryFile("w", prefix="pi-toggle-", delete=False)
    modefile.write(modes[0])
    modefile.close()
    os.environ[MODE_ENV] = modefile.name
    marks = []                          # (time switched, mode)
    topo = tracetopo.Topology(prefix="pxt")
    try:
        tracetopo.sh(topo.host, f"iptables-legacy -w -t nat -A PREROUTING ! -i pt-br0 -p tcp "
                     f"--dport {TF.IPERF_PORT} -j DNAT --to-destination "
                     f"{topo.ctr_ips[0]}:{TF.IPERF_PORT}")
        with TF.iperf_server(topo, True):
            trace = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{topo.host}", sys.executable, __file__,
                 "--as-trace", "--root", tempfile.mkdtemp(), "trace", "--container",
                 topo.ctrs[0], "--json", *trace_args],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if not trace.stdout.readline():
                raise SystemExit(f"trace did not start: {trace.stderr.read()}")
            threading.Thread(target=collections.deque, args=(trace.stdout, 0),
                             daemon=True).start()          # keep its output flowing
            t0 = time.time()
            client = TF.iperf_client(topo, seconds)
            try:
                time.sleep(2)
                k = 0
                while time.time() - t0 < seconds - window - 2:
                    mode = modes[k % len(modes)]
                    k += 1
                    Path(modefile.name).write_text(mode)
                    marks.append((time.time(), mode))
                    time.sleep(window)
                out = client.communicate(timeout=seconds + 60)[0]
            finally:
                if client.poll() is None:
                    client.kill()
                    client.communicate()
                trace.send_signal(signal.SIGTERM)   # SIGINT is ignored in the background
                trace.wait(timeout=60)
    finally:
        topo.close()
        os.unlink(modefile.name)
    return window_ratios(json.loads(out), t0, marks, window, modes[0])


def window_ratios(res, t0, marks, window, base):
    """{mode: [mean rate of a window / mean of the `base` windows either side]}."""
    rates = collections.defaultdict(list)
    for iv in res["intervals"]:
        a, b = t0 + iv["sum"]["start"], t0 + iv["sum"]["end"]
        for i, (t, _mode) in enumerate(marks):
            end = marks[i + 1][0] if i + 1 < len(marks) else t + window
            if t + 0.4 <= a and b <= end + 0.05:
                rates[i].append(iv["sum"]["bits_per_second"])
    means = {i: statistics.mean(v) for i, v in rates.items()}
    out = collections.defaultdict(list)
    for i, (_t, mode) in enumerate(marks):
        sides = [means[j] for j in (i - 1, i + 1) if j in means and marks[j][1] == base]
        if mode != base and i in means and sides:
            out[mode].append(means[i] / statistics.mean(sides))
    return out


def main():
    if sys.argv[1:2] == ["--as-trace"]:
        return as_trace(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=900)
    ap.add_argument("--window", type=float, default=3)
    ap.add_argument("--modes", default="pause,auto")
    ap.add_argument("--src", help="compile the capture from this copy of packets.bpf.c")
    ap.add_argument("trace_args", nargs="*")
    args = ap.parse_args()
    modes = args.modes.split(",")
    for m in modes:
        for part in m.split("+"):
            if part not in ("auto", "pause", "nohooks", "norules") and not part.isdigit():
                ap.error(f"bad mode {m!r}: auto, pause, nohooks, norules or a number, "
                         f"or several joined with +")
    if args.src:
        if not os.path.isfile(args.src):
            ap.error(f"no such file: {args.src}")
        os.environ[SRC_ENV] = os.path.abspath(args.src)
    ratios = run(args.seconds, args.window, modes, args.trace_args)
    for mode, r in ratios.items():
        se = statistics.stdev(r) / len(r) ** 0.5 if len(r) > 1 else float("nan")
        print(f"{mode:>8} against {modes[0]}: {len(r)} windows, median x{statistics.median(r):.3f}"
              f", mean x{statistics.mean(r):.3f} (+-{se:.3f} standard error)")


if __name__ == "__main__":
    sys.exit(main())
