"""`pyinspect trace` of a container pyinspect did not start: Debian's runc, found by discovery.

The seed's manual exercise, done to a runc container: its netns gets a veth by hand, the
host end on a bridge in a namespace that plays the host, and a DNAT rule publishes :80 on
8088. A client namespace fetches through it while pyinspect traces the runc container by id.
"""

import json
import subprocess

import pytest

from conftest import Cli
from testbed import tracetopo

pytestmark = pytest.mark.root

HOST_IP, CLIENT_IP = "10.234.0.1", "10.234.0.2"
GW, CTR_IP = "172.31.9.1", "172.31.9.2"


def test_trace_of_a_runc_container(make_netns, state_root, runc):
    host, client = make_netns("ptr-h"), make_netns("ptr-c")
    runc.files["www/index.html"] = "runc-traced\n"
    cid, pid = runc.run(("httpd", "-f", "-p", "80", "-h", "/www"))
    host.sh(
        f"ip link add ptc0 type veth peer name eth0 netns {client.name} && "
        f"ip addr add {HOST_IP}/24 dev ptc0 && ip link set ptc0 up && "
        f"ip link add ptrb0 type bridge && ip addr add {GW}/24 dev ptrb0 && "
        f"ip link set ptrb0 up && ip link add rv0 type veth peer name eth0 netns {pid} && "
        f"ip link set rv0 master ptrb0 && ip link set rv0 up && "
        f"sysctl -qw net.ipv4.ip_forward=1 && iptables-legacy -w -t nat -A PREROUTING "
        f"-p tcp --dport 8088 -j DNAT --to-destination {CTR_IP}:80"
    )
    client.sh(f"ip addr add {CLIENT_IP}/24 dev eth0 && ip link set eth0 up")
    subprocess.run(
        [
            "nsenter",
            f"--net=/proc/{pid}/ns/net",
            "sh",
            "-c",
            f"ip link set lo up && ip addr add {CTR_IP}/24 dev eth0 && "
            f"ip link set eth0 up && ip route add default via {GW}",
        ],
        check=True,
    )
    cli = Cli(state_root, netns=host.name)
    proc = subprocess.Popen(
        cli.argv("trace", "--container", cid, "--json", "--duration", "4", "--no-events"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = json.loads(proc.stdout.readline() or "{}")
    assert ready.get("type") == "ready", proc.stderr.read()
    assert "rv0" in ready["points"] and "eth0" in ready["points"], ready
    got = client.run(
        "timeout", "5", "busybox", "wget", "-q", "-O", "-", f"http://{HOST_IP}:8088/", check=False
    )
    assert got.stdout.strip() == "runc-traced", got
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    items, f = tracetopo.one_dnat_flow(out, CLIENT_IP, HOST_IP, CTR_IP)
    roles = [
        (h["role"], h["dir"])
        for h in items
        if h["type"] == "hop" and h["hop"] == "capture" and h["flow"] == f["flow"]
    ]
    assert roles[:4] == [
        ("uplink", "in"),
        ("bridge", "out"),
        ("veth", "out"),
        ("container", "in"),
    ], roles
    summary = [i for i in items if i["type"] == "summary"][0]
    assert summary["container"] == cid
