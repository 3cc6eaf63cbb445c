"""Port publishing and NAT with python-iptables, laid out like Docker's iptables rules.

python-iptables drives libiptc, i.e. the LEGACY x_tables backend: see the
rules with `iptables-legacy -t nat -nvL` (Debian's plain `iptables` shows
nf_tables). Everything acts on the network namespace of the calling process.

Layout for bridge `br` with subnet `S` (Docker's names in brackets):

    nat    PREROUTING  -m addrtype --dst-type LOCAL -j PYINSPECT              [DOCKER]
    nat    OUTPUT      ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PYINSPECT
    nat    OUTPUT      -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PYINSPECT  (localhost)
    nat    POSTROUTING -s S ! -o br -j MASQUERADE
    nat    POSTROUTING -s 127.0.0.0/8 -o br -j MASQUERADE                        (localhost)
    nat    PYINSPECT   [-d HOSTIP] ! -i br -p P --dport HP -j DNAT --to IP:CP    (per port)
    nat    PYINSPECT   [-d HOSTIP] -i br -p P --dport HP -j DNAT --to IP:CP      (hairpin twin)
    nat    POSTROUTING -s IP -d IP -p P --dport CP -j MASQUERADE                 (hairpin, per port)
    filter FORWARD     -j PYINSPECT-FORWARD                                      (inserted first)
    filter PYINSPECT-FORWARD -o br -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    filter PYINSPECT-FORWARD -o br -j PYINSPECT
    filter PYINSPECT-FORWARD -i br ! -o br -j ACCEPT
    filter PYINSPECT-FORWARD -i br -o br -j ACCEPT
    filter PYINSPECT   -d IP ! -i br -o br -p P --dport CP -j ACCEPT              (per port)
    raw    PREROUTING  -i br -d 127.0.0.0/8 -j DROP      (guard for route_localnet on br)
    raw    PREROUTING  -d 127.x ! -i lo -p P --dport HP -j DROP  (per port published on 127.x:
           a neighbour's packet to 127.x would otherwise be DNATed before the martian check)

Every rule carries `-m comment --comment pyinspect:<bridge>:<owner>` (owner =
`base` or a container id prefix). Only rules with that tag are ever changed or
deleted, so rules written by anyone else are left alone; our chains are
deleted only when empty and unreferenced.
"""

import contextlib
import dataclasses
import fcntl
import os
import time

from ..errors import UnavailableError

NAT_CHAIN = "PYINSPECT"
FILTER_CHAIN = "PYINSPECT"
FORWARD_CHAIN = "PYINSPECT-FORWARD"
TAG = "pyinspect:"
LOOPBACK = "127.0.0.0/8"
TABLES = ("raw", "nat", "filter")  # order of sync: chains exist before jumps to them
OUR_CHAINS = {"nat": (NAT_CHAIN,), "filter": (FORWARD_CHAIN, FILTER_CHAIN), "raw": ()}


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """One rule as pyinspect wants it; `comment` names its owner."""

    table: str
    chain: str
    comment: str
    target: str
    target_params: tuple = ()
    src: str = None
    dst: str = None
    in_: str = None
    out: str = None
    proto: str = None
    matches: tuple = ()  # ((match name, ((param, value), ...)), ...)
    insert: bool = False


def owner_tag(bridge, owner):
    return f"{TAG}{bridge}:{owner}"


def owner_of(container_id):
    return container_id[:12]


def base_rules(bridge, subnet):
    """The rules a bridge network needs while it has containers."""
    tag = owner_tag(bridge, "base")
    local = (("addrtype", (("dst_type", "LOCAL"),)),)
    R = RuleSpec
    return [
        R("nat", "PREROUTING", tag, NAT_CHAIN, matches=local),
        R("nat", "OUTPUT", tag, NAT_CHAIN, dst="!" + LOOPBACK, matches=local),
        R("nat", "OUTPUT", tag, NAT_CHAIN, dst=LOOPBACK, matches=local),
        R("nat", "POSTROUTING", tag, "MASQUERADE", src=subnet, out="!" + bridge),
        R("nat", "POSTROUTING", tag, "MASQUERADE", src=LOOPBACK, out=bridge),
        R("filter", "FORWARD", tag, FORWARD_CHAIN, insert=True),
        R(
            "filter",
            FORWARD_CHAIN,
            tag,
            "ACCEPT",
            out=bridge,
            matches=(("conntrack", (("ctstate", "RELATED,ESTABLISHED"),)),),
        ),
        R("filter", FORWARD_CHAIN, tag, FILTER_CHAIN, out=bridge),
        R("filter", FORWARD_CHAIN, tag, "ACCEPT", in_=bridge, out="!" + bridge),
        R("filter", FORWARD_CHAIN, tag, "ACCEPT", in_=bridge, out=bridge),
        R("raw", "PREROUTING", tag, "DROP", in_=bridge, dst=LOOPBACK),
    ]


def container_rules(bridge, container_id, ip, bindings):
    """DNAT (and its hairpin twin), hairpin MASQUERADE and FORWARD accept for each binding."""
    tag = owner_tag(bridge, owner_of(container_id))
    out = []
    for b in bindings:
        proto, hp, cp = b["proto"], str(b["host_port"]), str(b["container_port"])
        host_dst = None if b["host_ip"] in (None, "", "0.0.0.0") else b["host_ip"]
        to = (("to_destination", f"{ip}:{cp}"),)
        out += [
            RuleSpec(
                "nat",
                NAT_CHAIN,
                tag,
                "DNAT",
                to,
                dst=host_dst,
                in_="!" + bridge,
                proto=proto,
                matches=((proto, (("dport", hp),)),),
            ),
            RuleSpec(
                "nat",
                NAT_CHAIN,
                tag,
                "DNAT",
                to,
                dst=host_dst,
                in_=bridge,
                proto=proto,
                matches=((proto, (("dport", hp),)),),
            ),
            RuleSpec(
                "nat",
                "POSTROUTING",
                tag,
                "MASQUERADE",
                src=ip,
                dst=ip,
                proto=proto,
                matches=((proto, (("dport", cp),)),),
            ),
            RuleSpec(
                "filter",
                FILTER_CHAIN,
                tag,
                "ACCEPT",
                dst=ip,
                in_="!" + bridge,
                out=bridge,
                proto=proto,
                matches=((proto, (("dport", cp),)),),
            ),
        ]
        if host_dst and host_dst.startswith("127."):
            # nat PREROUTING would DNAT a neighbour's packet to 127.x before routing's
            # martian check: only loopback may reach a port published on 127.x.
            out.append(
                RuleSpec(
                    "raw",
                    "PREROUTING",
                    tag,
                    "DROP",
                    dst=host_dst,
                    in_="!lo",
                    proto=proto,
                    matches=((proto, (("dport", hp),)),),
                )
            )
    return out


def desired(state):
    """Every rule the network state calls for (nothing when it has no containers)."""
    leases = state.get("leases", {})
    if not leases:
        return []
    rules = base_rules(state["bridge"], state["subnet"])
    for ip, lease in sorted(leases.items()):
        rules += container_rules(state["bridge"], lease["id"], ip, lease.get("ports", []))
    return rules


# --- python-iptables plumbing ---------------------------------------------------------------


def _iptc():
    import sys

    # iptc.util tries `distutils.sysconfig` first, which setuptools' distutils shim makes
    # cost 100-1000 ms; blocking it makes iptc use its own `sysconfig` fallback (same path).
    blocked = [m for m in ("distutils", "distutils.sysconfig") if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None
    try:
        import iptc  # ~200 ms (xtables libraries): only on the bridge path
    except Exception as exc:  # noqa: BLE001 ImportError, or libiptc/xtables missing
        raise UnavailableError(
            f"python-iptables unavailable: {exc}",
            hint="install python-iptables and the iptables package",
        ) from None
    finally:
        for m in blocked:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
    return iptc


def _build(iptc, spec):
    rule = iptc.Rule()
    if spec.src:
        rule.src = spec.src
    if spec.dst:
        rule.dst = spec.dst
    if spec.in_:
        rule.in_interface = spec.in_
    if spec.out:
        rule.out_interface = spec.out
    if spec.proto:
        rule.protocol = spec.proto
    for name, params in spec.matches:
        m = rule.create_match(name)
        for key, value in params:
            setattr(m, key, value)
    m = rule.create_match("comment")
    m.comment = spec.comment
    if spec.target in ("ACCEPT", "DROP", "RETURN", NAT_CHAIN, FORWARD_CHAIN):
        rule.target = iptc.Target(rule, spec.target)
    else:
        rule.target = rule.create_target(spec.target)
    for key, value in spec.target_params:
        setattr(rule.target, key, value)
    return rule


def _comment(rule):
    for m in rule.matches:
        if m.name == "comment":
            return (m.get_all_parameters().get("comment") or [""])[0]
    return None


def _key(chain, rule):
    matches = tuple(
        (m.name, tuple(sorted((k, tuple(v)) for k, v in m.get_all_parameters().items())))
        for m in rule.matches
    )
    target = rule.target
    tparams = tuple(sorted((k, tuple(v)) for k, v in target.get_all_parameters().items()))
    return (
        chain,
        rule.src,
        rule.dst,
        rule.in_interface,
        rule.out_interface,
        rule.protocol,
        matches,
        target.name,
        tparams,
    )


def _iptc_error(iptc):
    return getattr(iptc, "IPTCError", OSError)


@contextlib.contextmanager
def xtables_lock(timeout=10.0):
    """Hold /run/xtables.lock like iptables-legacy does, so our table replace and another
    tool's never race (libiptc itself takes no lock)."""
    path = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UnavailableError(
                        f"iptables lock {path}: held by another program for {timeout:.0f}s"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def sync(bridge, rules):
    """Make the tagged rules of `bridge` equal `rules`: add missing ones, delete stale ones.

    Rules without our tag (or tagged for another bridge) are never touched.
    Returns {"added": n, "removed": n}.
    """
    iptc = _iptc()
    with xtables_lock():
        return _sync(iptc, bridge, rules)


def _sync(iptc, bridge, rules):
    prefix = owner_tag(bridge, "")
    counts = {"added": 0, "removed": 0}
    try:
        for tname in TABLES:
            want_specs = [r for r in rules if r.table == tname]
            table = iptc.Table(tname)
            table.autocommit = False
            table.refresh()
            have = {}
            stale = []
            for chain in table.chains:
                for rule in chain.rules:
                    c = _comment(rule)
                    if c is None or not c.startswith(prefix):
                        continue
                    key = _key(chain.name, rule)
                    if key in have:
                        stale.append((chain, rule))  # duplicate
                    else:
                        have[key] = (chain, rule)
            if not want_specs and not have and not stale:
                continue
            for chain_name in OUR_CHAINS[tname]:
                if want_specs and not table.is_chain(chain_name):
                    table.create_chain(chain_name)
            want = {}
            for spec in want_specs:
                want.setdefault(_key(spec.chain, _build(iptc, spec)), spec)
            stale += [cr for key, cr in have.items() if key not in want]
            for chain, rule in stale:
                chain.delete_rule(rule)
                counts["removed"] += 1
            for key, spec in want.items():
                if key in have:
                    continue
                chain = iptc.Chain(table, spec.chain)
                rule = _build(iptc, spec)
                if spec.insert:
                    chain.insert_rule(rule)
                else:
                    chain.append_rule(rule)
                counts["added"] += 1
            table.commit()
            if not want_specs:
                _drop_empty_chains(iptc, table, tname)
    except _iptc_error(iptc) as exc:
        raise UnavailableError(
            f"iptables (legacy) update failed: {exc}",
            hint="is the ip_tables/iptable_nat module available?",
        ) from None
    return counts


def _drop_empty_chains(iptc, table, tname):
    """Delete our chains once they are empty and nothing jumps to them."""
    table.refresh()
    for name in OUR_CHAINS[tname]:
        if not table.is_chain(name):
            continue
        chain = iptc.Chain(table, name)
        if chain.rules:
            continue
        referenced = any(r.target and r.target.name == name for c in table.chains for r in c.rules)
        if not referenced:
            table.delete_chain(name)
    table.commit()


def tagged(bridge=None):
    """Our rules as [{"table", "chain", "comment", "target", "params"}]."""
    iptc = _iptc()
    prefix = owner_tag(bridge, "") if bridge else TAG
    out = []
    for tname in TABLES:
        table = iptc.Table(tname)
        table.refresh()
        for chain in table.chains:
            for rule in chain.rules:
                c = _comment(rule)
                if c and c.startswith(prefix):
                    out.append(
                        {
                            "table": tname,
                            "chain": chain.name,
                            "comment": c,
                            "target": rule.target.name,
                            "params": rule.target.get_all_parameters(),
                        }
                    )
    return out
