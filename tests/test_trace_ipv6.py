"""pyinspect trace over IPv6: a client reaches a container through a port published on
IPv6 (ip6tables DNAT, as Docker writes it on an `--ipv6` network), in namespaces the test
makes (testbed/tracetopo.py made dual-stack by testbed/ipv6.py).

What it shows: both sides of the IPv6 DNAT (the uplink before, the bridge, veth and eth0
after, the reply un-NATed), the DNAT rule's hop, neighbour discovery as `[nd]` lines, the
IPv6 packets in the pcapng at every capture point (read with tshark), and an IPv6 drop
explained.
"""

import shutil
import subprocess

import pytest
from test_trace import Trace, hops_of

from testbed import ipv6, tracetopo

pytestmark = pytest.mark.root


@pytest.fixture(params=["nft", "legacy"])
def topo6(request):
    t = tracetopo.Topology(prefix="p6", backend=request.param)
    try:
        v6 = ipv6.add_ipv6(t)
    except Exception:
        t.close()
        raise
    yield t, v6
    t.close()


def _tshark(pcap):
    """(interface, src, dst, tcp dst port, icmpv6 type, comment) of every IPv6 packet."""
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-Y",
            "ipv6",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.interface_name",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "icmpv6.type",
            "-e",
            "frame.comment",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def test_ipv6_dnat_both_sides_rule_ndp_and_pcapng(state_root, topo6, tmp_path):
    topo, v6 = topo6
    pcap = tmp_path / "t6.pcapng"
    nf_log6 = tracetopo.sh(topo.host, "cat /proc/sys/net/netfilter/nf_log/10").stdout
    tr = Trace(state_root, topo, "--duration", "4", "--via", "up0", "-w", pcap)
    try:
        assert v6.ctr_ips[0] in tr.ready["text"]  # the container's IPv6 address is traced
        got = ipv6.fetch6(topo, v6)
        assert got.returncode == 0 and "hello from" in got.stdout, got
        items, summary = tr.finish()
    finally:
        tr.kill()
    ctr, host, client = v6.ctr_ips[0], v6.host_ip, v6.client_ip
    flows = [i for i in items if i["type"] == "flow" and i["proto"] == "tcp"]
    assert len(flows) == 1, [i["text"] for i in items]
    f = flows[0]
    assert f["orig"][0] == client and f["orig"][2:] == [host, 8088]
    assert f["reply"][:2] == [ctr, 80] and f["nat"] == "dnat"
    assert f"DNAT [{host}]:8088 -> [{ctr}]:80" in f["text"]
    hops = hops_of(items, f["flow"])
    caps = [h for h in hops if h["hop"] == "capture"]
    # before DNAT on the uplink, after it on the bridge, the veth and in the container
    first = {}
    for h in caps:
        first.setdefault((h["point"], h["dir"]), (h["dst"], h["dport"], h["src"], h["sport"]))
    assert first[("up0", "in")][:2] == (host, 8088)
    assert first[("pt-br0", "out")][:2] == (ctr, 80)
    assert first[("vc0", "out")][:2] == (ctr, 80)
    assert first[("eth0", "in")][:2] == (ctr, 80)
    # the reply: from ctr:80 in the container, un-NATed to host:8088 on the uplink
    assert first[("eth0", "out")][2:] == (ctr, 80)
    assert first[("up0", "out")][2:] == (host, 8088)
    # the rule that did it
    nf = [h for h in hops if h["hop"] == "netfilter"]
    dnat = [h for h in nf if h["verdict"].startswith("DNAT") and ctr in h["verdict"]]
    assert dnat, [h["text"] for h in hops]
    assert "PREROUTING" in dnat[0]["chain"]
    if topo.ipt == "iptables-legacy":  # ip6tables TRACE, logged through the AF_INET6 nf_log
        assert dnat[0]["backend"] == "ip6tables-legacy" and dnat[0]["rule_num"] == 1
        assert f"--to-destination [{ctr}]:80" in dnat[0]["rule_text"]
    # nothing left: the nf_log binding, TRACE rules; no legacy table where none was in use
    assert tracetopo.sh(topo.host, "cat /proc/sys/net/netfilter/nf_log/10").stdout == nf_log6
    assert "PI-TRACE" not in tracetopo.sh(topo.host, "ip6tables-legacy-save").stdout
    if topo.ipt == "iptables-nft":
        assert not tracetopo.sh(topo.host, "cat /proc/net/ip6_tables_names").stdout.strip()
    assert summary["nat"] == [f"DNAT [{host}]:8088 -> [{ctr}]:80"]
    assert summary["loss"]["capture"] == 0
    # neighbour discovery: the host asks for the container's address on the bridge, the
    # container answers; both seen at the bridge, the veth and eth0
    nd = [i for i in items if i["type"] == "ndp"]
    ns = [i for i in nd if i["what"] == f"neighbor solicitation (who has {ctr})"]
    na = [i for i in nd if i["what"] == f"neighbor advertisement (is at {ctr})"]
    assert ns and na, [i["text"] for i in nd]
    assert {p for p, _d in ns[0]["points"]} >= {"pt-br0", "vc0", "eth0"}
    assert {p for p, _d in na[0]["points"]} >= {"pt-br0", "vc0", "eth0"}
    assert summary["neighbour_discovery"] >= 2
    assert not [i for i in items if i["type"] == "flow" and i["proto"] == "icmp6"]
    # the pcapng: the IPv6 packets at every capture point, NAT comments, NDP
    if not shutil.which("tshark"):
        pytest.skip("tshark not installed")
    rows = _tshark(pcap)
    c = topo.ctrs[0]
    syn_at = {r[0]: (r[2], r[3]) for r in rows if r[3] and r[1] == client}
    assert syn_at["up0@host"] == (host, "8088")
    assert syn_at["pt-br0"] == (ctr, "80")
    assert syn_at[f"vc0@host ({c})"] == (ctr, "80")
    assert syn_at[f"{c}/eth0"] == (ctr, "80")
    assert any(f"DNAT [{host}]:8088 -> [{ctr}]:80" in r[5] for r in rows)
    assert any(r[4] == "135" for r in rows) and any(r[4] == "136" for r in rows)


def test_ipv6_no_listener_drop_is_explained(state_root, tmp_path):
    topo = tracetopo.Topology(prefix="p6", listen=False, backend="nft")
    try:
        v6 = ipv6.add_ipv6(topo)
        tr = Trace(state_root, topo, "--duration", "3", "--via", "up0")
        try:
            got = ipv6.fetch6(topo, v6, timeout=2)
            assert got.returncode != 0
            items, summary = tr.finish()
        finally:
            tr.kill()
    finally:
        topo.close()
    drops = [i for i in items if i["type"] == "drop"]
    assert any(
        d["reason"] == "NO_SOCKET" and d["explanation"].startswith("no listener on port 80")
        for d in drops
    ), [i["text"] for i in items]
    flows = [i for i in items if i["type"] == "flow" and i["proto"] == "tcp"]
    assert flows and flows[0]["orig"][0] == v6.client_ip
