"""pcapng writer, pcap/pcapng reader and merge, checked against tshark/capinfos/tcpdump."""

import os
import signal
import struct
import subprocess
import sys
import time

import pytest
from scapy.all import ICMP, IP, TCP, Ether, raw

from pyinspect import __version__
from pyinspect.errors import CorruptInputError, NotFoundError, UsageError
from pyinspect.pcap.pcapng import PcapNgWriter, merge, read_packets

from conftest import have, tshark_fields

pytestmark = pytest.mark.skipif(not have("tshark"), reason="tshark not installed")

T0 = 1_764_417_600_123_456_789  # an epoch in ns with every digit used
CLIENT, HOSTIP, CIP = "192.168.77.2", "192.168.77.10", "172.18.0.2"
DNAT = f"ct 42 DNAT {CLIENT}:40000->{HOSTIP}:8088 => {CIP}:80"


def capinfos(path):
    proc = subprocess.run(
        ["capinfos", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def dnat_pair():
    """The seed's story: SYN to HOST:8088 on the uplink, the same SYN to C:80 on the veth."""
    syn_up = raw(
        Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:10")
        / IP(src=CLIENT, dst=HOSTIP)
        / TCP(sport=40000, dport=8088, flags="S", seq=1)
    )
    syn_veth = raw(
        Ether(src="02:42:ac:12:00:01", dst="02:42:ac:12:00:02")
        / IP(src=CLIENT, dst=CIP, ttl=63)
        / TCP(sport=40000, dport=80, flags="S", seq=1)
    )
    synack_veth = raw(
        Ether(src="02:42:ac:12:00:02", dst="02:42:ac:12:00:01")
        / IP(src=CIP, dst=CLIENT)
        / TCP(sport=80, dport=40000, flags="SA", ack=2)
    )
    synack_up = raw(
        Ether(src="02:00:00:00:00:10", dst="02:00:00:00:00:02")
        / IP(src=HOSTIP, dst=CLIENT, ttl=63)
        / TCP(sport=8088, dport=40000, flags="SA", ack=2)
    )
    return syn_up, syn_veth, synack_veth, synack_up


def write_dnat(path):
    syn_up, syn_veth, synack_veth, synack_up = dnat_pair()
    with PcapNgWriter(path, hardware="test-hw", os="test-os") as w:
        up = w.add_interface("eth0@host", "uplink", snaplen=262144)
        veth = w.add_interface("vethab12cd3@host (test)", "host end of test's veth")
        eth0 = w.add_interface("test/eth0", "container test", linktype=1)
        w.write_packet(up, T0, syn_up, direction="in", comment=DNAT)
        w.write_packet(
            veth,
            T0 + 1_500,
            syn_veth,
            direction="out",
            comment="ct 42 nat:PREROUTING:rule:1 -> filter:FORWARD:rule:3",
        )
        w.write_packet(eth0, T0 + 2_001, syn_veth, direction="in")
        w.write_packet(eth0, T0 + 30_000, synack_veth, direction="out")
        w.write_packet(veth, T0 + 31_000, synack_veth, direction="in")
        w.write_packet(
            up, T0 + 32_003, synack_up, direction="out", comment="ct 42 SNAT (reply) — ünïcode ok"
        )


def test_writer_round_trip_and_tshark_sees_the_nat_story(tmp_path):
    path = tmp_path / "dnat.pcapng"
    write_dnat(path)
    got = list(read_packets(path))
    assert [p.interface.name for p in got] == [
        "eth0@host",
        "vethab12cd3@host (test)",
        "test/eth0",
        "test/eth0",
        "vethab12cd3@host (test)",
        "eth0@host",
    ]
    assert [p.ts_ns - T0 for p in got] == [0, 1_500, 2_001, 30_000, 31_000, 32_003]
    assert [p.direction for p in got] == ["in", "out", "in", "out", "in", "out"]
    assert got[0].comment == DNAT and got[2].comment is None
    assert got[0].data == dnat_pair()[0]

    rows = tshark_fields(
        path,
        "frame.interface_name",
        "tcp.dstport",
        "frame.packet_flags_direction",
        "frame.comment",
        "frame.time_epoch",
    )
    assert [(r[0], r[1]) for r in rows] == [
        ("eth0@host", "8088"),
        ("vethab12cd3@host (test)", "80"),
        ("test/eth0", "80"),
        ("test/eth0", "40000"),
        ("vethab12cd3@host (test)", "40000"),
        ("eth0@host", "40000"),
    ]
    assert [int(r[2], 16) for r in rows] == [1, 2, 1, 2, 1, 2]
    assert rows[0][3] == DNAT
    assert rows[5][3] == "ct 42 SNAT (reply) — ünïcode ok"
    assert rows[1][4] == "1764417600.123458289"  # nanoseconds survive (tsresol 9)

    info = capinfos(path)
    assert "Number of packets:   6" in info
    assert "Number of interfaces in file: 3" in info
    assert "Name = vethab12cd3@host (test)" in info
    assert "Description = uplink" in info
    assert "Time precision = nanoseconds (9)" in info
    assert f"Capture application: pyinspect {__version__}" in info
    assert "Capture hardware:    test-hw" in info
    assert "Capture oper-sys:    test-os" in info


def test_writer_odd_lengths_snaplen_and_orig_len(tmp_path):
    path = tmp_path / "odd.pcapng"
    with PcapNgWriter(path) as w:
        a = w.add_interface("pyinspect0", "bridge", snaplen=96)
        b = w.add_interface("raw", "raw IP", linktype=101, tsresol_ns=False)
        for n in range(0, 9):
            w.write_packet(
                a, T0 + n, bytes(range(n)), orig_len=n + 1000, comment="x" * n if n % 2 else None
            )
        w.write_packet(b, T0 + 123_456, raw(IP(src="10.9.0.1", dst="10.9.0.2") / ICMP()))
        with pytest.raises(UsageError):
            w.write_packet(7, T0, b"x")
        with pytest.raises(UsageError):
            w.write_packet(-1, T0, b"x")
    got = list(read_packets(path))
    assert [len(p.data) for p in got[:9]] == list(range(9))
    assert [p.orig_len for p in got[:9]] == [n + 1000 for n in range(9)]
    assert [p.comment for p in got[:4]] == [None, "x", None, "xxx"]
    assert got[9].ts_ns == (T0 + 123_456) // 1000 * 1000  # written in microseconds
    assert got[9].interface.linktype == 101
    rows = tshark_fields(path, "frame.len", "frame.cap_len", "ip.dst", "frame.interface_name")
    assert rows[3][:2] == ["1003", "3"]
    assert rows[9][2:] == ["10.9.0.2", "raw"]


# -- reading other writers' files ------------------------------------------------------
def classic_pcap(path, packets, endian="<", nsec=False, linktype=1):
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    with open(path, "wb") as fh:
        fh.write(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
        for ts_ns, data in packets:
            frac = ts_ns % 10**9 if nsec else (ts_ns % 10**9) // 1000
            fh.write(struct.pack(endian + "IIII", ts_ns // 10**9, frac, len(data), len(data)))
            fh.write(data)


def be_pcapng(path, packets, tsresol=6, name="be0"):
    """A big-endian pcapng with microsecond (or 2^-n) timestamps, as other tools write."""

    def block(btype, body):
        return struct.pack(">II", btype, len(body) + 12) + body + struct.pack(">I", len(body) + 12)

    def opt(code, val):
        return struct.pack(">HH", code, len(val)) + val + b"\0" * (-len(val) % 4)

    out = block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1) + b"\0\0\0\0")
    out += block(
        1,
        struct.pack(">HHI", 1, 0, 0)
        + opt(2, name.encode())
        + opt(9, bytes([tsresol]))
        + b"\0\0\0\0",
    )
    for ts_ns, data in packets:
        if tsresol & 0x80:
            units = (ts_ns << (tsresol & 0x7F)) // 10**9
        else:
            units = ts_ns // 10 ** (9 - tsresol)
        body = struct.pack(">IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data))
        body += data + b"\0" * (-len(data) % 4) + opt(1, b"from BE") + b"\0\0\0\0"
        out += block(6, body)
    path.write_bytes(out)


def icmp(i, src="10.66.0.1"):
    return raw(Ether() / IP(src=src, dst="10.66.0.2") / ICMP(seq=i))


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nsec", [False, True])
def test_read_classic_pcap_all_magics(tmp_path, endian, nsec):
    path = tmp_path / f"cap-{'be' if endian == '>' else 'le'}-{nsec}.pcap"
    pkts = [(T0 + i * 1_234_567, icmp(i)) for i in range(5)]
    classic_pcap(path, pkts, endian, nsec)
    got = list(read_packets(path))
    want = [ts if nsec else ts // 1000 * 1000 for ts, _ in pkts]
    assert [p.ts_ns for p in got] == want
    assert {p.interface.name for p in got} == {path.stem}
    # tshark agrees on every timestamp (our conversion is independent of its own)
    epochs = [r[0] for r in tshark_fields(path, "frame.time_epoch")]
    assert epochs == [f"{t // 10**9}.{t % 10**9:09d}" for t in want]


@pytest.mark.parametrize("tsresol", [6, 3, 0x80 | 20])
def test_read_big_endian_pcapng_and_tsresol(tmp_path, tsresol):
    path = tmp_path / "be.pcapng"
    be_pcapng(path, [(T0 + i * 7_777_777, icmp(i)) for i in range(4)], tsresol=tsresol)
    got = list(read_packets(path))
    assert [p.interface.name for p in got] == ["be0"] * 4
    assert all(p.comment == "from BE" for p in got)
    mine = [p.ts_ns for p in got]
    # the same file through tshark: it must read the same instants (to its ns print)
    theirs = [int(r[0].replace(".", "")) for r in tshark_fields(path, "frame.time_epoch")]
    assert all(abs(a - b) <= 1 for a, b in zip(mine, theirs, strict=True)), (mine, theirs)
    assert len(theirs) == 4


def test_merge_mixed_inputs_keeps_names_and_order(tmp_path):
    a = tmp_path / "container.pcap"  # tcpdump-like, usec, little-endian
    b = tmp_path / "host.pcap"  # nsec, big-endian
    c = tmp_path / "be.pcapng"
    d = tmp_path / "dnat.pcapng"
    classic_pcap(a, [(T0 + i * 10_000, icmp(i, "10.66.0.1")) for i in range(50)])
    classic_pcap(
        b,
        [(T0 + 5_000 + i * 10_000, icmp(i, "10.66.0.3")) for i in range(50)],
        endian=">",
        nsec=True,
    )
    be_pcapng(c, [(T0 + 7_000 + i * 20_000, icmp(i, "10.66.0.5")) for i in range(10)])
    write_dnat(d)
    out = tmp_path / "merged.pcapng"
    res = merge([a, b, c, d], out)
    assert res["packets"] == 50 + 50 + 10 + 6 and res["interfaces"] == 6
    rows = tshark_fields(out, "frame.time_epoch", "frame.interface_name", "ip.src")
    assert len(rows) == 116
    times = [int(r[0].replace(".", "")) for r in rows]
    assert times == sorted(times)
    names = {r[1] for r in rows}
    assert names == {
        "container",
        "host",
        "be0",
        "eth0@host",
        "vethab12cd3@host (test)",
        "test/eth0",
    }
    assert {r[2] for r in rows if r[1] == "host"} == {"10.66.0.3"}
    # comments and directions of pcapng inputs survive
    dn = tshark_fields(
        out,
        "frame.comment",
        "frame.packet_flags_direction",
        filt='frame.interface_name == "eth0@host" && tcp.dstport == 8088',
    )
    assert dn == [[DNAT, "0x00000001"]]
    # and mergecap agrees on the packet count of the same inputs
    ref = tmp_path / "ref.pcapng"
    subprocess.run(["mergecap", "-w", str(ref), str(a), str(b), str(c), str(d)], check=True)
    assert len(tshark_fields(ref, "frame.number")) == 116


def test_read_simple_and_obsolete_packet_blocks(tmp_path):
    """SPB (no timestamp: takes the previous one) and the obsolete PB, as old tools write."""

    def block(btype, body):
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)

    a, b = icmp(1), icmp(2)
    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", 1, 0, 0))  # no options: usec, no name
    ts = T0 // 1000
    out += block(
        2,
        struct.pack("<HHIIII", 0, 0, ts >> 32, ts & 0xFFFFFFFF, len(a), len(a))
        + a
        + b"\0" * (-len(a) % 4),
    )
    out += block(3, struct.pack("<I", len(b)) + b + b"\0" * (-len(b) % 4))
    out += block(4, b"\0\0\0\0")  # name resolution: skipped
    path = tmp_path / "old.pcapng"
    path.write_bytes(out)
    got = list(read_packets(path))
    assert [p.data for p in got] == [a, b]
    assert [p.ts_ns for p in got] == [ts * 1000, ts * 1000]
    assert got[0].interface.name == ""
    assert len(tshark_fields(path, "frame.number")) == 2
    merged = tmp_path / "m.pcapng"
    merge([path], merged)
    assert [r[0] for r in tshark_fields(merged, "frame.interface_name")] == ["old", "old"]


def _corruptions(tmp_path):
    good = tmp_path / "good.pcapng"
    write_dnat(good)
    data = good.read_bytes()
    pcap = tmp_path / "good.pcap"
    classic_pcap(pcap, [(T0 + i, icmp(i)) for i in range(3)])
    shb_len = struct.unpack("<I", data[4:8])[0]
    cases = {
        "truncated.pcapng": data[:-10],
        "cut-in-header.pcapng": data[: len(data) - 20],
        "truncated.pcap": pcap.read_bytes()[:-5],
        "garbage.pcap": b"this is not a capture at all, honest" * 4,
        "empty.pcap": b"",
        "badlen.pcapng": data[:shb_len] + struct.pack("<II", 1, 13) + data[shb_len + 8 :],
        "no-shb.pcapng": data[:4] + data[shb_len + 4 :],
        "lengths-disagree.pcapng": data[:-4] + b"\xff\xff\xff\x7f",
    }
    paths = []
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        paths.append(p)
    return good, paths


def test_merge_refuses_corrupt_input_without_output(tmp_path):
    good, bad = _corruptions(tmp_path)
    out = tmp_path / "out" / "merged.pcapng"
    out.parent.mkdir()
    for p in bad:
        with pytest.raises(CorruptInputError, match=p.name) as exc:
            merge([good, p], out)
        assert p.name in str(exc.value), str(exc.value)
        assert "\n" not in str(exc.value)
        assert not out.exists() and not list(out.parent.iterdir()), p.name
    # an earlier good output is left as it was
    merge([good], out)
    before = out.read_bytes()
    with pytest.raises(CorruptInputError):
        merge([good, bad[0]], out)
    assert out.read_bytes() == before and len(list(out.parent.iterdir())) == 1
    with pytest.raises(NotFoundError):
        merge([tmp_path / "nope.pcap"], out)
    with pytest.raises(UsageError):
        merge([out], out)
    with pytest.raises(UsageError, match="is a directory"):
        merge([good], tmp_path)


WRITER = r"""
import sys, time
from pyinspect.pcap.pcapng import PcapNgWriter
w = PcapNgWriter(sys.argv[1], flush_every=100, flush_interval=0.05)
i = w.add_interface("test/eth0", "killed while writing")
n = 0
while True:
    c = f"n={n}" if n % 10 == 0 else None
    w.write_packet(i, time.time_ns(), bytes(60 + n % 7), comment=c)
    n += 1
    if n == 1000:
        print("ready", flush=True)
    if n % 50 == 0:
        time.sleep(0.001)
"""


def test_sigkill_leaves_a_readable_file(tmp_path):
    path = tmp_path / "killed.pcapng"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    res = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr  # no "cut short" error
    count = len(res.stdout.split())
    assert count >= 1000
    assert len(list(read_packets(path))) == count


@pytest.mark.root
@pytest.mark.skipif(not (have("tcpdump") and have("busybox")), reason="needs tcpdump, busybox")
def test_merge_real_tcpdump_captures(tmp_path, make_netns):
    ns = make_netns("pp")
    ns.sh("ip addr add 10.77.0.1/24 dev lo")
    caps = {}
    for name, extra in (("lo-usec", []), ("lo-nsec", ["--time-stamp-precision=nano"])):
        path = tmp_path / f"{name}.pcap"
        # --immediate-mode: without it this libpcap/kernel pair loses the last TPACKET_V3
        # block on SIGINT (tcpdump reports "0 packets captured")
        tcpdump = ns.popen(
            "tcpdump",
            "-i",
            "lo",
            "--immediate-mode",
            "-U",
            "-n",
            "-w",
            str(path),
            *extra,
            "icmp",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = tcpdump.stderr.readline()  # "listening on lo ..."
            assert "listening" in line, line
            dst = "127.0.0.1" if name == "lo-usec" else "10.77.0.1"
            ns.run("busybox", "ping", "-c", "3", "-i", "0.1", "-W", "2", dst)
        finally:
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(timeout=10)
            tcpdump.stderr.close()
        caps[name] = path
    if have("dumpcap"):  # a pcapng with an IDB named "lo" and a statistics block at the end
        path = tmp_path / "dumpcap.pcapng"
        dump = ns.popen(
            "dumpcap",
            "-i",
            "lo",
            "-q",
            "-f",
            "icmp",
            "-c",
            "4",
            "-w",
            str(path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:  # ping until dumpcap has its 4 packets (it starts capturing a bit late)
            deadline = time.monotonic() + 20
            while dump.poll() is None and time.monotonic() < deadline:
                ns.run("busybox", "ping", "-c", "1", "-W", "2", "10.77.0.1")
                time.sleep(0.1)
            assert dump.wait(timeout=10) == 0
        finally:
            if dump.poll() is None:
                dump.kill()
                dump.wait()
        caps["dumpcap"] = path
    mine = tmp_path / "story.pcapng"
    write_dnat(mine)
    out = tmp_path / "all.pcapng"
    res = merge([*caps.values(), mine], out)
    rows = tshark_fields(out, "frame.interface_name", "icmp.type", "ip.dst", "frame.time_epoch")
    assert res["packets"] == len(rows)
    by_if = {}
    for r in rows:
        by_if.setdefault(r[0], []).append(r)
    # ping on lo: 3 echo requests + 3 replies per capture
    assert sorted(r[1] for r in by_if["lo-usec"]) == ["0", "0", "0", "8", "8", "8"]
    assert {r[2] for r in by_if["lo-usec"]} == {"127.0.0.1"}
    assert {r[2] for r in by_if["lo-nsec"]} == {"10.77.0.1"}
    assert len(by_if["eth0@host"]) == 2
    times = [int(r[3].replace(".", "")) for r in rows]
    assert times == sorted(times)
    # nanosecond capture keeps its nanoseconds through the merge
    src = [int(r[0].replace(".", "")) for r in tshark_fields(caps["lo-nsec"], "frame.time_epoch")]
    assert src == [int(r[3].replace(".", "")) for r in by_if["lo-nsec"]]
    info = capinfos(out)
    assert "Name = lo-nsec" in info and "Name = lo-usec" in info
    if "dumpcap" in caps:
        assert len(by_if["lo"]) == 4 and {r[2] for r in by_if["lo"]} == {"10.77.0.1"}
        assert "Number of interfaces in file: 6" in info
    else:
        assert "Number of interfaces in file: 5" in info
