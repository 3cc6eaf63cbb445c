"""Per-CPU BPF ring buffers for the evidence, read as byte ranges (no per-record work).

One `EvRing` per online CPU: a BPF_MAP_TYPE_RINGBUF map that pyinspect creates and puts
in the capture program's `evrings` array of maps at that CPU's index, mmapped as the
kernel lays it out (a consumer page we write, then the producer page and the data area
mapped twice in a row, so a range that wraps is contiguous). The capture program on a
CPU writes only its own ring and commits records in the order it reserves them (tc runs
with bottom halves off: programs on one CPU do not nest), and counts the bytes it
committed; everything between our consumer position and that count is whole records:
`pending()` hands the range out as one memoryview and `consume()` gives it back.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

from pyinspect.errors import UnavailableError

BPF_MAP_TYPE_RINGBUF = 27
_U32 = struct.Struct("<I")


MIN_RING_BYTES = 4 << 20
MAX_RING_BYTES = 64 << 20
MEMORY_SHARE = 128  # the rings together take at most 1/128 of the machine's memory


def default_ring_bytes() -> int:
    """The evidence ring per CPU when none is asked for: 64 MiB, or less where 1/128 of
    memory spread over the online CPUs is less (at least 4 MiB), a power of two. A
    ring holds what the programs produce while the writers are not scheduled: at a
    64-byte flood through four points, 16 MiB was 0.1-0.3 s and overflowed on a loaded
    2-CPU machine, where tcpdump's four processes kept up."""
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        return MIN_RING_BYTES
    share = kib * 1024 // MEMORY_SHARE // max(1, len(cpu_list("online")))
    size = MIN_RING_BYTES
    while size * 2 <= min(share, MAX_RING_BYTES):
        size *= 2
    return size


def cpu_list(kind: str) -> list[int]:
    """CPUs from /sys/devices/system/cpu/<kind> ('possible' or 'online')."""
    try:
        with open(f"/sys/devices/system/cpu/{kind}") as f:
            text = f.read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def _create(name: bytes, size: int) -> int:
    from .bpfobj import libbpf

    lib = libbpf()
    fn = lib.bpf_map_create
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_uint32,
        ctypes.c_void_p,
    ]
    fd = fn(BPF_MAP_TYPE_RINGBUF, name, 0, 0, size, None)
    if fd < 0:
        err = ctypes.get_errno() or -fd
        raise UnavailableError(
            f"cannot create an evidence ring buffer of {size} bytes: {os.strerror(err)}"
        )
    return fd


class EvRing:
    """One CPU's evidence ring buffer: `pending()` -> a memoryview of unread bytes;
    `consume()`."""

    def __init__(self, cpu: int, data_bytes: int):
        self.cpu = cpu
        page = mmap.PAGESIZE
        if data_bytes < page or data_bytes & (data_bytes - 1):
            raise ValueError("the data area must be a power-of-two number of pages")
        self.size = data_bytes
        self.fd = _create(f"pi_ev{cpu}".encode(), data_bytes)
        try:
            self.cons = mmap.mmap(
                self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
            )
            self.mm = mmap.mmap(
                self.fd, page + 2 * data_bytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except OSError as exc:
            os.close(self.fd)
            raise UnavailableError(
                f"cannot map the evidence ring of CPU {cpu}: {exc.strerror}"
            ) from None
        self.mapped = True  # until close()
        self.base = page  # the data area starts after the producer page
        self.view = memoryview(self.mm)
        # The positions are read and written as whole aligned 8-byte words (a memoryview
        # cast to 'Q' copies the word at once): struct's '<Q' goes a byte at a time, and a
        # program reserving while the consumer position was half-written saw a torn value
        # and failed its reservation with the ring nearly empty (a few packets lost a
        # million under a flood).
        self._cons_word = memoryview(self.cons)[:8].cast("Q")
        self._prod_word = self.view[:8].cast("Q")
        self.tail = self._cons_word[0]

    def head(self) -> int:
        """The kernel's producer position: reserved, not necessarily committed."""
        return self._prod_word[0]

    def pending(self, start: int, end: int) -> list[memoryview]:
        """Stream bytes [start, end) (positions as the kernel counts them, from 0) as one
        view into the mapping (the data area is mapped twice: no wrap)."""
        a = self.base + start % self.size
        return [self.view[a : a + end - start]]

    def read_u32(self, pos: int) -> int:
        return _U32.unpack_from(self.mm, self.base + pos % self.size)[0]

    def consume(self, upto: int) -> None:
        """Give the bytes before stream position `upto` back to the kernel."""
        self._cons_word[0] = upto
        self.tail = upto

    def close(self) -> None:
        if self.mapped:
            try:
                self._cons_word.release()
                self._prod_word.release()
                self.view.release()
                self.mm.close()
                self.cons.close()
            except BufferError:  # a caller still holds a view: the GC unmaps it
                pass
            self.mapped = False
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
