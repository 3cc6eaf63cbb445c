"""Live streams under load: 50 SSE clients on the dashboard while a UDP flood is traced.

    .venv/bin/python bench/sse_flood.py [--seconds 6] [--clients 50]

Builds the trace benchmark's topology (testbed/tracetopo.py, namespaces this script owns)
with a UDP sink behind DNAT, runs `pyinspect serve` (agent probes on) over the same state
root as `pyinspect trace`, and floods the container while the trace runs. In one run,
side by side, two windows of the same flood and the same trace:
  - no stream open: the serve process's CPU (utime + stime from /proc) and the JSON API's
    latency (p50/p95 of sequential requests);
  - `--clients` streams open (half on the trace's ladder stream, half on the timeline
    stream): the same two numbers, and what the streams received.
Prints both, their ratios, and the store queries the stream hub made (one per feed per
tick, however many clients follow it). All traffic stays in namespaces this script
creates, and loopback.
"""

import argparse
import http.client
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import trace_flood  # noqa: E402
from trace_flood import PYINSPECT, SINK, UDP_PORT, tracetopo  # noqa: E402

API = ["/api/traces", "/api/timeline?limit=100", "/api/flows", "/flows"]  # not discovery
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def api_latency(host, port, token, seconds):
    """Sorted request times (s) of sequential API calls over `seconds`."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    auth = {"Authorization": f"Bearer {token}"}
    times, end, k = [], time.monotonic() + seconds, 0
    while time.monotonic() < end:
        t0 = time.perf_counter()
        conn.request("GET", API[k % len(API)], headers=auth)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"{API[k % len(API)]}: HTTP {r.status}")
        times.append(time.perf_counter() - t0)
        k += 1
    conn.close()
    return sorted(times)


class Streams:
    """`n` SSE clients read by one selector thread; counts bytes and events."""

    def __init__(self, host, port, token, paths):
        self.sel = selectors.DefaultSelector()
        self.events = self.bytes = 0
        self.by_path = dict.fromkeys(paths, 0)
        self.socks = []
        for path in paths:
            s = socket.create_connection((host, port))
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, path)
            self.socks.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                self.bytes += len(data)
                n = data.count(b"\ndata: ")
                self.events += n
                self.by_path[key.data] += n

    def close(self):
        self.stop.set()
        self.thread.join()
        ok = 0
        for s in self.socks:
            ok += 1
            s.close()
        return ok


def pct(times, p):
    return times[min(len(times) - 1, int(len(times) * p))] * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6)
    ap.add_argument("--clients", type=int, default=50)
    args = ap.parse_args()
    topo = tracetopo.Topology(prefix="psf")
    sink = server = trace = None
    try:
        ip = topo.ctr_ips[0]
        tracetopo.sh(
            topo.host,
            f"iptables-legacy -w -t nat -A PREROUTING ! -i pt-br0 -p udp "
            f"--dport {UDP_PORT} -j DNAT --to-destination {ip}:{UDP_PORT}",
        )
        sink = subprocess.Popen(["ip", "netns", "exec", topo.ctrs[0], "python3", "-c", SINK])
        with tempfile.TemporaryDirectory(prefix="psf-") as root:
            server = subprocess.Popen(
                [PYINSPECT, "--root", root, "serve", "--port", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            base = tracetopo.dashboard_url(server)
            if not base:
                raise SystemExit("serve did not start")
            host, port = base.split("//")[1].rstrip("/").split(":")
            port = int(port)
            token = (Path(root) / "web-token").read_text().strip()
            trace = trace_flood.start_trace(topo, root)
            time.sleep(1)
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("GET", "/api/traces", headers={"Authorization": f"Bearer {token}"})
            sid = json.loads(conn.getresponse().read())[0]["id"]
            conn.close()
            result = {}
            flood = threading.Thread(
                target=lambda: result.update(
                    zip(
                        ("sent", "pps"),
                        trace_flood.send(topo, 2 * args.seconds + 2),
                        strict=True,
                    )
                )
            )
            flood.start()
            time.sleep(1)  # the flood is up
            c0 = cpu_seconds(server.pid)
            t0 = time.monotonic()
            quiet = api_latency(host, port, token, args.seconds)
            quiet_cpu = (cpu_seconds(server.pid) - c0) / (time.monotonic() - t0)
            half = args.clients // 2
            paths = [f"/api/traces/{sid}/ladder/stream?seconds=600"] * half + [
                "/api/timeline/stream?seconds=600"
            ] * (args.clients - half)
            streams = Streams(host, port, token, paths)
            time.sleep(0.5)
            c0 = cpu_seconds(server.pid)
            t0 = time.monotonic()
            busy = api_latency(host, port, token, args.seconds)
            busy_cpu = (cpu_seconds(server.pid) - c0) / (time.monotonic() - t0)
            opened = streams.close()
            flood.join()
            trace_flood.stop_trace(trace)
            trace = None
            server.terminate()
            server.wait(timeout=60)
        print(
            f"flood: {result.get('sent', 0)} UDP packets at {result.get('pps', 0):.0f}/s,"
            f" traced by `pyinspect trace` (session {sid})"
        )
        print(f"{'':34}{'no streams':>12}{f'{opened} streams':>14}{'ratio':>8}")
        print(
            f"{'serve CPU (cores)':34}{quiet_cpu:12.3f}{busy_cpu:14.3f}"
            f"{busy_cpu / max(quiet_cpu, 1e-3):8.2f}"
        )
        for label, p in (("API p50 (ms)", 0.5), ("API p95 (ms)", 0.95)):
            a, b = pct(quiet, p), pct(busy, p)
            print(f"{label:34}{a:12.1f}{b:14.1f}{b / a:8.2f}")
        print(f"{'API requests in the window':34}{len(quiet):12d}{len(busy):14d}")
        print(f"streams received {streams.events} events, {streams.bytes} bytes:")
        for path, n in streams.by_path.items():
            k = paths.count(path)
            print(f"  {n // k:8d} events to each of the {k} clients of {path}")
        print(
            f"target: API p95 < 100 ms with {opened} streams open: "
            f"{'met' if pct(busy, 0.95) < 100 else 'NOT met'}"
        )
    finally:
        if trace is not None and trace.poll() is None:
            trace.kill()
        if server and server.poll() is None:
            server.kill()
        if sink:
            sink.kill()
            sink.wait()
        topo.close()


if __name__ == "__main__":
    main()
