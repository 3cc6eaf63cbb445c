"""The capture's evidence path with real packets, from the programs to the segment files.

Two test namespaces joined by a veth with a jumbo MTU (IPv6 off, so nothing but what the
test sends crosses it); frames of known bytes are sent through AF_PACKET sockets on either
end (an EtherType no stack answers), so every byte the file should hold is known. The
capture points are both veth ends in "all" mode.

What the programs write into the per-CPU perf buffers is a chain of pcapng blocks (EPB,
filler, EPB, ...): appended after a SegmentFiles header it must be a capture file that
tshark and pyinspect.pcapng read packet for packet, with the sent bytes, the right
interface and direction, and real timestamps. The books must balance against the file:
what it holds is `captured`, with `lost` (ring full) and `capped` (evidence off) beside it.
"""

import collections
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from pyinspect.errors import CorruptInputError
from pyinspect.pcap import pcapng
from pyinspect.probes import packets
from pyinspect.probes.netns import in_netns
from pyinspect.trace.evidence import EvidenceWriter, Interface, SegmentFiles

from testbed.waits import wait_for

pytestmark = pytest.mark.root

ETHERTYPE = 0x88B5  # IEEE local experimental: no stack in the namespaces takes it
MTU = 9000
MAXFRAME = MTU + 14
SEC = 1_000_000_000


class Wire:
    """veth eva0 (namespace a) <-> evb0 (namespace b)."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.ifindex = {
            n: int(ns.sh(f"cat /sys/class/net/{n}/ifindex").stdout)
            for n, ns in (("eva0", a), ("evb0", b))
        }
        self.mac = {
            n: bytes.fromhex(
                ns.sh(f"cat /sys/class/net/{n}/address").stdout.strip().replace(":", "")
            )
            for n, ns in (("eva0", a), ("evb0", b))
        }
        self.ns = {"eva0": a, "evb0": b}

    def point(self, ifname):
        ns = self.ns[ifname]
        return packets.CapturePoint(ifname, self.ifindex[ifname], ns.path, "all", f"{ifname} side")

    def interfaces(self, names, snaplen=packets.EV_MAXCAP):
        return [Interface(n, f"{n} side", snaplen) for n in names]

    def frames(self, src, sizes, rng):
        """Frames of the given total sizes (>= 14) from `src` to the other end."""
        dst = "evb0" if src == "eva0" else "eva0"
        head = self.mac[dst] + self.mac[src] + struct.pack("!H", ETHERTYPE)
        return [head + rng.randbytes(n - 14) for n in sizes]

    def send(self, src, frames, cpus=None):
        """Send `frames` from `src`; with `cpus`, the i-th frame from CPU cpus[i % n] (the
        sending thread is moved: egress, and the peer's ingress, run there)."""
        with in_netns(self.ns[src].path):  # the socket belongs to src's namespace
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        mask = os.sched_getaffinity(0)
        try:
            s.bind((src, 0))
            for i, f in enumerate(frames):
                if cpus:
                    os.sched_setaffinity(0, {cpus[i % len(cpus)]})
                assert s.send(f) == len(f)
        finally:
            os.sched_setaffinity(0, mask)
            s.close()


@pytest.fixture
def wire(make_netns):
    a, b = make_netns("evp-a"), make_netns("evp-b")
    for ns in (a, b):
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
    a.sh(
        f"ip link add eva0 mtu {MTU} type veth peer name evb0 mtu {MTU} netns {b.name} && "
        "ip link set eva0 up"
    )
    b.sh("ip link set evb0 up")
    return Wire(a, b)


class Drained:
    """What `drain` wrote: per chunk (cpu, segment, file offset, bytes, whether its range
    crossed the ring's end)."""

    def __init__(self):
        self.chunks = []
        self.ends = {}

    def cpu_at(self, seq, offset):
        for cpu, s, off, size, _ in self.chunks:
            if s == seq and off <= offset < off + size:
                return cpu
        raise AssertionError(f"no chunk holds offset {offset} of segment {seq}")


def drain(cap, files, into=None, timeout=5.0):
    """Write the chunks the capture has into `files` until every byte the programs
    produced is written (PacketCapture.produced() against the chunks' ends)."""
    into = into or Drained()

    def done():
        for ch in cap.chunks():
            size = sum(len(p) for p in ch.parts)
            seq, off = files.write(ch.parts, size)
            ring_size = next(r.size for r in cap.rings if r.cpu == ch.cpu)
            wraps = ch.start % ring_size + (ch.end - ch.start) > ring_size
            into.chunks.append((ch.cpu, seq, off, size, wraps))
            into.ends[ch.cpu] = ch.end
            cap.consumed(ch)
        return all(into.ends.get(cpu, 0) == n for cpu, n in cap.produced().items())

    wait_for(done, timeout, 0.02, "the evidence written")
    return into


def wait_seen(cap, want, timeout=5.0):
    """Wait until each point's `seen` is want[point]; the counters then."""
    wait_for(
        lambda: {i: c.seen for i, c in cap.counters().items()} == want,
        timeout,
        0.02,
        f"seen == {want} (last {cap.counters()})",
    )
    return cap.counters()


def tshark_rows(path, *fields):
    """tshark -T fields rows of a capture; (rows, returncode, stderr)."""
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    return [ln.split("|") for ln in proc.stdout.splitlines()], proc.returncode, proc.stderr


TSHARK_FIELDS = (
    "frame.interface_id",
    "frame.packet_flags_direction",
    "frame.len",
    "frame.cap_len",
    "frame.time_epoch",
    "eth.dst",
    "eth.src",
    "eth.type",
    "data.data",
)
DIRS = {1: "in", 2: "out"}


def tshark_packets(path):
    """(interface id, direction, frame bytes, ts_ns) per packet as tshark reads them; the
    frame is put back together from the Ethernet fields and the data after them."""
    if not shutil.which("tshark"):
        pytest.skip("tshark is not installed")
    rows, rc, err = tshark_rows(path, *TSHARK_FIELDS)
    assert rc == 0, err
    out = []
    for if_id, flags, ln, caplen, ts, dst, src, etype, data in rows:
        frame = (
            bytes.fromhex(dst.replace(":", ""))
            + bytes.fromhex(src.replace(":", ""))
            + struct.pack("!H", int(etype, 0))
            + bytes.fromhex(data.replace(":", ""))
        )
        assert int(ln) == int(caplen) == len(frame), (ln, caplen, len(frame))
        sec, _, frac = ts.partition(".")
        out.append(
            (
                int(if_id),
                DIRS.get(int(flags, 0) & 3),
                frame,
                int(sec) * SEC + int(frac.ljust(9, "0")[:9]),
            )
        )
    return out


def multiset(items):
    return collections.Counter(items)


def test_evidence_chain_is_a_capture_file_with_every_packet(wire, tmp_path):
    """Mixed sizes (every length mod 8 among the small ones, full jumbo frames) both ways:
    the file holds each sent frame exactly, at both veth ends, with its direction."""
    rng = random.Random(17)
    small = list(range(14, 23)) + [60, 61, 1514, 1515, MAXFRAME]
    ab_sizes = small + [rng.randint(14, MAXFRAME) for _ in range(100)]
    rng.shuffle(ab_sizes)
    ab = wire.frames("eva0", ab_sizes, rng)
    ba = wire.frames("evb0", small[:5] + [rng.randint(14, MAXFRAME) for _ in range(10)], rng)
    names = ["eva0", "evb0"]
    cpus = sorted(os.sched_getaffinity(0))[:4]  # several CPUs' streams in one file
    files = SegmentFiles(tmp_path, wire.interfaces(names), segment_bytes=1 << 30)
    t0 = time.time_ns()
    with packets.PacketCapture([wire.point(n) for n in names], packets.Target(), ring_mb=4) as cap:
        wire.send("eva0", ab, cpus)
        wire.send("evb0", ba, cpus)
        counts = wait_seen(cap, {0: len(ab) + len(ba), 1: len(ab) + len(ba)})
        written = drain(cap, files)
    files.close()
    t1 = time.time_ns()
    assert [(c.lost, c.capped) for c in counts.values()] == [(0, 0), (0, 0)], counts
    assert len(files.segments) == 1
    path = files.segments[0].path

    want = multiset(
        [(0, "out", f) for f in ab]
        + [(0, "in", f) for f in ba]
        + [(1, "in", f) for f in ab]
        + [(1, "out", f) for f in ba]
    )
    ours = list(pcapng.read_packets(path))
    assert multiset((p.interface.index, p.direction, p.data) for p in ours) == want
    assert all(p.orig_len == len(p.data) for p in ours)
    assert sorted({(p.interface.index, p.interface.name) for p in ours}) == [
        (0, "eva0"),
        (1, "evb0"),
    ]
    theirs = tshark_packets(path)
    assert multiset((i, d, f) for i, d, f, _ in theirs) == want
    assert [ts for *_, ts in theirs] == [p.ts_ns for p in ours]

    # timestamps: now (CLOCK_REALTIME), and in order within each CPU's run of blocks
    assert all(t0 - SEC <= p.ts_ns <= t1 + SEC for p in ours), (t0, t1)
    per_cpu = collections.defaultdict(list)
    for p in ours:
        per_cpu[written.cpu_at(1, p.offset)].append(p.ts_ns)
    for cpu, stamps in per_cpu.items():
        assert stamps == sorted(stamps), f"CPU {cpu}: timestamps go back"
    assert len(per_cpu) == len(cpus), f"packets from CPUs {sorted(per_cpu)}, sent on {cpus}"


def test_a_capture_program_the_kernel_cannot_take_is_one_clear_error(wire, tmp_path, monkeypatch):
    """When the program cannot be loaded (as on a kernel without mmappable arrays, here a
    cached object whose evidence map has another name), start() says so in one error
    that names the capture, with what the machine's tc support is, and leaves nothing
    attached: the trace cannot run without its capture."""
    from pyinspect.errors import UnavailableError
    from pyinspect.probes import bpfobj

    data = bpfobj.compile_object(packets.SRC).read_bytes()
    monkeypatch.setenv(bpfobj.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    assert data.count(b"evbuf\0") >= 1
    bpfobj.object_path(packets.SRC).write_bytes(data.replace(b"evbuf\0", b"evbuX\0"))
    cap = packets.PacketCapture([wire.point("eva0")], packets.Target(), ring_mb=1)
    with pytest.raises(UnavailableError) as err:
        cap.start()
    assert "cannot load the tc capture program" in str(err.value), err.value
    assert "evbuf" in str(err.value), err.value
    assert cap.obj is None and cap.links == [] and cap.rings == [] and cap.areas is None
    assert (
        packets.tcx_program_ids(wire.point("eva0").ifindex, "ingress", wire.point("eva0").netns)
        == []
    )


def test_ring_size_default_and_asked_for(wire):
    """Unasked, each CPU's ring is evring.default_ring_bytes(): a power of two between 4
    and 64 MiB within 1/128 of memory over the CPUs; `-B` (ring_mb) sets it, rounded up
    to a power of two pages. The kernel's maps have that size."""
    from pyinspect.probes import evring

    size = evring.default_ring_bytes()
    with open("/proc/meminfo") as f:
        mem = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    share = mem // 128 // len(evring.cpu_list("online"))
    assert size & (size - 1) == 0 and 4 << 20 <= size <= 64 << 20
    assert size <= share or size == 4 << 20
    assert size * 2 > min(share, 64 << 20)
    for asked, want in ((None, size), (3000 / 1024, 4 << 20), (0.5, 512 << 10)):
        with packets.PacketCapture([wire.point("eva0")], packets.Target(), ring_mb=asked) as cap:
            assert cap.ring_bytes == want
            assert {r.size for r in cap.rings} == {want}


def test_full_ring_counts_lost_and_keeps_a_valid_chain(wire, tmp_path):
    """A one-page evidence ring and a reader that comes late: what did not fit is `lost`,
    what did is written whole (the chain never broken by the kernel's own lost records),
    and once consumed the space is used again, also across the ring's end."""
    rng = random.Random(5)
    files = SegmentFiles(tmp_path, wire.interfaces(["eva0"]), segment_bytes=1 << 30)
    sent = []
    wrapped = 0
    with packets.PacketCapture([wire.point("eva0")], packets.Target(), ring_mb=0) as cap:
        assert cap.ring_bytes == os.sysconf("SC_PAGE_SIZE")
        written = Drained()
        for rnd in range(6):
            batch = wire.frames("eva0", [rng.randint(300, 1500) for _ in range(40)], rng)
            wire.send("eva0", batch)
            sent += batch
            c = wait_seen(cap, {0: len(sent)})[0]
            drain(cap, files, written)
            assert c.lost > 0 and c.capped == 0, (rnd, c)
        wrapped = sum(1 for *_, wraps in written.chunks if wraps)
        counts = cap.counters()[0]
    files.close()
    assert counts.seen == len(sent)
    assert 0 < counts.lost < counts.seen, counts
    assert wrapped, "no chunk crossed the ring's end: the wrap is not tested"
    path = files.segments[0].path
    ours = list(pcapng.read_packets(path))
    assert len(ours) == counts.captured == counts.seen - counts.lost
    # the packets kept are sent frames, each whole
    assert not multiset(p.data for p in ours) - multiset(sent)
    theirs = tshark_packets(path)
    assert len(theirs) == counts.captured
    assert [f for _, _, f, _ in theirs] == [p.data for p in ours]


def test_evidence_off_counts_capped_and_the_file_holds_exactly_captured(wire, tmp_path):
    rng = random.Random(9)
    files = SegmentFiles(tmp_path, wire.interfaces(["eva0"]), segment_bytes=1 << 30)
    first = wire.frames("eva0", [rng.randint(14, MAXFRAME) for _ in range(12)], rng)
    off = wire.frames("eva0", [rng.randint(14, MAXFRAME) for _ in range(7)], rng)
    again = wire.frames("eva0", [rng.randint(14, MAXFRAME) for _ in range(3)], rng)
    with packets.PacketCapture([wire.point("eva0")], packets.Target(), ring_mb=1) as cap:
        wire.send("eva0", first)
        wait_seen(cap, {0: len(first)})
        written = drain(cap, files)
        cap.set_evidence(False)
        wire.send("eva0", off)
        c = wait_seen(cap, {0: len(first) + len(off)})[0]
        drain(cap, files, written)
        assert (c.capped, c.lost) == (len(off), 0), c
        cap.set_evidence(True)
        wire.send("eva0", again)
        c = wait_seen(cap, {0: len(first) + len(off) + len(again)})[0]
        drain(cap, files, written)
        records = [packets.parse(r) for r in cap.read()]
    files.close()
    assert (c.capped, c.lost, c.captured) == (len(off), 0, len(first) + len(again)), c
    ours = list(pcapng.read_packets(files.segments[0].path))
    assert [p.data for p in ours] == first + again
    assert len(tshark_packets(files.segments[0].path)) == c.captured
    # the analysis path does not depend on the evidence: every packet has its record,
    # those without evidence (stream_pos -1) with the bytes copied from the packet
    assert [r.data for r in records] == [f[: packets.ASNAP] for f in first + off + again]
    assert [r.stream_pos >= 0 for r in records] == [True] * len(first) + [False] * len(off) + [
        True
    ] * len(again)


def test_writer_rotates_segments_and_locates_each_analysed_packet(wire, tmp_path):
    rng = random.Random(23)
    names = ["eva0", "evb0"]
    files = SegmentFiles(tmp_path, wire.interfaces(names), segment_bytes=64 << 10)
    cap = packets.PacketCapture([wire.point(n) for n in names], packets.Target(), ring_mb=1)
    sent = []
    with cap:
        writer = EvidenceWriter(cap, files, interval=0.02).start()
        try:
            for _ in range(6):  # rounds the writer drains one by one
                batch = wire.frames("eva0", [rng.randint(14, MAXFRAME) for _ in range(20)], rng)
                wire.send("eva0", batch)
                sent += batch
                time.sleep(0.1)
            counts = wait_seen(cap, {0: len(sent), 1: len(sent)})
            cap.stop()
        finally:
            writer.stop()
        records = [packets.parse(r) for r in cap.read()]
        counts = cap.counters()
    assert writer.error is None
    assert writer.capped_at is None
    segments = writer.segments()
    assert len(segments) >= 3, segments
    assert [s.seq for s in segments] == list(range(1, len(segments) + 1))
    chunks_in = collections.Counter(p.seq for placed in writer.placed.values() for p in placed)
    total = 0
    for seg in segments:
        assert seg.size == seg.path.stat().st_size
        assert seg.ended_ns is not None
        pk = tshark_packets(seg.path)
        assert len(pk) == len(list(pcapng.read_packets(seg.path)))
        total += len(pk)
        # rotation: a segment outgrows segment_bytes only with a single chunk in it
        assert seg.size <= files.segment_bytes or chunks_in[seg.seq] == 1, seg
    captured = sum(c.captured for c in counts.values())
    assert total == captured == 2 * len(sent), (total, counts)
    assert writer.bytes + sum(len(files.header()) for _ in segments) == sum(
        s.size for s in segments
    )

    assert len(records) == 2 * len(sent)
    opened = {s.seq: pcapng.Segment(s.path) for s in segments}
    try:
        for seg in opened.values():
            seg.keys()
        for r in records:
            seq, offset = writer.locate(r.cpu, r.stream_pos)
            p = opened[seq].packet_at(offset)
            assert p.data[: len(r.data)] == r.data
            assert (p.ts_ns, p.interface.index, p.direction, p.orig_len) == (
                r.ts_ns,
                r.point,
                r.direction,
                r.len,
            )
    finally:
        for seg in opened.values():
            seg.close()
    assert multiset(r.data for r in records if r.point == 1) == multiset(
        f[: packets.ASNAP] for f in sent
    )


class _SlowLaneZero(SegmentFiles):
    """Segment files whose lane 0 writes slowly; notes the first packet's timestamp of
    each write as the writes finish."""

    def write(self, parts, nbytes, lane=0):
        if lane == 0:
            time.sleep(0.15)
        out = super().write(parts, nbytes, lane)
        first = bytes(parts[0][:20])
        if struct.unpack_from("<I", first)[0] == 6:
            hi, lo = struct.unpack_from("<II", first, 12)
            self.finished.append((hi << 32) | lo)
        return out


def test_writers_share_one_cpu_stream_and_give_it_back_in_order(wire, tmp_path):
    """Several writer threads take ranges of one CPU's stream; a slow one finishes after
    a later range is written by another, and the space still goes back in stream order:
    every frame is in the files exactly once, none lost."""
    rng = random.Random(37)
    files = _SlowLaneZero(tmp_path, wire.interfaces(["eva0"]), segment_bytes=1 << 30)
    files.finished = []
    cpu = sorted(os.sched_getaffinity(0))[:1]
    sent = []
    with packets.PacketCapture([wire.point("eva0")], packets.Target(), ring_mb=1) as cap:
        writer = EvidenceWriter(cap, files, interval=0.01).start()
        try:
            for _ in range(12):
                batch = wire.frames("eva0", [rng.randint(600, 1500) for _ in range(10)], rng)
                wire.send("eva0", batch, cpu)
                sent += batch
                time.sleep(0.03)
            counts = wait_seen(cap, {0: len(sent)})
            deadline = time.monotonic() + 10
            while writer.bytes < sum(len(f) for f in sent) and time.monotonic() < deadline:
                time.sleep(0.05)
            cap.stop()
        finally:
            writer.stop()
    assert writer.error is None
    assert (counts[0].lost, counts[0].capped) == (0, 0), counts
    held = [p.data for seg in writer.segments() for p in pcapng.read_packets(seg.path)]
    assert multiset(held) == multiset(sent)
    done = files.finished
    assert any(b < a for a, b in zip(done, done[1:], strict=False)), "no range out of order"


def test_writer_size_cap_keeps_captured_equal_to_the_file(wire, tmp_path):
    """At max_bytes the writer turns evidence off: what follows is `capped`, and what the
    buffers held at that moment (here on every CPU, the cap crossed by the first chunk) is
    still written, so the files hold exactly `captured`. drain() is called by hand."""
    rng = random.Random(29)
    cpus = sorted(os.sched_getaffinity(0))[:4]
    files = SegmentFiles(
        tmp_path, wire.interfaces(["eva0"]), segment_bytes=64 << 10, max_bytes=4096
    )
    before = wire.frames("eva0", [rng.randint(3000, MAXFRAME) for _ in range(12)], rng)
    after = wire.frames("eva0", [rng.randint(14, MAXFRAME) for _ in range(5)], rng)
    with packets.PacketCapture([wire.point("eva0")], packets.Target(), ring_mb=1) as cap:
        writer = EvidenceWriter(cap, files)  # not started: drain() by hand
        wire.send("eva0", before, cpus)
        wait_seen(cap, {0: len(before)})
        writer.drain()
        assert writer.capped_at is not None
        wire.send("eva0", after, cpus)
        wait_seen(cap, {0: len(before) + len(after)})
        writer.drain()
        cap.stop()
        writer.stop()
        c = cap.counters()[0]
    assert (c.capped, c.lost, c.captured) == (len(after), 0, len(before)), c
    held = [p.data for s in writer.segments() for p in pcapng.read_packets(s.path)]
    assert multiset(held) == multiset(before)


def _blocks(path):
    """(offset, type, length) of every block in a pcapng file."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        btype, ln = struct.unpack_from("<II", data, pos)
        out.append((pos, btype, ln))
        pos += ln
    return out


def test_reader_and_tshark_read_every_block_before_a_truncation(wire, tmp_path):
    """A writer killed mid-write leaves a segment that ends inside a block: everything
    before that block is read, by tshark and by our reader."""
    rng = random.Random(31)
    files = SegmentFiles(tmp_path, wire.interfaces(["eva0"]), segment_bytes=1 << 30)
    sent = wire.frames("eva0", [rng.randint(14, 3000) for _ in range(20)], rng)
    with packets.PacketCapture([wire.point("eva0")], packets.Target(), ring_mb=1) as cap:
        wire.send("eva0", sent)
        wait_seen(cap, {0: len(sent)})
        drain(cap, files)
    files.close()
    whole = files.segments[0].path
    data = whole.read_bytes()
    blocks = _blocks(whole)
    epbs = [(off, ln) for off, t, ln in blocks if t == 6]
    assert len(epbs) == len(sent)
    assert not [t for _, t, _ in blocks if t == packets.FILLER_TYPE], "a copy failed"
    last, last_len = epbs[-1]
    cuts = {
        "in the last block's header": last + 4,
        "in the last packet's data": last + 40,
        "before the last block's trailer": last + last_len - 2,
    }
    for what, cut in cuts.items():
        path = tmp_path / "cut.pcapng"
        path.write_bytes(data[:cut])
        want = [f for f, (off, ln) in zip(sent, epbs, strict=True) if off + ln <= cut]
        assert len(want) < len(sent), what
        got = [p.data for p in pcapng.read_packets(path, partial_ok=True)]
        assert got == want, what
        with pytest.raises(CorruptInputError):
            list(pcapng.read_packets(path))
        with pcapng.Segment(path) as seg:
            assert len(seg.keys()) == len(want), what
            assert seg.truncated_at is not None
        rows, rc, err = tshark_rows(path, "eth.src", "frame.len")
        assert len(rows) == len(want), (what, rc, err)
        assert [int(ln) for _, ln in rows] == [len(f) for f in want], what
        assert "cut short" in err, (what, err)


CHILD = r"""
import sys, time
from pathlib import Path
from pyinspect.probes import packets
from pyinspect.trace.evidence import EvidenceWriter, Interface, SegmentFiles
ns, ifindex, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
point = packets.CapturePoint("eva0", ifindex, ns, "all", "eva0 side")
cap = packets.PacketCapture([point], packets.Target(), ring_mb=1).start()
files = SegmentFiles(out, [Interface("eva0", "eva0 side", cap.snaplen)])
EvidenceWriter(cap, files, interval=0.02).start()
print(cap.attach_kind, flush=True)
time.sleep(300)
"""


def test_kill_9_leaves_no_program_and_a_readable_segment(wire, tmp_path):
    """A trace killed with SIGKILL: its tcx links go with its fds (nothing left attached),
    and the segment it was writing holds every packet written so far."""
    rng = random.Random(41)
    ifindex = wire.ifindex["eva0"]
    out = tmp_path / "seg"
    out.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, wire.a.path, str(ifindex), out],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, packets.ATTACH_ENV: "tcx"},
    )
    try:
        kind = child.stdout.readline().strip()
        assert kind == "tcx", child.stderr.read() if child.poll() is not None else kind
        for side in ("ingress", "egress"):
            assert packets.tcx_program_ids(ifindex, side, wire.a.path), side
        sent = wire.frames("eva0", [rng.randint(14, MAXFRAME) for _ in range(30)], rng)
        wire.send("eva0", sent)
        seg = out / "seg-00001.pcapng"
        wait_for(
            lambda: (
                seg.exists() and len(list(pcapng.read_packets(seg, partial_ok=True))) == len(sent)
            ),
            10,
            0.05,
            "the packets in the segment",
        )
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    # the kernel frees closed links from a work queue: gone soon after, not at once
    wait_for(
        lambda: (
            not any(
                packets.tcx_program_ids(ifindex, side, wire.a.path)
                for side in ("ingress", "egress")
            )
        ),
        10,
        0.05,
        "no tcx program left on eva0",
    )
    assert [p.data for p in pcapng.read_packets(seg)] == sent
    assert [f for _, _, f, _ in tshark_packets(seg)] == sent
