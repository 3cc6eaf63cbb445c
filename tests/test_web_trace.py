"""Starting and stopping a trace from the dashboard (POST, CSRF-checked), for real.

The agent serves inside a network namespace that plays the host (the container's
network lives there), so the HTTP client runs in that namespace too.
"""

import functools
import json
import re
import subprocess
import sys
import time

import pytest

from conftest import Cli, unique
from testbed import tracetopo

pytestmark = pytest.mark.root

CLIENT = r"""
import json, re, sys, urllib.request
opts = json.loads(sys.argv[1])
base, auth = opts["base"], {"Authorization": "Bearer " + opts["token"]}
host = {"Host": opts["host"]} if opts.get("host") else {}
page = urllib.request.urlopen(urllib.request.Request(base + "traces", headers=auth), timeout=30)
csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.read().decode()).group(1)
headers = {"Content-Type": "application/json", **auth, **host}
if opts["csrf"]:
    headers["X-CSRF-Token"] = csrf
body = opts["body"].encode() if opts["body"] else None
req = urllib.request.Request(base + opts["path"], data=body, method=opts["method"], headers=headers)
try:
    with urllib.request.urlopen(req, timeout=60) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"""


def http(netns, base, token, method, path, body=None, csrf=True, host=None):
    """(status, JSON or text) of a request made from inside `netns` with the token (and
    the CSRF value a page of the dashboard embeds, unless csrf=False)."""
    opts = {
        "base": base,
        "token": token,
        "method": method,
        "path": path,
        "body": json.dumps(body) if body is not None else "",
        "csrf": csrf,
        "host": host,
    }
    argv = ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", CLIENT, json.dumps(opts)]
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
        api = functools.partial(
            http, host.name, base, (state_root / "web-token").read_text().strip()
        )
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

        status, body = api("POST", "api/traces", {"container": name, "duration": 30}, csrf=False)
        assert status == 403, body
        status, body = api("POST", "api/traces", {"container": "no-such-container", "duration": 5})
        assert status == 404 and "no-such-container" in body["error"], body
        status, body = api("POST", "api/traces", {"container": name, "duration": "soon"})
        assert status == 400, body

        # the adversarial run of issue 21 (DNS rebinding): a page fetched as evil.example
        # hands out no CSRF value, and the POST that carries one starts nothing
        status, page = api("GET", "traces", host="evil.example")
        assert status == 403 and not re.search(r'csrf-token" content="[0-9a-f]+"', page), page
        status, body = api(
            "POST", "api/traces", {"container": name, "duration": 30}, host="evil.example"
        )
        assert status == 403, body
        status, sessions = api("GET", "api/traces")
        assert status == 200 and sessions == [], sessions
        raw = host.sh("iptables-legacy-save; iptables-nft-save; nft list tables").stdout
        assert "PI-TRACE" not in raw and "pyinspect_trace" not in raw, raw

        status, started = api("POST", "api/traces", {"container": name, "duration": 30})
        assert status == 201, started
        sid = started["id"]
        status, sessions = api("GET", "api/traces")
        assert any(s["id"] == sid and s["status"] == "running" for s in sessions), sessions
        time.sleep(0.5)
        fetched = client.run(
            "timeout", "10", "wget", "-q", "-O-", "http://10.232.0.1:8088/", check=False
        )
        assert fetched.returncode == 0, fetched.stderr
        status, stopped = api("POST", f"api/traces/{sid}/stop")
        assert status == 200 and stopped["status"] == "stopped", stopped
        status, flows = api("GET", f"api/flows?session={sid}")
        assert any(f["orig_dport"] == 8088 and f["reply_sport"] == 80 for f in flows), flows
        status, body = api("POST", f"api/traces/{sid}/stop")
        assert status == 409 and "already stopped" in body["error"], body
        status, body = api("POST", "api/traces/999/stop")
        assert status == 404, body
    finally:
        server.terminate()
        server.wait(timeout=60)
        cli("rm", "-f", name, check=False)
