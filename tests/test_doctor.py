"""`pyinspect doctor` against a real, namespace-scoped Docker-like setup.

One module-wide topology (built by hand, mirroring Docker's / pyinspect's layout):

    client netns K (10.202.0.2, httpd :8080 = "upstream")
          | eth0 -- pdup0 10.202.0.1
    host netns H: bridge pdbr0 10.201.0.1/24, ip_forward=1, legacy iptables:
          nat PREROUTING -> PYINSPECT: tcp 8088 -> 10.201.0.2:80, 127.0.0.1:8089 -> same
          POSTROUTING MASQUERADE 10.201.0.0/24 ! -o pdbr0, hairpin MASQUERADE
          raw PREROUTING drop 127.0.0.0/8 ! -i lo
          filter FORWARD policy DROP -> PYINSPECT-FORWARD accepts
          | pdv2 (hairpin on)         | pdv3
    container C 10.201.0.2 httpd :80    container D 10.201.0.3 httpd :80

Each test breaks exactly one thing, proves traffic really breaks, asserts doctor
names it with evidence, runs `doctor --fix --yes`, and asserts doctor is clean
and traffic flows again. `heal()` restores the healthy state after every test.
"""

import json
import os
import subprocess
import time
import uuid

import pytest

from conftest import Cli, Netns, have

pytestmark = pytest.mark.root

LEGACY_RULES = """*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -d 127.0.0.0/8 ! -i lo -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:PYINSPECT - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j PYINSPECT
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PYINSPECT
-A POSTROUTING -s 10.201.0.0/24 ! -o pdbr0 -j MASQUERADE
-A POSTROUTING -s 10.201.0.2/32 -d 10.201.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A PYINSPECT -p tcp -m tcp --dport 8088 -j DNAT --to-destination 10.201.0.2:80
-A PYINSPECT -d 127.0.0.1/32 -p tcp -m tcp --dport 8089 -j DNAT --to-destination 10.201.0.2:80
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:PYINSPECT-FORWARD - [0:0]
-A FORWARD -j PYINSPECT-FORWARD
-A PYINSPECT-FORWARD -o pdbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A PYINSPECT-FORWARD -d 10.201.0.2/32 ! -i pdbr0 -o pdbr0 -p tcp -m tcp --dport 80 -j ACCEPT
-A PYINSPECT-FORWARD -i pdbr0 ! -o pdbr0 -j ACCEPT
-A PYINSPECT-FORWARD -i pdbr0 -o pdbr0 -j ACCEPT
COMMIT
"""

HOST_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
    "net.ipv4.conf.all.route_localnet": "0",
    "net.bridge.bridge-nf-call-iptables": "1",
}


class Topology:
    def __init__(self, tmp):
        tag = uuid.uuid4().hex[:5]
        self.www = tmp / "www"
        self.www.mkdir()
        (self.www / "index.html").write_text("pd-ok\n")
        self.h, self.c, self.d, self.k = (Netns(f"pd-{r}-{tag}") for r in "hcdk")
        self.cgroup = None
        self.procs = []
        self.build()

    def build(self):
        h = self.h
        for k, v in HOST_SYSCTLS.items():
            h.sh(f"sysctl -qw {k}={v}")
        h.sh(
            "ip link add pdbr0 type bridge && ip addr add 10.201.0.1/24 dev pdbr0 "
            "&& ip link set pdbr0 up"
        )
        for i, ns in ((2, self.c), (3, self.d)):
            h.sh(f"ip link add pdv{i} type veth peer name eth0 netns {ns.name}")
            h.sh(f"ip link set pdv{i} master pdbr0 && ip link set pdv{i} up")
            ns.sh(
                f"ip addr add 10.201.0.{i}/24 dev eth0 && ip link set eth0 up "
                "&& ip route add default via 10.201.0.1"
            )
        h.sh("bridge link set dev pdv2 hairpin on")
        h.sh(f"ip link add pdup0 type veth peer name eth0 netns {self.k.name}")
        h.sh("ip addr add 10.202.0.1/24 dev pdup0 && ip link set pdup0 up")
        self.k.sh("ip addr add 10.202.0.2/24 dev eth0 && ip link set eth0 up")
        self.httpd(self.c, 80)
        self.httpd(self.d, 80)
        self.httpd(self.k, 8080)
        h.run("iptables-legacy-restore", input=LEGACY_RULES)

    def httpd(self, ns, port, bind=""):
        ns.sh(f"busybox httpd -p {bind}{port} -h {self.www}")

    def kill_httpd(self, ns):
        for pid in ns.run("ip", "netns", "pids", ns.name).stdout.split():
            if _comm(pid) == "busybox":
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
        time.sleep(0.1)

    def heal(self):
        """Put every piece back to the healthy state (idempotent)."""
        h = self.h
        for k, v in HOST_SYSCTLS.items():
            h.sh(f"sysctl -qw {k}={v}")
        h.sh(
            "for i in /proc/sys/net/ipv4/conf/*/rp_filter /proc/sys/net/ipv4/conf/*/route_localnet;"
            " do echo 0 > $i; done"
        )
        h.run("iptables-legacy-restore", input=LEGACY_RULES)
        h.sh("nft flush ruleset", check=False)
        h.sh("ip link del pdup1 2>/dev/null; true")
        for i, ns in ((2, self.c), (3, self.d)):
            h.sh(f"ip link set pdv{i} master pdbr0 mtu 1500 up")
            ns.sh(
                f"ip addr flush dev eth0 && ip addr add 10.201.0.{i}/24 dev eth0 && "
                "ip link set eth0 mtu 1500 up && ip route replace default via 10.201.0.1"
            )
        h.sh("ip neigh flush dev pdbr0")  # no entry left pointing at a moved address
        h.sh("bridge link set dev pdv2 hairpin on")
        h.sh("conntrack -F 2>/dev/null; true")
        for ns in (self.c, self.d):
            self.kill_httpd(ns)
            self.httpd(ns, 80)

    def remove(self):
        for p in self.procs:
            p.kill()
        if self.cgroup:
            self.uncgroup()
        for ns in (self.c, self.d, self.k, self.h):
            ns.remove()

    def uncgroup(self):
        root = "/sys/fs/cgroup/memory"
        try:
            for pid in open(f"{self.cgroup}/cgroup.procs").read().split():
                try:
                    with open(f"{root}/cgroup.procs", "w") as f:
                        f.write(pid)
                except OSError:
                    pass
            os.rmdir(self.cgroup)
        except OSError:
            pass
        self.cgroup = None

    # traffic (only between our own namespaces)
    def get(self, ns, url, timeout=1):
        # busybox-static is installed by scripts/install.sh (its wget -T segfaults: timeout)
        r = ns.run(
            "timeout",
            str(timeout),
            "busybox",
            "wget",
            "-q",
            "-O-",
            url,
            check=False,
            timeout=timeout + 10,
        )
        return r.returncode == 0 and "pd-ok" in r.stdout

    def published_ok(self):
        return self.get(self.k, "http://10.202.0.1:8088/")


@pytest.fixture(scope="module")
def topo(tmp_path_factory):
    if not (have("iptables-legacy-restore") and have("busybox")):
        pytest.skip("needs iptables-legacy and busybox")
    t = Topology(tmp_path_factory.mktemp("pd-doctor"))
    t.root = tmp_path_factory.mktemp("pd-root")
    t.cli = Cli(t.root, netns=t.h.name)
    yield t
    t.remove()


@pytest.fixture
def setup(topo):
    """The healthy topology; healed again after the test whatever happened."""
    topo.heal()
    yield topo
    topo.heal()


def doctor(t, *args, expect=None):
    proc = t.cli("doctor", "--json", *args, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    if expect is not None:
        assert proc.returncode == expect, (proc.returncode, proc.stdout[-3000:])
    return proc.returncode, report


def problems(findings):
    return [f for f in findings if f["severity"] in ("error", "warning")]


def named(report, check, key="findings"):
    return [f for f in report[key] if f["check"] == check]


def eventually(fn, tries=3):
    """True if `fn()` succeeds within a few attempts (a loaded CI machine is slow, not broken)."""
    return any(fn() for _ in range(tries))


def break_and_fix(t, check, evidence, traffic, fix_args=("--fix", "--yes"), container=None):
    """Assert doctor names `check` with `evidence`, fix it, and see traffic flow again."""
    assert not traffic(), "the break did not break traffic"
    rc, report = doctor(t, expect=1)
    hits = named(report, check)
    assert hits, f"doctor did not report {check}: {[f['check'] for f in report['findings']]}"
    if container:
        assert any(f["container"] == container for f in hits)
    text = "\n".join("\n".join(f["evidence"]) + "\n" + f["summary"] for f in hits)
    for needle in evidence:
        assert needle in text, f"{needle!r} not in evidence:\n{text}"
    assert all(f["runbook"].startswith("docs/runbooks/") for f in hits)
    for f in hits:
        assert os.path.exists(os.path.join(os.path.dirname(__file__), "..", f["runbook"]))
    rc, fixed = doctor(t, *fix_args)
    assert not problems(fixed["after_fix"]), fixed["after_fix"]
    assert rc == 0
    assert any(x["check"] == check and x["status"] == "applied" for x in fixed["fixes"])
    # `after_fix` is a full second run of every check on the repaired host
    assert eventually(traffic), "doctor is clean but traffic still does not flow"
    return hits


# -- the healthy setup -------------------------------------------------------------
def test_healthy_setup_has_no_findings(setup):
    t = setup
    assert eventually(t.published_ok)
    assert eventually(lambda: t.get(t.c, "http://10.202.0.2:8080/"))  # egress through MASQUERADE
    assert eventually(lambda: t.get(t.d, "http://10.201.0.2/"))  # container to container
    assert eventually(lambda: t.get(t.c, "http://10.202.0.1:8088/"))  # hairpin
    rc, report = doctor(t, expect=0)
    assert report["findings"] == [], report["findings"]
    proc = t.cli("doctor", check=False)
    assert proc.returncode == 0 and "No problems found." in proc.stdout


def test_two_containers_with_one_address(setup, tmp_path):
    """D takes C's address: both answer ARP on pdbr0, and the published port's packets go
    to whichever the host's neighbour entry names, here D (it spoke last); with D's
    server stopped the fetch fails while C is well. doctor names both and the entry."""
    t = setup
    t.d.sh(
        "ip addr flush dev eth0 && ip addr add 10.201.0.2/24 dev eth0 && "
        "ip route replace default via 10.201.0.1"
    )
    t.h.sh("ip neigh flush dev pdbr0")
    t.d.sh("busybox ping -c 1 -W 1 10.201.0.1")  # the host learns D's mac for .2
    t.kill_httpd(t.d)
    assert not t.published_ok(), "the duplicate did not take the traffic"
    assert eventually(lambda: t.get(t.c, "http://10.201.0.2/"))  # C itself is well
    # a root of its own: doctor remembers which container a published port went to,
    # and here it goes to D only while D holds C's address
    proc = Cli(tmp_path, netns=t.h.name)("doctor", "--json", check=False)
    rc, report = proc.returncode, json.loads(proc.stdout)
    assert rc == 1, proc.stderr
    (hit,) = named(report, "duplicate_ip")
    assert hit["severity"] == "error" and "10.201.0.2 on pdbr0" in hit["summary"], hit
    text = "\n".join(hit["evidence"])
    d_mac = t.d.run("cat", "/sys/class/net/eth0/address").stdout.strip()
    assert "pdv2" in text and "pdv3" in text and d_mac in text, text
    assert f"neighbour entry for 10.201.0.2 on pdbr0: {d_mac}" in text, text
    assert hit["runbook"] == "docs/runbooks/duplicate-address.md"


def test_the_containers_own_firewall_drops_the_published_port(setup):
    """C's own iptables (in its netns) drops port 80: the host's DNAT and FORWARD pass the
    packet, C's INPUT ends it. doctor walks C's rules for the published port and names
    the rule; C's firewall is its own configuration, so the fix is words."""
    t = setup
    rule = "INPUT -p tcp -m tcp --dport 80 -j DROP"
    t.c.sh(f"iptables-legacy -A {rule}")
    try:
        assert not t.published_ok(), "the container's firewall did not stop the traffic"
        rc, report = doctor(t, expect=1)
        hits = named(report, "container_firewall")
        # both ports published to C:80 (8088, and 8089 on 127.0.0.1)
        assert sorted((h["container"], h["port"]) for h in hits) == [
            (t.c.name, 8088),
            (t.c.name, 8089),
        ], hits
        text = "\n".join(hits[0]["evidence"])
        assert f"iptables-legacy -A {rule}" in text and "203.0.113.7 -> 10.201.0.2:80" in text
        assert hits[0]["fix"].endswith(
            f"ip netns exec {t.c.name} iptables-legacy -I INPUT -p tcp --dport 80 -j ACCEPT"
        ), hits[0]["fix"]
    finally:
        t.c.sh(f"iptables-legacy -D {rule}", check=False)
    assert eventually(t.published_ok)
    assert not named(doctor(t)[1], "container_firewall")


def test_the_containers_nft_made_firewall_is_read_natively(setup):
    """C's firewall is a base chain made with nft in table `ip filter`, which
    iptables-nft-save leaves out (`contains incompatible base-chains`): doctor reads it
    with nft and names the chain and the rule; the fix is an `nft insert` in that chain."""
    t = setup
    had_table = t.c.run("nft", "list", "table", "ip", "filter", check=False).returncode == 0
    t.c.sh("nft add table ip filter")
    t.c.sh("nft 'add chain ip filter guard { type filter hook input priority 0; }'")
    t.c.sh("nft add rule ip filter guard tcp dport 80 drop")
    try:
        saved = t.c.run("iptables-nft-save").stdout
        assert "incompatible base-chains" in saved and "dport 80" not in saved, saved
        assert not t.published_ok(), "the container's firewall did not stop the traffic"
        _rc, report = doctor(t, expect=1)
        hits = named(report, "container_firewall")
        assert sorted(h["port"] for h in hits) == [8088, 8089], hits
        assert "nftables" in hits[0]["summary"], hits[0]
        text = "\n".join(hits[0]["evidence"])
        assert "tcp dport 80 drop" in text, text
        assert hits[0]["fix"].endswith(
            f"ip netns exec {t.c.name} nft insert rule ip filter guard tcp dport 80 accept"
        ), hits[0]["fix"]
    finally:
        t.c.sh("nft delete chain ip filter guard", check=False)
        if not had_table:
            t.c.sh("nft delete table ip filter", check=False)
    assert eventually(t.published_ok)
    assert not named(doctor(t)[1], "container_firewall")


def test_ip_forward_off(setup):
    t = setup
    t.h.sh("sysctl -qw net.ipv4.ip_forward=0")
    # a safe fix: --fix applies it without --yes
    hits = break_and_fix(
        t, "ip_forward", ["net.ipv4.ip_forward = 0"], t.published_ok, fix_args=("--fix",)
    )
    assert hits[0]["fix"] == "sysctl -w net.ipv4.ip_forward=1"


def test_forward_policy_drop_without_accept(setup):
    t = setup
    t.h.sh("iptables-legacy -F PYINSPECT-FORWARD")
    break_and_fix(
        t,
        "forward_drop",
        ["policy FORWARD DROP", "10.201.0.2:80"],
        t.published_ok,
        container=t.c.name,
    )


def test_dnat_missing(setup):
    t = setup
    doctor(t, expect=0)  # doctor remembers the working mapping
    t.h.sh(
        "iptables-legacy -t nat -D PYINSPECT -p tcp -m tcp --dport 8088 "
        "-j DNAT --to-destination 10.201.0.2:80"
    )
    hits = break_and_fix(
        t, "dnat_missing", ["8088", "policy PREROUTING ACCEPT"], t.published_ok, container=t.c.name
    )
    assert "--to-destination 10.201.0.2:80" in hits[0]["fix"]


def test_dnat_stale_points_at_dead_ip(setup):
    t = setup
    doctor(t, expect=0)
    t.h.sh(
        "iptables-legacy -t nat -R PYINSPECT 1 -p tcp -m tcp --dport 8088 "
        "-j DNAT --to-destination 10.201.0.99:80"
    )
    hits = break_and_fix(
        t,
        "dnat_stale",
        ["--to-destination 10.201.0.99:80", "no container on pdbr0 has 10.201.0.99"],
        t.published_ok,
    )
    assert hits[0]["fix"].startswith("iptables-legacy -t nat -D PYINSPECT")


def test_masquerade_missing(setup):
    t = setup
    t.h.sh("iptables-legacy -t nat -D POSTROUTING -s 10.201.0.0/24 ! -o pdbr0 -j MASQUERADE")
    break_and_fix(
        t,
        "masquerade_missing",
        ["no MASQUERADE/SNAT", "policy POSTROUTING ACCEPT"],
        lambda: t.get(t.c, "http://10.202.0.2:8080/"),
    )


def _not_listening(t, bind, evidence):
    t.kill_httpd(t.c)
    t.httpd(t.c, 80 if bind else 81, bind=bind)
    assert not t.published_ok()
    rc, report = doctor(t, expect=1)
    hits = named(report, "not_listening")
    assert hits and hits[0]["container"] == t.c.name
    text = "\n".join(hits[0]["evidence"]) + hits[0]["summary"]
    for needle in evidence:
        assert needle in text, text
    # doctor cannot fix an application: --fix reports it as manual and changes nothing
    rc, fixed = doctor(t, "--fix", "--yes", expect=1)
    assert {x["status"] for x in fixed["fixes"] if x["check"] == "not_listening"} == {"manual"}
    # the runbook's fix, by hand: listen on all addresses of the published port
    t.kill_httpd(t.c)
    t.httpd(t.c, 80)
    doctor(t, expect=0)
    assert eventually(t.published_ok)


def test_container_listens_on_localhost_only(setup):
    _not_listening(setup, "127.0.0.1:", ["127.0.0.1:80", "/proc/"])


def test_container_not_listening_on_target_port(setup):
    _not_listening(setup, "", ["tcp :::81", "nothing in"])


def test_veth_down(setup):
    t = setup
    t.h.sh("ip link set pdv2 down")
    break_and_fix(t, "veth_down", ["pdv2", "admin DOWN"], t.published_ok, container=t.c.name)


def test_veth_not_on_bridge(setup):
    t = setup
    t.h.sh("ip link set pdv2 nomaster")
    break_and_fix(t, "veth_detached", ["master none", "pdbr0"], t.published_ok, container=t.c.name)


def test_no_default_route(setup):
    t = setup
    t.c.sh("ip route del default")
    break_and_fix(t, "container_route", ["expected: default via 10.201.0.1"], t.published_ok)


def test_wrong_gateway_needs_confirmation(setup):
    t = setup
    t.c.sh("ip route replace default via 10.201.0.254")
    # not a safe fix: without --yes and without a terminal, --fix leaves it alone
    rc, report = doctor(t, "--fix", expect=1)
    assert [x["status"] for x in report["fixes"] if x["check"] == "container_route"] == ["skipped"]
    break_and_fix(t, "container_route", ["default via 10.201.0.254", "10.201.0.1"], t.published_ok)


def test_bridge_nf_call_iptables_drops_container_to_container(setup):
    t = setup
    t.h.sh("iptables-legacy -D PYINSPECT-FORWARD -i pdbr0 -o pdbr0 -j ACCEPT")
    hits = break_and_fix(
        t,
        "bridge_nf_drop",
        ["net.bridge.bridge-nf-call-iptables = 1", "policy FORWARD DROP"],
        lambda: t.get(t.d, "http://10.201.0.2/"),
    )
    assert "-i pdbr0 -o pdbr0 -j ACCEPT" in hits[0]["fix"]


@pytest.mark.skipif(not have("iptables-nft"), reason="needs iptables-nft")
def test_rules_split_between_legacy_and_nft(setup):
    t = setup
    t.h.sh("iptables-nft -P FORWARD DROP")  # e.g. a firewall manager on the nft backend
    hits = break_and_fix(
        t,
        "split_backends",
        ["iptables-nft", "iptables-legacy", "policy FORWARD DROP"],
        t.published_ok,
        container=t.c.name,
    )
    assert hits[0]["fix"].startswith("iptables-nft -I FORWARD 1")
    assert eventually(lambda: t.get(t.d, "http://10.201.0.2/"))
    assert eventually(lambda: t.get(t.c, "http://10.202.0.2:8080/"))
    rc, report = doctor(t, expect=0)
    assert [f["check"] for f in report["findings"]] == ["split_backends"]  # info remains
    assert report["findings"][0]["severity"] == "info"


def _localhost_exploit(t):
    """The client sends to 127.0.0.1:8089 through the host, as a hostile neighbour would."""
    t.k.sh(
        "sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1;"
        "ip rule add pref 100 table local; ip rule del pref 0;"
        "ip route add 127.0.0.1/32 via 10.202.0.1 dev eth0 src 10.202.0.2 table 100;"
        "ip rule add pref 10 table 100"
    )
    try:
        return t.get(t.k, "http://127.0.0.1:8089/")
    finally:
        t.k.sh(
            "ip rule add pref 0 table local; ip rule del pref 100; ip rule del pref 10;"
            "ip route flush table 100",
            check=False,
        )


def test_localhost_publish_reachable_from_outside(setup):
    t = setup
    assert not _localhost_exploit(t)
    t.h.sh("iptables-legacy -t raw -F PREROUTING")
    assert _localhost_exploit(t)
    hits = break_and_fix(
        t,
        "localhost_publish",
        ["127.0.0.1:8089", "pdup0", "route_localnet"],
        lambda: not _localhost_exploit(t) and t.published_ok(),
    )
    assert "-t raw -I PREROUTING 1 -d 127.0.0.0/8 ! -i lo -j DROP" in hits[0]["fix"]


def test_hairpin_off(setup):
    t = setup
    t.h.sh("bridge link set dev pdv2 hairpin off")
    break_and_fix(
        t,
        "hairpin",
        ["hairpin off", "bridge-nf-call-iptables = 1"],
        lambda: t.get(t.c, "http://10.202.0.1:8088/"),
        container=t.c.name,
    )


def test_hairpin_masquerade_missing(setup):
    t = setup
    t.h.sh(
        "iptables-legacy -t nat -D POSTROUTING -s 10.201.0.2/32 -d 10.201.0.2/32 "
        "-p tcp -m tcp --dport 80 -j MASQUERADE"
    )
    break_and_fix(
        t, "hairpin", ["no hairpin MASQUERADE"], lambda: t.get(t.c, "http://10.202.0.1:8088/")
    )


def test_mtu_mismatch(setup):
    t = setup
    t.c.sh("ip link set eth0 mtu 1400")

    def big_ping():
        r = t.h.run(
            "busybox", "ping", "-c", "1", "-W", "1", "-s", "1450", "10.201.0.2", check=False
        )
        return r.returncode == 0 and t.published_ok()

    break_and_fix(
        t,
        "mtu_mismatch",
        ["eth0 in", "mtu 1400", "pdv2 (host): mtu 1500"],
        big_ping,
        container=t.c.name,
    )


@pytest.mark.skipif(not have("conntrack"), reason="needs conntrack-tools")
def test_conntrack_table_full(setup):
    t = setup
    cmax = int(open("/proc/sys/net/netfilter/nf_conntrack_max").read())
    if cmax > 400000:
        pytest.skip(f"nf_conntrack_max {cmax} is too large to fill quickly")
    # fill the HOST netns's table (the count is per netns; max is global and read-only there)
    # with ASSURED entries: unreplied ones would just be early-dropped for new connections
    entries = t.www.parent / "pd-ct.txt"
    with open(entries, "w") as f:
        for i in range(cmax + 100):
            f.write(
                f"-I -s 10.250.{i // 60000}.1 -d 10.251.0.1 -p tcp --sport {1024 + i % 60000} "
                "--dport 80 --state ESTABLISHED -u ASSURED,SEEN_REPLY -t 600\n"
            )
    t.h.run("conntrack", "-R", str(entries), check=False, timeout=120)
    count = int(t.h.sh("cat /proc/sys/net/netfilter/nf_conntrack_count").stdout)
    assert count >= cmax * 0.98, count
    hits = break_and_fix(
        t,
        "conntrack_full",
        ["nf_conntrack_count", f"nf_conntrack_max = {cmax}", "read-only in this network namespace"],
        t.published_ok,
    )
    assert hits[0]["severity"] == "error"


def test_rp_filter_drops_asymmetric_traffic(setup):
    t = setup
    # a second link: the client reaches 10.203.0.1 over it with its 10.202.0.2 source,
    # the host's route back to 10.202.0.2 is via pdup0: asymmetric, fine with rp_filter 0/2
    t.h.sh(
        f"ip link add pdup1 type veth peer name eth1 netns {t.k.name} && "
        "ip addr add 10.203.0.1/24 dev pdup1 && ip link set pdup1 up"
    )
    t.k.sh(
        "ip addr add 10.203.0.2/24 dev eth1 && ip link set eth1 up && "
        "ip route add 10.203.0.1/32 dev eth1 src 10.202.0.2"
    )

    def asym():
        return t.get(t.k, "http://10.203.0.1:8088/")

    assert eventually(asym)
    doctor(t, expect=0)
    t.h.sh("sysctl -qw net.ipv4.conf.all.rp_filter=1")
    break_and_fix(
        t,
        "rp_filter",
        [
            "net.ipv4.conf.all.rp_filter = 1",
            "pdup1",
            "route back to it leaves via pdup0",
            "IPReversePathFilter",
        ],
        asym,
    )


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def test_oom_killed_container(setup):
    t = setup
    cg = f"/sys/fs/cgroup/memory/pd-{uuid.uuid4().hex[:6]}"
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        pytest.skip("needs the cgroup v1 memory controller")
    os.mkdir(cg)
    t.cgroup = cg
    try:
        open(f"{cg}/memory.limit_in_bytes", "w").write(str(30 << 20))
        httpd = [
            p
            for p in t.c.run("ip", "netns", "pids", t.c.name).stdout.split()
            if _comm(p) == "busybox"
        ]
        for pid in httpd:
            open(f"{cg}/cgroup.procs", "w").write(pid)
        alloc = f"echo $$ > {cg}/cgroup.procs; exec python3 -c \"x = b'x' * (45 << 20)\""

        # nsenter, not `ip netns exec`: the latter remounts /sys without the cgroup tree
        def run_alloc():
            return subprocess.run(
                ["nsenter", f"--net={t.c.path}", "sh", "-c", alloc],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        r = run_alloc()
        assert r.returncode in (-9, 137), r
        rc, report = doctor(t, expect=1)
        hits = named(report, "oom_killed")
        assert hits and hits[0]["container"] == t.c.name
        text = "\n".join(hits[0]["evidence"])
        assert "memory.oom_control: oom_kill 1" in text and str(30 << 20) in text
        rc, fixed = doctor(t, "--fix", "--yes", expect=0)
        assert not problems(fixed["after_fix"])
        assert int(open(f"{cg}/memory.limit_in_bytes").read()) == 60 << 20
        r = run_alloc()
        assert r.returncode == 0, r  # 45M now fits
        doctor(t, expect=0)
        assert eventually(t.published_ok)
    finally:
        t.uncgroup()


def test_filters_and_text_output(setup):
    t = setup
    t.h.sh("sysctl -qw net.ipv4.ip_forward=0")
    t.c.sh("ip route replace default via 10.201.0.254")
    rc, report = doctor(t, "--container", t.d.name, expect=1)
    assert {f["check"] for f in report["findings"]} == {"ip_forward"}  # host-wide stays
    rc, report = doctor(t, "--container", t.c.name, expect=1)
    assert {f["check"] for f in report["findings"]} == {"ip_forward", "container_route"}
    proc = t.cli("doctor", "--port", "9999", check=False)
    assert proc.returncode == 1 and "nothing publishes host port 9999" in proc.stdout
    proc = t.cli("doctor", check=False)
    assert proc.returncode == 1
    assert "[error] ip_forward:" in proc.stdout and "evidence:" in proc.stdout
    assert "fix: sysctl -w net.ipv4.ip_forward=1" in proc.stdout
    proc = t.cli("doctor", "--container", "nope", check=False)
    assert proc.returncode == 3 and proc.stderr.startswith("Error: doctor: no such container")


def test_trace_drops_become_evidence(setup):
    """A `pyinspect trace` session that saw the drop adds its drop and hop to the finding."""
    t = setup
    t.h.sh("iptables-legacy -F PYINSPECT-FORWARD")
    proc = subprocess.Popen(
        t.cli.argv("trace", "--container", t.c.name, "--json", "--duration", "2.5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = proc.stdout.readline()
        if not ready:
            pytest.skip(f"trace unavailable here: {proc.stderr.read()[-300:]}")
        assert json.loads(ready)["type"] == "ready"
        assert not t.published_ok()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rc, report = doctor(t, expect=1)
    hits = named(report, "forward_drop")
    text = "\n".join(hits[0]["evidence"])
    assert "trace session" in text and "dropped" in text, text
    assert "hop: filter:FORWARD:" in text and "policy DROP" in text, text


def test_stored_findings_link_to_runbooks_in_the_dashboard(setup):
    t = setup
    t.h.sh("sysctl -qw net.ipv4.ip_forward=0")
    doctor(t, expect=1)
    from pyinspect.store import Store

    with Store(t.root / "pyinspect.db") as st:
        rows = list(
            st.db.execute(
                "SELECT check_name, runbook, evidence FROM findings "
                "WHERE run_ns = (SELECT max(run_ns) FROM findings)"
            )
        )
    assert [r[0] for r in rows] == ["ip_forward"]
    assert rows[0][1] == "ip-forward-off" and "net.ipv4.ip_forward = 0" in rows[0][2]
    from pyinspect.web.app import create_app

    app = create_app(t.root)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app.config['PYINSPECT_TOKEN']}"
    page = client.get("/doctor").get_data(as_text=True)
    assert "ip_forward" in page and "/runbooks/ip-forward-off" in page
    rb = client.get("/runbooks/ip-forward-off")
    assert rb.status_code == 200 and "sysctl -w net.ipv4.ip_forward=1" in rb.get_data(as_text=True)


@pytest.mark.skipif(not have("nft"), reason="needs nft")
@pytest.mark.parametrize("table", ["inet pdfw", "ip filter"])
def test_native_nftables_forward_chain_drops(setup, table):
    """firewalld-style native nftables table: invisible to iptables-*-save, still drops.
    Also a base chain made with nft in iptables-nft's own `ip filter`, which
    iptables-nft-save leaves out (`contains incompatible base-chains`)."""
    t = setup
    t.h.sh(
        f"nft add table {table} && nft add chain {table} filter_FORWARD "
        "'{ type filter hook forward priority 0; policy drop; }' && "
        f"nft add rule {table} filter_FORWARD ct state established,related accept"
    )
    if table == "ip filter":
        assert "incompatible base-chains" in t.h.run("iptables-nft-save").stdout
    hits = break_and_fix(
        t,
        "nft_native_drop",
        [f"{table} filter_FORWARD", "policy drop", "none accepts pdbr0"],
        t.published_ok,
    )
    assert hits[0]["fix"].startswith(f"nft insert rule {table} filter_FORWARD")
    assert eventually(lambda: t.get(t.c, "http://10.202.0.2:8080/"))
    assert eventually(lambda: t.get(t.d, "http://10.201.0.2/"))


def _doctor_on_tty(t, answer):
    """`doctor --fix` on a pseudo-terminal, answering the confirmation prompt."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        t.cli.argv("doctor", "--fix"), stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    out, answered, deadline = b"", False, time.time() + 60
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if not answered and b"[y/N]" in out:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out.decode(errors="replace")


def test_fix_asks_on_a_terminal(setup):
    t = setup
    t.c.sh("ip route replace default via 10.201.0.254")
    rc, out = _doctor_on_tty(t, "n")
    assert "Apply fix for container_route" in out and "fix skipped: container_route" in out
    assert rc == 1 and not t.published_ok()
    rc, out = _doctor_on_tty(t, "y")
    assert "fix applied: container_route" in out and rc == 0, out
    assert eventually(t.published_ok)
