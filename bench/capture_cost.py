"""The capture program's cost per packet: the IPv4-only program (a commit from before IPv6
came in) against the current one, both attached at once on the same capture points.

    .venv/bin/python bench/capture_cost.py [--base REV] [--seconds 3] [--rounds 4] [--json]

`--base` may name any revision: a base whose packets.h already has the IPv6 config
fields (`naddrs6`) gets the whole current config, an older one its IPv4-only prefix (so
`--base HEAD` compares the working tree's program with the last commit's).

Why this and not two floods: on a shared 2-core VM the sender's packets/s swings by tens
of percent between runs, far more than a few instructions per packet. Here the same
packets pass both programs in the same second: the kernel's BPF run-time statistics
(BPF_ENABLE_STATS, on only while this runs) give each program's mean ns per run.

Topology: testbed/tracetopo.py, dual-stack (testbed/ipv6.py). Capture points as a trace
has them: up0 (uplink) and pt-br0 (bridge) filtered, vc0 (host veth, learning), eth0 in
the container (all). Flood: 64-byte UDP datagrams from the client through DNAT into the
container (Python sender, one process), IPv4 then IPv6, each `--seconds`. Each program's
evidence rings are drained by a thread (the bytes are dropped), its analysis budget is 0
(every record shed, as most of a flood's are). Rounds alternate which program is
attached first. Prints ns per run for each program and the ratio current/base for IPv4
(the median of the rounds' ratios; target <= 1.02: IPv6 must not slow IPv4 beyond the
rounds' noise), and the current program's IPv6 cost.
"""

import argparse
import contextlib
import ctypes
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # the checkout: testbed/ (shared with the tests)
from pyinspect.probes import bpfsys  # noqa: E402
from pyinspect.probes import packets as P  # noqa: E402

from testbed import ipv6, tracetopo  # noqa: E402

BASE_REV = "7cbfb0f"  # the last commit whose capture program is IPv4-only
BASE_RODATA = 256  # sizeof(struct capture_config) there: the current one without IPv6
UDP_PORT = 9000
TARGET = 1.02  # IPv4 no slower than before, within the rounds' noise (a few ns of ~160)
SENDER = r"""
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
payload = b"x" * (2 if fam == socket.AF_INET6 else 22)   # 64-byte frames
end = time.perf_counter() + float(sys.argv[3])
n = 0
while time.perf_counter() < end:
    for _ in range(1000):
        try:
            s.send(payload)
            n += 1
        except OSError:
            pass
print(n)
"""
SINK = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
b = bytearray(2048)
while True:
    s.recv_into(b)
"""


def base_source(rev, tmp):
    """packets.bpf.c and its headers as of `rev`, in a directory of their own."""
    d = Path(tmp) / "base"
    d.mkdir()
    for name in ("packets.bpf.c", "packets.h", "netkeys.h"):
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:probes/{name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (d / name).write_text(text)
    return d / "packets.bpf.c"


def base_rodata(src):
    """The config size the base program takes: all of it (None) once it has IPv6."""
    return None if "naddrs6" in src.with_name("packets.h").read_text() else BASE_RODATA


class _Prefix:
    """A config whose bytes are the first `size` bytes of another (the base program's
    config is the current one without the IPv6 fields at its end)."""

    def __init__(self, cfg, size):
        self.cfg, self.size = cfg, size

    def __bytes__(self):
        return bytes(self.cfg)[: self.size] if self.size else bytes(self.cfg)


@contextlib.contextmanager
def program_from(src, rodata_size):
    """PacketCapture.start() compiles `src` with a config of `rodata_size` bytes."""
    saved = P.SRC, P.make_config
    make = P.make_config
    P.SRC = src
    P.make_config = lambda *a: _Prefix(make(*a), rodata_size)
    try:
        yield
    finally:
        P.SRC, P.make_config = saved


class Drain(threading.Thread):
    """Empties a capture's evidence rings (as the trace's writers would, without a file)."""

    def __init__(self, cap):
        super().__init__(daemon=True)
        self.cap, self.stop = cap, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.cap.wait(0.05)
            for ch in self.cap.chunks():
                self.cap.consumed(ch)


def prog_stats(fd):
    """(run_cnt, run_time_ns) of a loaded program."""
    info = ctypes.create_string_buffer(256)
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<IIQ", attr, 0, fd, 256, ctypes.addressof(info))
    bpfsys.bpf(bpfsys.OBJ_GET_INFO_BY_FD, attr)
    run_ns, runs = struct.unpack_from("<QQ", info.raw, 192)  # run_time_ns, run_cnt
    return runs, run_ns


def totals(cap):
    runs = ns = 0
    for i in range(len(cap.points)):
        for d in ("in", "eg"):
            r, n = prog_stats(cap.obj.prog_fd(f"pi_{d}_{i}"))
            runs, ns = runs + r, ns + n
    return runs, ns


def points(topo):
    def idx(ns, dev):
        return int(tracetopo.sh(ns, f"cat /sys/class/net/{dev}/ifindex").stdout)

    h, c = f"/run/netns/{topo.host}", f"/run/netns/{topo.ctrs[0]}"
    return [
        P.CapturePoint("up0", idx(topo.host, "up0"), h, "filtered", "uplink"),
        P.CapturePoint("pt-br0", idx(topo.host, "pt-br0"), h, "filtered", "bridge"),
        P.CapturePoint("vc0", idx(topo.host, "vc0"), h, "all+learn", "veth"),
        P.CapturePoint("eth0", idx(topo.ctrs[0], "eth0"), c, "all", "container"),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=BASE_REV, help="the IPv4-only commit")
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = {"base v4": [], "current v4": [], "base v6": [], "current v6": []}
    pps = {"v4": [], "v6": []}
    with tempfile.TemporaryDirectory(prefix="pi-cc-") as tmp:
        base_src = base_source(args.base, tmp)
        base_size = base_rodata(base_src)
        topo = tracetopo.Topology(prefix="pcc", listen=False)
        sink = stats_fd = None
        try:
            v6 = ipv6.add_ipv6(topo)
            t = topo
            tracetopo.sh(
                t.host,
                f"{t.ipt} -w -t nat -A PREROUTING ! -i {t.bridge} -p udp --dport {UDP_PORT} "
                f"-j DNAT --to-destination {t.ctr_ips[0]}:{UDP_PORT}\n"
                f"ip6tables-legacy -w -t nat -A PREROUTING ! -i {t.bridge} -p udp --dport "
                f"{UDP_PORT} -j DNAT --to-destination [{v6.ctr_ips[0]}]:{UDP_PORT}",
            )
            sink = subprocess.Popen(
                ["ip", "netns", "exec", t.ctrs[0], "python3", "-c", SINK, str(UDP_PORT)]
            )
            target = P.Target(
                [t.ctr_ips[0], v6.ctr_ips[0]], [("", 8088, "tcp"), ("", UDP_PORT, "udp")]
            )
            pts = points(t)
            stats_fd = bpfsys.bpf(bpfsys.ENABLE_STATS, ctypes.create_string_buffer(8))
            for r in range(args.rounds):
                caps = {}
                order = ("base", "current") if r % 2 == 0 else ("current", "base")
                for name in order:
                    cap = P.PacketCapture(pts, target, 256, ring_mb=4, analysis_mb=1)
                    cap.set_budget(0)
                    if name == "base":
                        with program_from(base_src, base_size):
                            cap.start()
                    else:
                        cap.start()
                    drain = Drain(cap)
                    drain.start()
                    caps[name] = (cap, drain)
                try:
                    for fam, dst in (("v4", t.host_ip), ("v6", v6.host_ip)):
                        before = {n: totals(c) for n, (c, _d) in caps.items()}
                        out = tracetopo.sh(
                            t.client,
                            f"python3 -c '{SENDER}' {dst} {UDP_PORT} {args.seconds}",
                            timeout=args.seconds + 60,
                        ).stdout
                        pps[fam].append(int(out.split()[0]) / args.seconds)
                        for n, (c, _d) in caps.items():
                            r1, n1 = totals(c)
                            r0, n0 = before[n]
                            res[f"{n} {fam}"].append((n1 - n0) / max(1, r1 - r0))
                finally:
                    for cap, drain in caps.values():
                        drain.stop.set()
                        drain.join()
                        cap.close()
        finally:
            if stats_fd is not None:
                os.close(stats_fd)
            if sink:
                sink.kill()
                sink.wait()
            topo.close()
    med = {k: statistics.median(v) for k, v in res.items()}
    # both programs saw the same packets in the same round: the median of the rounds'
    # ratios, with their spread for the noise
    pairs = [c / b for b, c in zip(res["base v4"], res["current v4"], strict=True) if b]
    ratio = statistics.median(pairs)
    pairs6 = [c / b for b, c in zip(res["base v6"], res["current v6"], strict=True) if b]
    result = {
        "ns_per_run": med,
        "runs": res,
        "sender_pps": {k: statistics.median(v) for k, v in pps.items()},
        "ratio_current_base_v4": ratio,
        "round_ratios_v4": pairs,
        "ratio_current_base_v6": statistics.median(pairs6),
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"capture program, ns per run (BPF run-time statistics), 4 points, "
        f"{args.rounds} rounds x {args.seconds:g}s UDP flood each family, medians:"
    )
    for k in ("base v4", "current v4", "base v6", "current v6"):
        spread = ", ".join(f"{x:.0f}" for x in res[k])
        print(f"  {k:<11} {med[k]:7.1f} ns   ({spread})")
    print(
        f"IPv4: current / base ({args.base}) = {ratio:.3f}, median of the rounds' "
        f"ratios ({', '.join(f'{x:.3f}' for x in pairs)}) (target <= {TARGET}: "
        f"{'met' if ratio <= TARGET else 'NOT met'})"
    )
    print(
        f"IPv6: current / base = {statistics.median(pairs6):.3f} (only meaningful for a base "
        f"with IPv6: {', '.join(f'{x:.3f}' for x in pairs6)})"
    )
    print(
        "  (base v6: the IPv4-only program takes IPv6 frames without parsing at eth0 and "
        "vc0, and drops them at once elsewhere)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
