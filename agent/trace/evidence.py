"""The evidence path: every captured packet from the kernel into pcapng segment files.

The capture programs lay each packet out as a pcapng block in per-CPU perf buffers
(probes/packets.bpf.c); `EvidenceWriter` runs a thread that sleeps until a buffer is a
quarter full (or `interval` passes), appends each CPU's new byte range to the current
segment file as it is, and gives the space back. No packet passes through Python one by
one, so the file costs about what tcpdump's does and does not depend on the analysis
budget. Segment files rotate at `segment_bytes` (like dumpcap's `-b filesize:`); at
`max_bytes` in all the programs stop writing evidence and count what follows as
`capped` per point, and `capped_at` says when.

`locate(cpu, stream_pos)` turns an analysis record's evidence position into
(segment id, byte offset of its EPB), which the store's packet index keeps.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..pcapng import PcapNgWriter

SEGMENT_BYTES = 128 << 20
LOCATE_CHUNKS = 8192          # chunk positions remembered per CPU for locate()


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
    start: int                # stream position of the chunk's first record
    end: int
    seq: int                  # segment number
    offset: int               # file offset of the chunk's first EPB


@dataclass
class SegmentFiles:
    """pcapng segment files in `directory`: each starts with a section header and one
    interface block per capture point (interface id == point index), then chunks.
    `segments` lists every file opened (the caller records them in the store)."""
    directory: Path
    interfaces: list[Interface]
    segment_bytes: int = SEGMENT_BYTES
    max_bytes: int = 0                   # 0: no cap
    total: int = 0
    current: Segment | None = None
    segments: list[Segment] = field(default_factory=list)
    _header: bytes = b""

    def header(self) -> bytes:
        if not self._header:
            buf = io.BytesIO()
            w = PcapNgWriter(buf)
            for i in self.interfaces:
                w.add_interface(i.name, i.description, snaplen=i.snaplen)
            w.flush()
            self._header = buf.getvalue()
        return self._header

    def _open(self) -> Segment:
        seq = len(self.segments) + 1
        path = self.directory / f"seg-{seq:05d}.pcapng"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        head = self.header()
        os.write(fd, head)
        self.total += len(head)
        self.current = Segment(seq, path, fd, len(head), time.time_ns())
        self.segments.append(self.current)
        return self.current

    def write(self, parts, nbytes: int) -> tuple[int, int]:
        """Append whole blocks; returns (segment number, offset of the first byte)."""
        seg = self.current
        if seg is None:
            seg = self._open()
        elif seg.size + nbytes > self.segment_bytes and seg.size > len(self.header()):
            self._close(seg)
            seg = self._open()
        offset = seg.size
        for part in parts:
            view = memoryview(part)
            while view:
                n = os.write(seg.fd, view)
                view = view[n:]
        seg.size += nbytes
        self.total += nbytes
        return seg.seq, offset

    def over_cap(self) -> bool:
        return bool(self.max_bytes) and self.total >= self.max_bytes

    def _close(self, seg: Segment) -> None:
        os.close(seg.fd)
        seg.ended_ns = time.time_ns()
        self.current = None

    def close(self) -> None:
        if self.current is not None:
            self._close(self.current)


class EvidenceWriter:
    """Drains a started PacketCapture's evidence into SegmentFiles on its own thread."""

    def __init__(self, cap, files: SegmentFiles, interval: float = 0.05):
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
        self._thread = threading.Thread(target=self._run, name="pyinspect-evidence",
                                        daemon=True)

    def start(self) -> EvidenceWriter:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.cap.wait(self.interval)
            try:
                self.drain()
            except Exception as exc:  # noqa: BLE001 - reported in the summary
                self.error = f"{type(exc).__name__}: {exc}"
                return

    def drain(self) -> int:
        """Write everything the programs have produced; returns bytes written."""
        n = 0
        with self.lock:
            for chunk in self.cap.chunks():
                size = sum(len(p) for p in chunk.parts)
                seq, offset = self.files.write(chunk.parts, size)
                self.cap.consumed(chunk)
                placed = self.placed.setdefault(chunk.cpu, [])
                starts = self.starts.setdefault(chunk.cpu, [])
                placed.append(_Placed(chunk.start, chunk.end, seq, offset))
                starts.append(chunk.start)
                if len(placed) > LOCATE_CHUNKS:
                    del placed[:LOCATE_CHUNKS // 2]
                    del starts[:LOCATE_CHUNKS // 2]
                n += size
                if self.capped_at is None and self.files.over_cap():
                    # what is already in the buffers is still written: `captured`
                    # stays exactly what the file holds
                    self.capped_at = time.time_ns()
                    self.cap.set_evidence(False)
        self.bytes += n
        return n

    def segments(self) -> list[Segment]:
        """The segment files so far (copies: the writer thread keeps changing its own)."""
        with self.lock:
            return [Segment(s.seq, s.path, -1, s.size, s.started_ns, s.ended_ns)
                    for s in self.files.segments]

    def locate_many(self):
        """A locate() over a snapshot of what is written now: one lock for a batch."""
        with self.lock:
            snap = {cpu: (list(self.starts[cpu]), list(p)) for cpu, p in self.placed.items()}

        def locate(cpu: int, stream_pos: int) -> tuple[int, int] | None:
            starts, placed = snap.get(cpu) or ([], [])
            i = bisect.bisect_right(starts, stream_pos) - 1
            if stream_pos < 0 or i < 0 or stream_pos >= placed[i].end:
                return None
            return placed[i].seq, placed[i].offset + (stream_pos - placed[i].start)
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
        """Stop the thread and write what is left (call after the programs detach)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with contextlib.suppress(Exception):
            self.drain()
        self.files.close()
