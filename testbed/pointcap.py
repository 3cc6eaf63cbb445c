"""Capture points side by side with tcpdump: one tcpdump per point, a capture file's packets
counted per interface, and the interfaces' own packet counters.

Used by tests/test_evidence.py and bench/evidence.py (from testbed/, shared by both).
Everything runs in named network namespaces the caller made (`/run/netns/NAME`); nothing
here touches the machine's own.
"""

import collections
import mmap
import os
import re
import select
import signal
import struct
import subprocess
import time
from typing import NamedTuple

SNAPLEN = 262144  # tcpdump's default: whole packets


class Point(NamedTuple):
    """One capture point: `name` is its pcapng interface name in a trace's file (as
    pyinspect.pcap_export.point_name gives it), `iface` its interface in netns `ns`."""

    name: str
    ns: str
    iface: str
    role: str


def trace_points(host_ns, uplink, bridge, veth, ctr_ns, container, ctr_iface="eth0"):
    """The four points of a container behind a bridge: uplink, bridge, host veth, eth0."""
    from pyinspect.pcap.export import point_name

    return [
        Point(point_name(uplink, "uplink", container), host_ns, uplink, "uplink"),
        Point(point_name(bridge, "bridge", container), host_ns, bridge, "bridge"),
        Point(point_name(veth, "veth", container), host_ns, veth, "veth"),
        Point(point_name(ctr_iface, "container", container), ctr_ns, ctr_iface, "container"),
    ]


def in_ns(ns, *argv):
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


class Tcpdump:
    """`tcpdump -i IFACE -w PATH` in netns `ns` (whole packets, no promiscuous mode so the
    bridge forwards as it would without it, nanosecond timestamps); ready once it printed
    "listening on". `stop()` -> {"captured", "received", "dropped"} from its exit report.

    Without `immediate` tcpdump reads the kernel's ring a block at a time, and a block is
    handed over when full or after 1 s: stop it 1 s or more after the last packet, or that
    block is lost ("received by filter" > "captured")."""

    def __init__(self, ns, iface, path, snaplen=SNAPLEN, immediate=False, extra=(), timeout=10):
        self.ns, self.iface, self.path = ns, iface, str(path)
        self.argv = in_ns(
            ns,
            "tcpdump",
            "-i",
            iface,
            "-w",
            self.path,
            "-s",
            str(snaplen),
            "-p",
            "-n",
            "-Z",
            "root",
            "--time-stamp-precision=nano",
            *(["--immediate-mode"] if immediate else []),
            *extra,
        )
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.err = b""
        deadline = time.monotonic() + timeout
        while b"listening on" not in self.err:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(
                    f"tcpdump on {iface} in {ns} did not start: {self.err.decode(errors='replace')}"
                )
            if select.select([self.proc.stderr], [], [], left)[0]:
                chunk = self.proc.stderr.read1(4096)
                if not chunk:
                    continue
                self.err += chunk

    def stop(self, timeout=120):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            rest = self.proc.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        text = (self.err + rest).decode(errors="replace")

        def num(what):
            m = re.search(rf"(\d+) packets? {what}", text)
            return int(m.group(1)) if m else None

        return {
            "captured": num("captured"),
            "received": num("received by filter"),
            "dropped": num("dropped by kernel"),
        }

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


class Tcpdumps:
    """One Tcpdump per point, all listening when the constructor returns; `stop()` ->
    {point name: report}. A failed start stops the ones already running."""

    def __init__(self, points, tmpdir, tag="", snaplen=SNAPLEN, immediate=False):
        self.points = list(points)
        self.paths = {}
        self.running = []
        try:
            for i, p in enumerate(self.points):
                path = f"{tmpdir}/tcpdump{tag}-{i}-{p.iface}.pcap"
                self.running.append((p, Tcpdump(p.ns, p.iface, path, snaplen, immediate)))
                self.paths[p.name] = path
        except BaseException:
            self.kill()
            raise

    def stop(self):
        reports = {}
        try:
            for p, t in self.running:
                reports[p.name] = t.stop()
        finally:
            self.kill()
        return reports

    def kill(self):
        for _, t in self.running:
            t.kill()
        self.running = []


# -- reading captures fast (counting only; pyinspect.pcapng.read_packets gives the bytes) ---
_PCAP_MAGIC = {0xA1B2C3D4: 1000, 0xA1B23C4D: 1}  # ns per timestamp fraction unit


def count_packets(path, pcap_name=None, t0_ns=None, t1_ns=None):
    """Counter {interface name: packets} of a pcapng (per interface) or pcap (all under
    `pcap_name`) file, only packets with t0_ns <= timestamp <= t1_ns when given. Walks the
    block headers through mmap and never touches packet bytes: millions of packets in
    seconds, so the benches can count what the tools wrote."""
    counts = collections.Counter()
    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            return counts
    with mm:
        lo = t0_ns if t0_ns is not None else -1
        hi = t1_ns if t1_ns is not None else 1 << 80
        timed = t0_ns is not None or t1_ns is not None
        if len(mm) >= 4 and struct.unpack_from("<I", mm, 0)[0] == 0x0A0D0D0A:
            _count_pcapng(mm, counts, timed, lo, hi)
        else:
            _count_pcap(mm, counts, pcap_name, timed, lo, hi)
    return counts


def _count_pcap(mm, counts, name, timed, lo, hi):
    if len(mm) < 24:
        return
    for e in "<>":
        magic = struct.unpack_from(e + "I", mm, 0)[0]
        if magic in _PCAP_MAGIC:
            unit = _PCAP_MAGIC[magic]
            break
    else:
        raise ValueError("not a pcap or pcapng file")
    rec = struct.Struct(e + "IIII")
    off, end, n = 24, len(mm), 0
    while off + 16 <= end:
        sec, frac, caplen, _orig = rec.unpack_from(mm, off)
        if off + 16 + caplen > end:
            break  # a record cut short (the writer was killed)
        if not timed or lo <= sec * 1_000_000_000 + frac * unit <= hi:
            n += 1
        off += 16 + caplen
    counts[name] += n


def _count_pcapng(mm, counts, timed, lo, hi):
    end = len(mm)
    off = 0
    e = "<"
    names, scale = [], []  # per interface of the current section
    per_if = collections.Counter()
    hdr = epb = None
    while off + 12 <= end:
        btype = struct.unpack_from(e + "I", mm, off)[0]
        if btype == 0x0A0D0D0A:  # section header: byte order, interfaces start again
            e = "<" if struct.unpack_from("<I", mm, off + 8)[0] == 0x1A2B3C4D else ">"
            hdr, epb = struct.Struct(e + "II"), struct.Struct(e + "IIII")
            for i, c in per_if.items():
                counts[names[i]] += c
            per_if.clear()
            names, scale = [], []
        btype, blen = hdr.unpack_from(mm, off)
        if blen < 12 or off + blen > end:
            break  # cut short
        if btype == 6:  # enhanced packet block
            if_id, ts_hi, ts_lo, _caplen = epb.unpack_from(mm, off + 8)
            if not timed or lo <= ((ts_hi << 32) | ts_lo) * scale[if_id] <= hi:
                per_if[if_id] += 1
        elif btype == 3:  # simple packet block: interface 0, no timestamp
            if not timed:
                per_if[0] += 1
        elif btype == 1:  # interface description block
            name, res = f"#{len(names)}", 1000  # default resolution: microseconds
            o, stop = off + 16, off + blen - 4
            while o + 4 <= stop:
                code, ln = struct.unpack_from(e + "HH", mm, o)
                if code == 0:
                    break
                val = mm[o + 4 : o + 4 + ln]
                if code == 2:
                    name = val.decode(errors="replace")
                elif code == 9:
                    r = val[0]
                    res = (10**9 // 10**r) if not r & 0x80 else 10**9 / 2 ** (r & 0x7F)
                o += 4 + ((ln + 3) & ~3)
            names.append(name)
            scale.append(res)
        off += blen
    for i, c in per_if.items():
        counts[names[i]] += c


# -- interface counters -----------------------------------------------------------------
class Counters:
    """The packet counters of interfaces in named netns, read from /proc/PID/net/dev of a
    `sleep` kept in each namespace (no process start per reading: a reading takes ~0.1 ms,
    so its time is known). `read()` -> {(ns, iface): (rx, tx, rx_drop, tx_drop)}."""

    def __init__(self, namespaces):
        self.holders = {}
        try:
            for ns in dict.fromkeys(namespaces):
                self.holders[ns] = subprocess.Popen(in_ns(ns, "sleep", "infinity"))
            for ns, p in self.holders.items():  # nsenter execs sleep: same pid, once in
                want = f"/run/netns/{ns}"
                deadline = time.monotonic() + 5
                while _netns_ino(p.pid) != _ino(want):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no process in {ns}")
                    time.sleep(0.01)
        except BaseException:
            self.close()
            raise

    def read(self):
        out = {}
        for ns, p in self.holders.items():
            with open(f"/proc/{p.pid}/net/dev") as f:
                for line in f.readlines()[2:]:
                    name, rest = line.split(":", 1)
                    v = rest.split()
                    out[(ns, name.strip())] = (int(v[1]), int(v[9]), int(v[3]), int(v[11]))
        return out

    def close(self):
        for p in self.holders.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        self.holders = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ino(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _netns_ino(pid):
    return _ino(f"/proc/{pid}/ns/net")


def delta(before, after, point):
    """Packets that crossed `point` between two Counters readings: rx + tx."""
    a, b = before[(point.ns, point.iface)], after[(point.ns, point.iface)]
    return (b[0] - a[0]) + (b[1] - a[1])
