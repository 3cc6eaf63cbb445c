"""A live pcapng stream: a trace's evidence written to one fd (a Wireshark fifo, stdout).

`StreamFile` stands in for SegmentFiles (evidence.py) when the evidence goes to a reader
instead of files: the section header and one interface block per capture point
(interface id == point index, names as `pcap export` gives them) once, then every chunk
the EvidenceWriter's lanes hand over, whole, one lane at a time (a lock: the blocks of
two lanes must not interleave). Without a filter the bytes pass through untouched; with
one (`keep`), each Enhanced Packet Block is tested and only those that match are written
(the cost of one filter run in Python per packet). There are no files, so no segments
and no size cap; the store indexes no packets of such a session (its flows, hops and
drops are kept). A reader that goes away (EPIPE) ends the writer thread with an error,
which the caller sees as `EvidenceWriter.error`.

NAT comments: with `delay_ns`, chunks are held back until the analysis has settled their
packets (`release(cutoff)`: every chunk written before the analysis' settle cutoff), at
most `delay_ns`; `comment(offset, text)` (the session calls it for the packets its
analysis settled, the ones `pcap export` comments) re-encodes that held-back EPB with the
comment. A packet settled after its chunk left gets none (counted in `comments_late`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .evidence import Interface, Segment, section_header

EPB_TYPE = 6
_BLOCK = struct.Struct("<II")
_EPB_LENS = struct.Struct("<II")  # captured length, original length (at +20)
OPT_COMMENT = 1
PIPE_BYTES = 1 << 20  # the fifo's buffer (Linux' default maximum for a user: 1 MiB)
MAX_HELD = 64 << 20  # a fast stream's packets wait less than delay_ns rather than
# take memory without bound (those go uncommented)


def with_comment(epb, text: str) -> bytes:
    """The Enhanced Packet Block `epb` (whole) with an opt_comment of `text` added."""
    caplen = _EPB_LENS.unpack_from(epb, 20)[0]
    body_end = 28 + (caplen + 3) // 4 * 4
    blen = len(epb)
    old_opts = bytes(epb[body_end : blen - 4])
    value = text.encode()
    opt = struct.pack("<HH", OPT_COMMENT, len(value)) + value + b"\0" * (-len(value) % 4)
    opts = opt + (old_opts if old_opts else b"\0\0\0\0")
    new_len = body_end + len(opts) + 4
    return (
        struct.pack("<II", EPB_TYPE, new_len)
        + bytes(epb[8:body_end])
        + opts
        + struct.pack("<I", new_len)
    )


@dataclass
class StreamFile:
    """pcapng to one fd (see the module docstring). The header is written at once, so a
    reader (Wireshark) sees the interfaces before the first packet."""

    fd: int
    interfaces: list[Interface]
    keep: Callable[[bytes, int], bool] | None = None  # (frame, wire length) -> write it
    total: int = 0
    max_bytes: int = 0
    packets_filtered: int = 0
    delay_ns: int = 0  # hold chunks back this long, for comment()
    max_held: int = MAX_HELD  # bytes held back at most (the oldest go first)
    comments: int = 0
    comments_late: int = 0
    error: str | None = None  # a failed write from release() (EPIPE: reader gone)
    segments: list[Segment] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _header: bytes = b""
    _held: deque = field(default_factory=deque)  # (logical offset, bytes, monotonic ns)
    _notes: dict = field(default_factory=dict)  # logical offset -> comment text
    _flushed: int = 0  # logical bytes handed to the fd
    _held_bytes: int = 0

    def __post_init__(self) -> None:
        with contextlib.suppress(OSError):  # a pipe: room for bursts (not a file)
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._write([self.header()])
        self.total = len(self.header())

    def header(self) -> bytes:
        if not self._header:
            self._header = section_header(self.interfaces)
        return self._header

    def _write(self, parts) -> None:
        for part in parts:
            view = memoryview(part)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]

    def write(self, parts, nbytes: int, lane: int = 0) -> tuple[int, int]:
        """Append whole blocks (filtered when `keep` is set); returns (0, logical offset
        of the first byte): segment 0 is no file, so the store indexes nothing of it."""
        if self.delay_ns:
            data = b"".join(parts)  # the ring's views go back after this call
            now = time.monotonic_ns()
            with self._lock:
                offset = self.total
                self._held.append((offset, data, now))
                self._held_bytes += len(data)
                self.total += nbytes
                self._flush(now - self.delay_ns)
                while self._held_bytes > self.max_held and len(self._held) > 1:
                    self._flush(self._held[0][2])  # the oldest, over the limit
            return 0, offset
        if self.keep is not None:
            parts, _kept = self._filtered(parts)
        with self._lock:
            offset = self.total
            self._write(parts)
            self.total += nbytes
            self._flushed = self.total
        return 0, offset

    def comment(self, offset: int, text: str) -> bool:
        """Give the EPB at logical `offset` the comment `text`, if it is still held back."""
        with self._lock:
            if offset < self._flushed:
                self.comments_late += 1
                return False
            self._notes[offset] = text
            return True

    def release(self, settled_ns: int | None = None) -> None:
        """Write the chunks written before `settled_ns` (CLOCK_MONOTONIC: the analysis has
        settled every packet in them) and those held back for `delay_ns`."""
        if self.delay_ns and self.error is None:
            cutoff = time.monotonic_ns() - self.delay_ns
            with self._lock:
                try:
                    self._flush(max(cutoff, settled_ns or 0))
                except OSError as exc:
                    self.error = f"{type(exc).__name__}: {exc}"

    def _flush(self, cutoff_ns: int) -> None:
        held, notes = self._held, self._notes
        while held and held[0][2] <= cutoff_ns:
            start, data, _t = held.popleft()
            self._held_bytes -= len(data)
            end = start + len(data)
            parts: list = []
            pos = 0
            for off in sorted(o for o in notes if start <= o < end):
                rel = off - start
                btype, blen = _BLOCK.unpack_from(data, rel)
                if btype != EPB_TYPE or blen < 32 or rel + blen > len(data):
                    notes.pop(off)
                    continue
                parts.append(memoryview(data)[pos:rel])
                parts.append(with_comment(memoryview(data)[rel : rel + blen], notes.pop(off)))
                self.comments += 1
                pos = rel + blen
            parts.append(memoryview(data)[pos:])
            if self.keep is not None:
                parts, _n = self._filtered([b"".join(parts)])
            self._flushed = end
            for off in [o for o in notes if o < end]:
                del notes[off]  # not a block start: nothing to comment
            self._write(parts)

    def _filtered(self, parts) -> tuple[list, int]:
        data = memoryview(parts[0] if len(parts) == 1 else b"".join(parts))
        out, n, off, end = [], 0, 0, len(data)
        keep = self.keep
        if keep is None:
            return list(parts), len(data)
        while off + 8 <= end:
            btype, blen = _BLOCK.unpack_from(data, off)
            if blen < 12 or off + blen > end:
                break  # not a whole block: nothing after it is read
            if btype == EPB_TYPE:
                caplen, wirelen = _EPB_LENS.unpack_from(data, off + 20)
                if keep(bytes(data[off + 28 : off + 28 + caplen]), wirelen):
                    out.append(data[off : off + blen])
                    n += blen
                else:
                    self.packets_filtered += 1
            off += blen
        return out, n

    def over_cap(self) -> bool:
        return False

    def snapshot(self) -> list[Segment]:
        return []

    def close(self) -> None:
        """Write what is held back and close the fd: the reader sees the end."""
        if self.fd >= 0:
            with self._lock:
                try:
                    self._flush(1 << 62)
                except OSError:
                    pass
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
