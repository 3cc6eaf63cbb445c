"""A dual-stack default bridge through the real CLI, in a netns that plays the host:
`PYINSPECT_IPV6=1` (Docker's daemon.json `ipv6`) with a ULA subnet, `pyinspect run -p`
publishes on IPv6 with ip6tables DNAT in the host's iptables backend, a client namespace
reaches the container over IPv6, `pyinspect trace` shows both sides of the IPv6 DNAT and
the rule, and `rm` takes the rules, addresses and forwarding sysctl away again.
"""

import json
import subprocess

import pytest

from pyinspect.runtime import iptables

from conftest import Cli
from helpers.network_helpers import cname
from testbed.waits import wait_listen

pytestmark = pytest.mark.root

SUBNET6 = "fd00:29:1::/64"
CTR6, GW6 = "fd00:29:1::2", "fd00:29:1::1"
HOST6, CLIENT6 = "fd00:77:1::1", "fd00:77:1::2"
ENV = {"PYINSPECT_IPV6": "1", "PYINSPECT_SUBNET6": SUBNET6}
SERVE = "mkdir -p /www && echo hello-v6 > /www/index.html && exec httpd -f -p 80 -h /www"


def test_run_publishes_on_ipv6_and_trace_shows_the_dnat(make_netns, state_root):
    host, client = make_netns("pn6-h"), make_netns("pn6-c")
    host.sh(
        f"ip link add pnc6 type veth peer name eth0 netns {client.name} && "
        f"ip -6 addr add {HOST6}/64 dev pnc6 nodad && ip link set pnc6 up"
    )
    client.sh(f"ip -6 addr add {CLIENT6}/64 dev eth0 nodad && ip link set eth0 up")
    forwarding = host.sh("sysctl -n net.ipv6.conf.all.forwarding").stdout.strip()
    cli = Cli(state_root, netns=host.name)
    name = cname("pn6")
    cli("run", "-d", "--name", name, "-p", "8088:80", "busybox", "sh", "-c", SERVE, env=ENV)
    try:
        wait_listen(name, 80)
        # the container: its ULA address and the default route via the bridge
        inner = subprocess.run(
            ["ip", "netns", "exec", name, "sh", "-c", "ip -6 addr; ip -6 route"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"{CTR6}/64" in inner and f"default via {GW6}" in inner, inner
        net = json.loads(cli("network", "inspect", "bridge", env=ENV).stdout)[0]
        assert net["EnableIPv6"] and net["Subnet6"] == SUBNET6 and net["Gateway6"] == GW6
        assert [m["IPv6Address"] for m in net["Containers"].values()] == [f"{CTR6}/64"]
        # ip6tables in the backend pyinspect writes (the host's `ip6tables`), Docker's layout
        ip6t = iptables.tool(iptables.backend(), 6)
        nat = host.sh(f"{ip6t}-save -t nat").stdout
        assert f"--to-destination [{CTR6}]:80" in nat, nat
        assert f"-s {SUBNET6} ! -o pyinspect0" in nat and "MASQUERADE" in nat
        assert host.sh("sysctl -n net.ipv6.conf.all.forwarding").stdout.strip() == "1"
        # `map` shows the container's IPv6 address (and its link-local one) on eth0
        rows = json.loads(cli("map", "-c", name, "--json").stdout)
        eth0 = [r for r in rows if r["ifname"] == "eth0"]
        assert eth0 and f"{CTR6}/64" in eth0[0]["addrs"], rows
        assert any(a.startswith("fe80::") for a in eth0[0]["addrs"])
        # the trace, while the client fetches over IPv6
        tr = subprocess.Popen(
            cli.argv("trace", "--container", name, "--json", "--duration", "4"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = json.loads(tr.stdout.readline() or "{}")
        assert ready.get("type") == "ready", tr.stderr.read()
        got = client.run(
            "timeout", "5", "busybox", "wget", "-q", "-O-", f"http://[{HOST6}]:8088/", check=False
        )
        out, err = tr.communicate(timeout=60)
        assert got.returncode == 0 and "hello-v6" in got.stdout, got
        assert tr.returncode == 0, err
        items = [json.loads(line) for line in out.splitlines() if line.strip()]
        flows = [i for i in items if i["type"] == "flow" and i["proto"] == "tcp"]
        assert len(flows) == 1, [i.get("text") for i in items]
        f = flows[0]
        assert f["orig"][0] == CLIENT6 and f["orig"][2:] == [HOST6, 8088]
        assert f["reply"][:2] == [CTR6, 80] and f["nat"] == "dnat"
        hops = [i for i in items if i["type"] == "hop" and i["flow"] == f["flow"]]
        caps = {(h["point"], h["dir"]): (h["dst"], h["dport"]) for h in hops if "point" in h}
        assert caps[("pnc6", "in")] == (HOST6, 8088)  # before DNAT, on the uplink
        assert caps[("eth0", "in")] == (CTR6, 80)  # after it, in the container
        dnat = [h for h in hops if h["hop"] == "netfilter" and h["verdict"].startswith("DNAT")]
        assert dnat and CTR6 in dnat[0]["verdict"], [h["text"] for h in hops]
        # hairpin: the container reaches its own published port through the host's address
        hair = subprocess.run(
            ["ip", "netns", "exec", name, "timeout", "5", "busybox", "wget", "-q", "-O-"]
            + [f"http://[{HOST6}]:8088/"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert hair.returncode == 0 and "hello-v6" in hair.stdout, hair.stderr
    finally:
        cli("rm", "-f", name, check=False, env=ENV)
    # gone with the last container: the rules, the bridge's address, the sysctl change
    assert "pyinspect" not in host.sh(f"{ip6t}-save").stdout
    assert host.sh("sysctl -n net.ipv6.conf.all.forwarding").stdout.strip() == forwarding


def test_user_network_ipv6_and_bad_subnets(make_netns, state_root):
    host = make_netns("pn6-h")
    cli = Cli(state_root, netns=host.name)
    net = cname("v6n")
    names = [cname("pn6"), cname("pn6")]
    cli("network", "create", "--ipv6", "--subnet", "fd00:29:2::/64", net)
    try:
        for n in names:
            cli("run", "-d", "--name", n, "--network", net, "busybox", "sleep", "600")
        info = json.loads(cli("network", "inspect", net).stdout)[0]
        assert info["EnableIPv6"] and info["Subnet6"] == "fd00:29:2::/64"
        ip6 = {m["Name"]: m["IPv6Address"].split("/")[0] for m in info["Containers"].values()}
        assert sorted(ip6.values()) == ["fd00:29:2::2", "fd00:29:2::3"]
        # the two containers reach each other over IPv6 on their bridge
        ping = subprocess.run(
            ["ip", "netns", "exec", names[0], "busybox", "ping", "-6", "-c", "1", "-W", "3"]
            + [ip6[names[1]]],
            capture_output=True,
            text=True,
            check=False,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        for n in names:
            cli("rm", "-f", n, check=False)
        cli("network", "rm", net, check=False)
    # bad input: one line, exit 2, nothing recorded
    for args, words in (
        (["--ipv6", "--subnet", "fe80::/64"], "invalid IPv6 subnet 'fe80::/64'"),
        (["--ipv6", "--subnet", "fd00:29:3::/96"], "/64 or larger"),
        (["--subnet", "fd00:29:3::/64"], "without --ipv6"),
    ):
        proc = cli("network", "create", *args, "bad6", check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert "bad6" not in cli("network", "ls").stdout
