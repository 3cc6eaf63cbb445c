"""Doctor on a namespace whose NAT and filter rules are native nftables (Docker's nftables
backend layout, testbed/dockerfw.py): no iptables table at all. Doctor reads the native
rules through probes.iptsave's "nftables" backend and walks them as it walks iptables."""

import json
import re
import uuid

import pytest

from conftest import Cli, Netns, have
from testbed import dockerfw

pytestmark = pytest.mark.root


class DockerNft:
    """host (docker0 172.17.0.1/16, eth9 10.202.0.1) + container 172.17.0.2 + client."""

    def __init__(self, tmp, root):
        tag = uuid.uuid4().hex[:5]
        self.h, self.c, self.k = (Netns(f"pi-nft-{r}-{tag}") for r in ("h", "c", "k"))
        www = tmp / "www"
        www.mkdir()
        (www / "index.html").write_text("pd-ok\n")
        h = self.h
        h.sh("sysctl -qw net.ipv4.ip_forward=1")
        h.sh(
            "ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 "
            "&& ip link set docker0 up"
        )
        h.sh(
            f"ip link add veth9f8e7d6 type veth peer name eth0 netns {self.c.name} && "
            "ip link set veth9f8e7d6 master docker0 up"
        )
        self.c.sh(
            "ip addr add 172.17.0.2/16 dev eth0 && ip link set eth0 up && "
            "ip route add default via 172.17.0.1"
        )
        h.sh(
            f"ip link add eth9 type veth peer name eth0 netns {self.k.name} && "
            "ip addr add 10.202.0.1/24 dev eth9 && ip link set eth9 up"
        )
        self.k.sh("ip addr add 10.202.0.2/24 dev eth0 && ip link set eth0 up")
        self.c.sh(f"busybox httpd -p 80 -h {www}")
        h.sh(f"busybox httpd -p 8088 -h {www}")  # docker-proxy stand-in (host-local clients)
        self.load()
        self.cli = Cli(root, netns=h.name)

    def load(self):
        self.h.sh("nft flush ruleset")
        self.h.run(
            "nft", "-f", "-", input=dockerfw.nft_ruleset("docker0", "172.17.0.0/16", "172.17.0.2")
        )

    def handle(self, chain, needle):
        """The handle of the rule of `chain` (table ip docker-bridges) whose text has
        `needle`."""
        text = self.h.run("nft", "-a", "list", "chain", "ip", dockerfw.TABLE, chain).stdout
        for line in text.splitlines():
            if needle in line:
                return re.search(r"# handle (\d+)", line).group(1)
        raise AssertionError(f"{needle!r} not in {text}")

    def delete(self, chain, needle):
        h = self.handle(chain, needle)
        self.h.run("nft", "delete", "rule", "ip", dockerfw.TABLE, chain, "handle", h)

    def remove(self):
        for ns in (self.c, self.k, self.h):
            ns.remove()

    def published_ok(self):
        r = self.k.run(
            "timeout", "2", "busybox", "wget", "-q", "-O-", "http://10.202.0.1:8088/",
            check=False, timeout=20,
        )  # fmt: skip
        return r.returncode == 0 and "pd-ok" in r.stdout

    def doctor(self, *args):
        proc = self.cli("doctor", "--json", *args, check=False)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def no_iptables(self):
        """Neither iptables backend has a table in the host namespace."""
        for tool in ("iptables-legacy-save", "iptables-nft-save"):
            out = self.h.run(tool).stdout
            assert "*" not in out, f"{tool}: {out}"


@pytest.fixture(scope="module")
def dn(tmp_path_factory):
    if not (have("nft") and have("busybox")):
        pytest.skip("needs nft and busybox")
    d = DockerNft(tmp_path_factory.mktemp("pi-nft"), tmp_path_factory.mktemp("pi-nft-root"))
    yield d
    d.remove()


@pytest.fixture
def healthy(dn):
    dn.load()
    yield dn
    dn.load()


def test_clean_and_finds_the_published_port(healthy):
    d = healthy
    assert d.published_ok()
    rc, report = d.doctor()
    assert rc == 0 and report["findings"] == [], report["findings"]
    # the port is known from the native DNAT rule: --port 8088 has no "nothing publishes"
    rc, report = d.doctor("--port", "8088")
    assert rc == 0 and report["findings"] == [], report["findings"]
    rc, report = d.doctor("--port", "8099")
    miss = [f for f in report["findings"] if f["check"] == "dnat_missing"]
    assert rc == 1 and miss, report["findings"]
    ev = "\n".join(miss[0]["evidence"])
    assert "  nft: verdict ACCEPT" in ev, ev  # walked the native nat chains
    assert "nft (nat base chains of prerouting) policy PREROUTING ACCEPT" in ev, ev
    d.no_iptables()


def test_forward_accept_missing_found_and_fixed_in_nft(healthy):
    d = healthy
    d.delete("filter-forward-in__docker0", "PUBLISHED PORT")
    assert not d.published_ok()
    rc, report = d.doctor()
    hits = [f for f in report["findings"] if f["check"] == "forward_drop"]
    assert rc == 1 and hits and hits[0]["container"] == d.c.name, report["findings"]
    text = "\n".join(hits[0]["evidence"])
    assert 'nft ip docker-bridges filter-forward-in__docker0: counter drop comment "DROP"' in text
    assert hits[0]["fix"].startswith(
        "nft insert rule ip docker-bridges filter-forward-in__docker0 oifname docker0 "
        "ip daddr 172.17.0.2 tcp dport 80 accept"
    ), hits[0]["fix"]
    rc, fixed = d.doctor("--fix")
    assert rc == 0, fixed
    assert d.published_ok()
    d.no_iptables()  # the fix went into the nft table, not into an iptables table


def test_dnat_rule_gone_is_reported_from_memory(healthy):
    d = healthy
    rc, _ = d.doctor()  # remembers the working port mapping
    assert rc == 0
    d.delete("nat-prerouting-and-output", "dnat to 172.17.0.2:80")
    # (the docker-proxy stand-in on the host still answers: the container is not reached)
    rc, report = d.doctor()
    hits = [f for f in report["findings"] if f["check"] == "dnat_missing"]
    assert rc == 1 and hits and hits[0]["container"] == d.c.name, report["findings"]
    assert "8088" in hits[0]["summary"]


def test_a_second_native_forward_chain_dropping_is_one_finding(healthy):
    """A firewalld-style table next to Docker's nft table (both native): the FORWARD walk
    goes through both base chains; the drop is reported once, fixed in the chain that
    dropped."""
    d = healthy
    d.h.sh(
        "nft add table inet pifw && nft add chain inet pifw filter_FORWARD "
        "'{ type filter hook forward priority 10; policy drop; }' && "
        "nft add rule inet pifw filter_FORWARD ct state established,related accept"
    )
    try:
        assert not d.published_ok()
        rc, report = d.doctor()
        checks = [f["check"] for f in report["findings"]]
        assert rc == 1 and "nft_native_drop" not in checks, report["findings"]
        hits = [f for f in report["findings"] if f["check"] == "forward_drop"]
        assert hits and hits[0]["container"] == d.c.name, report["findings"]
        assert "nft inet pifw filter_FORWARD: policy drop" in "\n".join(hits[0]["evidence"])
        assert hits[0]["fix"].startswith("nft insert rule inet pifw filter_FORWARD oifname docker0")
        rc, fixed = d.doctor("--fix")
        assert rc == 0, fixed
        assert d.published_ok()
    finally:
        d.h.sh("nft delete table inet pifw", check=False)
