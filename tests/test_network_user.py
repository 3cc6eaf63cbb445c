"""User-defined networks, the embedded DNS and the MTU, through the real CLI, in a netns
that plays the host. The upstream resolver is testbed/dnsserver.py in a netns the test
made (config.json's `dns_upstream`), never the machine's."""

import json
import os
import re
import subprocess
import sys

import pytest
from test_network import IPT, UPSTREAM, UPSTREAM_HOST, wire  # noqa: E402

from conftest import Cli
from helpers.network_helpers import cname
from testbed import dnsserver

pytestmark = pytest.mark.root

SERVE = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www"


class Env:
    def __init__(self, ns, cli):
        self.ns, self.cli, self.names, self.nets = ns, cli, [], []

    def net(self, *args):
        self.nets.append(args[-1])
        return self.cli("network", "create", *args).stdout.strip()

    def run(self, net, *args, name=None):
        name = name or cname("pnu")
        self.names.append(name)
        self.cli("run", "-d", "--name", name, "--network", net, *args)
        return name

    def ex(self, name, *cmd):
        return self.cli("exec", name, *cmd, check=False)

    def ip(self, name, net):
        info = json.loads(self.cli("network", "inspect", net).stdout)[0]
        return next(
            m["IPv4Address"].split("/")[0] for m in info["Containers"].values() if m["Name"] == name
        )


@pytest.fixture
def env(make_netns, state_root):
    host, up = make_netns("pnu-h"), make_netns("pnu-u")
    wire(host, up, "pnuu0", UPSTREAM_HOST, UPSTREAM)
    (state_root / "config.json").write_text(
        json.dumps({"network": {"dns_upstream": f"{UPSTREAM}:53"}})
    )
    server = dnsserver.start(up.name, UPSTREAM, {"ext.test": "10.9.9.9"})
    e = Env(host, Cli(state_root, netns=host.name))
    e.up = up
    yield e
    server.terminate()
    server.wait()
    for name in e.names:
        e.cli("rm", "-f", name, check=False)
    for net in e.nets:
        e.cli("network", "rm", net, check=False)
    leftover = host.run(IPT + "-save").stdout
    assert "pyinspect" not in leftover, leftover


def test_names_resolve_within_a_network_and_nothing_crosses_networks(env):
    env.net("--subnet", "10.77.0.0/24", "pnu-app")
    env.net("pnu-oth")
    a = env.run(
        "pnu-app", "--network-alias", "web", "busybox", "sh", "-c", SERVE.format(text="from-a")
    )
    b = env.run("pnu-app", "busybox", "sleep", "600")
    c = env.run("pnu-oth", "busybox", "sh", "-c", SERVE.format(text="from-c"))
    ip_a, ip_c = env.ip(a, "pnu-app"), env.ip(c, "pnu-oth")
    assert ip_a.startswith("10.77.0.")
    assert env.ex(b, "cat", "/etc/resolv.conf").stdout.startswith("nameserver 127.0.0.11\n")
    # by name and by alias, through the embedded DNS
    look = env.ex(b, "nslookup", a)
    assert look.returncode == 0 and f"Address: {ip_a}" in look.stdout, look
    got = env.ex(b, "timeout", "3", "wget", "-q", "-O", "-", f"http://{a}/")
    assert got.stdout.strip() == "from-a", got
    assert (
        env.ex(b, "timeout", "3", "wget", "-q", "-O", "-", "http://web/").stdout.strip() == "from-a"
    )
    # over TCP too, and a name we know has no AAAA: NOERROR with no answer (not NXDOMAIN)
    tcp = _query(b, a, "A", tcp=True)
    assert tcp["rcode"] == "NOERROR" and tcp["a"] == [ip_a], tcp
    aaaa = _query(b, a, "AAAA")
    assert aaaa["rcode"] == "NOERROR" and aaaa["a"] == [], aaaa
    assert _query(b, "ext.test", "A", tcp=True)["a"] == ["10.9.9.9"]
    # other names go to the upstream resolver (from the host's netns)
    ext = env.ex(b, "nslookup", "ext.test")
    assert "Address: 10.9.9.9" in ext.stdout, ext
    # a container on another network: not resolvable, and not reachable by address
    assert ip_c not in env.ex(b, "nslookup", c).stdout
    assert env.ex(b, "timeout", "2", "wget", "-q", "-O", "-", f"http://{ip_c}/").returncode != 0
    assert env.ex(c, "timeout", "2", "wget", "-q", "-O", "-", f"http://{ip_a}/").returncode != 0
    nat = env.ns.run(IPT, "-S", "PYINSPECT-ISOLATION-STAGE-2").stdout
    assert nat.count("-j DROP") == 2
    # doctor: DNS answers in every container, the networks are isolated
    assert not _findings(env, "user_dns", "isolation")
    oth = json.loads(env.cli("network", "inspect", "pnu-oth").stdout)[0]["Bridge"]
    env.ns.sh(
        f"{IPT} -S PYINSPECT-ISOLATION-STAGE-2 | grep -- '-o {oth} ' | sed 's/^-A/-D/' "
        f"| xargs -L1 {IPT}"
    )
    hits = _findings(env, "isolation")
    assert hits and "are not isolated" in hits[0]["summary"], hits
    env.cli("ps")  # reconcile puts the rule back
    assert not _findings(env, "isolation")
    # network rm is refused while containers are on it
    busy = env.cli("network", "rm", "pnu-app", check=False)
    assert busy.returncode == 4 and "has active endpoints" in busy.stderr
    # connect c to pnu-app as well: eth1, and now a and c reach each other by name
    out = env.cli("network", "connect", "pnu-app", c).stdout
    assert "eth1" in out
    assert (
        env.ex(c, "timeout", "3", "wget", "-q", "-O", "-", f"http://{a}/").stdout.strip()
        == "from-a"
    )
    assert env.ex(b, "nslookup", c).returncode == 0
    env.cli("network", "disconnect", "pnu-app", c)
    assert "eth1" not in env.ex(c, "ip", "-o", "link").stdout
    ls = env.cli("network", "ls").stdout
    assert re.search(r"^pnu-app\s+bridge\s+10\.77\.0\.0/24\s+10\.77\.0\.1\s+2\s+up", ls, re.M)


QUERY = (
    "import json, sys; from dnslib import DNSRecord, RCODE; "
    "r = DNSRecord.parse(DNSRecord.question(sys.argv[1], sys.argv[2])"
    ".send('127.0.0.11', 53, tcp=sys.argv[3] == '1', timeout=3)); "
    "print(json.dumps({'rcode': RCODE[r.header.rcode], 'a': [str(x.rdata) for x in r.rr]}))"
)


def _query(ctr, name, qtype, tcp=False):
    """A DNS query from the container's netns with dnslib (UDP or TCP)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ctr, sys.executable, "-c", QUERY, name, qtype, "1" if tcp else "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def _findings(env, *checks):
    doc = env.cli("doctor", "--json", check=False)
    return [f for f in json.loads(doc.stdout)["findings"] if f["check"] in checks]


def test_internal_network_has_no_way_out(env):
    env.net("--internal", "pnu-int")
    x = env.run("pnu-int", "busybox", "sleep", "600")
    y = env.run("pnu-int", "busybox", "sleep", "600")
    assert "default" not in env.ex(x, "ip", "route").stdout
    assert env.ex(x, "ping", "-c", "1", "-W", "1", UPSTREAM).returncode != 0
    # even with a route added by hand, the isolation rules drop it at the bridge
    gw = json.loads(env.cli("network", "inspect", "pnu-int").stdout)[0]["Gateway"]
    env.cli("exec", x, "ip", "route", "add", "default", "via", gw, check=False)
    assert env.ex(x, "ping", "-c", "1", "-W", "1", UPSTREAM).returncode != 0
    assert "MASQUERADE" not in " ".join(
        line for line in env.ns.run(IPT, "-t", "nat", "-S").stdout.splitlines() if gw[:-1] in line
    )
    assert env.ex(x, "nslookup", y).returncode == 0  # names inside still resolve
    assert "10.9.9.9" not in env.ex(x, "nslookup", "ext.test").stdout  # nothing forwarded


def test_bridge_takes_the_uplink_mtu_and_doctor_is_clean(make_netns, state_root):
    host, up = make_netns("pnu-m"), make_netns("pnu-n")
    wire(host, up, "pnum0", UPSTREAM_HOST, UPSTREAM)
    host.sh(f"ip link set pnum0 mtu 1400 && ip route add default via {UPSTREAM}")
    cli = Cli(state_root, netns=host.name)
    name = cname("pnu")
    cli("run", "-d", "--name", name, "busybox", "sleep", "600")
    try:
        links = host.run("ip", "-o", "link").stdout
        assert re.search(r"pyinspect0: .* mtu 1400 ", links), links
        assert all("mtu 1400" in line for line in links.splitlines() if "master pyinspect0" in line)
        assert "mtu 1400" in cli("exec", name, "ip", "link", "show", "eth0").stdout
        doc = cli("doctor", "--json", check=False)
        findings = json.loads(doc.stdout)["findings"]
        assert not [f for f in findings if f["check"] == "mtu_mismatch"], findings
        # an explicit MTU for a user network, as Docker's driver option
        cli("network", "create", "-o", "com.docker.network.driver.mtu=1280", "pnu-mtu")
        other = cname("pnu")
        cli("run", "-d", "--name", other, "--network", "pnu-mtu", "busybox", "sleep", "600")
        assert "mtu 1280" in cli("exec", other, "ip", "link", "show", "eth0").stdout
        assert json.loads(cli("network", "inspect", "pnu-mtu").stdout)[0]["MTU"] == 1280
        cli("rm", "-f", other)
        # a mismatch pyinspect did not make is still reported
        host.sh("ip link set pyinspect0 mtu 1300")
        doc = cli("doctor", "--json", check=False)
        assert [f for f in json.loads(doc.stdout)["findings"] if f["check"] == "mtu_mismatch"]
    finally:
        cli("rm", "-f", name, check=False)
        cli("network", "rm", "pnu-mtu", check=False)


def test_network_create_bad_input(env):
    for args, code, text in (
        (["--subnet", "10.0.0.0/33", "pnu-bad"], 2, "invalid subnet"),
        (["--gateway", "10.5.0.1", "--subnet", "10.6.0.0/24", "pnu-bad"], 2, "invalid gateway"),
        (["-o", "com.docker.network.driver.mtu=9", "pnu-bad"], 2, "invalid MTU"),
        (["-o", "nosuch=1", "pnu-bad"], 2, "unsupported network option"),
        (["host"], 2, "invalid network name"),
    ):
        proc = env.cli("network", "create", *args, check=False)
        assert proc.returncode == code and text in proc.stderr and proc.stderr.count("\n") == 1, (
            proc
        )
    env.net("--subnet", "10.78.0.0/24", "pnu-one")
    dup = env.cli("network", "create", "pnu-one", check=False)
    assert dup.returncode == 4 and "already exists" in dup.stderr
    overlap = env.cli("network", "create", "--subnet", "10.78.0.0/16", "pnu-two", check=False)
    assert overlap.returncode == 4 and "overlaps" in overlap.stderr
    missing = env.cli("run", "--rm", "--network", "pnu-nosuch", "busybox", "true", check=False)
    assert missing.returncode == 3 and "network pnu-nosuch not found" in missing.stderr


def test_rename_moves_the_netns_link_and_the_dns_name(env):
    """`rename` of a running container on a user network: `ip netns exec NEW` enters it
    (the old link is gone), the other container resolves the new name and not the old
    one, the name stays through a restart, and `rm -f` leaves no link behind."""
    env.net("pnu-rn")
    a = env.run("pnu-rn", "busybox", "sh", "-c", SERVE.format(text="renamed"))
    b = env.run("pnu-rn", "busybox", "sleep", "600")
    ip_a = env.ip(a, "pnu-rn")
    new = cname("pnu-new")
    env.names.append(new)
    assert env.cli("rename", a, new).stdout == ""
    assert not os.path.exists(f"/var/run/netns/{a}")
    inside = subprocess.run(
        ["ip", "netns", "exec", new, "ip", "-4", "-o", "addr", "show", "eth0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"inet {ip_a}/" in inside.stdout
    info = json.loads(env.cli("inspect", new).stdout)[0]
    assert info["Name"] == f"/{new}" and info["NetworkSettings"]["SandboxKey"].endswith(f"/{new}")
    look = env.ex(b, "nslookup", new)
    assert look.returncode == 0 and f"Address: {ip_a}" in look.stdout, look
    assert ip_a not in env.ex(b, "nslookup", a).stdout
    got = env.ex(b, "timeout", "3", "wget", "-q", "-O", "-", f"http://{new}/")
    assert got.stdout.strip() == "renamed", got
    assert env.cli("inspect", a, check=False).returncode == 3
    env.cli("restart", "-t", "1", new)
    assert os.path.exists(f"/var/run/netns/{new}") and not os.path.exists(f"/var/run/netns/{a}")
    # bad input: one line, nothing changed
    for bad, code in (((new, b), 4), ((new, "bad name"), 2), (("pnu-nosuch", "x1"), 3)):
        proc = env.cli("rename", *bad, check=False)
        assert proc.returncode == code and len(proc.stderr.splitlines()) == 1, proc
    assert env.cli("inspect", "-f", "{{.Name}}", new).stdout == f"/{new}\n"
    env.cli("rm", "-f", new)
    assert not os.path.exists(f"/var/run/netns/{new}")


def test_dns_flag_is_a_user_networks_upstream(env, state_root):
    """On a user network `--dns` names the embedded DNS's upstream, as Docker's does (the
    container's resolv.conf stays 127.0.0.11): with the configured upstream out of reach,
    a container given `--dns` the test's resolver still resolves outside names, one
    without it does not; `--dns-search` reaches its resolv.conf."""
    (state_root / "config.json").write_text(
        json.dumps({"network": {"dns_upstream": "10.99.99.99:53"}})  # no route: nothing sent
    )
    env.net("pnu-dns")
    flagged = env.run(
        "pnu-dns", "--dns", UPSTREAM, "--dns-search", "corp.test", "busybox", "sleep", "600"
    )
    plain = env.run("pnu-dns", "busybox", "sleep", "600")
    resolv = env.ex(flagged, "cat", "/etc/resolv.conf").stdout
    assert resolv.startswith("nameserver 127.0.0.11\n") and "search corp.test" in resolv, resolv
    assert "Address: 10.9.9.9" in env.ex(flagged, "nslookup", "ext.test").stdout
    assert "10.9.9.9" not in env.ex(plain, "nslookup", "ext.test").stdout
    bad = env.cli("run", "-d", "--dns", "not-an-ip", "busybox", "true", check=False)
    assert bad.returncode == 2 and "not-an-ip" in bad.stderr and len(bad.stderr.splitlines()) == 1
