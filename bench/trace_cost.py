"""Where `pyinspect trace` (without -w) costs iperf3 its throughput: every BPF program's
run time, the trace process's CPU and the machine's CPU time, measured in one iperf3 run.

    .venv/bin/python bench/trace_cost.py [--seconds 8] [--perf FILE] [--base DIR] [--json]
                                         [-- TRACE ARGS...]

Topology: testbed/tracetopo.py with DNAT for TCP 5201 (as bench/evidence.py); iperf3 through
it (client pinned to CPU 0, server to CPU 1, 0.5 s intervals). Windows of `--seconds`:
nothing attached, then the trace attached (`--via up0`: the four capture points of
bench/evidence.py), then nothing again; the throughput of each window, the machine's CPU
time by kind (/proc/stat) in the first two, the trace process's CPU, and, from the kernel's
BPF run-time statistics (BPF_ENABLE_STATS, on only while this runs), the runs, CPU time
and ns per run of every program that ran while the trace was attached (the capture
programs pi_in_N / pi_eg_N, and the probes'). bench/evidence.py gives the ratio over many
windows; this says where the difference goes.

`--base DIR` attaches, at the same time and on the same points, the trace of another
checkout as well (DIR holds its `pyinspect` package: e.g. a symlink tree of a `git
worktree`'s agent/ with its probes/, runtime/ and web/ linked in, as setup.cfg maps
them), and prints each one's capture programs' ns per run and the ratio: the same
packets pass both in the same second, which separate runs on this VM cannot give.
"""

import argparse
import ctypes
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout: testbed/ (shared with the tests)
import trace_flood  # noqa: E402  (bench/: the iperf3 server/client, the trace's start/stop)

from pyinspect.probes import bpfsys  # noqa: E402

from testbed import tracetopo  # noqa: E402

CPU_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")


def programs() -> dict[int, tuple[str, int, int]]:
    """{id: (name, run_cnt, run_time_ns)} of every BPF program loaded now."""
    out: dict[int, tuple[str, int, int]] = {}
    prog_id = 0
    while True:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<I", attr, 0, prog_id)
        try:
            bpfsys.bpf(bpfsys.PROG_GET_NEXT_ID, attr)
        except OSError:
            return out
        prog_id = struct.unpack_from("<I", attr.raw, 4)[0]
        by_id = ctypes.create_string_buffer(16)
        struct.pack_into("<I", by_id, 0, prog_id)
        try:
            fd = bpfsys.bpf(bpfsys.PROG_GET_FD_BY_ID, by_id)
        except OSError:
            continue  # gone meanwhile
        try:
            info = ctypes.create_string_buffer(256)
            q = ctypes.create_string_buffer(16)
            struct.pack_into("<IIQ", q, 0, fd, 256, ctypes.addressof(info))
            bpfsys.bpf(bpfsys.OBJ_GET_INFO_BY_FD, q)
        finally:
            os.close(fd)
        name = info.raw[64:80].split(b"\0")[0].decode()  # bpf_prog_info.name
        run_ns, runs = struct.unpack_from("<QQ", info.raw, 192)
        out[prog_id] = (name, runs, run_ns)


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> list[float]:
    with open("/proc/stat") as f:
        return [int(x) / os.sysconf("SC_CLK_TCK") for x in f.readline().split()[1:8]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="each window")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--perf", metavar="FILE", help="also `perf record -a -g` the attached window into FILE"
    )
    ap.add_argument("--base", metavar="DIR", help="also trace with the pyinspect found in DIR")
    ap.add_argument(
        "--base-second",
        action="store_true",
        help="attach the base after this checkout (the first program a packet meets pays "
        "for bringing its bytes into the cache)",
    )
    ap.add_argument("trace_args", nargs="*", help="more `pyinspect trace` options")
    a = ap.parse_args()
    w = a.seconds
    topo = tracetopo.Topology(prefix="ptc")
    tmp = tempfile.mkdtemp(prefix="pi-tcost-")
    stats_fd = bpfsys.bpf(bpfsys.ENABLE_STATS, ctypes.create_string_buffer(8))
    try:
        ip = topo.ctr_ips[0]
        port = trace_flood.IPERF_PORT
        tracetopo.sh(
            topo.host,
            f"iptables-legacy -w -t nat -A PREROUTING ! -i {topo.bridge} -p tcp "
            f"--dport {port} -j DNAT --to-destination {ip}:{port}",
        )
        total = 3 * w + 12
        with trace_flood.iperf_server(topo, True):
            client = trace_flood.iperf_client(topo, int(total), True)
            t_start = time.time()
            time.sleep(3)
            m0 = machine_cpu()
            time.sleep(w)
            m1 = machine_cpu()
            before = (3, 3 + w)
            ids0 = set(programs())
            base = None
            if a.base_second:
                trace = trace_flood.start_trace(topo, tmp, ["--via", "up0", *a.trace_args])
                ids0 = set(programs())
            if a.base:
                base = trace_flood.start_trace(
                    topo, tempfile.mkdtemp(dir=tmp), ["--via", "up0", *a.trace_args], a.base
                )
            ids_base = set(programs()) - ids0
            if not a.base_second:
                trace = trace_flood.start_trace(topo, tmp, ["--via", "up0", *a.trace_args])
            time.sleep(1)
            attached0 = time.time() - t_start
            prof = (
                subprocess.Popen(["perf", "record", "-q", "-a", "-g", "-o", a.perf])
                if a.perf
                else None
            )
            p0, c0, m2 = programs(), process_cpu(trace.pid), machine_cpu()
            time.sleep(w)
            if prof:
                prof.send_signal(signal.SIGINT)
                prof.wait()
            p1, c1, m3 = programs(), process_cpu(trace.pid), machine_cpu()
            attached = (attached0, time.time() - t_start)
            trace_flood.stop_trace(trace)
            if base:
                trace_flood.stop_trace(base)
            after0 = time.time() - t_start + 1
            out, _err = client.communicate(timeout=total + 60)
        intervals = json.loads(out)["intervals"]

        def gbit(span):
            xs = [
                i["sum"]["bits_per_second"]
                for i in intervals
                if span[0] <= i["sum"]["start"] and i["sum"]["end"] <= span[1]
            ]
            return sum(xs) / len(xs) / 1e9 if xs else None

        after = (after0, min(after0 + w, intervals[-1]["sum"]["end"]))
        rates = {"before": gbit(before), "attached": gbit(attached), "after": gbit(after)}
        idle = {k: round(b - x, 2) for k, x, b in zip(CPU_KINDS, m0, m1, strict=True)}
        traced = {k: round(b - x, 2) for k, x, b in zip(CPU_KINDS, m2, m3, strict=True)}
        progs = {}
        for pid, (name, runs, ns) in p1.items():
            if pid in p0 and runs > p0[pid][1]:
                key = f"base {name}" if pid in ids_base else name
                r = progs.setdefault(key, [0, 0])
                r[0] += runs - p0[pid][1]
                r[1] += ns - p0[pid][2]
        bpf_s = sum(ns for n, (_r, ns) in progs.items() if not n.startswith("base ")) / 1e9

        def capture_ns(prefix):  # the capture programs' mean ns per run
            sel = [v for n, v in progs.items() if n.startswith(prefix + "pi_")]
            return sum(x[1] for x in sel) / max(1, sum(x[0] for x in sel))

        report = {
            "gbit_s": {k: round(v, 2) if v else None for k, v in rates.items()},
            "ratio": round(rates["attached"] / ((rates["before"] + rates["after"]) / 2), 3)
            if all(rates.values())
            else None,
            "window_s": w,
            "machine_cpu_s": {"nothing": idle, "trace": traced},
            "trace_process_cpu_s": round(c1 - c0, 3),
            "bpf_cpu_s": round(bpf_s, 3),
            "capture_ns_per_run": round(capture_ns("")),
            "base_capture_ns_per_run": round(capture_ns("base ")) if a.base else None,
            "programs": {
                n: {"runs": r, "cpu_s": round(ns / 1e9, 3), "ns_per_run": round(ns / max(r, 1))}
                for n, (r, ns) in sorted(progs.items(), key=lambda x: -x[1][1])
            },
        }
    finally:
        os.close(stats_fd)
        topo.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        print(json.dumps(report))
        return
    g = report["gbit_s"]
    print(
        f"iperf3 through DNAT, {w:g} s windows: nothing {g['before']} Gbit/s, trace attached "
        f"{g['attached']}, nothing {g['after']} (attached / nothing either side x{report['ratio']})"
    )
    for k in ("nothing", "trace"):
        c = report["machine_cpu_s"][k]
        print(f"  machine CPU-s, {k:8s}: " + ", ".join(f"{n} {c[n]}" for n in CPU_KINDS))
    print(
        f"  trace process: {report['trace_process_cpu_s']} CPU-s; BPF programs: "
        f"{report['bpf_cpu_s']} CPU-s (in {w:g} s, {os.cpu_count()} CPUs)"
    )
    for n, p in report["programs"].items():
        print(
            f"    {n:23s} {p['runs']:>10,} runs  {p['cpu_s']:6.3f} CPU-s  "
            f"{p['ns_per_run']:>6} ns/run"
        )
    cur, old = report["capture_ns_per_run"], report["base_capture_ns_per_run"]
    print(f"  capture programs: {cur} ns a run", end="")
    print(f"; base {old}, this/base x{cur / old:.3f}" if old else "")


if __name__ == "__main__":
    main()
