"""DNS lookup latency from a container: through the embedded DNS (127.0.0.11, which
forwards to the upstream) vs a direct query to the same upstream, side by side.

Topology (all namespaces made here, removed at exit): a "host" netns running pyinspect
with a user network and one container on it, and an "upstream" netns wired to the host
that runs testbed/dnsserver.py (dnslib) as the resolver (config.json `dns_upstream`).
One client process in the container's netns sends UDP A queries one at a time, the two
paths alternating query by query: to 127.0.0.11 and straight to the upstream (routed and MASQUERADEd
through the bridge, as any container query without the embedded DNS would be). Also
measured: a container name the embedded DNS answers itself, and the embedded path while a
trace listens (a unix datagram socket in the container's dns-trace/ dir, drained by a
thread here, as `pyinspect trace` does: every answer is reported to it), in rounds
alternating with the untraced ones. Target: embedded/direct median <= 1.5 (untraced).

    python bench/dns_latency.py [--queries 2000] [--rounds 5]
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from testbed import dnsserver  # noqa: E402

PYINSPECT = str(Path(sys.executable).with_name("pyinspect"))
UP_HOST, UP = "10.232.0.1", "10.232.0.2"

CLIENT = r"""
import json, socket, sys, time
from dnslib import DNSRecord
targets, names, n = sys.argv[1].split(","), sys.argv[2].split(","), int(sys.argv[3])
socks = []
for t in targets:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((t, 53))
    socks.append(s)
out, fails = [[] for _ in targets], 0
for i in range(n):
    q = DNSRecord.question(names[i % len(names)])
    q.header.id = i & 0xFFFF
    data = bytes(q.pack())
    for k, s in enumerate(socks):  # the paths alternate query by query
        t = time.perf_counter_ns()
        s.send(data)
        try:
            r = s.recv(4096)
        except OSError:
            fails += 1
            continue
        out[k].append(time.perf_counter_ns() - t)
        if not DNSRecord.parse(r).rr:
            fails += 1
print(json.dumps({"ns": out, "fails": fails}))
"""


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, capture_output=True, text=True, check=check, **kw)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


class Listener:
    """A trace's socket in the container's dns-trace/ dir, drained by a thread."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, "bench.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
        try:  # sun_path is too short for the state dir's path
            self.sock.bind(f"/proc/self/fd/{dfd}/bench.sock")
        finally:
            os.close(dfd)
        self.sock.settimeout(0.2)
        self.reports, self.stopped = 0, False
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()
        time.sleep(0.03)  # the resolver looks for listeners every 10 ms (as the trace waits)

    def _drain(self):
        while not self.stopped:
            try:
                self.sock.recv(65536)
                self.reports += 1
            except TimeoutError:
                continue

    def close(self):
        self.stopped = True
        self.thread.join()
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(os.path.dirname(self.path))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=2000, help="queries per path per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tag = uuid.uuid4().hex[:4]
    host, up = f"pi-bd-h{tag}", f"pi-bd-u{tag}"
    root = Path(tempfile.mkdtemp(prefix="pi-bench-dns-"))
    (root / "config.json").write_text(json.dumps({"network": {"dns_upstream": f"{UP}:53"}}))
    names = [f"ext{i}.test" for i in range(50)]
    server = None
    ctr = f"pi-bd-{tag}"
    pi = ["nsenter", f"--net=/run/netns/{host}", PYINSPECT, "--root", str(root)]
    made = []
    try:
        for ns in (host, up):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh(
            "ip",
            "netns",
            "exec",
            host,
            "sh",
            "-c",
            f"ip link add bdu0 type veth peer name eth0 netns {up} && "
            f"ip addr add {UP_HOST}/24 dev bdu0 && ip link set bdu0 up",
        )
        sh(
            "ip",
            "netns",
            "exec",
            up,
            "sh",
            "-c",
            f"ip addr add {UP}/24 dev eth0 && ip link set eth0 up",
        )
        server = dnsserver.start(up, UP, {n: "10.9.9.9" for n in names})
        sh(*pi, "network", "create", "--subnet", "10.233.0.0/24", "pi-bd-net")
        sh(*pi, "run", "-d", "--name", ctr, "--network", "pi-bd-net", "busybox", "sleep", "3600")
        info = json.loads(sh(*pi, "inspect", ctr).stdout)[0]
        pid = info["State"]["Pid"]
        listen_dir = str(root / "containers" / info["Id"] / "dns-trace")

        def client(targets, qnames, n):
            out = sh(
                "nsenter",
                f"--net=/proc/{pid}/ns/net",
                sys.executable,
                "-c",
                CLIENT,
                ",".join(targets),
                ",".join(qnames),
                str(n),
            ).stdout
            got = json.loads(out)
            if got["fails"]:
                raise SystemExit(f"{got['fails']} failed queries to {targets}")
            return got["ns"]

        client(["127.0.0.11", UP], names, 50)  # warm up both paths (ARP, conntrack)
        emb, direct, local, traced, reports = [], [], [], [], 0
        for _ in range(args.rounds):
            e, d = client(["127.0.0.11", UP], names, args.queries)
            emb += e
            direct += d
            local += client(["127.0.0.11"], [ctr], args.queries // 4)[0]
            listener = Listener(listen_dir)
            try:
                traced += client(["127.0.0.11"], names, args.queries)[0]
            finally:
                time.sleep(0.1)
                listener.close()
            reports += listener.reports
        me, md, ml, mt = median(emb), median(direct), median(local), median(traced)
        print(
            f"queries: {len(emb)} per path ({args.rounds} rounds, the paths alternating),"
            " UDP, one at a time"
        )
        print(
            f"direct    container -> upstream {UP}:53          median {md / 1e3:7.1f} us  "
            f"p99 {pct(direct, 0.99) / 1e3:7.1f} us"
        )
        print(
            f"embedded  container -> 127.0.0.11 -> upstream    median {me / 1e3:7.1f} us  "
            f"p99 {pct(emb, 0.99) / 1e3:7.1f} us"
        )
        print(f"local     container -> 127.0.0.11 (a container name) median {ml / 1e3:7.1f} us")
        print(
            f"traced    container -> 127.0.0.11 -> upstream, a trace listening  median "
            f"{mt / 1e3:7.1f} us  ({reports} of {len(traced)} answers reported; "
            f"traced/untraced embedded = {mt / me:.2f})"
        )
        ratio = me / md
        print(
            f"ratio embedded/direct (median) = {ratio:.2f} (target <= 1.5: "
            f"{'met' if ratio <= 1.5 else 'NOT met'})"
        )
        return 0 if ratio <= 1.5 else 1
    except KeyboardInterrupt:
        return 130
    finally:
        sh(*pi, "rm", "-f", ctr, check=False)
        sh(*pi, "network", "rm", "pi-bd-net", check=False)
        if server is not None:
            server.terminate()
            server.wait()
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)
        sh("rm", "-rf", str(root), check=False)


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
