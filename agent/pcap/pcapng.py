"""pcapng writer and pcap/pcapng reader, by hand with `struct` (no per-packet objects).

Why not scapy's PcapNgWriter: it fixes if_tsresol at microseconds (our timestamps are
nanoseconds), takes timestamps as floats, writes no if_description and no
shb_hardware/shb_os/shb_userappl, and builds a scapy Packet per record, which is too
slow on the export path (see docs/pcapng.md).

Writing (`PcapNgWriter`): one Section Header Block, one Interface Description Block per
capture point (if_name, if_description, if_tsresol=9, link type, snaplen), then Enhanced
Packet Blocks with epb_flags (direction) and opt_comment. Blocks are assembled in a
buffer that is written out every `flush_every` packets or `flush_interval` seconds, and
only as whole blocks, so a killed writer leaves a file that ends on a block boundary.

Reading (`read_packets`): classic pcap (usec and nsec magic, both byte orders) and
pcapng (every section, both byte orders, EPB/SPB/obsolete PB; if_tsresol and if_tsoffset
applied; blocks of other types skipped), streamed in chunks, each packet with the byte
offset of its block. Damaged input raises CorruptInputError; with `partial_ok` a file
that ends inside its last block (a writer killed mid-write) ends quietly there.

Segment files (`Segment`): random access to one pcapng file through mmap, for the
trace's segment files whose packets come in sorted runs: `keys()` walks the blocks once
(the same reader, timestamps and offsets only) and returns them sorted by time,
`packet_at(offset)` decodes one packet.

Merging (`merge`): a k-way heap merge by timestamp that streams every input and writes
to a temp file in the output's directory, renamed into place only on success.
"""

import contextlib
import heapq
import io
import mmap
import os
import platform
import struct
import time
from pathlib import Path
from typing import NamedTuple

from .. import __version__
from ..errors import CorruptInputError, NotFoundError, UsageError
from ..probes import cdefs
from ..runtime.fsutil import atomic_write

# Block types
SHB = 0x0A0D0D0A
IDB = 0x00000001
PB_OBSOLETE = 0x00000002
SPB = 0x00000003
EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

# Option codes
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
IF_TSOFFSET = 14
EPB_FLAGS = 2

# Classic pcap magics (as read little-endian)
PCAP_USEC = 0xA1B2C3D4
PCAP_NSEC = 0xA1B23C4D

LINKTYPE_ETHERNET = 1
DIRECTIONS = {None: 0, "in": 1, "out": 2, "inbound": 1, "outbound": 2, 1: 1, 2: 2, 0: 0}
DIRECTION_NAMES = {0: None, 1: "in", 2: "out", 3: None}

# A record longer than this is treated as damage, not allocated (Wireshark's own cap
# for a packet is 256 KiB; blocks also carry options, so allow more).
MAX_BLOCK = 16 * 1024 * 1024

_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, total len, if id, ts hi, ts lo, caplen, len
_U32 = struct.Struct("<I")
# the local-use block type of the trace's fillers between EPBs (written once, in packets.h)
(TRACE_FILLER,) = cdefs.require(Path(cdefs.__file__).with_name("packets.h"), "FILLER_TYPE")
RAW_EPB = -1  # write_rows(): orig_len meaning `data` is a whole EPB to copy (see there)
_OPT_END = b"\0\0\0\0"
# epb_flags option (code 2, length 4) with the direction bits, then end of options
_FLAG_OPTS = {d: struct.pack("<HHI", EPB_FLAGS, 4, d) for d in (1, 2)}
_OPT_HEAD = struct.Struct("<HH")
_DIR_CODES = {"in": 1, "out": 2, "inbound": 1, "outbound": 2, None: 0}


def _opt(code, value):
    """One option TLV (little-endian), padded to 32 bits."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return struct.pack("<HH", code, len(value)) + value + _PAD[len(value) & 3]


def _block(block_type, body):
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + _U32.pack(total)


class PcapNgWriter:
    """Stream a pcapng file: `add_interface()` then `write_packet()`; a context manager.

    `path_or_file` is a path (created/truncated) or a binary file object (left open).
    Data reaches the OS every `flush_every` packets, every `flush_interval` seconds
    (checked on each write) and on `flush()`/`close()`; call `flush()` from an idle loop
    so a quiet trace is on disk too.
    """

    def __init__(
        self,
        path_or_file,
        *,
        hardware=None,
        os=None,
        appname=None,
        flush_every=1000,
        flush_interval=0.5,
        section=True,
    ):
        if hasattr(path_or_file, "write"):
            self._fh, self._owned = path_or_file, False
            self.path = getattr(path_or_file, "name", None)
        else:
            self.path = Path(path_or_file)
            self._fh, self._owned = open(self.path, "wb"), True
        self._buf = bytearray()
        self._pending = 0
        self._flush_every = flush_every
        self._flush_interval = flush_interval
        self._last_flush = time.monotonic()
        self._interfaces = []  # (name, linktype, ns per timestamp unit)
        self._batch = None  # write_rows()'s buffer of pending blocks
        self._written = 0  # bytes handed to the file object by this writer
        self.packets = 0
        self.closed = False
        if not section:  # a continuation of a section written elsewhere (export)
            return
        uname = platform.uname()
        body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
        body += _opt(SHB_HARDWARE, hardware if hardware is not None else uname.machine)
        body += _opt(SHB_OS, os if os is not None else f"{uname.system} {uname.release}")
        body += _opt(SHB_USERAPPL, appname or f"pyinspect {__version__}")
        body += _OPT_END
        self._buf += _block(SHB, body)
        self.flush()

    # -- interfaces --------------------------------------------------------------
    def add_interface(
        self, name, description="", linktype=LINKTYPE_ETHERNET, snaplen=0, tsresol_ns=True
    ):
        """Write an Interface Description Block; returns its interface id (0, 1, ...).

        Timestamps given to write_packet are always nanoseconds; with tsresol_ns=False
        the IDB says microseconds and they are divided by 1000 on write.
        """
        body = struct.pack("<HHI", linktype & 0xFFFF, 0, snaplen or 0)
        if name:
            body += _opt(IF_NAME, name)
        if description:
            body += _opt(IF_DESCRIPTION, description)
        body += _opt(IF_TSRESOL, bytes([9 if tsresol_ns else 6]))
        body += _OPT_END
        if self._batch is not None:  # called from inside write_rows(): keep block order
            self._batch += _block(IDB, body)
        else:
            self._buf += _block(IDB, body)
        self._interfaces.append((name, linktype, 1 if tsresol_ns else 1000))
        return len(self._interfaces) - 1

    @property
    def interfaces(self):
        return [(name, linktype) for name, linktype, _ in self._interfaces]

    def tell(self):
        """Bytes this writer has produced so far (written or buffered): the offset in the
        file of the next block when the writer started the file."""
        return self._written + len(self._buf)

    # -- packets -----------------------------------------------------------------
    def write_packet(self, if_id, ts_ns, data, orig_len=None, direction=None, comment=None):
        """Append one Enhanced Packet Block (direction 'in'|'out'|None; comment str)."""
        try:
            if if_id < 0:
                raise IndexError(if_id)
            div = self._interfaces[if_id][2]
        except (IndexError, TypeError):
            raise UsageError(
                f"write_packet: unknown interface id {if_id!r}", "call add_interface() first"
            ) from None
        ts = ts_ns // div if div != 1 else ts_ns
        caplen = len(data)
        opts = b""
        flags = DIRECTIONS.get(direction, 0)
        if flags:
            opts = _FLAG_OPTS[flags]
        if comment:
            c = (comment.encode("utf-8") if isinstance(comment, str) else bytes(comment))[:65535]
            opts += struct.pack("<HH", OPT_COMMENT, len(c)) + c + _PAD[len(c) & 3]
        if opts:
            opts += _OPT_END
        pad = _PAD[caplen & 3]
        total = 32 + caplen + len(pad) + len(opts)
        buf = self._buf
        buf += _EPB_HEAD.pack(
            EPB,
            total,
            if_id,
            (ts >> 32) & 0xFFFFFFFF,
            ts & 0xFFFFFFFF,
            caplen,
            orig_len if orig_len is not None else caplen,
        )
        buf += data
        buf += pad
        buf += opts
        buf += _U32.pack(total)
        self.packets += 1
        self._pending += 1
        if self._pending >= self._flush_every:
            self.flush()
        elif (
            self._flush_interval is not None
            and time.monotonic() - self._last_flush >= self._flush_interval
        ):
            self.flush()

    def write_rows(self, rows, if_map):
        """Fast path for exports: rows of (ts_ns, data, point, direction, orig_len, comment).

        `if_map[point]` is an interface id from add_interface() (a dict subclass may
        add interfaces on a miss); those interfaces must have nanosecond resolution.
        `orig_len` None means len(data). `orig_len` RAW_EPB means `data` is a whole
        little-endian Enhanced Packet Block with nanosecond timestamps: it is copied as
        it is (options and all) with its interface id replaced (`direction` and `comment`
        are not used). Returns the number of packets written.
        """
        self.flush()
        head = _EPB_HEAD.pack
        u32 = _U32.pack
        pack_opt = _OPT_HEAD.pack
        # pad after the data + direction flags + end of options, for comment-less rows
        tails = [
            _PAD[pad] + (_FLAG_OPTS[d] + _OPT_END if d else b"")
            for pad in range(4)
            for d in range(3)
        ]
        flag_opts = (b"", _FLAG_OPTS[1], _FLAG_OPTS[2])
        dmap = _DIR_CODES
        buf = self._batch = bytearray()  # add_interface() on a miss appends its IDB here
        write = self._fh.write
        put_u32 = _U32.pack_into
        n = 0
        try:
            for ts, data, point, direction, wirelen, comment in rows:
                if wirelen == RAW_EPB:
                    if_id = if_map[point]
                    start = len(buf)
                    buf += data
                    put_u32(buf, start + 8, if_id)
                    n += 1
                    if len(buf) >= 1 << 20:
                        write(buf)
                        self._written += len(buf)
                        buf.clear()
                    continue
                caplen = len(data)
                d = dmap.get(direction, 0)
                if comment:
                    c = comment.encode("utf-8")[:65535]
                    k = len(c)
                    opts = (
                        _PAD[caplen & 3]
                        + flag_opts[d]
                        + pack_opt(OPT_COMMENT, k)
                        + c
                        + _PAD[k & 3]
                        + _OPT_END
                    )
                else:
                    opts = tails[(caplen & 3) * 3 + d]
                total = 32 + caplen + len(opts)
                if_id = if_map[point]  # before the EPB: a new IDB must come first
                buf += head(
                    EPB,
                    total,
                    if_id,
                    ts >> 32,
                    ts & 0xFFFFFFFF,
                    caplen,
                    caplen if wirelen is None else wirelen,
                )
                buf += data
                buf += opts
                buf += u32(total)
                n += 1
                if len(buf) >= 1 << 20:  # ~1 MiB per write: memory stays flat
                    write(buf)
                    self._written += len(buf)
                    buf.clear()
            write(buf)
            self._written += len(buf)
        finally:
            self._batch = None
        self.packets += n
        self.flush()
        return n

    def flush(self):
        """Hand every complete block written so far to the OS."""
        if self._buf:
            self._fh.write(self._buf)
            self._written += len(self._buf)
            self._buf.clear()
        self._fh.flush()
        self._pending = 0
        self._last_flush = time.monotonic()

    def close(self):
        if self.closed:
            return
        self.flush()
        if self._owned:
            self._fh.close()
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- reading -----------------------------------------------------------------------
class Interface(NamedTuple):
    """An interface as read from a file: `file` and `index` identify it uniquely."""

    file: str
    section: int
    index: int  # type: ignore[assignment]  # a field, shadowing tuple.index
    name: str
    description: str
    linktype: int
    snaplen: int


class Packet(NamedTuple):
    """One record: `ts_ns` is nanoseconds since the epoch whatever the file's resolution;
    `offset` is the byte offset of its block (pcapng) or record header (pcap) in the file."""

    interface: Interface
    ts_ns: int
    data: bytes
    orig_len: int
    direction: str | None  # 'in' | 'out' | None
    comment: str | None  # None when absent (several comments are joined with '; ')
    offset: int = -1


class _Truncated(CorruptInputError):
    """The file ends inside a block or record."""


class _Chunks:
    """Buffered reads that report how far into the file a short read happened."""

    def __init__(self, fh, name, chunk=1 << 20):
        self.fh, self.name, self.chunk = fh, name, chunk
        self.buf: bytes | mmap.mmap = b""
        self.pos = 0  # position in buf
        self.offset = 0  # file offset of buf[0]

    def take(self, n, what):
        """Exactly n bytes, or CorruptInputError naming `what` and the offset."""
        end = self.pos + n
        if end > len(self.buf):
            rest = self.buf[self.pos :]
            self.offset += self.pos
            more = self.fh.read(max(self.chunk, n - len(rest)))
            self.buf = rest + more
            self.pos = 0
            end = n
            if end > len(self.buf):
                raise _Truncated(
                    f"cannot read {self.name}: truncated {what} at byte {self.offset}",
                    "the capture was cut short; re-copy it or drop it from the inputs",
                )
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def fill(self, n, what):
        """Make n bytes available at `pos`: False at a clean end of file, CorruptInputError
        when the file ends inside them."""
        if self.pos + n <= len(self.buf):
            return True
        rest = self.buf[self.pos :]
        self.offset += self.pos
        self.buf = rest + self.fh.read(max(self.chunk, n - len(rest)))
        self.pos = 0
        if len(self.buf) >= n:
            return True
        if not self.buf:
            return False
        raise _Truncated(
            f"cannot read {self.name}: truncated {what} at byte {self.offset}",
            "the capture was cut short; re-copy it or drop it from the inputs",
        )

    def at_eof(self):
        if self.pos < len(self.buf):
            return False
        self.offset += self.pos
        self.buf = self.fh.read(self.chunk)
        self.pos = 0
        return not self.buf

    def tell(self):
        return self.offset + self.pos


def _corrupt(name, what, offset):
    return CorruptInputError(
        f"cannot read {name}: {what} at byte {offset}", "the file is damaged or not a capture"
    )


def read_packets(path, *, partial_ok=False):
    """Yield Packet records from a pcap or pcapng file, in file order (streamed).

    With partial_ok, a file that ends inside a block (a writer killed mid-write) yields
    every complete packet before that block and then ends without an error; any other
    damage still raises CorruptInputError.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise NotFoundError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"cannot read {path}: is a directory") from None
    except PermissionError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        r = _Chunks(fh, str(path))
        if r.at_eof():
            raise CorruptInputError(
                f"cannot read {path}: empty file", "not a pcap or pcapng capture"
            )
        head = r.buf[:4]
        if len(head) < 4:
            raise CorruptInputError(f"cannot read {path}: too short to be a capture")
        magic_le = struct.unpack("<I", head)[0]
        if magic_le == SHB:
            reader = _read_pcapng(r, path)
        elif magic_le in (PCAP_USEC, PCAP_NSEC) or struct.unpack(">I", head)[0] in (
            PCAP_USEC,
            PCAP_NSEC,
        ):
            reader = _read_pcap(r, path)
        else:
            raise CorruptInputError(
                f"cannot read {path}: not a pcap or pcapng file (magic 0x{magic_le:08x})"
            )
        try:
            yield from reader
        except _Truncated:
            if not partial_ok:
                raise


def _read_pcap(r, path):
    hdr = r.take(24, "file header")
    for endian in ("<", ">"):
        magic = struct.unpack(endian + "I", hdr[:4])[0]
        if magic in (PCAP_USEC, PCAP_NSEC):
            break
    mult = 1000 if magic == PCAP_USEC else 1
    _, _, _, _, snaplen, network = struct.unpack(endian + "HHiIII", hdr[4:])
    iface = Interface(str(path), 0, 0, path.stem, "", network & 0x0FFFFFFF, snaplen)
    rec = struct.Struct(endian + "IIII")
    limit = max(snaplen, 262144) if snaplen else MAX_BLOCK
    while not r.at_eof():
        off = r.tell()
        sec, frac, caplen, length = rec.unpack(r.take(16, "record header"))
        if caplen > limit or caplen > MAX_BLOCK:
            raise _corrupt(path, f"record length {caplen} is impossible", off)
        if frac >= 1_000_000_000 or (mult == 1000 and frac >= 1_000_000):
            raise _corrupt(path, f"sub-second timestamp {frac} is out of range", off)
        data = r.take(caplen, "packet data")
        yield Packet(iface, sec * 1_000_000_000 + frac * mult, data, length, None, None, off)


def _parse_options(buf, endian, name, offset):
    """[(code, bytes)] from an options area; tolerant of a missing opt_endofopt."""
    out = []
    pos, n = 0, len(buf)
    while pos + 4 <= n:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        pos += 4
        if code == OPT_ENDOFOPT:
            break
        if pos + length > n:
            raise _corrupt(name, "option runs past its block", offset)
        out.append((code, buf[pos : pos + length]))
        pos += (length + 3) & ~3
    return out


def _section_structs(endian):
    return {
        "head": struct.Struct(endian + "II"),
        "u32": struct.Struct(endian + "I"),
        "epb": struct.Struct(endian + "IIIII"),
        "epb_whole": struct.Struct(endian + "IIIIIII"),  # head + epb, one unpack
        # the options area of a packet that has only a direction
        "in": struct.pack(endian + "HHIHH", EPB_FLAGS, 4, 1, 0, 0),
        "out": struct.pack(endian + "HHIHH", EPB_FLAGS, 4, 2, 0, 0),
        # the same without opt_endofopt (the tracer's EPBs)
        "in-": struct.pack(endian + "HHI", EPB_FLAGS, 4, 1),
        "out-": struct.pack(endian + "HHI", EPB_FLAGS, 4, 2),
    }


class _Section:
    """What the reader knows of the current section: byte order, interfaces."""

    def __init__(self, name):
        self.name = name
        self.endian = "<"
        self.number = -1
        self.interfaces = []  # [(Interface, mult, div, pow2 shift or None, tsoffset_ns)]
        self.st = _section_structs("<")


def _ts(interfaces, if_id, hi, lo):
    _, mult, div, shift, tsoffset = interfaces[if_id]
    raw = (hi << 32) | lo
    return ((raw * 1_000_000_000) >> shift if shift is not None else raw * mult // div) + tsoffset


def _epb(buf, pos, total, off, sec):
    """The Packet of the Enhanced Packet Block of `total` bytes at buf[pos] (file offset
    `off`), its trailing length already checked."""
    name = sec.name
    if total < 32:
        raise _corrupt(name, "packet block too short", off)
    st = sec.st
    interfaces = sec.interfaces
    if_id, hi, lo, caplen, length = st["epb"].unpack_from(buf, pos + 8)
    if if_id >= len(interfaces):
        raise _corrupt(name, f"packet names undefined interface {if_id}", off)
    end = pos + total - 4
    dstart = pos + 28
    if dstart + caplen > end:
        raise _corrupt(name, "captured length runs past its block", off)
    data = buf[dstart : dstart + caplen]
    direction = comment = None
    optstart = dstart + ((caplen + 3) & ~3)
    if optstart < end:
        opts = buf[optstart:end]
        if opts == st["in"] or opts == st["in-"]:
            direction = "in"
        elif opts == st["out"] or opts == st["out-"]:
            direction = "out"
        else:
            direction, comment = _packet_options(opts, sec.endian, name, off, True)
    return Packet(
        interfaces[if_id][0], _ts(interfaces, if_id, hi, lo), data, length, direction, comment, off
    )


def _keys_run(buf, pos, base, sec, keys):
    """The keys() fast path: EPBs and blocks of unknown types that lie whole in `buf`
    from `pos`; returns the position of the first block it leaves to the general loop
    (a section or interface block, damage, the end of the buffer)."""
    st = sec.st
    head, u32, epb = st["head"].unpack_from, st["u32"].unpack_from, st["epb"].unpack_from
    interfaces = sec.interfaces
    plain = [i[1] == 1 and i[2] == 1 and i[3] is None and not i[4] for i in interfaces]
    n = len(buf)
    append = keys.append
    shift = KEY_SHIFT
    whole = st["epb_whole"].unpack_from
    nif = len(interfaces)
    while pos + 8 <= n:
        if pos + 28 <= n:  # the usual block, a whole EPB: checked in one go
            btype, total, if_id, hi, lo, caplen, _ = whole(buf, pos)
            end = pos + total
            if (
                btype == EPB
                and 32 <= total <= MAX_BLOCK
                and not total % 4
                and end <= n
                and if_id < nif
                and pos + 28 + caplen <= end - 4
                and u32(buf, end - 4)[0] == total
            ):
                ts = (hi << 32) | lo if plain[if_id] else _ts(interfaces, if_id, hi, lo)
                append((ts << shift) | (base + pos))
                pos = end
                continue
            if (
                btype == TRACE_FILLER
                and 12 <= total <= 64
                and not total % 4
                and pos + total <= n
                and u32(buf, pos + total - 4)[0] == total
            ):
                pos += total  # the trace's filler between EPBs
                continue
        btype, total = head(buf, pos)
        end = pos + total
        if (
            total < 12
            or total % 4
            or total > MAX_BLOCK
            or end > n
            or btype in (SHB, IDB)
            or u32(buf, end - 4)[0] != total
        ):
            return pos
        if btype == EPB:
            if total < 32:
                return pos
            if_id, hi, lo, caplen, _ = epb(buf, pos + 8)
            if if_id >= len(interfaces) or pos + 28 + caplen > end - 4:
                return pos
            ts = (hi << 32) | lo if plain[if_id] else _ts(interfaces, if_id, hi, lo)
            append((ts << shift) | (base + pos))
        pos = end
    return pos


def _read_pcapng(r, path, sec=None, keys=None):
    """Yield the packets of a pcapng stream. With `keys` (a list), yield nothing for
    EPBs and append (ts_ns << KEY_SHIFT) | offset to it instead (Segment.keys())."""
    name = str(path)
    sec = sec or _Section(name)
    last_ts = 0
    st = sec.st
    interfaces = sec.interfaces
    epb_head = st["epb"]
    while r.fill(8, "block header"):
        buf, pos = r.buf, r.pos
        if keys is not None and sec.number >= 0:
            pos = r.pos = _keys_run(buf, pos, r.offset, sec, keys)
            if not r.fill(8, "block header"):
                break
            buf, pos = r.buf, r.pos
        off = r.offset + pos
        if buf[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
            head = r.take(8, "block header")
            bom = r.take(4, "section header")
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                raise _corrupt(name, "bad byte-order magic in section header", off)
            st = _section_structs(endian)
            total = st["u32"].unpack(head[4:])[0]
            if total < 28 or total % 4 or total > MAX_BLOCK:
                raise _corrupt(name, f"bad section header length {total}", off)
            rest = r.take(total - 12, "section header")
            if st["u32"].unpack(rest[-4:])[0] != total:
                raise _corrupt(name, "section header lengths disagree", off)
            sec.endian, sec.st, sec.interfaces = endian, st, []
            sec.number += 1
            interfaces = sec.interfaces
            epb_head = st["epb"]
            continue
        if sec.number < 0:
            raise _corrupt(name, "no section header block first", off)
        endian = sec.endian
        btype, total = st["head"].unpack_from(buf, pos)
        if total < 12 or total % 4 or total > MAX_BLOCK:
            raise _corrupt(name, f"bad block length {total}", off)
        r.fill(total, "block")
        buf, pos = r.buf, r.pos  # fill() may have moved the buffer
        r.pos = pos + total
        end = pos + total - 4
        if st["u32"].unpack_from(buf, end)[0] != total:
            raise _corrupt(name, "block lengths disagree", off)
        if btype == EPB:  # the hot path
            if keys is None:
                pkt = _epb(buf, pos, total, off, sec)
                last_ts = pkt.ts_ns
                yield pkt
                continue
            if total < 32:
                raise _corrupt(name, "packet block too short", off)
            if_id, hi, lo, caplen, _ = epb_head.unpack_from(buf, pos + 8)
            if if_id >= len(interfaces):
                raise _corrupt(name, f"packet names undefined interface {if_id}", off)
            if pos + 28 + caplen > end:
                raise _corrupt(name, "captured length runs past its block", off)
            keys.append((_ts(interfaces, if_id, hi, lo) << KEY_SHIFT) | off)
            continue
        body = buf[pos + 8 : end]
        if btype == IDB:
            if len(body) < 8:
                raise _corrupt(name, "interface block too short", off)
            linktype, _, snaplen = struct.unpack(endian + "HHI", body[:8])
            opts = _parse_options(body[8:], endian, name, off)
            ifname, desc, resol, tsoffset = "", "", 6, 0
            for code, val in opts:
                if code == IF_NAME:
                    ifname = val.decode("utf-8", "replace").rstrip("\0")
                elif code == IF_DESCRIPTION:
                    desc = val.decode("utf-8", "replace").rstrip("\0")
                elif code == IF_TSRESOL and val:
                    resol = val[0]
                elif code == IF_TSOFFSET and len(val) == 8:
                    tsoffset = struct.unpack(endian + "q", val)[0] * 1_000_000_000
            if not (resol & 0x80) and resol > 30 or (resol & 0x80) and (resol & 0x7F) > 63:
                raise _corrupt(name, f"impossible if_tsresol {resol}", off)
            iface = Interface(name, sec.number, len(interfaces), ifname, desc, linktype, snaplen)
            if resol & 0x80:
                interfaces.append((iface, 1, 1, resol & 0x7F, tsoffset))
            elif resol <= 9:
                interfaces.append((iface, 10 ** (9 - resol), 1, None, tsoffset))
            else:
                interfaces.append((iface, 1, 10 ** (resol - 9), None, tsoffset))
        elif keys is not None:
            continue  # segment files hold EPBs only
        elif btype == PB_OBSOLETE:
            if len(body) < 20:
                raise _corrupt(name, "packet block too short", off)
            if_id, _, hi, lo, caplen, length = struct.unpack(endian + "HHIIII", body[:20])
            if if_id >= len(interfaces):
                raise _corrupt(name, f"packet names undefined interface {if_id}", off)
            if 20 + caplen > len(body):
                raise _corrupt(name, "captured length runs past its block", off)
            optstart = 20 + ((caplen + 3) & ~3)
            _, comment = _packet_options(body[optstart:], endian, name, off, False)
            last_ts = _ts(interfaces, if_id, hi, lo)
            yield Packet(
                interfaces[if_id][0], last_ts, body[20 : 20 + caplen], length, None, comment, off
            )
        elif btype == SPB:
            if not interfaces:
                raise _corrupt(name, "simple packet block before any interface", off)
            if len(body) < 4:
                raise _corrupt(name, "packet block too short", off)
            iface = interfaces[0][0]
            length = struct.unpack(endian + "I", body[:4])[0]
            caplen = min(length, iface.snaplen or length, len(body) - 4)
            # an SPB has no timestamp: keep it where it sits in the file
            yield Packet(iface, last_ts, body[4 : 4 + caplen], length, None, None, off)
        # other blocks (name resolution, statistics, secrets, custom, local use) are
        # skipped, as the pcapng spec asks of readers that do not know them


# -- segment files ----------------------------------------------------------------------
KEY_SHIFT = 40  # Segment.keys(): ts_ns << 40 | offset (files up to 1 TiB)
KEY_OFFSET = (1 << KEY_SHIFT) - 1


class Segment:
    """One pcapng file opened for random access (mmap; a context manager).

    For the trace's segment files: one section, its interfaces, then EPBs (and blocks
    of other types, skipped) in runs that are each in time order. `keys()` reads every
    block once and returns `(ts_ns << KEY_SHIFT) | offset` of each packet in time
    order (ties in file order); `packet_at(offset)` decodes the packet there. A file
    that ends inside its last block (a trace killed mid-write) ends before that block.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.sec = _Section(str(self.path))
        self.truncated_at = None
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - open as long as the mmap
        except FileNotFoundError:
            raise NotFoundError(f"cannot read {self.path}: no such file") from None
        size = os.fstat(self._fh.fileno()).st_size
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    def keys(self):
        r = _Chunks(io.BytesIO(b""), str(self.path))
        r.buf = self._mm
        if not len(self._mm):
            return []
        if struct.unpack_from("<I", self._mm, 0)[0] != SHB:
            raise CorruptInputError(f"cannot read {self.path}: not a pcapng file")
        keys: list[int] = []
        try:
            for _ in _read_pcapng(r, self.path, self.sec, keys):
                pass
        except _Truncated:
            self.truncated_at = r.offset + r.pos
        keys.sort()  # runs: timsort merges them (linear when already in order)
        return keys

    def read_header(self):
        """Read the section header and the interfaces before the first packet (what
        packet_at() needs) without walking the packets; returns self."""
        if self.sec.number >= 0 or not len(self._mm):
            return self
        if struct.unpack_from("<I", self._mm, 0)[0] != SHB:
            raise CorruptInputError(f"cannot read {self.path}: not a pcapng file")
        r = _Chunks(io.BytesIO(b""), str(self.path))
        r.buf = self._mm
        with contextlib.suppress(_Truncated):
            next(_read_pcapng(r, self.path, self.sec), None)
        return self

    @property
    def mapped(self):
        """The file's bytes (an mmap; b"" for an empty file)."""
        return self._mm

    @property
    def interfaces(self):
        """Interface records of the file, by interface id (after keys())."""
        return [i[0] for i in self.sec.interfaces]

    def packet_at(self, offset):
        """The Packet whose EPB starts at `offset` (found by keys() or an index)."""
        mm = self._mm
        try:
            btype, total = self.sec.st["head"].unpack_from(mm, offset)
        except struct.error:
            raise _corrupt(self.path, "packet offset past the end of the file", offset) from None
        if (
            btype != EPB
            or total % 4
            or total > MAX_BLOCK
            or offset + total > len(mm)
            or self.sec.st["u32"].unpack_from(mm, offset + total - 4)[0] != total
        ):
            raise _corrupt(self.path, "no packet block at this offset", offset)
        return _epb(mm, offset, total, offset, self.sec)

    def close(self):
        if isinstance(self._mm, mmap.mmap):
            self._mm.close()
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _packet_options(opts, endian, name, off, flags_allowed):
    """(direction, comment) from a packet block's options."""
    direction = None
    comments = []
    for code, val in _parse_options(opts, endian, name, off):
        if code == OPT_COMMENT:
            comments.append(val.decode("utf-8", "replace"))
        elif code == EPB_FLAGS and flags_allowed and len(val) == 4:
            direction = DIRECTION_NAMES[struct.unpack(endian + "I", val)[0] & 3]
    return direction, "; ".join(comments) if comments else None


def interface_label(iface):
    """The name an input interface gets in a merged file: its if_name, else the file
    name stem (with `:<index>` for the second and later unnamed pcapng interfaces)."""
    if iface.name:
        return iface.name
    stem = Path(iface.file).stem
    return f"{stem}:{iface.index}" if iface.index else stem


def merge(inputs, output):
    """Merge pcap/pcapng files into one pcapng by timestamp; returns a summary dict.

    Every input is streamed (a k-way heap merge: memory is one record per input).
    Interface names are kept (pcapng if_name; the file name stem for classic pcap).
    The output appears only when every input was read to its end without error:
    it is written to a temp file in the output's directory and renamed on success.
    """
    inputs = [Path(p) for p in inputs]
    output = Path(output)
    if not inputs:
        raise UsageError("merge: no input files")
    out_real = output.resolve()
    for p in inputs:
        if not p.exists():
            raise NotFoundError(f"merge: cannot read {p}: no such file")
        if p.resolve() == out_real:
            raise UsageError(f"merge: output {output} is also an input")
    outdir = output.parent
    if not outdir.is_dir():
        raise NotFoundError(f"merge: output directory {outdir} does not exist")
    if output.is_dir():
        raise UsageError(f"merge: output {output} is a directory", "give a file name")
    streams = [read_packets(p) for p in inputs]
    try:
        replacing = atomic_write(output, fsync=True, perms=0o644)
    except OSError as exc:
        for gen in streams:
            gen.close()
        raise UsageError(f"merge: cannot write {output}: {exc.strerror}") from None
    try:
        with replacing as fh, PcapNgWriter(fh, flush_interval=None) as w:
            ifmap = _MergeInterfaces(w)
            # ties keep input order, then file order (heapq.merge is stable)
            rows = (
                (p.ts_ns, p.data, p.interface, p.direction, p.orig_len, p.comment)
                for p in heapq.merge(*streams, key=_ts_key)
            )
            count = w.write_rows(rows, ifmap)
    except BaseException:
        for gen in streams:
            gen.close()
        raise
    return {
        "output": str(output),
        "packets": count,
        "interfaces": len(ifmap),
        "inputs": len(inputs),
    }


def _ts_key(pkt):
    return pkt.ts_ns


class _MergeInterfaces(dict):
    """Input Interface -> output interface id, added to the writer on first use."""

    def __init__(self, writer):
        super().__init__()
        self.writer = writer

    def __missing__(self, iface):
        if_id = self[iface] = self.writer.add_interface(
            interface_label(iface), iface.description, iface.linktype, iface.snaplen
        )
        return if_id
