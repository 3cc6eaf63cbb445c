"""The in-kernel capture filter at a "filtered" point (an uplink), for real packets.

A client namespace sends to a host namespace over a veth; the capture sits on the host's
end. The target's addresses and published ports are compiled in as constants when there
are few (up to packets.NCONST_ADDRS / NCONST_PORTS, set in .rodata before load), and looked
up in BPF hash maps when there are more: both ways must keep exactly the target's packets.
"""

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import time

import pytest

from pyinspect.pcap import pcapng
from pyinspect.probes import packets
from pyinspect.probes.netns import in_netns
from pyinspect.trace.evidence import Interface, SegmentFiles

from testbed.waits import wait_for

pytestmark = pytest.mark.root

CONTAINER_IP = "10.213.0.10"  # behind the "host": reached through a route, never lives
HOST_IP, CLIENT_IP = "10.212.0.1", "10.212.0.2"
HOST_IP2 = "10.212.0.3"  # another address of the host: 5353 is not published there


@pytest.fixture
def wire(make_netns):
    host, client = make_netns("pcf-h"), make_netns("pcf-c")
    host.sh(
        f"ip link add up0 type veth peer name eth0 netns {client.name} && "
        f"ip addr add {HOST_IP}/24 dev up0 && ip addr add {HOST_IP2}/24 dev up0 && "
        "ip link set up0 up"
    )
    client.sh(
        f"ip addr add {CLIENT_IP}/24 dev eth0 && ip link set eth0 up && "
        f"ip route add 10.213.0.0/24 via {HOST_IP}"
    )
    ifindex = int(host.sh("cat /sys/class/net/up0/ifindex").stdout)
    return host, client, ifindex


def counts(cap, point=0):
    c = cap.counters()[point]
    return c.seen, c.lost, c.capped, c.shed, c.alost


_libbpf = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
_libbpf.bpf_map_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def map_keys(cap, name, keytype):
    """The keys of one of the capture's hash maps (read from the kernel)."""
    fd = cap.obj.map_fd(name)
    out, prev = [], None
    while True:
        key = keytype()
        if (
            _libbpf.bpf_map_get_next_key(
                fd, ctypes.byref(prev) if prev is not None else None, ctypes.byref(key)
            )
            != 0
        ):
            return out
        out.append(key)
        prev = key


def evidence(cap, directory, npoints=1):
    """Every packet of the evidence the capture holds now, written into a segment file
    and read back (pcapng.Packet)."""
    files = SegmentFiles(directory, [Interface(f"p{i}", "", cap.snaplen) for i in range(npoints)])
    for ch in cap.chunks():
        files.write(ch.parts, sum(len(p) for p in ch.parts))
        cap.consumed(ch)
    files.close()
    if not files.segments:
        return []
    return list(pcapng.read_packets(files.segments[0].path))


SENDER = rf"""
import socket, sys
def udp(ip, port, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(n):
        s.sendto(b"x" * 20, (ip, port))
udp("{HOST_IP}", 9999, 7)        # not the target: no address, no published port
udp("{HOST_IP}", 8088, 5)        # published port, but udp: not a match
udp("{CONTAINER_IP}", 5000, 3)   # to the container's address: match
udp("{HOST_IP}", 5353, 4)        # published udp port on the host address: match
udp("{HOST_IP2}", 5353, 2)       # the same port on another host address: not published
"""


def _decoys(n, base):
    return [f"10.214.{base}.{i + 1}" for i in range(n)]


@pytest.mark.parametrize("as_constants", [True, False], ids=["constants", "maps"])
def test_filter_keeps_exactly_the_targets_packets(wire, tmp_path, as_constants):
    """The target's addresses and published ports as constants, or (more of them than
    the constants hold, the real ones last) in the maps."""
    host, client, ifindex = wire
    addrs = [CONTAINER_IP]
    ports = [("", 8088, "tcp"), (HOST_IP, 5353, "udp")]
    if not as_constants:  # never-used addresses and ports first: past the constants
        addrs = _decoys(packets.NCONST_ADDRS, 1) + addrs
        ports = [
            (ip, 6000 + i, "udp") for i, ip in enumerate(_decoys(packets.NCONST_PORTS - 1, 2))
        ] + ports
    target = packets.Target(addrs=addrs, ports=ports)
    cfg = packets.make_config([], target, 256, 4096)
    assert (
        cfg.naddrs <= packets.NCONST_ADDRS and cfg.nports <= packets.NCONST_PORTS
    ) == as_constants, (cfg.naddrs, cfg.nports)
    point = packets.CapturePoint("up0", ifindex, host.path, "filtered", "uplink")
    with packets.PacketCapture([point], target) as cap:
        # the maps are filled only when they serve
        assert len(map_keys(cap, "addrs", ctypes.c_uint32)) == (0 if as_constants else len(addrs))
        assert len(map_keys(cap, "ports", packets._PortKey)) == (0 if as_constants else len(ports))
        t0 = time.time_ns()
        client.run("python3", "-c", SENDER)
        # a TCP SYN to the published port (refused with a RST: both directions cross up0)
        client.run(
            "python3",
            "-c",
            "import socket; s = socket.socket(); s.settimeout(2)\n"
            f"try: s.connect(('{HOST_IP}', 8088))\nexcept OSError: pass",
            check=False,
        )
        wait_for(lambda: counts(cap)[0] >= 3 + 4 + 2, 5, 0.05, "9 packets seen")
        time.sleep(0.2)
        got = counts(cap)
        records = [packets.parse(r) for r in cap.read()]
        kept = evidence(cap, tmp_path)
    # 3 to the container address + 4 to the published udp port + SYN in + RST out
    assert got == (9, 0, 0, 0, 0), got
    assert len(records) == 9
    assert sorted(r.direction for r in records) == ["in"] * 8 + ["out"]
    assert all(r.point == 0 and abs(r.ts_ns - t0) < 10**9 for r in records)
    udp = sorted(
        (socket.inet_ntoa(r.data[30:34]), struct.unpack("!H", r.data[36:38])[0])
        for r in records
        if r.data[23] == 17
    )
    assert udp == sorted([(CONTAINER_IP, 5000)] * 3 + [(HOST_IP, 5353)] * 4), udp
    # the evidence holds the same 9 packets, whole
    assert sorted(p.data for p in kept) == sorted(r.data for r in records)
    assert all(
        len(p.data) == p.orig_len == r.len
        for p, r in zip(
            sorted(kept, key=lambda p: p.data), sorted(records, key=lambda r: r.data), strict=True
        )
    )


def _budgeted_capture(wire, before_start, after_start=None):
    """An uplink capture with set_budget(*before_start) before start() and
    set_budget(*after_start) after it, then SENDER's 3 + 4 matching UDP packets sent:
    ((seen, lost, capped, shed, alost), records)."""
    host, client, ifindex = wire
    target = packets.Target(addrs=[CONTAINER_IP], ports=[(HOST_IP, 5353, "udp")])
    point = packets.CapturePoint("up0", ifindex, host.path, "filtered", "uplink")
    cap = packets.PacketCapture([point], target)
    cap.set_budget(*before_start)
    with cap:
        if after_start:
            cap.set_budget(*after_start)
        client.run("python3", "-c", SENDER)
        wait_for(lambda: counts(cap)[0] >= 7, 5, 0.05, "7 packets seen")
        time.sleep(0.1)
        return counts(cap), cap.read()


def test_budget_set_before_start_holds_from_the_first_packet(wire):
    """A budget given before start() is in the kernel before any program attaches: the
    packets beyond it are shed (counted), none copied unbudgeted."""
    got, records = _budgeted_capture(wire, (2,))
    assert got == (7, 0, 0, 5, 0), got
    assert len(records) == 2


@pytest.mark.parametrize("burst", [None, 4])
def test_budget_with_burst_keeps_what_was_left(wire, burst):
    """A refill with `burst` adds to what the kernel has left, up to `burst` records (a
    token bucket); without, it replaces it."""
    # nothing is sent before the refill: 3 are left
    got, records = _budgeted_capture(wire, (3,), (2, burst))
    kept = 2 if burst is None else 4  # replaced; or min(4, 3 + 2)
    assert got == (7, 0, 0, 7 - kept, 0), got
    assert len(records) == kept


LEARN_SENDER = rf"""
import socket
for sport, dport in ((7000, 9999), (41000, 9998)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("{CLIENT_IP}", sport))
    s.sendto(b"x", ("{HOST_IP}", dport))
    s.close()
"""


@pytest.mark.parametrize("container_ports", [1, packets.NCONST_PORTS + 1])
def test_learn_point_skips_replies_from_published_ports_unless_too_many(wire, container_ports):
    """Where the container's packets enter the host, its outbound flows are learned for the
    uplinks, except packets from its published ports (replies): those are known up to
    NCONST_PORTS constant ports; beyond that every flow is learned."""
    host, client, ifindex = wire  # the client plays the container here
    cports = [(7000, "udp")] + [(7100 + i, "tcp") for i in range(container_ports - 1)]
    target = packets.Target(addrs=[CLIENT_IP], container_ports=cports)
    many = container_ports > packets.NCONST_PORTS
    assert (packets.make_config([], target, 256, 4096).ncports > packets.NCONST_PORTS) == many
    point = packets.CapturePoint("up0", ifindex, host.path, "all+learn", "veth")
    with packets.PacketCapture([point], target) as cap:
        client.run("python3", "-c", LEARN_SENDER)
        # ARP also counts as seen here: wait for the last packet sent to be learned instead
        flows = wait_for(
            lambda: (
                [k for k in map_keys(cap, "flows", packets._FlowKey) if k.local_port == 41000]
                and map_keys(cap, "flows", packets._FlowKey)
            ),
            5,
            0.05,
            "flow learned",
        )
    learned = sorted(
        (k.local_port, socket.inet_ntoa(struct.pack("<I", k.peer_ip)), k.peer_port, k.proto)
        for k in flows
    )
    expect = [(41000, HOST_IP, 9998, socket.IPPROTO_UDP)]
    if many:
        expect.insert(0, (7000, HOST_IP, 9999, socket.IPPROTO_UDP))
    assert learned == expect, learned


TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
VNET_HDR = struct.Struct("<BBHHHH")  # struct virtio_net_hdr: flags, gso_type, hdr_len..


@pytest.fixture
def tap(make_netns):
    """A tap (with a virtio-net header) in a namespace of its own: what is written to the
    fd arrives on tap0 as received, tc ingress included. Gone when the fd closes."""
    host = make_netns("pcf-t")
    with in_netns(host.path):  # a tap lives where /dev/net/tun was opened
        fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"tap0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        host.sh("ip link set tap0 up")
        ifindex = int(host.sh("cat /sys/class/net/tap0/ifindex").stdout)
        yield host, fd, ifindex
    finally:
        os.close(fd)


@pytest.mark.parametrize("evidence_on", [True, False], ids=["evidence", "capped"])
@pytest.mark.parametrize("payload", [100, 6000], ids=["linear", "paged"])
def test_filter_reads_headers_outside_the_linear_data(tap, tmp_path, payload, evidence_on):
    """The programs read headers in place when the linear data holds them, and through
    bpf_skb_load_bytes when it does not. A frame of a page or more written with hdr_len 14
    is built by tun with only its Ethernet header linear, the IP and UDP/TCP headers in page
    fragments: matching, the SYN/FIN/RST check and the copies must see the same bytes as
    for a small, linear frame. The evidence copy is the whole frame; the analysis record
    (its first ASNAP bytes) comes from the evidence copy, or, with evidence off (capped),
    straight from the packet."""
    from scapy.all import IP, TCP, UDP, Ether

    host, fd, ifindex = tap
    eth = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:02")
    body = b"x" * payload
    frames = [
        bytes(f)
        for f in (
            eth / IP(src=CLIENT_IP, dst=CONTAINER_IP) / UDP(sport=40000, dport=5000) / body,
            eth / IP(src=CLIENT_IP, dst=HOST_IP) / UDP(sport=40000, dport=9999) / body,
            eth / IP(src=CLIENT_IP, dst=HOST_IP) / UDP(sport=40000, dport=5353) / body,
            eth / IP(src=CLIENT_IP, dst=HOST_IP) / TCP(sport=40001, dport=8088, flags="S") / body,
            eth / IP(src=CLIENT_IP, dst=HOST_IP) / TCP(sport=40001, dport=8088, flags="A") / body,
        )
    ]
    target = packets.Target(addrs=[CONTAINER_IP], ports=[("", 8088, "tcp"), (HOST_IP, 5353, "udp")])
    point = packets.CapturePoint("tap0", ifindex, host.path, "filtered", "uplink")
    cap = packets.PacketCapture([point], target)
    cap.set_budget(0)  # only the SYN, on the control budget, is analysed
    cap.set_evidence(evidence_on)
    with cap:
        for frame in frames:
            os.write(fd, VNET_HDR.pack(0, 0, 14, 0, 0, 0) + frame)
        wait_for(lambda: counts(cap)[0] >= 4, 5, 0.05, "4 packets seen")
        time.sleep(0.2)
        got, records = counts(cap), [packets.parse(r) for r in cap.read()]
        kept = evidence(cap, tmp_path)
    # matched: to the container, to the published udp port, the SYN and the ACK; of
    # those only the SYN is not shed
    capped = 0 if evidence_on else 4
    assert got == (4, 0, capped, 3, 0), got
    assert len(records) == 1, records
    syn = frames[3]
    r = records[0]
    assert (r.direction, r.len) == ("in", len(syn))
    assert r.data == syn[: packets.ASNAP]
    assert (r.stream_pos >= 0) == evidence_on
    matched = [frames[i] for i in (0, 2, 3, 4)]
    assert [p.data for p in kept] == (matched if evidence_on else [])


def test_analysis_records_read_in_place_across_laps_of_the_ring(wire):
    """Batches of one record size are read in place a stride apart (RingReader's bulk
    path, the newest few one by one): over several laps of a 64 KiB ring, every packet's
    record comes back once, in order, with its own bytes."""
    host, client, ifindex = wire
    target = packets.Target(addrs=[CONTAINER_IP], ports=[])
    point = packets.CapturePoint("up0", ifindex, host.path, "filtered", "uplink")
    sender = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "a, b = int(sys.argv[1]), int(sys.argv[2])\n"
        f"for i in range(a, b): s.sendto(b'seq%06d' % i, ('{CONTAINER_IP}', 5000))\n"
    )
    per_lap = (64 << 10) // ((packets.AREC_SIZE + 8 + 7) & ~7)
    batch, total = per_lap // 3, per_lap * 3  # several reads a lap, three laps
    got: list[int] = []
    bulk_reads = 0
    with packets.PacketCapture([point], target, ring_mb=4, analysis_mb=1 / 16) as cap:
        assert cap.analysis_bytes == 64 << 10
        for a in range(0, total, batch):
            b = min(a + batch, total)
            client.run("python3", "-c", sender, str(a), str(b))
            wait_for(lambda b=b: counts(cap)[0] >= b, 5, 0.02, f"{b} packets seen")

            def take(buf, starts):
                nonlocal bulk_reads
                bulk_reads += not isinstance(starts, list)
                for s in starts:
                    rec = packets.parse(bytes(buf[s : s + packets.AREC_SIZE]))
                    seq = rec.data.find(b"seq")
                    got.append(int(rec.data[seq + 3 : seq + 9]))

            cap.read_in_place(take)
            for ch in cap.chunks():  # the evidence ring is not the subject: keep it empty
                cap.consumed(ch)
        assert counts(cap) == (total, 0, 0, 0, 0)
    assert got == list(range(total))
    assert bulk_reads == len(range(0, total, batch))  # every batch took the bulk path
