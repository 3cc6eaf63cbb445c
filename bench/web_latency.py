"""Dashboard benchmark: page and API p95 latency with 100 running containers and 1M events
stored (target < 100 ms), through the real `pyinspect serve`.

Fills a fresh store with N synthetic-but-realistic events (many containers, kinds and
pids, spread over a day), starts M real runc containers (busybox `sleep`, each in its own
network namespace, on a bridge in a "host" namespace of the bench, with a DNAT rule
publishing a port to each and a memory limit), serves the store with `pyinspect serve
--no-probes` (uvicorn, as users run it) and times what the pages request: the timeline
queries (newest page, a container's page, a kind filter, a deep page, a live-tail poll),
the Containers, Topology, Doctor and Flows pages, the containers and map APIs, a
container page and its stats poll. Prints p50/p95 per request and the ratio of p95 to the
target, and each p95 against a static file's measured in the same run (the baseline:
what any request costs through serve, its auth and Flask).
Everything it made (containers, cgroups, namespaces, rules, the store) is removed.

    .venv/bin/python bench/web_latency.py [--events 1000000] [--containers 100] [--requests 100]
"""

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

KINDS = ["exec", "fork", "exit", "setns", "cgroup_attach_task", "link_up", "clone"]


def fill(store, n, containers=50, batch=50_000):
    now = time.time_ns()
    rng = random.Random(1)
    start = now - 86400 * 10**9
    step = 86400 * 10**9 // n
    db = store.db
    cols = (
        "ts_ns",
        "kind",
        "pid",
        "ppid",
        "comm",
        "cgroup_id",
        "netns",
        "pidns",
        "mntns",
        "container_id",
        "container_name",
        "detail",
    )
    sql = f"INSERT INTO events ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
    for base in range(0, n, batch):
        rows = []
        for i in range(base, min(n, base + batch)):
            c = rng.randrange(containers + 1)
            cid = f"{c:064x}" if c else None
            rows.append(
                (
                    start + i * step,
                    rng.choice(KINDS),
                    rng.randrange(2, 60000),
                    1,
                    "sh",
                    c,
                    4026530000 + c,
                    4026540000 + c,
                    4026550000 + c,
                    cid,
                    f"c{c}" if c else None,
                    json.dumps({"argv": ["sh", "-c", "true"]}),
                )
            )
        with db.conn:
            db.conn.executemany(sql, rows)


def timed(url, n, token):
    out = []
    for _ in range(n):
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
        out.append((time.perf_counter() - t) * 1000)
    return out


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


class Containers:
    """M runc containers (busybox sleep) on bridge br0 of the namespace `host`, each with
    an IP, a DNAT rule publishing 20000+i to port 80 and a 32 MiB memory limit."""

    def __init__(self, n):
        self.n = n
        self.tag = os.urandom(3).hex()
        self.host = f"pi-bw-{self.tag}"
        self.dir = Path(tempfile.mkdtemp(prefix="pyinspect-bench-runc-"))
        self.ids = []

    def __enter__(self):
        try:
            return self._start()
        except BaseException:  # noqa: BLE001 - a half-made set is removed, then re-raised
            self.__exit__()
            raise

    def _start(self):
        sh("ip", "netns", "add", self.host)
        sh("ip", "-n", self.host, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.host, "addr", "add", "10.250.0.1/16", "dev", "br0")
        sh("ip", "-n", self.host, "link", "set", "br0", "up")
        rootfs = self.dir / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
        (rootfs / "bin" / "sleep").symlink_to("busybox")
        sh("runc", "spec", cwd=self.dir)
        base = json.loads((self.dir / "config.json").read_text())
        base["process"]["args"] = ["sleep", "100000"]
        base["process"]["terminal"] = False
        base["root"] = {"path": str(rootfs), "readonly": True}
        rules = ["*nat"]
        for i in range(self.n):
            cid = f"pi-bw-{self.tag}-{i:03d}"
            b = self.dir / cid
            b.mkdir()
            spec = json.loads(json.dumps(base))
            spec["linux"]["cgroupsPath"] = f"/pi-bw-{self.tag}/{cid}"
            spec["linux"].setdefault("resources", {})["memory"] = {"limit": 32 << 20}
            spec["annotations"] = {"org.opencontainers.image.ref.name": "bench/busybox:1"}
            (b / "config.json").write_text(json.dumps(spec))
            subprocess.run(  # the container keeps its stdio: no pipes to wait on
                ["runc", "run", "-d", "--bundle", str(b), cid],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
                timeout=60,
            )
            self.ids.append(cid)
            pid = json.loads(sh("runc", "state", cid).stdout)["pid"]
            ip = f"10.250.{1 + i // 250}.{1 + i % 250}"
            sh("ip", "-n", self.host, "link", "add", f"v{i}", "type", "veth", "peer", "name",
               "eth0", "netns", str(pid))  # fmt: skip
            sh("ip", "-n", self.host, "link", "set", f"v{i}", "master", "br0", "up")
            up = f"ip addr add {ip}/16 dev eth0 && ip link set eth0 up && ip link set lo up"
            sh("nsenter", f"--net=/proc/{pid}/ns/net", "sh", "-c", up)
            rules.append(
                f"-A PREROUTING -p tcp --dport {20000 + i} -j DNAT --to-destination {ip}:80"
            )
        rules.append("COMMIT\n")
        subprocess.run(
            ["ip", "netns", "exec", self.host, "iptables-nft-restore", "--noflush"],
            input="\n".join(rules), text=True, check=True,
        )  # fmt: skip
        return self

    def __exit__(self, *exc):
        for cid in self.ids:
            sh("runc", "kill", cid, "KILL", check=False)
        for cid in self.ids:
            for _ in range(100):
                if sh("runc", "delete", "-f", cid, check=False).returncode == 0:
                    break
                time.sleep(0.05)
        for d in Path("/sys/fs/cgroup").iterdir():
            with contextlib.suppress(OSError):
                (d / f"pi-bw-{self.tag}").rmdir()
        sh("ip", "netns", "del", self.host, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def serve(root):
    """`pyinspect serve --no-probes` on a free loopback port: (process, base URL, token)."""
    exe = Path(sys.executable).with_name("pyinspect")
    proc = subprocess.Popen(
        [str(exe), "--root", str(root), "serve", "--port", "0", "--no-probes"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for line in proc.stdout:
        m = re.search(r"dashboard: (http://\S+/) \(ready\)", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, m.group(1), (root / "web-token").read_text().strip()
    raise SystemExit(f"serve did not start: exit {proc.wait()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--containers", type=int, default=100)
    ap.add_argument("--requests", type=int, default=100)
    args = ap.parse_args()

    def stop(*_):  # clean up as on Ctrl-C, once: a second signal must not cut the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop)

    from pyinspect.config import database_path
    from pyinspect.store import Store

    root = Path(tempfile.mkdtemp(prefix="pyinspect-bench-web-"))
    t = time.perf_counter()
    with Store(database_path(root)) as s:
        fill(s, args.events)
    print(f"stored {args.events} events in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    with Containers(args.containers) as ctrs:
        print(f"started {args.containers} runc containers in {time.perf_counter() - t:.1f}s")
        proc, url, token = serve(root)
        try:
            run(url, token, ctrs, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            shutil.rmtree(root, ignore_errors=True)


def run(url, token, ctrs, args):
    api = url + "api/timeline"
    req = urllib.request.Request(url + "api/timeline?limit=1", headers={
        "Authorization": f"Bearer {token}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as r:
        last = json.loads(r.read())[0]["id"]
    one = ctrs.ids[len(ctrs.ids) // 2]
    queries = {
        "static file (baseline)": url + "static/style.css",
        "/metrics (a scrape, not a page)": url + "metrics",
        "timeline newest 100": api,
        "timeline container c7": api + "?container=c7",
        "timeline kind exec": api + "?kind=exec",
        "timeline container + kind": api + "?container=c7&kind=exec",
        "timeline page 50 (offset 5000)": api + "?offset=5000",
        "timeline live tail (after_id)": api + f"?after_id={last - 10}",
        "page /containers": url + "containers",
        "api /api/containers": url + "api/containers",
        "page /topology": url + "topology",
        "svg /topology.svg (2 s poll)": url + "topology.svg",
        "api /api/map": url + "api/map",
        f"page /containers/{one[-3:]}": url + f"containers/{one}",
        "api stats poll (2 s)": url + f"api/containers/{one}/stats",
        "page /doctor": url + "doctor",
        "page /flows": url + "flows",
        "page /timeline": url + "timeline",
    }
    worst, base = 0.0, None
    print(f"{'request':34} {'p50 ms':>8} {'p95 ms':>8} {'p95/100ms':>10} {'p95/base':>9}")
    for label, q in queries.items():
        timed(q, 3, token)
        ms = timed(q, args.requests, token)
        p95 = statistics.quantiles(ms, n=20)[18]
        if base is None:
            base = p95
        elif not label.startswith("/metrics"):
            worst = max(worst, p95)
        print(
            f"{label:34} {statistics.median(ms):8.1f} {p95:8.1f} {p95 / 100:10.2f} "
            f"{p95 / base:9.1f}"
        )
    print(
        f"{args.containers} containers, {args.events} events: worst p95 of the pages and "
        f"their API calls {worst:.1f} ms: {'meets' if worst < 100 else 'misses'} the "
        "< 100 ms target"
    )


if __name__ == "__main__":
    main()
