"""pyinspect trace with real traffic, on a hand-made copy of the runtime's topology.

The "host" is a namespace (testbed/tracetopo.py) with a bridge, a container namespace behind a
veth running busybox httpd, DNAT 8088->80 and MASQUERADE in the legacy backend (as the
runtime writes them), a client namespace and an upstream namespace. `pyinspect trace` runs
inside the host namespace through the real CLI.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import Cli
from testbed import tracetopo

pytestmark = pytest.mark.root


@pytest.fixture
def topo():
    t = tracetopo.Topology()
    yield t
    t.close()


@pytest.fixture
def topo_nolisten():
    t = tracetopo.Topology(listen=False)
    yield t
    t.close()


class Trace:
    """`pyinspect trace --json` in the background; waits for its ready line."""

    def __init__(self, state_root, topo, *args, container=None):
        self.cli = Cli(state_root, netns=topo.host)
        argv = self.cli.argv("trace", "--container", container or topo.ctrs[0], "--json", *args)
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"trace exited early: {self.proc.stderr.read()}")
        self.ready = json.loads(line)
        assert self.ready["type"] == "ready", line

    def finish(self, timeout=30):
        """Wait for the trace to end (--duration); returns (items, summary)."""
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        assert "Traceback" not in err
        items = [json.loads(line) for line in out.splitlines() if line.strip()]
        summary = [i for i in items if i["type"] == "summary"]
        assert len(summary) == 1, out
        return [i for i in items if i["type"] != "summary"], summary[0]

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def hops_of(items, flow):
    return [i for i in items if i["type"] == "hop" and i["flow"] == flow]


def test_dnat_inbound_path_rule_and_unnat(state_root, topo, tmp_path):
    pcap = tmp_path / "t.pcapng"
    tables = tracetopo.sh(topo.host, "cat /proc/net/ip_tables_names").stdout.split()
    assert "mangle" not in tables
    tr = Trace(state_root, topo, "--duration", "3", "-w", pcap)
    assert tr.ready["points"] == ["up0", "wan0", "pt-br0", "vc0", "eth0"]
    got = topo.fetch()
    assert got.returncode == 0 and "hello from" in got.stdout, got
    items, summary = tr.finish()
    # reading the rules did not create a table (a table is a hook every packet pays for)
    assert "mangle" not in tracetopo.sh(topo.host, "cat /proc/net/ip_tables_names").stdout
    flows = [i for i in items if i["type"] == "flow"]
    assert len(flows) == 1, flows
    f = flows[0]
    client = f["orig"][:2]
    assert f["orig"][0] == topo.client_ip and f["orig"][2:] == [topo.host_ip, 8088]
    # conntrack's reply tuple: the container answers the client from :80
    assert f["reply"] == [topo.ctr_ips[0], 80, topo.client_ip, client[1]]
    assert f["nat"] == "dnat"
    assert f"DNAT {topo.host_ip}:8088 -> {topo.ctr_ips[0]}:80" in f["text"]
    hops = hops_of(items, f["flow"])
    # the SYN: uplink in (pre-NAT), netfilter (DNAT by nat PREROUTING rule 1), bridge out,
    # veth out, eth0 in (post-NAT)
    syn = []
    for h in hops:
        syn.append(h)
        if h["hop"] == "capture" and h["role"] == "container":
            break
    caps = [(h["point"], h["dir"], h["dst"], h["dport"]) for h in syn if h["hop"] == "capture"]
    assert caps == [
        ("up0", "in", topo.host_ip, 8088),
        ("pt-br0", "out", topo.ctr_ips[0], 80),
        ("vc0", "out", topo.ctr_ips[0], 80),
        ("eth0", "in", topo.ctr_ips[0], 80),
    ]
    nf = [h for h in syn if h["hop"] == "netfilter"]
    dnat = [h for h in nf if h["table"] == "nat" and h["chain"] == "PREROUTING"]
    assert dnat and dnat[0]["rule_num"] == 1 and dnat[0]["verdict"] == f"DNAT {topo.ctr_ips[0]}:80"
    assert "--to-destination" in dnat[0]["rule_text"]
    assert syn.index(dnat[0]) > 0 and syn.index(dnat[0]) < syn.index(
        [h for h in syn if h.get("point") == "pt-br0"][0]
    )
    chains = [(h["table"], h["chain"]) for h in nf]
    assert chains.index(("nat", "PREROUTING")) < chains.index(("filter", "FORWARD"))
    # the reply leaves the uplink un-NATed: from HOST:8088 back to the client
    up_out = [
        h for h in hops if h["hop"] == "capture" and h["point"] == "up0" and h["dir"] == "out"
    ]
    assert up_out and all((h["src"], h["sport"]) == (topo.host_ip, 8088) for h in up_out)
    eth_out = [
        h for h in hops if h["hop"] == "capture" and h["point"] == "eth0" and h["dir"] == "out"
    ]
    assert eth_out and all((h["src"], h["sport"]) == (topo.ctr_ips[0], 80) for h in eth_out)
    # the container's process events are interleaved by time: httpd forks for the
    # connection after the SYN came in
    forks = [
        n
        for n, i in enumerate(items)
        if i["type"] == "event" and i["kind"] == "fork" and i["comm"] == "busybox"
    ]
    first_syn = next(n for n, i in enumerate(items) if i["type"] == "hop")
    assert forks and forks[0] > first_syn, [i["text"] for i in items][:30]
    assert summary["process_events"] >= 1
    # summary: packets per point, NAT, no loss
    pp = summary["packets_per_point"]
    assert pp["up0 (uplink)"]["captured"] >= 6 and pp["wan0 (uplink)"]["captured"] == 0
    assert pp["eth0 (container)"]["captured"] >= pp["up0 (uplink)"]["captured"]
    assert summary["loss"]["capture"] == 0
    assert summary["nat"] == [f"DNAT {topo.host_ip}:8088 -> {topo.ctr_ips[0]}:80"]
    assert summary["flows"] == 1 and not summary["drops"], (
        summary["connections"],
        summary["drops"],
        [i["text"] for i in items],
    )
    # the merged pcapng: every point an interface, NAT comments on the packets
    from pyinspect.pcap.pcapng import read_packets

    pkts = list(read_packets(pcap))
    names = {p.interface.name for p in pkts}
    c = topo.ctrs[0]  # the names `pcap export` gives too
    assert {"up0@host", "pt-br0", f"vc0@host ({c})", f"{c}/eth0"} <= names, names
    assert any(p.comment and "DNAT" in p.comment for p in pkts)
    # the store has the session, its flow with both tuples, packets and rule hops
    from pyinspect.store import Store

    with Store(state_root / "pyinspect.db") as st:
        db = st.db
        sess = list(db["trace_sessions"].rows)[-1]
        assert sess["status"] == "stopped" and sess["container_name"] == topo.ctrs[0]
        frow = list(db["flows"].rows_where("session_id = ?", [sess["id"]]))
        assert frow[0]["orig_dport"] == 8088 and frow[0]["reply_sport"] == 80
        # packets live in the session's pcap files; the index points into them
        assert st.indexed_count(session_id=sess["id"]) >= 20
        assert db["pcap_segments"].count_where("session_id = ?", [sess["id"]]) >= 1
        assert (
            db["hops"].count_where(
                "session_id = ? and table_name = 'nat' and chain = 'PREROUTING' and verdict like "
                "'DNAT%'",
                [sess["id"]],
            )
            >= 1
        )
        assert db["capture_points"].count_where("session_id = ?", [sess["id"]]) == 5


def test_masquerade_outbound(state_root, topo):
    topo.upstream_serve()
    tr = Trace(state_root, topo, "--duration", "3", "--no-events")
    got = topo.fetch(ns=topo.ctrs[0], url=f"http://{topo.upstream_ip}/")
    assert got.returncode == 0 and "upstream" in got.stdout
    items, summary = tr.finish()
    flows = [i for i in items if i["type"] == "flow"]
    assert len(flows) == 1
    f = flows[0]
    assert f["orig"][0] == topo.ctr_ips[0] and f["orig"][2:] == [topo.upstream_ip, 80]
    assert f["nat"] == "snat"
    # the upstream answers the host's address: MASQUERADE to wan0's IP
    assert f["reply"][:3] == [topo.upstream_ip, 80, topo.wan_ip]
    hops = hops_of(items, f["flow"])
    masq = [
        h
        for h in hops
        if h["hop"] == "netfilter"
        and h["table"] == "nat"
        and h["chain"] == "POSTROUTING"
        and h["verdict"] == "MASQUERADE"
    ]
    assert masq and "-j MASQUERADE" in masq[0]["rule_text"]
    caps = [(h["point"], h["dir"]) for h in hops if h["hop"] == "capture"][:4]
    assert caps == [("eth0", "out"), ("vc0", "in"), ("pt-br0", "in"), ("wan0", "out")]
    wan_out = [
        h for h in hops if h["hop"] == "capture" and h["point"] == "wan0" and h["dir"] == "out"
    ]
    assert wan_out and all(h["src"] == topo.wan_ip for h in wan_out)
    wan_in = [
        h for h in hops if h["hop"] == "capture" and h["point"] == "wan0" and h["dir"] == "in"
    ]
    assert wan_in and all(h["dst"] == topo.wan_ip for h in wan_in)
    assert any(n.startswith(f"SNAT {topo.ctr_ips[0]}:") for n in summary["nat"])
    assert summary["packets_per_point"]["up0 (uplink)"]["captured"] == 0


def test_no_listener_is_explained(state_root, topo_nolisten):
    topo = topo_nolisten
    tr = Trace(state_root, topo, "--duration", "2", "--no-events")
    got = topo.fetch(timeout=2)
    assert got.returncode != 0
    items, summary = tr.finish()
    texts = [i["text"] for i in items]
    drops = [i for i in items if i["type"] == "drop" and i["reason"] == "NO_SOCKET"]
    assert drops, texts
    assert drops[0]["explanation"] == f"no listener on port 80 in {topo.ctrs[0]}: RST"
    rst = [
        h
        for h in items
        if h["type"] == "hop"
        and h["hop"] == "capture"
        and h["point"] == "eth0"
        and h["dir"] == "out"
        and "R]" in h["text"]
    ]
    assert rst, f"the RST leaving the container was not captured: {texts}"
    assert (
        f"[{drops[0]['flow']}] no listener on port 80 in {topo.ctrs[0]}: RST" in summary["drops"]
    ), (summary, texts)


def test_drops_in_another_namespace_with_the_same_addresses_are_not_reported(state_root, topo):
    """Another "host" with the same container address (another bridge, another machine's
    worth of namespaces) drops a connection: that is not the traced container's drop."""
    other = tracetopo.Topology(prefix="po", listen=False, net=topo.n)
    try:
        assert other.ctr_ips == topo.ctr_ips
        tr = Trace(state_root, topo, "--duration", "2", "--no-events")
        assert other.fetch(timeout=2).returncode != 0  # NO_SOCKET drop over there
        items, summary = tr.finish()
    finally:
        other.close()
    assert not [i for i in items if i["type"] == "drop"], items
    assert summary["flows"] == 0 and not summary["drops"], summary


def test_forward_policy_drop_is_explained(state_root, topo):
    topo.forward_policy_drop()
    tr = Trace(state_root, topo, "--duration", "2.5", "--no-events")
    got = topo.fetch(timeout=2)
    assert got.returncode != 0
    items, summary = tr.finish()
    drops = [i for i in items if i["type"] == "drop" and i["reason"] == "NETFILTER_DROP"]
    assert drops, [i for i in items if i["type"] == "drop"]
    assert drops[0]["explanation"] == "dropped in FORWARD: policy DROP"
    nf = [h for h in items if h["type"] == "hop" and h["hop"] == "netfilter"]
    assert ("filter", "FORWARD", "DROP") in [(h["table"], h["chain"], h["verdict"]) for h in nf]
    # DNAT happened before the drop; nothing reached the bridge or the container
    assert any(h["verdict"].startswith("DNAT") for h in nf)
    pp = summary["packets_per_point"]
    assert pp["up0 (uplink)"]["captured"] >= 2  # the SYN and its retransmission
    # (the bridge does carry the container's own IPv6 link control: MLD reports, NDP)
    assert not [h for h in items if h["type"] == "hop" and h.get("point") == "pt-br0"]
    link_control = [p for i in items if i["type"] == "ndp" for p, _d in i["points"]]
    assert pp["pt-br0 (bridge)"]["captured"] == link_control.count("pt-br0"), [
        h.get("text") for h in items
    ]


def _tcx_programs(ns):
    """'ifname side' for every interface in `ns` with a tcx program attached."""
    from pyinspect.probes import packets

    out = []
    for idx, name in (
        line.split(": ")[:2] for line in tracetopo.sh(ns, "ip -o link show").stdout.splitlines()
    ):
        for side in ("ingress", "egress"):
            if packets.tcx_program_ids(int(idx), side, f"/run/netns/{ns}"):
                out.append(f"{name.split('@')[0]} {side}")
    return out


def _kernel_leftovers(topo):
    """Our tc filters / clsact qdiscs / tcx programs, TRACE rules and the nf_log binding."""
    out = []
    for ns in (topo.host, topo.ctrs[0]):
        text = tracetopo.sh(
            ns,
            "for d in $(ls /sys/class/net); do "
            "tc filter show dev $d ingress; tc filter show dev $d egress; "
            "tc qdisc show dev $d | grep clsact; done; true",
        ).stdout
        if "pyinspect-trace" in text or "clsact" in text:
            out.append(f"tc {ns}: {text.strip()}")
        tcx = _tcx_programs(ns)
        if tcx:
            out.append(f"tcx {ns}: {', '.join(tcx)}")
    rules = tracetopo.sh(topo.host, "iptables-legacy-save").stdout  # -t raw -S makes raw
    if "TRACE" in rules:
        out.append(rules)
    tables = tracetopo.sh(topo.host, "nft list tables").stdout
    if "pyinspect_trace" in tables:
        out.append(tables)
    nflog = tracetopo.sh(topo.host, "cat /proc/sys/net/netfilter/nf_log/2").stdout.strip()
    if nflog != "nf_log_ipv4":
        out.append(f"nf_log/2 = {nflog}")
    return out


@pytest.mark.parametrize("hook", ["tcx", "clsact"])
def test_nothing_remains_after_stop_and_after_sigkill(state_root, topo, hook, monkeypatch):
    monkeypatch.setenv("PYINSPECT_TC_ATTACH", hook)
    assert _kernel_leftovers(topo) == []
    # Ctrl-C (SIGINT) stops cleanly and removes everything
    tr = Trace(state_root, topo, "--no-events")
    left = _kernel_leftovers(topo)  # attached: programs, rules, binding
    assert any(x.startswith(f"{'tcx' if hook == 'tcx' else 'tc'} ") for x in left), left
    # raw PREROUTING gets two rules of ours, jumps to the session's chain for everything
    # but TCP data; the chain TRACEs the traced flows
    pre = [
        r
        for r in tracetopo.sh(topo.host, "iptables-legacy -t raw -S PREROUTING").stdout.splitlines()
        if r.startswith("-A")
    ]
    chain = f"PI-TRACE-{tr.proc.pid}"
    mark = f'-m comment --comment "pyinspect-trace:{tr.proc.pid}" -j {chain}'
    assert pre == [
        f"-A PREROUTING ! -p tcp {mark}",
        f"-A PREROUTING -p tcp -m tcp ! --tcp-flags FIN,SYN,RST NONE {mark}",
    ], pre
    rules = tracetopo.sh(topo.host, f"iptables-legacy -t raw -S {chain}").stdout.splitlines()
    assert all(r.endswith("-j TRACE") for r in rules[1:]) and len(rules) > 1, rules
    assert topo.fetch().returncode == 0  # and the programs capture
    time.sleep(0.5)
    tr.proc.send_signal(signal.SIGINT)
    items, summary = tr.finish()
    assert summary["capture_hook"] == hook
    assert summary["packets_per_point"]["vc0 (veth)"]["captured"] > 0, summary
    assert _kernel_leftovers(topo) == []
    # kill -9 leaves TRACE rules (and clsact filters; tcx links die with the process); the
    # next pyinspect command (any of them) removes them and says so
    tr = Trace(state_root, topo, "--no-events")
    tr.proc.kill()
    tr.proc.wait()
    left = _kernel_leftovers(topo)
    assert any("TRACE" in x for x in left), left
    if hook == "clsact":
        assert any(x.startswith("tc ") for x in left), left
    else:
        assert not any(x.startswith(("tc ", "tcx ")) for x in left), left
    ps = Cli(state_root, netns=topo.host)("ps", "-a")
    assert "removed what a killed trace left" in ps.stderr, ps.stderr
    assert _kernel_leftovers(topo) == []
    assert not list((state_root / "trace").glob("*.json"))
    # and a trace start does the same sweep itself (library users call TraceSession)
    tr = Trace(state_root, topo, "--no-events")
    tr.proc.kill()
    tr.proc.wait()
    nsenter = [
        "nsenter",
        f"--net=/run/netns/{topo.host}",
        sys.executable,
        "-c",
        "import sys; from pyinspect.trace import cleanup_stale; "
        "print(len(cleanup_stale(sys.argv[1])))",
        str(state_root),
    ]
    assert int(subprocess.run(nsenter, capture_output=True, text=True, check=True).stdout) > 0
    assert _kernel_leftovers(topo) == []


def test_filter_and_errors(state_root, topo):
    topo.upstream_serve()
    # a connection is kept when any of its packets matches the pcap filter
    tr = Trace(state_root, topo, "--duration", "2.5", "--no-events", "--filter", "tcp port 8088")
    assert topo.fetch().returncode == 0
    assert topo.fetch(ns=topo.ctrs[0], url=f"http://{topo.upstream_ip}/").returncode == 0
    items, summary = tr.finish()
    flows = [i for i in items if i["type"] == "flow"]
    assert [f["orig"][3] for f in flows] == [8088]
    assert summary["filtered_out"] > 0
    cli = Cli(state_root, netns=topo.host)
    bad = cli("trace", "--container", topo.ctrs[0], "--filter", "tcp portx 80", check=False)
    assert bad.returncode == 2 and "bad --filter" in bad.stderr and "Traceback" not in bad.stderr
    badw = cli("trace", "--container", topo.ctrs[0], "-w", "/pt-no-such-dir/x.pcapng", check=False)
    assert badw.returncode == 2 and "cannot write" in badw.stderr, badw.stderr
    assert len(badw.stderr.strip().splitlines()) == 1
    missing = cli("trace", "--container", "pt-no-such-thing", "--duration", "1", check=False)
    assert missing.returncode == 3 and "no such container" in missing.stderr
    assert _kernel_leftovers(topo) == []


def test_trace_without_netfilter_trace_degrades_visibly(state_root, topo):
    """nfnetlink_log group 0 taken by another listener: trace says so and still captures."""
    holder = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            topo.host,
            sys.executable,
            "-c",
            f"import sys, time; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
            "from pyinspect.probes.nftrace import NflogReader\n"
            "r = NflogReader().start(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        tr = Trace(state_root, topo, "--duration", "2", "--no-events")
        assert any(n.startswith("netfilter trace: unavailable") for n in tr.ready["notes"]), (
            tr.ready
        )
        assert topo.fetch().returncode == 0
        items, summary = tr.finish()
        flows = [i for i in items if i["type"] == "flow"]
        assert flows and flows[0]["nat"] == "dnat"  # conntrack still gives the NAT
        assert not [h for h in items if h["type"] == "hop" and h["hop"] == "netfilter"]
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert _kernel_leftovers(topo) == []


def test_nft_backend_rule_path(state_root):
    """DNAT written with iptables-nft: the rule path comes from nftrace events."""
    topo = tracetopo.Topology(backend="nft")
    try:
        tr = Trace(state_root, topo, "--duration", "2.5", "--no-events")
        assert topo.fetch().returncode == 0
        items, summary = tr.finish()
        nf = [
            h
            for h in items
            if h["type"] == "hop" and h["hop"] == "netfilter" and h["backend"] == "nftables"
        ]
        dnat = [h for h in nf if h["verdict"] == f"DNAT {topo.ctr_ips[0]}:80"]
        assert dnat and dnat[0]["table"] == "ip nat" and dnat[0]["chain"] == "PREROUTING"
        # an xt-compat rule (iptables-nft's DNAT target) as iptables-nft-save prints it
        assert dnat[0]["rule_text"].startswith("-A PREROUTING ! -i pt-br0 -p tcp")
        assert "--dport 8088 -j DNAT --to-destination" in dnat[0]["rule_text"]
        assert summary["nat"] == [f"DNAT {topo.host_ip}:8088 -> {topo.ctr_ips[0]}:80"]
        assert summary["netfilter_trace"].startswith(
            "nftables (iptables-nft tables ip filter, ip nat"
        )
        assert _kernel_leftovers(topo) == []
        # the trace made no legacy table in a namespace that had none
        assert tracetopo.sh(topo.host, "cat /proc/net/ip_tables_names").stdout.split() == []
    finally:
        topo.close()


def test_count_port_and_via(state_root, topo):
    """--count stops after N traced packets; --via picks the uplink; --port narrows."""
    tr = Trace(
        state_root,
        topo,
        "--count",
        "3",
        "--via",
        "up0",
        "--port",
        "80",
        "--no-events",
        "--duration",
        "20",
    )
    assert tr.ready["points"] == ["up0", "pt-br0", "vc0", "eth0"]
    t0 = time.time()
    assert topo.fetch().returncode == 0
    items, summary = tr.finish()
    assert time.time() - t0 < 10  # stopped by --count, not --duration
    assert summary["traced_packets"] == 3 and summary["flows"] == 1
    caps = [i for i in items if i["type"] == "hop" and i["hop"] == "capture"]
    assert caps and all({c["sport"], c["dport"]} & {80, 8088} for c in caps)
    assert "wan0 (uplink)" not in summary["packets_per_point"]


def test_a_connection_right_after_ready_is_captured_whole_at_a_low_budget(state_root, topo):
    """The budget is a token bucket, full when the trace is ready: one fetch (~50 records
    over its points within milliseconds) is not shed at 100 records/s, though a poll's
    share of that rate is 10."""
    tr = Trace(state_root, topo, "--duration", "2", "--no-events", "--max-rate", "100")
    assert topo.fetch().returncode == 0
    items, summary = tr.finish()
    per_point = summary["packets_per_point"]
    # the uplink and the bridge see only the fetch (the container's interfaces also carry
    # its IPv6 start-up frames, which can use up the start-up budget before ready)
    for name in ("up0 (uplink)", "pt-br0 (bridge)"):
        assert per_point[name]["shed"] == 0 and per_point[name]["analysed"] >= 10, per_point
    flows = {h["flow"] for h in items if h["type"] == "hop"}
    assert len(flows) == 1, flows
    at = collections.Counter(
        h["point"] for h in items if h["type"] == "hop" and h["hop"] == "capture"
    )
    assert (
        at["up0"]
        == at["pt-br0"]
        == at["vc0"]
        == at["eth0"]
        == per_point["up0 (uplink)"]["analysed"]
    ), at


def test_reader_backs_off_while_every_cpu_is_busy(state_root, topo):
    """With a busy loop on every CPU the automatic budget falls to its busy share and the
    reader polls less often (each poll costs CPU whatever it reads)."""
    from pyinspect.trace import budget as tracer

    tr = Trace(state_root, topo, "--duration", "2", "--no-events")
    burners = [
        subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(os.cpu_count() or 1)
    ]
    try:
        _items, summary = tr.finish()
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert summary["poll_interval_s"] == tracer.POLL_INTERVAL_BUSY > tracer.POLL_INTERVAL
    assert f"{tracer.AUTO_CPU_SHARE:.1%} of a core" in summary["reader_budget"], summary


def test_budget_sheds_bulk_data_but_keeps_how_connections_start(state_root, topo):
    """With a tiny reader budget a bulk download is shed (and counted), yet every short
    connection made meanwhile still shows its SYN at the container: SYN/FIN/RST have
    a budget of their own in the kernel."""
    www = f"/tmp/{topo.ctrs[0]}-www"
    with open(f"{www}/big", "wb") as f:
        f.write(os.urandom(1 << 20) * 48)
    tr = Trace(state_root, topo, "--duration", "5", "--no-events", "--max-rate", "20")
    bulk = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            topo.client,
            "busybox",
            "wget",
            "-q",
            "-O",
            "/dev/null",
            f"http://{topo.host_ip}:8088/big",
        ]
    )
    try:
        time.sleep(0.5)
        for _ in range(3):
            assert topo.fetch().returncode == 0
            time.sleep(0.3)
    finally:
        bulk.wait(timeout=60)
    items, summary = tr.finish()
    assert summary["loss"]["shed"] > 1000, summary["loss"]  # the budget was hit
    flows = [c for c in summary["connections"] if ":8088" in c]
    assert len(flows) == 4, summary["connections"]
    syn_at_eth0 = {
        h["flow"]
        for h in items
        if h["type"] == "hop"
        and h["hop"] == "capture"
        and h["point"] == "eth0"
        and h["dir"] == "in"
        and "[S]" in h["text"]
    }
    assert len(syn_at_eth0) == 4, (syn_at_eth0, [i.get("text") for i in items][:60])
    # the analysis was shed, the evidence was not: every packet is in the pcap files
    vc0 = summary["packets_per_point"]["vc0 (veth)"]
    assert vc0["captured"] + vc0["lost"] + vc0["capped"] == vc0["seen"]
    assert vc0["lost"] == vc0["capped"] == 0 and vc0["captured"] > 1000, vc0
    assert vc0["analysed"] + vc0["shed"] + vc0["analysis_lost"] == vc0["seen"], vc0
