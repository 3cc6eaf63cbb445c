"""The seed's networking walkthrough through the real CLI (`pyinspect run` ...), run inside a
netns that plays the host, so bridges, rules and sysctls never touch the machine's own."""

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from test_network import CLIENT, CLIENT_HOST, IPT, wire  # noqa: E402

from conftest import Cli  # noqa: E402
from helpers.network_helpers import cname
from testbed.waits import wait_listen

pytestmark = pytest.mark.root

SERVE = "mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www"


class Env:
    def __init__(self, ns, cli):
        self.ns, self.cli, self.names = ns, cli, []

    def run(self, *args, name=None, check=True):
        name = name or cname()
        self.names.append(name)
        proc = self.cli("run", "-d", "--name", name, *args, check=check)
        return name, proc

    def rm(self, name):
        self.cli("rm", "-f", name)
        self.names.remove(name)

    def lease_ip(self, name):
        """The address leased to `name`, from the network state file."""
        state = json.loads((Path(self.cli.root) / "network" / "pyinspect0.json").read_text())
        return [ip for ip, lease in state["leases"].items() if lease["name"] == name][0]

    def inspect(self, name):
        return json.loads(self.cli("inspect", name).stdout)[0]

    def ip(self, name):
        return self.inspect(name)["NetworkSettings"]["IPAddress"]


@pytest.fixture
def env(make_netns, state_root):
    ns = make_netns("pn-h")
    e = Env(ns, Cli(state_root, netns=ns.name))
    yield e
    for name in e.names:
        e.cli("rm", "-f", name, check=False)
    e.cli("ps", check=False)  # reconcile whatever a failed test left


def fetch(prefix, url):
    for _ in range(3):
        proc = subprocess.run(
            [*prefix, "timeout", "5", "busybox", "wget", "-q", "-O", "-", url],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode == 0:
            return proc.stdout.strip()
        time.sleep(0.2)
    return None


def netns_exec(name):
    return ["ip", "netns", "exec", name]


def test_bridge_publish_and_modes(env, make_netns):
    """test1<->test2 by IP, -p 8088:80 from a client netns, 127.0.0.1 publishing, hairpin."""
    client = make_netns("pn-c")
    wire(env.ns, client, "pnc0", CLIENT_HOST, CLIENT)
    t1, _ = env.run(
        "-p",
        "8088:80",
        "-p",
        "127.0.0.1:8089:80",
        "busybox",
        "sh",
        "-c",
        SERVE.format(text="test1"),
    )
    t2, _ = env.run("busybox", "sleep", "600")
    wait_listen(t1, 80)
    ip1 = env.ip(t1)
    assert ip1.startswith("172.29.0.")
    # the seed's test2 -> test1 by IP, from inside test2 (pyinspect exec)
    assert env.cli("exec", t2, "wget", "-q", "-O", "-", f"http://{ip1}/").stdout.strip() == "test1"
    # the other machine through the published port, and the conntrack entry that carried it
    assert fetch(netns_exec(client.name), f"http://{CLIENT_HOST}:8088/") == "test1"
    ct = env.ns.run("conntrack", "-L", "-p", "tcp", "--orig-port-dst", "8088").stdout
    assert f"src={ip1} dst={CLIENT} sport=80" in ct
    # localhost publishing on the host, not reachable from outside
    assert fetch(netns_exec(env.ns.name), "http://127.0.0.1:8089/") == "test1"
    assert fetch(netns_exec(client.name), f"http://{CLIENT_HOST}:8089/") is None
    # hairpin: test1 reaches itself, test2 reaches test1, through the host address
    assert (
        env.cli("exec", t1, "wget", "-q", "-O", "-", f"http://{CLIENT_HOST}:8088/").stdout.strip()
        == "test1"
    )
    assert (
        env.cli("exec", t2, "wget", "-q", "-O", "-", f"http://{CLIENT_HOST}:8088/").stdout.strip()
        == "test1"
    )
    # /etc/hosts and /etc/hostname were written for the container
    hosts = env.cli("exec", t1, "cat", "/etc/hosts").stdout
    assert re.search(rf"^{re.escape(ip1)}\s+\S+$", hosts, re.M)
    # network ls / inspect
    ls = env.cli("network", "ls").stdout
    assert re.search(r"^pyinspect0\s+bridge\s+172\.29\.0\.0/16\s+172\.29\.0\.1\s+2\s+up", ls, re.M)
    info = json.loads(env.cli("network", "inspect", "bridge").stdout)[0]
    assert {m["Name"] for m in info["Containers"].values()} == {t1, t2}
    assert info["Iptables"]["backend"] == IPT.split("-")[1]
    missing = env.cli("network", "inspect", "nosuch", check=False)
    assert missing.returncode == 3 and missing.stderr.startswith("Error: no such network: nosuch")
    rows = json.loads(env.cli("network", "ls", "--format", "json").stdout)
    assert [r["name"] for r in rows] == ["pyinspect0", "host", "none"]
    # --net container:test1 shares test1's netns; -p and --hostname are refused like Docker
    c3, _ = env.run("--net", f"container:{t1}", "busybox", "sleep", "600")
    assert ip1 in env.cli("exec", c3, "ip", "-o", "-4", "addr").stdout
    _, bad = env.run("--net", f"container:{t1}", "-p", "9000:80", "busybox", "true", check=False)
    assert bad.returncode == 2 and "conflicting options" in bad.stderr
    # --net host: the container's listener is the host's
    hst, _ = env.run("--net", "host", "busybox", "httpd", "-f", "-p", "18095")
    wait_listen(env.ns.name, 18095)
    # --net none: lo only; then the seed's manual veth exercise by hand
    non, _ = env.run("--net", "none", "busybox", "sleep", "600")
    pid = env.inspect(non)["State"]["Pid"]
    links = env.cli("exec", non, "ip", "-o", "link").stdout
    assert "lo:" in links and "eth0" not in links
    env.ns.sh(
        f"ip link add pnA type veth peer name pnB && ip link set pnA master pyinspect0 && "
        f"ip link set pnA up && ip link set pnB netns {pid}"
    )
    nsx = ["nsenter", f"--net=/proc/{pid}/ns/net"]
    subprocess.run(
        [
            *nsx,
            "sh",
            "-c",
            "ip link set dev pnB name eth0 && ip link set eth0 up && "
            "ip addr add 172.29.0.100/16 dev eth0 && ip route add default via 172.29.0.1",
        ],
        check=True,
    )
    assert env.cli("exec", non, "wget", "-q", "-O", "-", f"http://{ip1}/").stdout.strip() == "test1"
    env.ns.sh("ip link del pnA")
    # rm: each removal takes its veth, netns link, lease and rules with it
    for name in (c3, hst, non, t2, t1):
        env.rm(name)
    assert (
        not list(Path("/var/run/netns").glob("pn-*-never"))
        and not Path("/var/run/netns", t1).exists()
        and not Path("/var/run/netns", t2).exists()
    )
    assert "pyinspect" not in env.ns.run(IPT + "-save").stdout
    assert "pyinspect0" not in env.ns.run("ip", "-o", "link").stdout


def test_container_mode_refuses_hostname(env):
    t1, _ = env.run("busybox", "sleep", "600")
    _, bad = env.run("--net", f"container:{t1}", "--hostname", "x", "busybox", "true", check=False)
    assert bad.returncode == 2 and "conflicting options" in bad.stderr


def test_port_conflicts_through_cli(env):
    web, _ = env.run("-p", "8088:80", "busybox", "sleep", "600")
    _, bad = env.run("-p", "8088:81", "busybox", "sleep", "600", check=False)
    assert bad.returncode == 4
    assert f"already published by container {web}" in bad.stderr
    listener = env.ns.popen(
        "python3",
        "-c",
        "import socket,time\ns=socket.socket()\n"
        "s.bind(('0.0.0.0', 9098)); s.listen(); time.sleep(60)",
    )
    try:
        wait_listen(env.ns.name, 9098)
        name, bad = env.run("-p", "9098:80", "busybox", "sleep", "600", check=False)
        assert bad.returncode == 4 and "bound by a host process" in bad.stderr
        assert name not in env.cli("ps", "-a").stdout
    finally:
        listener.kill()
        listener.wait()
    # -P publishes the image's EXPOSE ports (busybox has none: nothing published)
    auto, _ = env.run("-P", "busybox", "sleep", "600")
    assert env.inspect(auto)["NetworkSettings"]["Ports"] in ({}, None)


def test_container_exit_releases_network(env):
    """The init exiting on its own frees veth, netns link, lease and rules; start re-wires."""
    # exits at once the first time, sleeps after `start` (the writable layer keeps /ran)
    name, out = env.run(
        "-p", "8091:80", "busybox", "sh", "-c", "test -f /ran && exec sleep 600; touch /ran"
    )
    short = out.stdout.strip()[:12]
    deadline = time.time() + 20
    while "Exited" not in env.cli("ps", "-a").stdout and time.time() < deadline:
        time.sleep(0.2)
    state = json.loads((Path(env.cli.root) / "network" / "pyinspect0.json").read_text())
    assert state["leases"] == {}
    assert not Path("/var/run/netns", name).exists()
    assert short not in env.ns.run(IPT + "-save").stdout
    assert "veth" not in env.ns.run("ip", "-o", "link").stdout
    env.cli("start", name)
    assert f"pyinspect:pyinspect0:{short}" in env.ns.run(IPT + "-save", "-t", "nat").stdout
    assert Path("/var/run/netns", name).exists()


def test_thirty_run_rm_cycles_leak_nothing(env):
    links_before = env.ns.run("ip", "-o", "link").stdout
    ips, names = [], []
    for _ in range(30):
        name, _ = env.run("-p", "8088:80", "busybox", "sleep", "600")
        ips.append(env.lease_ip(name))
        env.rm(name)
        names.append(name)
    assert len(set(ips)) == 30
    assert env.ns.run("ip", "-o", "link").stdout == links_before
    assert "pyinspect" not in env.ns.run(IPT + "-save").stdout
    assert not [p for p in names if Path("/var/run/netns", p).exists()]
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    assert not [n for n in names if f"/netns/{n} " in mounts]
    state = json.loads((Path(env.cli.root) / "network" / "pyinspect0.json").read_text())
    assert state["leases"] == {} and state["sysctls"] == {}
