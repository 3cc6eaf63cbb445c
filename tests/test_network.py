"""Bridge networking, for real, in namespaces the tests own.

Each test makes a netns that plays the host (bridge, rules and sysctls land
there, never in the machine's own tables), "containers" are processes in
fresh netns connected with pyinspect.runtime.network.connect(), a client
netns plays the seed's "other machine" and an upstream netns the internet.
"""

import multiprocessing
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from pyinspect.errors import ConflictError, UsageError  # noqa: E402
from pyinspect.runtime import ipam, iptables, network, ports  # noqa: E402

from helpers.network_helpers import Host, cname, container
from testbed.waits import wait_listen

pytestmark = pytest.mark.root

CLIENT_HOST, CLIENT = "10.201.0.1", "10.201.0.2"  # host <-> "other machine"
UPSTREAM_HOST, UPSTREAM = "10.202.0.1", "10.202.0.2"  # host <-> "internet"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def host(make_netns, state_root):
    h = Host(make_netns("pn-h"), state_root)
    h.bg = []
    yield h
    for p in h.bg:
        if p.poll() is None:
            p.kill()
            p.wait()
    h.cleanup()
    # a failed test may leave netns links behind: they are global, so remove them here
    for link in Path(network.NETNS_DIR).glob("pn-*"):
        state = ipam.load(h.root, "pyinspect0") or {"leases": {}}
        if any(lease.get("netns_link") == str(link) for lease in state["leases"].values()):
            subprocess.run(["umount", "-l", str(link)], capture_output=True, check=False)
            link.unlink(missing_ok=True)


def wire(host_ns, other, hostdev, host_ip, other_ip):
    """A veth between the host netns and `other` (both made by the test), /24 each side."""
    host_ns.sh(
        f"ip link add {hostdev} type veth peer name eth0 netns {other.name} && "
        f"ip addr add {host_ip}/24 dev {hostdev} && ip link set {hostdev} up"
    )
    other.sh(f"ip addr add {other_ip}/24 dev eth0 && ip link set eth0 up")


@pytest.fixture
def client(host, make_netns):
    ns = make_netns("pn-c")
    wire(host.ns, ns, "pnc0", CLIENT_HOST, CLIENT)
    return ns


@pytest.fixture
def upstream(host, make_netns):
    ns = make_netns("pn-u")
    wire(host.ns, ns, "pnu0", UPSTREAM_HOST, UPSTREAM)
    return ns


def in_ctr(rec, *cmd, check=False, timeout=20):
    """Run a command in the container's netns through /var/run/netns/<name>."""
    return subprocess.run(
        ["ip", "netns", "exec", rec["name"], *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def httpd(host, rec, tmp_path, text):
    """busybox httpd on port 80 in the container's netns, serving `text`."""
    d = tmp_path / rec["name"]
    d.mkdir()
    (d / "index.html").write_text(text)
    p = subprocess.Popen(
        ["ip", "netns", "exec", rec["name"], "busybox", "httpd", "-f", "-p", "80", "-h", str(d)]
    )
    host.bg.append(p)
    wait_listen(rec["name"], 80)
    return p


def fetch(runner, url, ok=True):
    """busybox wget through `runner` (Netns.run-like); returns the body or None."""
    for _ in range(3 if ok else 1):
        proc = runner(
            "timeout", "5", "busybox", "wget", "-q", "-O", "-", url, check=False
        )  # -T segfaults
        if proc.returncode == 0:
            return proc.stdout
        time.sleep(0.2)
    return None


# pyinspect writes the host's own iptables backend (nft on Debian 12): tests read that one
IPT = iptables.tool(iptables.backend())


def legacy(ns, table):
    """The rules of `table` in the backend pyinspect writes (named before the backend
    followed the host's `iptables`)."""
    return ns.run(IPT, "-t", table, "-S").stdout


# --- pure parsing --------------------------------------------------------------------------


def test_parse_port_specs():
    b = ports.parse
    assert b("8088:80") == [
        {"host_ip": "0.0.0.0", "host_port": 8088, "container_port": 80, "proto": "tcp"}
    ]
    assert b("127.0.0.1:8089:80/udp")[0] == {
        "host_ip": "127.0.0.1",
        "host_port": 8089,
        "container_port": 80,
        "proto": "udp",
    }
    assert b("80")[0]["host_port"] == 0 and b("10.0.0.1::80")[0]["host_port"] == 0
    assert [x["host_port"] for x in b("8000-8002:80-82")] == [8000, 8001, 8002]
    for bad in (
        "",
        "80/sctp",
        "x:80",
        "8088:0",
        "8088:70000",
        "1.2.3:80:80",
        "[::1]:80:80",
        "8000-8001:80",
        "8088:",
    ):
        with pytest.raises(UsageError):
            b(bad)
    cfg = {"ExposedPorts": {"80/tcp": {}, "53/udp": {}}}
    got = ports.requested(["8088:80"], True, cfg)
    assert [(x["container_port"], x["proto"], x["host_port"]) for x in got] == [
        (80, "tcp", 8088),
        (53, "udp", 0),
    ]


def test_conflict_rules_between_bindings():
    any8088 = ports.parse("8088:80")[0]
    with pytest.raises(ConflictError, match="already published by container web"):
        ports.check(ports.parse("127.0.0.1:8088:81"), [dict(any8088, name="web")], bound=[])
    ports.check(ports.parse("8088:80/udp"), [any8088], bound=[])  # other protocol: fine
    ports.check(ports.parse("10.0.0.1:8088:80"), [dict(any8088, host_ip="10.0.0.2")], bound=[])
    with pytest.raises(ConflictError, match="given twice"):
        ports.check(ports.parse("8088:80") + ports.parse("8088:81"), [], bound=[])
    with pytest.raises(ConflictError, match="bound by a host process"):
        ports.check(ports.parse("10.0.0.1:22:22"), [], bound=[("tcp", "0.0.0.0", 22)])
    got = ports.assign(ports.parse("80") + ports.parse("81"), [], bound=[("tcp", "0.0.0.0", 32768)])
    lo, _ = ports.local_port_range()
    assert [x["host_port"] for x in got] == ([lo + 1, lo + 2] if lo == 32768 else [lo, lo + 1])


def test_container_files():
    rec = types.SimpleNamespace(
        id="ab" * 32,
        hostname="",
        spec=types.SimpleNamespace(hostname="web", network_mode="bridge"),
        network={"mode": "bridge", "ip": "172.29.0.5"},
    )
    files = network.container_files(rec)
    assert files["/etc/hostname"] == "web\n"
    assert (
        "172.29.0.5\tweb\n" in files["/etc/hosts"] and "127.0.0.1\tlocalhost" in files["/etc/hosts"]
    )
    assert "nameserver" in files["/etc/resolv.conf"]
    assert "nameserver 127." not in files["/etc/resolv.conf"]
    assert (
        network._resolv_for_bridge("nameserver 127.0.0.53\nsearch x\n")
        == "search x\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    )
    rec.spec.hostname, rec.network = None, {"mode": "none"}
    files = network.container_files(rec)
    assert files["/etc/hostname"] == "ab" * 6 + "\n" and files["/etc/resolv.conf"] == ""


def test_import_is_cheap():
    """Importing the hook module must not pull in pyroute2 or python-iptables."""
    code = (
        "import sys, pyinspect.runtime.network; "
        "print(sorted(m for m in ('pyroute2', 'iptc') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- IPAM ----------------------------------------------------------------------------------


def _grab(root, n, q):
    got = []
    for i in range(n):
        with ipam.locked(root, "pnbr", "10.99.0.0/24") as st:
            got.append(ipam.allocate(st, f"{os.getpid()}-{i}", "x"))
    q.put(got)


def test_ipam_never_twice_and_frees(state_root):
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_grab, args=(state_root, 6, q)) for _ in range(12)]
    for p in procs:
        p.start()
    got = [ip for _ in procs for ip in q.get(timeout=30)]
    for p in procs:
        p.join()
    assert len(got) == 72 and len(set(got)) == 72
    assert "10.99.0.1" not in got and "10.99.0.0" not in got and "10.99.0.255" not in got
    state = ipam.load(state_root, "pnbr")
    assert len(state["leases"]) == 72
    # free one: it is not handed out again at once (round robin), but later it is
    victim = got[0]
    with ipam.locked(state_root, "pnbr") as st:
        assert ipam.release(st, st["leases"][victim]["id"])["name"] == "x"
        assert ipam.allocate(st, "new", "new") != victim
    # a /29 has 5 usable addresses besides the gateway, then no more
    with ipam.locked(state_root, "small", "10.98.0.0/29") as st:
        ips = [ipam.allocate(st, f"c{i}", "c") for i in range(5)]
        assert sorted(ips) == [f"10.98.0.{i}" for i in range(2, 7)]
        with pytest.raises(ConflictError, match="no free address"):
            ipam.allocate(st, "c6", "c")
        ipam.release(st, "c3")
        assert ipam.allocate(st, "c7", "c") == ips[3]


# --- the seed's scenarios ------------------------------------------------------------------


def test_two_containers_reach_each_other_and_leave_nothing(host, tmp_path):
    host.ns.sh("echo 0 > /proc/sys/net/ipv4/ip_forward")
    t1 = host.start(cname())
    t2 = host.start(cname())
    n1, n2 = t1["network"], t2["network"]
    assert n1["ip"] == "172.29.0.2" and n2["ip"] == "172.29.0.3"
    assert n1["gateway"] == "172.29.0.1" and n1["prefixlen"] == 16 and n1["bridge"] == "pyinspect0"
    assert re.fullmatch(r"veth[0-9a-f]{7}", n1["veth_host"]) and n1["veth_host"] != n2["veth_host"]
    links = host.ns.run("ip", "-o", "link", "show", "master", "pyinspect0").stdout
    assert n1["veth_host"] in links and n2["veth_host"] in links
    assert f"{n1['veth_host_ifindex']}: {n1['veth_host']}@" in links
    # inside: eth0 with the leased address and MAC, default route via the gateway (ip netns exec)
    addr = in_ctr(t1, "ip", "-o", "-4", "addr", "show", "eth0", check=True).stdout
    assert "172.29.0.2/16" in addr
    assert n1["mac"] in in_ctr(t1, "ip", "link", "show", "eth0").stdout
    assert "default via 172.29.0.1 dev eth0" in in_ctr(t1, "ip", "route").stdout
    # test2 -> test1 by IP, and the seed's ifindex/iflink pairing
    httpd(host, t1, tmp_path, "hello from test1")
    assert fetch(lambda *c, **k: in_ctr(t2, *c, **k), "http://172.29.0.2/") == "hello from test1"
    assert host.ok("sysctls", keys=["net.ipv4.ip_forward"]) == {"net.ipv4.ip_forward": "1"}
    ls = {n["name"]: n for n in host.ok("ls")}
    assert ls["pyinspect0"]["containers"] == 2 and ls["pyinspect0"]["exists"]
    info = host.ok("inspect", name="bridge")
    assert {m["Name"] for m in info["Containers"].values()} == {t1["name"], t2["name"]}
    # rm: everything goes, the bridge too, and ip_forward is restored
    host.ok("disconnect", container=t1)
    host.ok("disconnect", container=t1)  # idempotent
    assert not Path(network.NETNS_DIR, t1["name"]).exists()
    assert n1["veth_host"] not in host.ns.run("ip", "-o", "link").stdout
    host.ok("disconnect", container=t2)
    assert (
        host.ns.run("ip", "-o", "link").stdout.count(":")
        and "pyinspect0" not in host.ns.run("ip", "-o", "link").stdout
    )
    assert (
        "pyinspect"
        not in (legacy(host.ns, "nat") + legacy(host.ns, "filter") + legacy(host.ns, "raw")).lower()
    )
    assert host.ok("sysctls", keys=["net.ipv4.ip_forward"]) == {"net.ipv4.ip_forward": "0"}
    assert host.ok("state", bridge="pyinspect0")["leases"] == {}


def test_publish_from_client_namespace_with_forward_drop(host, client, tmp_path):
    host.ns.sh(f"{IPT} -P FORWARD DROP")
    web = host.start(cname(), publish=["8088:80"])
    assert web["network"]["ports"] == [
        {"host_ip": "0.0.0.0", "host_port": 8088, "container_port": 80, "proto": "tcp"}
    ]
    httpd(host, web, tmp_path, "hello via DNAT")
    assert fetch(client.run, f"http://{CLIENT_HOST}:8088/") == "hello via DNAT"
    nat = legacy(host.ns, "nat")
    assert "-A PREROUTING -m addrtype --dst-type LOCAL" in nat
    assert re.search(
        r"-A OUTPUT ! -d 127\.0\.0\.0/8 -m addrtype --dst-type LOCAL .*-j PYINSPECT", nat
    )
    assert re.search(
        r"-A PYINSPECT ! -i pyinspect0 -p tcp -m tcp --dport 8088 .*"
        r"-j DNAT --to-destination 172\.29\.0\.2:80",
        nat,
    )
    assert re.search(r"-A POSTROUTING -s 172\.29\.0\.0/16 ! -o pyinspect0 .*-j MASQUERADE", nat)
    # the conntrack entry shows the translated tuple
    ct = host.ns.run("conntrack", "-L", "-p", "tcp", "--orig-port-dst", "8088").stdout
    assert re.search(
        rf"src={CLIENT} dst={CLIENT_HOST} sport=\d+ dport=8088 .*"
        rf"src=172\.29\.0\.2 dst={CLIENT} sport=80 dport=\d+",
        ct,
    ), ct
    # the counters of our DNAT rule moved, as `iptables -t nat -nvL` shows users
    out = host.ns.run(IPT, "-t", "nat", "-nvxL", "PYINSPECT").stdout
    assert re.search(
        r"^\s*[1-9]\d*\s+\d+\s+DNAT .*!pyinspect0 .*dpt:8088 .*to:172\.29\.0\.2:80", out, re.M
    ), out


def test_udp_publish(host, client):
    ctr = host.start(cname(), publish=["5353:53/udp"])
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ctr["name"],
            "python3",
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('0.0.0.0', 53))\nd, a = s.recvfrom(100)\n"
            "print(d.decode(), a[0], flush=True)\ns.sendto(b'pong', a)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    host.bg.append(server)
    deadline = time.time() + 5
    while ":0035 " not in in_ctr(ctr, "cat", "/proc/net/udp").stdout and time.time() < deadline:
        time.sleep(0.05)
    reply = client.run(
        "python3",
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.settimeout(5)\ns.sendto(b'ping', ('{CLIENT_HOST}', 5353))\n"
        "d, a = s.recvfrom(100)\nprint(d.decode(), a[0], a[1])",
    ).stdout.split()
    assert reply == ["pong", CLIENT_HOST, "5353"]  # the reply is un-DNATed
    assert server.communicate(timeout=10)[0].split() == ["ping", CLIENT]
    assert re.search(
        r"-A PYINSPECT ! -i pyinspect0 -p udp -m udp --dport 5353 .*"
        r"--to-destination 172\.29\.0\.2:53",
        legacy(host.ns, "nat"),
    )
    assert "dport=5353" in host.ns.run("conntrack", "-L", "-p", "udp").stdout
    # rm forgets the flows DNATed to the container, so a re-published port is not stuck
    host.ok("disconnect", container=ctr)
    assert "172.29.0.2" not in host.ns.run("conntrack", "-L", "-p", "udp").stdout


def test_masquerade_to_upstream(host, upstream):
    ctr = host.start(cname())
    server = upstream.popen(
        "python3",
        "-c",
        "import socket\ns=socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('0.0.0.0', 9000)); s.listen()\n"
        "c, a = s.accept(); print(a[0], flush=True)",
        stdout=subprocess.PIPE,
        text=True,
    )
    host.bg.append(server)
    wait_listen(upstream.name, 9000)
    in_ctr(ctr, "sh", "-c", f"echo hi | busybox nc -w 2 {UPSTREAM} 9000")
    peer = server.communicate(timeout=10)[0].strip()
    assert peer == UPSTREAM_HOST  # the host's address, not 172.29.0.2
    ct = host.ns.run("conntrack", "-L", "-p", "tcp", "--orig-port-dst", "9000").stdout
    assert re.search(rf"src=172\.29\.0\.2 dst={UPSTREAM} .* src={UPSTREAM} dst={UPSTREAM_HOST}", ct)


def test_localhost_publishing_and_hairpin(host, client, tmp_path):
    one = host.start(cname(), publish=["8088:80", "127.0.0.1:8089:80"])
    two = host.start(cname())
    httpd(host, one, tmp_path, "one")
    # on the host itself: 127.0.0.1 only-publishing, and localhost for a 0.0.0.0 publish
    assert fetch(host.ns.run, "http://127.0.0.1:8089/") == "one"
    assert fetch(host.ns.run, "http://127.0.0.1:8088/") == "one"
    assert host.ok("sysctls", keys=["net.ipv4.conf.pyinspect0.route_localnet"]) == {
        "net.ipv4.conf.pyinspect0.route_localnet": "1"
    }
    # 8089 is published on 127.0.0.1 only: the other machine cannot use it
    assert fetch(client.run, f"http://{CLIENT_HOST}:8089/", ok=False) is None
    assert fetch(client.run, f"http://{CLIENT_HOST}:8088/") == "one"
    # hairpin: the container reaches its own published port through the host's address
    assert fetch(lambda *c, **k: in_ctr(one, *c, **k), f"http://{CLIENT_HOST}:8088/") == "one"
    assert fetch(lambda *c, **k: in_ctr(one, *c, **k), "http://172.29.0.1:8088/") == "one"
    # and another container reaches it through the host's address too
    assert fetch(lambda *c, **k: in_ctr(two, *c, **k), f"http://{CLIENT_HOST}:8088/") == "one"
    nat = legacy(host.ns, "nat")
    assert re.search(
        r"-A POSTROUTING -s 172\.29\.0\.2/32 -d 172\.29\.0\.2/32 -p tcp -m tcp "
        r"--dport 80 .*-j MASQUERADE",
        nat,
    )
    assert re.search(
        r"-A PYINSPECT -d 127\.0\.0\.1/32 ! -i pyinspect0 -p tcp -m tcp --dport 8089", nat
    )


def test_port_conflicts(host):
    web = host.start(cname(), publish=["8088:80"])
    spec = container(cname(), publish=["127.0.0.1:8088:81"])["spec"]
    reply = host.call("prepare", spec=spec)
    assert reply["error"] == "ConflictError" and reply["exit_code"] == 4
    assert f"already published by container {web['name']}" in reply["message"]
    assert "error" not in host.call(
        "prepare", spec=container(cname(), publish=["8088:80/udp"])["spec"]
    )
    reply = host.call("prepare", spec=container(cname(), publish=["10.9.9.9:8080:80"])["spec"])
    assert reply["error"] == "UsageError" and "not an address of this host" in reply["message"]
    # a host process listening on a port
    listener = host.ns.popen(
        "python3",
        "-c",
        "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1', 9099))\n"
        "s.listen(); time.sleep(60)",
    )
    host.bg.append(listener)
    wait_listen(host.ns.name, 9099)
    assert ("tcp", "127.0.0.1", 9099) in [tuple(x) for x in host.ok("bound")]
    reply = host.call("prepare", spec=container(cname(), publish=["9099:80"])["spec"])
    assert reply["error"] == "ConflictError" and "bound by a host process" in reply["message"]
    # connect refuses too (the check is repeated under the lock), and leaves nothing
    pid = host.spawn()
    bad = container(cname(), publish=["9099:80"], pid=pid)
    reply = host.call("connect", container=bad, pid=pid)
    assert reply["error"] == "ConflictError"
    assert not Path(network.NETNS_DIR, bad["name"]).exists()
    assert len(host.ok("state", bridge="pyinspect0")["leases"]) == 1
    # -P: the image's EXPOSE ports get free host ports, skipping bound and published ones
    pid = host.spawn()
    auto = container(cname(), publish_all=True, pid=pid)
    net = host.ok(
        "connect",
        container=auto,
        pid=pid,
        image_config={"config": {"ExposedPorts": {"80/tcp": {}, "53/udp": {}}}},
    )
    lo, hi = ports.local_port_range()
    assert [(b["container_port"], b["proto"]) for b in net["ports"]] == [(53, "udp"), (80, "tcp")]
    assert all(lo <= b["host_port"] <= hi for b in net["ports"])
    # the publisher's init dies without a disconnect (crashed shim): its port is free again
    host.stop(web)
    assert "error" not in host.call("prepare", spec=container(cname(), publish=["8088:80"])["spec"])
    again = host.start(cname(), publish=["8088:80"])
    leases = host.ok("state", bridge="pyinspect0")["leases"]
    assert web["id"] not in [x["id"] for x in leases.values()]
    assert again["id"] in [x["id"] for x in leases.values()]
    assert not Path(network.NETNS_DIR, web["name"]).exists()


def test_modes_are_validated(host):
    def err(**kw):
        reply = host.call("prepare", spec=container(cname(), **kw)["spec"])
        return reply.get("error"), reply.get("message", "")

    assert err(mode="container:web", publish=["80:80"]) == (
        "UsageError",
        "conflicting options: port publishing and the container type network mode",
    )
    assert err(mode="container:web", hostname="x")[0] == "UsageError"
    assert err(mode="container:")[0] == "UsageError"
    assert err(mode="bogus")[0] == "UsageError"
    assert err(mode="host", publish=["80:80"]) == (None, "")
    assert err(publish=["80:80/sctp"])[0] == "UsageError"
    # --net none: the netns only gets lo up; no lease, no bridge
    pid = host.spawn()
    got = host.ok("connect", container=container(cname(), mode="none", pid=pid), pid=pid)
    assert got == {"mode": "none", "ports": []}
    out = subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "link"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "lo:" in out and "UP" in out and "eth0" not in out
    assert host.ok("state", bridge="pyinspect0") is None


def test_subnet_and_bridge_conflicts(host):
    host.ns.sh(
        "ip link add pndummy type veth peer name pndummy1 && ip addr add 172.29.5.1/24 dev pndummy"
    )
    pid = host.spawn()
    rec = container(cname(), pid=pid)
    reply = host.call("connect", container=rec, pid=pid)
    assert reply["error"] == "ConflictError" and "overlaps 172.29.5.0/24" in reply["message"]
    assert "pyinspect0" not in host.ns.run("ip", "-o", "link").stdout
    # a configurable subnet and bridge name avoid it
    net = host.ok(
        "connect",
        container=rec,
        pid=pid,
        env={"PYINSPECT_SUBNET": "10.240.0.0/24", "PYINSPECT_BRIDGE": "pnbr0"},
    )
    assert net["ip"] == "10.240.0.2" and net["bridge"] == "pnbr0" and net["gateway"] == "10.240.0.1"
    assert "-A PYINSPECT-FORWARD -i pnbr0 -o pnbr0" in legacy(host.ns, "filter")
    rec["network"] = net
    host.ok("disconnect", container=rec)
    # a non-bridge interface with the bridge's name
    host.ns.sh("ip link add pnbr1 type veth peer name pnbr1p")
    reply = host.call("connect", container=rec, pid=pid, env={"PYINSPECT_BRIDGE": "pnbr1"})
    assert (
        reply["error"] == "ConflictError" and "a veth interface has that name" in reply["message"]
    )
    reply = host.call("connect", container=rec, pid=pid, env={"PYINSPECT_SUBNET": "10.0.0.1/8"})
    assert reply["error"] == "UsageError"


def test_sysctls_reverted_only_if_pyinspect_changed_them(host):
    host.ns.sh("echo 1 > /proc/sys/net/ipv4/ip_forward")
    rec = host.start(cname(), publish=["8088:80"])
    info = host.ok("inspect", name="pyinspect0")
    fwd = [s for s in info["Sysctls"] if s["key"] == "net.ipv4.ip_forward"][0]
    assert fwd == {
        "key": "net.ipv4.ip_forward",
        "value": "1",
        "changed_by_pyinspect": False,
        "before": None,
    }
    host.ok("disconnect", container=rec)
    assert host.ok("sysctls", keys=["net.ipv4.ip_forward"]) == {"net.ipv4.ip_forward": "1"}


def test_reconcile_drops_stale_readds_missing_and_spares_others(host):
    dead = host.start(cname(), publish=["8088:80"])
    live = host.start(cname(), publish=["8090:80"])
    ns = host.ns
    # rules by someone else: in PREROUTING and even inside our chain
    ns.sh(f"{IPT} -t nat -A PREROUTING -p tcp --dport 7777 -j DNAT --to-destination 10.9.9.9:7777")
    ns.sh(f"{IPT} -t nat -A PYINSPECT -p tcp --dport 7778 -j DNAT --to-destination 172.29.0.99:80")
    # a tagged leftover of a crashed run pointing at a dead IP
    ns.sh(
        f"{IPT} -t nat -A PYINSPECT -p tcp --dport 8099 -m comment --comment "
        "pyinspect:pyinspect0:deadbeef0000 -j DNAT --to-destination 172.29.0.250:80"
    )
    # the live container's DNAT rule went missing
    tag = f"pyinspect:pyinspect0:{live['id'][:12]}"
    ns.sh(
        f"{IPT} -t nat -D PYINSPECT ! -i pyinspect0 -p tcp -m tcp --dport 8090 "
        f"-m comment --comment {tag} -j DNAT --to-destination 172.29.0.3:80"
    )
    host.stop(dead)  # its init died without a disconnect (e.g. the shim crashed)
    report = host.ok("reconcile", containers=[dead, live])["pyinspect0"]
    assert report["released"] == [dead["name"]] and report["added"] == 1 and report["removed"] >= 5
    nat = legacy(ns, "nat")
    assert "--dport 8088" not in nat and "deadbeef0000" not in nat and "172.29.0.250" not in nat
    assert re.search(rf"! -i pyinspect0 -p tcp -m tcp --dport 8090 .*{tag}.*172\.29\.0\.3:80", nat)
    assert "--dport 7777" in nat and "--dport 7778" in nat  # not ours: untouched
    assert not Path(network.NETNS_DIR, dead["name"]).exists()
    assert dead["network"]["veth_host"] not in ns.run("ip", "-o", "link").stdout
    assert list(host.ok("state", bridge="pyinspect0")["leases"].values())[0]["id"] == live["id"]
    # a second reconcile has nothing to do, and finds that out without pyroute2 or iptc
    assert host.ok("reconcile", containers=[dead, live])["pyinspect0"] == {
        "released": [],
        "added": 0,
        "removed": 0,
    }
    assert host.ok("reconcile_imports", containers=[live]) == []
    # nothing left running: everything of ours goes, the foreign rules and chain content stay
    host.stop(live)
    host.ok("reconcile", containers=[])
    nat, flt = legacy(ns, "nat"), legacy(ns, "filter")
    assert "pyinspect:" not in nat + flt + legacy(ns, "raw")
    assert "--dport 7777" in nat and "-A PYINSPECT -p tcp -m tcp --dport 7778" in nat
    assert "PYINSPECT-FORWARD" not in flt
    assert "pyinspect0" not in ns.run("ip", "-o", "link").stdout


def test_parallel_connects(host):
    """Six `run`s at once: distinct addresses, every rule present, one base rule set."""
    import concurrent.futures

    recs = [container(cname(), publish=[f"{8100 + i}:80"], pid=host.spawn()) for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        nets = list(pool.map(lambda r: host.ok("connect", container=r, pid=r["pid"]), recs))
    assert len({n["ip"] for n in nets}) == 6
    nat = legacy(host.ns, "nat")
    for i, n in enumerate(nets):
        assert re.search(rf"--dport {8100 + i} .*--to-destination {re.escape(n['ip'])}:80", nat)
    assert nat.count("-A PREROUTING -m addrtype --dst-type LOCAL") == 1
    assert len(host.ok("state", bridge="pyinspect0")["leases"]) == 6
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        for r, n in zip(recs, nets, strict=True):
            r["network"] = n
        list(pool.map(lambda r: host.ok("disconnect", container=r), recs))
    assert "pyinspect" not in legacy(host.ns, "nat") + legacy(host.ns, "filter")
    assert "pyinspect0" not in host.ns.run("ip", "-o", "link").stdout


def test_network_stays_in_its_home_netns(host, make_netns):
    """A state root's network lives in one netns: calls from another touch nothing there."""
    rec = host.start(cname(), publish=["8088:80"])
    other = Host(make_netns("pn-o"), host.root)
    try:
        report = other.ok("reconcile", containers=[rec])["pyinspect0"]
        assert report["skipped"] == "network lives in another netns"
        assert "pyinspect" not in other.ns.run(IPT + "-save").stdout
        pid = other.spawn()
        reply = other.call("connect", container=container(cname(), pid=pid), pid=pid)
        assert reply["error"] == "ConflictError" and "another network namespace" in reply["message"]
        assert "pyinspect0" not in other.ns.run("ip", "-o", "link").stdout
    finally:
        other.cleanup()
    assert "--dport 8088" in legacy(host.ns, "nat")
    host.ok("disconnect", container=rec)


def test_crash_mid_connect_is_undone_by_reconcile(host):
    """A CLI killed half-way leaves a write-ahead lease; reconcile removes what it made."""
    pid = host.spawn()
    rec = container(cname(), publish=["8088:80"], pid=pid)
    assert host.crash("connect_crash", container=rec, pid=pid) == 9
    state = host.ok("state", bridge="pyinspect0")
    lease = list(state["leases"].values())[0]
    assert state["bridge_created"] and lease["veth"] in host.ns.run("ip", "-o", "link").stdout
    assert Path(lease["netns_link"]).exists()  # the reserved, not yet mounted, file
    host.stop(rec)
    assert host.ok("reconcile", containers=[rec])["pyinspect0"]["released"] == [rec["name"]]
    links = host.ns.run("ip", "-o", "link").stdout
    assert lease["veth"] not in links and "pyinspect0" not in links
    assert not Path(lease["netns_link"]).exists()
    assert host.ok("state", bridge="pyinspect0")["leases"] == {}


def test_thirty_cycles_leave_nothing(host):
    before = host.ns.run("ip", "-o", "link").stdout
    ips = host.ok("cycles", n=30, publish=["8088:80"])
    assert len(ips) == 30 and len(set(ips)) == 30  # round robin: no address reused at once
    assert host.ns.run("ip", "-o", "link").stdout == before
    assert (
        "pyinspect"
        not in (legacy(host.ns, "nat") + legacy(host.ns, "filter") + legacy(host.ns, "raw")).lower()
    )
    assert host.ok("state", bridge="pyinspect0")["leases"] == {}
    assert not [p for p in Path(network.NETNS_DIR).glob("pn-cy-*")]
    with open("/proc/self/mountinfo") as f:
        assert "pn-cy-" not in f.read()
