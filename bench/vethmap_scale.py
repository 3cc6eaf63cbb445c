"""Veth map scale: `vethmap.build()` time against the number of network namespaces, and
the per-namespace access methods it was chosen from.

Makes N namespaces (`pbb-<pid>-<i>`), each with a veth whose other end sits in one
"host" namespace (`pbb-<pid>-h`), as a container host would have. Measures:
- the whole `vethmap.build()` (namespace discovery, dumps, nsid resolution, owners);
- dumping links+addresses of the N namespaces four ways: setns + raw netlink socket with
  the struct decoder (what build() uses), setns + pyroute2 `IPRoute()`, `ip -n -j`
  subprocesses, and pyroute2 `IPRoute(netns=...)` (forks a helper per socket).
Everything it makes is removed at the end (also on errors).

    sudo .venv/bin/python bench/vethmap_scale.py [-n 100] [--json]
"""

import argparse
import json
import os
import statistics
import subprocess
import time


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def setup(prefix, n):
    host = f"{prefix}-h"
    sh(f"ip netns add {host}")
    names = []
    for i in range(n):
        ns = f"{prefix}-{i}"
        sh(
            f"ip netns add {ns} && ip -n {host} link add pbbv{i} type veth peer name eth0 "
            f"netns {ns} && ip -n {ns} addr add 10.99.{i // 250}.{i % 250 + 1}/16 dev eth0"
        )
        names.append(ns)
    return host, names


def teardown(prefix):
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    for line in out.splitlines():
        name = line.split()[0]
        if name.startswith(prefix + "-"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def median_ms(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="namespaces to make (default 100)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from pyroute2 import IPRoute

    from pyinspect.host import vethmap
    from pyinspect.probes.netns import RtnlSocket, open_ns, setns

    prefix = f"pbb-{os.getpid()}"
    try:
        host, names = setup(prefix, args.n)
        paths = [f"/run/netns/{n}" for n in names]

        def raw():
            for p in paths:
                fd, _ = open_ns(p)
                with RtnlSocket(fd) as s:
                    s.links()
                    s.addrs()
                os.close(fd)

        def ipr_setns():
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            for p in paths:
                fd, _ = open_ns(p)
                setns(fd)
                try:
                    ipr = IPRoute(groups=0)
                finally:
                    setns(home)
                with ipr:
                    ipr.get_links()
                    ipr.get_addr()
                os.close(fd)
            os.close(home)

        def ip_json():
            for n in names:
                subprocess.run(["ip", "-n", n, "-j", "link"], capture_output=True, check=True)
                subprocess.run(["ip", "-n", n, "-j", "addr"], capture_output=True, check=True)

        def ipr_fork():
            for p in paths:
                with IPRoute(netns=p, flags=0) as ipr:
                    ipr.get_links()
                    ipr.get_addr()

        rows = vethmap.build()
        mine = [r for r in rows if r["netns_name"] == host and r["kind"] == "veth"]
        paired = sum(1 for r in mine if r["peer_ifname"] == "eth0")
        result = {
            "namespaces_made": args.n,
            "namespaces_total": len({r["netns"] for r in rows}),
            "interfaces_total": len(rows),
            "host_veths_paired": paired,
            "build_ms": round(median_ms(vethmap.build, args.repeat), 1),
            "dump_ms": {
                "setns_raw_struct": round(median_ms(raw, args.repeat), 1),
                "setns_pyroute2_iproute": round(median_ms(ipr_setns, args.repeat), 1),
                "ip_n_json_subprocess": round(median_ms(ip_json, 1), 1),
                "pyroute2_iproute_netns_fork": round(median_ms(ipr_fork, 1), 1),
            },
        }
    finally:
        teardown(prefix)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"vethmap.build(): {result['build_ms']} ms for {result['namespaces_total']} "
        f"namespaces / {result['interfaces_total']} interfaces "
        f"({result['host_veths_paired']}/{args.n} host veths paired)"
    )
    for k, v in result["dump_ms"].items():
        print(f"  dump {args.n} namespaces via {k:<28} {v:8.1f} ms ({v / args.n:.2f} ms/namespace)")


if __name__ == "__main__":
    main()
