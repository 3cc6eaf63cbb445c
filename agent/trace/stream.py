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
"""

from __future__ import annotations

import io
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..pcapng import PcapNgWriter
from .evidence import Interface, Segment

EPB_TYPE = 6
_BLOCK = struct.Struct("<II")
_EPB_LENS = struct.Struct("<II")       # captured length, original length (at +20)


@dataclass
class StreamFile:
    """pcapng to one fd (see the module docstring). The header is written at once, so a
    reader (Wireshark) sees the interfaces before the first packet."""
    fd: int
    interfaces: list[Interface]
    keep: Callable[[bytes, int], bool] | None = None     # (frame, wire length) -> write it
    total: int = 0
    max_bytes: int = 0
    packets_filtered: int = 0
    segments: list[Segment] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _header: bytes = b""

    def __post_init__(self) -> None:
        self._write([self.header()])
        self.total = len(self.header())

    def header(self) -> bytes:
        if not self._header:
            buf = io.BytesIO()
            w = PcapNgWriter(buf)
            for i in self.interfaces:
                w.add_interface(i.name, i.description, snaplen=i.snaplen)
            w.flush()
            self._header = buf.getvalue()
        return self._header

    def _write(self, parts) -> None:
        for part in parts:
            view = memoryview(part)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]

    def write(self, parts, nbytes: int, lane: int = 0) -> tuple[int, int]:
        """Append whole blocks (filtered when `keep` is set); returns (0, stream offset):
        segment 0 is no file, so the store indexes nothing of it."""
        if self.keep is not None:
            parts, nbytes = self._filtered(parts)
        with self._lock:
            offset = self.total
            self._write(parts)
            self.total += nbytes
        return 0, offset

    def _filtered(self, parts) -> tuple[list, int]:
        data = memoryview(parts[0] if len(parts) == 1 else b"".join(parts))
        out, n, off, end = [], 0, 0, len(data)
        keep = self.keep
        while off + 8 <= end:
            btype, blen = _BLOCK.unpack_from(data, off)
            if blen < 12 or off + blen > end:
                break                      # not a whole block: nothing after it is read
            if btype == EPB_TYPE:
                caplen, wirelen = _EPB_LENS.unpack_from(data, off + 20)
                if keep(bytes(data[off + 28:off + 28 + caplen]), wirelen):
                    out.append(data[off:off + blen])
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
        """Close the fd: the reader sees the end of the capture."""
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
