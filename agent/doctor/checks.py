"""The doctor's checks: each takes a HostView and yields Findings; `CHECKS` lists them
in the order they run.

Fixes run in that order, so a stale rule is deleted before the missing one is added back.
"""

import dataclasses
import ipaddress
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from typing import Any

from ..probes import iptsave as ipt
from ..runtime import sysctl as host_sysctl
from .hostview import HostView
from .model import (
    SIM_REMOTE,
    Action,
    ContainerView,
    Finding,
    Link,
    PortMapping,
    describe_action,
    runbook,
)

LOCALHOST = "127.0.0.1"
NUD_REACHABLE, NUD_PERMANENT = 0x02, 0x80
NUD_NAMES = {
    0x01: "INCOMPLETE",
    0x02: "REACHABLE",
    0x04: "STALE",
    0x08: "DELAY",
    0x10: "PROBE",
    0x20: "FAILED",
    0x40: "NOARP",
    0x80: "PERMANENT",
}


def _nud(state: int) -> str:
    return "|".join(n for bit, n in NUD_NAMES.items() if state & bit) or "NONE"


# -- helpers -----------------------------------------------------------------------
def _finding(
    check_name: str,
    severity: str,
    container: str | None,
    summary: str,
    evidence: Iterable[str],
    actions: list[Action],
    book: str,
    safe: bool = False,
    port: int | None = None,
    fix: str | None = None,
) -> Finding:
    # an iptables command built for the native nft rule set (`nft -t nat -A ...`) does
    # not exist: such a finding has no command, the runbook says what to add
    actions = [a for a in actions if not (a[0] == "run" and a[1][0] == "nft" and a[1][1][0] == "-")]
    text = fix or " && ".join(describe_action(a) for a in actions if a[0] != "ack")
    return Finding(
        check_name,
        severity,
        container or "",
        summary,
        list(evidence),
        text or "(no command: see the runbook)",
        runbook(book),
        safe,
        list(actions),
        port,
    )


def _pkt(view: HostView, **kw: Any) -> ipt.Packet:
    return ipt.Packet(local_addrs=view.local_addrs | {LOCALHOST}, **kw)


def _bridged(view: HostView) -> list[tuple]:
    """Running containers attached (or meant to be attached) to a host bridge."""
    out = []
    for c in view.containers:
        if c.status != "running" or not c.host_veth or not c.ip:
            continue
        br, gw = view.bridge_for(c.ip)
        if br is None and c.host_veth.master:
            br = view.links.get(c.host_veth.master)
            gw = br.addrs[0][0] if br and br.addrs else None
        if br is not None:
            out.append((c, br, gw))
    return out


def _owner(view: HostView, words: Iterable[str | None]) -> ipt.Ruleset:
    """The backend whose rules mention any of `words` (bridge name, container IP): an
    iptables backend or the native nft tables ("nftables").

    Default: the iptables backend pyinspect writes (the host's `iptables` alternative,
    runtime.iptables.backend), else legacy.
    """
    for rs in view.rulesets.values():
        for rule in rs.rules():
            text = " ".join(rule.args)
            if any(w and w in text for w in words):
                return rs
    try:
        from ..runtime.iptables import backend

        mine = backend()
    except Exception:  # noqa: BLE001 - a bad PYINSPECT_IPTABLES: fall back to legacy
        mine = "legacy"
    return (
        view.rulesets.get(mine) or view.rulesets.get("legacy") or next(iter(view.rulesets.values()))
    )


def _sysctl_line(view: HostView, key: str) -> str:
    return f"{key} = {view.sysctl(key)}   ({host_sysctl.path(key)}, host netns)"


def _conntrack_lines(proto: str, dport: int, limit: int = 3) -> list[str]:
    if not shutil.which("conntrack"):
        return []
    try:
        proc = subprocess.run(
            ["conntrack", "-L", "-p", proto, "--orig-port-dst", str(dport)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return [f"conntrack: {ln}" for ln in lines[:limit]]


def _drops(walk: ipt.Walk) -> bool:
    return walk.verdict in ("DROP", "REJECT")


def _nft_insert(walk: ipt.Walk, *expr: str) -> Action | None:
    """An `nft insert rule` of `expr` at the top of the native nft chain where `walk`
    (of the nftables backend) was decided; None when it is not known."""
    rule = walk.rule
    if rule is None or not rule.nft:
        return None
    fam, tbl, chain, _handle = rule.nft
    return ("run", ["nft", "insert", "rule", fam, tbl, chain, *expr])


def _native(rs: ipt.Ruleset) -> bool:
    """Native nft tables (the nftables backend): iptables commands do not apply."""
    return rs.backend == "nftables"


# -- checks --------------------------------------------------------------------------
def ip_forward(view: HostView) -> Iterator[Finding]:
    if not _bridged(view) and not any(
        ipt.dnat_target(r) for rs in view.rulesets.values() for r in rs.rules("nat")
    ):
        return
    if view.sysctl("net.ipv4.ip_forward") == "0":
        yield _finding(
            "ip_forward",
            "error",
            None,
            "IPv4 forwarding is off: published ports and container egress cannot be routed",
            [
                _sysctl_line(view, "net.ipv4.ip_forward"),
                f"{len(_bridged(view))} bridged container(s) depend on it",
            ],
            [("run", ["sysctl", "-w", "net.ipv4.ip_forward=1"])],
            "ip-forward-off",
            safe=True,
        )


def veth(view: HostView) -> Iterator[Finding]:
    for c, br, _ in _bridged(view):
        hv = c.host_veth
        ev = [
            f"host side: {hv.name} (ifindex {hv.ifindex}) state {hv.oper}, "
            f"{'UP' if hv.up else 'admin DOWN'}, master {hv.master or 'none'}",
            f"container side: {c.eth.name}@if{c.eth.iflink} in {c.nspath} state {c.eth.oper}",
            f"`ip a | grep @if`: {hv.name}@if{hv.iflink} pairs with {c.eth.name} "
            f"(ifindex {c.eth.ifindex})",
        ]
        if not hv.up:
            yield _finding(
                "veth_down",
                "error",
                c.name,
                f"host veth {hv.name} of {c.name} is down: no packet reaches it",
                ev,
                [("run", ["ip", "link", "set", "dev", hv.name, "up"])],
                "veth-down-or-detached",
                safe=True,
            )
        if not c.eth.up:
            yield _finding(
                "veth_down",
                "error",
                c.name,
                f"{c.eth.name} inside {c.name} is down",
                ev,
                [("run", c.exec_prefix() + ["ip", "link", "set", "dev", c.eth.name, "up"])],
                "veth-down-or-detached",
                safe=True,
            )
        if hv.master != br.name:
            ev.append(
                f"{c.ip} is in {br.name}'s subnet "
                f"{', '.join(str(n) for n in br.networks())}, so {hv.name} belongs on "
                f"{br.name} (`bridge link` does not list it)"
            )
            yield _finding(
                "veth_detached",
                "error",
                c.name,
                f"host veth {hv.name} of {c.name} is not attached to bridge {br.name}",
                ev,
                [
                    ("run", ["ip", "link", "set", "dev", hv.name, "master", br.name]),
                    ("run", ["ip", "link", "set", "dev", hv.name, "up"]),
                ],
                "veth-down-or-detached",
                safe=True,
            )


def container_route(view: HostView) -> Iterator[Finding]:
    for c, br, gw in _bridged(view):
        expected = (c.declared or {}).get("gateway") or gw
        if not expected:
            continue  # an L2-only bridge (no address): nothing to route through on the host
        gws = c.default_gateways()
        table = [
            f"container route: {r['dst']}"
            + (f" via {r['gateway']}" if r["gateway"] else "")
            + f" dev {r['dev']}"
            for r in c.routes
        ]
        if not gws:
            yield _finding(
                "container_route",
                "error" if c.ports else "warning",
                c.name,
                f"{c.name} has no default route: replies to clients outside {br.name}'s "
                "subnet and all egress are dropped",
                table + [f"expected: default via {expected} (the address of {br.name})"],
                [("run", c.exec_prefix() + ["ip", "route", "add", "default", "via", expected])],
                "container-default-route",
            )
        elif expected and expected not in gws:
            yield _finding(
                "container_route",
                "error",
                c.name,
                f"{c.name}'s default gateway {gws[0]} is not the bridge address {expected}",
                table
                + [
                    f"{br.name} has {expected}; nothing on the bridge answers for {gws[0]}"
                    if gws[0] not in view.local_addrs
                    else ""
                ],
                [("run", c.exec_prefix() + ["ip", "route", "replace", "default", "via", expected])],
                "container-default-route",
            )


def mtu(view: HostView) -> Iterator[Finding]:
    for c, br, _ in _bridged(view):
        hv = c.host_veth
        want = br.mtu
        sides = [
            (c.eth.mtu, c.exec_prefix() + ["ip", "link", "set", "dev", c.eth.name, "mtu"]),
            (hv.mtu, ["ip", "link", "set", "dev", hv.name, "mtu"]),
        ]
        if c.eth.mtu == hv.mtu == want:
            continue
        ev = [
            f"{c.eth.name} in {c.name}: mtu {c.eth.mtu}",
            f"{hv.name} (host): mtu {hv.mtu}",
            f"{br.name} (bridge): mtu {want}",
            "a veth drops frames larger than the receiving side's MTU; TCP hides it "
            "behind MSS, ICMP/UDP and PMTU-blackholed paths do not",
        ]
        actions = [("run", cmd + [str(want)]) for m, cmd in sides if m != want]
        yield _finding(
            "mtu_mismatch",
            "error",
            c.name,
            f"MTU mismatch on {c.name}'s link: container {c.eth.mtu}, "
            f"host veth {hv.mtu}, bridge {want}",
            ev,
            actions,
            "mtu-mismatch",
        )
    up = view.links.get(view.uplink() or "")
    if up:
        for br in view.bridges():
            if (
                any(c.host_veth and c.host_veth.master == br.name for c in view.containers)
                and br.mtu > up.mtu
            ):
                yield _finding(
                    "mtu_mismatch",
                    "warning",
                    None,
                    f"bridge {br.name} MTU {br.mtu} is larger than uplink {up.name} MTU "
                    f"{up.mtu}: large container packets depend on PMTU discovery",
                    [f"{br.name}: mtu {br.mtu}", f"{up.name} (default route): mtu {up.mtu}"],
                    [],
                    "mtu-mismatch",
                    fix=f"run containers with mtu {up.mtu} (pyinspect/dockerd --mtu {up.mtu})",
                )


def dnat_stale(view: HostView) -> Iterator[Finding]:
    live = {c.ip for c in view.containers if c.ip and c.status == "running"}
    subnets = [(br, n) for br in view.bridges() for n in br.networks()]
    for rs in view.rulesets.values():
        for rule in rs.rules("nat"):
            tgt = ipt.dnat_target(rule)
            if not tgt:
                continue
            ip = tgt[0]
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                continue
            if ip in live or ip in view.local_addrs:
                continue
            neigh = [n for n in view.neighbours if n["ip"] == ip]
            if any(n["state"] & (NUD_REACHABLE | NUD_PERMANENT) for n in neigh):
                continue  # something answers for it (a VM on a tap, a static entry): alive
            where = [(br, n) for br, n in subnets if addr in n]
            if not where:
                continue
            br = where[0][0]
            hport = rule.get("dport")
            owner = None
            for key in view.memory:
                if key.startswith("port:") and key.endswith(f":{hport}"):
                    owner = key.split(":")[1]
            ev = [
                rule.text(),
                f"no container on {br.name} has {ip} (live: {', '.join(sorted(live)) or 'none'})",
                f"neighbour {ip}: "
                + (
                    f"{_nud(neigh[0]['state'])} (`ip neigh show {ip}`)"
                    if neigh
                    else "no entry (`ip neigh show` is empty)"
                ),
            ]
            if hport and hport.isdigit():
                ev += _conntrack_lines(rule.get("proto") or "tcp", int(hport))
            yield _finding(
                "dnat_stale",
                "error",
                owner,
                f"DNAT for host port {hport} points at {ip}:{tgt[1]}, an address no container "
                "has (stale rule of a dead or restarted container)",
                ev,
                [("run", rule.delete_cmd())],
                "dnat-missing-or-stale",
                port=int(hport) if hport and hport.isdigit() else None,
            )


SOURCES = {
    "pyinspect": "declared in pyinspect's state",
    "rule": "a DNAT rule names it",
    "remembered": "remembered by doctor from a run where it worked",
}


def _port_list(view: HostView, c: ContainerView) -> list[PortMapping]:
    ports = [dataclasses.replace(p) for p in c.ports]
    for key, val in view.memory.items():
        parts = key.split(":")
        if parts[0] != "port" or parts[1] != c.name:
            continue
        if any(p.proto == parts[2] and p.host_port == int(parts[3]) for p in ports):
            continue
        ports.append(
            PortMapping(
                parts[2],
                val.get("host_ip", ""),
                int(parts[3]),
                val["container_port"],
                "remembered",
                memory=val,
            )
        )
    return ports


def _restore_actions(view: HostView, memory: dict) -> list[Action]:
    """Commands that put back the remembered rule path that has gone missing."""
    actions, made = [], set()
    for step in reversed(memory.get("path", [])):
        rs = view.rulesets.get(step["backend"])
        if rs is None or _native(rs):
            continue  # a native nft rule is not rebuilt from its text
        chains = rs.tables.get(step["table"], {})
        chain = chains.get(step["chain"])
        present = chain and any(r.args == step["args"] for r in chain.rules)
        if present:
            continue
        if chain is None and step["chain"] not in ipt.BUILTIN and step["chain"] not in made:
            actions.append(("run", [rs.tool, "-t", step["table"], "-N", step["chain"]]))
            made.add(step["chain"])
        actions.append(("run", [rs.tool, "-t", step["table"], "-A", step["chain"], *step["args"]]))
    # chains must exist before rules jump to them: -N first
    return sorted(actions, key=lambda a: 0 if "-N" in a[1] else 1)


def _port_walk(
    view: HostView, ext: str, p: PortMapping
) -> tuple[str, list[tuple[ipt.Ruleset, ipt.Walk]], tuple[ipt.Ruleset, ipt.Walk] | None]:
    """Walk nat PREROUTING of each active backend for a packet from outside to published
    port `p`: (its destination, [(ruleset, Walk)], the first (ruleset, Walk) that DNATs)."""
    host_ip = p.host_ip or ""
    dst = host_ip if host_ip and host_ip != "0.0.0.0" else view.public_addr()
    pkt = _pkt(view, src=SIM_REMOTE, dst=dst, proto=p.proto, dport=p.host_port, iif=ext)
    got, walks = None, []
    for rs in view.active_rulesets():
        w = rs.walk("nat", "PREROUTING", pkt)
        walks.append((rs, w))
        if w.verdict == "DNAT" and got is None:
            got = (rs, w)
    return dst, walks, got


def working_ports(view: HostView) -> dict[tuple[str, str, int], dict]:
    """{(container, proto, host port): rule path} of the published ports whose DNAT reaches
    their container, for doctor to remember (and restore should the rules go missing)."""
    out, ext = {}, view.external_if()
    for c, _br, _gw in _bridged(view):
        for p in c.ports:
            _dst, _walks, got = _port_walk(view, ext, p)
            if got is None or got[1].rule is None:
                continue
            if ipt.dnat_target(got[1].rule) == (c.ip, p.container_port):
                out[(c.name, p.proto, p.host_port)] = {
                    "container_ip": c.ip,
                    "container_port": p.container_port,
                    "host_ip": p.host_ip or "",
                    "path": [
                        {"backend": r.backend, "table": r.table, "chain": r.chain, "args": r.args}
                        for r in got[1].path
                    ],
                }
    return out


def published_ports(view: HostView) -> Iterator[Finding]:
    ext = view.external_if()
    for c, br, _ in _bridged(view):
        for p in _port_list(view, c):
            yield from _one_port(view, c, br, ext, p)
    port = view.port_filter
    if port is not None and not any(
        p.host_port == port for c, _, _ in _bridged(view) for p in _port_list(view, c)
    ):
        pkt = _pkt(view, src=SIM_REMOTE, dst=view.public_addr(), dport=port, iif=ext)
        ev = [f"walked nat PREROUTING for tcp dport {port} to {view.public_addr()}:"]
        for rs in view.active_rulesets():
            w = rs.walk("nat", "PREROUTING", pkt)
            ev += [f"  {rs.tool}: verdict {w.verdict}"] + [f"    {ln}" for ln in w.evidence()]
        yield _finding(
            "dnat_missing",
            "error",
            None,
            f"nothing publishes host port {port}: no DNAT rule and no container that declares it",
            ev,
            [],
            "dnat-missing-or-stale",
            port=port,
            fix=f"publish it: pyinspect run -p {port}:<container port> ...",
        )


def _one_port(
    view: HostView, c: ContainerView, br: Link, ext: str, p: PortMapping
) -> Iterator[Finding]:
    proto, hport, cport = p.proto, p.host_port, p.container_port
    host_ip = p.host_ip or ""
    dst, walks, got = _port_walk(view, ext, p)
    label = f"host {proto}/{hport} -> {c.name} {c.ip}:{cport}"
    rule = got[1].rule if got is not None else None
    if rule is None or ipt.dnat_target(rule) != (c.ip, cport):
        ev = [f"expected: {label} ({SOURCES.get(p.source, p.source)})"]
        for rs, w in walks:
            to = ipt.dnat_target(w.rule) if w.rule and w.verdict == "DNAT" else None
            ev.append(
                f"{rs.tool} -t nat PREROUTING for {proto} dport {hport} to {dst}: "
                f"{w.verdict}" + (f" to {to[0]}:{to[1]}" if to else "")
            )
            ev += [f"  {ln}" for ln in w.evidence()]
        if p.rule is not None:
            ev.append(
                (
                    "an earlier rule shadows the right one: "
                    if got
                    else "the DNAT rule exists but the walk never reaches it: "
                )
                + p.rule.text()
            )
        ev += _conntrack_lines(proto, hport)
        shadow = ipt.dnat_target(rule) if rule is not None else None
        if shadow is not None and rule is not None and p.rule is not None:
            yield _finding(
                "dnat_missing",
                "error",
                c.name,
                f"host port {hport}/{proto} goes to {':'.join(map(str, shadow))} "
                f"instead of {c.name} ({c.ip}:{cport})",
                ev,
                [],
                "dnat-missing-or-stale",
                port=hport,
                fix="delete the shadowing rule: " + " ".join(rule.delete_cmd()),
            )
            return
        if p.memory:
            actions, safe = _restore_actions(view, p.memory), True
        else:
            rs = _owner(view, [br.name, c.ip])
            match = ["-d", f"{host_ip}/32"] if host_ip and host_ip != "0.0.0.0" else []
            actions = [
                (
                    "run",
                    [
                        rs.tool,
                        "-t",
                        "nat",
                        "-I",
                        "PREROUTING",
                        "1",
                        *match,
                        "-p",
                        proto,
                        "-m",
                        proto,
                        "--dport",
                        str(hport),
                        "-m",
                        "addrtype",
                        "--dst-type",
                        "LOCAL",
                        "-j",
                        "DNAT",
                        "--to-destination",
                        f"{c.ip}:{cport}",
                    ],
                )
            ]
            safe = p.source == "pyinspect"
        yield _finding(
            "dnat_missing",
            "error",
            c.name,
            f"host port {hport}/{proto} is not DNATed to {c.name} ({c.ip}:{cport})",
            ev,
            actions,
            "dnat-missing-or-stale",
            safe=safe,
            port=hport,
        )
        return
    assert got is not None  # a DNAT to the container was found
    rs, w = got
    yield from _listening(c, p)
    yield from _forward(view, c, br, ext, p, rs)


def _listening(c: ContainerView, p: PortMapping) -> Iterator[Finding]:
    proto, cport = p.proto, p.container_port
    socks = [s for s in c.sockets if s[0] == proto and s[2] == cport]
    shown = [f"{s[0]} {s[1]}:{s[2]}" for s in c.sockets if s[0] == proto] or ["none"]
    src = f"/proc/{c.pids[0]}/net/{proto}{{,6}}" if c.pids else f"{c.nspath} net/{proto}"
    ev = [
        f"listening {proto} sockets in {c.name} ({src}): {', '.join(shown)}",
        f"published: host {p.host_port} -> {c.ip}:{cport}",
    ]
    if any(s[1] in ("0.0.0.0", "::", c.ip) for s in socks):
        return
    if socks:
        yield _finding(
            "not_listening",
            "error",
            c.name,
            f"{c.name} listens on {socks[0][1]}:{cport} only: DNATed packets to "
            f"{c.ip}:{cport} are refused",
            ev,
            [],
            "container-not-listening",
            port=p.host_port,
            fix=f"make the server in {c.name} listen on 0.0.0.0:{cport} "
            "(e.g. --host 0.0.0.0), then restart it",
        )
    else:
        yield _finding(
            "not_listening",
            "error",
            c.name,
            f"nothing in {c.name} listens on {proto}/{cport}, the published container port",
            ev,
            [],
            "container-not-listening",
            port=p.host_port,
            fix=f"start the server on port {cport} in {c.name}, or publish the port it really uses",
        )


def _forward(
    view: HostView, c: ContainerView, br: Link, ext: str, p: PortMapping, nat_rs: ipt.Ruleset
) -> Iterator[Finding]:
    assert c.ip is not None  # a bridged container has its address
    proto, cport, hport = p.proto, p.container_port, p.host_port
    inbound = _pkt(view, src=SIM_REMOTE, dst=c.ip, proto=proto, dport=cport, iif=ext, oif=br.name)
    reply = _pkt(
        view,
        src=c.ip,
        dst=SIM_REMOTE,
        proto=proto,
        sport=cport,
        dport=40000,
        iif=br.name,
        oif=ext,
        state="ESTABLISHED",
    )
    for rs in view.active_rulesets():
        if "filter" not in rs.tables or (_native(rs) and rs is not nat_rs):
            continue  # native chains that do not hold the NAT: the nft_native check
        bad = []
        w_in, w_out = rs.walk("filter", "FORWARD", inbound), rs.walk("filter", "FORWARD", reply)
        actions = []
        if _drops(w_in):
            bad.append(("new connections to", w_in))
            actions.append(
                (
                    "run",
                    [
                        rs.tool,
                        "-I",
                        "FORWARD",
                        "1",
                        "-d",
                        f"{c.ip}/32",
                        "-o",
                        br.name,
                        "-p",
                        proto,
                        "-m",
                        proto,
                        "--dport",
                        str(cport),
                        "-j",
                        "ACCEPT",
                    ],
                )
            )
        if _drops(w_out):
            bad.append(("replies from", w_out))
            actions.append(
                (
                    "run",
                    [
                        rs.tool,
                        "-I",
                        "FORWARD",
                        "1",
                        "-s",
                        f"{c.ip}/32",
                        "-i",
                        br.name,
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "RELATED,ESTABLISHED",
                        "-j",
                        "ACCEPT",
                    ],
                )
            )
        if not bad:
            continue
        if _native(rs):
            fam = "ip6" if ":" in c.ip else "ip"
            actions = [
                a
                for a in (
                    _drops(w_in)
                    and _nft_insert(
                        w_in,
                        "oifname",
                        br.name,
                        fam,
                        "daddr",
                        c.ip,
                        proto,
                        "dport",
                        str(cport),
                        "accept",
                    ),
                    _drops(w_out)
                    and _nft_insert(
                        w_out,
                        "iifname",
                        br.name,
                        fam,
                        "saddr",
                        c.ip,
                        "ct",
                        "state",
                        "established,related",
                        "accept",
                    ),
                )
                if a
            ]
        ev = []
        for what, w in bad:
            ev.append(f"{rs.tool} FORWARD for {what} {c.ip}:{cport} ({w.verdict}):")
            ev += [f"  {ln}" for ln in w.evidence()]
        ev += _conntrack_lines(proto, hport)
        if rs is not nat_rs:
            other = nat_rs.tool
            ev.insert(
                0,
                f"{other} holds this port's DNAT and accepts it; {rs.tool} is a "
                "second, independent rule set and every packet must pass both",
            )
            ev += rs.summary() + nat_rs.summary()
            yield _finding(
                "split_backends",
                "error",
                c.name,
                f"{rs.tool} rules drop traffic for host port {hport} that "
                f"{other} forwards to {c.name}",
                ev,
                actions,
                "iptables-legacy-nft-split",
                port=hport,
            )
        else:
            yield _finding(
                "forward_drop",
                "error",
                c.name,
                f"FORWARD drops {bad[0][0]} {c.name} {c.ip}:{cport} (host port {hport})",
                ev,
                actions,
                "forward-policy-drop",
                safe=True,
                port=hport,
            )


def egress(view: HostView) -> Iterator[Finding]:
    """New connections from containers out of their bridge must pass FORWARD."""
    seen = set()
    ext = view.external_if()
    for c, br, _ in _bridged(view):
        if not c.default_gateways() or br.name in seen:
            continue
        seen.add(br.name)
        pkt = _pkt(view, src=c.ip, dst=SIM_REMOTE, dport=80, iif=br.name, oif=ext)
        owner = _owner(view, [br.name, c.ip])
        for rs in view.active_rulesets():
            if "filter" not in rs.tables or (_native(rs) and rs is not owner):
                continue  # native chains that do not hold the bridge's rules: nft_native
            w = rs.walk("filter", "FORWARD", pkt)
            if not _drops(w):
                continue
            ev = [
                f"{rs.tool} FORWARD for {c.ip} ({br.name}) -> outside via {ext}, new "
                f"connection: {w.verdict}"
            ] + [f"  {ln}" for ln in w.evidence()]
            nft_fix = _native(rs) and _nft_insert(w, "iifname", br.name, "accept")
            actions = [
                (
                    "run",
                    [
                        rs.tool,
                        "-I",
                        "FORWARD",
                        "1",
                        "-i",
                        br.name,
                        "!",
                        "-o",
                        br.name,
                        "-j",
                        "ACCEPT",
                    ],
                ),
                (
                    "run",
                    [
                        rs.tool,
                        "-I",
                        "FORWARD",
                        "1",
                        "-o",
                        br.name,
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "RELATED,ESTABLISHED",
                        "-j",
                        "ACCEPT",
                    ],
                ),
            ]
            if _native(rs):
                actions = [nft_fix] if nft_fix else []
            if rs is not owner:
                ev.insert(
                    0,
                    f"{owner.tool} holds the rules for {br.name}; {rs.tool} is a "
                    "second rule set and every packet must pass both",
                )
                yield _finding(
                    "split_backends",
                    "error",
                    None,
                    f"{rs.tool} rules drop egress from containers on {br.name}",
                    ev,
                    actions,
                    "iptables-legacy-nft-split",
                )
            else:
                yield _finding(
                    "forward_drop",
                    "error",
                    None,
                    f"FORWARD drops new connections from containers on {br.name}",
                    ev,
                    actions,
                    "forward-policy-drop",
                    safe=True,
                )


def masquerade(view: HostView) -> Iterator[Finding]:
    seen = set()
    ext = view.external_if()
    for c, br, _ in _bridged(view):
        if not c.default_gateways() or br.name in seen:
            continue
        pkt = _pkt(view, src=c.ip, dst=SIM_REMOTE, dport=80, iif=br.name, oif=ext)
        walks = [(rs, rs.walk("nat", "POSTROUTING", pkt)) for rs in view.active_rulesets()]
        if any(w.verdict in ("MASQUERADE", "SNAT") for _, w in walks):
            continue
        seen.add(br.name)
        net = ipaddress.ip_interface(f"{c.ip}/{c.prefixlen}").network
        ev = [f"walked nat POSTROUTING for {c.ip} -> outside via {ext}:"]
        for rs, w in walks:
            ev.append(f"  {rs.tool}: {w.verdict} (no MASQUERADE/SNAT)")
            ev += [f"    {ln}" for ln in w.evidence()]
        if not walks:
            ev.append("  no nat table in either backend")
        rs = _owner(view, [br.name, str(net)])
        yield _finding(
            "masquerade_missing",
            "error",
            c.name,
            f"no MASQUERADE for {net} leaving via other interfaces: container "
            "egress leaves with a private source and replies never come back",
            ev,
            [
                (
                    "run",
                    [
                        rs.tool,
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-s",
                        str(net),
                        "!",
                        "-o",
                        br.name,
                        "-j",
                        "MASQUERADE",
                    ],
                )
            ],
            "masquerade-missing",
            safe=True,
        )


def hairpin(view: HostView) -> Iterator[Finding]:
    brnf = view.sysctl("net.bridge.bridge-nf-call-iptables") == "1"
    for c, br, _ in _bridged(view):
        for p in c.ports:
            proto, hport, cport = p.proto, p.host_port, p.container_port
            host_ip = p.host_ip or ""
            if host_ip.startswith("127."):
                continue  # published for the host only: not meant to be reached from containers
            dst = host_ip if host_ip and host_ip != "0.0.0.0" else view.public_addr()
            pkt = _pkt(view, src=c.ip, dst=dst, proto=proto, dport=hport, iif=br.name)
            walks = [(rs, rs.walk("nat", "PREROUTING", pkt)) for rs in view.active_rulesets()]
            dnat = next(((rs, w) for rs, w in walks if w.verdict == "DNAT"), None)
            if dnat is None:
                if any(s[2] == hport and s[0] == proto for s in view.host_sockets):
                    continue  # a userland proxy (docker-proxy) answers hairpin traffic
                ev = [
                    f"{rs.tool} -t nat PREROUTING from {br.name} ({c.ip}) to {dst}:{hport}: "
                    f"{w.verdict}"
                    for rs, w in walks
                ]
                ev += [f"  {ln}" for _, w in walks for ln in w.evidence()]
                ev.append(f"nothing on the host listens on {proto}/{hport} (no userland proxy)")
                yield _finding(
                    "hairpin",
                    "warning",
                    c.name,
                    f"{c.name} cannot reach its own published port {hport} via the "
                    f"host address: DNAT skips traffic from {br.name}",
                    ev,
                    [],
                    "hairpin",
                    port=hport,
                    fix=f"drop the `! -i {br.name}` from the DNAT rule, or run a userland proxy",
                )
                continue
            flag = c.host_veth.hairpin
            if flag is None and c.host_veth.master:
                continue  # `bridge` could not tell (not installed?): unknown, not off
            if brnf and not flag:  # detached ports count as off: they come back with it off
                yield _finding(
                    "hairpin",
                    "error",
                    c.name,
                    f"hairpin is off on {c.host_veth.name}: {c.name} cannot reach its own "
                    f"published port {hport} via {dst}",
                    [
                        f"bridge -d link show dev {c.host_veth.name}: hairpin off",
                        _sysctl_line(view, "net.bridge.bridge-nf-call-iptables"),
                        "with br_netfilter, the DNATed packet is bridged back out the port it "
                        "came in on, which a bridge only does with hairpin mode on",
                        dnat[1].evidence()[-1],
                    ],
                    [("run", ["bridge", "link", "set", "dev", c.host_veth.name, "hairpin", "on"])],
                    "hairpin",
                    safe=True,
                    port=hport,
                )
            back = _pkt(
                view, src=c.ip, dst=c.ip, proto=proto, dport=cport, iif=br.name, oif=br.name
            )
            pw = [(rs, rs.walk("nat", "POSTROUTING", back)) for rs in view.active_rulesets()]
            if not any(w.verdict in ("MASQUERADE", "SNAT") for _, w in pw):
                rs = dnat[0]
                ev = [
                    f"{r.tool} -t nat POSTROUTING for {c.ip} -> {c.ip}:{cport}: {w.verdict}"
                    for r, w in pw
                ]
                ev.append(
                    "without it the container answers itself directly and drops the "
                    "reply (wrong source address)"
                )
                yield _finding(
                    "hairpin",
                    "error",
                    c.name,
                    f"no hairpin MASQUERADE for {c.name} ({c.ip} -> {c.ip}:{cport}): it cannot "
                    f"reach its own published port {hport}",
                    ev,
                    [
                        (
                            "run",
                            [
                                rs.tool,
                                "-t",
                                "nat",
                                "-I",
                                "POSTROUTING",
                                "1",
                                "-s",
                                f"{c.ip}/32",
                                "-d",
                                f"{c.ip}/32",
                                "-p",
                                proto,
                                "-m",
                                proto,
                                "--dport",
                                str(cport),
                                "-j",
                                "MASQUERADE",
                            ],
                        )
                    ],
                    "hairpin",
                    safe=True,
                    port=hport,
                )


def bridge_nf(view: HostView) -> Iterator[Finding]:
    if view.sysctl("net.bridge.bridge-nf-call-iptables") != "1":
        return
    by_bridge: dict = {}
    for c, br, _ in _bridged(view):
        if c.host_veth.master == br.name:
            by_bridge.setdefault(br.name, []).append(c)
    for name, members in by_bridge.items():
        if len(members) < 2:
            continue
        a, b = members[0], members[1]
        dport = next((s[2] for s in b.sockets if s[0] == "tcp"), 80)
        pkt = _pkt(view, src=a.ip, dst=b.ip, dport=dport, iif=name, oif=name)
        for rs in view.active_rulesets():
            if "filter" not in rs.tables:
                continue
            w = rs.walk("filter", "FORWARD", pkt)
            if not _drops(w):
                continue
            ev = [
                _sysctl_line(view, "net.bridge.bridge-nf-call-iptables"),
                "br_netfilter sends bridged frames through iptables FORWARD "
                f"(in={name} out={name})",
                f"{rs.tool} FORWARD for {a.name} {a.ip} -> {b.name} {b.ip}:{dport}: {w.verdict}",
            ] + [f"  {ln}" for ln in w.evidence()]
            yield _finding(
                "bridge_nf_drop",
                "error",
                None,
                f"containers on {name} cannot talk to each other: "
                "bridge-nf-call-iptables=1 and FORWARD drops bridged traffic",
                ev,
                [
                    a
                    for a in (
                        _nft_insert(w, "iifname", name, "oifname", name, "accept")
                        if _native(rs)
                        else (
                            "run",
                            [rs.tool, "-I", "FORWARD", "1", "-i", name, "-o", name, "-j", "ACCEPT"],
                        ),
                    )
                    if a
                ],
                "bridge-nf-call-iptables",
                safe=True,
            )


def localhost_publish(view: HostView) -> Iterator[Finding]:
    """A DNAT on 127.0.0.0/8 runs in nat PREROUTING before any martian check, so a
    neighbour that sends to 127.0.0.1 with this host's MAC reaches the container,
    whatever route_localnet says; route_localnet=1 also exposes 127.0.0.1 listeners."""
    bridges = {c.host_veth.master for c in view.containers if c.host_veth and c.host_veth.master}
    outer = [
        ln
        for ln in view.links.values()
        if ln.name != "lo" and ln.kind != "bridge" and ln.name not in bridges and ln.addrs and ln.up
    ]
    all_on = view.sysctl("net.ipv4.conf.all.route_localnet") == "1"
    done = set()
    for rs in view.active_rulesets():
        for rule in rs.rules("nat"):
            tgt, d, hport = ipt.dnat_target(rule), rule.get("dst"), rule.get("dport")
            if (
                not tgt
                or not d
                or not hport
                or not hport.isdigit()
                or not ipt._addr_in("127.0.0.0/8", d.split("/")[0])
            ):
                continue
            ip = d.split("/")[0]
            key = (ip, hport, rule.get("proto") or "tcp")
            if key in done:
                continue  # e.g. the hairpin twin of the same published port
            done.add(key)
            open_on, shown = [], None
            for ln in outer:
                pkt = _pkt(
                    view,
                    src=SIM_REMOTE,
                    dst=ip,
                    proto=rule.get("proto") or "tcp",
                    dport=int(hport),
                    iif=ln.name,
                )
                if any(
                    _drops(r.walk("raw", "PREROUTING", pkt))
                    or _drops(r.walk("mangle", "PREROUTING", pkt))
                    for r in view.active_rulesets()
                ):
                    continue
                w = rs.walk("nat", "PREROUTING", pkt)
                if w.verdict == "DNAT":
                    open_on.append(ln.name)
                    shown = shown or w
            if not open_on:
                continue
            c = view.container_by_ip(tgt[0])
            ev = [
                f"a neighbour on {', '.join(open_on)} can send to {ip}:{hport} with this "
                "host's MAC; nat PREROUTING DNATs it before routing:"
            ]
            ev += [f"  {x}" for x in (shown.evidence() if shown else [])]
            ev.append(
                "no raw PREROUTING rule drops 127.0.0.0/8 arriving on a non-loopback interface"
            )
            ev.append(
                _sysctl_line(view, "net.ipv4.conf.all.route_localnet")
                + " (does not protect DNAT; =1 also exposes 127.0.0.1 listeners)"
            )
            yield _finding(
                "localhost_publish",
                "error",
                c.name if c else None,
                f"port {hport} published on {ip} is reachable from outside via "
                f"{', '.join(open_on)}",
                ev,
                [
                    (
                        "run",
                        [
                            rs.tool,
                            "-t",
                            "raw",
                            "-I",
                            "PREROUTING",
                            "1",
                            "-d",
                            "127.0.0.0/8",
                            "!",
                            "-i",
                            "lo",
                            "-j",
                            "DROP",
                        ],
                    )
                ],
                "localhost-publish-exposed",
                safe=True,
                port=int(hport),
            )
    loop_listeners = [s for s in view.host_sockets if s[1].startswith("127.")]
    for ln in outer:
        if not (all_on or view.sysctl(f"net.ipv4.conf.{ln.name}.route_localnet") == "1"):
            continue
        if not loop_listeners:
            continue
        keys = ["net.ipv4.conf.all.route_localnet", f"net.ipv4.conf.{ln.name}.route_localnet"]
        yield _finding(
            "localhost_publish",
            "warning",
            None,
            f"route_localnet=1 on {ln.name}: services bound to 127.0.0.1 on the host are "
            "reachable from that link",
            [_sysctl_line(view, k) for k in keys]
            + [
                "host listeners on loopback: "
                + ", ".join(f"{s[0]} {s[1]}:{s[2]}" for s in loop_listeners[:5])
            ],
            [("run", ["sysctl", "-w", f"{k}=0"]) for k in keys],
            "localhost-publish-exposed",
        )


def nft_native(view: HostView) -> Iterator[Finding]:
    """A native nftables forward chain (firewalld, nftables.conf) with policy drop that says
    nothing about the container bridge drops container traffic that iptables accepts."""
    bridges = {br.name: br for _, br, _ in _bridged(view)}
    if not bridges:
        return
    native = view.rulesets.get("nftables")
    for ch in view.nft_native:
        if ch["hook"] != "forward" or ch["policy"] != "drop":
            continue
        for name, br in bridges.items():
            if native is not None and _owner(view, [name]) is native:
                continue  # native rules hold this bridge: forward_drop walks them all
            nets = [str(n.network_address) for n in br.networks()]
            mentions = [
                r for r in ch["rules"] if f'"{name}"' in r or any(f'"{a}"' in r for a in nets)
            ]
            if any('"accept"' in r for r in mentions):
                continue
            if any(r.count('"match"') == 0 and '"accept"' in r for r in ch["rules"]):
                continue  # an unconditional accept
            where = f"{ch['family']} {ch['table']} {ch['chain']}"
            try:
                text = (
                    subprocess.run(
                        ["nft", "list", "chain", ch["family"], ch["table"], ch["chain"]],
                        capture_output=True,
                        text=True,
                        timeout=10,
                        check=False,
                    )
                    .stdout.strip()
                    .splitlines()
                )
            except (OSError, subprocess.TimeoutExpired):
                text = []
            ev = [
                f"nft chain {where}: hook forward, policy drop, {len(ch['rules'])} rule(s), "
                f"none accepts {name} traffic",
                *[f"  {ln.strip()}" for ln in text[:12]],
                "iptables-legacy-save / iptables-nft-save do not show native nftables "
                "tables; every forwarded packet passes this chain too",
            ]
            yield _finding(
                "nft_native_drop",
                "error",
                None,
                f"native nftables chain {where} drops forwarded traffic of {name} by policy",
                ev,
                [
                    (
                        "run",
                        [
                            "nft",
                            "insert",
                            "rule",
                            ch["family"],
                            ch["table"],
                            ch["chain"],
                            "oifname",
                            name,
                            "accept",
                        ],
                    ),
                    (
                        "run",
                        [
                            "nft",
                            "insert",
                            "rule",
                            ch["family"],
                            ch["table"],
                            ch["chain"],
                            "iifname",
                            name,
                            "accept",
                        ],
                    ),
                ],
                "iptables-legacy-nft-split",
            )


def split_backends(view: HostView) -> Iterator[Finding]:
    legacy, nft = view.rulesets.get("legacy"), view.rulesets.get("nft")
    if legacy and nft and legacy.has_rules() and nft.has_rules():
        yield _finding(
            "split_backends",
            "info",
            None,
            "rules live in both iptables-legacy and iptables-nft; packets pass both sets, "
            "and `iptables` (nft on Debian) shows only one of them",
            legacy.summary() + nft.summary(),
            [],
            "iptables-legacy-nft-split",
            fix="inspect both: iptables-legacy-save; iptables-nft-save",
        )


def conntrack(view: HostView) -> Iterator[Finding]:
    ct = view.conntrack
    count, cmax = ct.get("count"), ct.get("max")
    if count is None or not cmax:
        return
    ratio = count / cmax
    if ratio < 0.9:
        return
    stats = ct.get("stats", {})
    ev = [
        f"net.netfilter.nf_conntrack_count = {count} (this netns)",
        f"net.netfilter.nf_conntrack_max = {cmax}"
        + ("" if ct.get("max_writable") else " (global: read-only in this network namespace)"),
        "conntrack -S: "
        + ", ".join(f"{k}={stats.get(k, 0)}" for k in ("drop", "early_drop", "insert_failed")),
    ]
    if ct.get("max_writable"):
        actions = [("run", ["sysctl", "-w", f"net.netfilter.nf_conntrack_max={cmax * 2}"])]
    else:
        actions = [("run", ["conntrack", "-F"])]
    yield _finding(
        "conntrack_full",
        "error" if ratio >= 0.98 else "warning",
        None,
        f"conntrack table {ratio:.0%} full ({count}/{cmax}): new connections "
        "are dropped when it fills",
        ev,
        actions,
        "conntrack-full",
        fix=(
            " && ".join(describe_action(a) for a in actions)
            + (
                ""
                if ct.get("max_writable")
                else "   (or raise nf_conntrack_max in the initial network namespace)"
            )
        ),
    )


def rp_filter(view: HostView) -> Iterator[Finding]:
    all_val = int(view.sysctl("net.ipv4.conf.all.rp_filter") or 0)
    counter = view.netstat.get("TcpExt.IPReversePathFilter", 0)
    for ln in view.links.values():
        if ln.name == "lo" or not ln.up:
            continue
        own = int(view.sysctl(f"net.ipv4.conf.{ln.name}.rp_filter") or 0)
        if max(all_val, own) != 1:
            continue
        asym = []
        for n in view.neighbours:
            if n["dev"] != ln.name or not n["ip"] or n["ip"] in view.local_addrs:
                continue
            back = view.route_dev(n["ip"])
            if back and back != ln.name:
                asym.append(
                    f"neighbour {n['ip']} is seen on {ln.name} but the route back "
                    f"to it leaves via {back} (`ip route get {n['ip']}`)"
                )
        if not asym:
            continue
        keys = ["net.ipv4.conf.all.rp_filter", f"net.ipv4.conf.{ln.name}.rp_filter"]
        ev = (
            [_sysctl_line(view, k) for k in keys]
            + asym
            + [
                f"TcpExt IPReversePathFilter = {counter} packets dropped by rp_filter "
                "(/proc/net/netstat, host netns)"
            ]
        )
        yield _finding(
            "rp_filter",
            "error",
            None,
            f"strict rp_filter on {ln.name} drops asymmetric traffic",
            ev,
            [("run", ["sysctl", "-w", f"{k}=2"]) for k in keys],
            "rp-filter",
        )


def oom(view: HostView) -> Iterator[Finding]:
    for c in view.containers:
        if c.oom_killed and c.status != "running":
            yield _finding(
                "oom_killed",
                "error",
                c.name,
                f"{c.name} was OOM-killed (status {c.status})",
                [f"pyinspect state: oom_killed=true, status {c.status}"],
                [],
                "oom-killed",
                fix=f"pyinspect rm {c.name} && pyinspect run --memory <more> ...",
            )
            continue
        m = c.memory
        if not m or not m.get("oom_kill"):
            continue
        key = f"oom:{m['cgroup']}"
        seen = int(view.memory.get(key, 0))
        if m["oom_kill"] <= seen:
            continue
        limit = m.get("limit")
        ev = [
            f"{m['counter_file']}: oom_kill {m['oom_kill']}"
            + (f" (was {seen} at the last acknowledged check)" if seen else ""),
            f"{m['limit_file']}: {limit}",
            f"peak usage: {m.get('max_usage')}",
        ]
        actions = []
        if limit and limit < 1 << 60:
            memsw = m.get("memsw")
            if memsw and memsw < limit * 2:  # v1: memory+swap must stay >= memory
                actions.append(("write", m["memsw_file"], str(limit * 2)))
                ev.append(f"{m['memsw_file']}: {memsw}")
            actions.append(("write", m["limit_file"], str(limit * 2)))
        actions.append(("ack", key, m["oom_kill"]))
        yield _finding(
            "oom_killed",
            "error",
            c.name,
            f"the kernel OOM-killed {m['oom_kill'] - seen} process(es) in {c.name} "
            f"(memory limit {limit})",
            ev,
            actions,
            "oom-killed",
        )


def paused(view: HostView) -> Iterator[Finding]:
    """A paused container takes packets (the kernel still answers a TCP handshake and
    queues the data) but no process in it runs to answer them."""
    for c in view.containers:
        if not c.frozen_by:
            continue
        actions: list[Action] = []
        if c.source == "pyinspect" and c.frozen_by.endswith("/cgroup.events"):
            # what `pyinspect unpause` does, without needing its state root
            actions.append(("write", c.frozen_by.replace("cgroup.events", "cgroup.freeze"), "0"))
        tool = "pyinspect" if c.source == "pyinspect" else "docker"  # Docker's own state
        yield _finding(
            "paused",
            "error",
            c.name,
            f"{c.name} is paused: its processes are frozen, so connections to it open "
            "and then hang with no answer",
            [f"{c.frozen_by}: frozen (pid {c.pids[0]})"],
            actions,
            "container-paused",
            fix=f"{tool} unpause {c.name}",
        )


def duplicate_ip(view: HostView) -> Iterator[Finding]:
    """Two containers on one bridge with one address (two runtimes sharing a bridge, a
    record lost and its address leased again): both answer ARP, and the host's
    neighbour entry, so every DNAT to the address, follows whichever spoke last."""
    by_addr: dict[tuple[str, str], list[ContainerView]] = {}
    for c, br, _gw in _bridged(view):
        by_addr.setdefault((br.name, c.ip), []).append(c)
    for (br_name, ip), cs in sorted(by_addr.items()):
        if len(cs) < 2:
            continue
        macs = {c.eth.mac: c.name for c in cs if c.eth and c.eth.mac}
        ev = [
            f"{c.name} ({c.source}): eth0 {ip} mac {c.eth.mac if c.eth else '?'}, host veth "
            f"{c.host_veth.name if c.host_veth else '?'} on {br_name}"
            for c in cs
        ]
        for n in view.neighbours:
            if n["ip"] == ip and n.get("mac"):
                ev.append(
                    f"the host's neighbour entry for {ip} on {n['dev']}: {n['mac']} "
                    f"({macs.get(n['mac'], 'neither')}, {_nud(n['state'])}): packets to {ip}, "
                    "DNATed ones too, go there"
                )
        names = ", ".join(c.name for c in cs)
        yield _finding(
            "duplicate_ip",
            "error",
            cs[0].name,
            f"{names} all use {ip} on {br_name}: packets for {ip} reach whichever answered "
            "ARP last",
            ev,
            [],
            "duplicate-address",
            fix=f"give all but one of {names} another address (recreate them on the "
            "network, whose leases keep addresses apart)",
        )


OUTSIDE_CLIENT = "203.0.113.7"  # (TEST-NET-3) a client outside the host, for walks


def container_firewall(view: HostView) -> Iterator[Finding]:
    """The container's own firewall (in its netns: iptables, or native nft tables)
    dropping new connections to a port the host publishes to it: DNAT and FORWARD let the
    packet in, its input hook ends it."""
    for c in view.containers:
        if not c.rulesets or not c.ip or not c.eth:
            continue
        for p in c.ports:
            pkt = ipt.Packet(
                src=OUTSIDE_CLIENT,
                dst=c.ip,
                proto=p.proto,
                dport=p.container_port,
                iif=c.eth.name,
                local_addrs=frozenset({c.ip, LOCALHOST}),
            )
            for rs in c.rulesets.values():
                w = rs.walk("filter", "INPUT", pkt)
                if not _drops(w):
                    continue
                accept: list[str] | None
                if rs.backend == "nftables":  # at the top of the nft chain that dropped it
                    insert = _nft_insert(w, p.proto, "dport", str(p.container_port), "accept")
                    accept = c.exec_prefix() + insert[1] if insert else None
                else:
                    accept = c.exec_prefix() + [rs.tool, "-I", "INPUT", "-p", p.proto]
                    accept += ["--dport", str(p.container_port), "-j", "ACCEPT"]
                yield _finding(
                    "container_firewall",
                    "error",
                    c.name,
                    f"{c.name}'s own firewall drops new connections to {p.proto}/"
                    f"{p.container_port}, the port host {p.host_port} is published to "
                    f"(filter INPUT in its netns, {rs.backend})",
                    [f"in {c.name}'s netns: {line}" for line in w.evidence()]
                    + [
                        f"walked: {p.proto} {OUTSIDE_CLIENT} -> {c.ip}:{p.container_port} in "
                        f"{c.eth.name}, state NEW"
                    ],
                    [],
                    "container-firewall",
                    port=p.host_port,
                    fix=f"accept the port in {c.name}'s firewall (its own configuration)"
                    + (f", e.g. {quote(accept)}" if accept else ""),
                )
                break


EMBEDDED_DNS = "127.0.0.11"  # Docker's and pyinspect's embedded DNS in a user network


def _answers(c: ContainerView, ns: str) -> bool:
    """Whether something in `c`'s netns can answer DNS sent to loopback address `ns`:
    a UDP socket on it (or on every address) at port 53, or, at the embedded DNS's
    address, on any port (Docker's redirects 53 there with a nat rule in the netns)."""
    for s in c.sockets:
        if s.proto != "udp":
            continue
        if s.addr in (ns, "0.0.0.0", "::") and s.port == 53:
            return True
        if ns == EMBEDDED_DNS and s.addr == ns:
            return True
    return False


def container_dns(view: HostView) -> Iterator[Finding]:
    """A container whose resolv.conf names a loopback resolver that nothing in its own
    network namespace answers (a host's resolv.conf copied in as it is: systemd-resolved's
    127.0.0.53), or no nameserver at all (the C library then asks 127.0.0.1)."""
    from ..runtime.netdns import nameservers

    for c in view.containers:
        if c.resolv_conf is None or (c.declared or {}).get("dns") == EMBEDDED_DNS:
            continue  # unread, or a pyinspect user network's: the user_dns check
        servers = nameservers(c.resolv_conf)
        listed = servers or ["127.0.0.1"]
        dead = [
            ns
            for ns in listed
            if ipaddress.ip_address(ns.split("%")[0]).is_loopback and not _answers(c, ns)
        ]
        if not dead:
            continue
        udp = ", ".join(f"{s.addr}:{s.port}" for s in c.sockets if s.proto == "udp") or "none"
        where = f"/proc/{c.pids[0]}/root/etc/resolv.conf"
        all_dead = len(dead) == len(listed)
        yield _finding(
            "container_dns",
            "error" if all_dead else "warning",
            c.name,
            f"{c.name} sends DNS to {', '.join(dead)}: a loopback address in its own network "
            "namespace, where nothing answers: "
            + ("every lookup fails" if all_dead else "lookups wait for it to time out first"),
            [
                f"{where}: "
                + (
                    ", ".join(f"nameserver {ns}" for ns in servers)
                    or "no nameserver line (the C library then asks 127.0.0.1)"
                ),
                f"UDP sockets in its netns: {udp}",
            ],
            [],
            "container-dns",
            fix="give it a resolver it can reach: a resolv.conf without loopback "
            "nameservers (what Docker and pyinspect write when they make a container), "
            "or run it again with --dns ADDRESS",
        )


def quote(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# (name, check) in the order they run
CHECKS = [
    ("ip_forward", ip_forward),
    ("veth", veth),
    ("container_route", container_route),
    ("mtu", mtu),
    ("dnat_stale", dnat_stale),
    ("published_ports", published_ports),
    ("egress", egress),
    ("masquerade", masquerade),
    ("hairpin", hairpin),
    ("bridge_nf", bridge_nf),
    ("localhost_publish", localhost_publish),
    ("nft_native", nft_native),
    ("split_backends", split_backends),
    ("conntrack", conntrack),
    ("rp_filter", rp_filter),
    ("oom", oom),
    ("paused", paused),
    ("container_firewall", container_firewall),
    ("duplicate_ip", duplicate_ip),
    ("container_dns", container_dns),
]
