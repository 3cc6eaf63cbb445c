"""UDP 64-byte flood through DNAT into a container: nothing vs tcpdump vs pyinspect trace.

    .venv/bin/python bench/trace_flood.py [--seconds 4] [--rounds 3] [--only all|flood|iperf]
                                          [--iperf-windows 600] [--window 10] [--iperf-pairs N]
                                          [--no-pin]
                                          [--trace-args ARGS] [--compare ARGS ...]
                                          [--json]

Builds the test topology (testbed/tracetopo.py: client -> host netns with DNAT -> bridge ->
veth -> container), with a UDP sink in the container. For each mode it runs a sender in the
client namespace (a Python loop of connected send() calls, 64-byte frames) and reports:
  - sender packets/s, and its ratio to the rate with nothing capturing and under tcpdump;
  - captured/sent: tcpdump -w on the host veth (its own "captured"/"dropped by kernel"
    counts), pyinspect trace on the same veth (captured in userspace, matched in the
    kernel, lost in the kernel when the ring buffer was full, shed by the reader).
Then iperf3 TCP throughput through the DNAT port with and without `pyinspect trace`, in
one long iperf3 run while a trace is started and stopped in turns (`--iperf-windows`): the
0.5 s intervals while a trace is attached are compared with the intervals while nothing is
(not those of start-up, when bcc compiles, or tear-down), so both sides see the same
connection and the same drift of this VM's throughput (+-15% from one run to the next,
+-10% from one second to the next); each attached window is also compared with the
nothing-windows either side of it (the median of those ratios is printed, with its 95%
bootstrap interval: single windows spread +-10%, so the default 600 s give ~23 windows
and an interval of about +-2%). `--compare ARGS` (repeatable) alternates the attached
windows between `--trace-args` and other trace arguments in the same run (e.g. `--compare
"--max-size 1K"`: the evidence off from the start), and prints each kind's median window
ratio: what a part of the trace costs, with the drift shared. `--iperf-pairs N` runs
separate iperf3 runs in pairs
instead (the trace attached before the connection starts; the median pair ratio).
Flood rounds alternate the modes and the median is reported, because other work on a shared
2-core VM moves absolute numbers. All traffic stays in namespaces this script creates.
"""

import argparse
import contextlib
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout: testbed/ (shared with the tests)
from testbed import tracetopo  # noqa: E402
from testbed.waits import wait_listen  # noqa: E402

PYINSPECT = str(REPO / ".venv" / "bin" / "pyinspect")
UDP_PORT = 9000
IPERF_PORT = 5201
TARGET = 0.95  # iperf3 under trace / without (issue: trace)

SENDER = r"""
import socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, port))
payload = b"x" * 22          # 14 + 20 + 8 + 22 = a 64-byte Ethernet frame (without FCS)
send = s.send
n = 0
t0 = time.perf_counter()
end = t0 + secs
while True:
    for _ in range(1000):
        try:
            send(payload)
            n += 1
        except OSError:
            pass
    if time.perf_counter() >= end:
        break
print(n, time.perf_counter() - t0)
"""

SINK = rf"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", {UDP_PORT}))
b = bytearray(2048)
r = s.recv_into
while True:
    r(b)
"""


def send(topo, seconds):
    out = tracetopo.sh(
        topo.client,
        f"python3 -c '{SENDER}' {topo.host_ip} {UDP_PORT} {seconds}",
        timeout=seconds + 30,
    ).stdout.split()
    n, dt = int(out[0]), float(out[1])
    return n, n / dt


def start_trace(topo, root, extra=(), pythonpath=None):
    """`pyinspect trace --json` in the topology's host namespace, once ready; with
    `pythonpath`, the pyinspect found there (another checkout: see bench/trace_cost.py)."""
    env = None
    cmd = [PYINSPECT]
    if pythonpath:
        env = dict(os.environ, PYTHONPATH=str(pythonpath))
        cmd = [sys.executable, "-m", "pyinspect"]  # the console script ignores PYTHONPATH
    argv = [
        "nsenter",
        f"--net=/run/netns/{topo.host}",
        *cmd,
        "--root",
        root,
        "trace",
        "--container",
        topo.ctrs[0],
        "--json",
        *extra,
    ]
    p = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd="/"
    )
    line = p.stdout.readline()
    if not line:
        raise SystemExit(f"trace did not start: {p.stderr.read()}")
    return p


def stop_trace(p):
    p.send_signal(signal.SIGTERM)  # SIGINT is ignored when this runs in the background
    out, err = p.communicate(timeout=600)
    summary = None
    for line in out.splitlines():
        if line.startswith('{"type": "summary"'):
            summary = json.loads(line)
    if summary is None:
        raise SystemExit(f"trace gave no summary: {err[-2000:]}")
    return summary


def mode_none(topo, seconds):
    n, pps = send(topo, seconds)
    return {"sent": n, "pps": pps}


def mode_tcpdump(topo, seconds, tmp):
    path = os.path.join(tmp, "flood.pcap")
    p = subprocess.Popen(
        ["ip", "netns", "exec", topo.host, "tcpdump", "-i", "vc0", "-w", path, "-n", "udp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = p.stderr.readline()  # "listening on vc0, ..."
    if "listening" not in line:
        raise SystemExit(f"tcpdump did not start: {line}")
    n, pps = send(topo, seconds)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    captured = int(re.search(r"(\d+) packets captured", err).group(1))
    dropped = int(re.search(r"(\d+) packets dropped by kernel", err).group(1))
    return {
        "sent": n,
        "pps": pps,
        "captured": captured,
        "dropped": dropped,
        "captured_ratio": captured / n if n else 0,
    }


def mode_trace(topo, seconds, tmp, extra=()):
    root = tempfile.mkdtemp(dir=tmp)
    p = start_trace(topo, root, extra)
    n, pps = send(topo, seconds)
    s = stop_trace(p)
    veth = s["packets_per_point"]["vc0 (veth)"]
    up = s["packets_per_point"]["up0 (uplink)"]
    shed = veth["matched_in_kernel"] - veth["captured"] - veth["lost"]
    return {
        "sent": n,
        "pps": pps,
        "captured": veth["captured"],
        "matched": veth["matched_in_kernel"],
        "lost_ring": veth["lost"],
        "shed": shed,
        "uplink_captured": up["captured"],
        "uplink_matched": up["matched_in_kernel"],
        "captured_ratio": veth["captured"] / n if n else 0,
        "accounted": veth["captured"] + veth["lost"] + shed == veth["matched_in_kernel"],
    }


def iperf(topo, seconds, pin=True):
    """One iperf3 run through the DNAT port; bit/s received."""
    with iperf_server(topo, pin):
        # -O 1: the first second (slow start) is not counted
        out = tracetopo.sh(
            topo.client,
            f"iperf3 -c {topo.host_ip} -p {IPERF_PORT} "
            f"-t {seconds} -O 1 -J {' '.join(pin_args(pin, 0))}",
            timeout=seconds + 60,
        ).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"]


@contextlib.contextmanager
def iperf_server(topo, pin):
    """`iperf3 -s -1` in the container, listening when this yields; waited for after."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", topo.ctrs[0], "iperf3", "-s", "-1", *pin_args(pin, 1)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listen(topo.ctrs[0], IPERF_PORT)
        yield srv
    finally:
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def pin_args(pin, cpu):
    """iperf3 -A: the client on CPU 0, the server on CPU 1 (when pinning, with 2+ CPUs)."""
    return ["-A", str(cpu)] if pin and (os.cpu_count() or 1) >= 2 else []


def iperf_client(topo, seconds, pin=True):
    """iperf3 -c through the DNAT port in the background, 0.5 s intervals, JSON on stdout."""
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            topo.client,
            "iperf3",
            "-c",
            topo.host_ip,
            "-p",
            str(IPERF_PORT),
            "-t",
            str(seconds),
            "-i",
            "0.5",
            "-J",
            *pin_args(pin, 0),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def iperf_windows(topo, seconds, window, tmp, pin=True, trace_args=(), compare=()):
    """One iperf3 run of `seconds`; a trace attached for `window` s, then nothing for
    `window` s, in turns. Returns the 0.5 s interval rates (bit/s) with a trace attached
    and with nothing, each start-up time, and each attached window's ratio to the
    nothing-windows on either side of it (the VM's throughput drifts over tens of seconds;
    a window compared with its neighbours is not). With `compare` (more argument lists),
    the attached windows take `trace_args` and each of those in turn; the last item
    returned maps each list's index to its windows' ratios (0: `trace_args`), and the
    rest are `trace_args`' windows only."""
    sets = [list(trace_args), *map(list, compare)]
    kinds = []  # the argument set of each attached window
    busy, on, startup = [], [], []  # wall-clock spans: trace starting/stopping; attached
    with iperf_server(topo, pin):
        t0 = time.time()
        client = iperf_client(topo, seconds, pin)
        try:
            time.sleep(window)
            while time.time() - t0 < seconds - 2 * window - 5:
                asked = time.time()
                kinds.append(len(on) % len(sets))
                p = start_trace(topo, tempfile.mkdtemp(dir=tmp), sets[kinds[-1]])
                ready = time.time()
                time.sleep(window)
                stop = time.time()
                stop_trace(p)
                gone = time.time()
                busy += [(asked, ready), (stop, gone)]
                on.append((ready, stop))
                startup.append(ready - asked)
                time.sleep(window)
            out = client.communicate(timeout=seconds + 60)[0]
        finally:
            if client.poll() is None:  # the loop failed: do not leave iperf3 running
                client.kill()
                client.communicate()
    res = json.loads(out)
    if "error" in res:
        raise SystemExit(f"iperf3: {res['error']}")
    attached, nothing = [], []
    by_window = {}  # ("on", i): attached window i; ("off", i): the gap before it
    for iv in res["intervals"]:
        a, b = t0 + iv["sum"]["start"], t0 + iv["sum"]["end"]
        rate = iv["sum"]["bits_per_second"]
        if a < t0 + 1:
            continue  # slow start
        hit = [i for i, (r, s) in enumerate(on) if r + 0.3 <= a and b <= s]
        if hit:
            if kinds[hit[0]] == 0:
                attached.append(rate)
            by_window.setdefault(("on", hit[0]), []).append(rate)
        elif not any(a < y + 0.3 and b > x for x, y in busy) and not any(
            a < s and b > r for r, s in on
        ):
            nothing.append(rate)
            gap = sum(1 for r, s in on if s <= a)
            by_window.setdefault(("off", gap), []).append(rate)
    by_set = {k: [] for k in range(len(sets))}
    for i in range(len(on)):
        here = by_window.get(("on", i))
        sides = [
            statistics.mean(by_window[k]) for k in (("off", i), ("off", i + 1)) if by_window.get(k)
        ]
        if here and sides:
            by_set[kinds[i]].append(statistics.mean(here) / statistics.mean(sides))
    startup = [x for x, k in zip(startup, kinds, strict=True) if k == 0]
    return attached, nothing, startup, by_set[0], by_set


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--iperf-windows",
        type=float,
        default=600,
        help="length of the iperf3 run with the trace on and off in turns",
    )
    ap.add_argument(
        "--window",
        type=float,
        default=10,
        help="seconds with a trace attached, then with nothing, in turns",
    )
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="leave iperf3's client and server where the scheduler puts them "
        "(default: -A 0 / -A 1, so their placement does not vary)",
    )
    ap.add_argument(
        "--iperf-pairs",
        type=int,
        default=0,
        help="also: iperf3 runs without/with trace, back to back, in pairs",
    )
    ap.add_argument(
        "--trace-args",
        default="",
        help='extra `pyinspect trace` arguments for the iperf3 windows (e.g. "--max-rate 1")',
    )
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="ARGS",
        help="more `pyinspect trace` arguments for every other iperf3 window, in turns with "
        '--trace-args (repeatable; e.g. "--max-size 1K": the evidence off from the start)',
    )
    ap.add_argument("--only", choices=("all", "flood", "iperf"), default="all")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    topo = tracetopo.Topology(prefix="ptb")
    results = {
        "none": [],
        "tcpdump": [],
        "trace": [],
        "trace_pcapng": [],
        "iperf_none": [],
        "iperf_trace": [],
    }
    sink = None
    try:
        ip = topo.ctr_ips[0]
        tracetopo.sh(
            topo.host,
            f"""
            iptables-legacy -w -t nat -A PREROUTING ! -i pt-br0 -p udp --dport {UDP_PORT} \\
                -j DNAT --to-destination {ip}:{UDP_PORT}
            iptables-legacy -w -t nat -A PREROUTING ! -i pt-br0 -p tcp --dport {IPERF_PORT} \\
                -j DNAT --to-destination {ip}:{IPERF_PORT}
        """,
        )
        sink = subprocess.Popen(["ip", "netns", "exec", topo.ctrs[0], "python3", "-c", SINK])
        time.sleep(0.3)
        with tempfile.TemporaryDirectory(prefix="ptb-") as tmp:

            def run_iperf_trace():
                p = start_trace(topo, tempfile.mkdtemp(dir=tmp))  # attached before iperf
                bps = iperf(topo, args.seconds, not args.no_pin)
                s = stop_trace(p)
                results.setdefault("iperf_trace_loss", []).append(s["packets_per_point"])
                return bps

            modes = [
                lambda r: results["none"].append(mode_none(topo, args.seconds)),
                lambda r: results["tcpdump"].append(mode_tcpdump(topo, args.seconds, tmp)),
                lambda r: results["trace"].append(mode_trace(topo, args.seconds, tmp)),
                lambda r: results["trace_pcapng"].append(
                    mode_trace(topo, args.seconds, tmp, ["-w", os.path.join(tmp, f"t{r}.pcapng")])
                ),
            ]
            if args.only != "iperf":
                for r in range(args.rounds):
                    # rotate the order each round: background load drifts, no mode always first
                    k = r % len(modes)
                    for mode in modes[k:] + modes[:k]:
                        mode(r)
            # iperf3 in one run with the trace attached and detached in turns
            if args.only != "flood" and args.iperf_windows:
                on, off, startup, cycles, by_set = iperf_windows(
                    topo,
                    args.iperf_windows,
                    args.window,
                    tmp,
                    pin=not args.no_pin,
                    trace_args=shlex.split(args.trace_args),
                    compare=[shlex.split(a) for a in args.compare],
                )
                results.update(
                    iperf_window_on=on,
                    iperf_window_off=off,
                    iperf_window_startup=startup,
                    iperf_window_cycles=cycles,
                    iperf_window_compare=[
                        {"trace_args": a, "window_ratios": by_set[k + 1]}
                        for k, a in enumerate(args.compare)
                    ],
                )
            # iperf3 in pairs, back to back and in alternating order: the VM's throughput
            # drifts by +-15% between runs, so each pair's ratio is what is compared
            for r in range(args.iperf_pairs if args.only != "flood" else 0):
                if r % 2:
                    t = run_iperf_trace()
                    n = iperf(topo, args.seconds, not args.no_pin)
                else:
                    n = iperf(topo, args.seconds, not args.no_pin)
                    t = run_iperf_trace()
                results["iperf_none"].append(n)
                results["iperf_trace"].append(t)
                results.setdefault("iperf_pair_ratio", []).append(t / n)
    finally:
        if sink:
            sink.kill()
            sink.wait()
        topo.close()

    def med(mode, key):
        return statistics.median(x[key] for x in results[mode])

    report = {"rounds": args.rounds, "seconds": args.seconds}
    if args.only != "iperf":
        report.update(flood_report(results, med))
    if results["iperf_none"]:
        ratios = sorted(results["iperf_pair_ratio"])
        report.update(
            {
                "iperf3_gbit": {
                    "none": round(statistics.median(results["iperf_none"]) / 1e9, 2),
                    "trace": round(statistics.median(results["iperf_trace"]) / 1e9, 2),
                },
                "iperf3_ratio": round(statistics.median(ratios), 3),
                "iperf3_pair_ratios": [round(x, 3) for x in ratios],
            }
        )
    if results.get("iperf_window_on") and results.get("iperf_window_off"):
        on, off = results["iperf_window_on"], results["iperf_window_off"]
        report["iperf3_windows"] = {
            "intervals": {"attached": len(on), "nothing": len(off)},
            "gbit_median": {
                "attached": round(statistics.median(on) / 1e9, 2),
                "nothing": round(statistics.median(off) / 1e9, 2),
            },
            "ratio_of_medians": round(statistics.median(on) / statistics.median(off), 3),
            "ratio_of_means": round(statistics.mean(on) / statistics.mean(off), 3),
            "window_ratios": [round(x, 3) for x in results["iperf_window_cycles"]],
            "median_window_ratio": (
                round(statistics.median(results["iperf_window_cycles"]), 3)
                if results["iperf_window_cycles"]
                else None
            ),
            "median_window_ratio_95": median_interval(results["iperf_window_cycles"]),
            "startup_s": [round(x, 1) for x in results["iperf_window_startup"]],
            "compare": [
                {
                    "trace_args": c["trace_args"],
                    "window_ratios": [round(x, 3) for x in c["window_ratios"]],
                    "median_window_ratio": (
                        round(statistics.median(c["window_ratios"]), 3)
                        if c["window_ratios"]
                        else None
                    ),
                    "median_window_ratio_95": median_interval(c["window_ratios"]),
                }
                for c in results.get("iperf_window_compare", [])
            ],
        }
    report["raw"] = results
    if args.json:
        print(json.dumps(report, indent=1))
        return
    if args.only != "iperf":
        print_flood(report, results, args)
    w = report.get("iperf3_windows")
    if w:
        print(
            f"iperf3 TCP through DNAT{'' if args.no_pin else ' (client -A 0, server -A 1)'}, "
            f"one {args.iperf_windows:.0f}s run, a trace attached "
            f"for {args.window:.0f}s then nothing for {args.window:.0f}s, "
            f"{len(w['startup_s'])} times: {w['intervals']['attached']} half-second "
            f"intervals attached, {w['intervals']['nothing']} with nothing; "
            f"{w['gbit_median']['attached']} vs {w['gbit_median']['nothing']} Gbit/s "
            f"(medians): x{w['ratio_of_medians']} (ratio of means x{w['ratio_of_means']}); "
            f"trace start-up {min(w['startup_s'])}-{max(w['startup_s'])}s not counted"
        )
        lo, hi = w["median_window_ratio_95"] or (None, None)
        med = w["median_window_ratio"]
        verdict = (
            "too few windows to tell"
            if lo is None
            else "met"
            if lo >= TARGET
            else "met by the median, not by its whole interval"
            if med >= TARGET
            else "not met"
        )
        print(
            f"  each attached window against the nothing-windows either side: median "
            f"x{med} (95% interval {lo}-{hi}; target x{TARGET}: {verdict}) "
            f"({', '.join(str(x) for x in w['window_ratios'])})"
        )
        for c in w["compare"]:
            lo, hi = c["median_window_ratio_95"] or (None, None)
            print(
                f"  in turns with it, trace {c['trace_args']}: median x{c['median_window_ratio']}"
                f" (95% interval {lo}-{hi}) ({', '.join(str(x) for x in c['window_ratios'])})"
            )
    if results["iperf_none"]:
        print(
            f"iperf3 TCP through DNAT, {len(results['iperf_none'])} pairs of {args.seconds}s "
            f"runs: {report['iperf3_gbit']['none']} Gbit/s without, "
            f"{report['iperf3_gbit']['trace']} Gbit/s under trace (medians); median pair "
            f"ratio x{report['iperf3_ratio']} (pairs: "
            f"{', '.join(str(x) for x in report['iperf3_pair_ratios'])})"
        )


def median_interval(xs, resamples=4000, seed=1):
    """95% bootstrap interval of the median of `xs` (None for fewer than 5 values)."""
    if len(xs) < 5:
        return None
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return round(meds[int(0.025 * resamples)], 3), round(meds[int(0.975 * resamples) - 1], 3)


def flood_report(results, med):
    """The UDP flood's medians and ratios."""
    base = med("none", "pps")
    tdp = med("tcpdump", "pps")
    return {
        "sender_pps": {
            m: round(med(m, "pps")) for m in ("none", "tcpdump", "trace", "trace_pcapng")
        },
        "sender_ratio_vs_none": {
            m: round(med(m, "pps") / base, 3) for m in ("tcpdump", "trace", "trace_pcapng")
        },
        "sender_ratio_vs_tcpdump": {
            m: round(med(m, "pps") / tdp, 3) for m in ("trace", "trace_pcapng")
        },
        "captured_over_sent": {
            m: round(med(m, "captured_ratio"), 4) for m in ("tcpdump", "trace", "trace_pcapng")
        },
        "trace_loss_accounted_exactly": all(
            x["accounted"] for x in results["trace"] + results["trace_pcapng"]
        ),
    }


def print_flood(report, results, args):
    print(
        f"UDP 64-byte flood, client netns -> DNAT -> container, {args.seconds}s x "
        f"{args.rounds} rounds (medians)"
    )
    for m in ("none", "tcpdump", "trace", "trace_pcapng"):
        line = f"  {m:<13} sender {report['sender_pps'][m]:>9,} pkt/s"
        if m != "none":
            line += f"  x{report['sender_ratio_vs_none'][m]:.3f} of none"
        if m in report["captured_over_sent"]:
            line += f"  captured/sent {report['captured_over_sent'][m]:.4f}"
        print(line)
    for m in ("trace", "trace_pcapng"):
        print(
            f"  {m}: sender x{report['sender_ratio_vs_tcpdump'][m]:.3f} of its rate under tcpdump"
        )
    for x in results["trace"] + results["trace_pcapng"]:
        print(
            f"    trace on vc0: sent {x['sent']:,} matched {x['matched']:,} captured "
            f"{x['captured']:,} lost(ring full) {x['lost_ring']:,} shed {x['shed']:,}"
        )
    print(
        f"  loss accounted exactly (captured + lost + shed == matched in kernel): "
        f"{report['trace_loss_accounted_exactly']}"
    )


if __name__ == "__main__":
    main()
