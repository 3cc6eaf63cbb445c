"""`pyinspect doctor` on a dual-stack host (a namespace the test makes plays the host):
IPv6 forwarding off while a bridge has a ULA address and ip6tables publishes a port, and
an RA-learned default route on an interface whose accept_ra (1) forwarding makes the
kernel ignore. Each is found with its evidence, fixed by `doctor --fix --yes`, and gone.
"""

import json
import subprocess
import uuid

import pytest

from pyinspect.proc import delete_netns

from conftest import Cli

pytestmark = pytest.mark.root


def sh(ns, script):
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, (script, proc.stderr)
    return proc.stdout


@pytest.fixture
def host6():
    tag = uuid.uuid4().hex[:5]
    host, ctr = f"pd6-h-{tag}", f"pd6-c-{tag}"
    made = []
    try:
        for ns in (host, ctr):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            sh(ns, "ip link set lo up")
        sh(
            host,
            f"""
            sysctl -qw net.ipv6.conf.all.forwarding=0
            ip link add pdbr6 type bridge && ip link set pdbr6 up
            ip -6 addr add fd00:6d::1/64 dev pdbr6 nodad
            ip link add vd0 type veth peer name eth0 netns {ctr}
            ip link set vd0 master pdbr6 up
            ip link add up0 type veth peer name up0p && ip link set up0 up && ip link set up0p up
            ip6tables-nft -w -t nat -A PREROUTING -p tcp --dport 8088 \
                -j DNAT --to-destination [fd00:6d::2]:80
            """,
        )
        sh(ctr, "ip -6 addr add fd00:6d::2/64 dev eth0 nodad && ip link set eth0 up")
        yield host
    finally:
        for ns in reversed(made):
            delete_netns(ns)


def doctor(cli, *args):
    proc = cli("doctor", "--json", *args, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def named(report, check):
    return [f for f in report["findings"] if f["check"] == check]


def test_ipv6_forwarding_and_accept_ra(state_root, host6):
    cli = Cli(state_root, netns=host6)
    rep = doctor(cli)
    fwd = named(rep, "ip6_forward")
    assert len(fwd) == 1 and fwd[0]["severity"] == "error", rep["findings"]
    ev = "\n".join(fwd[0]["evidence"])
    assert "net.ipv6.conf.all.forwarding = 0" in ev
    assert "dual-stack bridge pdbr6: fd00:6d::1/64" in ev
    assert "[fd00:6d::2]:80" in ev  # the ip6tables DNAT rule
    assert fwd[0]["runbook"].endswith("ipv6-forwarding-off.md")
    assert not named(rep, "accept_ra")  # forwarding is off: advertisements are accepted
    cli("doctor", "--fix", "--yes", check=False)
    assert sh(host6, "sysctl -n net.ipv6.conf.all.forwarding").strip() == "1"
    assert not named(doctor(cli), "ip6_forward")

    # a default route learned from a router advertisement, on an interface that (with
    # forwarding on) now ignores them
    sh(
        host6,
        """
        sysctl -qw net.ipv6.conf.up0.accept_ra=1
        ip -6 route add default via fe80::1 dev up0 proto ra
        """,
    )
    ra = named(doctor(cli), "accept_ra")
    assert len(ra) == 1 and ra[0]["severity"] == "warning", ra
    ev = "\n".join(ra[0]["evidence"])
    assert "net.ipv6.conf.up0.accept_ra = 1" in ev and "proto ra" in ev
    assert ra[0]["fix"] == "sysctl -w net.ipv6.conf.up0.accept_ra=2"
    cli("doctor", "--fix", "--yes", check=False)
    assert sh(host6, "sysctl -n net.ipv6.conf.up0.accept_ra").strip() == "2"
    assert not named(doctor(cli), "accept_ra")
