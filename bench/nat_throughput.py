"""NAT throughput: iperf3 TCP through a published port against the same path without NAT.

Topology, all in network namespaces this script makes and removes (nothing
touches the machine's own routes or firewall):

    client netns --veth-- host netns [pyinspect0 bridge + PYINSPECT rules] --veth-- container netns
    10.201.0.2            10.201.0.1                172.29.0.1                      172.29.0.2
                                                                                    iperf3 -s (5201)
    plain netns --veth-- client netns (a direct veth pair, for reference)

The container is connected with pyinspect.runtime.network.connect() and
publishes 15201 -> 5201, exactly what `pyinspect run -p 15201:5201` does.
Measured, alternating so both see the same machine noise:

  nat     client -> 10.201.0.1:15201 -> DNAT -> 172.29.0.2:5201 (the published port)
  routed  client -> 172.29.0.2:5201, same veths and bridge, no NAT rule on the path
  veth    client -> a plain veth pair to another netns (no bridge, no forwarding)

Prints each median in Gbit/s and the ratio nat/routed (target >= 0.9); nat/veth
is printed too, for scale.

    sudo .venv/bin/python bench/nat_throughput.py [--seconds 3] [--repeat 3] [--json]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

CLIENT_HOST, CLIENT = "10.201.0.1", "10.201.0.2"
PLAIN_CLIENT, PLAIN = "10.203.0.1", "10.203.0.2"
HOST_PORT, CTR_PORT = 15201, 5201
TARGET = 0.9


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def ns_add(name):
    sh("ip", "netns", "add", name)
    sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")


def in_ns(name, *argv, **kw):
    return sh("ip", "netns", "exec", name, *argv, **kw)


def wait_listen(prefix, port, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(
            [*prefix, "cat", "/proc/net/tcp", "/proc/net/tcp6"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if f":{port:04X} " in out and " 0A " in out:
            return
        time.sleep(0.05)
    raise SystemExit(f"nat_throughput: nothing listens on {port}")


def iperf(client_ns, addr, port, seconds):
    out = in_ns(
        client_ns,
        "iperf3",
        "-c",
        addr,
        "-p",
        str(port),
        "-t",
        str(seconds),
        "-J",
        timeout=seconds + 30,
    )
    data = json.loads(out.stdout)
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


# connect()/disconnect() run inside the host netns: python-iptables acts on the caller's netns
CHILD = (
    "import json, sys, types\n"
    "from pyinspect.runtime import network\n"
    "spec = types.SimpleNamespace(name=sys.argv[2], publish=[sys.argv[4]], "
    "publish_all=False, network_mode='bridge', hostname=None)\n"
    "c = types.SimpleNamespace(id=sys.argv[3], name=sys.argv[2], spec=spec)\n"
    "op = sys.argv[5]\n"
    "if op == 'connect':\n"
    "    print(json.dumps(network.connect(sys.argv[1], c, int(sys.argv[6]))))\n"
    "else:\n"
    "    network.disconnect(sys.argv[1], c)\n"
)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=3, help="iperf3 run length")
    ap.add_argument("--repeat", type=int, default=3, help="runs per path (median)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("nat_throughput: needs root (namespaces, iptables)")
    if not shutil.which("iperf3"):
        raise SystemExit("nat_throughput: iperf3 not installed (apt-get install iperf3)")

    tag = uuid.uuid4().hex[:6]
    host, client, plain = f"pn-bh-{tag}", f"pn-bc-{tag}", f"pn-bp-{tag}"
    name, cid = f"pn-bench-{tag}", uuid.uuid4().hex * 2
    root = tempfile.mkdtemp(prefix="pn-bench-root-")
    procs = []
    connected = False
    base = [
        "nsenter",
        f"--net=/run/netns/{host}",
        sys.executable,
        "-c",
        CHILD,
        root,
        name,
        cid,
        f"{HOST_PORT}:{CTR_PORT}",
    ]
    try:
        for ns in (host, client, plain):
            ns_add(ns)
        in_ns(
            host,
            "sh",
            "-c",
            f"ip link add pnc0 type veth peer name eth0 netns {client} && "
            f"ip addr add {CLIENT_HOST}/24 dev pnc0 && ip link set pnc0 up",
        )
        in_ns(
            client,
            "sh",
            "-c",
            f"ip addr add {CLIENT}/24 dev eth0 && ip link set eth0 up && "
            f"ip route add 172.29.0.0/16 via {CLIENT_HOST}",
        )
        in_ns(
            client,
            "sh",
            "-c",
            f"ip link add pnp0 type veth peer name eth0 netns {plain} && "
            f"ip addr add {PLAIN_CLIENT}/24 dev pnp0 && ip link set pnp0 up",
        )
        in_ns(plain, "sh", "-c", f"ip addr add {PLAIN}/24 dev eth0 && ip link set eth0 up")
        ctr = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{host}", "unshare", "--net", "sleep", "3600"]
        )
        procs.append(ctr)
        me = os.readlink("/proc/self/ns/net")
        for _ in range(200):
            try:
                if (
                    os.readlink(f"/proc/{ctr.pid}/exe").endswith("sleep")
                    and os.readlink(f"/proc/{ctr.pid}/ns/net") != me
                ):
                    break
            except OSError:
                pass
            time.sleep(0.01)
        out = sh(*base, "connect", str(ctr.pid))
        connected = True
        net = json.loads(out.stdout)
        ctr_ns = ["nsenter", f"--net=/proc/{ctr.pid}/ns/net"]
        procs.append(
            subprocess.Popen(
                [*ctr_ns, "iperf3", "-s", "-p", str(CTR_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        procs.append(
            subprocess.Popen(
                ["ip", "netns", "exec", plain, "iperf3", "-s", "-p", str(CTR_PORT)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_listen(ctr_ns, CTR_PORT)
        wait_listen(["ip", "netns", "exec", plain], CTR_PORT)
        paths = {
            "nat": (CLIENT_HOST, HOST_PORT),
            "routed": (net["ip"], CTR_PORT),
            "veth": (PLAIN, CTR_PORT),
        }
        results = {k: [] for k in paths}
        iperf(client, CLIENT_HOST, HOST_PORT, 1)  # warm-up
        for _ in range(args.repeat):
            for key, (addr, port) in paths.items():
                results[key].append(iperf(client, addr, port, args.seconds))
        med = {k: statistics.median(v) for k, v in results.items()}
        from pyinspect.runtime import iptables  # the backend pyinspect writes (the host's)

        ipt = iptables.tool(iptables.backend())
        dnat = in_ns(host, ipt, "-t", "nat", "-nvxL", "PYINSPECT").stdout
        report = {
            "gbit_per_s": {k: round(v, 2) for k, v in med.items()},
            "runs": {k: [round(x, 2) for x in v] for k, v in results.items()},
            "ratio_nat_vs_routed": round(med["nat"] / med["routed"], 3),
            "ratio_nat_vs_veth": round(med["nat"] / med["veth"], 3),
            "target": TARGET,
            "seconds": args.seconds,
            "repeat": args.repeat,
            "dnat_rule_used": any(
                line.split()[0] not in ("0", "pkts")
                for line in dnat.splitlines()[2:]
                if f"dpt:{HOST_PORT}" in line
            ),
        }
        report["meets_target"] = report["ratio_nat_vs_routed"] >= TARGET
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            g = report["gbit_per_s"]
            print(
                f"nat     client -> {CLIENT_HOST}:{HOST_PORT} (DNAT) -> {net['ip']}:{CTR_PORT}"
                f"   {g['nat']:6.2f} Gbit/s"
            )
            print(
                f"routed  client -> {net['ip']}:{CTR_PORT} (same path, no NAT)"
                f"          {g['routed']:6.2f} Gbit/s"
            )
            print(
                f"veth    client -> {PLAIN}:{CTR_PORT} (plain veth pair)"
                f"                  {g['veth']:6.2f} Gbit/s"
            )
            print(
                f"ratio nat/routed = {report['ratio_nat_vs_routed']:.3f} "
                f"(target >= {TARGET}: {'met' if report['meets_target'] else 'NOT met'}); "
                f"nat/veth = {report['ratio_nat_vs_veth']:.3f}"
            )
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        if connected:
            sh(*base, "disconnect", check=False)
        for ns in (plain, client, host):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
