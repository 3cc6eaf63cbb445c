"""The in-kernel capture filter at a "filtered" point (an uplink), for real packets.

A client namespace sends to a host namespace over a veth; the capture sits on the host's
end. The target's addresses and published ports are compiled in as constants when there
are few, and looked up in BPF hash maps when there are many: both ways must keep exactly
the target's packets.
"""

import fcntl
import os
import struct
import time

import pytest

from pyinspect.probes import packets
from pyinspect.probes.netns import in_netns

pytestmark = pytest.mark.root

CONTAINER_IP = "10.213.0.10"      # behind the "host": reached through a route, never lives
HOST_IP, CLIENT_IP = "10.212.0.1", "10.212.0.2"


@pytest.fixture
def wire(make_netns):
    host, client = make_netns("pcf-h"), make_netns("pcf-c")
    host.sh(f"ip link add up0 type veth peer name eth0 netns {client.name} && "
            f"ip addr add {HOST_IP}/24 dev up0 && ip link set up0 up")
    client.sh(f"ip addr add {CLIENT_IP}/24 dev eth0 && ip link set eth0 up && "
              f"ip route add 10.213.0.0/24 via {HOST_IP}")
    ifindex = int(host.sh("cat /sys/class/net/up0/ifindex").stdout)
    return host, client, ifindex


SENDER = r"""
import socket, sys
def udp(ip, port, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(n):
        s.sendto(b"x" * 20, (ip, port))
udp("%(host)s", 9999, 7)          # not the target: no address, no published port
udp("%(host)s", 8088, 5)          # published port, but udp: not a match
udp("%(ctr)s", 5000, 3)           # to the container's address: match
udp("%(host)s", 5353, 4)          # published udp port on the host address: match
""" % {"host": HOST_IP, "ctr": CONTAINER_IP}


@pytest.mark.parametrize("as_constants", [True, False])
def test_filter_keeps_exactly_the_targets_packets(wire, monkeypatch, as_constants):
    host, client, ifindex = wire
    if not as_constants:                       # too many to compile in: the maps serve
        monkeypatch.setattr(packets, "CONST_ADDRS", 0)
        monkeypatch.setattr(packets, "CONST_PORTS", 0)
    target = packets.Target(addrs=[CONTAINER_IP],
                            ports=[("", 8088, "tcp"), (HOST_IP, 5353, "udp")])
    flags = packets.target_cflags(target)
    assert ("-DNADDRS=1" in flags and "-DNPORTS=2" in flags) == as_constants, flags
    point = packets.CapturePoint("up0", ifindex, host.path, "filtered", "uplink")
    with packets.PacketCapture([point], target) as cap:
        client.run("python3", "-c", SENDER)
        # a TCP SYN to the published port (refused with a RST: both directions cross up0)
        client.run("python3", "-c", "import socket; s = socket.socket(); s.settimeout(2)\n"
                   f"try: s.connect(('{HOST_IP}', 8088))\nexcept OSError: pass", check=False)
        deadline = time.monotonic() + 5
        seen = 0
        while time.monotonic() < deadline:
            seen, lost, shed = cap.counters()[0]
            if seen >= 3 + 4 + 2:
                break
            time.sleep(0.1)
        time.sleep(0.2)
        seen, lost, shed = cap.counters()[0]
        records = [packets.parse(r) for r in cap.read()]
    # 3 to the container address + 4 to the published udp port + SYN in + RST out
    assert (seen, lost, shed) == (9, 0, 0), (seen, lost, shed)
    assert len(records) == 9
    dirs = sorted(d for _ts, _p, d, _ln, _data in records)
    assert dirs == ["in"] * 8 + ["out"]


def _budgeted_capture(wire, before_start, after_start=None):
    """An uplink capture with set_budget(*before_start) before start() and
    set_budget(*after_start) after it, then SENDER's 3 + 4 matching UDP packets sent:
    ((seen, lost, shed), records)."""
    host, client, ifindex = wire
    target = packets.Target(addrs=[CONTAINER_IP], ports=[(HOST_IP, 5353, "udp")])
    point = packets.CapturePoint("up0", ifindex, host.path, "filtered", "uplink")
    cap = packets.PacketCapture([point], target)
    cap.set_budget(*before_start)
    with cap:
        if after_start:
            cap.set_budget(*after_start)
        client.run("python3", "-c", SENDER)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and cap.counters()[0][0] < 7:
            time.sleep(0.1)
        return cap.counters()[0], cap.read()


def test_budget_set_before_start_holds_from_the_first_packet(wire):
    """A budget given before start() is in the kernel before any program attaches: the
    packets beyond it are shed (counted), none copied unbudgeted."""
    counts, records = _budgeted_capture(wire, (2,))
    assert counts == (7, 0, 5), counts
    assert len(records) == 2


@pytest.mark.parametrize("burst", [None, 4])
def test_budget_with_burst_keeps_what_was_left(wire, burst):
    """A refill with `burst` adds to what the kernel has left, up to `burst` records (a
    token bucket); without, it replaces it."""
    # nothing is sent before the refill: 3 are left
    counts, records = _budgeted_capture(wire, (3,), (2, burst))
    kept = 2 if burst is None else 4                  # replaced; or min(4, 3 + 2)
    assert counts == (7, 0, 7 - kept), counts
    assert len(records) == kept


LEARN_SENDER = r"""
import socket
for sport, dport in ((7000, 9999), (41000, 9998)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("%(ctr)s", sport))
    s.sendto(b"x", ("%(host)s", dport))
    s.close()
""" % {"host": HOST_IP, "ctr": CLIENT_IP}


@pytest.mark.parametrize("container_ports", [1, 9])
def test_learn_point_skips_replies_from_published_ports_unless_too_many(wire,
                                                                        container_ports):
    """Where the container's packets enter the host, its outbound flows are learned for the
    uplinks, except packets from its published ports (replies): those are known up to
    CONST_PORTS compiled-in ports; beyond that every flow is learned."""
    host, client, ifindex = wire                # the client plays the container here
    cports = [(7000, "udp")] + [(7100 + i, "tcp") for i in range(container_ports - 1)]
    target = packets.Target(addrs=[CLIENT_IP], container_ports=cports)
    assert (f"-DNCPORTS={container_ports}" in packets.target_cflags(target)) == \
        (container_ports <= packets.CONST_PORTS)
    point = packets.CapturePoint("up0", ifindex, host.path, "all+learn", "veth")
    with packets.PacketCapture([point], target) as cap:
        client.run("python3", "-c", LEARN_SENDER)
        deadline = time.monotonic() + 5       # ARP also counts as seen here: wait for the
        learned = []                          # last packet sent to be learned instead
        while time.monotonic() < deadline and 41000 not in learned:
            time.sleep(0.1)
            learned = sorted(k.local_port for k in cap.bpf["flows"].keys())
    expect = [7000, 41000] if container_ports > packets.CONST_PORTS else [41000]
    assert learned == expect, learned


TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
VNET_HDR = struct.Struct("<BBHHHH")       # struct virtio_net_hdr: flags, gso_type, hdr_len..


@pytest.fixture
def tap(make_netns):
    """A tap (with a virtio-net header) in a namespace of its own: what is written to the
    fd arrives on tap0 as received, tc ingress included. Gone when the fd closes."""
    host = make_netns("pcf-t")
    with in_netns(host.path):                    # a tap lives where /dev/net/tun was opened
        fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"tap0",
                                              IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        host.sh("ip link set tap0 up")
        ifindex = int(host.sh("cat /sys/class/net/tap0/ifindex").stdout)
        yield host, fd, ifindex
    finally:
        os.close(fd)


@pytest.mark.parametrize("payload", [100, 6000], ids=["linear", "paged"])
def test_filter_reads_headers_outside_the_linear_data(tap, payload):
    """The programs read headers in place when the linear data holds them, and through
    bpf_skb_load_bytes when it does not. A frame of a page or more written with hdr_len 14
    is built by tun with only its Ethernet header linear, the IP and UDP/TCP headers in page
    fragments: matching, the SYN/FIN/RST check and the record copy must see the same bytes
    as for a small, linear frame."""
    from scapy.all import IP, TCP, UDP, Ether

    host, fd, ifindex = tap
    eth = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:02")
    body = b"x" * payload
    frames = [
        eth / IP(src=CLIENT_IP, dst=CONTAINER_IP) / UDP(sport=40000, dport=5000) / body,
        eth / IP(src=CLIENT_IP, dst=HOST_IP) / UDP(sport=40000, dport=9999) / body,
        eth / IP(src=CLIENT_IP, dst=HOST_IP) / UDP(sport=40000, dport=5353) / body,
        eth / IP(src=CLIENT_IP, dst=HOST_IP) / TCP(sport=40001, dport=8088, flags="S") / body,
        eth / IP(src=CLIENT_IP, dst=HOST_IP) / TCP(sport=40001, dport=8088, flags="A") / body,
    ]
    target = packets.Target(addrs=[CONTAINER_IP],
                            ports=[("", 8088, "tcp"), (HOST_IP, 5353, "udp")])
    point = packets.CapturePoint("tap0", ifindex, host.path, "filtered", "uplink")
    cap = packets.PacketCapture([point], target)
    cap.set_budget(0)            # only the SYN, on the control budget, is copied
    with cap:
        for frame in frames:
            os.write(fd, VNET_HDR.pack(0, 0, 14, 0, 0, 0) + bytes(frame))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and cap.counters()[0][0] < 4:
            time.sleep(0.1)
        time.sleep(0.2)
        counts, records = cap.counters()[0], [packets.parse(r) for r in cap.read()]
    # matched: to the container, to the published udp port, the SYN and the ACK; of
    # those only the SYN is not shed
    assert counts == (4, 0, 3), counts
    assert len(records) == 1, records
    _ts, _point, direction, length, data = records[0]
    syn = bytes(frames[3])
    assert (direction, length) == ("in", len(syn))
    assert data == syn[:packets.DEFAULT_SNAPLEN]
