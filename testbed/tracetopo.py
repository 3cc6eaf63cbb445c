"""A hand-made copy of what `pyinspect run -p` builds, inside namespaces the caller owns.

    client (10.77.N.2) --veth-- [host: up0 10.77.N.1, wan0 10.88.N.1, pt-br0 172.30.N.1]
                                   |-- vc<i> -- eth0 of container <i> (172.30.N.<10+i>)
    upstream (10.88.N.2) --veth-- host

Rules (legacy iptables, like the runtime): DNAT `! -i pt-br0 -p tcp --dport 8088` to the first
container's :80, MASQUERADE for the subnet. Used by tests/test_trace*.py and bench/trace_flood.py.
Nothing here touches the machine's own namespace except creating/removing named netns.
"""

import json
import os
import re
import subprocess
import uuid

from pyinspect.proc import delete_netns

from .waits import wait_listen


def sh(ns, script, check=True, timeout=60):
    argv = ["ip", "netns", "exec", ns, "sh", "-c", script] if ns else ["sh", "-c", script]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{ns}: {script}: {proc.returncode} {proc.stderr.strip()}")
    return proc


class Topology:
    """client, host, upstream and N container namespaces; `close()` removes all of them."""

    def __init__(
        self, prefix="pt", containers=1, listen=True, dnat_port=8088, net=None, backend="legacy"
    ):
        tag = uuid.uuid4().hex[:5]
        self.n = net if net is not None else (int(tag, 16) % 200) + 20
        self.host = f"{prefix}-h-{tag}"
        self.client = f"{prefix}-c-{tag}"
        self.upstream = f"{prefix}-u-{tag}"
        self.ctrs = [f"{prefix}-k{i}-{tag}" for i in range(containers)]
        self.bridge = "pt-br0"
        self.host_ip = f"10.77.{self.n}.1"
        self.client_ip = f"10.77.{self.n}.2"
        self.wan_ip = f"10.88.{self.n}.1"
        self.upstream_ip = f"10.88.{self.n}.2"
        self.subnet = f"172.30.{self.n}.0/24"
        self.gateway = f"172.30.{self.n}.1"
        self.ctr_ips = [f"172.30.{self.n}.{10 + i}" for i in range(containers)]
        self.dnat_port = dnat_port
        self.ipt = "iptables-legacy" if backend == "legacy" else "iptables-nft"
        self.procs = []
        self.made = []
        try:
            self._build(listen, backend)
        except Exception:
            self.close()
            raise

    def _netns(self, name):
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.made.append(name)
        sh(name, "ip link set lo up")

    def _build(self, listen, backend):
        for ns in (self.host, self.client, self.upstream, *self.ctrs):
            self._netns(ns)
        h = self.host
        sh(
            h,
            f"""
            sysctl -qw net.ipv4.ip_forward=1
            ip link add up0 type veth peer name eth0 netns {self.client}
            ip addr add {self.host_ip}/24 dev up0 && ip link set up0 up
            ip link add wan0 type veth peer name eth0 netns {self.upstream}
            ip addr add {self.wan_ip}/24 dev wan0 && ip link set wan0 up
            ip link add {self.bridge} type bridge && ip link set {self.bridge} up
            ip addr add {self.gateway}/24 dev {self.bridge}
        """,
        )
        sh(self.client, f"ip addr add {self.client_ip}/24 dev eth0 && ip link set eth0 up")
        sh(self.upstream, f"ip addr add {self.upstream_ip}/24 dev eth0 && ip link set eth0 up")
        for i, (ns, ip) in enumerate(zip(self.ctrs, self.ctr_ips, strict=True)):
            sh(
                h,
                f"""
                ip link add vc{i} type veth peer name eth0 netns {ns}
                ip link set vc{i} master {self.bridge} && ip link set vc{i} up
            """,
            )
            sh(
                ns,
                f"""
                ip addr add {ip}/24 dev eth0 && ip link set eth0 up
                ip route add default via {self.gateway}
            """,
            )
        # like the runtime (legacy backend; or nft): DNAT for outside traffic, MASQUERADE
        # (backend None: no rules; the caller writes its own, e.g. testbed.dockerfw)
        ipt = self.ipt
        if backend is not None:
            sh(
                h,
                f"""
                {ipt} -w -t nat -A PREROUTING ! -i {self.bridge} -p tcp --dport {self.dnat_port} \\
                    -j DNAT --to-destination {self.ctr_ips[0]}:80
                {ipt} -w -t nat -A OUTPUT -p tcp -d {self.host_ip} --dport {self.dnat_port} \\
                    -j DNAT --to-destination {self.ctr_ips[0]}:80
                {ipt} -w -t nat -A POSTROUTING -s {self.subnet} ! -o {self.bridge} -j MASQUERADE
                {ipt} -w -A FORWARD -j ACCEPT
            """,
            )
        if listen:
            self.serve(0)

    def serve(self, i, port=80):
        """busybox httpd -f -p PORT in container i (serves an index.html)."""
        ns = self.ctrs[i]
        www = f"/tmp/{ns}-www"
        os.makedirs(www, exist_ok=True)
        with open(f"{www}/index.html", "w") as f:
            f.write(f"hello from {ns}\n")
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", str(port), "-h", www],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        wait_listen(ns, port)
        return p

    def upstream_serve(self, port=80):
        """An httpd in the upstream namespace (what a container calls out to)."""
        www = f"/tmp/{self.upstream}-www"
        os.makedirs(www, exist_ok=True)
        with open(f"{www}/index.html", "w") as f:
            f.write("upstream says hi\n")
        p = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.upstream,
                "busybox",
                "httpd",
                "-f",
                "-p",
                str(port),
                "-h",
                www,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(p)
        wait_listen(self.upstream, port)
        return p

    def fetch(self, ns=None, url=None, timeout=5):
        """wget from the client (default) to http://HOST:8088/; returns the CompletedProcess."""
        ns = ns or self.client
        url = url or f"http://{self.host_ip}:{self.dnat_port}/"
        return sh(
            ns, f"timeout {timeout} busybox wget -q -O- {url}", check=False, timeout=timeout + 10
        )

    def forward_policy_drop(self):
        sh(self.host, f"{self.ipt} -w -D FORWARD -j ACCEPT; {self.ipt} -w -P FORWARD DROP")

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        for ns in reversed(self.made):
            delete_netns(ns)
        for ns in (self.upstream, *self.ctrs):
            subprocess.run(["rm", "-rf", f"/tmp/{ns}-www"], check=False)
        self.made = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def dashboard_url(proc, lines=None):
    """Read `pyinspect serve` output until its ready line; the dashboard URL, or None if it
    exited first. Lines read are appended to `lines`."""
    for line in proc.stdout:
        if lines is not None:
            lines.append(line.rstrip())
        m = re.search(r"dashboard: (http://\S+/) \(ready\)", line)
        if m:
            return m.group(1)
    return None


def one_dnat_flow(out, client_ip, host_ip, ctr_ip, port=8088):
    """`trace --json` output -> (items, the one flow), asserting it was DNATed
    client -> host:port -> ctr:80."""
    items = [json.loads(line) for line in out.splitlines()]
    flows = [i for i in items if i["type"] == "flow"]
    assert len(flows) == 1, flows
    f = flows[0]
    assert f["orig"][0] == client_ip and f["orig"][2:] == [host_ip, port]
    assert f["reply"][:2] == [ctr_ip, 80] and f["nat"] == "dnat"
    return items, f
