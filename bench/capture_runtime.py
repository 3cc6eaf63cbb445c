"""Run time of the capture programs per run, per program, under one iperf3 flow.

    .venv/bin/python bench/capture_runtime.py [--seconds 15] [--rounds 4] [--src FILE ...]

One iperf3 run through the DNAT port (tests/tracetopo.py topology, client -A 0, server
-A 1); `pyinspect trace --max-rate 1` (the kernel sheds nearly every packet: the bulk
path) is started and stopped once per variant per round, in turns, with the kernel's BPF
run-time statistics on (BPF_ENABLE_STATS). Per variant it prints the mean ns per program
run over `--seconds` (the statistics' own clock reads are in every run, so compare with
the `empty` variant), runs/s, and the container's eth0 Gbit/s in the same seconds (too
noisy at this length to compare variants: bench/trace_toggle.py does that).
Variants: `shipped` (probes/packets.bpf.c), `empty` (the same programs returning at
once), and each `--src FILE` (a modified copy of packets.bpf.c, e.g. to price a change
before making it).
"""

import argparse
import contextlib
import ctypes
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyinspect.probes import bpfsys
from pyinspect.probes.bpfsys import bpf

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "probes" / "packets.bpf.c"
INFO_NAME, INFO_RUN = 64, 192     # offsets in struct bpf_prog_info: name[16]; run_time_ns, run_cnt


def _attr(*fields, fmt):
    return ctypes.create_string_buffer(struct.pack(fmt, *fields), 128)


@contextlib.contextmanager
def run_time_stats():
    """BPF run-time statistics on while the context lasts (the kernel counts while the fd is open)."""
    try:
        fd = bpf(bpfsys.ENABLE_STATS, _attr(0, fmt="I"))      # BPF_STATS_RUN_TIME
    except OSError as exc:
        raise SystemExit(f"BPF_ENABLE_STATS: {exc.strerror}")
    try:
        yield
    finally:
        os.close(fd)


def capture_programs():
    """{(prog id, name): (run_cnt, run_time_ns)} of the loaded pi_in_*/pi_eg_* programs."""
    out, pid = {}, 0
    while True:
        attr = _attr(pid, fmt="I")
        try:
            bpf(bpfsys.PROG_GET_NEXT_ID, attr)
        except OSError:
            return out
        pid = struct.unpack_from("II", attr.raw)[1]
        try:
            fd = bpf(bpfsys.PROG_GET_FD_BY_ID, _attr(pid, fmt="I"))
        except OSError:
            continue                     # unloaded meanwhile
        info = ctypes.create_string_buffer(256)
        try:
            bpf(bpfsys.OBJ_GET_INFO_BY_FD, _attr(fd, 256, ctypes.addressof(info), fmt="IIQ"))
        except OSError:
            continue
        finally:
            os.close(fd)
        name = info.raw[INFO_NAME:INFO_NAME + 16].split(b"\0")[0].decode()
        if name.startswith(("pi_in_", "pi_eg_")):
            run_ns, runs = struct.unpack_from("QQ", info.raw, INFO_RUN)
            out[(pid, name)] = (runs, run_ns)


def empty_variant(tmp):
    """packets.bpf.c with every program returning before it looks at the packet."""
    src = SHIPPED.read_text()
    head = "static __always_inline int capture(struct __sk_buff *skb, u32 point, const int mode, u8 dir)\n{\n"
    if head not in src:
        raise SystemExit("capture() not found in packets.bpf.c: update empty_variant()")
    path = Path(tmp) / "empty.bpf.c"
    path.write_text(src.replace(head, head + "    if (1)\n        return TC_ACT_UNSPEC;\n"))
    return path


def as_trace(src, argv):
    """Run `pyinspect` (argv) with the capture compiled from `src`."""
    from pyinspect.cli import main
    from pyinspect.probes import packets
    packets.SRC = src
    return main(argv)


def eth0_bytes(topo, tracetopo):
    for line in tracetopo.sh(topo.ctrs[0], "cat /proc/net/dev").stdout.splitlines():
        if line.strip().startswith("eth0:"):
            return int(line.split(":", 1)[1].split()[0])
    raise SystemExit("no eth0 in the container")


def measure(topo, tracetopo, src, seconds, root):
    """Start a trace compiled from `src`, take `seconds` of statistics, stop it."""
    p = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{topo.host}", sys.executable, __file__, "--as-trace",
         str(src), "--root", root, "trace", "--container", topo.ctrs[0], "--json",
         "--max-rate", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not p.stdout.readline():
            raise SystemExit(f"trace did not start: {p.stderr.read()[-2000:]}")
        time.sleep(1)
        b0, a = eth0_bytes(topo, tracetopo), capture_programs()
        time.sleep(seconds)
        b, b1 = capture_programs(), eth0_bytes(topo, tracetopo)
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=120)
    per = {}
    for k, (runs, ns) in b.items():
        if k in a and runs > a[k][0]:
            per[k[1]] = (runs - a[k][0], ns - a[k][1])
    runs = sum(r for r, _ in per.values())
    return {"ns_per_run": sum(n for _, n in per.values()) / max(runs, 1),
            "runs_per_s": runs / seconds, "gbps": (b1 - b0) * 8 / seconds / 1e9,
            "programs": {name: n / r for name, (r, n) in sorted(per.items())}}


def main():
    if sys.argv[1:2] == ["--as-trace"]:
        return as_trace(sys.argv[2], sys.argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--src", action="append", default=[], help="a variant of packets.bpf.c")
    args = ap.parse_args()
    for s in args.src:
        if not Path(s).is_file():
            ap.error(f"no such file: {s}")
    sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]
    import trace_flood as TF
    import tracetopo
    results = {}
    with tempfile.TemporaryDirectory(prefix="pi-rt-") as tmp:
        variants = {"shipped": SHIPPED, "empty": empty_variant(tmp)}
        variants.update((s, Path(s).resolve()) for s in args.src)
        topo = tracetopo.Topology(prefix="pxr")
        try:
            tracetopo.sh(topo.host, f"iptables-legacy -w -t nat -A PREROUTING ! -i pt-br0 -p tcp "
                         f"--dport {TF.IPERF_PORT} -j DNAT --to-destination "
                         f"{topo.ctr_ips[0]}:{TF.IPERF_PORT}")
            total = int(len(variants) * args.rounds * (args.seconds + 15) + 30)
            with TF.iperf_server(topo, True), run_time_stats():
                client = TF.iperf_client(topo, total)
                try:
                    time.sleep(2)
                    for r in range(args.rounds):
                        for name, src in variants.items():
                            m = measure(topo, tracetopo, src, args.seconds,
                                        tempfile.mkdtemp(dir=tmp))
                            results.setdefault(name, []).append(m)
                            print(f"round {r + 1} {name:>10}: {m['ns_per_run']:6.1f} ns/run, "
                                  f"{m['runs_per_s']:8.0f} runs/s, {m['gbps']:5.2f} Gbit/s",
                                  flush=True)
                finally:
                    client.kill()
                    client.communicate()
        finally:
            topo.close()
    print()
    for name, ms in results.items():
        ns = [m["ns_per_run"] for m in ms]
        progs = {p: statistics.median(m["programs"].get(p, 0) for m in ms)
                 for p in ms[0]["programs"]}
        print(f"{name:>10}: median {statistics.median(ns):6.1f} ns/run "
              f"(rounds {', '.join(f'{x:.0f}' for x in ns)}); per program "
              + ", ".join(f"{p} {v:.0f}" for p, v in progs.items()))


if __name__ == "__main__":
    sys.exit(main())
