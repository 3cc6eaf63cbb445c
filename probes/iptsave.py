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
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

BACKENDS = {
    "legacy": ("iptables-legacy-save", "iptables-legacy"),
    "nft": ("iptables-nft-save", "iptables-nft"),
    "nftables": ("nft", "nft"),  # native nft tables (Docker's nftables backend, firewalld)
}
# the IPv6 tables (ip6tables), read the same way: `load("legacy6", "nat")`
BACKENDS6 = {
    "legacy6": ("ip6tables-legacy-save", "ip6tables-legacy"),
    "nft6": ("ip6tables-nft-save", "ip6tables-nft"),
}
_TOOLS = {**BACKENDS, **BACKENDS6}
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
    nft: tuple | None = None  # native nft rule: (family, table, chain, handle)
    base: bool = False  # a jump to a native base chain (accept there ends only that chain)

    @property
    def spec(self) -> str:
        """The rule as `-A CHAIN ...` (iptables-save form)."""
        return " ".join(["-A", self.chain] + [_quote(a) for a in self.args])

    @property
    def tool(self) -> str:
        return _TOOLS[self.backend][1]

    def text(self) -> str:
        if self.nft:
            fam, tbl, chain, handle = self.nft
            where = f"nft {fam} {tbl} {chain}: {self.raw}"
            return where if handle <= 0 else f"{where} (handle {handle})   [{self.pkts} pkts]"
        table = "" if self.table == "filter" else f"-t {self.table} "
        return f"{self.tool} {table}{self.spec}   [{self.pkts} pkts]"

    def delete_cmd(self) -> list[str]:
        if self.nft:
            fam, tbl, chain, handle = self.nft
            return ["nft", "delete", "rule", fam, tbl, chain, "handle", str(handle)]
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
        self,
        backend: str,
        tables: dict[str, dict[str, Chain]],
        error: str | None = None,
        unreadable: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.tables = tables
        self.error = error
        # iptables-nft's own tables it cannot show (rules or base chains made with nft):
        # {table: "table" (none of it listed) | "base-chains" (those not listed)}
        self.unreadable = unreadable or {}

    @property
    def tool(self) -> str:
        return _TOOLS[self.backend][1]

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
        if self.backend == "nftables":
            tool = f"nft ({table} base chains of {chain.lower()})"
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
        accepted = None
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
                if verdict == "ACCEPT" and rule.base:
                    accepted = (path[mark:], decided)  # an nft base chain accepted:
                    del path[mark:]  # the next base chain on the hook still runs
                    continue
                if verdict is not None:
                    return verdict, decided
                del path[mark:]  # the sub-chain fell through: its rules decided nothing
                if rule.goto:
                    return None, None
                continue
            # LOG, MARK, TRACE, CT, ...: non-terminating, keep going
        if accepted is not None:  # every nft base chain on the hook ran; the last accepted
            path += accepted[0]
            return "ACCEPT", accepted[1]
        return None, None


def run_save(
    tool: str,
    counters: bool = True,
    timeout: float = 20,
    netns: str | None = None,
) -> tuple[str | None, str | None]:
    """(text, None) from `tool` (an *-save program) in this thread's network namespace (or
    the one at path `netns`, entered by nsenter), or (None, the reason it could not be read).
    Always every table: `iptables-legacy-save -t nat` would create the nat table (a hook
    every packet pays, and legacy rules in a namespace that had none)."""
    path = shutil.which(tool)
    if not path:
        return None, f"{tool} not found"
    argv = [path] + (["-c"] if counters else [])
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
    """The rules of `backend` ('legacy' or 'nft'; 'legacy6' or 'nft6' for ip6tables) in
    this thread's network namespace (one table, or all); a Ruleset with `error` set when
    they cannot be read. 'nftables' is the native nft tables iptables-nft does not own,
    as iptables-style tables (`native_ruleset`)."""
    if backend == "nftables":
        nft = read_nft_rules()
        if nft.error:
            return Ruleset(backend, {}, None if nft.error == "nft not installed" else nft.error)
        rs = native_ruleset(nft)
        if table:
            rs.tables = {t: c for t, c in rs.tables.items() if t == table}
        return rs
    save, _ = _TOOLS[backend]
    text, err = run_save(save)  # every table (see run_save); keep the one asked for
    if text is None:
        return Ruleset(backend, {}, err)
    tables = parse_save(text, backend)
    if table:
        tables = {t: c for t, c in tables.items() if t == table}
    return Ruleset(backend, tables, unreadable=unreadable_tables(text))


_UNREADABLE = re.compile(r"^# Table `(\w+)' (is incompatible|contains incompatible base-chains)")


def unreadable_tables(text: str) -> dict[str, str]:
    """The tables iptables-nft-save says it cannot show (made or changed with nft): {table:
    "table"} when it lists none of it, {table: "base-chains"} when it leaves out the base
    chains that are not its own."""
    out = {}
    for line in text.splitlines():
        m = _UNREADABLE.match(line)
        if m:
            out[m.group(1)] = "table" if m.group(2) == "is incompatible" else "base-chains"
    return out


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
    addrs: Collection[str], backends: Iterable[str] | None = None
) -> list[PublishedPort]:
    """Ports published to `addrs` by DNAT rules of the nat tables of `backends` (default:
    both iptables backends, and both ip6tables ones when an address is IPv6), each once.
    A port published on one host address has it as host_ip (IPv6 ones without /128)."""
    if backends is None:
        backends = tuple(BACKENDS) + (tuple(BACKENDS6) if any(":" in a for a in addrs) else ())
    out: list[PublishedPort] = []
    for backend in backends:
        for rule in load(backend, "nat").rules("nat"):
            tgt = dnat_target(rule)
            hport = rule.get("dport")
            if not tgt or tgt[0] not in addrs or not hport or not hport.isdigit():
                continue
            dst = rule.get("dst") or ""
            host_ip = dst.rsplit("/", 1)[0] if dst.endswith(("/32", "/128")) else None
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
    if to.startswith("["):  # ip6tables: [fd00::2]:80
        ip, _, rest = to[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return ip.split("-")[0], int(port.split("-")[0]) if port else None
    to = to.split("-")[0]
    if to.count(":") > 1:  # an IPv6 address without a port
        return to, None
    ip, _, port = to.partition(":")
    return ip, int(port.split("-")[0]) if port else None


# -- native nftables ---------------------------------------------------------------------
IPTABLES_NFT_TABLES = {"filter", "nat", "raw", "mangle", "security"}
NFT_HOOKS = {
    "prerouting": "PREROUTING",
    "input": "INPUT",
    "forward": "FORWARD",
    "output": "OUTPUT",
    "postrouting": "POSTROUTING",
}
_COUNTER_RE = re.compile(r"counter packets \d+ bytes \d+")


@dataclass
class NftChain:
    family: str
    table: str
    name: str
    handle: int
    type: str | None = None  # filter / nat / route, base chains only
    hook: str | None = None  # prerouting / input / forward / output / postrouting / ...
    prio: int | None = None
    policy: str | None = None

    @property
    def base(self) -> bool:
        return self.hook is not None


@dataclass
class NftRule:
    family: str
    table: str
    chain: str
    handle: int
    expr: list
    text: str = ""  # as `nft -a list ruleset` prints it, counters as just `counter`
    save: str = ""  # `-A CHAIN ...` as iptables-nft-save prints it (rules of its tables)

    @property
    def xt(self) -> bool:
        """An iptables-nft rule that uses an x_tables match or target (xt compat)."""
        return any("xt" in e for e in self.expr)


@dataclass
class NftRuleset:
    """One read of a namespace's nftables ruleset: chains, rules by handle, verdict maps."""

    chains: dict = field(default_factory=dict)  # (family, table, chain) -> NftChain
    rules: dict = field(default_factory=dict)  # (family, table, chain, handle) -> NftRule
    order: dict = field(default_factory=dict)  # (family, table, chain) -> [handles]
    maps: dict = field(default_factory=dict)  # (family, table, map) -> [(key, verdict)]
    error: str | None = None

    def iptables_owned(self, family: str, table: str) -> bool:
        """A table iptables-nft reads and writes (ip/ip6 filter, nat, raw, ...)."""
        return family in ("ip", "ip6") and table in IPTABLES_NFT_TABLES

    def hidden_from_iptables(self, c: NftChain, unreadable: dict[str, str]) -> bool:
        """Whether iptables-*-save leaves chain `c` out: its table is not iptables-nft's,
        or it is one of iptables-nft's `ip` tables that iptables-nft-save could not show
        (`unreadable`, Ruleset.unreadable: the whole table, or its base chains that are
        not built-in ones)."""
        if not self.iptables_owned(c.family, c.table):
            return True
        how = unreadable.get(c.table) if c.family == "ip" else None
        return how == "table" or (how == "base-chains" and c.name not in BUILTIN)

    def base_chains(self, skip_prefix: str = "") -> list[NftChain]:
        return [
            c
            for c in self.chains.values()
            if c.base and not c.table.startswith(skip_prefix or "\0")
        ]

    def rule(self, family: str, table: str, chain: str, handle: int) -> NftRule | None:
        return self.rules.get((family, table, chain, handle))


def _nft_run(argv: list[str], netns: str | None, timeout: float) -> tuple[str | None, str | None]:
    if netns:
        argv = ["nsenter", f"--net={netns}", *argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{argv[0]}: {exc}"
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return proc.stdout, None


def parse_nft_text(text: str) -> dict[tuple, str]:
    """`nft -a list ruleset` -> {(family, table, chain, handle): rule text}."""
    out: dict[tuple, str] = {}
    family = table = chain = None
    for line in text.splitlines():
        m = re.match(r"^table (\S+) (\S+) \{", line)
        if m:
            family, table, chain = m.group(1), m.group(2).strip('"'), None
            continue
        m = re.match(r"^\t(chain|set|map|flowtable|ct|counter|quota|limit|synproxy)\b(.*)$", line)
        if m:
            chain = None
            if m.group(1) == "chain":
                name = re.match(r"\s*(\"[^\"]+\"|\S+)", m.group(2))
                chain = name.group(1).strip('"') if name else None
            continue
        m = re.match(r"^\t\t(\S.*?)\s*# handle (\d+)$", line)
        if m and chain and table and not m.group(1).startswith("type "):
            out[(family, table, chain, int(m.group(2)))] = _COUNTER_RE.sub("counter", m.group(1))
    return out


@dataclass
class NftChainCount:
    """A chain of an nftables table: its policy (None for a regular chain) and rules."""

    policy: str | None
    rules: int = 0


def read_nft_layout(timeout: float = 20) -> dict[tuple[str, str], dict[str, NftChainCount]] | None:
    """{(family, table): {chain: NftChainCount}} of this thread's network namespace, from
    one `nft -j list ruleset`; tables without a chain are there too (iptables-nft-save
    shows a table's built-in chains whether they exist or not). None without nft."""
    if not shutil.which("nft"):
        return None
    raw, _err = _nft_run(["nft", "-j", "list", "ruleset"], None, timeout)
    if raw is None:
        return None
    try:
        items = json.loads(raw or "{}").get("nftables", [])
    except ValueError:
        return None
    out: dict[tuple[str, str], dict[str, NftChainCount]] = {}
    for item in items:
        if "table" in item:
            out.setdefault((item["table"]["family"], item["table"]["name"]), {})
        elif "chain" in item:
            c = item["chain"]
            out.setdefault((c["family"], c["table"]), {})[c["name"]] = NftChainCount(
                c.get("policy", "accept") if c.get("hook") else None
            )
        elif "rule" in item:
            r = item["rule"]
            chain = out.setdefault((r["family"], r["table"]), {}).get(r["chain"])
            if chain is not None:
                chain.rules += 1
    return out


def read_nft_rules(netns: str | None = None, timeout: float = 20) -> NftRuleset:
    """The ruleset of this thread's network namespace (or the one at path `netns`): one
    `nft -j list ruleset` for its structure, `nft -a list ruleset` for the rule texts, and
    for xt-compat rules of iptables-nft's tables the lines of iptables-nft-save."""
    ns = NftRuleset()
    if not shutil.which("nft"):
        ns.error = "nft not installed"
        return ns
    raw, err = _nft_run(["nft", "-j", "list", "ruleset"], netns, timeout)
    if raw is None:
        ns.error = f"nft list ruleset: {err}"
        return ns
    try:
        items = json.loads(raw or "{}").get("nftables", [])
    except ValueError as exc:
        ns.error = f"nft list ruleset: {exc}"
        return ns
    text, _err = _nft_run(["nft", "-a", "list", "ruleset"], netns, timeout)
    texts = parse_nft_text(text or "")
    for item in items:
        if "chain" in item:
            c = item["chain"]
            ch = NftChain(c["family"], c["table"], c["name"], c.get("handle", 0))
            if c.get("hook"):
                ch.type, ch.hook = c.get("type", "filter"), c["hook"]
                ch.prio, ch.policy = int(c.get("prio", 0)), c.get("policy", "accept")
            ns.chains[(ch.family, ch.table, ch.name)] = ch
        elif "rule" in item:
            r = item["rule"]
            key = (r["family"], r["table"], r["chain"])
            rule = NftRule(*key, r.get("handle", 0), r.get("expr", []))
            rule.text = texts.get((*key, rule.handle), "")
            ns.rules[(*key, rule.handle)] = rule
            ns.order.setdefault(key, []).append(rule.handle)
        elif "map" in item:
            m = item["map"]
            if m.get("map") == "verdict":
                elems = []
                for e in m.get("elem") or []:
                    if isinstance(e, list) and len(e) == 2:
                        elems.append((e[0], e[1]))
                ns.maps[(m["family"], m["table"], m["name"])] = elems
    _attach_save_lines(ns, netns, timeout)
    return ns


def _attach_save_lines(ns: NftRuleset, netns: str | None, timeout: float) -> None:
    """xt-compat rules get their iptables-nft-save line (same chain, same position)."""
    fams = {r.family for r in ns.rules.values() if r.xt and ns.iptables_owned(r.family, r.table)}
    for fam in fams:
        tool = "iptables-nft-save" if fam == "ip" else "ip6tables-nft-save"
        text, _err = run_save(tool, counters=False, timeout=timeout, netns=netns)
        if text is None:
            continue
        for tname, chains in parse_save(text, "nft").items():
            for cname, chain in chains.items():
                handles = ns.order.get((fam, tname, cname), [])
                if len(handles) != len(chain.rules):
                    continue  # changed between the two reads: keep the nft texts
                for h, r in zip(handles, chain.rules, strict=True):
                    ns.rules[(fam, tname, cname, h)].save = r.raw


# nft JSON expressions -> iptables-style matches (what Ruleset.walk understands)
_META_KEYS = {"iifname": "iif", "oifname": "oif", "l4proto": "proto"}
_PAYLOAD_KEYS = {("ip", "saddr"): "src", ("ip", "daddr"): "dst", ("ip", "protocol"): "proto"}


def _nft_value(v: object) -> str | None:
    if isinstance(v, (str, int)):
        s = str(v)
        return s[:-1] + "+" if s.endswith("*") else s
    if isinstance(v, dict):
        if "prefix" in v:
            return f"{v['prefix']['addr']}/{v['prefix']['len']}"
        if "range" in v:
            lo, hi = v["range"]
            return f"{lo}:{hi}"
        if "set" in v:
            parts = [_nft_value(x) for x in v["set"]]
            return None if None in parts else ",".join(parts)  # type: ignore[arg-type]
    if isinstance(v, list):
        parts = [_nft_value(x) for x in v]
        return None if None in parts else ",".join(parts)  # type: ignore[arg-type]
    return None


def _nft_key(left: object) -> str | None:
    if not isinstance(left, dict):
        return None
    if "meta" in left:
        return _META_KEYS.get(left["meta"].get("key"))
    if "payload" in left:
        p = left["payload"]
        if p.get("protocol") in ("tcp", "udp", "sctp") and p.get("field") in ("dport", "sport"):
            return p["field"]
        return _PAYLOAD_KEYS.get((p.get("protocol"), p.get("field")))
    if "fib" in left:
        f = left["fib"]
        if f.get("result") == "type" and f.get("flags") in (["daddr"], "daddr"):
            return "dst_type"
        return None
    if "ct" in left and left["ct"].get("key") == "state":
        return "ctstate"
    return None


def _nft_match(m: dict) -> tuple[str, bool, str] | None:
    key = _nft_key(m.get("left"))
    val = _nft_value(m.get("right"))
    if key is None or val is None:
        return None
    neg = m.get("op") == "!="
    if key in ("dport", "sport") and "," in val:
        key += "s"
    if key == "dst_type":
        val = val.upper()
    if key == "ctstate":
        val = val.upper()
    if key in ("iif", "oif") and m.get("op") not in ("==", "!=", "in"):
        return None
    return key, neg, val


def _nft_verdict(e: dict) -> tuple[str, bool, dict] | None:
    """(target, goto, target_args) of a verdict or NAT statement, or None."""
    for name, target in (
        ("accept", "ACCEPT"),
        ("drop", "DROP"),
        ("reject", "REJECT"),
        ("return", "RETURN"),
        ("masquerade", "MASQUERADE"),
        ("redirect", "REDIRECT"),
    ):
        if name in e:
            return target, False, {}
    if "jump" in e:
        return e["jump"]["target"], False, {}
    if "goto" in e:
        return e["goto"]["target"], True, {}
    for name in ("dnat", "snat"):
        if name in e:
            d = e[name] or {}
            addr = d.get("addr")
            if not isinstance(addr, str):
                return name.upper(), False, {}
            to = f"{addr}:{d['port']}" if isinstance(d.get("port"), int) else addr
            key = "--to-destination" if name == "dnat" else "--to-source"
            return name.upper(), False, {key: to}
    return None


def _native_rules(ns: NftRuleset, r: NftRule, key_of: Callable[[str], str]) -> list[Rule]:
    """One nft rule as iptables-style Rules (a verdict map becomes one Rule per element)."""
    matches, unknown, pkts = [], [], 0
    verdict = None
    vmap = None
    for e in r.expr:
        if "match" in e:
            got = _nft_match(e["match"])
            if got is None:
                unknown.append(json.dumps(e["match"], sort_keys=True)[:80])
            else:
                matches.append(got)
        elif "counter" in e:
            pkts = int((e["counter"] or {}).get("packets", 0))
        elif "vmap" in e:
            vmap = e["vmap"]
        elif any(k in e for k in ("comment", "log", "limit", "mangle", "notrack", "set")):
            continue
        else:
            v = _nft_verdict(e)
            if v is not None:
                verdict = v
            elif "xt" in e:
                unknown.append(f"xt {e['xt'].get('name')}")
            else:
                unknown.append(next(iter(e)))
    text = r.text or json.dumps(r.expr, sort_keys=True)[:120]
    base = Rule("nftables", "", key_of(r.chain), 0, text.split(), pkts, raw=text)
    base.nft = (r.family, r.table, r.chain, r.handle)
    base.matches, base.unknown = matches, unknown
    if vmap is None:
        if verdict:
            base.target, base.goto, base.target_args = verdict
            if base.target not in TERMINAL and base.target != "RETURN":
                base.target = key_of(base.target)
        return [base]
    vkey = _nft_key(vmap.get("key"))
    data = vmap.get("data")
    if isinstance(data, str) and data.startswith("@"):
        elems = ns.maps.get((r.family, r.table, data[1:]), [])
    elif isinstance(data, dict) and "set" in data:
        elems = [tuple(x) for x in data["set"] if isinstance(x, list) and len(x) == 2]
    else:
        elems = []
    out = []
    for k, v in elems:
        val = _nft_value(k)
        verdict_of = _nft_verdict(v) if isinstance(v, dict) else None
        if vkey is None or val is None or verdict_of is None:
            continue
        one = Rule("nftables", "", base.chain, 0, base.args, pkts, raw=text, nft=base.nft)
        one.matches = matches + [(vkey, False, val)]
        one.unknown = list(unknown)
        one.target, one.goto, one.target_args = verdict_of
        if one.target not in TERMINAL and one.target != "RETURN":
            one.target = key_of(one.target)
        out.append(one)
    return out


def _iptables_table(ch: NftChain) -> str:
    """The iptables table a native base chain plays (by its type and priority)."""
    if ch.type == "nat":
        return "nat"
    if ch.type == "route":
        return "mangle"
    prio = ch.prio or 0
    if prio <= -200:
        return "raw"
    if prio < -50:
        return "mangle"
    return "security" if prio >= 50 else "filter"


def native_ruleset(
    ns: NftRuleset,
    skip_prefix: str = "pyinspect_trace_",
    unreadable: dict[str, str] | None = None,
) -> Ruleset:
    """The native nft tables (not iptables-nft's, not pyinspect's trace tables) of families
    ip and inet as iptables-style tables: built-in chain `nat PREROUTING` jumps to every
    nat base chain on the prerouting hook in priority order, each nft chain a chain named
    `<family> <table> <chain>`, a base chain's drop policy a last rule; Ruleset.walk then
    reads them as it reads iptables. `unreadable` (Ruleset.unreadable of the IPv4
    iptables-nft rules) adds what iptables-nft could not show of its own `ip` tables: a
    whole table, or its base chains that are not iptables-nft's built-in ones."""
    tables: dict[str, dict[str, Chain]] = {}
    unreadable = unreadable or {}

    def native(c: NftChain) -> bool:
        return (
            c.family in ("ip", "inet")
            and not (skip_prefix and c.table.startswith(skip_prefix))
            and ns.hidden_from_iptables(c, unreadable)
        )

    bases = sorted(
        (c for c in ns.chains.values() if c.base and native(c)), key=lambda c: c.prio or 0
    )
    for bc in bases:
        hook = NFT_HOOKS.get(bc.hook or "")
        if hook is None:
            continue
        tname = _iptables_table(bc)
        chains = tables.setdefault(tname, {})
        builtin = chains.setdefault(hook, Chain(hook, "ACCEPT"))
        fam, tbl = bc.family, bc.table

        def key_of(name: str, fam: str = fam, tbl: str = tbl) -> str:
            return f"{fam} {tbl} {name}"

        jump = Rule("nftables", tname, hook, len(builtin.rules) + 1, [], base=True)
        jump.raw = f"type {bc.type} hook {bc.hook} priority {bc.prio}; policy {bc.policy}"
        jump.nft = (fam, tbl, bc.name, -1)
        jump.target = key_of(bc.name)
        jump.args = ["-j", jump.target]
        builtin.rules.append(jump)
        for c in ns.chains.values():
            if c.family != fam or c.table != tbl or key_of(c.name) in chains:
                continue
            chain = Chain(key_of(c.name), "-")
            for h in ns.order.get((fam, tbl, c.name), []):
                chain.rules += _native_rules(ns, ns.rules[(fam, tbl, c.name, h)], key_of)
            if c.base and c.policy == "drop":
                pol = Rule("nftables", tname, chain.name, 0, ["policy", "drop"], raw="policy drop")
                pol.nft = (fam, tbl, c.name, 0)
                pol.target = "DROP"
                chain.rules.append(pol)
            for i, rule in enumerate(chain.rules, 1):
                rule.table, rule.num = tname, i
            chains[chain.name] = chain
    return Ruleset("nftables", tables)
