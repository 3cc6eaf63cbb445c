"""The one reader of iptables rules (legacy x_tables and iptables-nft) and nftables rulesets.

Rules come from `iptables-legacy-save` and `iptables-nft-save` (never `iptables -S`/`-L`,
which can create tables as a side effect) run in the caller's network namespace, so the
same code reads pyinspect's own chains and Docker's (DOCKER, DOCKER-USER,
DOCKER-ISOLATION-*). `parse_save()` turns save output into tables of `Chain`s of `Rule`s;
doctor, `pyinspect info` and the tracer all read rules through it.

`Ruleset.walk()` follows a described packet from a built-in chain through jumps and
returns the verdict and the rules that decided it, which doctor prints as evidence.
Matches it does not understand make a rule "unsure": it is skipped, and the walk says so.
"""

import ipaddress
import json
import shlex
import shutil
import subprocess
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

BACKENDS = {
    "legacy": ("iptables-legacy-save", "iptables-legacy"),
    "nft": ("iptables-nft-save", "iptables-nft"),
}
BUILTIN = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
TERMINAL = {"ACCEPT", "DROP", "REJECT", "DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"}
EXTERNAL_IF = "<external>"  # an input/output interface that is not any named bridge


@dataclass
class Rule:
    backend: str
    table: str
    chain: str
    num: int
    args: list
    pkts: int = 0
    bytes: int = 0
    target: str = ""
    goto: bool = False
    target_args: dict = field(default_factory=dict)
    matches: list[tuple[str, bool, str]] = field(default_factory=list)  # (key, negated, value)
    unknown: list[str] = field(default_factory=list)
    raw: str = ""  # the line as the save tool wrote it (without counters)

    @property
    def spec(self) -> str:
        """The rule as `-A CHAIN ...` (iptables-save form)."""
        return " ".join(["-A", self.chain] + [_quote(a) for a in self.args])

    @property
    def tool(self) -> str:
        return BACKENDS[self.backend][1]

    def text(self) -> str:
        table = "" if self.table == "filter" else f"-t {self.table} "
        return f"{self.tool} {table}{self.spec}   [{self.pkts} pkts]"

    def delete_cmd(self) -> list[str]:
        return [self.tool, "-t", self.table, "-D", self.chain, *self.args]

    def get(self, key: str) -> str | None:
        for k, neg, v in self.matches:
            if k == key and not neg:
                return v
        return None


@dataclass
class Chain:
    name: str
    policy: str  # ACCEPT/DROP or '-' for user chains
    pkts: int = 0
    bytes: int = 0
    rules: list[Rule] = field(default_factory=list)


@dataclass
class Packet:
    """What a walk assumes about a packet; `local_addrs` decides addrtype LOCAL."""

    src: str
    dst: str
    proto: str = "tcp"
    sport: int = 40000
    dport: int = 80
    iif: str = ""
    oif: str = ""
    state: str = "NEW"
    local_addrs: frozenset[str] = frozenset()


@dataclass
class Walk:
    verdict: str  # ACCEPT/DROP/REJECT/DNAT/... or the policy
    path: list[Rule]  # rules that matched on the way (jumps and the deciding rule)
    rule: Rule | None = None  # the deciding Rule, None when the policy decided
    chain: Chain | None = None  # the built-in chain whose policy decided
    unsure: list[Rule] = field(default_factory=list)  # rules skipped for unknown matches
    tool: str = "iptables"  # how the walked table is listed (`iptables-nft -t nat`)

    def evidence(self) -> list[str]:
        lines = [r.text() for r in self.path]
        if self.rule is None and self.chain is not None:
            lines.append(
                f"{self.tool} policy {self.chain.name} {self.chain.policy}   "
                f"[{self.chain.pkts} pkts]"
            )
        for r in self.unsure[:3]:
            lines.append(f"(skipped, match not evaluated: {', '.join(r.unknown)}) {r.text()}")
        return lines


def _quote(arg: str) -> str:
    return arg if arg == "!" else shlex.quote(arg)


def _parse_rule(backend: str, table: str, chain_name: str, num: int, line: str) -> Rule:
    pkts = byts = 0
    if line.startswith("["):
        counters, _, line = line.partition("] ")
        p, _, b = counters.strip("[").partition(":")
        pkts, byts = int(p or 0), int(b or 0)
    toks = shlex.split(line)
    args = toks[2:]  # drop "-A CHAIN"
    rule = Rule(backend, table, chain_name, num, args, pkts, byts, raw=line)
    i, neg = 0, False
    while i < len(args):
        a = args[i]
        if a == "!":
            neg = True
            i += 1
            continue
        val = args[i + 1] if i + 1 < len(args) else ""
        if a in ("-j", "-g"):
            rule.target, rule.goto = val, a == "-g"
            i += 2
            while i < len(args):  # target options
                k = args[i]
                if k.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
                    rule.target_args[k] = args[i + 1]
                    i += 2
                else:
                    rule.target_args[k] = ""
                    i += 1
            break
        if a == "-m":
            i += 2
            continue
        key = {
            "-s": "src",
            "--source": "src",
            "-d": "dst",
            "--destination": "dst",
            "-i": "iif",
            "--in-interface": "iif",
            "-o": "oif",
            "--out-interface": "oif",
            "-p": "proto",
            "--protocol": "proto",
            "--dport": "dport",
            "--destination-port": "dport",
            "--sport": "sport",
            "--source-port": "sport",
            "--dports": "dports",
            "--destination-ports": "dports",
            "--sports": "sports",
            "--dst-type": "dst_type",
            "--src-type": "src_type",
            "--ctstate": "ctstate",
            "--state": "ctstate",
        }.get(a)
        if key:
            rule.matches.append((key, neg, val))
            i += 2
        elif a in ("--comment",):
            i += 2
        elif a.startswith("-"):
            # unknown match option: keep it and its value (if any) for the "unsure" note
            if i + 1 < len(args) and not args[i + 1].startswith("-"):
                rule.unknown.append(f"{'! ' if neg else ''}{a} {args[i + 1]}")
                i += 2
            else:
                rule.unknown.append(f"{'! ' if neg else ''}{a}")
                i += 1
        else:
            i += 1
        neg = False
    return rule


def parse_save(text: str, backend: str) -> dict[str, dict[str, Chain]]:
    """Parse `iptables-save -c` output into {table: {chain: Chain}}."""
    tables: dict[str, dict[str, Chain]] = {}
    table: dict[str, Chain] | None = None
    tname = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            tname = line[1:]
            table = tables.setdefault(tname, {})
        elif line == "COMMIT":
            table = None
        elif line.startswith(":") and table is not None:
            parts = line[1:].split()
            name, policy = parts[0], parts[1] if len(parts) > 1 else "-"
            pk = by = 0
            if len(parts) > 2 and parts[2].startswith("["):
                p, _, b = parts[2].strip("[]").partition(":")
                pk, by = int(p or 0), int(b or 0)
            table[name] = Chain(name, policy, pk, by)
        elif table is not None and ("-A " in line[:40]):
            rest = line.split("] ", 1)[1] if line.startswith("[") else line
            chain_name = rest.split()[1]
            chain = table.setdefault(chain_name, Chain(chain_name, "-"))
            chain.rules.append(_parse_rule(backend, tname, chain_name, len(chain.rules) + 1, line))
    return tables


def _iface_match(pattern: str, name: str) -> bool:
    if not name:
        return False
    if pattern.endswith("+"):
        return name != EXTERNAL_IF and name.startswith(pattern[:-1]) or pattern == "+"
    return pattern == name


def _addr_in(spec: str, addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr) in ipaddress.ip_network(spec, strict=False)
    except ValueError:
        return False


def _ports(spec: str) -> list[tuple[int, int]]:
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition(":")
        out.append((int(lo or 0), int(hi or lo or 65535)))
    return out


def _match_one(key: str, val: str, pkt: Packet) -> bool:
    if key == "src":
        return _addr_in(val, pkt.src)
    if key == "dst":
        return _addr_in(val, pkt.dst)
    if key == "iif":
        return _iface_match(val, pkt.iif)
    if key == "oif":
        return _iface_match(val, pkt.oif)
    if key == "proto":
        return val in (pkt.proto, "all", "0")
    if key in ("dport", "dports"):
        return any(lo <= pkt.dport <= hi for lo, hi in _ports(val))
    if key in ("sport", "sports"):
        return any(lo <= pkt.sport <= hi for lo, hi in _ports(val))
    if key == "dst_type":
        return "LOCAL" in val.split(",") and pkt.dst in pkt.local_addrs
    if key == "src_type":
        return "LOCAL" in val.split(",") and pkt.src in pkt.local_addrs
    if key == "ctstate":
        return pkt.state in val.split(",")
    return False


def rule_matches(rule: Rule, pkt: Packet) -> bool | None:
    """True/False, or None when the rule has matches this walker does not understand."""
    for key, neg, val in rule.matches:
        if _match_one(key, val, pkt) == neg:
            return False
    if rule.unknown:
        return None
    return True


class Ruleset:
    """Rules of one backend in one network namespace."""

    def __init__(
        self, backend: str, tables: dict[str, dict[str, Chain]], error: str | None = None
    ) -> None:
        self.backend = backend
        self.tables = tables
        self.error = error

    @property
    def tool(self) -> str:
        return BACKENDS[self.backend][1]

    def rules(self, table: str | None = None) -> Iterator[Rule]:
        for tname, chains in self.tables.items():
            if table and tname != table:
                continue
            for chain in chains.values():
                yield from chain.rules

    def has_rules(self) -> bool:
        """True when this backend holds any rule or a non-ACCEPT built-in policy."""
        for chains in self.tables.values():
            for c in chains.values():
                if c.rules or (c.name in BUILTIN and c.policy not in ("ACCEPT", "-")):
                    return True
        return False

    def summary(self) -> list[str]:
        out = []
        for tname, chains in sorted(self.tables.items()):
            n = sum(len(c.rules) for c in chains.values())
            pol = [
                f"{c.name} {c.policy}"
                for c in chains.values()
                if c.name in BUILTIN and c.policy not in ("ACCEPT", "-")
            ]
            if n or pol:
                out.append(
                    f"{self.tool}: table {tname}: {n} rules"
                    + (f", policy {', '.join(pol)}" if pol else "")
                )
        return out

    def walk(self, table: str, chain: str, pkt: Packet) -> Walk:
        """Follow `pkt` from built-in `chain` of `table`; a Walk (verdict ACCEPT if absent)."""
        chains = self.tables.get(table, {})
        if chain not in chains:
            return Walk("ACCEPT", [])
        path: list[Rule] = []
        unsure: list[Rule] = []
        verdict, rule = self._walk(chains, chains[chain], pkt, path, unsure, 0)
        tool = self.tool if table == "filter" else f"{self.tool} -t {table}"
        if verdict is None:
            return Walk(chains[chain].policy, list(path), None, chains[chain], unsure, tool)
        return Walk(verdict, list(path), rule, None, unsure, tool)

    def _walk(
        self,
        chains: dict[str, Chain],
        chain: Chain,
        pkt: Packet,
        path: list[Rule],
        unsure: list[Rule],
        depth: int,
    ) -> tuple[str | None, Rule | None]:
        if depth > 30:
            return None, None
        for rule in chain.rules:
            m = rule_matches(rule, pkt)
            if m is None:
                unsure.append(rule)
                continue
            if not m:
                continue
            tgt = rule.target
            if tgt in TERMINAL:
                path.append(rule)
                return tgt, rule
            if tgt == "RETURN":
                return None, None
            if tgt in chains:
                mark = len(path)
                path.append(rule)
                verdict, decided = self._walk(chains, chains[tgt], pkt, path, unsure, depth + 1)
                if verdict is not None:
                    return verdict, decided
                del path[mark:]  # the sub-chain fell through: its rules decided nothing
                if rule.goto:
                    return None, None
                continue
            # LOG, MARK, TRACE, CT, ...: non-terminating, keep going
        return None, None


def run_save(
    tool: str,
    table: str | None = None,
    counters: bool = True,
    timeout: float = 20,
    netns: str | None = None,
) -> tuple[str | None, str | None]:
    """(text, None) from `tool` (an *-save program) in this thread's network namespace (or
    the one at path `netns`, entered by nsenter), or (None, the reason it could not be read)."""
    path = shutil.which(tool)
    if not path:
        return None, f"{tool} not found"
    argv = [path] + (["-c"] if counters else []) + (["-t", table] if table else [])
    if netns:
        argv = ["nsenter", f"--net={netns}", *argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{tool}: {exc}"
    if proc.returncode != 0:
        return None, f"{tool}: {proc.stderr.strip()[:200] or f'exit {proc.returncode}'}"
    return proc.stdout, None


def load(backend: str, table: str | None = None) -> "Ruleset":
    """The rules of `backend` ('legacy' or 'nft') in this thread's network namespace
    (one table, or all); a Ruleset with `error` set when they cannot be read."""
    save, _ = BACKENDS[backend]
    text, err = run_save(save, table)
    if text is None:
        return Ruleset(backend, {}, err)
    return Ruleset(backend, parse_save(text, backend))


def counts(tables: dict[str, dict[str, Chain]]) -> tuple[int, int, dict[str, int]]:
    """(rules, chains, {table: rules}) of parsed tables."""
    per_table = {t: sum(len(c.rules) for c in chains.values()) for t, chains in tables.items()}
    return sum(per_table.values()), sum(len(chains) for chains in tables.values()), per_table


class PublishedPort(NamedTuple):
    """A port DNATed to a container (a NamedTuple: callers compare it with plain tuples)."""

    host_ip: str | None  # None: every host address
    host_port: int
    proto: str
    container_port: int


def published_ports(
    addrs: Collection[str], backends: Iterable[str] = tuple(BACKENDS)
) -> list[PublishedPort]:
    """Ports published to `addrs` by DNAT rules of the nat tables of `backends`, each once."""
    out: list[PublishedPort] = []
    for backend in backends:
        for rule in load(backend, "nat").rules("nat"):
            tgt = dnat_target(rule)
            hport = rule.get("dport")
            if not tgt or tgt[0] not in addrs or not hport or not hport.isdigit():
                continue
            dst = rule.get("dst") or ""
            host_ip = dst[:-3] if dst.endswith("/32") else None
            entry = PublishedPort(
                host_ip, int(hport), rule.get("proto") or "tcp", tgt[1] or int(hport)
            )
            if entry not in out:
                out.append(entry)
    return out


def nft_ruleset(timeout: float = 20) -> tuple[list | None, str | None]:
    """(the `nft -j list ruleset` items, None), or (None, why not) when nft is missing
    or fails."""
    nft = shutil.which("nft")
    if not nft:
        return None, "nft not installed"
    try:
        proc = subprocess.run(
            [nft, "-j", "list", "ruleset"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"nft list ruleset: {exc}"
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    try:
        return json.loads(proc.stdout or "{}").get("nftables", []), None
    except ValueError as exc:
        return None, f"nft list ruleset: {exc}"


def dnat_target(rule: Rule) -> tuple[str, int | None] | None:
    """(ip, port or None) a DNAT rule sends to, or None."""
    to = rule.target_args.get("--to-destination") or rule.target_args.get("--to")
    if rule.target != "DNAT" or not to:
        return None
    to = to.split("-")[0]
    if to.startswith("["):
        return None  # IPv6 literal: not handled
    ip, _, port = to.partition(":")
    return ip, int(port.split("-")[0]) if port else None
