"""IPv6 DNAT throughput against IPv4 DNAT on the same path (issue 23).

    .venv/bin/python bench/ipv6_nat.py [--seconds 3] [--repeat 5] [--backend nft|legacy]
                                       [--no-pin] [--json]

Topology: testbed/tracetopo.py made dual-stack by testbed/ipv6.py (client -> host netns
-> bridge pt-br0 -> veth -> container; ULA addresses fd00:..., Docker's `--ipv6` layout),
in namespaces this script makes and removes. The same iperf3 server in the container
(dual-stack socket, port 5201) is reached through a published port 15201 three ways,
alternating every round so all see the same machine noise:

  v4 DNAT   client -> 10.77.N.1:15201      -> iptables DNAT  -> 172.30.N.10:5201
  v6 DNAT   client -> [fd00:77:N::1]:15201 -> ip6tables DNAT -> [fd00:30:N::a]:5201
  v6 routed client -> [fd00:30:N::a]:5201 (same veths and bridge, no NAT; for scale)

Each round also runs v4 DNAT and v6 DNAT at the same time (ports 15201 and 15202, both
clients on one CPU, both servers on the other): sharing the CPUs second by second, their
ratio does not follow the machine's drift, which moves separate runs by tens of percent.
Prints the medians in Gbit/s and the ratio v6 DNAT / v4 DNAT (target >= 0.9): the median
of each round's ratio (the two ran back to back), the ratio of the medians, and the median
ratio of the concurrent runs. iperf3 -O 1
(the first second is not counted); client on CPU 0, server on CPU 1 unless --no-pin.
"""

import argparse
import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout: testbed/ (shared with the tests)
from testbed import ipv6, tracetopo  # noqa: E402
from testbed.waits import wait_listen  # noqa: E402

HOST_PORT, CTR_PORT = 15201, 5201
HOST_PORT2, CTR_PORT2 = 15202, 5202  # the IPv6 flow of the concurrent runs
TARGET = 0.9


def pin_args(pin, cpu):
    return ["-A", str(cpu)] if pin else []


def iperf(topo, addr, port, seconds, pin):
    """One iperf3 run from the client to addr:port; Gbit/s received."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", topo.ctrs[0], "iperf3", "-s", "-1", *pin_args(pin, 1)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listen(topo.ctrs[0], CTR_PORT)
        out = tracetopo.sh(
            topo.client,
            f"iperf3 -c {addr} -p {port} -t {seconds} -O 1 -J {' '.join(pin_args(pin, 0))}",
            timeout=seconds + 60,
        ).stdout
        data = json.loads(out)
        if "error" in data:
            raise SystemExit(f"iperf3 to {addr}:{port}: {data['error']}")
        return data["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def together(topo, v6, seconds, pin):
    """v4 DNAT and v6 DNAT at the same time (each its own server port), both clients on
    one CPU and both servers on the other: they share the same CPUs second by second, so
    their ratio does not follow the machine's drift. (Gbit/s v4, Gbit/s v6)."""
    srvs = [
        subprocess.Popen(
            ["ip", "netns", "exec", topo.ctrs[0], "iperf3", "-s", "-1", "-p", str(port)]
            + pin_args(pin, 1),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in (CTR_PORT, CTR_PORT2)
    ]
    try:
        for port in (CTR_PORT, CTR_PORT2):
            wait_listen(topo.ctrs[0], port)
        clients = [
            subprocess.Popen(
                ["ip", "netns", "exec", topo.client, "iperf3", "-c", addr, "-p", str(port)]
                + ["-t", str(seconds), "-O", "1", "-J", *pin_args(pin, 0)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for addr, port in ((topo.host_ip, HOST_PORT), (v6.host_ip, HOST_PORT2))
        ]
        out = []
        for c in clients:
            data = json.loads(c.communicate(timeout=seconds + 60)[0])
            if "error" in data:
                raise SystemExit(f"iperf3: {data['error']}")
            out.append(data["end"]["sum_received"]["bits_per_second"] / 1e9)
        return out[0], out[1]
    finally:
        for srv in srvs:
            try:
                srv.wait(timeout=30)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backend", choices=("nft", "legacy"), default="nft")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pin = not args.no_pin
    topo = tracetopo.Topology(prefix="pb6", listen=False, backend=args.backend)
    try:
        v6 = ipv6.add_ipv6(topo, HOST_PORT, CTR_PORT)
        tracetopo.sh(
            topo.host,
            f"{topo.ipt} -w -t nat -A PREROUTING ! -i {topo.bridge} -p tcp --dport {HOST_PORT} "
            f"-j DNAT --to-destination {topo.ctr_ips[0]}:{CTR_PORT}",
        )
        ip6t = topo.ipt.replace("iptables", "ip6tables")
        tracetopo.sh(
            topo.host,
            f"{ip6t} -w -t nat -A PREROUTING ! -i {topo.bridge} -p tcp --dport {HOST_PORT2} "
            f"-j DNAT --to-destination [{v6.ctr_ips[0]}]:{CTR_PORT2}",
        )
        # the routed reference: the client reaches the container's subnet via the host
        tracetopo.sh(topo.client, f"ip -6 route add {v6.subnet} via {v6.host_ip}")
        modes = {
            "v4 DNAT": (topo.host_ip, HOST_PORT),
            "v6 DNAT": (v6.host_ip, HOST_PORT),
            "v6 routed": (v6.ctr_ips[0], CTR_PORT),
        }
        runs = {m: [] for m in modes}
        both = []  # (v4, v6) Gbit/s of the concurrent runs
        for r in range(args.repeat):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for m in order:
                runs[m].append(iperf(topo, *modes[m], args.seconds, pin))
            both.append(together(topo, v6, args.seconds, pin))
    finally:
        topo.close()
    concurrent = [b / a for a, b in both if a]
    med = {m: statistics.median(v) for m, v in runs.items()}
    # each round's v6/v4 pair ran back to back: the median of those ratios follows the
    # machine's drift less than the ratio of the medians
    pairs = [b / a for a, b in zip(runs["v4 DNAT"], runs["v6 DNAT"], strict=True) if a]
    ratio = statistics.median(pairs)
    result = {
        "gbit_s": med,
        "runs": runs,
        "ratio_v6_v4": ratio,
        "ratio_of_medians": med["v6 DNAT"] / med["v4 DNAT"],
        "round_ratios": pairs,
        "concurrent_gbit_s": both,
        "concurrent_ratio": statistics.median(concurrent),
        "target": TARGET,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"iperf3 TCP through a published port, {args.seconds:g}s x {args.repeat} rounds "
        f"(alternating), {args.backend} backend, medians:"
    )
    for m, (addr, port) in modes.items():
        where = f"[{addr}]" if ":" in addr else addr
        spread = ", ".join(f"{x:.2f}" for x in runs[m])
        print(f"  {m:<10} -> {where + ':' + str(port):<24} {med[m]:6.2f} Gbit/s   ({spread})")
    spread = ", ".join(f"{b / a:.2f}" for a, b in both if a)
    print(
        f"  at the same time: v4 {statistics.median(a for a, _ in both):.2f} + v6 "
        f"{statistics.median(b for _, b in both):.2f} Gbit/s, v6/v4 per round ({spread})"
    )
    met = "met" if ratio >= TARGET else "NOT met"
    print(
        f"ratio v6 DNAT / v4 DNAT = {ratio:.3f}, median of the rounds' ratios "
        f"({', '.join(f'{x:.2f}' for x in pairs)}; ratio of the medians "
        f"{result['ratio_of_medians']:.3f}) (target >= {TARGET}: {met})"
    )
    cmet = "met" if result["concurrent_ratio"] >= TARGET else "NOT met"
    print(
        f"ratio v6 DNAT / v4 DNAT run at the same time = {result['concurrent_ratio']:.3f} "
        f"(median of the rounds; target >= {TARGET}: {cmet})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
