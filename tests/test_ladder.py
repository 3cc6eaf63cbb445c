"""pyinspect.dashboard.ladder over a stored session: columns, journeys across points with the NAT
rewrite and its rule, drops placed at their point, the live cursors, and the trace
view's API answers for bad input. (The same view of a real trace, live in Chromium:
test_web.py.)"""

import struct
import time

import pytest

from pyinspect.config import database_path
from pyinspect.dashboard import ladder
from pyinspect.pcap.pcapng import PcapNgWriter
from pyinspect.store import Store
from pyinspect.store.rows import DropRow, FlowRow, HopRow, IndexCapture, JourneyRow
from pyinspect.web.app import create_app

CLIENT, HOST, CTR = "10.9.0.2", "10.9.0.1", "172.30.9.10"


def frame(src, sport, dst, dport, flags, ipid, seq):
    """An Ethernet + IPv4 + TCP frame (no payload)."""
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40,
        ipid,
        0,
        64,
        6,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags, 65535, 0, 0)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp


@pytest.fixture
def session(state_root):
    """A stopped session: four points, a SYN journey DNATed between uplink and bridge, its
    SYN-ACK un-DNATed on the way out, the client's first data packet (TCP data is not
    traced: no hops), the rule hops of the SYN, and one drop at the veth."""
    t0 = time.time_ns()
    with Store(database_path(state_root)) as s:
        ids = s.begin_trace(
            container_id="c0ffee",
            container_name="web",
            started_ns=t0,
            points=[
                {"name": "up0", "description": "uplink", "ifindex": 11},
                {"name": "br0", "description": "bridge", "ifindex": 12},
                {"name": "vc0", "description": "veth", "ifindex": 13},
                {"name": "eth0", "description": "container", "ifindex": 2, "netns": 5},
            ],
        )
        sid, points = ids.session_id, ids.point_ids
        path = state_root / "pcap" / str(sid) / "seg-00001.pcapng"
        path.parent.mkdir(parents=True)
        seg = s.add_segment(sid, 1, path, t0)
        offsets = []
        syn_out = (CLIENT, 40000, HOST, 8088)
        syn_in = (CLIENT, 40000, CTR, 80)
        ack_in = (CTR, 80, CLIENT, 40000)
        ack_out = (HOST, 8088, CLIENT, 40000)
        packets = [  # (point index, tuple, flags, direction)
            (0, syn_out, 0x02, "in"), (1, syn_in, 0x02, "out"), (2, syn_in, 0x02, "out"),
            (3, syn_in, 0x02, "in"),
            (3, ack_in, 0x12, "out"), (2, ack_in, 0x12, "in"), (1, ack_in, 0x12, "in"),
            (0, ack_out, 0x12, "out"),
            (0, syn_out, 0x18, "in"), (1, syn_in, 0x18, "out"), (2, syn_in, 0x18, "out"),
            (3, syn_in, 0x18, "in"),
        ]  # fmt: skip
        with open(path, "wb") as fh, PcapNgWriter(fh) as w:
            for name in ("up0", "br0", "vc0", "eth0"):
                w.add_interface(name)
            for n, (point, tup, flags, _d) in enumerate(packets):
                w.flush()
                offsets.append(w.tell())
                ipid = 1 + n // 4
                w.write_packet(point, t0 + 1000 * (n + 1), frame(*tup, flags, ipid, 100 + ipid))
        fid = s.insert_flow(
            FlowRow(sid, "tcp", CLIENT, 40000, HOST, 8088, CTR, 80, CLIENT, 40000,
                    nat="DNAT 10.9.0.1:8088 -> 172.30.9.10:80", first_ns=t0, last_ns=t0 + 9000)
        )  # fmt: skip
        caps = [
            IndexCapture(seg, offsets[n], t0 + 1000 * (n + 1), points[p], d, 54)
            for n, (p, _t, _f, d) in enumerate(packets)
        ]
        jids = s.add_journeys([JourneyRow(sid, fid, caps[k : k + 4]) for k in (0, 4, 8)])
        fwd = "-A FORWARD -j ACCEPT"
        rule = "-A PREROUTING ! -i br0 -p tcp --dport 8088 -j DNAT --to-destination 172.30.9.10:80"
        s.insert_hops(
            [
                HopRow(sid, fid, jids[0], t0, "raw", "PREROUTING", None, "", "ACCEPT"),
                HopRow(sid, fid, jids[0], t0, "nat", "PREROUTING", 1, rule, "DNAT 172.30.9.10:80"),
                HopRow(sid, fid, jids[0], t0, "filter", "FORWARD", 1, fwd, "ACCEPT"),
            ]
        )  # fmt: skip
        s.insert_drops(
            [DropRow(sid, t0 + 50_000, "NETFILTER_DROP", "nf_hook_slow+0x7d", 13, fid,
                     {"explanation": "dropped in FORWARD: policy DROP", "src": CLIENT,
                      "sport": 40001, "dst": CTR, "dport": 80})]
        )  # fmt: skip
        s.end_trace(sid)
    return {"root": state_root, "sid": sid, "fid": fid, "points": points, "jids": jids}


def test_ladder_of_a_session(session):
    v = ladder.view(session["root"], session["sid"])
    assert [(c["name"], c["role"]) for c in v["columns"]] == [
        ("up0@host", "uplink"),
        ("br0", "bridge"),
        ("vc0@host (web)", "veth"),
        ("web/eth0", "container"),
    ]
    syn, synack, data = v["journeys"]
    assert syn["way"] == "in" and syn["flags"] == "[S]" and syn["len"] == 54
    assert [c["point_id"] for c in syn["captures"]] == session["points"]
    (dnat,) = syn["rewrites"]
    assert dnat["at"] == 1 and dnat["kind"] == "DNAT"
    assert dnat["before"] == f"{CLIENT}:40000 -> {HOST}:8088"
    assert dnat["after"] == f"{CLIENT}:40000 -> {CTR}:80"
    assert dnat["rule"] == "nat PREROUTING rule 1 -> DNAT 172.30.9.10:80"
    assert "--to-destination 172.30.9.10:80" in dnat["rule_text"]
    assert [h["text"] for h in syn["hops"]] == [
        "raw:PREROUTING policy -> ACCEPT",
        "nat:PREROUTING rule 1 -> DNAT 172.30.9.10:80",
        "filter:FORWARD rule 1 -> ACCEPT",
    ]
    assert synack["way"] == "out" and synack["flags"] == "[S.]" and synack["hops"] == []
    (undnat,) = synack["rewrites"]
    assert undnat["at"] == 3 and undnat["kind"] == "un-DNAT"
    assert undnat["after"] == f"{HOST}:8088 -> {CLIENT}:40000"
    assert data["flags"] == "[.P]" and data["hops"] == [] and len(data["rewrites"]) == 1
    (drop,) = v["drops"]
    assert drop["point_id"] == session["points"][2]  # ifindex 13: the veth's column
    assert drop["reason"] == "NETFILTER_DROP" and "policy DROP" in drop["explanation"]
    assert v["flows"][0]["text"] == f"tcp {CLIENT}:40000 -> {HOST}:8088"


def test_live_cursors_give_whole_journeys_once(session):
    root, sid = session["root"], session["sid"]
    first = ladder.new_journeys(root, sid, None, 0)
    assert [j["id"] for j in first] == session["jids"]
    assert ladder.new_journeys(root, sid, None, first[0]["id"])[0]["id"] == session["jids"][1]
    assert ladder.new_journeys(root, sid, None, first[-1]["id"]) == []
    assert len(ladder.new_drops(root, sid, session["fid"], 0)) == 1
    assert ladder.new_drops(root, sid, None, 10**9) == []
    assert len(ladder.view(root, sid, session["fid"])["journeys"]) == 3


def test_trace_view_api_and_bad_input(session):
    app = create_app(session["root"])
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app.config['PYINSPECT_TOKEN']}"
    sid = session["sid"]
    r = c.get(f"/api/traces/{sid}/ladder")
    assert r.status_code == 200 and len(r.json["journeys"]) == 3
    page = c.get(f"/traces/{sid}?flow={session['fid']}").get_data(as_text=True)
    assert 'id="pcap-flow"' in page and f"/api/traces/{sid}/pcap?flow={session['fid']}" in page
    assert c.get("/api/traces/999/ladder").status_code == 404
    assert c.get("/traces/999").status_code == 404
    assert c.get(f"/api/traces/{sid}/ladder?flow=999").status_code == 404
    r = c.get(f"/api/traces/{sid}/ladder?flow=abc")
    assert r.status_code == 400 and "bad flow" in r.json["error"]
    assert c.get(f"/api/traces/{sid}/ladder/stream?after_id=-1").status_code == 400
    assert c.get("/api/traces/999/drops/stream").status_code == 404
    r = c.get(f"/api/traces/{sid}/ladder/stream?seconds=1&after_id=0", buffered=False)
    chunks = [x.decode() if isinstance(x, bytes) else x for x in r.response]
    assert chunks[0].startswith("retry:") and any('"un-DNAT"' in x for x in chunks)


def test_the_stored_ladder_in_chromium(session):
    """The drawing of a stopped session: columns, arrows, the NAT labels, the drop row."""
    import subprocess

    from conftest import PYINSPECT
    from helpers import browser
    from testbed import tracetopo

    why = browser.available()
    if why:
        pytest.skip(why)
    server = subprocess.Popen(
        [PYINSPECT, "--root", str(session["root"]), "serve", "--no-probes", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        base = tracetopo.dashboard_url(server, lines)
        assert base, lines
        login = next(line.rsplit(" ", 1)[1] for line in lines if "dashboard login" in line)
        with browser.chromium() as b:
            b.login(login)
            b.open(base + f"traces/{session['sid']}")
            b.wait(lambda b: b.driver.find_element("id", "trace").get_attribute("data-ready"))
            assert b.count(".ladder-cols .col-name") == 4
            assert b.count(".packet") == 3 and b.count(".packet svg line.arrow") == 3
            body = b.text(".ladder-body")
            assert f"DNAT {CLIENT}:40000 -> {CTR}:80" in body, body
            assert f"un-DNAT {HOST}:8088 -> {CLIENT}:40000" in body, body
            assert "DROP NETFILTER_DROP at nf_hook_slow+0x7d" in b.text(".drop")
            assert "policy DROP" in b.text(".drop-why")
            assert b.text("#drop-count") == "1" and b.text("#trace-status") == "stopped"
            summaries = [
                x.text for x in b.driver.find_elements("css selector", "details.rules summary")
            ]
            assert summaries[1].endswith(
                "rule path: as the flow's earlier packet this way (stored once)"
            ), summaries
            assert summaries[2].endswith(
                "rule path: not traced (of TCP, only SYN, FIN and RST packets are)"
            ), summaries
            b.click("details.rules summary")
            assert "nat:PREROUTING rule 1 -> DNAT 172.30.9.10:80" in b.text("details.rules[open]")
            b.screenshot("trace-drop")
            assert not b.console_errors(), b.console_errors()
    finally:
        server.terminate()
        server.wait(timeout=30)
