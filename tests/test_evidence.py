"""The trace's pcapng against tcpdump at every capture point (issue 17: complete evidence).

A container started by `pyinspect run -p 8088:80` in a namespace that plays the host (the
runtime's own bridge, veth and DNAT), a client namespace fetching its page 20 times with
curl (one connection each), while `pyinspect trace --container X -w t.pcapng` and one tcpdump
per capture point run: the uplink, the bridge and the host veth in the host namespace,
eth0 in the container's. Per point, the trace's packets on that pcapng interface must be
the packets tcpdump wrote there: same count, same bytes (within the smaller snaplen), as
multisets (the order may differ slightly).

Windows: every tcpdump is listening before the trace starts and stops after the trace has
exited, so tcpdump's window covers the trace's. A packet only tcpdump has is accepted
when its timestamp lies outside [ready line, SIGTERM to the trace] (the container's IPv6
router solicitations can come at any time); inside, it is a hole in the evidence. A
packet only the trace has is always an error.

Scope: the host veth and eth0 carry only the container's traffic and the trace keeps all
of it (ARP and IPv6 included). The uplink and the bridge are filtered in the kernel
(docs/trace.md, "The in-kernel filter", "IPv6"): the trace keeps packets to or from the
container's addresses (IPv4, and IPv6 ones, link-local included: its MLD reports and
neighbour discovery), neighbour solicitations/advertisements for one of them, and the
published port. tcpdump runs unfiltered there; what it saw
outside that scope (the client's ARP for the host's address, the host's ARP for the
container's: the latter is in the file at the veth and eth0) is listed, not compared.
"""

import collections
import json
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import Cli, unique
from testbed import pointcap
from testbed.waits import wait_listen

pytestmark = [pytest.mark.root, pytest.mark.slow]

HOST_IP, CLIENT_IP = "10.206.0.1", "10.206.0.2"
PORT = 8088
FETCHES = 20
# a page of ~4.4 KB: its answer spans full-sized frames, which a truncating capture would cut
SERVE = (
    "mkdir -p /www && yes 'evidence: one line of the page served through -p 8088:80' "
    "| head -n 80 > /www/index.html && exec httpd -f -p 80 -h /www"
)


def in_scope(point, data, ctr_addrs):
    """Whether the trace keeps this frame at `point` by its documented filter."""
    if point.role in ("veth", "container"):
        return True
    if data[12:14] == b"\x86\xdd":
        return in_scope6(data, ctr_addrs)
    if len(data) < 34 or data[12:14] != b"\x08\x00":
        return False  # not IP (ARP): filtered points drop it
    src, dst = socket.inet_ntoa(data[26:30]), socket.inet_ntoa(data[30:34])
    if src in ctr_addrs or dst in ctr_addrs:
        return True
    ihl = (data[14] & 0x0F) * 4
    if data[23] in (6, 17) and len(data) >= 14 + ihl + 4:
        sport, dport = struct.unpack_from("!HH", data, 14 + ihl)
        return PORT in (sport, dport)  # the published port (any host address)
    return False


def in_scope6(data, ctr_addrs):
    """The IPv6 side of the filter (frames without extension headers, except the
    hop-by-hop option of MLD reports, which come from the container's own address)."""
    if len(data) < 54:
        return False
    src = socket.inet_ntop(socket.AF_INET6, data[22:38])
    dst = socket.inet_ntop(socket.AF_INET6, data[38:54])
    if src in ctr_addrs or dst in ctr_addrs:
        return True
    nh = data[20]
    if nh == 58 and len(data) >= 78 and data[54] in (135, 136):  # NS/NA for our address
        return socket.inet_ntop(socket.AF_INET6, data[62:78]) in ctr_addrs
    if nh in (6, 17) and len(data) >= 58:
        return PORT in struct.unpack_from("!HH", data, 54)
    return False


def ctr_addresses(ctr_ip, ctr_ns):
    """The container's IPv4 address and the IPv6 ones of its eth0 (its link-local one)."""
    out = subprocess.run(
        ["ip", "netns", "exec", ctr_ns, "ip", "-6", "-o", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {ctr_ip} | {w.split("/")[0] for w in out.split() if "/" in w and ":" in w}


def syn_ports(pkts):
    """Client ports of the SYNs to the published port among `pkts`."""
    ports = set()
    for p in pkts:
        d = p.data
        if len(d) >= 34 and d[12:14] == b"\x08\x00" and d[23] == 6:
            ihl = (d[14] & 0x0F) * 4
            if len(d) >= 14 + ihl + 14:
                sport, dport = struct.unpack_from("!HH", d, 14 + ihl)
                flags = d[14 + ihl + 13]
                if dport == PORT and flags & 0x12 == 0x02:
                    ports.add(sport)
    return ports


def compare(point, tcpdump_pkts, trace_pkts, trace_snaplen, window, ctr_addrs):
    """One point's comparison: a dict of counts and the problems found."""
    snap = min(pointcap.SNAPLEN, trace_snaplen or pointcap.SNAPLEN)

    def key(p):
        return p.orig_len, bytes(p.data[:snap])

    lo, hi = window
    ref = [p for p in tcpdump_pkts if in_scope(point, p.data, ctr_addrs)]
    out_of_scope = collections.Counter(
        _kind(p.data) for p in tcpdump_pkts if not in_scope(point, p.data, ctr_addrs)
    )
    want, got = collections.Counter(map(key, ref)), collections.Counter(map(key, trace_pkts))
    extra = got - want
    missing = want - got
    outside = collections.Counter(key(p) for p in ref if not lo <= p.ts_ns <= hi)
    holes = sum(max(0, n - outside[k]) for k, n in missing.items())
    inside = sum(1 for p in ref if lo <= p.ts_ns <= hi)
    cut = sum(1 for p in trace_pkts if len(p.data) < p.orig_len)
    r = {
        "point": point.name,
        "tcpdump": len(ref),
        "tcpdump_in_window": inside,
        "trace": len(trace_pkts),
        "same": sum((want & got).values()),
        "missing_in_window": holes,
        "missing_outside_window": sum(missing.values()) - holes,
        "trace_only": sum(extra.values()),
        "truncated_in_trace": cut,
        "out_of_scope": dict(out_of_scope),
    }
    problems = []
    if holes:
        problems.append(
            f"{point.name}: {holes} of the {inside} packets tcpdump saw while "
            f"the trace ran are not in the trace's file"
        )
    if extra:
        problems.append(
            f"{point.name}: {sum(extra.values())} packets in the trace's file "
            f"that tcpdump did not see (or with other bytes)"
        )
    if cut:
        problems.append(
            f"{point.name}: {cut} of {len(trace_pkts)} packets cut short "
            f"(snaplen {trace_snaplen}; whole packets are the default)"
        )
    return r, problems


def _kind(d):
    t = d[12:14]
    return {b"\x08\x06": "arp", b"\x86\xdd": "ipv6", b"\x08\x00": "ipv4"}.get(t, t.hex())


def test_trace_file_holds_every_packet_tcpdump_saw_at_each_point(make_netns, state_root, tmp_path):
    from pyinspect.pcap.pcapng import read_packets

    host = make_netns("ev-h")
    client = make_netns("ev-c")
    host.sh(
        f"ip link add evu0 type veth peer name eth0 netns {client.name} && "
        f"ip addr add {HOST_IP}/24 dev evu0 && ip link set evu0 up"
    )
    client.sh(f"ip addr add {CLIENT_IP}/24 dev eth0 && ip link set eth0 up")
    cli = Cli(state_root, netns=host.name)
    name = unique("ev")
    dumps = trace = None
    try:
        cli("run", "-d", "--name", name, "-p", f"{PORT}:80", "busybox", "sh", "-c", SERVE)
        info = json.loads(cli("inspect", name).stdout)[0]["NetworkSettings"]
        ctr_ip, bridge = info["IPAddress"], info["Bridge"]
        veth = info["Networks"]["bridge"]["HostVeth"]
        ctr_ns = info["SandboxKey"].rsplit("/", 1)[1]
        wait_listen(ctr_ns, 80)
        ctr_addrs = ctr_addresses(ctr_ip, ctr_ns)
        points = pointcap.trace_points(host.name, "evu0", bridge, veth, ctr_ns, name)

        dumps = pointcap.Tcpdumps(points, tmp_path, immediate=True)  # all listening
        pcap = tmp_path / "t.pcapng"
        t0 = time.monotonic()
        trace = subprocess.Popen(
            cli.argv("trace", "--container", name, "--json", "-w", pcap),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = json.loads(trace.stdout.readline() or "{}")
        ready_ns = time.time_ns()
        assert ready.get("type") == "ready", trace.stderr.read()
        startup = time.monotonic() - t0
        got = client.sh(
            f"for i in $(seq {FETCHES}); do curl -sS --max-time 5 "
            f"-H 'Connection: close' http://{HOST_IP}:{PORT}/ || exit 1; done"
        )
        assert got.stdout.count("evidence: one line") == 80 * FETCHES, got.stderr
        time.sleep(0.5)  # the last FIN's ACK
        stop_ns = time.time_ns()
        trace.send_signal(signal.SIGTERM)
        out, err = trace.communicate(timeout=120)
        assert trace.returncode == 0, err
        assert "Traceback" not in err, err
        time.sleep(0.3)
        reports = dumps.stop()
    finally:
        if trace and trace.poll() is None:
            trace.kill()
            trace.communicate()
        if dumps:
            dumps.kill()
        cli("rm", "-f", name, check=False)

    # tcpdump is the reference: it must have missed nothing itself
    for p in points:
        r = reports[p.name]
        assert r["dropped"] == 0 and r["captured"] == r["received"], (p.name, r)
    by_if = collections.defaultdict(list)
    snaplens = {}
    for pk in read_packets(pcap):
        by_if[pk.interface.name].append(pk)
        snaplens[pk.interface.name] = pk.interface.snaplen
    # the file is readable by the field's tools too, with the same count per interface
    assert pointcap.count_packets(pcap) == {k: len(v) for k, v in by_if.items()}
    rows, problems = [], []
    ref = {}
    for p in points:
        ref[p.name] = list(read_packets(dumps.paths[p.name]))
        r, probs = compare(
            p,
            ref[p.name],
            by_if.get(p.name, []),
            snaplens.get(p.name),
            (ready_ns, stop_ns),
            ctr_addrs,
        )
        rows.append(r)
        problems += probs
    # the reference saw the 20 connections at every point (the uplink pre-DNAT)
    uplink = points[0]
    assert len(syn_ports(ref[uplink.name])) == FETCHES, "tcpdump did not see 20 SYNs"

    # the summary's books per point: captured + lost == seen, nothing lost
    items, garbled = [], []
    for line in filter(str.strip, out.splitlines()):
        try:
            items.append(json.loads(line))
        except ValueError:
            garbled.append(line)
    if garbled:
        problems.append(
            f"{len(garbled)} line(s) of `trace --json` are not JSON, e.g. {garbled[0][:300]!r}"
        )
    summary = [i for i in items if i.get("type") == "summary"]
    assert len(summary) == 1, out[-2000:]
    per_point = summary[0]["packets_per_point"]
    for p in points:
        keys = [k for k in per_point if k.split(" (")[0] == p.iface]
        if len(keys) != 1:
            problems.append(f"summary: no single entry for {p.iface}: {list(per_point)}")
            continue
        v = per_point[keys[0]]
        seen = v.get("seen", v.get("matched_in_kernel"))
        lost, capped = v.get("lost", 0), v.get("capped", 0)
        if v["captured"] + lost + capped != seen:
            problems.append(
                f"summary {keys[0]}: captured {v['captured']} + lost {lost}"
                f" + capped {capped} != seen {seen} ({v})"
            )
        if lost or capped:
            problems.append(f"summary {keys[0]}: lost {lost}, capped {capped}")
        if v["captured"] != len(by_if.get(p.name, [])):
            problems.append(
                f"summary {keys[0]}: captured {v['captured']} but the file "
                f"holds {len(by_if.get(p.name, []))} packets of {p.name}"
            )
    table = "\n".join(json.dumps(r) for r in rows)
    print(
        f"\ntrace ready after {startup:.2f}s; per point:\n{table}\nsummary: "
        f"{json.dumps(per_point)}\nreader: {summary[0]['reader_us_per_record']} us of CPU "
        f"per analysed record, {summary[0]['poll_interval_s']} s polls; learned "
        f"{summary[0]['reader_cost']}; budget {summary[0]['reader_budget']}"
    )
    assert not problems, "\n".join(problems) + f"\nper point:\n{table}"
