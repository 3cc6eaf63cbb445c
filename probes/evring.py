"""The evidence streams: per-CPU areas of an mmapped BPF array, read as byte ranges (no
per-record work), and the one-page BPF ring buffers that ring their bells.

The capture program (probes/packets.bpf.c) writes each CPU's pcapng blocks into that CPU's
area of its `evbuf` array (a ring of `size` bytes, then EV_SLACK bytes for the block that
crosses the ring's end) without a lock, and publishes the committed end as `prod` in
`evpos`; everything between our consumer position and `prod` is whole blocks.
`EvStream.pending()` hands the range out as one or two memoryviews (two when it crosses
the ring's end: the crossing block ends in the slack at `wrap_end`, the next lap starts at
the ring's start) and `consume()` gives it back. `EvRing` is a BPF ring buffer (the bells:
the program writes 8 bytes to its CPU's bell each quarter ring, for epoll).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

from pyinspect.errors import UnavailableError

BPF_MAP_TYPE_RINGBUF = 27
_U32 = struct.Struct("<I")
POS_WORDS = 16  # u64 words of struct evpos (packets.h): prod, wrap_end, ..., cons at 8


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


class EvAreas:
    """The `evbuf` and `evpos` arrays of a loaded capture program, mmapped: one area of
    `size + slack` bytes and one evpos slot per CPU index up to the last online one."""

    def __init__(self, buf_fd: int, pos_fd: int, ncpu: int, size: int, slack: int):
        page = mmap.PAGESIZE
        self.size = size
        self.elem = size + slack  # a multiple of the page size: each area starts on a page
        pos_bytes = -(-ncpu * POS_WORDS * 8 // page) * page
        try:
            self.buf = mmap.mmap(buf_fd, ncpu * self.elem, mmap.MAP_SHARED, mmap.PROT_READ)
            self.pos = mmap.mmap(
                pos_fd, pos_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as exc:
            raise UnavailableError(f"cannot map the evidence areas: {exc.strerror}") from None
        self.view = memoryview(self.buf)
        # positions are read and written as whole aligned 8-byte words (a memoryview cast
        # to 'Q' copies the word at once; struct's '<Q' goes a byte at a time)
        self.words = memoryview(self.pos).cast("Q")

    def stream(self, cpu: int, bell: EvRing) -> EvStream:
        at = cpu * self.elem
        return EvStream(
            cpu,
            self.size,
            self.view[at : at + self.elem],
            self.words[cpu * POS_WORDS : (cpu + 1) * POS_WORDS],
            bell,
        )

    def close(self) -> None:
        try:
            self.words.release()
            self.view.release()
            self.pos.close()
            self.buf.close()
        except BufferError:  # a caller still holds a view: the GC unmaps it
            pass


class EvStream:
    """One CPU's evidence stream: `pending(start, end)` -> memoryviews of those bytes,
    `consume(upto)`, `head()` (what the program has committed); `fd` is its bell's (for
    epoll)."""

    def __init__(self, cpu: int, size: int, area: memoryview, words: memoryview, bell: EvRing):
        self.cpu = cpu
        self.size = size
        self.area = area
        self.words = words
        self.bell = bell
        self.fd = bell.fd
        self.tail = words[8]

    def head(self) -> int:
        """The committed producer position: every block before it is whole."""
        return self.words[0]

    def pending(self, start: int, end: int) -> list[memoryview]:
        """Stream bytes [start, end) as views into the area; two when the range crosses
        the ring's end (the block that crossed it ran on into the slack, to `wrap_end`)."""
        a = start % self.size
        lap_end = start - a + self.size
        if end <= lap_end:
            return [self.area[a : a + end - start]]
        e = self.words[1]  # wrap_end: written before prod, and stable while start < lap_end
        parts = [self.area[a : a + e - start]]
        if end > e:
            b = e - lap_end
            parts.append(self.area[b : b + end - e])
        return parts

    def read_u32(self, pos: int, skip: int = 0) -> int:
        """The word `skip` bytes into the block at stream position `pos` (a block is
        never split: it may run on into the slack)."""
        return _U32.unpack_from(self.area, pos % self.size + skip)[0]

    def consume(self, upto: int) -> None:
        """Give the bytes before stream position `upto` back to the program."""
        self.words[8] = upto
        self.tail = upto

    def ring_off(self) -> None:
        """Take the bell's records (their only use was the wakeup)."""
        self.bell.consume(self.bell.head())

    def close(self) -> None:
        self.words.release()
        self.area.release()
        self.bell.close()


class EvRing:
    """A BPF ring buffer made here (one CPU's bell): `head()`, `pending()` -> a memoryview
    of unread bytes; `consume()`."""

    def __init__(self, cpu: int, data_bytes: int):
        self.cpu = cpu
        page = mmap.PAGESIZE
        if data_bytes < page or data_bytes & (data_bytes - 1):
            raise ValueError("the data area must be a power-of-two number of pages")
        self.size = data_bytes
        self.fd = _create(f"pi_bell{cpu}".encode(), data_bytes)
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
