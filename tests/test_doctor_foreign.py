"""Doctor on rules and namespaces another runtime made: Docker's exact chain layout
(DOCKER, DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2, docker0) on the nft backend, read-only
unless --fix. Plus the rule walker on Docker's iptables-save text (no kernel)."""

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from pyinspect.probes import iptsave as ipt

from conftest import Cli, Netns, have

DOCKER_RULES = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8088 -j DNAT --to-destination 172.17.0.2:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
"""


# -- the walker, on text ----------------------------------------------------------------
def test_walker_follows_docker_chains():
    rs = ipt.Ruleset("nft", ipt.parse_save(DOCKER_RULES, "nft"))
    local = frozenset({"192.0.2.10"})
    pkt = ipt.Packet(
        src="198.51.100.7", dst="192.0.2.10", dport=8088, iif="eth0", local_addrs=local
    )
    w = rs.walk("nat", "PREROUTING", pkt)
    assert w.verdict == "DNAT" and ipt.dnat_target(w.rule) == ("172.17.0.2", 80)
    assert [r.chain for r in w.path] == ["PREROUTING", "DOCKER"]
    # from docker0 the DOCKER chain RETURNs first: no DNAT (docker-proxy's job)
    w = rs.walk(
        "nat",
        "PREROUTING",
        ipt.Packet(
            src="172.17.0.2", dst="192.0.2.10", dport=8088, iif="docker0", local_addrs=local
        ),
    )
    assert w.verdict == "ACCEPT" and w.rule is None
    fwd = ipt.Packet(src="198.51.100.7", dst="172.17.0.2", dport=80, iif="eth0", oif="docker0")
    w = rs.walk("filter", "FORWARD", fwd)
    assert w.verdict == "ACCEPT" and w.rule.chain == "DOCKER"
    # another port: falls through to the policy, which the evidence shows with its counter
    w = rs.walk(
        "filter",
        "FORWARD",
        ipt.Packet(src="198.51.100.7", dst="172.17.0.2", dport=81, iif="eth0", oif="docker0"),
    )
    assert w.verdict == "DROP" and w.rule is None
    assert w.evidence()[-1].startswith("iptables-nft policy FORWARD DROP")
    # egress passes ISOLATION-STAGE-1 -> STAGE-2 (RETURN) and is accepted by FORWARD
    w = rs.walk(
        "filter",
        "FORWARD",
        ipt.Packet(src="172.17.0.2", dst="198.51.100.7", iif="docker0", oif="eth0"),
    )
    assert w.verdict == "ACCEPT" and w.rule.spec == "-A FORWARD -i docker0 ! -o docker0 -j ACCEPT"


def test_walker_counters_unknown_matches_and_goto():
    text = """*filter
:FORWARD DROP [7:420]
:X - [0:0]
[3:180] -A FORWARD -m physdev --physdev-is-bridged -j ACCEPT
[2:120] -A FORWARD -p udp -m multiport --dports 53,5000:5010 -g X
-A X -s 10.0.0.0/8 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"""
    rs = ipt.Ruleset("legacy", ipt.parse_save(text, "legacy"))
    assert rs.tables["filter"]["FORWARD"].pkts == 7
    pkt = ipt.Packet(src="10.1.1.1", dst="10.2.2.2", proto="udp", dport=5005)
    w = rs.walk("filter", "FORWARD", pkt)
    assert w.verdict == "REJECT" and [r.pkts for r in w.path] == [2, 0]
    assert [r.spec for r in w.unsure] == ["-A FORWARD -m physdev --physdev-is-bridged -j ACCEPT"]
    # goto: when X falls through, FORWARD does not continue; its policy decides
    w = rs.walk(
        "filter", "FORWARD", ipt.Packet(src="192.0.2.1", dst="10.2.2.2", proto="udp", dport=53)
    )
    assert w.verdict == "DROP" and w.rule is None


def test_proc_net_parsing():
    from pyinspect.doctor import parse_proc_net

    tcp = (
        "  sl  local_address rem_address   st\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n"
        "   1: 0200C90A:0050 0300C90A:D431 01 00000000:00000000\n"
    )
    assert parse_proc_net(tcp, "tcp", False) == [("tcp", "127.0.0.1", 8080)]
    tcp6 = (
        "  sl  local_address rem_address st\n"
        "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A\n"
    )
    assert parse_proc_net(tcp6, "tcp", True) == [("tcp", "::", 80)]


# -- Docker's layout in a namespace, nft backend -------------------------------------------
class DockerLike:
    def __init__(self, tmp, root):
        tag = uuid.uuid4().hex[:5]
        self.h, self.c, self.k = (Netns(f"pd-{r}-{tag}") for r in ("dh", "dc", "dk"))
        www = tmp / "www"
        www.mkdir()
        (www / "index.html").write_text("pd-ok\n")
        h = self.h
        h.sh("sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1")
        h.sh(
            "ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 "
            "&& ip link set docker0 up"
        )
        h.sh(
            f"ip link add veth1a2b3c4 type veth peer name eth0 netns {self.c.name} && "
            "ip link set veth1a2b3c4 master docker0 up"
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
        # docker-proxy stand-in: the userland proxy listens on the published host port
        h.sh(f"busybox httpd -p 8088 -h {www}")
        h.run("iptables-nft-restore", input=DOCKER_RULES)
        self.cli = Cli(root, netns=h.name)

    def remove(self):
        for ns in (self.c, self.k, self.h):
            ns.remove()

    def published_ok(self):
        r = self.k.run(
            "timeout",
            "2",
            "busybox",
            "wget",
            "-q",
            "-O-",
            "http://10.202.0.1:8088/",
            check=False,
            timeout=20,
        )
        return r.returncode == 0 and "pd-ok" in r.stdout

    def rules(self):
        return "".join(
            self.h.run("iptables-nft", "-t", t, "-S").stdout  # no counters
            for t in ("raw", "nat", "filter")
        )

    def doctor(self, *args):
        proc = self.cli("doctor", "--json", *args, check=False)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def docker(tmp_path_factory):
    if not (have("iptables-nft-restore") and have("busybox")):
        pytest.skip("needs iptables-nft and busybox")
    d = DockerLike(tmp_path_factory.mktemp("pd-docker"), tmp_path_factory.mktemp("pd-droot"))
    yield d
    d.remove()


@pytest.mark.root
def test_docker_layout_clean_and_read_only(docker):
    assert docker.published_ok()
    before = docker.rules()
    rc, report = docker.doctor()
    assert rc == 0 and report["findings"] == [], report["findings"]
    assert docker.rules() == before  # without --fix nothing is written


@pytest.mark.root
def test_docker_forward_accept_missing(docker):
    docker.h.sh(
        "iptables-nft -D DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp "
        "-m tcp --dport 80 -j ACCEPT"
    )
    assert not docker.published_ok()
    before = docker.rules()
    rc, report = docker.doctor()
    hits = [f for f in report["findings"] if f["check"] == "forward_drop"]
    assert rc == 1 and hits and hits[0]["container"] == docker.c.name
    text = "\n".join(hits[0]["evidence"])
    assert "iptables-nft -A FORWARD -j DOCKER-ISOLATION-STAGE-1" not in text  # RETURNed
    assert "iptables-nft policy FORWARD DROP" in text
    assert docker.rules() == before
    rc, fixed = docker.doctor("--fix")
    assert rc == 0, fixed
    assert (
        "-A FORWARD -d 172.17.0.2/32 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT"
        in docker.rules()
    )
    assert docker.published_ok()


# -- a runc container wired by hand to a bridge in a host netns ----------------------------
@pytest.mark.root
def test_runc_container_found_and_fixed(tmp_path, make_netns):
    import shutil

    if not shutil.which("runc"):
        pytest.skip("runc is not installed")
    from helpers.runc_helpers import Runc

    r = Runc(tmp_path)
    h, k = make_netns("pd-rch"), make_netns("pd-rck")
    try:
        cid, pid = r.run(("sleep", "1000"))
        ctr = ["nsenter", f"--net=/proc/{pid}/ns/net"]
        h.sh(
            "sysctl -qw net.ipv4.ip_forward=1 && ip link add br9 type bridge && "
            "ip addr add 10.209.0.1/24 dev br9 && ip link set br9 up && "
            f"ip link add pdvr0 type veth peer name eth0 netns {pid} && "
            "ip link set pdvr0 master br9 up && "
            f"ip link add up9 type veth peer name eth0 netns {k.name} && "
            "ip addr add 10.202.0.1/24 dev up9 && ip link set up9 up && "
            "iptables-legacy -t nat -A PREROUTING -m addrtype --dst-type LOCAL -p tcp "
            "--dport 8090 -j DNAT --to-destination 10.209.0.2:80 && "
            "iptables-legacy -t nat -A POSTROUTING -s 10.209.0.0/24 ! -o br9 -j MASQUERADE && "
            "iptables-legacy -t nat -A POSTROUTING -s 10.209.0.2 -d 10.209.0.2 -p tcp "
            "--dport 80 -j MASQUERADE && bridge link set dev pdvr0 hairpin on"
        )
        k.sh("ip addr add 10.202.0.2/24 dev eth0 && ip link set eth0 up")
        subprocess.run(
            [
                *ctr,
                "sh",
                "-c",
                "ip addr add 10.209.0.2/24 dev eth0 && "
                "ip link set eth0 up && ip link set lo up && "
                "ip route add default via 10.209.0.1",
            ],
            check=True,
        )
        (Path(r.bundles[cid]) / "rootfs" / "index.html").write_text("pd-ok\n")
        r.exec_detached(cid, "busybox", "httpd", "-p", "80", "-h", "/")

        def ok():
            res = k.run(
                "timeout",
                "1",
                "busybox",
                "wget",
                "-q",
                "-O-",
                "http://10.202.0.1:8090/",
                check=False,
                timeout=20,
            )
            return res.returncode == 0 and "pd-ok" in res.stdout

        for _ in range(20):
            if ok():
                break
            time.sleep(0.1)
        assert ok()
        cli = Cli(tmp_path / "root", netns=h.name)
        proc = cli("doctor", "--json", check=False)
        assert proc.returncode == 0, proc.stdout
        h.sh("ip link set pdvr0 down")
        assert not ok()
        proc = cli("doctor", "--json", check=False)
        report = json.loads(proc.stdout)
        hits = [f for f in report["findings"] if f["check"] == "veth_down"]
        assert proc.returncode == 1 and hits and hits[0]["container"] == cid  # runc's name
        proc = cli("doctor", "--json", "--fix", check=False)
        assert proc.returncode == 0, proc.stdout
        assert ok()
    finally:
        r.cleanup()


# -- apply_fixes and errors, without the kernel ---------------------------------------------
def test_apply_fixes_safe_unsafe_manual_and_failed(tmp_path):
    from pyinspect.doctor import Finding, apply_fixes

    out = tmp_path / "x"

    def f(name, safe, actions):
        return Finding(name, "error", "", name, [], "fix", "docs/runbooks/x.md", safe, actions)

    findings = [
        f("safe", True, [("write", str(out), "1")]),
        f("asks", False, [("run", ["sh", "-c", f"echo 2 >> {out}"])]),
        f("declined", False, [("run", ["sh", "-c", f"echo 3 >> {out}"])]),
        f("manual", False, []),
        f("broken", True, [("run", ["false"])]),
    ]
    asked = []

    def confirm(finding):
        asked.append(finding.check)
        return finding.check == "asks"

    res = {x.check: status for x, status, _ in apply_fixes(findings, confirm=confirm)}
    assert res == {
        "safe": "applied",
        "asks": "applied",
        "declined": "skipped",
        "manual": "manual",
        "broken": "failed",
    }
    assert asked == ["asks", "declined"]  # never asked about safe or manual ones
    assert out.read_text() == "12\n"  # "1" written, then "2" appended; "3" never


def test_doctor_needs_root(monkeypatch, tmp_path):
    from pyinspect import doctor
    from pyinspect.errors import UnavailableError

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UnavailableError):
        doctor.run(tmp_path)
