"""trace/stream.py's StreamFile on its own: pcapng blocks in, one readable stream out.

The blocks are what the capture programs produce (EPBs, with and without options, and
local-use filler blocks between them); the stream is read back with pyinspect's reader and
with tshark.
"""

import io
import os
import struct
import subprocess
import time

import pytest

from pyinspect.pcap.pcapng import PcapNgWriter, read_packets
from pyinspect.trace.evidence import Interface
from pyinspect.trace.stream import StreamFile, with_comment

FILLER = struct.pack("<II", 0x80000001, 20) + b"\0" * 8 + struct.pack("<I", 20)


def frame(n):
    """An Ethernet/IPv4/UDP frame to port 1000 + n."""
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    )
    return b"\xaa" * 6 + b"\xbb" * 6 + b"\x08\x00" + ip + struct.pack("!HHHH", 999, 1000 + n, 8, 0)


def epbs(n, direction=None):
    """n EPBs as the writer makes them, each followed by a filler block."""
    buf = io.BytesIO()
    w = PcapNgWriter(buf)
    w.add_interface("x", "", snaplen=0)
    w.flush()
    head = len(buf.getvalue())
    for i in range(n):
        w.write_packet(0, 1_000_000_000 + i, frame(i), direction=direction)
    w.flush()
    data = buf.getvalue()[head:]
    blocks, off = [], 0
    while off < len(data):
        blen = struct.unpack_from("<I", data, off + 4)[0]
        blocks.append(data[off : off + blen])
        off += blen
    return blocks


def chunk(blocks):
    """(bytes, offset of each EPB in it)."""
    out, offs = b"", []
    for b in blocks:
        offs.append(len(out))
        out += b + FILLER
    return out, offs


@pytest.fixture
def stream(tmp_path):
    path = tmp_path / "s.pcapng"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    made = []

    def factory(**kw):
        s = StreamFile(fd, [Interface("web/eth0", "container", 262144)], **kw)
        made.append(s)
        return s

    yield factory, path
    for s in made:
        s.close()


def test_without_delay_bytes_pass_through(stream):
    factory, path = stream
    s = factory()
    data, _ = chunk(epbs(3))
    assert s.write([data[:50], data[50:]], len(data)) == (0, len(s.header()))
    s.close()
    pkts = list(read_packets(path))
    assert [p.data for p in pkts] == [frame(i) for i in range(3)]
    assert pkts[0].interface.name == "web/eth0"
    assert path.read_bytes() == s.header() + data


@pytest.mark.parametrize("direction", [None, "in"])
def test_held_back_packets_get_their_comment(stream, direction):
    factory, path = stream
    s = factory(delay_ns=10**9)
    data, offs = chunk(epbs(4, direction))
    _seg, base = s.write([data], len(data))
    assert path.stat().st_size == len(s.header())  # held back
    assert s.comment(base + offs[1], "flow 7: DNAT 10.0.0.1:8080 -> 172.17.0.2:80")
    assert s.comment(base + offs[3], "flow 8")
    s.release(time.monotonic_ns())  # the analysis settled them
    s.comment(base + offs[2], "too late")
    s.close()
    pkts = list(read_packets(path))
    assert [p.comment for p in pkts] == [
        None,
        "flow 7: DNAT 10.0.0.1:8080 -> 172.17.0.2:80",
        None,
        "flow 8",
    ]
    assert [p.data for p in pkts] == [frame(i) for i in range(4)]
    assert [p.direction for p in pkts] == [direction] * 4
    assert s.comments == 2 and s.comments_late == 1
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.comment", "-e", "udp.dstport"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines() == [
        "\t1000",
        "flow 7: DNAT 10.0.0.1:8080 -> 172.17.0.2:80\t1001",
        "\t1002",
        "flow 8\t1003",
    ]


def test_held_back_memory_is_bounded(stream):
    factory, path = stream
    s = factory(delay_ns=10**12)
    data, offs = chunk(epbs(2))
    s.max_held = len(data) * 2
    bases = [s.write([data], len(data))[1] for _ in range(3)]
    # the third chunk pushed the first out: its packets can no longer be commented
    assert path.stat().st_size == len(s.header()) + len(data)
    assert not s.comment(bases[0] + offs[0], "late")
    assert s.comment(bases[1] + offs[0], "kept")
    s.close()
    assert [p.comment for p in read_packets(path)] == [None, None, "kept", None, None, None]


def test_filter_keeps_matching_packets_only(stream):
    factory, path = stream
    s = factory(keep=lambda data, wirelen: data[-6:-4] == struct.pack("!H", 1002))
    data, _ = chunk(epbs(4))
    s.write([data], len(data))
    s.close()
    assert [p.data for p in read_packets(path)] == [frame(2)]
    assert s.packets_filtered == 3


def test_with_comment_keeps_existing_options(tmp_path):
    (epb,) = epbs(1, "out")
    out = with_comment(epb, "c")
    assert len(out) % 4 == 0 and struct.unpack_from("<I", out, len(out) - 4)[0] == len(out)
    buf = io.BytesIO()
    w = PcapNgWriter(buf)
    w.add_interface("x", "", snaplen=0)
    w.flush()
    (tmp_path / "c.pcapng").write_bytes(buf.getvalue() + out)
    (p,) = list(read_packets(tmp_path / "c.pcapng"))
    assert (p.direction, p.comment, p.data) == ("out", "c", frame(0))
