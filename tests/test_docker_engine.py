"""pyinspect against a real Docker engine (Debian's docker.io): dockerd runs inside a
network namespace of the test (helpers.dockerd), a busybox httpd container `web` is
published with `-p 8080:80` and resource limits, and a client namespace fetches through
the DNAT. Then the Containers, container and Topology pages, `map`, `stats`, `trace`
(through Docker's own iptables-nft rules) and `doctor` (and its fix from the page) are
checked against it. Everything Docker made goes with the engine and the namespaces."""

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import Cli, Netns, unique
from helpers import dockerd

pytestmark = pytest.mark.root

HOST_IP, CLIENT_IP, PORT = "10.241.0.1", "10.241.0.2", 8080
WEB = unique("pi-dkweb")  # the Docker container (unique: other engines may run a "web")


def _fetch(client, path="/"):
    return client.run(
        "curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
        f"http://{HOST_IP}:{PORT}{path}", check=False,
    ).stdout  # fmt: skip


class NsServer:
    """test_web's Server run in the host netns, reached from inside it (this thread enters
    the namespace for each request: dockerd's world is only there)."""

    def __init__(self, root, netns):
        from test_web import Server

        self.netns = f"/run/netns/{netns}"
        self.inner = Server(root, "--no-probes", netns=netns)
        self.url, self.token, self.login_url = (
            self.inner.url,
            self.inner.token,
            self.inner.login_url,
        )

    def get(self, path, headers=None):
        from pyinspect.probes.netns import in_netns

        with in_netns(self.netns):
            return self.inner.get(path, headers)

    def json(self, path):
        from pyinspect.probes.netns import in_netns

        with in_netns(self.netns):
            return self.inner.json(path)

    def stop(self):
        self.inner.stop()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """dockerd in a host netns, `web` published on 8080, a client netns, a bare named
    netns with a process in it, pyinspect serve in the host netns."""
    why = dockerd.available()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("dk") / "root"
    root.mkdir()
    host, client, bare = Netns(unique("pi-dkh")), Netns(unique("pi-dkc")), Netns(unique("pi-dkb"))
    made = {"host": host, "client": client, "bare": bare, "root": root}
    eng = server = sleeper = None
    try:
        up = unique("pdu")
        subprocess.run(
            ["ip", "-n", host.name, "link", "add", up, "type", "veth", "peer", "name", "eth0",
             "netns", client.name], check=True,
        )  # fmt: skip
        host.sh(f"ip addr add {HOST_IP}/24 dev {up} && ip link set {up} up")
        client.sh(f"ip addr add {CLIENT_IP}/24 dev eth0 && ip link set eth0 up")
        sleeper = bare.popen("sleep", "3600")
        eng = dockerd.DockerEngine(host.name).start()
        eng.docker(
            "run", "-d", "--name", WEB, "-p", f"{PORT}:80", "--memory", "64m",
            "--pids-limit", "50", "--cpus", "0.5", eng.image, "httpd", "-f", "-p", "80",
            "-h", "/var/www",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while _fetch(client) != "200" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _fetch(client) == "200", eng.log()[-2000:]
        server = NsServer(root, host.name)
        made.update(
            engine=eng, server=server, cli=Cli(root, netns=host.name), uplink=up,
            web=eng.inspect(WEB),
        )  # fmt: skip
        yield made
    finally:
        if server:
            server.stop()
        if eng:
            eng.stop()
        if sleeper:
            sleeper.kill()
            sleeper.wait()
        for ns in (client, bare, host):
            ns.remove()


def test_containers_api_has_dockers_fields(engine):
    rows = engine["server"].json("/api/containers")
    web = [r for r in rows if r["name"] == WEB]
    assert len(web) == 1, rows
    w = web[0]
    assert (w["source"], w["status"], w["is_container"]) == ("docker", "running", True)
    assert w["id"] == engine["web"]["Id"]
    assert w["image"] == dockerd.IMAGE
    assert w["ip"] == engine["web"]["NetworkSettings"]["IPAddress"]
    assert w["ports"] == f"0.0.0.0:{PORT}->80/tcp"
    assert re.fullmatch(r"veth\w+ <-> eth0", w["veth"]), w
    assert w["limits"] == "memory 64MiB, cpus 0.5, pids 50"
    assert w["cgroup"].startswith(f"/{engine['engine'].cgroup_parent}/"), w
    assert w["oom_killed"] == "no"
    # a named netns with a process in it is listed apart, as a namespace, not a container
    bare = [r for r in rows if r["name"] == engine["bare"].name]
    assert bare and bare[0]["is_container"] is False, rows
    assert bare[0]["status"].startswith("netns ("), bare
    # the veth pair is the one the kernel has (Docker's veth name is random)
    host_veths = engine["host"].run("ip", "-o", "link", "show", "master", "docker0").stdout
    assert w["veth"].split()[0] in host_veths


def test_container_page_and_stats_api(engine):
    s, cid = engine["server"], engine["web"]["Id"]
    detail = s.json(f"/api/containers/{cid[:12]}/detail")
    assert detail["name"] == WEB and detail["runtime"] == "docker"
    assert detail["sources"]["image"] == "Docker API"
    assert detail["sources"]["limits"].startswith("cgroup v")
    pids = {p["pid"] for p in detail["processes"]}
    assert engine["web"]["State"]["Pid"] in pids
    assert any(p["cmdline"].startswith("httpd") for p in detail["processes"]), detail["processes"]
    assert any(i["ifname"] == "eth0" and i["kind"] == "veth" for i in detail["interfaces"])
    first = s.json(f"/api/containers/{WEB}/stats")
    _fetch(engine["client"])
    time.sleep(0.3)
    second = s.json(f"/api/containers/{WEB}/stats")
    assert second["samples"] >= first["samples"] + 1
    cur = second["current"]
    assert cur["mem_limit"] == 64 << 20 and cur["pids_limit"] == 50 and cur["cpus_limit"] == 0.5
    assert cur["cpu_percent"] is not None and cur["net_rx"] > 0
    assert all(k in second["charts"] for k in ("cpu", "memory", "pids", "net_rx", "net_tx"))
    assert "<polyline" in second["charts"]["memory"]
    status, _, body = s.get(f"/containers/{cid}")
    assert status == 200
    page = body.decode()
    assert dockerd.IMAGE in page and f"0.0.0.0:{PORT}-&gt;80/tcp" in page


def test_map_shows_dockers_veth_pair(engine):
    out = engine["cli"]("map", "--json", "-c", WEB).stdout
    rows = json.loads(out)
    eth0 = [r for r in rows if r["ifname"] == "eth0"]
    assert eth0 and eth0[0]["container_name"] == WEB, rows
    peer = eth0[0]["peer_ifname"]
    assert peer.startswith("veth") and eth0[0]["peer_netns_name"] == engine["host"].name
    host_side = [r for r in rows if r["ifname"] == peer]
    assert host_side and host_side[0]["master"] == "docker0", rows
    assert host_side[0]["rx_packets"] > 0 and host_side[0]["carrier"] is True


def test_stats_cli(engine):
    cli = engine["cli"]
    out = cli("stats", "--no-stream", "--format", "{{.Name}}|{{.MemUsage}}|{{.PIDs}}", WEB).stdout
    name, mem, pids = out.strip().split("|")
    assert name == WEB and mem.endswith(" / 64MiB") and int(pids) >= 1, out
    table = cli("stats", "--no-stream").stdout.splitlines()
    assert table[0].split()[:3] == ["CONTAINER", "ID", "NAME"], table
    assert any(line.split()[1] == WEB for line in table[1:]), table
    assert not any(engine["bare"].name in line for line in table), table  # not a container
    row = json.loads(cli("stats", "--no-stream", "--format", "json", WEB).stdout)
    assert row["ID"] == engine["web"]["Id"][:12] and row["CPUPerc"].endswith("%")
    bad = cli("stats", "--no-stream", "no-such-thing", check=False)
    assert bad.returncode == 3 and bad.stdout == ""
    assert bad.stderr.strip() == "Error: No such container: no-such-thing"
    bad = cli("stats", "--no-stream", "--format", "{{.Name", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_stats_streams_until_sigterm(engine):
    proc = subprocess.Popen(
        engine["cli"].argv("stats", "--interval", "0.3", "--format", "{{.Name}} {{.CPUPerc}}", WEB),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2)
    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out.count(f"{WEB} ") >= 3, out


def test_trace_follows_dockers_iptables_nft_rules(engine):
    cli, client = engine["cli"], engine["client"]
    proc = subprocess.Popen(
        cli.argv("trace", "-c", WEB, "--duration", "7", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)
    for _ in range(2):
        assert _fetch(client) == "200"
    # and a ping out of the container: MASQUERADEd by Docker's rule, an ICMP flow
    ping = engine["engine"].docker(
        "exec", WEB, "ping", "-c", "2", "-W", "2", CLIENT_IP, check=False
    )
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    items = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    flows = [i for i in items if i.get("type") == "flow" and i["orig"][3:4] == [PORT]]
    assert flows, out[-3000:]
    f = flows[0]
    ctr_ip = engine["web"]["NetworkSettings"]["IPAddress"]
    assert f["orig"][0] == CLIENT_IP and f["orig"][2:] == [HOST_IP, PORT], f
    assert f["reply"][:2] == [ctr_ip, 80] and f["nat"] == "dnat", f
    text = json.dumps(items)
    assert "DOCKER" in text, text[-3000:]  # Docker's chains on the rule path
    # the dashboard shows the flow with its rule path through Docker's chains
    flows = engine["server"].json("/api/flows")
    mine = [x for x in flows if x["orig_dport"] == PORT]
    assert mine and mine[0]["packets"] > 0, flows
    assert any("DOCKER" in step for step in mine[0]["rule_path"]), mine[0]["rule_path"]
    assert "None" not in mine[0]["original"] and "None" not in mine[0]["translated"]
    assert all(x["packets"] > 0 for x in flows)  # no flow without a packet is listed
    assert ping.returncode == 0, ping.stdout + ping.stderr
    icmp = [x for x in flows if x["proto"] == "icmp"]
    assert icmp, flows
    assert icmp[0]["original"] == f"icmp {ctr_ip} -> {CLIENT_IP}", icmp[0]
    assert icmp[0]["translated"] == f"icmp {HOST_IP} -> {CLIENT_IP}", icmp[0]  # MASQUERADE
    status, _, body = engine["server"].get("/flows")
    assert status == 200 and b"None:None" not in body and b"icmp " in body


def test_doctor_finds_and_the_page_fixes_a_docker_veth_down(engine):
    cli, s = engine["cli"], engine["server"]
    clean = cli("doctor", "--container", WEB, "--json", check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    veth = s.json(f"/api/containers/{WEB}")["veth"].split()[0]
    engine["host"].run("ip", "link", "set", veth, "down")
    try:
        bad = cli("doctor", "--json", check=False)
        assert bad.returncode == 1
        found = [f for f in json.loads(bad.stdout)["findings"] if f["check"] == "veth_down"]
        assert found and found[0]["container"] == WEB and found[0]["safe"], bad.stdout
        # the page: the finding, its confirmation (doctor runs again), then the fix
        status, _, body = s.get("/doctor")
        assert status == 200 and b"veth_down" in body
        q = urllib.parse.urlencode({"check": "veth_down", "container": WEB})
        status, _, body = s.get(f"/doctor/fix?{q}")
        page = body.decode()
        assert status == 200 and f"ip link set dev {veth} up" in page, page
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        form = {"csrf": csrf, "check": "veth_down", "container": WEB, "port": ""}
        # without the confirmation box ticked nothing is applied
        status, body = _post(s, "/doctor/fix", form)
        assert status == 400 and b"not confirmed" in body
        assert "state DOWN" in engine["host"].run("ip", "link", "show", veth).stdout
        status, body = _post(s, "/doctor/fix", {**form, "confirm": "yes"})
        assert status == 200 and b"applied" in body, body
        assert "state DOWN" not in engine["host"].run("ip", "link", "show", veth).stdout
        assert _fetch(engine["client"]) == "200"
        assert cli("doctor", "--container", WEB, "--json", check=False).returncode == 0
    finally:
        engine["host"].run("ip", "link", "set", veth, "up", check=False)


def _post(server, path, form):
    req = urllib.request.Request(
        server.url + path.lstrip("/"),
        data=urllib.parse.urlencode(form).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {server.token}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    from pyinspect.probes.netns import in_netns

    with in_netns(server.netns):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def _svg_until(server, predicate, timeout=15):
    """/topology.svg until `predicate(svg)` (the server reads the host at most once a
    second and serves the last reading meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = server.get("/topology.svg")
        svg = body.decode()
        assert status == 200 and svg.startswith("<svg"), svg[:300]
        if predicate(svg) or time.monotonic() > deadline:
            return svg
        time.sleep(0.3)


def test_topology_shows_the_published_port_rates_and_links(engine):
    s, cid = engine["server"], engine["web"]["Id"]
    ctr_ip = engine["web"]["NetworkSettings"]["IPAddress"]

    def busy(svg):
        for _ in range(3):
            _fetch(engine["client"])
        return re.search(r"rx [1-9][\d.]*k?p/s", svg)

    svg = _svg_until(s, busy)
    assert re.search(r"rx [1-9][\d.]*k?p/s", svg), svg[:3000]  # traffic seen as a rate
    assert f"netns {engine['host'].name}" in svg
    assert "docker0 (bridge)" in svg and f"{WEB}/eth0" in svg
    assert f"0.0.0.0:{PORT} -&gt; {ctr_ip}:80/tcp" in svg, svg[:3000]
    assert f'href="/containers/{cid}"' in svg
    assert f"netns {engine['bare'].name}" in svg  # every namespace, also those with no bridge
    # state colours: a downed uplink is drawn as down
    up = re.escape(engine["uplink"])
    pattern = (
        r'<g class="uplink state-(\w+)">(?:<title>[^<]*</title>)?<rect[^>]*/>'
        rf"<text[^>]*>{up} \(uplink\)"
    )
    engine["host"].run("ip", "link", "set", engine["uplink"], "down")
    try:
        svg = _svg_until(s, lambda svg: "state-down" in (re.search(pattern, svg) or [""])[0])
        box = re.search(pattern, svg)
        assert box and box.group(1) == "down", svg[:3000]
    finally:
        engine["host"].run("ip", "link", "set", engine["uplink"], "up")


def test_pages_in_chromium(engine):
    from helpers import browser

    why = browser.available()
    if why:
        pytest.skip(why)
    from pyinspect.probes.netns import in_netns

    s = engine["server"]
    # chromedriver and Chromium are started from inside the host netns (where the
    # dashboard listens) and this thread stays there while it talks to them
    with in_netns(s.netns), browser.chromium() as b:
        b.login(s.login_url)
        b.open(s.url + "containers")
        b.wait_text("#containers", WEB)
        assert dockerd.IMAGE in b.text("#containers")
        b.screenshot("docker-containers")
        b.click("#containers a[href*='/containers/']")
        b.wait_text("#container-facts", dockerd.IMAGE)
        b.wait_count("#charts svg.chart", 5)
        b.wait_count("#charts svg.chart polyline", 1, timeout=30)  # two samples or more
        b.screenshot("docker-container")
        b.open(s.url + "topology")
        b.wait_count("#topology svg a", 1)
        b.screenshot("docker-topology")
        b.open(s.url + "doctor")
        b.screenshot("docker-doctor")
        b.open(s.url + "runbooks/veth-down-or-detached")
        b.wait_count("#runbook h1, #runbook h2", 1)
        b.screenshot("runbook")
        assert not b.console_errors()


def test_port_and_a_stopped_inspect_as_dockers(engine, make_netns, state_root):
    """The same `-p` flags to Docker and to pyinspect (in a host netns of its own, 100
    ports higher): `port`'s lines and its error are Docker's, and once stopped both
    containers' inspect have empty Ports and addresses."""
    eng, name = engine["engine"], unique("pi-dkport")
    flags = ("-p", "{a}-{b}:82-83", "-p", "{c}:80/udp", "-p", "{d}:84")

    def publish(base):
        ports = {"a": base + 2, "b": base + 3, "c": base + 8, "d": base + 900}
        return [f.format(**ports) for f in flags]

    eng.docker("run", "-d", "--name", name, *publish(9100), eng.image, "sleep", "600")
    ns = make_netns("pi-dkpp")
    cli = Cli(state_root, netns=ns.name)
    try:
        cli("run", "-d", "--name", name, *publish(9200), "busybox", "sleep", "600")
        for args in ((), ("83",), ("80/udp",)):
            theirs = eng.docker("port", name, *args).stdout
            ours = cli("port", name, *args).stdout
            ours = re.sub(r"(?<=:)\d+$", lambda m: str(int(m[0]) - 100), ours, flags=re.M)
            # (20.10 prints in Go's map order; later Dockers and pyinspect sort the lines)
            assert sorted(ours.splitlines()) == sorted(theirs.splitlines()) and theirs, ours
        theirs = eng.docker("port", name, "80", check=False)
        ours = cli("port", name, "80", check=False)
        assert ours.stderr == theirs.stderr and ours.returncode and ours.stdout == "", ours
        for stop in (eng.docker, cli):
            stop("stop", "-t", "1", name)
        dk = eng.inspect(name)["NetworkSettings"]
        pi = json.loads(cli("inspect", name).stdout)[0]["NetworkSettings"]
        for key in ("Ports", "IPAddress", "IPPrefixLen", "Gateway", "MacAddress"):
            assert pi[key] == dk[key], (key, pi[key], dk[key])
        # HostConfig keeps the bindings as asked
        theirs = eng.inspect(name)["HostConfig"]["PortBindings"]
        ours = json.loads(cli("inspect", name).stdout)[0]["HostConfig"]["PortBindings"]
        for binds in ours.values():
            for b in binds:
                b["HostPort"] = str(int(b["HostPort"]) - 100)
        assert ours == theirs, (ours, theirs)
        assert cli("port", name).stdout == eng.docker("port", name).stdout == ""
    finally:
        eng.docker("rm", "-f", name, check=False)
        cli("rm", "-f", name, check=False)


PS_FILTERS = [
    (), ("-a",), ("--filter", "exited=3"), ("-a", "--filter", "exited=3"),
    ("-a", "--filter", "exited=0"), ("--filter", "status=exited"),
    ("--filter", "status=running", "--filter", "status=exited"), ("-a", "--filter", "name=web"),
    ("-a", "--filter", "name=^/web1$"), ("-a", "--filter", "name=web", "--filter", "status=exited"),
    ("-a", "--filter", "publish=8081"), ("-a", "--filter", "publish=80"),
    ("-a", "--filter", "publish=8080-8090"), ("-a", "--filter", "publish=9090/udp"),
    ("-a", "--filter", "publish=9090/tcp"), ("-a", "--filter", "expose=80"),
    ("-a", "--filter", "expose=90/udp"), ("-a", "--filter", "expose=90-100"),
    ("-a", "--filter", "ancestor=IMAGE"), ("-a", "--filter", "ancestor=nosuch"),
    ("-a", "--filter", "ancestor=pi-kid:1"),
    ("-a", "--filter", "network=bridge"), ("-a", "--filter", "network=none"),
    ("-a", "--filter", "before=done0"), ("-a", "--filter", "since=web2"),
    ("--filter", "since=web2"), ("-a", "--filter", "label=a"), ("-a", "-f", "id=abcdef0123"),
]  # fmt: skip
PS_BAD_FILTERS = [("--filter", "status=bogus"), ("--filter", "bogus=1")]


def test_ps_filters_as_dockers(engine, make_netns, state_root):
    """The same containers in Docker and in pyinspect (a host netns of its own): `ps
    --filter` lists the same names, newest first, for each of Docker's filters, and
    refuses the same bad ones."""
    eng = engine["engine"]
    ns = make_netns("pi-dkpf")
    cli = Cli(state_root, netns=ns.name)
    made = [
        ("web1", ["-d", "-p", "8081:80"], ["sleep", "600"]),
        ("web2", ["-d", "-p", "9090:90/udp"], ["sleep", "600"]),
        ("done0", [], ["true"]),
        ("done3", [], ["sh", "-c", "exit 3"]),
    ]
    try:
        for name, flags, cmd in made:
            eng.docker("run", "--name", name, *flags, eng.image, *cmd, check=False)
            cli("run", "--name", name, *flags, "busybox", *cmd, check=False)
        for run in (eng.docker, cli):  # an image made on top of IMAGE: its containers count
            run("commit", "done0", "pi-kid:1")
            run("run", "--name", "kid", "pi-kid:1", "true")
        made.append(("kid", [], []))
        for args in PS_FILTERS:
            fmt = ("--format", "{{.Names}}")
            theirs = eng.docker("ps", *fmt, *(a.replace("IMAGE", eng.image) for a in args))
            ours = cli("ps", *fmt, *(a.replace("IMAGE", "busybox") for a in args))
            theirs = [n for n in theirs.stdout.splitlines() if n != WEB]  # the module's own
            assert ours.stdout.splitlines() == theirs, (args, ours.stdout, theirs)
        assert cli("ps", "-a", "--filter", "name=web", "-q").stdout.split() == [
            json.loads(cli("inspect", n).stdout)[0]["Id"][:12] for n in ("web2", "web1")
        ]
        for args in PS_BAD_FILTERS:
            theirs = eng.docker("ps", *args, check=False)
            ours = cli("ps", *args, check=False)
            assert ours.returncode == 2 and ours.stdout == "", ours
            why = theirs.stderr.strip().removeprefix("Error response from daemon: ")
            assert ours.stderr.strip() == f"Error: {why}", (ours.stderr, theirs.stderr)
    finally:
        names = [n for n, _f, _c in made]
        eng.docker("rm", "-f", *names, check=False)
        cli("rm", "-f", *names, check=False)
        eng.docker("rmi", "pi-kid:1", check=False)


DIFF_SCRIPT = (
    "touch /tmp/new && echo hi > /etc/motd && echo x >> /etc/passwd && rm /bin/ls"
    " && mkdir -p /root/a/b && rmdir /home && mkdir /home && chmod 700 /var"
    " && ln -s /etc/motd /usr/motd && rm -r /sbin"
)


def test_diff_as_dockers(engine, make_netns, state_root):
    """The same container in Docker and in pyinspect: `diff` lists nothing when it is
    new (the files the runtime writes are not the container's), then the same A/C/D
    lines after the same writes, running and stopped."""
    eng, name = engine["engine"], unique("pi-dkdiff")
    ns = make_netns("pi-dkdf")
    cli = Cli(state_root, netns=ns.name)
    try:
        eng.docker("run", "-d", "--name", name, eng.image, "sleep", "600")
        cli("run", "-d", "--name", name, "busybox", "sleep", "600")
        assert cli("diff", name).stdout == eng.docker("diff", name).stdout == ""
        eng.docker("exec", name, "sh", "-c", DIFF_SCRIPT)
        cli("exec", name, "sh", "-c", DIFF_SCRIPT)
        # (Docker 20.10 lists them in no set order: pyinspect sorts them by path)
        theirs = sorted(eng.docker("diff", name).stdout.splitlines(), key=lambda line: line[2:])
        assert "D /bin/ls" in theirs and "A /tmp/new" in theirs, theirs
        ours = cli("diff", name).stdout.splitlines()
        assert ours == theirs, f"ours {'|'.join(ours)} theirs {'|'.join(theirs)}"
        for stop in (eng.docker, cli):
            stop("stop", "-t", "1", name)
        assert cli("diff", name).stdout.splitlines() == ours
        assert sorted(eng.docker("diff", name).stdout.splitlines(), key=lambda s: s[2:]) == theirs
    finally:
        eng.docker("rm", "-f", name, check=False)
        cli("rm", "-f", name, check=False)


HISTORY_DOCKERFILE = """FROM {base}
ENV A=1
LABEL a=b c=d
RUN echo hello > /hi && mkdir /data && ln -s /hi /data/link
COPY f.txt /data/
WORKDIR /data
EXPOSE 80 53/udp
USER nobody
VOLUME /v1 /v2
STOPSIGNAL SIGINT
ENTRYPOINT ["cat"]
CMD ["/hi"]
"""


def test_history_and_image_sizes_as_dockers(engine, make_netns, state_root, tmp_path):
    """The embedded image and the same Dockerfile built by Docker's builder and by
    pyinspect: `history` shows the same steps with the same layer sizes (Docker's:
    file bytes and symlink targets, not the tar's), and `images` the same SIZE."""
    eng = engine["engine"]
    cli = Cli(state_root, netns=make_netns("pi-dkhs").name)
    fmt = ("--no-trunc", "--format", "{{.CreatedBy}}|{{.Size}}|{{.Comment}}")
    assert cli("history", *fmt, "busybox").stdout == eng.docker("history", *fmt, eng.image).stdout
    assert cli("history", "-q", "busybox").stdout == eng.docker("history", "-q", eng.image).stdout
    tag = unique("pi-hist") + ":1"
    for who, base in ((eng, eng.image), (cli, "busybox")):
        ctx = tmp_path / f"ctx-{base.replace(':', '-')}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(HISTORY_DOCKERFILE.format(base=base))
        (ctx / "f.txt").write_text("x" * 5000)
        if who is eng:
            subprocess.run(
                [dockerd.DOCKER, "-H", eng.host, "build", "-q", "-t", tag, str(ctx)],
                env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/bin:/bin"}, check=True,
                capture_output=True, timeout=120,
            )  # fmt: skip
        else:
            cli("build", "-q", "-t", tag, str(ctx))
    try:
        ours = cli("history", *fmt, tag).stdout.splitlines()
        theirs = eng.docker("history", *fmt, tag).stdout.splitlines()
        # Docker names a COPY's source by a hash of its own making
        copy = re.compile(r"COPY file:[0-9a-f]{64} in ")  # (pyinspect's: sha256 of its sources)
        ours, theirs = ([copy.sub("COPY file:* in ", line) for line in x] for x in (ours, theirs))
        assert ours == theirs, "\n".join(["ours:", *ours, "theirs:", *theirs])
        for ours_ref, theirs_ref in ((tag, tag), ("busybox", eng.image)):
            size = cli("inspect", "-f", "{{.Size}}", ours_ref).stdout
            assert size == eng.docker("image", "inspect", "-f", "{{.Size}}", theirs_ref).stdout
            column = [
                re.split(r"\s{3,}", line)[-1]
                for line in cli("images", ours_ref).stdout.splitlines()
            ]
            assert column[1:] == [
                eng.docker("images", "--format", "{{.Size}}", theirs_ref).stdout.strip()
            ]
    finally:
        eng.docker("rmi", tag, check=False)
        cli("rmi", tag, check=False)


def _said(proc, ids):
    """A command's outcome as both engines can be compared: exit code 0 or not, stdout,
    and stderr's lines without Docker's or pyinspect's prefix and with ids as ID."""
    err = []
    for line in proc.stderr.splitlines():
        line = re.sub(r"^(Error response from daemon|Error): ", "", line)
        line = re.sub(r" \(pyinspect [^)]*\)$", "", line)  # pyinspect's hint
        for cid in ids:
            line = line.replace(cid, "ID")
        err.append(line)
    return bool(proc.returncode), proc.stdout, err


def test_create_pause_and_wait_as_dockers(engine, make_netns, state_root):
    """The same verbs to Docker and to pyinspect (a host netns of its own): `create`,
    `pause`/`unpause` (states, ps, inspect, what a paused container refuses, what kill,
    stop and rm -f do to one), `wait` (exit codes, also of an --rm container) and
    `rename`, with the same output and the same errors."""
    eng = engine["engine"]
    cli = Cli(state_root, netns=make_netns("pi-dkpw").name)
    tag = unique("pw")
    c1, c2, c3, c4, c5 = (f"{tag}-{n}" for n in ("c1", "c2", "c3", "c4", "c5"))
    fmt = ("--format", "{{.Names}}|{{.Status}}|{{.State}}|{{.Ports}}")
    state_fmt = ("-f", "{{.State.Status}} {{.State.Running}} {{.State.Paused}} {{.State.ExitCode}}")
    engines = {"docker": (eng.docker, eng.image), "pyinspect": (cli, "busybox")}
    ids: dict[str, list[str]] = {"docker": [], "pyinspect": []}

    def both(*args, same_error=True, shown=lambda out: out):
        """Run `args` in both engines: the same outcome (exit status, output and, unless
        `same_error` is False, error lines: pyinspect words "no such container" and
        click's usage errors its own way)."""
        out = {}
        for who, (run, image) in engines.items():
            argv = [image if a == "IMAGE" else a for a in args]
            proc = run(*argv, check=False, timeout=60)
            if args[0] in ("create", "run") and proc.returncode == 0:
                ids[who].append(proc.stdout.strip())
                proc.stdout = "ID\n"
            proc.stdout = shown(proc.stdout)
            out[who] = _said(proc, ids[who])
            if not same_error:
                out[who] = out[who][:2] + (len(out[who][2]) > 0,)
        assert out["pyinspect"] == out["docker"], (args, out)
        return out["docker"]

    def ps():  # (the engines' clocks differ by a second or so)
        durations = re.compile(r"Less than a second|\d+ seconds?")
        return both(
            "ps", "-a", "--filter", f"name={tag}", *fmt, shown=lambda out: durations.sub("T", out)
        )

    try:
        both("create", "--name", c1, "-p", "8097:80", "IMAGE", "sleep", "600")
        assert ps()[1] == f"{c1}|Created|created|\n"
        both("inspect", *state_fmt, c1)
        both("create", "--name", c1, "IMAGE", "true", same_error=False)  # the name is taken
        both("create", "-d", "IMAGE", "true", same_error=False)  # create has no -d
        both("exec", c1, "true", same_error=False)
        both("pause", c1)
        both("unpause", c1)
        both("start", c1)
        assert both("pause", c1)[1] == f"{c1}\n"
        both("pause", c1)  # already paused
        assert ps()[1] == f"{c1}|Up T (Paused)|paused|0.0.0.0:8097->80/tcp\n"
        assert both("ps", "-a", "--filter", "status=paused", "--format", "{{.Names}}")[1] == (
            f"{c1}\n"
        )
        assert both("inspect", *state_fmt, c1)[1] == "paused true true 0\n"
        both("exec", c1, "true")  # refused while paused
        both("rm", c1)  # refused while paused
        both("kill", "-s", "TERM", c1)  # the signal, and the container runs again
        assert ps()[1] == f"{c1}|Up T|running|0.0.0.0:8097->80/tcp\n"
        both("pause", c1)
        both("stop", "-t", "1", c1)
        assert ps()[1] == f"{c1}|Exited (137) T ago|exited|\n"
        both("unpause", c1)  # not paused
        both("pause", "nosuch-" + tag, same_error=False)
        both("run", "-d", "--name", c2, "IMAGE", "sh", "-c", "sleep 1; exit 3")
        assert both("wait", c2, c1)[1] == "3\n137\n"
        both("run", "-d", "--rm", "--name", c3, "IMAGE", "sh", "-c", "sleep 1; exit 5")
        assert both("wait", c3)[1] == "5\n"
        both("wait", c2, "nosuch-" + tag, same_error=False)
        both("run", "-d", "--name", c4, "IMAGE", "sleep", "600")
        both("pause", c4, "nosuch-" + tag, c2, same_error=False)
        both("restart", "-t", "1", c4)  # a paused container restarts
        assert f"{c4}|Up T|running|\n" in ps()[1]
        both("pause", c4)
        both("rm", "-f", c4)
        both("create", "--name", c5, "IMAGE", "sh", "-c", "echo hi; exit 7")
        codes = [run("start", "-a", c5, check=False).returncode for run in (eng.docker, cli)]
        assert codes == [7, 7]
        assert both("inspect", *state_fmt, c5)[1] == "exited false false 7\n"
        c2b = f"{tag}-c2b"
        assert both("rename", c2, c2b)[:2] == (False, "")
        both("rename", c2b, c1, same_error=False)  # taken
        both("rename", "nosuch-" + tag, f"{tag}-x", same_error=False)
        both("rename", c2b, "bad name", same_error=False)
        assert ps()[1].splitlines() == [
            f"{c5}|Exited (7) T ago|exited|",
            f"{c2b}|Exited (3) T ago|exited|",
            f"{c1}|Exited (137) T ago|exited|",
        ]
    finally:
        for n in (c1, c2, c3, c4, c5, f"{tag}-c2b"):
            eng.docker("rm", "-f", n, check=False)
            cli("rm", "-f", n, check=False)


def test_doctor_names_a_paused_docker_container(engine):
    """Docker pauses with the cgroup v1 freezer here (runc): doctor reads it and says how
    to unpause, the dashboard shows it paused, and the published port answers again once
    Docker unpauses."""
    eng, cli, client = engine["engine"], engine["cli"], engine["client"]
    eng.docker("pause", WEB)
    try:
        assert _fetch(client) != "200"
        proc = cli("doctor", "--json", check=False)
        hits = [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "paused"]
        assert proc.returncode == 1 and [h["container"] for h in hits] == [WEB], proc.stdout
        assert hits[0]["fix"] == f"docker unpause {WEB}"
        assert "freezer.state: frozen" in hits[0]["evidence"][0]
        detail = f"/api/containers/{engine['web']['Id'][:12]}/detail"
        deadline = time.monotonic() + 10
        while engine["server"].json(detail)["status"] != "paused":  # the dashboard says so
            assert time.monotonic() < deadline, engine["server"].json(detail)
            time.sleep(0.5)
    finally:
        eng.docker("unpause", WEB)
    assert _fetch(client) == "200"
    proc = cli("doctor", "--json", check=False)
    assert not [f for f in json.loads(proc.stdout)["findings"] if f["check"] == "paused"]


DNS_FLAGS = [
    (),
    ("--dns", "10.9.9.9"),
    ("--dns", "10.9.9.9", "--dns", "10.9.9.8", "--dns-search", "a.test", "--dns-option", "ndots:2"),
    ("--dns-search", "b.test", "--dns-search", "c.test"),
    ("--dns-option", "timeout:1", "--dns-option", "attempts:2"),
]  # fmt: skip


def test_dns_flags_write_dockers_resolv_conf(engine, make_netns, state_root):
    """--dns, --dns-search and --dns-option on the default bridge: the container's
    /etc/resolv.conf is the one Docker writes from the same host file and flags."""
    eng = engine["engine"]
    cli = Cli(state_root, netns=make_netns("pi-dkdns").name)
    for i, flags in enumerate(DNS_FLAGS):
        theirs = eng.docker("run", "--rm", *flags, eng.image, "cat", "/etc/resolv.conf").stdout
        name = unique(f"pi-dkdns{i}")  # (rm waits for the monitor's clean-up; --rm would not)
        ours = cli("run", "--name", name, *flags, "busybox", "cat", "/etc/resolv.conf").stdout
        cli("rm", name)
        assert ours == theirs, (flags, ours, theirs)


def _layer_names(archive) -> list[str]:
    """The member names of the top layer of a `save` archive (docker's or pyinspect's)."""
    import tarfile

    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        with tarfile.open(fileobj=outer.extractfile(manifest[0]["Layers"][-1])) as layer:
            return sorted(m.name.rstrip("/") for m in layer)


def _tar_members(path) -> dict:
    """{name: (type, permission bits, size, linkname)} of a tar file (Go's tar also keeps
    the file type's bits in the mode field; Python's and GNU tar's do not)."""
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name.rstrip("/"): (m.type, m.mode & 0o7777, m.size, m.linkname) for m in tar}


# what Docker's init layer adds to every container's root: pyinspect makes none of it, and
# a resolv.conf only for a container with a network (these have --net none)
DOCKER_INIT = {".dockerenv", "dev/console", "dev/pts", "dev/shm", "etc/mtab", "etc/resolv.conf"}


def test_commit_export_import_as_dockers(engine, state_root, tmp_path):
    """`commit` (config, history, the layer's members, the --change rules and errors),
    `export` (the same files) and `import` (each other's exports) against Docker's;
    images committed by one run in the other."""
    eng = engine["engine"]
    cli = Cli(state_root)
    name = unique("pi-cm")
    script = "echo hi > /f; rm /bin/vi; mkdir /d; echo x > /etc/hostname.x; ln -s /etc/shadow /ln"
    opts = ("--name", name, "-e", "A=1", "-w", "/tmp", "--hostname", "hh")
    eng.docker("run", *opts, "--network", "none", eng.image, "sh", "-c", script)
    cli("run", *opts, "--net", "none", "busybox", "sh", "-c", script)
    engines = {"docker": eng.docker, "pyinspect": cli}
    try:
        changes = ("-c", 'CMD ["cat","/f"]', "-c", "ENV B=2 P=$PATH:/x", "-c", "EXPOSE 8080")
        changes += ("-c", "WORKDIR sub", "-c", "LABEL k=v")
        img, hist, runs, layers = {}, {}, {}, {}
        for who, run in engines.items():
            out = run("commit", "-a", "me", "-m", "msg", *changes, name, f"{name}:1").stdout
            assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", out), (who, out)
            img[who] = json.loads(run("inspect", f"{name}:1").stdout)[0]
            assert img[who]["Id"] == out.strip()
            fmt = "{{.CreatedBy}}|{{.Comment}}"
            hist[who] = run("history", "--no-trunc", "--format", fmt, f"{name}:1").stdout
            net = "--network" if who == "docker" else "--net"
            runs[who] = run("run", "--rm", net, "none", f"{name}:1").stdout
            run("save", "-o", tmp_path / f"{who}.tar", f"{name}:1")
            layers[who] = _layer_names(tmp_path / f"{who}.tar")
        d, p = img["docker"], img["pyinspect"]
        for key in ("Hostname", "User", "Env", "Cmd", "WorkingDir", "Entrypoint", "Labels"):
            assert p["Config"].get(key) == d["Config"].get(key), key
        assert p["Config"]["ExposedPorts"] == d["Config"]["ExposedPorts"] == {"8080/tcp": {}}
        assert p["Config"]["WorkingDir"] == "/tmp/sub"
        assert p["ContainerConfig"]["Cmd"] == d["ContainerConfig"]["Cmd"]
        assert (p["Comment"], p["Author"]) == (d["Comment"], d["Author"]) == ("msg", "me")
        assert p["Container"] == json.loads(cli("inspect", name).stdout)[0]["Id"]
        assert hist["pyinspect"].splitlines()[0] == hist["docker"].splitlines()[0]
        assert hist["docker"].splitlines()[0] == f"sh -c {script}|msg"
        assert runs["pyinspect"] == runs["docker"] == "hi\n"
        # the layer: the new files, the link, the whiteout of /bin/vi (not /etc/hostname)
        assert layers["pyinspect"] == layers["docker"], layers
        assert "bin/.wh.vi" in layers["docker"]
        # an image pyinspect committed runs in Docker
        cli("tag", f"{name}:1", f"{name}:from-pyinspect")
        cli("save", "-o", tmp_path / "moved.tar", f"{name}:from-pyinspect")
        eng.docker("load", "-i", tmp_path / "moved.tar")
        moved = eng.docker("run", "--rm", "--network", "none", f"{name}:from-pyinspect")
        assert moved.stdout == "hi\n"
        # what --change refuses, in Docker's words
        for bad, said in (
            ("RUN true", "run is not a valid change command"),
            ("FROM x", "from is not a valid change command"),
            ("BOGUS x", "bogus is not a valid change command"),
            ("ENV", "at least one argument"),  # (pyinspect's build words it its way)
        ):
            for who, run in engines.items():
                proc = run("commit", "-c", bad, name, f"{name}:bad", check=False)
                assert proc.returncode != 0 and said in proc.stderr, (who, bad, proc.stderr)
                assert "Traceback" not in proc.stderr
        assert cli("images", "-q", f"{name}:bad").stdout == ""
        # export: the same files, links and modes (Docker adds its init layer's few)
        members = {}
        for who, run in engines.items():
            run("export", "-o", tmp_path / f"{who}-root.tar", name)
            members[who] = _tar_members(tmp_path / f"{who}-root.tar")
        docker_own = {k: v for k, v in members["docker"].items() if k not in DOCKER_INIT}
        for key in ("f", "ln", "d", "etc/hostname.x", "bin/busybox", "var/www/index.html"):
            assert members["pyinspect"][key] == docker_own[key], key
        assert "bin/vi" not in members["pyinspect"] and "bin/vi" not in docker_own
        assert sorted(set(members["pyinspect"]) ^ set(docker_own)) == [], "only in one"
        # import: each imports the other's export; without -m the comment is Docker's
        for who, run in engines.items():
            other = "pyinspect" if who == "docker" else "docker"
            out = run("import", "-c", 'CMD ["cat","/f"]', tmp_path / f"{other}-root.tar",
                      f"{name}:imp").stdout  # fmt: skip
            assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", out), (who, out)
            net = "--network" if who == "docker" else "--net"
            assert run("run", "--rm", net, "none", f"{name}:imp").stdout == "hi\n"
            said = run("history", "--format", "{{.CreatedBy}}|{{.Comment}}", f"{name}:imp")
            assert said.stdout == "|Imported from -\n", (who, said.stdout)
            cfg = json.loads(run("inspect", f"{name}:imp").stdout)[0]["Config"]
            assert cfg["Cmd"] == ["cat", "/f"] and not cfg.get("Env"), (who, cfg)
    finally:
        eng.docker("rm", "-f", name, check=False)
        cli("rm", "-f", name, check=False)
        eng.docker("rmi", *(f"{name}:{t}" for t in ("1", "imp", "from-pyinspect")), check=False)


def test_update_as_dockers(engine, state_root):
    """`update` of a running container in both engines: the same output, the same
    HostConfig, the same limits in the kernel; the same refusals."""
    from test_update import cgroup_file

    eng = engine["engine"]
    cli = Cli(state_root)
    name, gone = unique("pi-up"), unique("pi-uprm")
    engines = {
        "docker": (eng.docker, eng.image, "--network"),
        "pyinspect": (cli, "busybox", "--net"),
    }
    fmt = (
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}} "
        "{{.HostConfig.RestartPolicy.Name}} {{.HostConfig.RestartPolicy.MaximumRetryCount}}"
    )
    said, kernel = {}, {}
    try:
        for who, (run, image, net) in engines.items():
            run("run", "-d", "--name", name, net, "none", "-m", "64m", image, "sleep", "600")
            run("run", "-d", "--rm", "--name", gone, net, "none", image, "sleep", "600")
            out = run("update", "-m", "96m", "--cpus", "0.5", "--pids-limit", "20",
                      "--restart", "on-failure:3", name).stdout  # fmt: skip
            shown = run("inspect", "-f", fmt, name).stdout
            pid = int(run("inspect", "-f", "{{.State.Pid}}", name).stdout)
            kernel[who] = (
                cgroup_file(pid, "memory", "memory.limit_in_bytes"),
                cgroup_file(pid, "cpu", "cpu.cfs_quota_us"),
                cgroup_file(pid, "cpu", "cpu.cfs_period_us"),
                cgroup_file(pid, "pids", "pids.max"),
            )
            refused = run("update", "--restart", "always", gone, check=False)
            said[who] = (out, shown, refused.returncode != 0)
            assert "AutoRemove is enabled for the container" in refused.stderr, refused.stderr
        assert said["pyinspect"] == said["docker"], said
        assert said["docker"][1] == f"{96 << 20} 500000000 20 on-failure 3\n"
        assert kernel["pyinspect"] == kernel["docker"] == (str(96 << 20), "50000", "100000", "20")
    finally:
        for run, _image, _net in engines.values():
            run("rm", "-f", name, gone, check=False)


def test_prune_as_dockers(engine, state_root):
    """`container prune` and `image prune` in both engines: the same question, the same
    containers and images removed, the same space reclaimed, running ones kept."""
    eng = engine["engine"]
    cli = Cli(state_root)
    tag = unique("pr")
    up, done, new, d2, d3 = (f"{tag}-{n}" for n in ("up", "done", "new", "d2", "d3"))
    engines = {
        "docker": (eng.docker, eng.image, "--network"),
        "pyinspect": (cli, "busybox", "--net"),
    }
    out: dict[str, dict] = {"docker": {}, "pyinspect": {}}
    ids: dict[str, dict] = {"docker": {}, "pyinspect": {}}
    try:
        for who, (run, image, net) in engines.items():
            run("run", "-d", "--name", up, net, "none", image, "sleep", "600")
            run("run", "--name", done, net, "none", image, "sh", "-c", "echo hi > /f")
            run("create", "--name", new, net, "none", image, "true")
            # an image made dangling: its tag moves to a later commit
            run("run", "--name", d2, net, "none", image, "sh", "-c", "echo two > /g")
            run("commit", d2, f"{tag}-dang:1")
            dangling = run("inspect", "-f", "{{.Id}}", f"{tag}-dang:1").stdout.strip()
            run("run", "--name", d3, net, "none", image, "sh", "-c", "echo three > /h")
            run("commit", d3, f"{tag}-dang:1")
            for name in (up, done, new, d2, d3):
                ids[who][run("inspect", "-f", "{{.Id}}", name).stdout.strip()] = name
            # asked, and answered no: nothing goes
            asked = run("container", "prune", input="n\n")
            out[who]["asked"] = asked.stdout
            pruned = run("container", "prune", "-f").stdout.splitlines()
            assert pruned[0] == "Deleted Containers:" and pruned[-2] == "", (who, pruned)
            out[who]["containers"] = sorted(ids[who][i] for i in pruned[1:-2])
            out[who]["container space"] = pruned[-1]
            listed = run("ps", "-a", "--format", "{{.Names}}").stdout.split()
            out[who]["left"] = [n for n in listed if n.startswith(tag)]
            images = run("image", "prune", "-f").stdout.splitlines()
            assert images[:2] == ["Deleted Images:", f"deleted: {dangling}"], (who, images)
            out[who]["image space"] = images[-1]
            out[who]["images left"] = len(run("images", "-q", f"{tag}-dang").stdout.split())
        assert out["pyinspect"] == out["docker"], out
        d = out["docker"]
        assert d["asked"] == (
            "WARNING! This will remove all stopped containers.\n"
            "Are you sure you want to continue? [y/N] Total reclaimed space: 0B\n"
        ), d["asked"]
        assert d["containers"] == sorted([done, new, d2, d3])
        assert d["container space"] == "Total reclaimed space: 13B"  # /f, /g, /h: 3 + 4 + 6
        assert d["left"] == [up]
        assert d["image space"] == "Total reclaimed space: 4B" and d["images left"] == 1
    finally:
        for run, _image, _net in engines.values():
            run("rm", "-f", up, done, new, d2, d3, check=False)
            run("rmi", f"{tag}-dang:1", check=False)


def test_network_and_system_prune_as_dockers(engine, make_netns, state_root):
    """`network prune` removes the user networks no running container is on (also one a
    stopped container names), `system prune` the stopped containers, the networks and
    the dangling images: the same in both engines (pyinspect in a host netns of its own)."""
    eng = engine["engine"]
    cli = Cli(state_root, netns=make_netns("pi-dkpn").name)
    tag = unique("pn")
    idle, held, user = f"{tag}-idle", f"{tag}-held", f"{tag}-c"
    engines = {"docker": (eng.docker, eng.image), "pyinspect": (cli, "busybox")}
    out: dict[str, dict] = {"docker": {}, "pyinspect": {}}

    def ours(who, run):  # the test's networks each engine lists
        if who == "docker":
            listed = run("network", "ls", "--format", "{{.Name}}").stdout.split()
        else:
            listed = [
                n["name"] for n in json.loads(run("network", "ls", "--format", "json").stdout)
            ]
        return sorted(n for n in listed if n.startswith(tag))

    try:
        for who, (run, image) in engines.items():
            run("network", "create", idle)
            run("network", "create", held)
            run("run", "--name", user, "--network", held, image, "true")
            cid = run("inspect", "-f", "{{.Id}}", user).stdout.strip()
            out[who]["declined"] = run("network", "prune", input="n\n").stdout
            # (in no set order in Docker: sorted lines)
            out[who]["network prune"] = sorted(run("network", "prune", "-f").stdout.splitlines())
            out[who]["networks"] = ours(who, run)
            said = run("system", "prune", "-f").stdout.replace(cid, "ID")
            out[who]["system prune"] = said
            out[who]["after"] = ours(who, run)
        assert out["pyinspect"] == out["docker"], out
        d = out["docker"]
        assert d["network prune"] == sorted(["Deleted Networks:", idle, held, ""])
        assert d["networks"] == d["after"] == []
        assert d["system prune"] == "Deleted Containers:\nID\n\nTotal reclaimed space: 0B\n"
    finally:
        for run, _image in engines.values():
            run("rm", "-f", user, check=False)
            run("network", "rm", idle, held, check=False)


def test_system_df_as_dockers(engine, state_root):
    """`system df` and `system df -v` in both engines: what a new container, a running one
    and a commit add to the counts, and the same sizes for each (the writable layer, the
    committed image's shared and unique bytes, the base image's), the same Command."""
    eng = engine["engine"]
    cli = Cli(state_root)
    tag = unique("df")
    wrote, up = f"{tag}-w", f"{tag}-up"
    engines = {
        "docker": (eng.docker, eng.image, "--network"),
        "pyinspect": (cli, "busybox", "--net"),
    }
    out: dict[str, dict] = {"docker": {}, "pyinspect": {}}

    def summary(run):
        rows = [
            json.loads(line)
            for line in run("system", "df", "--format", "{{json .}}").stdout.splitlines()
        ]
        return {r["Type"]: (int(r["TotalCount"]), int(r["Active"])) for r in rows}

    try:
        for who, (run, image, net) in engines.items():
            run(
                "run", "--rm", net, "none", image, "true"
            )  # pyinspect's busybox is stored on first use
            before = summary(run)
            run(
                "run",
                "--name",
                wrote,
                net,
                "none",
                image,
                "sh",
                "-c",
                "head -c 3000 /dev/zero > /big",
            )
            run("run", "-d", "--name", up, net, "none", image, "sleep", "600")
            run("commit", wrote, f"{tag}-img:1")
            after = summary(run)
            # (the base image may be in use already: other tests' containers in the engine)
            out[who]["added"] = {k: after[k][0] - before[k][0] for k in after}
            out[who]["running added"] = after["Containers"][1] - before["Containers"][1]
            verbose = json.loads(run("system", "df", "-v", "--format", "{{json .}}").stdout)
            img = next(i for i in verbose["Images"] if i["Repository"] == f"{tag}-img")
            out[who]["image"] = {
                k: img[k]
                for k in ("Tag", "Size", "VirtualSize", "SharedSize", "UniqueSize", "Containers")
            }
            mine = {c["Names"]: c for c in verbose["Containers"] if c["Names"].startswith(tag)}
            out[who]["containers"] = {
                n: (c["Size"], c["State"], c["Command"], len(c["ID"]))
                for n, c in sorted(mine.items())
            }
            base = run("inspect", "-f", "{{.Id}}", image).stdout.strip()
            out[who]["base size"] = next(
                i["VirtualSize"] for i in verbose["Images"] if i["ID"] == base
            )
            used = sum(1 for i in verbose["Images"] if i["Containers"] != "0")
            assert after["Images"][1] == used, (who, after, verbose["Images"])
            table = run("system", "df", "-v").stdout.splitlines()
            out[who]["titles"] = [line for line in table if line.endswith(":") or "usage:" in line]
            row = next(line for line in table if line.endswith(f" {wrote}"))
            out[who]["command cell"] = re.search(r'"[^"]*"', row).group(0)
            # ps -s, and a template naming .Size without -s (Docker computes it then too)
            fmt = "{{.Names}} {{.Size}}"
            sized = run("ps", "-a", "-s", "--filter", f"name={tag}", "--format", fmt).stdout
            asked = run("ps", "-a", "--filter", f"name={tag}", "--format", fmt).stdout
            out[who]["ps size"] = (sorted(sized.splitlines()), sorted(asked.splitlines()))
            header = run("ps", "-s").stdout.splitlines()[0]
            out[who]["ps header"] = header.split()[-1]
        assert out["pyinspect"] == out["docker"], out
        d = out["docker"]
        assert d["added"] == {"Images": 1, "Containers": 2, "Local Volumes": 0, "Build Cache": 0}
        assert d["running added"] == 1
        assert d["image"]["UniqueSize"] == "3kB" and d["image"]["Containers"] == "0"
        assert d["containers"][wrote][0] == "3kB" and d["containers"][up][:2] == ("0B", "running")
        assert d["command cell"] == '"sh -c \'head -c 3000…"'
        assert (
            d["ps size"][0]
            == d["ps size"][1]
            == sorted([f"{wrote} 3kB (virtual 1.99MB)", f"{up} 0B (virtual 1.99MB)"])
        ), d["ps size"]
        assert d["ps header"] == "SIZE"
    finally:
        for run, _image, _net in engines.values():
            run("rm", "-f", wrote, up, check=False)
            run("rmi", f"{tag}-img:1", check=False)


def test_attach_as_dockers(engine, state_root):
    """`attach` in both engines: the output from now on (stdout and stderr apart), stdin
    of a `-di` container, its exit code, and the refusals of a stopped and a paused one."""
    eng = engine["engine"]
    cli = Cli(state_root)
    tag = unique("at")
    out_name, in_name, done, paused = (f"{tag}-{n}" for n in ("out", "in", "done", "p"))
    engines = {
        "docker": (eng.docker, eng.image, "--network"),
        "pyinspect": (cli, "busybox", "--net"),
    }
    got: dict[str, dict] = {"docker": {}, "pyinspect": {}}
    try:
        for who, (run, image, net) in engines.items():
            run("run", "-d", "--name", out_name, net, "none", image, "sh", "-c",
                "sleep 1; echo out; echo err >&2; exit 3")  # fmt: skip
            proc = run("attach", out_name, input="", check=False)
            got[who]["output"] = (proc.returncode, proc.stdout, proc.stderr)
            run("run", "-di", "--name", in_name, net, "none", image, "sh", "-c",
                'read l; echo "got $l"; echo "err $l" >&2; exit 5')  # fmt: skip
            # stdin kept open until it exits: Docker's attach shows no more output once
            # its stdin ends (pyinspect's goes on: tests/test_attach.py)
            att = subprocess.Popen(
                cli.argv("attach", in_name) if who == "pyinspect" else eng.argv("attach", in_name),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=eng.env,
            )
            time.sleep(1)
            att.stdin.write(b"hello\n")
            att.stdin.flush()
            att.wait(timeout=30)
            got[who]["stdin"] = (att.returncode, att.stdout.read(), att.stderr.read())
            att.stdin.close()
            run("run", "--name", done, net, "none", image, "true")
            run("run", "-d", "--name", paused, net, "none", image, "sleep", "600")
            run("pause", paused)
            for name in (done, paused):
                proc = run("attach", name, input="", check=False)
                words = proc.stderr.strip().splitlines()[-1].split(": ", 1)[-1]
                got[who][name] = (proc.returncode != 0, words)
            run("unpause", paused)
        assert got["pyinspect"] == got["docker"], got
        assert got["docker"]["output"] == (3, "out\n", "err\n")
        assert got["docker"]["stdin"] == (5, b"got hello\n", b"err hello\n")
    finally:
        for run, _image, _net in engines.values():
            run("unpause", paused, check=False)
            run("rm", "-f", out_name, in_name, done, paused, check=False)


def test_volumes_as_dockers(engine, state_root):
    """Volumes in both engines: `volume create/ls/inspect`, a named and an anonymous volume
    in `inspect`'s Mounts and Binds, a new volume filled from the image, the refusal to
    remove one in use, `rm -v` (the anonymous one goes, the named one stays) and prune."""
    eng = engine["engine"]
    cli = Cli(state_root)
    tag = unique("vol")
    named, fresh, label = f"{tag}-n", f"{tag}-f", f"{tag}-l"
    engines = {
        "docker": (eng.docker, eng.image, "--network"),
        "pyinspect": (cli, "busybox", "--net"),
    }
    out: dict[str, dict] = {"docker": {}, "pyinspect": {}}

    def volume_names(run):
        return set(run("volume", "ls", "-q").stdout.split())

    try:
        for who, (run, image, net) in engines.items():
            o = out[who]
            o["create"] = [
                run("volume", "create", named).stdout,
                run("volume", "create", named).stdout,
                run("volume", "create", "--label", "k=v", label).stdout,
            ]
            fmt = "{{.Name}} {{.Driver}} {{.Labels}} {{.Scope}}"
            o["ls"] = run("volume", "ls", "-f", f"name={tag}", "--format", fmt).stdout
            docs = json.loads(run("volume", "inspect", named, label).stdout)
            o["inspect"] = [
                {k: v for k, v in d.items() if k not in ("CreatedAt", "Mountpoint")} for d in docs
            ]
            o["mountpoint"] = docs[0]["Mountpoint"].endswith(f"/volumes/{named}/_data")
            before = volume_names(run)
            run("run", "-d", "--name", f"{tag}-c", net, "none", "-v", f"{named}:/etc",
                "-v", "/data", image, "sleep", "600")  # fmt: skip
            anon = volume_names(run) - before
            mounts = run("inspect", "-f", "{{json .Mounts}}", f"{tag}-c").stdout
            o["mounts"] = [
                {k: v for k, v in m.items() if k != "Source"}
                | {"Name": m["Name"] if m["Name"] == named else len(m["Name"])}
                for m in sorted(json.loads(mounts), key=lambda m: m["Destination"])
            ]
            o["binds"] = run("inspect", "-f", "{{json .HostConfig.Binds}}", f"{tag}-c").stdout
            o["anonymous"] = len(anon)
            listed = run("run", "--rm", net, "none", "-v", f"{fresh}:/etc", image, "ls", "/etc")
            o["filled"] = {"passwd", "group"} <= set(listed.stdout.split())
            o["fresh labels"] = json.loads(run("volume", "inspect", fresh).stdout)[0]["Labels"]
            cid = run("inspect", "-f", "{{.Id}}", f"{tag}-c").stdout.strip()
            refused = run("volume", "rm", named, check=False)
            o["in use"] = (
                refused.returncode != 0,
                f"remove {named}: volume is in use - [{cid}]" in refused.stderr,
            )
            run("rm", "-f", "-v", f"{tag}-c")
            now = volume_names(run)
            o["after rm -v"] = (bool(anon & now), named in now, sorted(now - before))
            pruned = run("volume", "prune", "-f").stdout
            o["pruned"] = sorted(n for n in (named, fresh, label) if f"\n{n}\n" in pruned)
            o["prune last line"] = pruned.splitlines()[-1].startswith("Total reclaimed space: ")
        assert out["pyinspect"] == out["docker"], out
        d = out["docker"]
        assert d["create"] == [f"{named}\n", f"{named}\n", f"{label}\n"]
        assert d["mounts"][1]["Mode"] == "z" and d["mounts"][0]["Mode"] == ""
        assert d["anonymous"] == 1 and d["filled"] and d["in use"] == (True, True)
        assert d["after rm -v"] == (False, True, [fresh])
        assert d["pruned"] == sorted([named, fresh, label])
    finally:
        for run, _image, _net in engines.values():
            run("rm", "-f", "-v", f"{tag}-c", check=False)
            run("volume", "rm", "-f", named, fresh, label, check=False)


def test_mount_and_tmpfs_as_dockers(engine, state_root, tmp_path):
    """--mount (bind, volume, tmpfs) and --tmpfs in both engines: the mount options the
    container sees, inspect's Mounts, HostConfig.Mounts and HostConfig.Tmpfs."""
    eng = engine["engine"]
    cli = Cli(state_root)
    tag = unique("mnt")
    host = tmp_path / "h"
    host.mkdir()
    engines = {
        "docker": (eng.docker, eng.image, "--network"),
        "pyinspect": (cli, "busybox", "--net"),
    }
    out: dict[str, dict] = {"docker": {}, "pyinspect": {}}
    script = "for p in /m /t /run; do grep \" $p \" /proc/mounts | cut -d' ' -f3-4; done"
    try:
        for who, (run, image, net) in engines.items():
            args = [
                "--mount", f"type=bind,source={host},target=/m,readonly",
                "--mount", f"type=volume,source={tag},target=/v",
                "--mount", "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=700",
                "--tmpfs", "/run:size=2m",
            ]  # fmt: skip
            lines = run("run", "--name", tag, net, "none", *args, image, "sh", "-c", script)
            # (the bind's other options are the host filesystem's)
            out[who]["mounts"] = [
                (line.split()[0], sorted(o for o in line.split()[1].split(",") if "=" not in o
                 or o.startswith(("size", "mode"))))
                for line in lines.stdout.splitlines()
            ]  # fmt: skip
            doc = json.loads(run("inspect", tag).stdout)[0]
            out[who]["Mounts"] = [
                {k: v for k, v in m.items() if k != "Source" or m["Type"] != "volume"}
                for m in sorted(doc["Mounts"], key=lambda m: m["Destination"])
            ]  # (Docker's order is its map's)
            out[who]["HostConfig"] = {k: doc["HostConfig"][k] for k in ("Mounts", "Tmpfs", "Binds")}
            run("rm", "-v", tag)
        assert out["pyinspect"] == out["docker"], out
        assert out["docker"]["mounts"][1] == (
            "tmpfs",
            ["mode=700", "nodev", "noexec", "nosuid", "relatime", "rw", "size=1024k"],
        )
    finally:
        for run, _image, _net in engines.values():
            run("rm", "-f", tag, check=False)
            run("volume", "rm", "-f", tag, check=False)


def test_volumes_from_as_dockers(engine, state_root, tmp_path):
    """--volumes-from in both engines: the consumer mounts the source's host path and
    volumes (not its tmpfs), `:ro` makes them read-only, its own -v wins on a path, and
    inspect shows the same Mounts and VolumesFrom."""
    eng = engine["engine"]
    cli = Cli(state_root)
    tag = unique("vf")
    host = tmp_path / "h"
    host.mkdir()
    (host / "f").write_text("host\n")
    engines = {
        "docker": (eng.docker, eng.image, "--network"),
        "pyinspect": (cli, "busybox", "--net"),
    }
    out: dict[str, dict] = {"docker": {}, "pyinspect": {}}
    src, use = f"{tag}-src", f"{tag}-use"
    try:
        for who, (run, image, net) in engines.items():
            before = set(run("volume", "ls", "-q").stdout.split())
            run("run", "--name", src, net, "none", "-v", f"{host}:/h", "-v", f"{tag}:/n",
                "-v", "/anon", "--tmpfs", "/t", "-v", "/own", image,
                "sh", "-c", "echo named > /n/f; echo anon > /anon/f")  # fmt: skip
            script = (
                "cat /h/f /n/f /anon/f; ls /own | wc -l; grep -c ' /t ' /proc/mounts;"
                " touch /n/x 2>/dev/null && echo rw || echo ro"
            )
            r = run("run", "--name", use, net, "none", "--volumes-from", f"{src}:ro",
                    "-v", f"{tag}-mine:/own", image, "sh", "-c", script)  # fmt: skip
            out[who]["sees"] = r.stdout
            doc = json.loads(run("inspect", use).stdout)[0]
            out[who]["Mounts"] = sorted(
                (m["Type"], m["Destination"], m["RW"], m["Source"] if m["Type"] == "bind"
                 else "anonymous" if len(m["Name"]) == 64 else m["Name"], m["Mode"])
                for m in doc["Mounts"]
            )  # fmt: skip
            out[who]["VolumesFrom"] = doc["HostConfig"]["VolumesFrom"]
            r = run("volume", "rm", tag, check=False)
            out[who]["in use"] = r.returncode != 0
            run("rm", "-v", src)
            out[who]["anon kept for the consumer"] = (
                sum(len(n) == 64 for n in run("volume", "ls", "-q").stdout.split()) >= 1
            )
            run("rm", "-v", use)
            left = set(run("volume", "ls", "-q").stdout.split()) - before
            out[who]["left"] = sorted("anonymous" if len(n) == 64 else n for n in left)
        assert out["pyinspect"] == out["docker"], out
        assert out["docker"]["sees"] == "host\nnamed\nanon\n0\n0\nro\n"
    finally:
        for run, _image, _net in engines.values():
            run("rm", "-f", "-v", src, use, check=False)
            run("volume", "rm", "-f", tag, f"{tag}-mine", check=False)
