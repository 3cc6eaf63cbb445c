"""IPv6 on a testbed/tracetopo.py topology: the dual-stack layout Docker builds with
`--ipv6` and ip6tables (DNAT for the published port, MASQUERADE for the ULA subnet).

    client (fd00:77:N::2) --up0-- [host: fd00:77:N::1, pt-br0 fd00:30:N::1/64]
                                     |-- vc<i> -- eth0 of container <i> (fd00:30:N::<10+i>)
    upstream (fd00:88:N::2) --wan0-- host (fd00:88:N::1)

`add_ipv6(topo)` adds the addresses (without duplicate address detection, so they are
usable at once), the containers' default routes, IPv6 forwarding in the host namespace
(the test's own, never the machine's) and the ip6tables rules in the topology's backend.
The namespaces are the topology's: its close() removes everything.
"""

from dataclasses import dataclass

from .tracetopo import Topology, sh
from .waits import wait_for


@dataclass
class V6:
    """The IPv6 addresses of a topology."""

    host_ip: str
    client_ip: str
    wan_ip: str
    upstream_ip: str
    subnet: str
    gateway: str
    ctr_ips: list


def add_ipv6(topo: Topology, dnat_port: int | None = None, ctr_port: int = 80) -> V6:
    """Make `topo` dual-stack (DNAT of `dnat_port`, default the topology's, to the first
    container's `ctr_port`); returns its IPv6 addresses."""
    n = topo.n
    v6 = V6(
        f"fd00:77:{n}::1",
        f"fd00:77:{n}::2",
        f"fd00:88:{n}::1",
        f"fd00:88:{n}::2",
        f"fd00:30:{n}::/64",
        f"fd00:30:{n}::1",
        [f"fd00:30:{n}::{10 + i:x}" for i in range(len(topo.ctrs))],
    )
    port = dnat_port or topo.dnat_port
    ip6t = topo.ipt.replace("iptables", "ip6tables")
    to = f"-j DNAT --to-destination [{v6.ctr_ips[0]}]:{ctr_port}"
    sh(
        topo.host,
        f"""
        sysctl -qw net.ipv6.conf.all.forwarding=1
        ip -6 addr add {v6.host_ip}/64 dev up0 nodad
        ip -6 addr add {v6.wan_ip}/64 dev wan0 nodad
        ip -6 addr add {v6.gateway}/64 dev {topo.bridge} nodad
        {ip6t} -w -t nat -A PREROUTING ! -i {topo.bridge} -p tcp --dport {port} {to}
        {ip6t} -w -t nat -A OUTPUT -p tcp -d {v6.host_ip} --dport {port} {to}
        {ip6t} -w -t nat -A POSTROUTING -s {v6.subnet} ! -o {topo.bridge} -j MASQUERADE
        {ip6t} -w -A FORWARD -j ACCEPT
    """,
    )
    sh(topo.client, f"ip -6 addr add {v6.client_ip}/64 dev eth0 nodad")
    sh(topo.upstream, f"ip -6 addr add {v6.upstream_ip}/64 dev eth0 nodad")
    for ns, ip in zip(topo.ctrs, v6.ctr_ips, strict=True):
        sh(ns, f"ip -6 addr add {ip}/64 dev eth0 nodad && ip -6 route add default via {v6.gateway}")
    # link-local addresses are tentative for a second (duplicate address detection):
    # neighbour discovery waits for them, so a first connection would wait too
    for ns in (topo.host, topo.client, topo.upstream, *topo.ctrs):
        wait_for(
            lambda ns=ns: not sh(ns, "ip -6 addr show tentative").stdout.strip(),
            10,
            0.05,
            f"IPv6 addresses of {ns} out of duplicate address detection",
        )
    return v6


def fetch6(topo: Topology, v6: V6, ns: str | None = None, timeout: int = 5):
    """wget from the client (default) to http://[HOST6]:PORT/ over IPv6."""
    url = f"http://[{v6.host_ip}]:{topo.dnat_port}/"
    return sh(
        ns or topo.client,
        f"timeout {timeout} busybox wget -q -O- {url}",
        check=False,
        timeout=timeout + 10,
    )
