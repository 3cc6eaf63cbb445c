"""The evidence path: every captured packet from the kernel into pcapng segment files.

The capture programs lay each packet out as a pcapng block in per-CPU rings
(probes/packets.bpf.c, probes/evring.py); `EvidenceWriter` runs MAX_WRITERS writer
threads, each with its own segment file, that sleep until a CPU has produced another
quarter of its ring (or `interval` passes), take what it has produced since the last
taker, append it to their file as it is, and give the space back in stream order. No
packet passes through Python one by one, and the files do not depend on the analysis
budget. Segment files rotate at `segment_bytes` (like dumpcap's `-b filesize:`); at
`max_bytes` in all the programs stop writing evidence and count what follows as
`capped` per point, and `capped_at` says when.

`locate(cpu, stream_pos)` turns an analysis record's evidence position into
(segment id, byte offset of its EPB), which the store's packet index keeps.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import io
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..pcap.pcapng import PcapNgWriter

SEGMENT_BYTES = 128 << 20
LOCATE_CHUNKS = 8192  # chunk positions remembered per CPU for locate()
MAX_WRITERS = 4  # writer threads (each with its own file) at most


@dataclass
class Interface:
    name: str
    description: str
    snaplen: int


@dataclass
class Segment:
    seq: int
    path: Path
    fd: int
    size: int
    started_ns: int
    ended_ns: int | None = None


@dataclass
class _Placed:
    start: int  # stream position of the chunk's first record
    end: int
    seq: int  # segment number
    offset: int  # file offset of the chunk's first EPB


def section_header(interfaces: list[Interface]) -> bytes:
    """A pcapng section header and one interface block per capture point, in order."""
    buf = io.BytesIO()
    w = PcapNgWriter(buf)
    for i in interfaces:
        w.add_interface(i.name, i.description, snaplen=i.snaplen)
    w.flush()
    return buf.getvalue()


# one write() call's most: the page cache took multi-MiB writes from the rings at 2-3x the
# CPU a GiB of 256 KiB ones here (tcpdump writes a few KiB at a time)
WRITE_BYTES = 256 << 10


@dataclass
class SegmentFiles:
    """pcapng segment files in `directory`: each starts with a section header and one
    interface block per capture point (interface id == point index), then chunks.

    Each writer lane (a writer thread) appends to a file of its own, so lanes write in
    parallel; segment numbers are shared (1, 2, ... in the order files are opened) and
    `total` counts every lane. `segments` lists every file opened (the caller records
    them in the store)."""

    directory: Path
    interfaces: list[Interface]
    segment_bytes: int = SEGMENT_BYTES
    max_bytes: int = 0  # 0: no cap
    total: int = 0
    segments: list[Segment] = field(default_factory=list)
    _current: dict[int, Segment] = field(default_factory=dict)  # lane -> open file
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _header: bytes = b""

    def header(self) -> bytes:
        if not self._header:
            self._header = section_header(self.interfaces)
        return self._header

    def _open(self, lane: int) -> Segment:
        head = self.header()
        with self._lock:
            seq = len(self.segments) + 1
            path = self.directory / f"seg-{seq:05d}.pcapng"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            seg = Segment(seq, path, fd, 0, time.time_ns())
            self.segments.append(seg)
        os.write(fd, head)
        with self._lock:
            seg.size = len(head)
            self.total += len(head)
        self._current[lane] = seg
        return seg

    def write(self, parts, nbytes: int, lane: int = 0) -> tuple[int, int]:
        """Append whole blocks to `lane`'s file; returns (segment number, offset of the
        first byte). One thread per lane."""
        seg = self._current.get(lane)
        if seg is None:
            seg = self._open(lane)
        elif seg.size + nbytes > self.segment_bytes and seg.size > len(self.header()):
            self._close(lane, seg)
            seg = self._open(lane)
        offset = seg.size
        for part in parts:
            view = memoryview(part)
            while view:
                n = os.write(seg.fd, view[:WRITE_BYTES])
                view = view[n:]
        with self._lock:
            seg.size += nbytes
            self.total += nbytes
        return seg.seq, offset

    def over_cap(self) -> bool:
        return bool(self.max_bytes) and self.total >= self.max_bytes

    def snapshot(self) -> list[Segment]:
        """Copies of the segments so far (no fds), in segment order."""
        with self._lock:
            return [
                Segment(s.seq, s.path, -1, s.size, s.started_ns, s.ended_ns) for s in self.segments
            ]

    def _close(self, lane: int, seg: Segment) -> None:
        os.close(seg.fd)
        with self._lock:
            seg.ended_ns = time.time_ns()
        self._current.pop(lane, None)

    def close(self) -> None:
        for lane, seg in list(self._current.items()):
            self._close(lane, seg)


class EvidenceWriter:
    """Drains a started PacketCapture's evidence into SegmentFiles on MAX_WRITERS writer
    threads, each writing a file of its own, so the copies into the page cache run in
    parallel (as tcpdump runs a process per interface). Each thread takes what a CPU
    has produced since the last taker (a range of whole blocks), so several can write
    one CPU's stream at once; the ranges go back to the program in stream order."""

    def __init__(self, cap, files: SegmentFiles, interval: float = 0.05, writers: int = 0):
        self.cap = cap
        self.files = files
        self.interval = interval
        self.lock = threading.Lock()
        self.placed: dict[int, list[_Placed]] = {}
        self.starts: dict[int, list[int]] = {}
        self.capped_at: int | None = None
        self.error: str | None = None
        self.bytes = 0
        self._stop = threading.Event()
        self.cpus = cap.evidence_cpus()
        n = max(1, writers or MAX_WRITERS)
        self._claim = threading.Lock()
        self._claimed: dict[int, int] = {}  # cpu -> where the next taker starts
        self._inflight: dict[int, collections.deque] = {}  # cpu -> [start, end, written]
        self._threads = [
            threading.Thread(
                target=self._run, args=(i,), daemon=True, name=f"pyinspect-evidence-{i}"
            )
            for i in range(n)
        ]

    def start(self) -> EvidenceWriter:
        for t in self._threads:
            t.start()
        return self

    def _run(self, lane: int) -> None:
        # the kernel wakes a writer once a CPU has produced another quarter of its ring;
        # a full ring produces nothing (and wakes nobody), so while drains keep finding
        # a sixteenth of a ring or more the writer drains again at once instead of waiting
        busy_bytes = max(1, getattr(self.cap, "ring_bytes", 0) // 16)
        busy = False
        while not self._stop.is_set():
            if not busy:
                self.cap.wait(self.interval)
            try:
                busy = self._take(lane) >= busy_bytes
            except Exception as exc:  # noqa: BLE001 - reported in the summary
                self.error = f"{type(exc).__name__}: {exc}"
                return

    def _take(self, lane: int) -> int:
        """Write, to this lane's file, what each CPU has produced since the last taker;
        returns bytes written."""
        n = 0
        for cpu in self.cpus:
            with self._claim:
                start = self._claimed.get(cpu)
                chunk = self.cap.chunk(cpu, self.cap.tail(cpu) if start is None else start)
                if chunk is None:
                    continue
                self._claimed[cpu] = chunk.end
                entry = [chunk.start, chunk.end, False]
                self._inflight.setdefault(cpu, collections.deque()).append(entry)
            size = sum(len(p) for p in chunk.parts)
            try:
                seq, offset = self.files.write(chunk.parts, size, lane)
            finally:
                for v in chunk.parts:
                    v.release()
            with self._claim:  # give back what is written before the first range that is not
                entry[2] = True
                q = self._inflight[cpu]
                upto = None
                while q and q[0][2]:
                    upto = q.popleft()[1]
                if upto is not None:
                    self.cap.give_back(cpu, upto)
            self._placed(chunk, seq, offset, size)
            n += size
        return n

    def drain(self) -> int:
        """Write everything the programs have produced by now (a writer thread's take, to
        the first lane's file); returns bytes written."""
        return self._take(0)

    def _placed(self, chunk, seq: int, offset: int, size: int) -> None:
        """Where a written chunk went (for locate()), in stream order; the size cap."""
        with self.lock:
            self.bytes += size
            placed = self.placed.setdefault(chunk.cpu, [])
            starts = self.starts.setdefault(chunk.cpu, [])
            i = bisect.bisect_left(starts, chunk.start)  # writers finish out of order
            placed.insert(i, _Placed(chunk.start, chunk.end, seq, offset))
            starts.insert(i, chunk.start)
            if len(placed) > LOCATE_CHUNKS:
                del placed[: LOCATE_CHUNKS // 2]
                del starts[: LOCATE_CHUNKS // 2]
            if self.capped_at is None and self.files.over_cap():
                # what is already in the buffers is still written: `captured` stays
                # exactly what the file holds
                self.capped_at = time.time_ns()
                self.cap.set_evidence(False)

    def segments(self) -> list[Segment]:
        """The segment files so far (copies: the writer threads keep changing theirs)."""
        return self.files.snapshot()

    def locate_many(self):
        """A locate() over a snapshot of what is written now: one lock for a batch."""
        with self.lock:
            snap = {cpu: (list(self.starts[cpu]), list(p)) for cpu, p in self.placed.items()}

        bisect_right = bisect.bisect_right
        # per CPU, the last chunk found, as (start, end, segment number, offset - start):
        # a poll's records of one CPU are mostly in one chunk
        last: dict[int, tuple[int, int, int, int]] = {}

        def locate(cpu: int, stream_pos: int) -> tuple[int, int] | None:
            hit = last.get(cpu)  # called per analysed record: kept lean
            if hit is not None and hit[0] <= stream_pos < hit[1]:
                return hit[2], hit[3] + stream_pos
            got = snap.get(cpu)
            if got is None or stream_pos < 0:
                return None
            i = bisect_right(got[0], stream_pos) - 1
            if i < 0:
                return None
            p = got[1][i]
            if stream_pos >= p.end:
                return None
            last[cpu] = (p.start, p.end, p.seq, p.offset - p.start)
            return p.seq, p.offset + (stream_pos - p.start)

        return locate

    def locate(self, cpu: int, stream_pos: int) -> tuple[int, int] | None:
        """(segment number, EPB offset) of the evidence record at `stream_pos` on `cpu`."""
        if stream_pos < 0:
            return None
        with self.lock:
            placed = self.placed.get(cpu) or []
            i = bisect.bisect_right(self.starts.get(cpu) or [], stream_pos) - 1
            if i < 0 or stream_pos >= placed[i].end:
                return None
            p = placed[i]
            return p.seq, p.offset + (stream_pos - p.start)

    def stop(self) -> None:
        """Stop the threads and write what is left (call after the programs detach)."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join()
        with contextlib.suppress(Exception):
            self.drain()
        self.files.close()
