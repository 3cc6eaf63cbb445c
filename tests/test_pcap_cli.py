"""`pyinspect pcap export|ls|merge` and pcap_export over a real store, checked with tshark."""

import io
import json
import subprocess
import tracemalloc

import pytest
from scapy.all import IP, TCP, UDP, Ether, raw

from pyinspect.config import database_path
from pyinspect.errors import UsageError
from pyinspect.pcap.export import export, parse_flow, parse_time
from pyinspect.pcap.pcapng import read_packets
from pyinspect.store import Store

from conftest import have, tshark_fields
from helpers.segfiles import Pkt, add_trace

pytestmark = pytest.mark.skipif(not have("tshark"), reason="tshark not installed")

T0 = 1_764_417_600_000_000_000
CLIENT, HOSTIP, CIP = "192.168.77.2", "192.168.77.10", "172.18.0.2"
DNAT = f"ct 42 DNAT {CLIENT}:40000->{HOSTIP}:8088 => {CIP}:80"


def frame(src, dst, sport, dport, flags="S", proto="tcp"):
    l4 = (
        TCP(sport=sport, dport=dport, flags=flags)
        if proto == "tcp"
        else UDP(sport=sport, dport=dport)
    )
    return raw(Ether() / IP(src=src, dst=dst) / l4 / b"GET / HTTP/1.0\r\n\r\n")


def add_session(store, name="test", t0=T0, cid="ab" * 32, extra=0):
    """A DNAT'd HTTP connection seen on the uplink and the veth, plus unrelated noise, in
    two segment files whose runs are out of time order. The flow's packets on the
    uplink and the veth's first are indexed to it; the veth's reply is not (export
    finds it by its tuple)."""
    up, veth = 0, 1
    s1 = [
        [
            Pkt(up, t0 + 100, frame(CLIENT, HOSTIP, 40000, 8088), "in", flow=0),
            Pkt(up, t0 + 400, frame(HOSTIP, CLIENT, 8088, 40000, "SA"), "out", flow=0),
        ],
        [
            Pkt(up, t0 + 50, frame("192.168.77.3", HOSTIP, 5353, 53, proto="udp"), "in"),
            Pkt(veth, t0 + 200, frame(CLIENT, CIP, 40000, 80), "out", flow=0),
        ],
    ]
    s2 = [
        [
            Pkt(veth, t0 + 300, frame(CIP, CLIENT, 80, 40000, "SA"), "in"),
            Pkt(up, t0 + 900, frame("192.168.77.3", HOSTIP, 1234, 22), "in", indexed=True),
        ]
    ]
    if extra:
        s2[0].insert(0, Pkt(2, t0 + 1, frame(CLIENT, HOSTIP, 1, 2), orig_len=1500))
    summary = {
        "packets_per_point": {"eth0 (uplink)": {"captured": 4}, "veth (veth)": {"captured": 2}},
        "lost": 0,
    }
    flow = {
        "ct_id": 42,
        "proto": "tcp",
        "orig_src": CLIENT,
        "orig_sport": 40000,
        "orig_dst": HOSTIP,
        "orig_dport": 8088,
        "reply_src": CIP,
        "reply_sport": 80,
        "reply_dst": CLIENT,
        "reply_dport": 40000,
        "nat": DNAT,
        "first_ns": t0 + 100,
        "last_ns": t0 + 400,
    }
    sid, _, _ = add_trace(
        store,
        name,
        [("eth0@host", "uplink"), (f"vethab12cd3@host ({name})", "host veth")],
        [s1, s2],
        cid=cid,
        started=t0,
        stopped=t0 + 10**9,
        summary=summary,
        flows=[flow],
        extra=extra,
    )
    return sid


@pytest.fixture
def store_root(state_root):
    with Store(database_path(state_root)) as store:
        add_session(store)
        add_session(store, t0=T0 + 5 * 10**9)
        add_session(store, name="other", t0=T0 + 9 * 10**9, cid="cd" * 32)
    return state_root


def test_export_session_shows_dnat_on_both_points(cli, store_root, tmp_path):
    out = tmp_path / "s1.pcapng"
    res = cli("pcap", "export", "--session", "1", "-o", out)
    assert "wrote 6 packets on 2 interfaces" in res.stdout
    rows = tshark_fields(
        out,
        "frame.interface_name",
        "tcp.srcport",
        "tcp.dstport",
        "frame.packet_flags_direction",
        "frame.comment",
        "frame.time_epoch",
        "tcp.seq_raw",
    )
    times = [r[5] for r in rows]
    assert times == sorted(times)  # ORDER BY ts_ns
    tcp = [r for r in rows if r[1] == "40000"]
    # the same TCP stream (same source port, same raw seq): 8088 on the uplink, 80 on the veth
    assert [(r[0], r[2]) for r in tcp] == [("eth0@host", "8088"), ("vethab12cd3@host (test)", "80")]
    assert tcp[0][6] == tcp[1][6]
    # packets the trace indexed to the flow carry its NAT; its direction is the file's
    assert tcp[0][4] == f"flow 1: {DNAT}" and int(tcp[0][3], 16) == 1
    assert int(tcp[1][3], 16) == 2
    assert [r[4] for r in rows if r[1] in ("", "1234")] == ["", ""]  # no flow, no comment
    info = subprocess.run(["capinfos", str(out)], capture_output=True, text=True, check=True).stdout
    assert "Number of interfaces in file: 2" in info and "Number of packets:   6" in info


def test_export_container_merges_its_sessions(cli, store_root, tmp_path):
    out = tmp_path / "c.pcapng"
    res = cli("pcap", "export", "--container", "test", "-o", out)
    assert "wrote 12 packets on 2 interfaces" in res.stdout  # same names: one interface each
    got = list(read_packets(out))
    assert len(got) == 12 and [p.ts_ns for p in got] == sorted(p.ts_ns for p in got)
    by_id = tmp_path / "id.pcapng"
    cli("pcap", "export", "--container", "cdcdcdcd", "-o", by_id)
    assert {p.interface.name for p in read_packets(by_id)} == {
        "eth0@host",
        "vethab12cd3@host (other)",
    }


def test_export_time_window(cli, store_root, tmp_path):
    out = tmp_path / "w.pcapng"
    cli(
        "pcap",
        "export",
        "--session",
        "1",
        "--since",
        str(T0 + 100),
        "--until",
        str(T0 + 400),
        "-o",
        out,
    )
    assert [p.ts_ns - T0 for p in read_packets(out)] == [100, 200, 300, 400]
    cli("pcap", "export", "--container", "test", "--since", "2025-11-29T12:00:04Z", "-o", out)
    assert {p.ts_ns // 10**9 for p in read_packets(out)} == {T0 // 10**9 + 5}
    res = cli(
        "pcap",
        "export",
        "--session",
        "1",
        "--since",
        "5m",
        "--until",
        "yesterday",
        "-o",
        out,
        check=False,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "bad time" in res.stderr


def test_export_flow_follows_both_nat_sides(cli, store_root, tmp_path):
    out = tmp_path / "f.pcapng"
    cli(
        "pcap",
        "export",
        "--session",
        "1",
        "--flow",
        f"tcp {CLIENT}:40000->{HOSTIP}:8088",
        "-o",
        out,
    )
    rows = tshark_fields(out, "frame.interface_name", "tcp.dstport")
    assert rows == [
        ["eth0@host", "8088"],
        ["vethab12cd3@host (test)", "80"],
        ["vethab12cd3@host (test)", "40000"],
        ["eth0@host", "40000"],
    ]
    # asking by the container side of the NAT finds the same connection
    cli("pcap", "export", "--session", "1", "--flow", f"{CIP}:80,{CLIENT}:40000", "-o", out)
    assert len(tshark_fields(out, "frame.number")) == 4


def test_export_bpf_filter(cli, store_root, tmp_path):
    out = tmp_path / "b.pcapng"
    cli("pcap", "export", "--session", "1", "--filter", "tcp port 80", "-o", out)
    assert [r[0] for r in tshark_fields(out, "frame.interface_name")] == [
        "vethab12cd3@host (test)"
    ] * 2
    cli("pcap", "export", "--session", "1", "--filter", "udp and dst port 53", "-o", out)
    assert tshark_fields(out, "udp.dstport") == [["53"]]
    bad = tmp_path / "bad.pcapng"
    res = cli("pcap", "export", "--session", "1", "--filter", "tcp port", "-o", bad, check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith("Error: bad --filter 'tcp port': ") and not bad.exists()


def test_export_errors(cli, store_root, tmp_path):
    out = tmp_path / "e.pcapng"
    cases = [
        (("--session", "99"), 3, "no trace session 99"),
        (("--container", "nosuch"), 3, "no trace sessions of container nosuch"),
        ((), 2, "exactly one of --session"),
        (("--session", "1", "--container", "test"), 2, "exactly one of --session"),
        (("--session", "1", "--flow", "tcp 1.2.3:4->5"), 2, "bad --flow"),
    ]
    for args, code, msg in cases:
        res = cli("pcap", "export", *args, "-o", out, check=False)
        assert res.returncode == code, (args, res.stderr)
        assert msg in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert "Traceback" not in res.stderr
    res = cli("pcap", "export", "--session", "1", "-o", tmp_path / "no" / "x.pcapng", check=False)
    assert res.returncode == 3 and "does not exist" in res.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["root"]


def test_pcap_ls(cli, store_root, state_root):
    res = cli("pcap", "ls")
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["ID", "CONTAINER"]
    assert len(lines) == 4 and lines[1].split()[:2] == ["3", "other"]
    rows = [json.loads(line) for line in cli("pcap", "ls", "--json").stdout.splitlines()]
    assert [(r["id"], r["points"], r["packets"]) for r in rows] == [(3, 2, 6), (2, 2, 6), (1, 2, 6)]


def test_pcap_ls_empty_store(tmp_path):
    from conftest import Cli

    res = Cli(tmp_path / "fresh")("pcap", "ls")
    assert res.stdout.splitlines()[0].split()[0] == "ID" and len(res.stdout.splitlines()) == 1


def test_merge_cli(cli, store_root, tmp_path):
    a, b = tmp_path / "a.pcapng", tmp_path / "b.pcapng"
    cli("pcap", "export", "--session", "1", "-o", a)
    cli("pcap", "export", "--session", "3", "-o", b)
    out = tmp_path / "m.pcapng"
    res = cli("pcap", "merge", a, b, "-o", out)
    assert "merged 12 packets from 2 files (4 interfaces)" in res.stdout
    assert len(tshark_fields(out, "frame.number")) == 12
    bad = tmp_path / "cut.pcapng"
    bad.write_bytes(a.read_bytes()[:-7])
    out2 = tmp_path / "m2.pcapng"
    res = cli("pcap", "merge", a, bad, "-o", out2, check=False)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "cut.pcapng: truncated block" in res.stderr
    assert not out2.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    res = cli("pcap", "merge", tmp_path / "missing.pcap", "-o", out2, check=False)
    assert res.returncode == 3


def test_export_to_file_object_and_unknown_point(state_root):
    """An interface of the segment files that is no capture point of the store keeps
    the name the file gives it."""
    with Store(database_path(state_root)) as store:
        sid = add_session(store, extra=1)
        buf = io.BytesIO()
        res = export(store, session_id=sid, out=buf)
    assert res["packets"] == 7 and res["interfaces"] == 3 and res["missing"] == []
    path = state_root / "obj.pcapng"
    path.write_bytes(buf.getvalue())
    rows = tshark_fields(path, "frame.interface_name", "frame.len")
    assert ["extra0@host", "1500"] in rows


def test_export_streams_in_constant_memory(state_root, tmp_path):
    payload = frame(CLIENT, CIP, 40000, 80) + bytes(1000)
    n = 30_000
    with Store(database_path(state_root)) as store:
        # three runs per file, interleaved in time, over three files
        segs = [
            [[Pkt(0, T0 + i, payload, "in") for i in range(k + r, n, 9)] for r in (0, 3, 6)]
            for k in range(3)
        ]
        sid, _, _ = add_trace(store, "big", [("big/eth0", "container: eth0 in big")], segs)
        out = tmp_path / "big.pcapng"
        tracemalloc.start()
        res = export(store, session_id=sid, out=out, bpf_filter="tcp")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert res["packets"] == n
    size = out.stat().st_size
    assert size > 30e6 and peak < size / 6, (peak, size)  # never holds the file in memory
    assert [p.ts_ns - T0 for p in read_packets(out)] == list(range(n))


def test_parse_flow_and_time():
    assert parse_flow("tcp 10.0.0.1:1->10.0.0.2:80") == ("tcp", "10.0.0.1", 1, "10.0.0.2", 80)
    assert parse_flow("udp:[fd00::1]:53 > [fd00::2]:5353") == (
        "udp",
        "fd00::1",
        53,
        "fd00::2",
        5353,
    )
    assert parse_flow("10.0.0.1 10.0.0.2") == ("ip", "10.0.0.1", None, "10.0.0.2", None)
    for bad in ("tcp 10.0.0.1:99999->10.0.0.2:1", "nonsense", "tcp 300.1.1.1:1->1.1.1.1:2"):
        with pytest.raises(UsageError):
            parse_flow(bad)
    now = 10**18
    assert parse_time("90s", now_ns=now) == now - 90 * 10**9
    assert parse_time("1764417600.5") == 1_764_417_600_500_000_000
    assert parse_time("1764417600000000001") == 1_764_417_600_000_000_001
    assert parse_time("2025-11-29T12:00:00Z") == 1_764_417_600 * 10**9


def test_point_names_as_the_tracer_stores_them(state_root, tmp_path):
    """Bare names + role descriptions (what `pyinspect trace` writes) become distinct names."""
    rows = [
        ("eth0", "uplink"),
        ("pyinspect0", "bridge"),
        ("vethab12cd3", "veth: host end of test's veth"),
        ("eth0", "container: eth0 in test"),
    ]
    with Store(database_path(state_root)) as store:
        d = frame(CLIENT, CIP, 40000, 80)
        sid, _, _ = add_trace(store, "test", rows, [[[Pkt(i, T0 + i, d) for i in range(4)]]])
        out = tmp_path / "names.pcapng"
        export(store, session_id=sid, out=out)
    assert tshark_fields(out, "frame.interface_name", "frame.interface_description") == [
        ["eth0@host", "uplink"],
        ["pyinspect0", "bridge"],
        ["vethab12cd3@host (test)", "veth: host end of test's veth"],
        ["test/eth0", "container: eth0 in test"],
    ]


@pytest.mark.root
def test_real_trace_exports_the_nat_story(state_root, tmp_path):
    """`pyinspect trace -w` on real DNAT traffic, then `pcap export`: both files tell it."""
    import json as _json

    from conftest import Cli
    from testbed import tracetopo

    topo = tracetopo.Topology(prefix="pp")
    try:
        live = tmp_path / "live.pcapng"
        hcli = Cli(state_root, netns=topo.host)
        proc = subprocess.Popen(
            hcli.argv(
                "trace", "--container", topo.ctrs[0], "--json", "--duration", "2", "-w", live
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            ready = proc.stdout.readline()
            assert ready and _json.loads(ready)["type"] == "ready", proc.stderr.read()
            assert topo.fetch().returncode == 0
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    finally:
        topo.close()
    hcli = Cli(state_root)  # the host namespace is gone; the store remains
    sessions = [_json.loads(x) for x in hcli("pcap", "ls", "--json").stdout.splitlines()]
    assert len(sessions) == 1 and sessions[0]["packets"] > 0
    out = tmp_path / "export.pcapng"
    hcli("pcap", "export", "--session", sessions[0]["id"], "-o", out)
    ctr = topo.ctrs[0]
    for path in (out, live):
        rows = tshark_fields(
            path,
            "frame.interface_name",
            "tcp.dstport",
            "tcp.srcport",
            "frame.packet_flags_direction",
            "frame.comment",
            filt="tcp",
        )
        assert rows, path
        syn_ports = {(r[0], r[1]) for r in rows if r[1] in ("8088", "80")}
        up = [n for n, p in syn_ports if p == "8088"]
        inside = [n for n, p in syn_ports if p == "80"]
        assert up and all(n.startswith("up0") for n in up), syn_ports
        assert any(n.startswith("vc0") for n in inside), syn_ports
        assert any("eth0" in n for n in inside), syn_ports
        assert all(int(r[3], 16) in (1, 2) for r in rows)
        assert any("DNAT" in r[4] for r in rows)
    names = {r[0] for r in tshark_fields(out, "frame.interface_name")}
    assert {"up0@host", f"vc0@host ({ctr})", f"{ctr}/eth0"} <= names, names
    assert len(tshark_fields(out, "frame.number")) == sessions[0]["packets"]
