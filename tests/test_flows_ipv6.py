"""IPv6 in the trace's analysis, on packets built byte by byte: parsing (extension headers,
later fragments), the ident that stands in for the IP id, fast-path keys, neighbour
discovery text, IPv6 endpoints in flow text, ip6tables DNAT targets, and how a capture
target's addresses and ports split by family."""

import socket
import struct

from pyinspect.probes import iptsave
from pyinspect.probes import packets as P
from pyinspect.trace import flows as F

A, B = "fd00:77::2", "fd00:30::a"


def ip6(nh, payload, src=A, dst=B):
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), nh, 64)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + payload
    )


def eth(l3, etype=0x86DD):
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", etype) + l3


def tcp(sport, dport, seq, ack, flags, data=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data


def udp(sport, dport, data):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def test_parse_tcp_udp_and_extension_headers():
    p = F.parse_frame(eth(ip6(6, tcp(40000, 8088, 7, 0, 0x02))))
    assert p.tuple == ("tcp", A, 40000, B, 8088) and p.seq == 7 and p.flags == 0x02
    assert p.iplen == 40 + 20
    # hop-by-hop (8 bytes) then destination options (16 bytes) before UDP
    hbh = bytes([60, 0]) + b"\0" * 6
    dst = bytes([17, 1]) + b"\0" * 14
    u = F.parse_frame(eth(ip6(0, hbh + dst + udp(5353, 53, b"query-one"))))
    assert u.tuple == ("udp", A, 5353, B, 53)
    # a later fragment has no ports
    frag = bytes([17, 0]) + struct.pack("!H", 185 << 3) + b"\0" * 4
    f = F.parse_frame(eth(ip6(44, frag + b"x" * 16)))
    assert f.proto == "udp" and (f.sport, f.dport) == (0, 0)
    # IPv4 still parses as before, and parse_ip takes a bare IPv6 payload (trace hops)
    assert F.parse_ip(ip6(6, tcp(1, 2, 3, 4, 0x10))).tuple == ("tcp", A, 1, B, 2)


def test_ident_tells_same_length_packets_apart_and_survives_nat():
    one = F.parse_frame(eth(ip6(17, udp(5000, 9000, b"payload-aaaa"))))
    two = F.parse_frame(eth(ip6(17, udp(5000, 9000, b"payload-bbbb"))))
    assert one.iplen == two.iplen and one.ident != two.ident
    natted = F.parse_frame(eth(ip6(17, udp(5000, 80, b"payload-aaaa"), dst="fd00:99::1")))
    assert natted.ident == one.ident


def test_fast_key_ipv6():
    data = eth(ip6(6, tcp(40000, 8088, 7, 9, 0x10, b"x" * 10)))
    key = F.fast_key(data)
    assert key == data[20:21] + data[22:58]
    assert F.fast_key(eth(ip6(6, tcp(40000, 8088, 7, 9, 0x02, b"x" * 10)))) is None  # SYN
    assert F.fast_key(eth(ip6(58, bytes([128, 0]) + b"\0" * 30))) is None  # ICMPv6


def test_neighbour_discovery_text_and_flow_text():
    target = socket.inet_pton(socket.AF_INET6, B)
    ns = eth(ip6(58, bytes([135, 0, 0, 0, 0, 0, 0, 0]) + target, "fe80::1", "ff02::1:ff00:a"))
    pkt = F.parse_frame(ns)
    assert pkt.proto == "icmp6" and pkt.sport == 135 and pkt.sport in F.LINK_ICMP6
    assert F.ndp_text(pkt, ns) == f"neighbor solicitation (who has {B})"
    na = eth(ip6(58, bytes([136, 0, 0, 0, 0x60, 0, 0, 0]) + target, B, "fe80::1"))
    assert F.ndp_text(F.parse_frame(na), na) == f"neighbor advertisement (is at {B})"
    echo = F.parse_frame(eth(ip6(58, bytes([128, 0]) + b"\0" * 30)))
    assert F.ndp_text(echo) == "echo request" and echo.sport not in F.LINK_ICMP6
    f = F.Flow(1, "tcp", (A, 40000, "fd00:77::1", 8088), reply=(B, 80, A, 40000))
    assert f.nat_text() == f"DNAT [fd00:77::1]:8088 -> [{B}]:80"
    assert f.header().startswith(f"tcp [{A}]:40000 -> [fd00:77::1]:8088  DNAT")


def test_ip6tables_dnat_targets_and_published_ports():
    text = """*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -d fd00:77::1/128 -p tcp -m tcp --dport 8088 -j DNAT --to-destination [fd00:30::a]:80
-A PREROUTING -p udp -m udp --dport 53 -j DNAT --to-destination fd00:30::a
COMMIT
"""
    rules = iptsave.parse_save(text, "legacy6")["nat"]["PREROUTING"].rules
    assert [iptsave.dnat_target(r) for r in rules] == [(B, 80), (B, None)]
    assert rules[0].tool == "ip6tables-legacy"


def test_capture_target_splits_by_family():
    t = P.Target(
        ["172.30.0.10", B, "fe80::1"],
        [
            ("0.0.0.0", 8088, "tcp"),
            ("", 53, "udp"),
            ("10.0.0.1", 81, "tcp"),
            ("fd00::1", 82, "tcp"),
        ],
    )
    a4, a6, p4, p6 = P.split_target(t)
    assert a4 == ["172.30.0.10"] and a6 == [B, "fe80::1"]
    assert [p[1] for p in p4] == [8088, 53, 81]
    assert [p[1] for p in p6] == [8088, 53, 82]  # any address: both families
    cfg = P.make_config([], t, 256, 4096)
    assert (cfg.naddrs, cfg.naddrs6, cfg.nports, cfg.nports6) == (1, 2, 3, 3)
    assert bytes(cfg.addrs6[0]) == socket.inet_pton(socket.AF_INET6, B)
    assert bytes(cfg.ports6[0].ip) == bytes(16)  # any
