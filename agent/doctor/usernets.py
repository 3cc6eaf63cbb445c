"""Doctor checks for user-defined networks: the embedded DNS and Docker-style isolation.

- `user_dns`: a container on a user network has `nameserver 127.0.0.11` (pyinspect wrote
  it); something must listen on 127.0.0.11:53 in its netns (its shim's resolver). The
  sockets come from the container's /proc/<pid>/net/udp, as the rest of doctor reads them.
- `isolation`: for every two bridges with running containers that pyinspect declared as
  different networks, a new connection from one to the other must be dropped in FORWARD
  (pyinspect's PYINSPECT-ISOLATION-STAGE-1/2, Docker's DOCKER-ISOLATION-STAGE-1/2),
  walked in the rules of every backend that has them.
"""

from collections.abc import Iterator

from .checks import _bridged, _drops, _finding, _pkt
from .hostview import HostView
from .model import Finding

DNS_ADDR = "127.0.0.11"


def user_dns(view: HostView) -> Iterator[Finding]:
    for c in view.containers:
        if c.status != "running" or (c.declared or {}).get("dns") != DNS_ADDR:
            continue
        if any(s.proto == "udp" and s.addr == DNS_ADDR and s.port == 53 for s in c.sockets):
            continue
        net = c.declared.get("network") or c.declared.get("bridge") or "?"
        yield _finding(
            "user_dns",
            "error",
            c.name,
            f"{c.name} is on user network {net} but nothing answers DNS at {DNS_ADDR}:53 "
            "in its netns: names of other containers do not resolve",
            [
                f"resolv.conf of {c.name}: nameserver {DNS_ADDR} (written by pyinspect)",
                "UDP sockets in its netns: "
                + (
                    ", ".join(f"{s.addr}:{s.port}" for s in c.sockets if s.proto == "udp") or "none"
                ),
                "the embedded DNS runs in the container's pyinspect-shim; a shim that was "
                "killed takes it along",
            ],
            [],
            "user-network-dns",
            fix=f"pyinspect restart {c.name}",
        )


def isolation(view: HostView) -> Iterator[Finding]:
    nets: dict[str, tuple] = {}  # bridge -> (network name, a container, its ip)
    for c, br, _ in _bridged(view):
        d = c.declared or {}
        if d.get("bridge") == br.name and br.name not in nets:
            nets[br.name] = (d.get("network") or br.name, c, c.ip)
    names = sorted(nets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for src, dst in ((a, b), (b, a)):
                (sname, sc, sip), (dname, dc, dip) = nets[src], nets[dst]
                pkt = _pkt(view, src=sip, dst=dip, dport=80, iif=src, oif=dst)
                for rs in view.active_rulesets():
                    if "filter" not in rs.tables or not any(
                        src in " ".join(r.args) for r in rs.rules("filter")
                    ):
                        continue
                    w = rs.walk("filter", "FORWARD", pkt)
                    if _drops(w):
                        continue
                    yield _finding(
                        "isolation",
                        "error",
                        sc.name,
                        f"networks {sname} and {dname} are not isolated: a new connection "
                        f"from {sc.name} ({sip}) to {dc.name} ({dip}) is forwarded "
                        f"({w.verdict})",
                        [f"{rs.tool} FORWARD {src} -> {dst}: {w.verdict}"]
                        + [f"  {ln}" for ln in w.evidence()],
                        [],
                        "user-network-isolation",
                        fix=(
                            f"{rs.tool} -I FORWARD 1 -i {src} -o {dst} -j DROP "
                            "(or `pyinspect ps`, which puts pyinspect's isolation rules back)"
                        ),
                    )


# (name, check) in the order they run, after checks.CHECKS
CHECKS = [("user_dns", user_dns), ("isolation", isolation)]
