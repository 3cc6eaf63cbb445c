"""The trace's analysis path, CPU per record, on synthetic records (no kernel needed).

What `pyinspect trace` does with each analysis record after the kernel hands it over:
the record's header and bytes (Correlator.records, as the session reads a poll's raw
records), correlation (pyinspect.trace.flows.Correlator), live lines (sinks.LiveText) and
the store (sinks.StoreSink: flows, index rows into the pcap files, hops) in a real SQLite
store in a temporary directory. Two workloads:
  short  HTTP-like connections: 12 packets each, seen at 4 capture points, with their
         conntrack event and the netfilter trace lines of the SYN and SYN-ACK (4 each, as
         a live trace of the demo topology stores ~8 a connection; the demo's and the
         20-fetch test's shape)
  bulk   one UDP flow of many packets at 4 points (a flood: past its live lines, the
         flow's packets take the fast path)
Prints microseconds of CPU (thread time) per record, the least of `--rounds` runs. Set
PYTHONPATH to an older checkout's package for a before/after (one without
Correlator.records gets its records as its session read them). The live
trace reports the same measure in its summary (`reader_cost`, `reader_us_per_record`);
bench/reader_live.py measures it on a live trace of short connections, bench/evidence.py
prints it under load.
"""

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

from pyinspect.probes.packets import AREC
from pyinspect.store import Store
from pyinspect.trace import flows as F
from pyinspect.trace.evidence import Segment
from pyinspect.trace.sinks import LiveText, StoreSink
from pyinspect.trace.target import TraceTarget

CLIENT, HOST, CTR = "10.77.1.2", "10.77.1.1", "172.30.1.10"


class Point:
    def __init__(self, name, netns=None, description=""):
        self.name, self.netns, self.description = name, netns, description


POINTS = [
    Point("up0", None, "uplink"),
    Point("pt-br0", None, "bridge"),
    Point("vc0", None, "host end"),
    Point("eth0", "/proc/1/ns/net", "eth0"),
]


def frame(src, sport, dst, dport, proto=6, flags=0x10, ipid=1, seq=0):
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        52,
        ipid,
        0,
        64,
        proto,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 512, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 28, 0)
    return b"\0" * 12 + b"\x08\x00" + ip + l4


NF_PATH = {  # (table, chain, rule, verdict) of a DNATed connection's first packets
    0: [
        ("raw", "PREROUTING", 1, "TRACE"),
        ("nat", "PREROUTING", 1, f"DNAT {CTR}:80"),
        ("filter", "FORWARD", 2, "ACCEPT"),
        ("nat", "POSTROUTING", 0, "ACCEPT"),
    ],
    1: [
        ("raw", "PREROUTING", 1, "TRACE"),
        ("filter", "FORWARD", 1, "ACCEPT"),
        ("mangle", "POSTROUTING", 0, "ACCEPT"),
        ("filter", "OUTPUT", 0, "ACCEPT"),
    ],
}


def nf_hops(fr, k, seq0):
    """The trace lines (probes.nftrace's hop dicts) of packet k of a connection."""
    pkt = F.parse_frame(fr)
    return [
        {
            "table": t,
            "chain": c,
            "rule_num": n,
            "rule_text": f"-A {c} rule {n}" if n else f"policy {v}",
            "verdict": v,
            "kind": "rule" if n else "policy",
            "backend": "legacy",
            "hook": c,
            "pkt": pkt,
            "ts_ns": time.time_ns(),
            "seq": seq0 + i,
        }
        for i, (t, c, n, v) in enumerate(NF_PATH[k])
    ]


def short(n_conns):
    """(records, conntrack events, trace lines by record index) for n connections
    through DNAT 8088 -> 80."""
    recs, cts, nf = [], [], {}
    t = 1_000_000_000
    for c in range(n_conns):
        sport = 30000 + c
        cts.append(
            {
                "ts_ns": t,
                "kind": "new",
                "id": c + 1,
                "proto": "tcp",
                "orig": (CLIENT, sport, HOST, 8088),
                "reply": (CTR, 80, CLIENT, sport),
                "status": [],
                "nat": "dnat",
                "tcp_state": "SYN_SENT",
            }
        )
        for k in range(12):
            flags = 0x02 if k == 0 else (0x12 if k == 1 else (0x11 if k >= 10 else 0x18))
            inbound = k % 2 == 0
            for p in range(4):
                if inbound:
                    fr = frame(
                        CLIENT,
                        sport,
                        HOST if p == 0 else CTR,
                        8088 if p == 0 else 80,
                        flags=flags,
                        ipid=k,
                        seq=k,
                    )
                else:
                    fr = frame(
                        HOST if p == 0 else CTR,
                        8088 if p == 0 else 80,
                        CLIENT,
                        sport,
                        flags=flags,
                        ipid=k,
                        seq=k,
                    )
                if k < 2 and p == (0 if inbound else 1):  # seen by netfilter pre-NAT
                    nf[len(recs)] = nf_hops(fr, k, len(nf) * 4)
                recs.append((t, p, 0 if inbound else 1, 66, fr, 0, len(recs) * 120))
                t += 1000
    return recs, cts, nf


def bulk(n):
    recs = []
    t = 1_000_000_000
    for k in range(n):
        for p in range(4):
            fr = frame(
                CLIENT,
                40000,
                HOST if p == 0 else CTR,
                8088 if p == 0 else 9,
                proto=17,
                ipid=k & 0xFFFF,
            )
            recs.append((t, p, 0, 64, fr, 0, len(recs) * 120))
            t += 100
    return recs, [], {}


def read(corr, raws):
    """A poll's raw records into the correlator, as the session reads them."""
    if hasattr(corr, "records"):
        corr.records(raws, AREC)
        return
    hdr = AREC.size  # an older checkout: its session's loop
    for raw in raws:
        ts, pos, ln, caplen, cpu, point, d = AREC.unpack_from(raw, 0)
        corr.record(ts, point, d, ln, bytes(raw[hdr : hdr + caplen]), cpu, pos)


def run(recs, cts, nf, batch=4000):
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "pyinspect.db")
        target = TraceTarget("web", "abc", "/proc/1/ns/net", 1, [CTR])
        sid, pids = store.begin_trace(
            container_id="abc",
            container_name="web",
            started_ns=0,
            points=[{"name": p.name} for p in POINTS],
        )
        corr = F.Correlator(0, 20, target_name="web", target_netns=1)
        live = LiveText(POINTS, 20, "web")
        sink = StoreSink(store, sid, pids, target, 0)
        sink.segments([Segment(1, Path(d) / "seg-00001.pcapng", -1, 0, 0)])
        locate = lambda cpu, pos: (1, pos)  # noqa: E731 - every record is in the file
        lines = 0
        nf_of: dict[int, list] = {}  # chunk start -> its records' trace lines
        for n, hops in sorted(nf.items()):
            nf_of.setdefault(n - n % batch, []).extend(hops)
        # the ring's records: header (ts, stream position, length, captured length, cpu,
        # point, direction) and the packet's first bytes
        raws = [
            AREC.pack(t, pos, ln, len(fr), cpu, p, d) + fr for t, p, d, ln, fr, cpu, pos in recs
        ]
        t0 = time.thread_time()
        ci = 0
        for i in range(0, len(recs), batch):
            chunk = recs[i : i + batch]
            while ci < len(cts) and cts[ci]["ts_ns"] <= chunk[-1][0]:
                corr.conntrack(cts[ci])
                ci += 1
            read(corr, raws[i : i + batch])
            corr.nf_pending.extend(nf_of.get(i, ()))  # the poll reads the trace lines too
            s = corr.settle(chunk[-1][0] + 1)
            for j in s.journeys:
                lines += len(live.journey(j))
            sink.settled(s, locate)
        s = corr.settle(None)
        for j in s.journeys:
            lines += len(live.journey(j))
        sink.settled(s, locate)
        spent = time.thread_time() - t0
        store.close()
        return spent, lines, corr.fast_packets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=500)
    ap.add_argument("--bulk", type=int, default=50000, help="packets of the bulk flow")
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="runs of each workload; the least CPU is printed (the others "
        "carry other processes' interference)",
    )
    a = ap.parse_args(argv)
    for name, make in (("short", lambda: short(a.conns)), ("bulk", lambda: bulk(a.bulk))):
        best = None
        for _ in range(a.rounds):
            recs, cts, nf = make()
            spent, lines, fast = run(recs, cts, nf)
            best = spent if best is None else min(best, spent)
        spent = best
        print(
            f"{name:<6} {len(recs):>8} records  {spent * 1e6 / len(recs):6.1f} us/record  "
            f"({lines} live lines, {fast} records on the fast path)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
