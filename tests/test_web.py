"""The dashboard for real: `pyinspect serve` with its probes, a real container, real
traffic and a real trace, driven over HTTP and in headless Chromium (Debian's)."""

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import PYINSPECT, Cli, unique
from testbed import tracetopo

pytestmark = pytest.mark.root

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Server:
    """`pyinspect serve` as a subprocess; `url` once it printed its ready line."""

    def __init__(self, root, *args, netns=None):
        argv = [PYINSPECT, "--root", str(root), "serve", "--port", "0", *args]
        if netns:
            argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
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
        server = Server(root)
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
    status, headers, body = world["server"].get(f"/api/traces/{sid}/pcap")
    assert status == 200
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
    req = urllib.request.Request(
        world["server"].url + "api/traces",
        method="POST",
        data=b'{"container": "x"}',
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {world['server'].token}",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as exc:
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


def test_pages_in_headless_chromium(world, artifacts):
    pw = pytest.importorskip("playwright.sync_api")
    server, name = world["server"], world["name"]
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.login_url)
            page.goto(server.url + "containers")
            assert name in page.inner_text("#containers")
            page.screenshot(path=str(artifacts / "web-containers.png"), full_page=True)

            page.goto(server.url + "topology")
            svg = page.inner_html("#topology")
            assert "(bridge)" in svg and f"{name}/eth0" in svg, svg[:500]
            page.screenshot(path=str(artifacts / "web-topology.png"), full_page=True)

            page.goto(server.url)
            assert "tracepoint" in page.inner_text("#hooks")
            page.screenshot(path=str(artifacts / "web-host.png"), full_page=True)

            page.goto(server.url + f"timeline?container={name}")
            page.wait_for_timeout(1000)  # the EventSource connects
            world["cli"]("exec", name, "echo", "live-update")
            page.wait_for_selector("#timeline tr.live >> text=live-update", timeout=20000)
            page.screenshot(path=str(artifacts / "web-timeline.png"), full_page=True)

            page.goto(server.url + "flows")
            assert ":8088" in page.inner_text("#flows")
            page.screenshot(path=str(artifacts / "web-flows.png"), full_page=True)

            page.goto(server.url + "traces")
            with page.expect_download() as dl:
                page.click("a.session-pcap >> nth=0")
            path = dl.value.path()
            out = subprocess.run(
                ["tshark", "-r", str(path)], capture_output=True, text=True, check=False
            )
            assert out.returncode == 0 and out.stdout.strip(), out.stderr
            page.screenshot(path=str(artifacts / "web-traces.png"), full_page=True)

            page.goto(server.url + "doctor")
            page.screenshot(path=str(artifacts / "web-doctor.png"), full_page=True)
        finally:
            browser.close()
