"""Streaming a layer into the store: decompression (gzip, zstd, none), digests and limits.

`decompress_to(fin, out_path, what, budget)` copies a compressed or plain tar stream to
`out_path` while hashing both sides and charging every byte it writes to a `Budget`, so
a decompression bomb is refused after at most the limit, never after it filled the disk.
"""

import hashlib
import os
import zlib

from pyinspect.errors import CorruptInputError, UnavailableError
from pyinspect.units import decimal_size

from .image_settings import ExtractLimits

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20
_DISK_CHECK_EVERY = 64 << 20
MIN_FREE_INODES = 10_000


class Budget:
    """What one load or pull has written so far, checked against ExtractLimits.

    Three meters: `archive` (a gzip'd or zstd'd archive decompressed whole), `expanded`
    (decompressed layer tars) and `extracted` (the sizes of the files unpacked from
    them, sparse files at their full size). Each must stay under
    max_bytes and, past ratio_floor_bytes, under max_ratio times the input size.
    """

    def __init__(self, limits: ExtractLimits, input_bytes: int, store_dir):
        self.limits = limits
        self.input_bytes = max(1, int(input_bytes))
        self.store_dir = os.fspath(store_dir)
        self.meters = {"archive": 0, "expanded": 0, "extracted": 0}
        self.entries = 0
        self._unchecked = 0

    def add_input(self, n):
        """More input became known (a pulled blob's size)."""
        self.input_bytes += n

    def charge(self, n, what, meter="expanded"):
        """Account for `n` bytes about to be written; CorruptInputError past a limit."""
        lim = self.limits
        total = self.meters[meter] = self.meters[meter] + n
        if total > lim.max_bytes:
            raise CorruptInputError(
                f"{what}: more than {decimal_size(lim.max_bytes)} of image data",
                "raise image-limits.max-bytes in the root's config.json "
                "if the image is really that large",
            )
        if total > lim.ratio_floor_bytes and total > lim.max_ratio * self.input_bytes:
            raise CorruptInputError(
                f"{what}: expands past {lim.max_ratio}x its "
                f"{decimal_size(self.input_bytes)} input (a decompression bomb?)",
                "raise image-limits.max-ratio in the root's config.json if this is expected",
            )
        self._unchecked += n
        if self._unchecked >= _DISK_CHECK_EVERY or n >= _DISK_CHECK_EVERY:
            self._unchecked = 0
            self.check_disk(what)

    def check_disk(self, what, upcoming=0):
        """UnavailableError when writing `upcoming` bytes would leave less than min_free."""
        try:
            st = os.statvfs(self.store_dir)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free - upcoming < self.limits.min_free_bytes:
            raise UnavailableError(
                f"{what}: not enough disk space ({decimal_size(free)} free, "
                f"{decimal_size(self.limits.min_free_bytes)} must stay free)",
                "free some space or lower image-limits.min-free-bytes",
            )
        # inodes too: a layer of millions of empty files fills a filesystem without bytes
        if st.f_files and st.f_favail < max(MIN_FREE_INODES, st.f_files // 100):
            raise UnavailableError(
                f"{what}: not enough free inodes ({st.f_favail} of {st.f_files} left)",
                "free some files on the store's filesystem",
            )

    def charge_entry(self, what):
        """Count one extracted entry; the disk (bytes and inodes) is checked every 4096."""
        self.entries += 1
        if self.entries % 4096 == 0:
            self.check_disk(what)


def unlimited(store_dir) -> Budget:
    """A budget that only watches the disk (for images pyinspect builds itself)."""
    big = 1 << 62
    return Budget(ExtractLimits(max_bytes=big, max_ratio=big, ratio_floor_bytes=big), 1, store_dir)


def _zstd_reader(read, what):
    """zstandard's stream reader over `read` (output bounded per read, unlike decompressobj)."""
    try:
        import zstandard
    except ImportError:
        raise UnavailableError(
            f"{what}: zstd-compressed layer but the zstandard module is missing",
            "pip install zstandard (make install)",
        ) from None

    class Source:
        def read(self, n=_CHUNK):
            return read(n)

    return zstandard.ZstdDecompressor().stream_reader(
        Source(),  # type: ignore[arg-type]
        read_size=_CHUNK,
        read_across_frames=True,
    ), zstandard.ZstdError


def decompress_to(fin, out_path, what, budget: Budget, max_input=None, meter="expanded"):
    """Copy a plain, gzip'd or zstd'd stream to out_path.

    Returns (sha256 hex of the raw input, sha256 hex of the output, raw input size).
    `max_input`: refuse input longer than this (a pulled blob's declared size).
    """
    raw_hash = hashlib.sha256()
    out_hash = hashlib.sha256()
    raw_size = [0]

    def read(n=_CHUNK):
        chunk = fin.read(n)
        if chunk:
            raw_size[0] += len(chunk)
            if max_input is not None and raw_size[0] > max_input:
                raise CorruptInputError(f"{what}: more data than its declared size {max_input}")
            raw_hash.update(chunk)
        return chunk

    def emit(out, data):
        if data:
            budget.charge(len(data), what, meter)
            out_hash.update(data)
            out.write(data)

    budget.check_disk(what)
    head = read(4)
    while 0 < len(head) < 4:
        more = read(4 - len(head))
        if not more:
            break
        head += more
    try:
        with open(out_path, "wb") as out:
            if head[:2] == GZIP_MAGIC:
                _gunzip(head, read, lambda d: emit(out, d), what)
            elif head == ZSTD_MAGIC:
                pending = [head]

                def source(n):
                    return pending.pop() if pending else read(n)

                reader, error = _zstd_reader(source, what)
                try:
                    while True:
                        data = reader.read(_CHUNK)
                        if not data:
                            break
                        emit(out, data)
                except error as exc:
                    raise CorruptInputError(f"{what}: corrupt zstd data: {exc}") from None
            else:
                buf = head
                while buf:
                    emit(out, buf)
                    buf = read()
    except OSError as exc:
        if exc.errno is not None and exc.errno in (28, 122):  # ENOSPC, EDQUOT
            raise UnavailableError(f"{what}: {exc.strerror}") from None
        raise
    return raw_hash.hexdigest(), out_hash.hexdigest(), raw_size[0]


def _gunzip(head, read, emit, what):
    """Decompress gzip members (and tolerate zero padding) with bounded output per step."""
    dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
    buf = head
    try:
        while True:
            if not buf:
                buf = read()
                if not buf:
                    break
            if dec.eof:  # another gzip member follows, or zero padding
                if not buf.strip(b"\0"):
                    buf = b""
                    continue
                dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
            emit(dec.decompress(buf, _CHUNK))
            buf = dec.unused_data if dec.eof else dec.unconsumed_tail
    except zlib.error as exc:
        raise CorruptInputError(f"{what}: corrupt gzip data: {exc}") from None
    if not dec.eof:
        raise CorruptInputError(f"{what}: gzip stream is truncated")
