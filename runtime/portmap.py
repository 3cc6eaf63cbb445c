"""Port publishing, NAT and network isolation, laid out like Docker's iptables rules.

Rules are written with the backend the host's `iptables` command is (runtime/iptables.py:
iptables-nft on Debian 12, so `iptables -t nat -nvL` shows them), one atomic
`iptables-restore --noflush` text per change and family, and read back with
probes/iptsave.py. Everything acts on the network namespace of the calling process.

Layout for bridge `br` with subnet `S` (Docker's names in brackets):

    nat    PREROUTING  -m addrtype --dst-type LOCAL -j PYINSPECT              [DOCKER]  (jump)
    nat    OUTPUT      ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PYINSPECT       (jump)
    nat    OUTPUT      -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PYINSPECT  (jump, localhost)
    nat    POSTROUTING -s S ! -o br -j MASQUERADE                  (not on --internal networks)
    nat    POSTROUTING -s 127.0.0.0/8 -o br -j MASQUERADE                        (localhost)
    nat    PYINSPECT   [-d HOSTIP] ! -i br -p P --dport HP -j DNAT --to IP:CP    (per port)
    nat    PYINSPECT   [-d HOSTIP] -i br -p P --dport HP -j DNAT --to IP:CP      (hairpin twin)
    nat    POSTROUTING -s IP -d IP -p P --dport CP -j MASQUERADE                 (hairpin, per port)
    filter FORWARD     -j PYINSPECT-FORWARD                             (jump, inserted first)
    filter PYINSPECT-FORWARD -j PYINSPECT-ISOLATION-STAGE-1             (jump, inserted first)
    filter PYINSPECT-FORWARD -o br -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    filter PYINSPECT-FORWARD -o br -j PYINSPECT
    filter PYINSPECT-FORWARD -i br ! -o br -j ACCEPT                (not on --internal networks)
    filter PYINSPECT-FORWARD -i br -o br -j ACCEPT
    filter PYINSPECT   -d IP ! -i br -o br -p P --dport CP -j ACCEPT              (per port)
    filter PYINSPECT-ISOLATION-STAGE-1 -i br ! -o br -j PYINSPECT-ISOLATION-STAGE-2
    filter PYINSPECT-ISOLATION-STAGE-2 -o br -j DROP          [DOCKER-ISOLATION-STAGE-1/2]
    filter PYINSPECT-ISOLATION-STAGE-1 ! -s S -o br -j DROP                     (--internal)
    filter PYINSPECT-ISOLATION-STAGE-1 ! -d S -i br -j DROP                     (--internal)
    raw    PREROUTING  -i br -d 127.0.0.0/8 -j DROP      (guard for route_localnet on br)
    raw    PREROUTING  -d 127.x ! -i lo -p P --dport HP -j DROP  (per port published on 127.x:
           a neighbour's packet to 127.x would otherwise be DNATed before the martian check)

Every rule carries `-m comment --comment pyinspect:<bridge>:<owner>` (owner =
`base` or a container id prefix); the jumps into our chains, shared by every
network in the namespace, carry `pyinspect:jumps` and exist while any network
has rules. Only rules with those tags are ever changed or deleted, so rules
written by anyone else are left alone; our chains are deleted only when empty
and unreferenced, and so are the iptables-nft tables and built-in chains our rules
made (runtime/nftmade.py). Rules are `RuleSpec`s with a `family` (4 or 6: ip6tables).

A dual-stack network (subnet6 in its state) gets the same layout in ip6tables
(`base_rules6`, `container_rules6`): MASQUERADE for the IPv6 subnet, `DNAT --to
[IP6]:CP` for every port published on all addresses (`-p 8080:80`, as Docker
does; a port on one IPv4 host address stays IPv4 only), the hairpin twin and MASQUERADE, the
FORWARD accepts and the isolation chains. No localhost publishing and no raw guard
for IPv6 (route_localnet has no IPv6 counterpart).
"""

import dataclasses
import re
import shutil

from ..errors import UnavailableError
from . import iptables, nftmade

NAT_CHAIN = "PYINSPECT"
FILTER_CHAIN = "PYINSPECT"
FORWARD_CHAIN = "PYINSPECT-FORWARD"
ISOLATION1 = "PYINSPECT-ISOLATION-STAGE-1"
ISOLATION2 = "PYINSPECT-ISOLATION-STAGE-2"
TAG = "pyinspect:"
JUMP_TAG = "pyinspect:jumps"
LOOPBACK = "127.0.0.0/8"
LOOPBACK6 = "::1/128"
TABLES = ("raw", "nat", "filter")
OUR_CHAINS = {
    "nat": (NAT_CHAIN,),
    "filter": (FORWARD_CHAIN, FILTER_CHAIN, ISOLATION1, ISOLATION2),
    "raw": (),
}


@dataclasses.dataclass(frozen=True)
class RuleSpec:
    """One rule as pyinspect wants it; `comment` names its owner, `family` is 4 or 6."""

    table: str
    chain: str
    comment: str
    target: str
    target_params: tuple = ()
    src: str | None = None
    dst: str | None = None
    in_: str | None = None
    out: str | None = None
    proto: str | None = None
    matches: tuple = ()  # ((match name, ((param, value), ...)), ...)
    insert: bool = False
    family: int = 4

    def args(self) -> list[str]:
        """The rule after `-A CHAIN`, token for token as `iptables-save` prints it."""
        out: list[str] = []
        for flag, value, is_addr in (
            ("-s", self.src, True),
            ("-d", self.dst, True),
            ("-i", self.in_, False),
            ("-o", self.out, False),
        ):
            if not value:
                continue
            neg = value.startswith("!")
            value = value.lstrip("!")
            if is_addr and "/" not in value:
                value += "/32" if self.family == 4 else "/128"
            out += (["!"] if neg else []) + [flag, value]
        if self.proto:
            out += ["-p", self.proto]
        for name, params in self.matches:
            out += ["-m", name]
            for key, value in params:
                out += ["--" + key.replace("_", "-"), str(value)]
        out += ["-m", "comment", "--comment", self.comment, "-j", self.target]
        for key, value in self.target_params:
            out += ["--" + key.replace("_", "-"), str(value)]
        return out

    def key(self) -> tuple:
        return (self.table, self.chain, tuple(self.args()))


def owner_tag(bridge, owner):
    return f"{TAG}{bridge}:{owner}"


def owner_of(container_id):
    return container_id[:12]


def base_rules(bridge, subnet, internal=False):
    """The rules a bridge network needs while it has containers (IPv4)."""
    tag = owner_tag(bridge, "base")
    R = RuleSpec
    est = (("conntrack", (("ctstate", "RELATED,ESTABLISHED"),)),)
    rules = []
    if not internal:
        rules.append(R("nat", "POSTROUTING", tag, "MASQUERADE", src=subnet, out="!" + bridge))
    rules += [
        R("nat", "POSTROUTING", tag, "MASQUERADE", src=LOOPBACK, out=bridge),
        R("filter", FORWARD_CHAIN, tag, "ACCEPT", out=bridge, matches=est),
        R("filter", FORWARD_CHAIN, tag, FILTER_CHAIN, out=bridge),
    ]
    if not internal:
        rules.append(R("filter", FORWARD_CHAIN, tag, "ACCEPT", in_=bridge, out="!" + bridge))
    rules += [
        R("filter", FORWARD_CHAIN, tag, "ACCEPT", in_=bridge, out=bridge),
        R("raw", "PREROUTING", tag, "DROP", in_=bridge, dst=LOOPBACK),
    ]
    return rules + isolation_rules(bridge, subnet, internal)


def isolation_rules(bridge, subnet, internal=False, family=4):
    """Docker's DOCKER-ISOLATION-STAGE-1/2: nothing is forwarded from one network's bridge
    to another's; an --internal network forwards nothing in or out at all."""
    tag = owner_tag(bridge, "base")
    R = RuleSpec
    rules = [
        R("filter", ISOLATION1, tag, ISOLATION2, in_=bridge, out="!" + bridge, family=family),
        R("filter", ISOLATION2, tag, "DROP", out=bridge, family=family),
    ]
    if internal:
        rules += [
            R("filter", ISOLATION1, tag, "DROP", src="!" + subnet, out=bridge, family=family),
            R("filter", ISOLATION1, tag, "DROP", dst="!" + subnet, in_=bridge, family=family),
        ]
    return rules


def jump_rules(table, family=4):
    """The jumps from the built-in chains into ours (shared by every network here)."""
    R = RuleSpec
    local = (("addrtype", (("dst_type", "LOCAL"),)),)
    if table == "nat":
        lo = LOOPBACK if family == 4 else LOOPBACK6
        rules = [
            R("nat", "PREROUTING", JUMP_TAG, NAT_CHAIN, matches=local, family=family),
            R("nat", "OUTPUT", JUMP_TAG, NAT_CHAIN, dst="!" + lo, matches=local, family=family),
        ]
        if family == 4:  # localhost publishing (route_localnet): IPv4 only
            rules.append(R("nat", "OUTPUT", JUMP_TAG, NAT_CHAIN, dst=lo, matches=local))
        return rules
    if table == "filter":
        return [
            R("filter", "FORWARD", JUMP_TAG, FORWARD_CHAIN, insert=True, family=family),
            R("filter", FORWARD_CHAIN, JUMP_TAG, ISOLATION1, insert=True, family=family),
        ]
    return []


def container_rules(bridge, container_id, ip, bindings):
    """DNAT (and its hairpin twin), hairpin MASQUERADE and FORWARD accept for each binding."""
    tag = owner_tag(bridge, owner_of(container_id))
    out = []
    for b in bindings:
        if ":" in (b.get("host_ip") or ""):
            continue  # published on an IPv6 host address only: container_rules6
        host_dst = None if b["host_ip"] in (None, "", "0.0.0.0") else b["host_ip"]
        out += _publish_rules(bridge, tag, b, host_dst, ip, f"{ip}:{b['container_port']}", 4)
        if host_dst and host_dst.startswith("127."):
            # nat PREROUTING would DNAT a neighbour's packet to 127.x before routing's
            # martian check: only loopback may reach a port published on 127.x.
            proto = b["proto"]
            out.append(
                RuleSpec(
                    "raw",
                    "PREROUTING",
                    tag,
                    "DROP",
                    dst=host_dst,
                    in_="!lo",
                    proto=proto,
                    matches=((proto, (("dport", str(b["host_port"])),)),),
                )
            )
    return out


def _publish_rules(bridge, tag, binding, host_dst, ip, to_destination, family):
    """One binding's DNAT (from outside and, for hairpin, from the bridge), the hairpin
    MASQUERADE and the FORWARD accept, for the container address `ip`."""
    proto, hp, cp = binding["proto"], str(binding["host_port"]), str(binding["container_port"])
    to = (("to_destination", to_destination),)
    dport = ((proto, (("dport", hp),)),)
    cport = ((proto, (("dport", cp),)),)
    dnat = [
        RuleSpec(
            "nat",
            NAT_CHAIN,
            tag,
            "DNAT",
            to,
            dst=host_dst,
            in_=iif,
            proto=proto,
            matches=dport,
            family=family,
        )  # fmt: skip
        for iif in ("!" + bridge, bridge)  # from outside, then the hairpin twin
    ]
    return dnat + [
        RuleSpec(
            "nat",
            "POSTROUTING",
            tag,
            "MASQUERADE",
            src=ip,
            dst=ip,
            proto=proto,
            matches=cport,
            family=family,
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
            matches=cport,
            family=family,
        ),
    ]


def base_rules6(bridge, subnet6, internal=False):
    """The ip6tables rules of a dual-stack network (Docker's with --ipv6): MASQUERADE for
    its ULA subnet, the FORWARD accepts and isolation; no localhost publishing."""
    tag = owner_tag(bridge, "base")
    est = (("conntrack", (("ctstate", "RELATED,ESTABLISHED"),)),)

    def R(*a, **kw):
        return RuleSpec(*a, **kw, family=6)  # type: ignore[misc]  # callers never pass family

    rules = []
    if not internal:
        rules.append(R("nat", "POSTROUTING", tag, "MASQUERADE", src=subnet6, out="!" + bridge))
    rules += [
        R("filter", FORWARD_CHAIN, tag, "ACCEPT", out=bridge, matches=est),
        R("filter", FORWARD_CHAIN, tag, FILTER_CHAIN, out=bridge),
    ]
    if not internal:
        rules.append(R("filter", FORWARD_CHAIN, tag, "ACCEPT", in_=bridge, out="!" + bridge))
    rules.append(R("filter", FORWARD_CHAIN, tag, "ACCEPT", in_=bridge, out=bridge))
    return rules + isolation_rules(bridge, subnet6, internal, family=6)


def publishes_v6(binding) -> bool:
    """`-p 8080:80` publishes on every IPv4 and IPv6 address, as Docker's does; a port on
    one IPv4 host address stays IPv4 only. (runtime/ports.py records "no host IP" as
    0.0.0.0, so an explicit `-p 0.0.0.0:8080:80` is published on IPv6 too, where Docker
    keeps it IPv4 only.)"""
    ip = binding.get("host_ip")
    return ip in (None, "", "0.0.0.0", "::") or ":" in ip


def container_rules6(bridge, container_id, ip6, bindings):
    """container_rules() for the container's IPv6 address: ip6tables DNAT to
    [ip6]:port (and its hairpin twin), hairpin MASQUERADE, FORWARD accept."""
    tag = owner_tag(bridge, owner_of(container_id))
    out = []
    for b in bindings:
        if not publishes_v6(b):
            continue
        host_dst = None if b.get("host_ip") in (None, "", "0.0.0.0", "::") else b["host_ip"]
        out += _publish_rules(bridge, tag, b, host_dst, ip6, f"[{ip6}]:{b['container_port']}", 6)
    return out


def desired(state):
    """Every rule the network state calls for (nothing when it has no containers); with
    an IPv6 subnet, the ip6tables ones too."""
    leases = state.get("leases", {})
    if not leases:
        return []
    internal = bool(state.get("internal"))
    rules = base_rules(state["bridge"], state["subnet"], internal)
    if state.get("subnet6"):
        rules += base_rules6(state["bridge"], state["subnet6"], internal)
    for ip, lease in sorted(leases.items()):
        rules += container_rules(state["bridge"], lease["id"], ip, lease.get("ports", []))
        if lease.get("ip6"):
            rules += container_rules6(
                state["bridge"], lease["id"], lease["ip6"], lease.get("ports", [])
            )
    return rules


# --- the writer ----------------------------------------------------------------------------


def _comment(rule) -> str | None:
    args = rule.args
    for i, a in enumerate(args[:-1]):
        if a == "--comment":
            return args[i + 1]
    return None


def _join(args):
    """Arguments as one restore line. iptables-restore splits on blanks and knows only
    double quotes: an argument without blanks or quotes stays bare (`!` must: quoted it is
    not a negation; `[fd00::2]:80` must too: shell quoting would hand it the quotes)."""
    return " ".join(a if a and not _NEEDS_QUOTES.search(a) else _dquote(a) for a in args)


_NEEDS_QUOTES = re.compile(r"[\s\"'\\]")


def _dquote(a):
    return '"' + a.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _read(backend, family):
    """Parsed tables of `backend`/`family` here, or None when its save tool is missing."""
    from ..probes import iptsave

    save = iptables.tool(backend, family, "save")
    if not shutil.which(save):
        return None
    text, err = iptsave.run_save(save, counters=False)
    if text is None:
        raise UnavailableError(f"cannot read the rules: {err}")
    return iptsave.parse_save(text, backend)


@dataclasses.dataclass
class TableChange:
    """What one change does to one table, in this order: chains created, rules deleted
    (as `*-save` printed them), rules added, emptied chains deleted."""

    table: str
    new_chains: list[str]
    deletes: list  # probes.iptsave.Rule
    adds: list[RuleSpec]
    drop_chains: list[str]


def _plan(tables, bridge, wanted, family) -> tuple[list[TableChange], dict[str, int]]:
    """(changes, {"added", "removed"}) turning `tables` into what `wanted` says for
    `bridge` (plus the shared jumps while any network has rules)."""
    prefix = owner_tag(bridge, "")
    counts = {"added": 0, "removed": 0}
    changes = []
    for tname in TABLES:
        chains = tables.get(tname, {})
        mine, others = [], False
        for chain in chains.values():
            for rule in chain.rules:
                c = _comment(rule)
                if c is None or not c.startswith(TAG):
                    continue
                if c.startswith(prefix) or c == JUMP_TAG:
                    mine.append(rule)
                else:
                    others = True
        want = [r for r in wanted if r.table == tname]
        need_jumps = bool(want or others)
        if need_jumps:
            want = jump_rules(tname, family) + want
        if not want and not mine:
            continue
        want_keys: dict[tuple, RuleSpec] = {}
        for spec in want:
            want_keys.setdefault((spec.chain, tuple(spec.args())), spec)
        seen, deletes = set(), []
        for rule in mine:
            k = (rule.chain, tuple(rule.args))
            if k not in want_keys or k in seen:
                deletes.append(rule)
            seen.add(k)
        adds = [spec for k, spec in want_keys.items() if k not in seen]
        drop = []
        if not need_jumps:
            gone = {id(r) for r in deletes}
            for name in OUR_CHAINS[tname]:
                if name not in chains:
                    continue
                left = [r for r in chains[name].rules if id(r) not in gone]
                used = any(
                    r.target == name and id(r) not in gone for c in chains.values() for r in c.rules
                )
                if not left and not used:
                    drop.append(name)
        if not (deletes or adds or drop):
            continue
        new_chains = [
            n
            for n in OUR_CHAINS[tname]
            if n not in chains and any(n in (s.chain, s.target) for s in adds)
        ]
        changes.append(TableChange(tname, new_chains, deletes, adds, drop))
        counts["removed"] += len(deletes)
        counts["added"] += len(adds)
    return changes, counts


def _restore_text(changes: list[TableChange]) -> str:
    """The changes as one `iptables-restore --noflush` text."""
    blocks = []
    for ch in changes:
        lines = [f"*{ch.table}"]
        lines += [f":{n} - [0:0]" for n in ch.new_chains]
        lines += [f"-D {r.chain} " + _join(r.args) for r in ch.deletes]
        for spec in ch.adds:
            verb = f"-I {spec.chain} 1" if spec.insert else f"-A {spec.chain}"
            lines.append(f"{verb} " + _join(spec.args()))
        lines += [f"-X {n}" for n in ch.drop_chains]
        lines.append("COMMIT")
        blocks.append("\n".join(lines))
    return ("\n".join(blocks) + "\n") if blocks else ""


def _write(changes: list[TableChange], backend: str, family: int) -> None:
    """Apply one change: python-iptables for legacy (iptables-legacy-restore when it
    cannot be loaded, see iptables.writer()), iptables-nft-restore for nft."""
    if not changes:
        return
    if iptables.writer(backend) == "python-iptables":
        from . import iptcwrite

        iptcwrite.apply(
            [
                iptcwrite.TableOps(
                    ch.table,
                    tuple(ch.new_chains),
                    tuple((r.chain, iptcwrite.parse_args(r.args)) for r in ch.deletes),
                    tuple((s.chain, iptcwrite.spec_fields(s), s.insert) for s in ch.adds),
                    tuple(ch.drop_chains),
                )
                for ch in changes
            ],
            family,
        )
        return
    iptables.restore(_restore_text(changes), backend, family)


def sync(bridge, rules, backend=None):
    """Make the tagged rules of `bridge` equal `rules` (every family), in the backend the
    host's iptables is (`backend` overrides); our rules of `bridge` left in the other
    backend (an older pyinspect wrote legacy) are removed, so one namespace never has
    pyinspect's rules in both. Rules without our tag are never touched. Each change of
    one family is atomic per table (see _write).
    Returns {"added": n, "removed": n}."""
    backend = backend or iptables.backend()
    total = {"added": 0, "removed": 0}
    before = None  # nftables' layout before this sync's first write (nft backend)
    removed_from = []  # families whose rules this sync removed (nft backend)
    with iptables.lock():
        for family in iptables.FAMILIES:
            wanted = [r for r in rules if r.family == family]
            tables = _read(backend, family)
            if tables is None:
                if wanted:
                    raise UnavailableError(
                        f"{iptables.tool(backend, family, 'save')} not found",
                        hint="install the iptables package",
                    )
                continue
            changes, counts = _plan(tables, bridge, wanted, family)
            added = [(ch.table, spec.chain) for ch in changes for spec in ch.adds]
            if backend == "nft" and added and before is None:
                before = nftmade.layout()  # one read: a family's write leaves the other's
            _write(changes, backend, family)
            if backend == "nft":
                nftmade.note(family, before if added else None, added)
                if any(ch.deletes or ch.drop_chains for ch in changes):
                    removed_from.append(family)
            for k in total:
                total[k] += counts[k]
            other = iptables.other(backend)
            if iptables.available(other, family):
                try:
                    old = _read(other, family)
                except UnavailableError:
                    old = None  # that backend cannot even be listed here (no x_tables)
                if old and _has_tag(old, owner_tag(bridge, "")):
                    changes, _ = _plan(old, bridge, [], family)
                    _write(changes, other, family)
        if removed_from:
            nftmade.tidy(removed_from)  # the tables and built-in chains we made, when empty
    return total


def _has_tag(tables, prefix):
    return any(
        (_comment(r) or "").startswith(prefix)
        for chains in tables.values()
        for chain in chains.values()
        for r in chain.rules
    )


def in_place(bridge, rules, backend=None):
    """True when the tagged rules of `bridge` (and the jumps) are exactly `rules`: one
    `*-save` per family, nothing written."""
    backend = backend or iptables.backend()
    for family in iptables.FAMILIES:
        wanted = [r for r in rules if r.family == family]
        try:
            tables = _read(backend, family)
        except UnavailableError:
            return False
        if tables is None:
            if wanted:
                return False
            continue
        changes, _ = _plan(tables, bridge, wanted, family)
        if changes:
            return False
    return True


def tagged(bridge=None, backend=None):
    """Our rules as [{"table", "chain", "comment", "target", "args", "family"}]."""
    backend = backend or iptables.backend()
    prefix = owner_tag(bridge, "") if bridge else TAG
    out = []
    for family in iptables.FAMILIES:
        tables = _read(backend, family) or {}
        for tname, chains in tables.items():
            for chain in chains.values():
                for rule in chain.rules:
                    c = _comment(rule)
                    if c and c.startswith(prefix):
                        out.append(
                            {
                                "table": tname,
                                "chain": chain.name,
                                "comment": c,
                                "target": rule.target,
                                "args": list(rule.args),
                                "family": family,
                            }
                        )
    return out
