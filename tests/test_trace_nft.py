"""pyinspect trace on namespaces without legacy iptables: Docker's nftables backend layout
(native nft only) and Docker's iptables layout written with iptables-nft-restore
(testbed/dockerfw.py), on the topology of testbed/tracetopo.py without its own rules.

The rule path comes from nf_tables trace events (a `meta nftrace set 1` table of the
trace's own); every hop is listed in the kernel's order with its verdict, and the trace
creates no legacy table."""

import json
import os
import re
import subprocess
import time

import pytest
from test_trace import Trace, _kernel_leftovers, hops_of

from pyinspect.probes import nftrace

from conftest import Cli
from testbed import dockerfw, tracetopo

pytestmark = pytest.mark.root


def _topo(layout):
    t = tracetopo.Topology(prefix="pi-nft", backend=None)
    try:
        if layout == "nft":
            rules = dockerfw.nft_ruleset(t.bridge, t.subnet, t.ctr_ips[0], t.dnat_port)
            tracetopo.sh(t.host, f"nft -f - <<'EOF'\n{rules}\nEOF")
        else:
            rules = dockerfw.iptables_nft_rules(t.bridge, t.subnet, t.ctr_ips[0], t.dnat_port)
            tracetopo.sh(t.host, f"iptables-nft-restore <<'EOF'\n{rules}EOF")
    except Exception:
        t.close()
        raise
    return t


@pytest.fixture
def nft_topo():
    t = _topo("nft")
    yield t
    t.close()


@pytest.fixture
def iptnft_topo():
    t = _topo("iptables-nft")
    yield t
    t.close()


def _syn_hops(items):
    """The netfilter hops of the one flow's first packet (the SYN)."""
    flows = [i for i in items if i["type"] == "flow"]
    assert len(flows) == 1, flows
    syn = []
    for h in hops_of(items, flows[0]["flow"]):
        if h["hop"] == "capture" and h["role"] == "container":
            break
        syn.append(h)
    return flows[0], [h for h in syn if h["hop"] == "netfilter"]


def _no_legacy_tables(topo):
    assert tracetopo.sh(topo.host, "cat /proc/net/ip_tables_names").stdout.split() == []
    assert "*" not in tracetopo.sh(topo.host, "iptables-legacy-save").stdout


def _nft_texts(ns):
    """{handle: rule text} as `nft -a list ruleset` prints it, counters as `counter`."""
    out = {}
    for line in tracetopo.sh(ns, "nft -a list ruleset").stdout.splitlines():
        m = re.match(r"^\t\t(\S.*?)\s*# handle (\d+)$", line)
        if m:
            out[int(m.group(2))] = re.sub(r"counter packets \d+ bytes \d+", "counter", m.group(1))
    return out


def test_decide_mode():
    assert nftrace.decide_mode(["nat"], [], True, True)[0] == "legacy"
    assert nftrace.decide_mode([], ["ip docker-bridges"], True, True)[0] == "nftables"
    assert nftrace.decide_mode(["nat"], ["inet fw"], True, True)[0] == "both"
    assert nftrace.decide_mode([], ["ip nat (iptables-nft)", "inet fw"], True, True) == (
        "nftables",
        "iptables-nft tables ip nat; native nft tables inet fw, no x_tables rules",
    )
    assert nftrace.decide_mode([], [], False, True) == (
        "nftables",
        "no rules yet; the kernel has nf_tables and no x_tables",
    )
    assert nftrace.decide_mode([], [], True, False)[0] == "legacy"
    assert nftrace.decide_mode([], [], False, False)[0] == "none"


def test_nft_only_docker_layout_every_hop_in_order(state_root, nft_topo):
    topo, ctr = nft_topo, nft_topo.ctr_ips[0]
    tr = Trace(state_root, topo, "--duration", "2.5", "--no-events")
    got = topo.fetch()
    assert got.returncode == 0 and "hello from" in got.stdout, got
    items, summary = tr.finish()
    assert summary["netfilter_trace"] == (
        "nftables (native nft tables ip docker-bridges, no x_tables rules)"
    )
    f, nf = _syn_hops(items)
    assert f["nat"] == "dnat" and f["reply"][:2] == [ctr, 80]
    assert [(h["chain"], h["kind"], h["verdict"]) for h in nf] == [
        ("raw-PREROUTING", "policy", "ACCEPT"),
        ("nat-PREROUTING", "rule", "JUMP nat-prerouting-and-output"),
        ("nat-prerouting-and-output", "rule", f"DNAT {ctr}:80"),
        ("filter-FORWARD", "rule", "JUMP filter-forward-in__pt-br0"),
        ("filter-forward-in__pt-br0", "rule", "ACCEPT"),
        ("nat-POSTROUTING", "rule", "JUMP nat-postrouting-in__pt-br0"),
        ("nat-postrouting-in__pt-br0", "return", "RETURN"),
        ("nat-POSTROUTING", "policy", "ACCEPT"),
    ], [h["text"] for h in nf]
    assert {h["table"] for h in nf} == {"ip docker-bridges"}
    assert [h["hook"] for h in nf] == ["PREROUTING"] * 3 + ["FORWARD"] * 2 + ["POSTROUTING"] * 3
    # each rule as `nft -a list` prints it, found by its handle
    texts = _nft_texts(topo.host)
    for h in nf:
        if h["kind"] == "rule":
            assert h["rule_text"] == texts[h["handle"]], h
    dnat = nf[2]
    assert dnat["rule_text"].endswith(f'dnat to {ctr}:80 comment "DNAT"')
    assert (
        f"netfilter ip docker-bridges:nat-prerouting-and-output handle {dnat['handle']} "
        f"-> DNAT {ctr}:80  (iifname != "
    ) in dnat["text"]
    # the reply comes back through the established accept of the bridge's out chain
    verdicts = [(h["chain"], h["verdict"]) for h in hops_of(items, f["flow"]) if "chain" in h]
    assert ("filter-forward-out__pt-br0", "ACCEPT") in verdicts
    # the dashboard's ladder names nf_tables rules by their handle too
    from pyinspect.dashboard import ladder

    view = ladder.view(state_root, summary["session_id"])
    syn = next(j for j in view["journeys"] if j["flags"] == "[S]")
    (rewrite,) = [r for r in syn["rewrites"] if r["kind"] == "DNAT"]
    assert rewrite["rule"] == (
        f"ip docker-bridges nat-prerouting-and-output handle {dnat['handle']} -> DNAT {ctr}:80"
    ), rewrite
    assert (
        f"ip docker-bridges:nat-prerouting-and-output handle {dnat['handle']} -> DNAT {ctr}:80"
        in [h["text"] for h in syn["hops"]]
    ), syn["hops"]
    # no iptables table of either backend, before or after; our nft table is gone
    _no_legacy_tables(topo)
    assert "*" not in tracetopo.sh(topo.host, "iptables-nft-save").stdout
    tables = tracetopo.sh(topo.host, "nft list tables").stdout.split("\n")
    assert [t for t in tables if t] == [f"table ip {dockerfw.TABLE}"]
    assert _kernel_leftovers(topo) == []


def test_iptables_nft_docker_layout_every_hop_in_order(state_root, iptnft_topo):
    topo, ctr, br = iptnft_topo, iptnft_topo.ctr_ips[0], iptnft_topo.bridge
    tr = Trace(state_root, topo, "--duration", "2.5", "--no-events")
    assert topo.fetch().returncode == 0
    items, summary = tr.finish()
    assert summary["netfilter_trace"].startswith(
        "nftables (iptables-nft tables ip filter, ip nat, no x_tables rules)"
    )
    f, nf = _syn_hops(items)
    assert f["nat"] == "dnat"
    # the DNAT in nat DOCKER before the filter FORWARD hops, every jump and return named
    assert [(h["table"], h["chain"], h["kind"], h["verdict"]) for h in nf] == [
        ("ip nat", "PREROUTING", "rule", "JUMP DOCKER"),
        ("ip nat", "DOCKER", "rule", f"DNAT {ctr}:80"),
        ("ip filter", "FORWARD", "rule", "JUMP DOCKER-USER"),
        ("ip filter", "DOCKER-USER", "rule", "RETURN"),
        ("ip filter", "FORWARD", "rule", "JUMP DOCKER-ISOLATION-STAGE-1"),
        ("ip filter", "DOCKER-ISOLATION-STAGE-1", "rule", "RETURN"),
        ("ip filter", "FORWARD", "rule", "JUMP DOCKER"),
        ("ip filter", "DOCKER", "rule", "ACCEPT"),
        ("ip nat", "POSTROUTING", "policy", "ACCEPT"),
    ], [h["text"] for h in nf]
    # xt-compat rules (addrtype, DNAT) as iptables-nft-save prints them, native ones as nft
    assert nf[0]["rule_text"] == "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER"
    assert nf[1]["rule_text"] == (
        f"-A DOCKER ! -i {br} -p tcp -m tcp --dport 8088 -j DNAT --to-destination {ctr}:80"
    )
    assert nf[2]["rule_text"] == "counter jump DOCKER-USER"
    assert all(h["verdict"] for h in items if h.get("hop") == "netfilter")
    assert not [h for h in items if h.get("hop") == "netfilter" and h["backend"] != "nftables"]
    _no_legacy_tables(topo)
    assert _kernel_leftovers(topo) == []


def test_kill_9_then_the_sweep_removes_the_nft_table(state_root, nft_topo):
    topo = nft_topo
    tr = Trace(state_root, topo, "--no-events")
    pid = tr.proc.pid
    table = f"pyinspect_trace_{pid}"
    listing = tracetopo.sh(topo.host, f"nft list table inet {table}").stdout
    assert "hook prerouting priority raw - 1" in listing and "meta nftrace set 1" in listing
    tr.proc.kill()
    tr.proc.wait()
    assert table in tracetopo.sh(topo.host, "nft list tables").stdout
    ps = Cli(state_root, netns=topo.host)("ps", "-a")
    assert "removed what a killed trace left" in ps.stderr, ps.stderr
    assert f"inet {table}" in ps.stderr, ps.stderr
    assert table not in tracetopo.sh(topo.host, "nft list tables").stdout
    _no_legacy_tables(topo)


def test_both_kinds_merged_in_hook_order(state_root):
    """Legacy NAT plus a native nft forward chain: both traced, merged by hook/priority."""
    topo = tracetopo.Topology(prefix="pi-nft")
    try:
        tracetopo.sh(
            topo.host,
            "nft add table inet pifw && nft add chain inet pifw fw_forward "
            "'{ type filter hook forward priority 10; policy accept; }' && "
            f"nft add rule inet pifw fw_forward oifname {topo.bridge} counter accept",
        )
        tr = Trace(state_root, topo, "--duration", "2.5", "--no-events")
        assert topo.fetch().returncode == 0
        time.sleep(0.2)
        items, summary = tr.finish()
        mode = summary["netfilter_trace"]
        assert mode.startswith("both (x_tables tables ") and "inet pifw" in mode, mode
        _f, nf = _syn_hops(items)
        where = [(h["backend"], h["table"], h["chain"]) for h in nf]
        dnat = where.index(("iptables-legacy", "nat", "PREROUTING"))
        fwd_legacy = where.index(("iptables-legacy", "filter", "FORWARD"))
        fwd_nft = where.index(("nftables", "inet pifw", "fw_forward"))
        assert dnat < fwd_legacy < fwd_nft, [h["text"] for h in nf]  # filter 0 before 10
        assert nf[fwd_nft]["verdict"] == "ACCEPT"
    finally:
        topo.close()


def test_a_rule_added_during_the_trace_is_named(state_root, nft_topo):
    """The ruleset is read again after it changed: a rule inserted after the trace
    started shows with its text (a counter rule: verdict CONTINUE)."""
    topo = nft_topo
    tr = Trace(state_root, topo, "--duration", "2.5", "--no-events")
    tracetopo.sh(
        topo.host,
        f"nft insert rule ip {dockerfw.TABLE} nat-prerouting-and-output "
        f"tcp dport {topo.dnat_port} counter comment '\"added later\"'",
    )
    assert topo.fetch().returncode == 0
    items, _summary = tr.finish()
    _f, nf = _syn_hops(items)
    added = [h for h in nf if "added later" in h["rule_text"]]
    assert added and added[0]["verdict"] == "CONTINUE", [h["text"] for h in nf]
    after = [h["chain"] for h in nf]
    assert after.index("nat-prerouting-and-output") == nf.index(added[0])  # before the DNAT
    assert nf[nf.index(added[0]) + 1]["verdict"].startswith("DNAT")


def test_without_the_nft_command_no_legacy_table_is_made(state_root, nft_topo, tmp_path):
    """No `nft` on PATH and no legacy rules: the trace cannot mark packets for nf_tables
    and does not fall back to TRACE rules (they would make legacy tables here): the rule
    path is unavailable, said once, and the capture and conntrack still work."""
    topo = nft_topo
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for name in os.listdir(d) if os.path.isdir(d) else ():
            if name != "nft" and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(os.path.join(d, name))
    cli = Cli(state_root, netns=topo.host)
    argv = cli.argv(
        "trace", "--container", topo.ctrs[0], "--json", "--duration", "2", "--no-events"
    )
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PATH": str(bin_dir)},
    )
    ready = json.loads(proc.stdout.readline() or "{}")
    assert ready.get("type") == "ready", proc.stderr.read()
    assert "rule path: none" in ready["text"]
    assert [n for n in ready["notes"] if n.startswith("netfilter trace: unavailable: no x_tables")]
    assert topo.fetch().returncode == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    items = [json.loads(line) for line in out.splitlines() if line.strip()]
    summary = [i for i in items if i["type"] == "summary"][0]
    assert summary["netfilter_trace"].startswith("none (no x_tables rules, and no nft command")
    assert summary["nat"] == [f"DNAT {topo.host_ip}:8088 -> {topo.ctr_ips[0]}:80"]
    assert not [i for i in items if i.get("hop") == "netfilter"]
    _no_legacy_tables(topo)
    assert "pyinspect_trace" not in tracetopo.sh(topo.host, "nft list tables").stdout
