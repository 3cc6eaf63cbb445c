"""Per-CPU perf buffers for BPF output, read as byte ranges (no per-record work).

One `PerfRing` per online CPU: a PERF_COUNT_SW_BPF_OUTPUT event opened on that CPU and
mmapped (one metadata page + a power-of-two data area). The kernel publishes `data_head`
only after a record is complete, and a CPU's buffer has one producer, so everything
between our `data_tail` and `data_head` is whole records: `pending()` hands that range
out as (at most two) memoryviews of the mapping, and `consume()` gives it back.
The wakeup watermark lets a reader sleep in epoll until a quarter of a buffer is full.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import struct

from pyinspect.errors import UnavailableError

SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241}.get(
    platform.machine(), 298)
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
WATERMARK_BIT = 1 << 14
PERF_EVENT_IOC_ENABLE = 0x2400
HEAD_OFF, TAIL_OFF, DATA_OFF_OFF, DATA_SIZE_OFF = 1024, 1032, 1040, 1048

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_Q = struct.Struct("<Q")


def cpu_list(kind: str) -> list[int]:
    """CPUs from /sys/devices/system/cpu/<kind> ('possible' or 'online')."""
    try:
        text = open(f"/sys/devices/system/cpu/{kind}").read().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def _open_event(cpu: int, watermark: int) -> int:
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQQQQI", attr, 0, PERF_TYPE_SOFTWARE, 128, PERF_COUNT_SW_BPF_OUTPUT,
                     1, PERF_SAMPLE_RAW, 0, WATERMARK_BIT, watermark)
    fd = _libc.syscall(SYS_PERF_EVENT_OPEN, attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise UnavailableError(f"perf_event_open on CPU {cpu}: {os.strerror(err)}")
    return fd


class PerfRing:
    """One CPU's buffer: `pending()` -> memoryviews of unread bytes; `consume()`."""

    def __init__(self, cpu: int, data_bytes: int):
        self.cpu = cpu
        page = mmap.PAGESIZE
        if data_bytes < page or data_bytes & (data_bytes - 1):
            raise ValueError("the data area must be a power-of-two number of pages")
        self.fd = _open_event(cpu, max(page, data_bytes // 4))
        try:
            self.mm = mmap.mmap(self.fd, page + data_bytes, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(self.fd)
            raise UnavailableError(f"cannot map the perf buffer of CPU {cpu}: "
                                   f"{exc.strerror}") from None
        self.view = memoryview(self.mm)
        self.base = _Q.unpack_from(self.mm, DATA_OFF_OFF)[0] or page
        self.size = _Q.unpack_from(self.mm, DATA_SIZE_OFF)[0] or data_bytes
        self.tail = _Q.unpack_from(self.mm, TAIL_OFF)[0]

    def head(self) -> int:
        return _Q.unpack_from(self.mm, HEAD_OFF)[0]

    def pending(self, start: int, end: int) -> list[memoryview]:
        """Stream bytes [start, end) (positions as the kernel counts them, from 0) as one
        or two views into the mapping (two when they wrap)."""
        a = start % self.size
        n = end - start
        if a + n <= self.size:
            return [self.view[self.base + a:self.base + a + n]]
        first = self.size - a
        return [self.view[self.base + a:self.base + self.size],
                self.view[self.base:self.base + n - first]]

    def read_u32(self, pos: int) -> int:
        off = self.base + pos % self.size
        if pos % self.size + 4 <= self.size:
            return struct.unpack_from("<I", self.mm, off)[0]
        return int.from_bytes(b"".join(bytes(v) for v in self.pending(pos, pos + 4)),
                              "little")

    def consume(self, upto: int) -> None:
        """Give the bytes before stream position `upto` back to the kernel."""
        _Q.pack_into(self.mm, TAIL_OFF, upto)
        self.tail = upto

    def enable(self) -> None:
        import fcntl
        fcntl.ioctl(self.fd, PERF_EVENT_IOC_ENABLE, 0)

    def close(self) -> None:
        if self.mm is not None:
            try:
                self.view.release()
                self.mm.close()
            except BufferError:      # a caller still holds a view: the GC unmaps it
                pass
            self.mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
