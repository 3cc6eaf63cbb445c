"""`pyinspect trace` shows the traced container's DNS lookups: reported by the embedded DNS
of a user network (queries on the container's loopback, which no capture point sees), and
decoded from the captured packets (a container on the default bridge asking a resolver
itself). Everything in namespaces the test made; the resolver is testbed/dnsserver.py in
one of them, never the machine's."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from test_network import IPT, UPSTREAM, UPSTREAM_HOST, wire

from pyinspect.trace import dns as D

from conftest import Cli
from helpers.network_helpers import cname
from testbed import dnsserver

pytestmark = pytest.mark.root


@pytest.fixture
def host(make_netns, state_root):
    host, up = make_netns("pdt-h"), make_netns("pdt-u")
    wire(host, up, "pdtu0", UPSTREAM_HOST, UPSTREAM)
    (state_root / "config.json").write_text(
        json.dumps({"network": {"dns_upstream": f"{UPSTREAM}:53"}})
    )
    server = dnsserver.start(up.name, UPSTREAM, {"ext.test": "10.9.9.9"})
    cli = Cli(state_root, netns=host.name)
    made = {"names": [], "nets": []}
    yield host, cli, made
    server.terminate()
    server.wait()
    for name in made["names"]:
        cli("rm", "-f", name, check=False)
    for net in made["nets"]:
        cli("network", "rm", net, check=False)
    leftover = host.run(IPT + "-save").stdout
    assert "pyinspect" not in leftover, leftover


def _trace(cli, name, work):
    """Run `pyinspect trace --json` on `name` while `work()` runs; its dns items and the
    summary."""
    proc = subprocess.Popen(
        cli.argv("trace", "--container", name, "--json", "--duration", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(proc.stdout.readline() or "{}")
        assert ready.get("type") == "ready", proc.stderr.read()
        work()
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    items = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary = next(i for i in items if i["type"] == "summary")
    return [i for i in items if i["type"] == "dns"], summary, err


def _one(items, qname, qtype="A"):
    got = [i for i in items if i["qname"] == qname and i["qtype"] == qtype]
    assert got, items
    return got[0]


TCP_QUERY = (
    "import sys; from dnslib import DNSRecord\n"
    "r = DNSRecord.question(sys.argv[1]).send('127.0.0.11', 53, tcp=True, timeout=3)\n"
    "print(DNSRecord.parse(r).rr[0].rdata)\n"
)
BURST_N = 60
BURST = (
    "import socket, sys; from dnslib import DNSRecord\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
    "ok = 0\n"
    "for i in range(int(sys.argv[2])):\n"
    "    s.sendto(DNSRecord.question(sys.argv[1]).pack(), ('127.0.0.11', 53))\n"
    "    ok += bool(DNSRecord.parse(s.recv(4096)).rr)\n"
    "print(ok)\n"
)


def test_embedded_dns_lookups_appear_in_the_trace(host, state_root):
    ns, cli, made = host
    cli("network", "create", "--subnet", "10.78.0.0/24", "pdt-net")
    made["nets"].append("pdt-net")
    db, web = cname("pdt"), cname("pdt")
    for n in (db, web):
        made["names"].append(n)
        cli("run", "-d", "--name", n, "--network", "pdt-net", "busybox", "sleep", "600")
    db_ip = json.loads(cli("inspect", db).stdout)[0]["NetworkSettings"]["IPAddress"]
    listen = os.path.join(state_root, "containers", _id(cli, web), "dns-trace")

    def work():
        assert os.listdir(listen), "the trace listens"  # one socket, the trace's
        for name in (db, "ext.test", "nope.test"):
            cli("exec", web, "nslookup", name, check=False)
        # a burst: more answers than a unix datagram socket queues (max_dgram_qlen 10)
        burst = subprocess.run(
            ["ip", "netns", "exec", web, sys.executable, "-c", BURST, db, str(BURST_N)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert burst.stdout.strip() == str(BURST_N), burst
        # over TCP: answered by the embedded DNS, forwarded over TCP or else UDP
        tcp = subprocess.run(
            ["ip", "netns", "exec", web, sys.executable, "-c", TCP_QUERY, "ext.test"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert tcp.stdout.strip() == "10.9.9.9", tcp

    items, summary, err = _trace(cli, web, work)
    local = _one(items, db)
    assert local["source"] == "embedded" and local["how"] == "local", local
    assert local["answers"] == [db_ip] and local["client"] == web
    assert local["text"] == f"dns  {web} -> A {db}? {db_ip} (embedded, local)"
    ext = _one(items, "ext.test")
    assert ext["how"] == "forwarded" and ext["upstream"] == f"{UPSTREAM}:53", ext
    assert ext["answers"] == ["10.9.9.9"] and ext["latency_us"] is not None
    assert ext["text"].startswith(
        f"dns  {web} -> A ext.test? 10.9.9.9 (embedded, forwarded to {UPSTREAM}:53, "
    ), ext
    burst = [i for i in items if i["qname"] == db and i["qtype"] == "A"]
    assert len(burst) == BURST_N + 1 and all(i["answers"] == [db_ip] for i in burst)
    tcp = [i for i in items if i["qname"] == "ext.test" and i["proto"] == "tcp"]
    assert len(tcp) == 1 and tcp[0]["answers"] == ["10.9.9.9"], items
    assert tcp[0]["text"].startswith(f"dns  {web} -> A ext.test? 10.9.9.9 (embedded over tcp, ")
    nope = _one(items, "nope.test")
    assert nope["rcode"] == "NXDOMAIN" and "? NXDOMAIN (embedded, forwarded" in nope["text"]
    assert summary["dns_lookups"] == len(items) and summary["loss"]["dns_reports"] == 0
    # stored as events of kind dns: the dashboard's timeline shows them
    from pyinspect.dashboard.overview import Overview

    rows = Overview(state_root).timeline(container=web, kinds=["dns"], limit=500)
    shown = {r["summary"] for r in rows}
    assert f"{web} -> A {db}? {db_ip} (embedded, udp local)" in shown, shown
    assert f"{web} -> A ext.test? 10.9.9.9 (embedded, udp forwarded {UPSTREAM}:53)" in shown, shown
    assert not os.path.exists(listen)
    # a trace killed -9 leaves its socket: the resolver unlinks it at its first refused report
    killed = subprocess.Popen(
        cli.argv("trace", "--container", web, "--json", "--no-events"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert json.loads(killed.stdout.readline() or "{}").get("type") == "ready"
    killed.kill()
    killed.communicate(timeout=30)
    assert os.listdir(listen) == [f"{killed.pid}.sock"]
    time.sleep(0.05)  # the resolver lists the directory again (LISTEN_CHECK)
    cli("exec", web, "nslookup", db)
    for _ in range(50):
        if not os.listdir(listen):
            break
        time.sleep(0.02)
    assert not os.listdir(listen)


def test_default_bridge_lookup_is_decoded_from_the_packets(host):
    ns, cli, made = host
    web = cname("pdt")
    made["names"].append(web)
    cli("run", "-d", "--name", web, "busybox", "sleep", "600")

    def work():
        got = cli("exec", web, "nslookup", "-type=a", "ext.test", UPSTREAM, check=False)
        assert "10.9.9.9" in got.stdout, got

    items, summary, err = _trace(cli, web, work)
    ext = _one(items, "ext.test")
    assert ext["source"] == "packets" and ext["proto"] == "udp", ext
    assert ext["server"] == f"{UPSTREAM}:53" and ext["point"] == "eth0", ext
    assert ext["answers"] == ["10.9.9.9"] and ext["rcode"] == "NOERROR"
    assert ext["text"].startswith(f"dns  {web} -> A ext.test? 10.9.9.9 (udp {UPSTREAM}:53 via eth0")
    assert summary["dns_lookups"] >= 1


SUBNET6, GW6 = "fd00:29:7::/64", "fd00:29:7::1"
ENV6 = {"PYINSPECT_IPV6": "1", "PYINSPECT_SUBNET6": SUBNET6}
AAAA_QUERY = (
    "import sys; from dnslib import DNSRecord\n"
    "r = DNSRecord.question(sys.argv[1], 'AAAA').send(sys.argv[2], 53, timeout=3, ipv6=True)\n"
    "print(DNSRecord.parse(r).rr[0].rdata)\n"
)


def test_ipv6_lookup_is_decoded_from_the_packets(host):
    """A container on a dual-stack default bridge asks a resolver on the bridge's IPv6
    gateway (in the host netns the test made)."""
    ns, cli, made = host
    web = cname("pdt")
    made["names"].append(web)
    cli("run", "-d", "--name", web, "busybox", "sleep", "600", env=ENV6)
    server = None
    for _ in range(20):  # the gateway address may still be tentative (DAD)
        try:
            server = dnsserver.start(ns.name, GW6, {"v6.test": "fd00:99::9"})
            break
        except RuntimeError:
            time.sleep(0.2)
    assert server is not None, "no DNS server on the IPv6 gateway"

    def work():
        got = subprocess.run(
            ["ip", "netns", "exec", web, sys.executable, "-c", AAAA_QUERY, "v6.test", GW6],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert got.stdout.strip() == "fd00:99::9", got

    try:
        items, summary, err = _trace(cli, web, work)
    finally:
        server.terminate()
        server.wait()
    lk = _one(items, "v6.test", "AAAA")
    assert lk["source"] == "packets" and lk["answers"] == ["fd00:99::9"], lk
    assert lk["server"] == f"[{GW6}]:53" and lk["point"] == "eth0", lk
    assert lk["client"] == web, lk


def _id(cli, name):
    return json.loads(cli("inspect", name).stdout)[0]["Id"]


# -- decoding, on frames built here (no kernel involved) -------------------------------------


def _frame6(payload, sport, dport):
    import struct

    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip6 = struct.pack("!IHBB", 6 << 28, len(udp), 17, 64) + bytes(15) + b"\x01" + bytes(15)
    ip6 += b"\x02"
    return b"\x02" * 12 + b"\x86\xdd" + ip6 + udp


def test_decode_ipv6_and_a_reply_cut_short():
    from dnslib import AAAA, QTYPE, RR, DNSRecord

    q = DNSRecord.question("x.test", "AAAA")
    proto, payload = D._l4_payload(_frame6(q.pack(), 40000, 53))
    assert proto == "udp"
    qid, response, name, qtype, rcode, answers, cut = D.decode(bytes(payload))
    assert (qid, response, name, qtype) == (q.header.id, False, "x.test", "AAAA")
    r = q.reply()
    for i in range(4):
        r.add_answer(RR("x.test", QTYPE.AAAA, rdata=AAAA(f"fd00::{i + 1}"), ttl=60))
    whole = r.pack()
    got = D.decode(whole[:70])  # what fits in the analysed bytes of an IPv6 frame
    assert got[1] and got[4] == "NOERROR" and got[6] is True
    assert got[5] == ["fd00::1"], got
    assert D.decode(b"\x00\x01") is None
