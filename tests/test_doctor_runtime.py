"""`pyinspect doctor` on containers made by the real CLI (`pyinspect run -p`) in a host netns.

Complements tests/test_doctor.py (a hand-built Docker-like layout): here the bridge,
veths, rules (the host's iptables backend, tagged PYINSPECT chains) and cgroups are pyinspect's own.
"""

import json
import re
import uuid

import pytest

from pyinspect.runtime import iptables

from conftest import Cli, Netns, have

IPT = iptables.tool(iptables.backend())  # the backend pyinspect writes (the host's iptables)

pytestmark = pytest.mark.root

SERVE = "mkdir -p /www && echo pd-ok > /www/index.html && exec httpd -f -p 80 -h /www"


class Env:
    def __init__(self, root):
        tag = uuid.uuid4().hex[:5]
        self.h, self.k = Netns(f"pd-rh-{tag}"), Netns(f"pd-rk-{tag}")
        self.cli = Cli(root, netns=self.h.name)
        self.names = []
        self.h.sh(
            f"ip link add pdup0 type veth peer name eth0 netns {self.k.name} && "
            "ip addr add 10.202.0.1/24 dev pdup0 && ip link set pdup0 up"
        )
        self.k.sh("ip addr add 10.202.0.2/24 dev eth0 && ip link set eth0 up")
        www = root / "upstream-www"
        www.mkdir()
        (www / "index.html").write_text("pd-ok\n")
        self.k.sh(f"busybox httpd -p 8080 -h {www}")  # the "upstream" for container egress
        self.web = self.run(
            "pdw", "-p", "8088:80", "-p", "127.0.0.1:8089:80", "busybox", "sh", "-c", SERVE
        )
        self.peer = self.run("pdp", "busybox", "sleep", "600")

    def run(self, prefix, *args):
        name = f"{prefix}-{uuid.uuid4().hex[:5]}"
        self.names.append(name)
        self.cli("run", "-d", "--name", name, *args)
        return name

    def inspect(self, name):
        return json.loads(self.cli("inspect", name).stdout)[0]

    def remove(self):
        for n in self.names:
            self.cli("rm", "-f", n, check=False)
        self.cli("ps", check=False)
        self.k.remove()
        self.h.remove()

    def from_web(self, url):
        """busybox wget inside the web container (its egress / hairpin)."""
        r = self.cli(
            "exec", self.web, "timeout", "2", "wget", "-q", "-O-", url, check=False, timeout=30
        )  # (busybox wget -T segfaults)
        return r.returncode == 0 and "pd-ok" in r.stdout

    def get(self, url):
        r = self.k.run("timeout", "2", "busybox", "wget", "-q", "-O-", url, check=False, timeout=20)
        return r.returncode == 0 and "pd-ok" in r.stdout

    def published_ok(self):
        return self.get("http://10.202.0.1:8088/")

    def localhost_exploit(self):
        """The client sends to 127.0.0.1:8089 through the host, as a hostile neighbour would."""
        self.k.sh(
            "sysctl -qw net.ipv4.conf.all.route_localnet=1 "
            "net.ipv4.conf.eth0.route_localnet=1; ip rule add pref 100 table local;"
            "ip rule del pref 0; ip route add 127.0.0.1/32 via 10.202.0.1 dev eth0 "
            "src 10.202.0.2 table 100; ip rule add pref 10 table 100"
        )
        try:
            return self.get("http://127.0.0.1:8089/")
        finally:
            self.k.sh(
                "ip rule add pref 0 table local; ip rule del pref 100; "
                "ip rule del pref 10; ip route flush table 100",
                check=False,
            )

    def doctor(self, *args):
        proc = self.cli("doctor", "--json", *args, check=False)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not have("busybox"):
        pytest.skip("needs busybox")
    e = Env(tmp_path_factory.mktemp("pd-rt-root"))
    yield e
    e.remove()


def problems(findings):
    return [f for f in findings if f["severity"] in ("error", "warning")]


def test_pyinspect_setup_localhost_publish_is_guarded(env):
    """A fresh `run -p 127.0.0.1:8089:80` is clean: pyinspect's raw guard keeps neighbours
    off the 127.0.0.1 port. Without the guard doctor names the exposure, proven by really
    reaching it, and its safe fix closes it again."""
    assert env.published_ok()
    rc, report = env.doctor()
    assert rc == 0 and not problems(report["findings"]), report
    assert not env.localhost_exploit()
    guard = _tagged_rule(env, "raw", "-d 127.0.0.1/32", "! -i lo", "--dport 8089", "DROP")
    env.h.run("sh", "-c", f"{IPT} -t raw {guard.replace('-A ', '-D ', 1)}")
    rc, report = env.doctor()
    assert rc == 1
    assert [f["check"] for f in problems(report["findings"])] == ["localhost_publish"]
    f = report["findings"][0]
    assert f["container"] == env.web and "8089 published on 127.0.0.1" in f["summary"]
    assert any("--to-destination" in line for line in f["evidence"])
    assert env.localhost_exploit(), "doctor reported an exposure that does not exist"
    rc, fixed = env.doctor("--fix")  # safe: no --yes needed
    assert rc == 0 and not problems(fixed["after_fix"])
    assert not env.localhost_exploit()
    assert env.published_ok()


def _tagged_rule(env, table, *needles):
    for line in env.h.run(IPT, "-t", table, "-S").stdout.splitlines():
        if all(n in line for n in needles):
            return line
    raise AssertionError(f"no rule with {needles}")


def baseline(env):
    """Clean before a test (a test before may have left a finding its fix settles)."""
    rc, report = env.doctor("--fix")
    assert rc == 0, report
    assert env.published_ok()


def test_pyinspect_declared_port_without_dnat(env):
    baseline(env)
    rule = _tagged_rule(env, "nat", "! -i pyinspect0", "--dport 8088", "DNAT")
    env.h.run("sh", "-c", f"{IPT} -t nat {rule.replace('-A ', '-D ', 1)}")
    assert not env.published_ok()
    rc, report = env.doctor()
    hits = [f for f in report["findings"] if f["check"] == "dnat_missing"]
    assert rc == 1 and hits and hits[0]["container"] == env.web
    assert "declared in pyinspect's state" in "\n".join(hits[0]["evidence"])
    rc, fixed = env.doctor("--fix")  # a declared port is restored without asking
    assert rc == 0, fixed
    assert env.published_ok()


def test_pyinspect_veth_down(env):
    baseline(env)
    veth = env.inspect(env.web)["NetworkSettings"].get("HostVeth") or re.search(
        r"\d+: (veth\w+)@\S+ .* link-netns " + re.escape(env.web),
        env.h.run("ip", "-o", "link").stdout,
    ).group(1)
    env.h.sh(f"ip link set {veth} down")
    assert not env.published_ok()
    rc, report = env.doctor()
    hits = [f for f in report["findings"] if f["check"] == "veth_down"]
    assert rc == 1 and hits and veth in hits[0]["summary"]
    rc, fixed = env.doctor("--fix")
    assert rc == 0 and env.published_ok()


def test_pyinspect_container_oom(env):
    baseline(env)
    name = env.run("pdo", "-m", "30m", "busybox", "sleep", "600")
    try:
        r = env.cli(
            "exec", name, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1", check=False
        )
        assert r.returncode != 0, r
        rc, report = env.doctor()
        hits = [f for f in report["findings"] if f["check"] == "oom_killed"]
        assert rc == 1 and hits and hits[0]["container"] == name
        text = "\n".join(hits[0]["evidence"])
        assert "oom_kill 1" in text and str(30 << 20) in text
        rc, fixed = env.doctor("--fix", "--yes")
        assert rc == 0, fixed
        r = env.cli(
            "exec", name, "dd", "if=/dev/zero", "of=/dev/null", "bs=40M", "count=1", check=False
        )
        assert r.returncode == 0, r  # the doubled limit (60M) holds 40M
        assert env.doctor()[0] == 0
    finally:
        env.cli("rm", "-f", name, check=False)


def _cycle(env, check, traffic, *fix_args):
    assert not traffic(), "the break did not break traffic"
    rc, report = env.doctor()
    hits = [f for f in report["findings"] if f["check"] == check]
    assert rc == 1 and hits, report["findings"]
    rc, fixed = env.doctor("--fix", *fix_args)
    assert rc == 0, fixed
    assert any(traffic() for _ in range(3))
    return hits


def test_pyinspect_ip_forward_off(env):
    baseline(env)
    env.h.sh("sysctl -qw net.ipv4.ip_forward=0")
    hits = _cycle(env, "ip_forward", env.published_ok)
    assert "net.ipv4.ip_forward = 0" in hits[0]["evidence"][0]


def test_pyinspect_masquerade_missing(env):
    baseline(env)
    assert env.from_web("http://10.202.0.2:8080/")
    rule = _tagged_rule(env, "nat", "-s 172.29.0.0/16", "! -o pyinspect0", "MASQUERADE")
    env.h.run("sh", "-c", f"{IPT} -t nat {rule.replace('-A ', '-D ', 1)}")
    hits = _cycle(env, "masquerade_missing", lambda: env.from_web("http://10.202.0.2:8080/"))
    assert hits[0]["fix"] == (
        f"{IPT} -t nat -A POSTROUTING -s 172.29.0.0/16 ! -o pyinspect0 -j MASQUERADE"
    )


def test_pyinspect_hairpin_off(env):
    baseline(env)
    veth = env.inspect(env.web)["NetworkSettings"].get("HostVeth") or re.search(
        r"\d+: (veth\w+)@\S+ .* link-netns " + re.escape(env.web),
        env.h.run("ip", "-o", "link").stdout,
    ).group(1)
    assert env.from_web("http://10.202.0.1:8088/")
    env.h.sh(f"bridge link set dev {veth} hairpin off")
    hits = _cycle(env, "hairpin", lambda: env.from_web("http://10.202.0.1:8088/"))
    assert hits[0]["container"] == env.web and "hairpin off" in "\n".join(hits[0]["evidence"])


def test_pyinspect_container_listening_on_localhost_only(env):
    baseline(env)
    name = env.run(
        "pdl",
        "-p",
        "8091:80",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo pd-ok > /www/index.html && exec httpd -f -p 127.0.0.1:80 -h /www",
    )
    try:
        assert not env.get("http://10.202.0.1:8091/")
        rc, report = env.doctor("--container", name)
        hits = [f for f in report["findings"] if f["check"] == "not_listening"]
        assert rc == 1 and hits and hits[0]["container"] == name
        assert "127.0.0.1:80" in "\n".join(hits[0]["evidence"])
        assert all(f["container"] in ("", name) for f in report["findings"])
    finally:
        env.cli("rm", "-f", name, check=False)


def test_pyinspect_paused_container(env):
    """A paused container takes the handshake and then hangs: doctor names it from its
    cgroup2 freezer, and its fix (it asks) thaws it as `pyinspect unpause` would."""
    baseline(env)
    env.cli("pause", env.web)
    try:
        hits = _cycle(env, "paused", env.published_ok, "--yes")
    finally:
        env.cli("unpause", env.web, check=False)
    assert hits[0]["container"] == env.web and hits[0]["fix"] == f"pyinspect unpause {env.web}"
    assert "cgroup.events: frozen" in hits[0]["evidence"][0]
    assert "(Paused)" not in env.cli("ps").stdout


def test_pyinspect_container_with_a_loopback_resolver(env):
    """A container whose resolv.conf names systemd-resolved's stub, 127.0.0.53 (a host's
    file copied in as it is): in its own netns nothing answers there, so lookups fail;
    doctor says so from the file and the netns's sockets. A second, reachable nameserver
    makes it a warning; the file pyinspect wrote is clean."""
    baseline(env)
    name = env.run("pdn", "busybox", "sleep", "600")
    try:
        assert not [f for f in env.doctor()[1]["findings"] if f["check"] == "container_dns"]
        env.cli("exec", name, "sh", "-c", "echo nameserver 127.0.0.53 > /etc/resolv.conf")
        look = env.cli("exec", name, "nslookup", "pd-name.test", check=False)
        assert look.returncode != 0, look  # the problem is real: nothing answers
        rc, report = env.doctor()
        hits = [f for f in report["findings"] if f["check"] == "container_dns"]
        assert rc == 1 and [(h["container"], h["severity"]) for h in hits] == [(name, "error")]
        assert "127.0.0.53" in hits[0]["summary"] and "every lookup fails" in hits[0]["summary"]
        assert "nameserver 127.0.0.53" in hits[0]["evidence"][0]
        env.cli(
            "exec", name, "sh", "-c",
            "printf 'nameserver 127.0.0.53\\nnameserver 10.202.0.2\\n' > /etc/resolv.conf",
        )  # fmt: skip
        hits = [f for f in env.doctor()[1]["findings"] if f["check"] == "container_dns"]
        assert [h["severity"] for h in hits] == ["warning"], hits
    finally:
        env.cli("rm", "-f", name, check=False)
