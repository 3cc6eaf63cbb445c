"""Starting and stopping a trace from the dashboard (POST, CSRF-checked), for real.

The agent serves inside a network namespace that plays the host (the container's
network lives there), so the HTTP client runs in that namespace too.
"""

import json
import subprocess
import sys
import time

import pytest

from conftest import Cli, unique
from testbed import tracetopo

pytestmark = pytest.mark.root

CLIENT = r"""
import json, re, sys, urllib.request
base, method, path = sys.argv[1], sys.argv[2], sys.argv[3]
body = sys.argv[4].encode() if len(sys.argv) > 4 else None
page = urllib.request.urlopen(base + "traces", timeout=30).read().decode()
csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page).group(1)
headers = {"Content-Type": "application/json"}
if sys.argv[5:6] != ["nocsrf"]:
    headers["X-CSRF-Token"] = csrf
req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=60) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"""


def http(netns, base, method, path, body=None, csrf=True):
    argv = [
        "nsenter",
        f"--net=/run/netns/{netns}",
        sys.executable,
        "-c",
        CLIENT,
        base,
        method,
        path,
        json.dumps(body) if body is not None else "",
    ]
    if not csrf:
        argv.append("nocsrf")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert out.returncode == 0, out.stderr
    status, _, text = out.stdout.partition("\n")
    return int(status), json.loads(text) if text.strip().startswith(("{", "[")) else text


def test_trace_started_and_stopped_from_the_dashboard(make_netns, state_root):
    host, client = make_netns("pwt-h"), make_netns("pwt-c")
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
    host.sh("ip addr add 10.232.0.1/24 dev eth0 && ip link set eth0 up")
    client.sh("ip addr add 10.232.0.2/24 dev eth0 && ip link set eth0 up")
    cli = Cli(state_root, netns=host.name)
    name = unique("pwt")
    server = subprocess.Popen(
        cli.argv("serve", "--port", "0", "--no-probes"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = tracetopo.dashboard_url(server)
        assert base, "serve did not start"
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

        status, body = http(
            host.name, base, "POST", "api/traces", {"container": name, "duration": 30}, csrf=False
        )
        assert status == 403, body
        status, body = http(
            host.name, base, "POST", "api/traces", {"container": "no-such-container", "duration": 5}
        )
        assert status == 404 and "no-such-container" in body["error"], body
        status, body = http(
            host.name, base, "POST", "api/traces", {"container": name, "duration": "soon"}
        )
        assert status == 400, body

        status, started = http(
            host.name, base, "POST", "api/traces", {"container": name, "duration": 30}
        )
        assert status == 201, started
        sid = started["id"]
        status, sessions = http(host.name, base, "GET", "api/traces")
        assert any(s["id"] == sid and s["status"] == "running" for s in sessions), sessions
        time.sleep(0.5)
        fetched = client.run(
            "timeout", "10", "wget", "-q", "-O-", "http://10.232.0.1:8088/", check=False
        )
        assert fetched.returncode == 0, fetched.stderr
        status, stopped = http(host.name, base, "POST", f"api/traces/{sid}/stop")
        assert status == 200 and stopped["status"] == "stopped", stopped
        status, flows = http(host.name, base, "GET", f"api/flows?session={sid}")
        assert any(f["orig_dport"] == 8088 and f["reply_sport"] == 80 for f in flows), flows
        status, body = http(host.name, base, "POST", f"api/traces/{sid}/stop")
        assert status == 409 and "already stopped" in body["error"], body
        status, body = http(host.name, base, "POST", "api/traces/999/stop")
        assert status == 404, body
    finally:
        server.terminate()
        server.wait(timeout=60)
        cli("rm", "-f", name, check=False)
