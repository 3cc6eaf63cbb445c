"""`pyinspect serve` over real sockets: 200 live streams beside a responsive API, the
Unix socket, a clean stop with streams open. (Access rules: test_web_auth.py.)"""

import asyncio
import http.client
import os
import selectors
import signal
import socket
import stat
import subprocess
import time

import pytest

from pyinspect.config import database_path
from pyinspect.store import Store
from pyinspect.web.streams import Busy, Feed, StreamHub

from conftest import PYINSPECT
from testbed import tracetopo

pytestmark = pytest.mark.root


class Serve:
    def __init__(self, root, *args):
        self.root = root
        self.proc = subprocess.Popen(
            [PYINSPECT, "--root", str(root), "serve", "--no-probes", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self.url = tracetopo.dashboard_url(self.proc, self.lines) if "--port" in args else None
        if self.url is None:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                if "(ready)" in line:
                    break
        self.token = (root / "web-token").read_text().strip()

    def stop(self, timeout=30):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def raw_request(sock, path, token, host="localhost"):
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())


def read_head(sock, timeout=10):
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def test_200_streams_and_the_api_still_answers_fast(state_root):
    with Store(database_path(state_root)) as store:
        store.insert_events([{"ts_ns": time.time_ns(), "kind": "exec", "pid": 1, "comm": "old"}])
    server = Serve(state_root, "--port", "0")
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    port = int(port)
    streams, sel = [], selectors.DefaultSelector()
    try:
        for _ in range(200):
            s = socket.create_connection((host, port))
            raw_request(s, "/api/timeline/stream?seconds=120", server.token, f"{host}:{port}")
            streams.append(s)
        for s in streams:
            head, rest = read_head(s)
            assert head.startswith("HTTP/1.1 200") and "text/event-stream" in head, head
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, bytearray(rest))
        # the API with 200 streams open: p95 of 100 requests
        conn = http.client.HTTPConnection(host, port, timeout=10)
        auth = {"Authorization": f"Bearer {server.token}"}
        times = []
        for path in ["/api/traces", "/api/timeline?limit=50", "/flows", "/api/flows"] * 25:
            t0 = time.perf_counter()
            conn.request("GET", path, headers=auth)
            r = conn.getresponse()
            r.read()
            times.append(time.perf_counter() - t0)
            assert r.status == 200, (path, r.status)
        times.sort()
        p95 = times[94] * 1000
        print(f"API with 200 streams open: p50 {times[49] * 1000:.1f} ms, p95 {p95:.1f} ms")
        assert p95 < 100, times
        # a new event reaches all 200 streams
        with Store(database_path(state_root)) as store:
            store.insert_events(
                [{"ts_ns": time.time_ns(), "kind": "exec", "pid": 2, "comm": "pi-dash-new"}]
            )
        got, deadline = set(), time.monotonic() + 20
        while len(got) < 200 and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                buf = key.data
                buf += key.fileobj.recv(65536)
                if b"pi-dash-new" in buf:
                    got.add(key.fileobj.fileno())
        assert len(got) == 200, f"{len(got)} of 200 streams got the new event"
        assert b"old" not in b"".join(bytes(k.data) for k in sel.get_map().values())
        # stopping with 200 streams open is quick and clean
        t0 = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - t0 < 15
    finally:
        for s in streams:
            s.close()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_unix_socket_is_0600_and_needs_the_token(state_root, tmp_path):
    path = tmp_path / "dash.sock"
    server = Serve(state_root, "--unix-socket", str(path))
    try:
        assert not [ln for ln in server.lines if "dashboard login" in ln], server.lines  # no TCP
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o777 == 0o600

        def get(token, host="localhost"):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            try:
                raw_request(s, "/api/traces", token, host)
                head, _ = read_head(s)
                return int(head.split()[1])
            finally:
                s.close()

        assert get(None) == 401
        assert get("é" * 43) == 401
        assert get(server.token) == 200
        assert get(server.token, host="evil.example") == 403
        assert server.stop() == 0
        assert not path.exists()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_stream_hub_caps_streams_and_shares_one_query(state_root):
    class Counting:
        def __init__(self):
            self.calls = 0

        def timeline(self, **kw):
            self.calls += 1
            return [{"id": 5, "kind": "exec"}] if kw["after_id"] < 5 else []

    ov = Counting()
    loop = asyncio.new_event_loop()
    hub = StreamHub(ov, loop, max_streams=3, interval=0.05)
    try:
        subs = [hub.subscribe(Feed("timeline", (None,)), 0, 60) for _ in range(3)]
        with pytest.raises(Busy):
            hub.subscribe(Feed("timeline", (None,)), 0, 60)
        time.sleep(0.5)
        loop.run_until_complete(asyncio.sleep(0.05))  # deliver the queued rows
        for s in subs:
            assert "data: " in s.queue.get_nowait() and s.cursor == 5
        polls = ov.calls
        assert 0 < polls <= 20  # one query per tick for the three streams
        hub.unsubscribe(subs[0])
        hub.subscribe(Feed("timeline", (None,)), 5, 60)  # room again
    finally:
        hub.close()
        loop.close()


def test_a_full_hub_answers_503_with_a_clear_message(state_root):
    """Through the ASGI app serve runs: past max_streams a stream is a 503, not a hang."""
    from pyinspect.web.app import create_app
    from pyinspect.web.streams import Dashboard

    app = create_app(state_root, token="t" * 43)
    dash = Dashboard(app, app.extensions["pyinspect"], workers=2, max_streams=0)

    async def get(path):
        dash.start(asyncio.get_running_loop())
        sent = []
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"seconds=5",
            "root_path": "",
            "scheme": "http",
            "server": ("127.0.0.1", 8900),
            "client": ("127.0.0.1", 40000),
            "headers": [(b"host", b"127.0.0.1:8900"), (b"authorization", b"Bearer " + b"t" * 43)],
        }

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await asyncio.wait_for(dash(scope, receive, send), 10)
        dash.hub.close()
        return sent

    sent = asyncio.run(get("/api/timeline/stream"))
    assert sent[0]["status"] == 503
    body = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert "live stream refused" in body and "close some dashboard tabs" in body
    assert asyncio.run(get("/api/traces"))[0]["status"] == 200  # the API still answers
