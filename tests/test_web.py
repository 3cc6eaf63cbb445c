"""The dashboard for real: `pyinspect serve` with its probes, a real container, real
traffic and a real trace, driven over HTTP and in headless Chromium (Debian's)."""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from pyinspect.host.events import COLUMNS as EV_COLUMNS
from pyinspect.probes.netns import in_netns

from conftest import PYINSPECT, Cli, unique
from testbed import tracetopo

pytestmark = pytest.mark.root


class Server:
    """`pyinspect serve` as a subprocess; `url` once it printed its ready line."""

    def __init__(self, root, *args, netns=None):
        argv = [PYINSPECT, "--root", str(root), "serve", "--port", "0", *args]
        if netns:
            argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
        self.netns = f"/run/netns/{netns}" if netns else None
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines = []
        self.url = tracetopo.dashboard_url(self.proc, self.lines)
        assert self.url, f"serve did not become ready: {self.lines}"
        self.token = (root / "web-token").read_text().strip()
        logins = [line.split(": ", 1)[1] for line in self.lines if "dashboard login" in line]
        assert logins and logins[0].endswith(f"?token={self.token}"), self.lines
        self.login_url = logins[0]

    def get(self, path, headers=None, token=True):
        auth = {"Authorization": f"Bearer {self.token}"} if token else {}
        req = urllib.request.Request(
            self.url + path.lstrip("/"), headers={**auth, **(headers or {})}
        )
        with in_netns(self.netns):  # this thread, where the server listens
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers, e.read()

    def json(self, path):
        status, _, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """A host netns with a published busybox httpd container, a client netns, one real
    trace session of a fetch, and the dashboard serving the same state root."""
    from conftest import Netns

    root = tmp_path_factory.mktemp("web") / "root"
    root.mkdir()
    host, client = Netns(unique("pw-h")), Netns(unique("pw-c"))
    cli = Cli(root, netns=host.name)
    name = unique("pw")
    server = None
    try:
        subprocess.run(
            [
                "ip",
                "-n",
                host.name,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                client.name,
            ],
            check=True,
        )
        host.sh("ip addr add 10.231.0.1/24 dev eth0 && ip link set eth0 up")
        client.sh("ip addr add 10.231.0.2/24 dev eth0 && ip link set eth0 up")
        server = Server(root, netns=host.name)  # where the container's network lives
        cli(
            "run",
            "-d",
            "--name",
            name,
            "-p",
            "8088:80",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/var/www",
        )
        tracer = subprocess.Popen(
            cli.argv("trace", "--container", name, "--duration", "6"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        out = []
        while True:
            line = tracer.stdout.readline()
            assert line, f"trace exited early: {out}"
            out.append(line)
            if "ready" in line.lower() or "Ctrl-C to stop" in line:
                break
        client.run("wget", "-q", "-O-", "http://10.231.0.1:8088/", timeout=20)
        rest, _ = tracer.communicate(timeout=90)
        assert tracer.returncode == 0, "".join(out) + rest
        yield {
            "root": root,
            "host": host,
            "client": client,
            "cli": cli,
            "name": name,
            "server": server,
        }
    finally:
        if server:
            server.stop()
        cli("rm", "-f", name, check=False)
        client.remove()
        host.remove()


def test_api_lists_the_container_with_its_network(world):
    rows = world["server"].json("/api/containers")
    mine = [r for r in rows if r["name"] == world["name"]]
    assert len(mine) == 1, rows
    c = mine[0]
    assert c["status"] == "running"
    assert re.match(r"\d+\.\d+\.\d+\.\d+$", c["ip"]), c
    assert ":8088->80/tcp" in c["ports"]
    assert c["veth"].startswith("veth")


def test_timeline_has_the_containers_exec_events(world):
    world["cli"]("exec", world["name"], "echo", "hello-web")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = world["server"].json(f"/api/timeline?container={world['name']}&kind=exec")
        if any("hello-web" in r["summary"] for r in rows):
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"no exec event for the container: {rows}")


def test_timeline_interleaves_the_traced_connection(world):
    rows = world["server"].json(f"/api/timeline?container={world['name']}&limit=1000")
    kinds = [r["kind"] for r in rows]
    assert "exec" in kinds and "flow" in kinds, kinds
    flow = next(r for r in rows if r["kind"] == "flow")
    assert ":8088" in flow["summary"] and "DNAT" in flow["summary"], flow
    only = world["server"].json(f"/api/timeline?container={world['name']}&kind=flow")
    assert only and {r["kind"] for r in only} == {"flow"}


def test_flows_show_nat_before_and_after(world):
    sessions = world["server"].json("/api/traces")
    mine = [s for s in sessions if s["container_name"] == world["name"]]
    assert mine and mine[0]["packets"] > 0, sessions
    flows = world["server"].json(f"/api/flows?session={mine[0]['id']}")
    http = [f for f in flows if f["orig_dport"] == 8088]
    assert http, flows
    assert http[0]["orig_dst"] == "10.231.0.1"
    assert http[0]["reply_sport"] == 80


def test_pcap_download_reads_in_tshark(world, tmp_path):
    sid = world["server"].json("/api/traces")[0]["id"]
    temps = set(glob.glob(os.path.join(tempfile.gettempdir(), "pyinspect-export-*")))
    status, headers, body = world["server"].get(f"/api/traces/{sid}/pcap")
    assert status == 200
    # the export the download was served from is gone already
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "pyinspect-export-*"))) == temps
    assert "attachment" in headers["Content-Disposition"]
    path = tmp_path / "dl.pcapng"
    path.write_bytes(body)
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "tcp.dstport"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "8088" in out and "80" in out


def test_bad_requests_get_clear_4xx(world):
    s = world["server"]
    status, _, body = s.get("/api/containers/no-such-container")
    assert status == 404 and b"no such container" in body
    status, _, body = s.get("/api/timeline?limit=lots")
    assert status == 400 and b"bad limit" in body
    status, _, body = s.get("/api/pcaps/..%2f..%2fetc%2fpasswd")
    assert status == 404
    status, _, body = s.get("/api/traces/999999/pcap")
    assert status == 404
    status, _, body = s.get("/runbooks/..%2f..%2fsetup.cfg")
    assert status == 404


def test_post_needs_csrf(world):
    s = world["server"]
    req = urllib.request.Request(
        world["server"].url + "api/traces",
        method="POST",
        data=b'{"container": "x"}',
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {world['server'].token}",
        },
    )
    with in_netns(s.netns), pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 403


def test_metrics(world):
    status, _, body = world["server"].get("/metrics")
    assert status == 200
    text = body.decode()
    assert re.search(r'pyinspect_events_total\{kind="exec"\} [1-9]', text), text
    assert re.search(r"pyinspect_packets_captured_total [1-9]", text)
    assert 'pyinspect_probe_up{probe="process"} 1.0' in text


def _status_in_netns(netns, url, headers=None):
    """HTTP status of GET url, fetched from inside `netns`."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "hdrs = dict(h.split(': ', 1) for h in sys.argv[2:])\n"
        "req = urllib.request.Request(sys.argv[1], headers=hdrs)\n"
        "try:\n    print(urllib.request.urlopen(req, timeout=10).status)\n"
        "except urllib.error.HTTPError as e:\n    print(e.code)\n"
    )
    hdrs = [f"{k}: {v}" for k, v in (headers or {}).items()]
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", code, url, *hdrs],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return int(out.stdout.strip() or 0)


def test_token_required_off_loopback(tmp_path, make_netns):
    """Bound to every address (inside a netns of the test's own), every request needs the
    token, which serve prints in its login URL and keeps across restarts."""
    ns = make_netns("pw-t")
    root = tmp_path / "root"
    server = Server(root, "--bind", "0.0.0.0", "--no-probes", netns=ns.name)
    try:
        token = server.token
        assert (root / "web-token").stat().st_mode & 0o777 == 0o600
        url = server.url.replace("0.0.0.0", "127.0.0.1") + "api/host"
        assert _status_in_netns(ns.name, url) == 401
        assert _status_in_netns(ns.name, url, {"Authorization": "Bearer nope"}) == 401
        assert _status_in_netns(ns.name, url, {"Authorization": f"Bearer {token}"}) == 200
        assert _status_in_netns(ns.name, url + f"?token={token}") == 200
        evil = {"Authorization": f"Bearer {token}", "Host": "evil.example"}
        assert _status_in_netns(ns.name, url, evil) == 403
    finally:
        server.stop()
    server = Server(root, "--bind", "0.0.0.0", "--no-probes", netns=ns.name)
    try:  # the token is kept
        assert server.token == token
    finally:
        server.stop()


def test_pages_and_a_live_trace_in_chromium(world):
    """Debian's Chromium (Selenium, chromium-driver): every page, then a trace started from
    the page while the client fetches through -p, its ladder growing live with the DNAT
    on it, stopped from the page, its pcapng downloaded and read by tshark. Screenshots
    of each page go to tests/artifacts/screenshots/."""
    from helpers import browser

    why = browser.available()
    if why:
        pytest.skip(why)
    server, name, client = world["server"], world["name"], world["client"]
    # chromedriver and Chromium start inside the host netns (where serve listens); this
    # thread stays there while it drives them
    with in_netns(server.netns), browser.chromium() as b:
        assert b.login(server.login_url) == server.url  # a clean URL, the token in a cookie
        assert "token=" not in b.url
        b.open(server.url)
        b.wait_text("#hooks", "tracepoint")
        b.screenshot("host")
        b.open(server.url + "containers")
        b.wait_text("#containers", name)
        b.screenshot("containers")
        b.open(server.url + "topology")
        b.wait_count("#topology svg", 1)
        b.screenshot("topology")
        b.open(server.url + f"timeline?container={name}")
        time.sleep(1)  # the EventSource connects
        world["cli"]("exec", name, "echo", "live-update")
        b.wait_text("#timeline", "live-update")
        # a row stored late (a new container's first records wait for discovery) goes
        # where its time is: below the newer live-update row, not on top
        (shown,) = server.json(f"/api/timeline?container={name}&kind=exec&limit=1")
        assert shown["detail"]["argv"] == ["echo", "live-update"], shown
        from pyinspect.config import database_path
        from pyinspect.store import Store

        with Store(database_path(world["root"])) as s:
            late = dict(shown, ts_ns=shown["ts_ns"] - 1_000_000, comm="late")
            late["detail"] = {"argv": ["echo", "stored-late"]}
            s.insert_events([{k: late.get(k) for k in EV_COLUMNS}])
        b.wait_text("#timeline", "stored-late")
        rows = [tr.text for tr in b.driver.find_elements("css selector", "#timeline tbody tr")]
        at = {
            w: next(i for i, t in enumerate(rows) if w in t) for w in ("live-update", "stored-late")
        }
        assert at["live-update"] < at["stored-late"], rows
        b.screenshot("timeline")
        b.open(server.url + "flows")
        b.wait_text("#flows", ":8088")
        b.screenshot("flows")
        b.open(server.url + "doctor")
        b.screenshot("doctor")

        # start a trace from the Traces page: it opens the trace view
        b.open(server.url + "traces")
        b.screenshot("traces")
        b.fill("#start-trace input[name=duration]", "120")
        from selenium.webdriver.support.ui import Select

        Select(b.driver.find_element("css selector", "#start-trace select")).select_by_visible_text(
            name
        )
        b.click("#start-trace button")
        b.wait(lambda b: "/traces/" in b.url, 60, "the trace view")
        sid = int(b.url.rstrip("/").rsplit("/", 1)[1])
        b.wait_text("#trace-status", "running")
        b.wait(lambda b: b.driver.find_element("id", "trace").get_attribute("data-live") == "on")
        assert b.count(".ladder-cols text.col-name") >= 4  # uplink, bridge, veth, eth0
        cols = b.text(".ladder-head")
        assert "uplink" in cols and "bridge" in cols and f"{name}/eth0" in cols, cols
        before = b.count(".packet")
        for _ in range(2):  # while the page is open: rows arrive over SSE
            got = client.run("wget", "-q", "-O-", "http://10.231.0.1:8088/", timeout=20)
            assert "It works" in got.stdout, got
        b.wait_count(".packet", before + 6, timeout=30)
        nat = b.wait_text(".ladder-body", "DNAT")
        assert re.search(r"DNAT \S+:\d+ -> \d+\.\d+\.\d+\.\d+:80", nat), nat
        assert "un-DNAT 10.231.0.1:8088 -> 10.231.0.2" in nat, nat
        b.click("details.rules summary")
        assert "nat" in b.text("details.rules[open]").lower()
        b.screenshot("trace-live")

        b.click("#trace-stop")
        b.wait_text("#trace-status", "stopped", timeout=60)
        drawn = b.count(".packet")
        b.wait(lambda b: b.driver.find_element("id", "trace").get_attribute("data-live") == "done")
        b.screenshot("trace-stopped")
        # still there after it stopped (from the store and the segment files)
        b.open(server.url + f"traces/{sid}")
        b.wait(lambda b: b.driver.find_element("id", "trace").get_attribute("data-ready") == "1")
        assert b.count(".packet") >= drawn
        b.click("#pcap-session")
        pcap = b.wait_download(f"trace-{sid}.pcapng")
        ports = _tshark_ports(pcap)
        assert "8088" in ports and "80" in ports, ports
        # one flow's view and its own pcapng
        b.click(".flow-link")
        b.wait(lambda b: "flow=" in b.url)
        b.wait(lambda b: b.driver.find_element("id", "trace").get_attribute("data-ready") == "1")
        b.wait_count(".packet", 4)
        b.screenshot("trace-flow")
        b.click("#pcap-flow")
        flow_pcap = b.wait_download("-flow-" + b.url.rsplit("flow=", 1)[1] + ".pcapng")
        assert set(_tshark_ports(flow_pcap)) <= set(ports)
        assert not [e for e in b.console_errors() if "favicon" not in e], b.console_errors()


def _tshark_ports(path):
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out, f"tshark read no TCP packets from {path}"
    return out
