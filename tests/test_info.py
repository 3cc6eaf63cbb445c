"""`pyinspect info` against facts read independently, in a network namespace the test owns."""

import json
import os
import subprocess
import sys

import pytest

from pyinspect.host import hostinfo

from conftest import Cli

pytestmark = pytest.mark.root


def count_rules(ns, tool):
    out = ns.run(tool).stdout
    return sum(1 for line in out.splitlines() if line.startswith("-A "))


def test_info_json_matches_the_host(make_netns, state_root):
    ns = make_netns("pb")
    # rules in both backends, and forwarding on, all inside the test's namespace
    ns.sh(
        "iptables-legacy -t nat -A POSTROUTING -s 10.250.0.0/24 -j MASQUERADE && "
        "iptables-legacy -A FORWARD -i pb0 -j ACCEPT && "
        "iptables-nft -A FORWARD -o pb0 -j ACCEPT && "
        "iptables-nft -A FORWARD -o pb1 -j DROP && "
        "iptables-nft -t nat -A PREROUTING -p tcp --dport 8088 -j DNAT "
        "--to-destination 10.250.0.2:80 && "
        "ip6tables-legacy -A INPUT -i pb0 -j ACCEPT && "
        "sysctl -qw net.ipv4.ip_forward=1"
    )
    facts = json.loads(Cli(state_root, netns=ns.name)("info", "--json").stdout)

    assert facts["kernel"]["release"] == os.uname().release
    backends = {b["backend"]: b for b in facts["iptables"]}
    legacy, nft = backends["iptables-legacy"], backends["iptables-nft"]
    assert legacy["present"] and legacy["rules"] == count_rules(ns, "iptables-legacy-save") == 2
    assert legacy["tables"]["nat"] == 1 and legacy["tables"]["filter"] == 1
    assert nft["present"] and nft["rules"] == count_rules(ns, "iptables-nft-save") == 3
    assert backends["nftables"]["present"] and backends["nftables"]["rules"] >= 3
    assert backends["ip6tables-legacy"]["rules"] == count_rules(ns, "ip6tables-legacy-save") == 1
    assert backends["ip6tables-nft"]["rules"] == 0

    assert facts["netns"] == os.stat(ns.path).st_ino
    assert facts["sysctls"]["net.ipv4.ip_forward"] == "1"
    bnf = ns.sh("cat /proc/sys/net/bridge/bridge-nf-call-iptables", check=False)
    assert facts["sysctls"]["net.bridge.bridge-nf-call-iptables"] == (
        bnf.stdout.strip() if bnf.returncode == 0 else None
    )

    fstype = subprocess.run(
        ["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if fstype == "cgroup2fs":
        assert facts["cgroups"]["layout"] == "v2"
    elif os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers"):
        assert facts["cgroups"]["layout"] == "hybrid"
        assert "/sys/fs/cgroup/memory" in facts["cgroups"]["v1_hierarchies"]
    else:
        assert facts["cgroups"]["layout"] == "v1"

    assert facts["btf"]["present"] == os.path.exists("/sys/kernel/btf/vmlinux")
    with open("/proc/self/mountinfo") as f:
        tracefs = any(" - tracefs " in line for line in f)
    assert facts["tracefs"]["mounted"] == tracefs

    from pyinspect.probes.capabilities import HOOKS

    hooks = {h["name"]: h for h in facts["ebpf"]}
    assert set(hooks) == set(HOOKS)
    assert all(h["reason"] for h in hooks.values())
    # what ENVIRONMENT.md measured on this kind of VM: tracepoints load, kprobes do not
    if not os.path.exists("/sys/bus/event_source/devices/kprobe"):
        assert hooks["kprobe"]["available"] is False
    # how each probe loads: the capture program is a libbpf object, cached or buildable
    loaders = {p["probe"]: p for p in facts["loaders"]}
    cap = loaders["capture (tc)"]
    assert cap["loader"] == "libbpf" and cap["object"].split(" (")[0] in (
        "cached",
        "not built yet",
        "no clang",
        "no libbpf",
    ), cap


def test_link_probe_reports_what_the_kernel_refuses():
    """The scratch-netns link probe (netfilter, tcx) turns a refusal into a plain reason:
    here a real link create with an attach type no kernel has."""
    import struct

    from pyinspect.probes import bpfsys
    from pyinspect.probes import capabilities as c

    ok = c._probe_tcx()
    assert ok.name == "tcx" and ok.reason
    bogus = c._link_buffers(bpfsys.PROG_TYPE_SCHED_CLS, -1, 0, struct.pack("<III", 1, 999, 0))
    st = c._probe_link("tcx", bogus, "links", "no tcx in this kernel")
    assert not st.available and st.reason == "link create refused: no tcx in this kernel"


def test_info_text(make_netns, state_root):
    ns = make_netns("pb")
    out = Cli(state_root, netns=ns.name)("info").stdout
    for heading in (
        "Kernel:",
        "Cgroups:",
        "iptables backends:",
        "Sysctls",
        "tracefs:",
        "BTF:",
        "eBPF hooks:",
        "Probe loaders:",
    ):
        assert heading in out
    assert "net.ipv4.ip_forward = 0" in out
    assert "iptables-legacy  0 rules" in out
    assert "tracepoint" in out


def test_ebpf_unknown_when_detection_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyinspect.probes.capabilities", None)
    assert hostinfo.ebpf_hooks() is None
    from pyinspect.commands.info import _render

    facts = hostinfo.collect(probe_ebpf=False)
    assert "unknown" in _render(facts).split("eBPF hooks:")[1]
