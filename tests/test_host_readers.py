"""The one reader per host fact, on namespaces of the test's own: iptables rules of both
backends (probes.iptsave), sysctls (runtime.sysctl), routes and neighbours (probes.netns),
and the libpcap filter binding (probes.pcapfilter)."""

import json
import shutil
import struct
import subprocess
import sys

import pytest

from pyinspect.errors import UsageError
from pyinspect.probes import iptsave
from pyinspect.probes.pcapfilter import BpfFilter
from pyinspect.runtime import sysctl

pytestmark = pytest.mark.root


def in_ns(ns, code):
    """Run python `code` in netns `ns` (setns by nsenter); its last stdout line as JSON."""
    proc = subprocess.run(
        ["nsenter", f"--net={ns.path}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sysctl_path_keeps_dots_in_interface_names():
    assert str(sysctl.path("net.ipv4.ip_forward")) == "/proc/sys/net/ipv4/ip_forward"
    assert (
        str(sysctl.path("net.ipv4.conf.eth0.100.rp_filter"))
        == "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"
    )
    assert (
        str(sysctl.path("net.ipv6.conf.br.x.forwarding"))
        == "/proc/sys/net/ipv6/conf/br.x/forwarding"
    )
    assert (
        str(sysctl.path("net.ipv4.neigh.v.1.gc_stale_time"))
        == "/proc/sys/net/ipv4/neigh/v.1/gc_stale_time"
    )


def test_sysctl_read_in_a_namespace_with_a_dotted_interface(make_netns):
    ns = make_netns("hr")
    ns.sh(
        "ip link add hr.dot type veth peer name hrpeer"
        " && echo 1 > /proc/sys/net/ipv4/conf/hr.dot/rp_filter"
        " && echo 0 > /proc/sys/net/ipv4/conf/lo/rp_filter"
    )
    got = in_ns(
        ns,
        "import json; from pyinspect.runtime import sysctl; print(json.dumps("
        "[sysctl.read('net.ipv4.conf.hr.dot.rp_filter'), sysctl.read('net.ipv4.conf.lo."
        "rp_filter'), sysctl.read('net.ipv4.conf.nosuch.rp_filter')]))",
    )
    assert got == ["1", "0", None]


@pytest.mark.skipif(
    not (shutil.which("iptables-legacy") and shutil.which("iptables-nft")),
    reason="needs iptables-legacy and iptables-nft",
)
def test_published_ports_and_counts_from_both_backends(make_netns):
    ns = make_netns("hr")
    ns.sh(
        "iptables-legacy -t nat -A PREROUTING -p tcp -d 10.9.9.9/32 --dport 8080 "
        "-j DNAT --to-destination 172.30.0.2:80 && "
        "iptables-nft -t nat -N HRTEST && iptables-nft -t nat -A PREROUTING -j HRTEST && "
        "iptables-nft -t nat -A HRTEST -p udp --dport 53 -j DNAT --to-destination 172.30.0.2"
        " && iptables-nft -t nat -A HRTEST -p tcp --dport 99 -j DNAT "
        "--to-destination 172.30.0.9:9"
    )
    got = in_ns(
        ns,
        "import json; from pyinspect.probes import iptsave as i; "
        "print(json.dumps([i.published_ports(['172.30.0.2']), "
        "i.counts(i.load('nft').tables), i.counts(i.load('legacy', 'nat').tables)]))",
    )
    ports, nft, legacy = got
    assert ports == [["10.9.9.9", 8080, "tcp", 80], [None, 53, "udp", 53]]
    assert nft[0] == 3 and nft[2]["nat"] == 3 and nft[1] >= 5  # 4 built-in nat chains + HRTEST
    assert legacy[0] == 1 and list(legacy[2]) == ["nat"]


def test_parse_save_reads_counters_policies_and_targets():
    text = (
        "*nat\n:PREROUTING ACCEPT [3:180]\n:DOCKER - [0:0]\n"
        "[7:420] -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n"
        "[1:60] -A DOCKER ! -i docker0 -p tcp -m tcp --dport 8088 "
        "-j DNAT --to-destination 172.17.0.2:80\nCOMMIT\n"
    )
    tables = iptsave.parse_save(text, "nft")
    pre, docker = tables["nat"]["PREROUTING"], tables["nat"]["DOCKER"]
    assert (pre.policy, pre.pkts, pre.bytes) == ("ACCEPT", 3, 180)
    assert pre.rules[0].pkts == 7 and pre.rules[0].target == "DOCKER"
    rule = docker.rules[0]
    assert iptsave.dnat_target(rule) == ("172.17.0.2", 80) and rule.get("dport") == "8088"
    assert rule.get("iif") is None and ("iif", True, "docker0") in rule.matches
    assert iptsave.counts(tables) == (2, 2, {"nat": 2})


def test_routes_route_get_and_neighbours_match_ip(make_netns):
    ns = make_netns("hr")
    ns.sh(
        "ip link add hrd0 type veth peer name hrd1 && ip link set hrd1 up && "
        "ip link set hrd0 up && ip addr add 10.77.0.1/24 dev hrd0 && "
        "ip route add 10.88.0.0/16 via 10.77.0.254 && "
        "ip route add default via 10.77.0.2 && "
        "ip neigh add 10.77.0.9 lladdr 02:00:00:00:00:09 dev hrd0 nud permanent && "
        "ip route add 10.99.0.0/16 dev hrd0 table 100"
    )
    got = in_ns(
        ns,
        "import json; from pyinspect.probes.netns import RtnlSocket\n"
        "with RtnlSocket() as s:\n"
        "    idx = {l['ifname']: l['index'] for l in s.links()}\n"
        "    print(json.dumps([idx, s.routes(), s.route_get('10.88.1.1'), "
        "s.route_get('127.0.0.1'), s.neighbours()]))",
    )
    idx, routes, via, lo, neigh = got
    ip = json.loads(ns.run("ip", "-j", "-4", "route", "show", "table", "main").stdout)
    want = sorted((r["dst"], r.get("gateway")) for r in ip)
    have = sorted(
        (
            "default"
            if r["dst"] is None
            else r["dst"]
            if r["dst_len"] == 32
            else f"{r['dst']}/{r['dst_len']}",
            r["gateway"],
        )
        for r in routes
    )
    assert have == want and ("10.88.0.0/16", "10.77.0.254") in have
    assert all(r["table"] == 254 for r in routes)  # table 100's route is not in main
    assert via == idx["hrd0"] and lo == idx["lo"]
    want = {"family": 2, "ifindex": idx["hrd0"], "state": 0x80, "ip": "10.77.0.9"}
    assert {**want, "mac": "02:00:00:00:00:09"} in neigh


def test_route_get_without_a_route_is_none(make_netns):
    ns = make_netns("hr")
    got = in_ns(
        ns,
        "import json; from pyinspect.probes.netns import RtnlSocket\n"
        "with RtnlSocket() as s: print(json.dumps(s.route_get('10.1.2.3')))",
    )
    assert got is None


def _udp_frame(dport):
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    )
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + struct.pack("!HHHH", 5000, dport, 8, 0)


def test_one_libpcap_binding_for_trace_and_export():
    from pyinspect.pcap import export as pcap_export
    from pyinspect.probes import packets

    assert pcap_export.BpfFilter is BpfFilter and issubclass(packets.BpfFilter, BpfFilter)
    f = packets.BpfFilter("udp dst port 53", 96)
    assert f.match(_udp_frame(53)) and not f.match(_udp_frame(54))
    assert f.match(_udp_frame(53), 1500)
    with pytest.raises(UsageError, match="bad --filter 'udp port'"):
        BpfFilter("udp port")
