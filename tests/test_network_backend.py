"""pyinspect writes its rules with the host's own iptables backend, never both.

Each test makes a netns that plays the host; the backend is chosen with
PYINSPECT_IPTABLES (as a host whose `iptables` alternative points there would).
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from pyinspect.runtime import iptables, nftmade, portmap

from helpers.network_helpers import Host, cname, container

pytestmark = pytest.mark.root


@pytest.fixture
def host(make_netns, state_root):
    h = Host(make_netns("pi-net-b"), state_root)
    yield h
    h.cleanup()


def _start(host, backend, publish, **kw):
    pid = host.spawn()
    rec = container(cname("pn-b"), pid=pid, publish=publish)
    reply = host.call("connect", env={iptables.ENV: backend}, container=rec, pid=pid, **kw)
    assert "error" not in reply, reply
    rec["network"] = reply["result"]
    return rec


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_rules_live_in_the_chosen_backend_only(host, backend):
    other = iptables.other(backend)
    # legacy is written through python-iptables here, nft with iptables-nft-restore
    assert (
        iptables.writer(backend)
        == {
            "legacy": "python-iptables",
            "nft": "iptables-nft-restore",
        }[backend]
    )
    rec = _start(host, backend, ["8088:80"])
    try:
        nat = host.ns.run(f"iptables-{backend}", "-t", "nat", "-S").stdout
        assert "--dport 8088" in nat and "DNAT --to-destination 172.29.0.2:80" in nat
        assert "-A PREROUTING -m addrtype --dst-type LOCAL" in nat
        # the other backend has no table at all in this namespace
        assert host.ns.run(f"iptables-{other}-save").stdout.strip() == ""
        # a second sync of the same state changes nothing (the writer reads back what it wrote)
        again = host.call("resync", env={iptables.ENV: backend}, bridge="pyinspect0")
        assert again["result"] == {"added": 0, "removed": 0}
    finally:
        reply = host.call("disconnect", env={iptables.ENV: backend}, container=rec)
        assert "error" not in reply, reply
    for tool in ("iptables-nft-save", "iptables-legacy-save"):
        assert "pyinspect" not in host.ns.run(tool).stdout
    if backend == "nft":  # the tables and built-in chains our rules made went with them
        assert host.ns.run("nft", "list", "ruleset").stdout.strip() == ""


def test_what_was_there_before_stays(host):
    """nft backend: a rule someone else had in nat POSTROUTING keeps its table and chain
    when our last rule goes; the tables and chains our rules made go."""
    host.ns.run(
        "iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "10.99.0.0/16", "-j", "RETURN"
    )
    rec = _start(host, "nft", ["8090:80"])
    made = host.ns.run("nft", "list", "tables").stdout.split()
    assert {"raw", "nat", "filter"} <= set(made), made
    reply = host.call("disconnect", env={iptables.ENV: "nft"}, container=rec)
    assert "error" not in reply, reply
    left = host.ns.run("nft", "list", "ruleset").stdout
    assert "ip saddr 10.99.0.0/16" in left and "hook postrouting" in left, left
    assert "table ip filter" not in left and "table ip raw" not in left, left
    assert "hook prerouting" not in left and "hook output" not in left, left


def test_an_unwritable_record_costs_only_the_tidying(monkeypatch, tmp_path):
    """No place for the record (a /run that cannot be written): nothing is recorded and
    nothing raises, so the change of rules under way goes on; the empty chains stay."""
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setattr(nftmade, "DIR", blocked / "nft-made")  # below a file: no mkdir
    nftmade.note(4, {}, [("nat", "PREROUTING")])  # a table and a chain it would record
    assert not nftmade.recorded(4) and nftmade.tidy([4]) == []


def test_without_netns_cookies_rules_go_on_and_nothing_is_recorded(host):
    """A kernel without SO_NETNS_COOKIE (before 5.14; played by a seccomp filter that
    answers the option as such a kernel does): `run`'s rules are written and removed as
    usual, no record is made, and the tables and built-in chains they made stay when the
    last rule goes (nothing says pyinspect made them)."""
    cookie = host.ok("cookie")
    assert isinstance(cookie, int), cookie
    assert host.ok("cookie", old_kernel=True) == "Protocol not available"  # the filter bites
    # `pyinspect info` says so (and says nothing where the cookie is there)
    assert host.ok("writer", backend="nft")["tidy_note"] is None
    note = host.ok("writer", backend="nft", old_kernel=True)["tidy_note"]
    assert "SO_NETNS_COOKIE" in note and "stay after its last rule goes" in note, note
    record = nftmade.DIR / f"{cookie}.json"
    rec = _start(host, "nft", ["8091:80"], old_kernel=True)
    try:
        assert "--dport 8091" in host.ns.run("iptables-nft-save", "-t", "nat").stdout
        assert not record.exists()
    finally:
        reply = host.call("disconnect", env={iptables.ENV: "nft"}, container=rec, old_kernel=True)
        assert "error" not in reply, reply
    assert "pyinspect" not in host.ns.run("iptables-nft-save").stdout
    left = host.ns.run("nft", "list", "ruleset").stdout
    assert "table ip nat" in left and "hook prerouting" in left, left
    assert not record.exists()


def test_rules_left_in_the_other_backend_move(host):
    """Rules an older pyinspect wrote in legacy go when the nft backend writes them."""
    rec = _start(host, "legacy", ["8089:80"])
    assert "--dport 8089" in host.ns.run("iptables-legacy-save", "-t", "nat").stdout
    try:
        reply = host.call("resync", env={iptables.ENV: "nft"}, bridge="pyinspect0")
        assert reply["result"]["added"] > 0
        assert "--dport 8089" in host.ns.run("iptables-nft-save", "-t", "nat").stdout
        assert "pyinspect" not in host.ns.run("iptables-legacy-save").stdout
    finally:
        host.call("disconnect", env={iptables.ENV: "nft"}, container=rec)
    assert "pyinspect" not in host.ns.run("iptables-nft-save").stdout


def test_a_failing_change_changes_nothing(host):
    """One restore text per change: a bad line leaves the tables as they were."""
    text = "*nat\n:PYINSPECT - [0:0]\n-A PYINSPECT -p tcp --dport 1 -j NOSUCHTARGET\nCOMMIT\n"
    proc = host.ns.run(
        sys.executable,
        "-c",
        "import sys; from pyinspect.runtime import iptables; iptables.restore(sys.argv[1], 'nft')",
        text,
        check=False,
    )
    assert proc.returncode != 0 and "iptables-nft-restore failed" in proc.stderr
    assert "PYINSPECT" not in host.ns.run("iptables-nft-save").stdout


def test_backend_follows_the_iptables_alternative(tmp_path, monkeypatch):
    """Like Docker: the backend is the one the host's `iptables` command points at."""
    monkeypatch.delenv(iptables.ENV, raising=False)
    for target, want in (("xtables-legacy-multi", "legacy"), ("xtables-nft-multi", "nft")):
        d = tmp_path / want
        d.mkdir()
        os.symlink(f"/usr/sbin/{target}", d / "iptables")
        monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
        assert iptables.backend() == want
        assert iptables.show_command(want) == "iptables"
    monkeypatch.setenv(iptables.ENV, "legacy")
    assert iptables.backend() == "legacy"
    monkeypatch.setenv(iptables.ENV, "bogus")
    with pytest.raises(Exception, match="invalid iptables backend 'bogus'"):
        iptables.backend()


def test_rendered_rules_match_what_save_prints(make_netns):
    """Every rule shape pyinspect writes reads back token for token (the writer compares
    what it wants with what `*-save` prints; a mismatch would re-add rules forever)."""
    ns = make_netns("pi-net-r")
    rules = (
        portmap.base_rules("pibr0", "10.77.0.0/24", internal=False)
        + portmap.isolation_rules("pibr0", "10.77.0.0/24", internal=True)
        + portmap.container_rules(
            "pibr0",
            "c" * 64,
            "10.77.0.2",
            [
                {"host_ip": "0.0.0.0", "host_port": 8080, "container_port": 80, "proto": "tcp"},
                {"host_ip": "127.0.0.1", "host_port": 53, "container_port": 53, "proto": "udp"},
            ],
        )
    )
    for backend in ("nft", "legacy"):
        script = (
            "import json, sys; from pyinspect.runtime import portmap; "
            "print(json.dumps(portmap.sync('pibr0', [portmap.RuleSpec(**r) for r in "
            "json.loads(sys.argv[1])], sys.argv[2])))"
        )
        data = json.dumps([dataclasses.asdict(r) for r in rules])
        first = ns.run(sys.executable, "-c", script, data, backend)
        unique = len({r.key() for r in rules})
        assert json.loads(first.stdout)["added"] == unique + 5  # + the shared jumps
        second = ns.run(sys.executable, "-c", script, data, backend)
        assert json.loads(second.stdout) == {"added": 0, "removed": 0}
        gone = ns.run(sys.executable, "-c", script, "[]", backend)
        assert json.loads(gone.stdout)["removed"] == unique + 5
        out = subprocess.run(
            ["ip", "netns", "exec", ns.name, f"iptables-{backend}-save"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "pyinspect" not in out and "PYINSPECT" not in out


SYNC = (
    "import json, sys; from pyinspect.runtime import iptables, portmap; "
    "print(iptables.writer(sys.argv[2])); "
    "print(json.dumps(portmap.sync('pibr0', [portmap.RuleSpec(**r) for r in "
    "json.loads(sys.argv[1])], sys.argv[2])))"
)


def _sync(ns, rules, backend="legacy", env=None, check=True):
    data = json.dumps([dataclasses.asdict(r) for r in rules])
    return ns.run(sys.executable, "-c", SYNC, data, backend, env=env, check=check)


def _tables(ns, backend="legacy"):
    """Every table's rules as `*-save` prints them (without the dated comment lines)."""
    out = ns.run(f"iptables-{backend}-save").stdout
    return [line for line in out.splitlines() if not line.startswith("#")]


def test_a_legacy_change_is_atomic(make_netns):
    """python-iptables commits each table of a change at once: a rule the kernel refuses
    leaves its table as it was, and a rule that cannot even be built changes no table."""
    ns = make_netns("pi-ipt-a")
    base = portmap.base_rules("pibr0", "10.78.0.0/24")
    first = _sync(ns, base).stdout.splitlines()
    assert first[0] == "python-iptables" and json.loads(first[1])["added"] > len(base)
    before = _tables(ns)
    assert any("pyinspect:pibr0:base" in line for line in before)
    tag = portmap.owner_tag("pibr0", "c" * 12)
    dport = (("tcp", (("dport", "80"),)),)
    fewer = [r for r in base if not (r.table == "filter" and r.in_ and r.in_ == r.out)]
    assert len(fewer) == len(base) - 1  # the change deletes a rule too
    ok = portmap.RuleSpec("filter", portmap.FILTER_CHAIN, tag, "ACCEPT", dst="10.78.0.2")
    # DNAT is valid in nat only: libiptc takes it, the kernel refuses the filter table
    refused = portmap.RuleSpec(
        "filter",
        portmap.FILTER_CHAIN,
        tag,
        "DNAT",
        (("to_destination", "10.78.0.3:80"),),
        proto="tcp",
        matches=dport,
    )
    proc = _sync(ns, fewer + [ok, refused], check=False)
    assert proc.returncode != 0, proc.stdout
    assert "python-iptables failed: filter commit" in proc.stderr, proc.stderr
    assert _tables(ns) == before
    # a match no extension provides: nothing is built, so the nat rule is not written either
    nat = portmap.RuleSpec("nat", portmap.NAT_CHAIN, tag, "ACCEPT", proto="tcp", matches=dport)
    unknown = portmap.RuleSpec(
        "filter", portmap.FILTER_CHAIN, tag, "ACCEPT", matches=(("nosuchmatch", ()),)
    )
    proc = _sync(ns, fewer + [nat, unknown], check=False)
    assert proc.returncode != 0 and "python-iptables: bad rule in filter" in proc.stderr
    assert _tables(ns) == before
    # the same change without the bad rules goes through, in legacy only
    done = json.loads(_sync(ns, fewer + [ok, nat]).stdout.splitlines()[1])
    assert done == {"added": 2, "removed": 1}
    after = "\n".join(_tables(ns))
    assert "-A PYINSPECT -d 10.78.0.2/32 -m comment" in after
    assert "-A PYINSPECT -p tcp -m tcp --dport 80 -m comment" in after
    assert "pyinspect" not in ns.run("iptables-nft-save").stdout
    gone = json.loads(_sync(ns, []).stdout.splitlines()[1])
    assert gone["removed"] > 0
    assert not any("pyinspect" in line or "PYINSPECT" in line for line in _tables(ns))


def test_legacy_falls_back_to_restore_without_python_iptables(make_netns):
    """When python-iptables cannot load its libxtables (here: it is told to look for a
    libxtables.so.99 that does not exist, its own PYTHON_IPTABLES_XTABLES_VERSION switch),
    legacy rules are written with iptables-legacy-restore and `pyinspect info` says so."""
    ns = make_netns("pi-ipt-f")
    broken = dict(os.environ, PYTHON_IPTABLES_XTABLES_VERSION="99", PYINSPECT_IPTABLES="legacy")
    rules = portmap.base_rules("pibr0", "10.79.0.0/24") + portmap.container_rules(
        "pibr0",
        "d" * 64,
        "10.79.0.2",
        [{"host_ip": "0.0.0.0", "host_port": 8090, "container_port": 80, "proto": "tcp"}],
    )
    out = _sync(ns, rules, env=broken).stdout.splitlines()
    assert out[0] == "iptables-legacy-restore"
    assert json.loads(out[1])["added"] == len({r.key() for r in rules}) + 5
    assert "--dport 8090" in ns.run("iptables-legacy-save", "-t", "nat").stdout
    assert "pyinspect" not in ns.run("iptables-nft-save").stdout
    pyinspect = os.path.join(os.path.dirname(sys.executable), "pyinspect")
    info = ns.run(pyinspect, "info", env=broken).stdout
    assert "pyinspect writes legacy with iptables-legacy-restore" in info
    note = [line for line in info.splitlines() if "note: python-iptables unavailable" in line]
    assert len(note) == 1 and "iptables-legacy-restore" in note[0], info
    ok = ns.run(pyinspect, "info", env=dict(broken, PYTHON_IPTABLES_XTABLES_VERSION="")).stdout
    assert "pyinspect writes legacy with python-iptables" in ok and "note:" not in ok
    # both writers speak the same rules: what the fallback wrote, python-iptables removes
    again = _sync(ns, rules).stdout.splitlines()
    assert again[0] == "python-iptables" and json.loads(again[1]) == {"added": 0, "removed": 0}
    gone = json.loads(_sync(ns, []).stdout.splitlines()[1])
    assert gone["removed"] == len({r.key() for r in rules}) + 5
    assert not any("pyinspect" in line or "PYINSPECT" in line for line in _tables(ns))


def test_legacy_writes_both_families_in_one_process(make_netns):
    """IPv4 and IPv6 rules of one sync go through python-iptables in one process (libxtables
    registers an extension library for one family only: each family's write is its own)."""
    ns = make_netns("pi-ipt-6")
    port = [{"host_ip": "0.0.0.0", "host_port": 8091, "container_port": 80, "proto": "tcp"}]
    rules = (
        portmap.base_rules("pibr0", "10.80.0.0/24")
        + portmap.container_rules("pibr0", "f" * 64, "10.80.0.2", port)
        + portmap.base_rules6("pibr0", "fd00:80::/64")
        + portmap.container_rules6("pibr0", "f" * 64, "fd00:80::2", port)
    )
    out = _sync(ns, rules).stdout.splitlines()
    assert out[0] == "python-iptables"
    assert json.loads(out[1])["added"] == len({(r.family, r.key()) for r in rules}) + 9
    nat6 = ns.run("ip6tables-legacy-save", "-t", "nat").stdout
    assert "DNAT --to-destination [fd00:80::2]:80" in nat6 and "--dport 8091" in nat6
    assert "DNAT --to-destination 10.80.0.2:80" in ns.run("iptables-legacy-save").stdout
    assert json.loads(_sync(ns, rules).stdout.splitlines()[1]) == {"added": 0, "removed": 0}
    for tool in ("iptables-nft-save", "ip6tables-nft-save"):
        assert "pyinspect" not in ns.run(tool).stdout
    _sync(ns, [])
    for tool in ("iptables-legacy-save", "ip6tables-legacy-save"):
        assert "pyinspect" not in ns.run(tool).stdout
