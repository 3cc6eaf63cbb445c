"""The netfilter rule path of traced packets, from the kernel's own trace facility.

Legacy iptables (x_tables, what `iptables-legacy` and pyinspect's legacy writer,
python-iptables, write): TRACE rules in a chain of the session's own in the raw table
(`PI-TRACE-<pid>`), jumped to from the top of `raw PREROUTING` and `raw OUTPUT` by rules
marked with the comment `pyinspect-trace:<pid>`.
TCP data packets (no SYN/FIN/RST) are not sent to the chain (an inline protocol compare and
one tcp match, no jump); its rules TRACE only the traced flows. The trace lines are
delivered by nfnetlink_log: the namespace's IPv4 logger (`/proc/sys/net/netfilter/nf_log/2`,
a per-namespace setting) is bound to `nfnetlink_log` for the session and restored
afterwards, and a netlink socket bound to group 0 receives `TRACE: table:chain:type:num`
prefixes with the packet. No global sysctl (`nf_log_all_netns`) and no kernel log parsing is
needed.

nf_tables (Debian's `iptables`, iptables-nft, Docker's nftables backend, firewalld): a table
of the session's own (`table inet pyinspect_trace_<pid>`, NftTraceTable) sets `meta nftrace
set 1` on the traced flows before every other chain; the kernel then sends a trace event per
rule, chain end and policy the packet meets (NFNLGRP_NFTRACE, NftTraceEvents), which
NftTracer turns into hops with the rule's text looked up by handle (NftRuleBook, one read of
the ruleset at start and after a change) in the order the kernel sent them. The same mark
makes x_tables log the packet too, so a namespace with both needs no TRACE rules.
`choose_mode` decides which a namespace needs (legacy, nftables, both) from what it has.

Hop dicts: {ts_ns, table, chain, kind: rule|return|policy, rule_num (legacy: position; nft:
handle), rule_text, verdict, hook, prio, seq (the order received), indev, outdev, payload
(the packet's headers), ours, backend: iptables-legacy|nftables}; nft hops also carry
handle and trace_id.
"""

import collections
import contextlib
import errno
import json
import os
import re
import select
import shlex
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field

from pyinspect.errors import UnavailableError
from pyinspect.proc import pid_alive

from .netlink import NETLINK_NETFILTER, Receiver
from .netns import in_netns

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 4  # flush timeout, 1/100 s (default 1 s)
NFULA_CFG_QTHRESH = 5  # messages batched before a flush (default: what fits 4 KiB)
CMD_BIND, CMD_UNBIND = 1, 2
COPY_PACKET = 2
NLM_F_REQUEST, NLM_F_ACK = 1, 4
A_PACKET_HDR, A_INDEV, A_OUTDEV, A_PAYLOAD, A_PREFIX = 1, 4, 5, 9, 10
HOOKS: dict[int | None, str] = {
    0: "PREROUTING",
    1: "INPUT",
    2: "FORWARD",
    3: "OUTPUT",
    4: "POSTROUTING",
}
COMMENT_PREFIX = "pyinspect-trace:"
CHAIN_PREFIX = "PI-TRACE-"
NF_LOG_SYSCTL = "/proc/sys/net/netfilter/nf_log/2"
TRACE_RATE = "50/sec"  # packets traced per rule beyond TCP control packets
TRACE_BURST = 200
TRACE_RE = re.compile(r"TRACE: (\w+):([\w\-.]+):(rule|return|policy):(\d+)")


def packet_key(payload):
    """IPv4 payload -> (proto, src, sport, dst, dport, ipid) or None."""
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0xF) * 4
    proto = payload[9]
    ipid = struct.unpack_from("!H", payload, 4)[0]
    src = socket.inet_ntoa(payload[12:16])
    dst = socket.inet_ntoa(payload[16:20])
    sport = dport = 0
    if proto in (6, 17) and len(payload) >= ihl + 4:
        sport, dport = struct.unpack_from("!HH", payload, ihl)
    return ({6: "tcp", 17: "udp", 1: "icmp"}.get(proto, str(proto)), src, sport, dst, dport, ipid)


def _nlattr(atype, data):
    ln = 4 + len(data)
    return struct.pack("=HH", ln, atype) + data + b"\0" * ((4 - ln % 4) % 4)


def _attrs(data, off, end):
    out = {}
    while off + 4 <= end:
        ln, atype = struct.unpack_from("=HH", data, off)
        if ln < 4:
            break
        out[atype & 0x7FFF] = data[off + 4 : off + ln]
        off += (ln + 3) & ~3
    return out


class RuleBook:
    """Rule texts and policies of the legacy tables, to name `nat:PREROUTING:rule:1`."""

    def __init__(self, netns=None, tool="iptables-legacy"):
        self.netns = netns
        self.tool = tool
        self.rules = {}  # (table, chain) -> [rule text]
        self.policies = {}  # (table, chain) -> policy
        self.refresh()

    def refresh(self):
        """Read the tables that exist, with one `-save` (listing a table with `-t T -S`
        would create it in the namespace, and with it a netfilter hook every packet pays)."""
        from . import iptsave

        text, _err = iptsave.run_save(
            f"{self.tool}-save", counters=False, timeout=15, netns=self.netns
        )
        if text is None:
            return
        for table, chains in iptsave.parse_save(text, "legacy").items():
            for chain in chains.values():
                if chain.policy != "-":
                    self.policies[(table, chain.name)] = chain.policy
                if chain.rules:
                    self.rules[(table, chain.name)] = [r.raw[3:] for r in chain.rules]
                elif chain.policy == "-":
                    self.rules.setdefault((table, chain.name), [])

    def describe(self, table, chain, kind, num):
        """(rule_text, verdict) for one trace line."""
        rules = self.rules.get((table, chain), [])
        if kind == "policy" and not 1 <= num <= len(rules):
            pol = self.policies.get((table, chain), "ACCEPT")
            return f"policy {pol}", pol
        if kind == "return":
            return "return", "RETURN"
        # an unconditional `-j ACCEPT|DROP` rule is reported as "policy:<its number>"
        if 1 <= num <= len(rules):
            text = f"-A {rules[num - 1]}"
            m = re.search(r"-j (\S+)(.*)$", text)
            verdict = m.group(1) if m else "match"
            if m and verdict in ("DNAT", "SNAT"):
                to = re.search(r"--to-(?:destination|source) (\S+)", text)
                verdict = f"{verdict} {to.group(1)}" if to else verdict
            return text, verdict
        return f"rule {num}", "?"


def _run_in(netns, argv):
    prefix = ["nsenter", f"--net={netns}"] if netns else []
    try:
        p = subprocess.run(prefix + argv, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout if p.returncode == 0 else None


def trace_rule_specs(addrs, ports, flows=()):
    """iptables argument lists (without -t/-A) that TRACE only the traced flows."""
    specs = []
    for a in addrs:
        specs.append(["-s", a])
        specs.append(["-d", a])
    for ip, port, proto in ports:
        spec = ["-p", proto or "tcp"]
        if ip and ip != "0.0.0.0":
            spec += ["-d", ip]
        specs.append(spec + ["--dport", str(port)])
    for peer, peer_port, local_port, proto in flows:
        specs.append(
            ["-p", proto, "-s", peer, "--sport", str(peer_port), "--dport", str(local_port)]
        )
    return specs


class TraceRules:
    """TRACE rules in a raw-table chain of our own, jumped to from raw PREROUTING/OUTPUT
    (legacy backend, one namespace)."""

    def __init__(self, netns=None, tool="iptables-legacy"):
        self.netns = netns
        self.tool = tool
        self.comment = f"{COMMENT_PREFIX}{os.getpid()}"
        self.chain = f"{CHAIN_PREFIX}{os.getpid()}"
        self.made = False
        self.added = []

    def _rule(self, op, chain, spec, target):
        return " ".join(
            [op, chain]
            + (["1"] if op == "-I" else [])
            + [shlex.quote(a) if re.search(r"\s", a) else a for a in spec]
            + ["-m", "comment", "--comment", self.comment, "-j", target]
        )

    def _jumps(self, op):
        """The rules that send packets to our chain, from raw PREROUTING and OUTPUT: every
        packet but TCP data (no SYN/FIN/RST), which stays out of the chain at the cost of
        one inline protocol compare and one tcp match."""
        out = []
        for chain in ("PREROUTING", "OUTPUT"):
            # -I 1 puts the last inserted first: `! -p tcp` (no match module) is tried first
            for spec in (
                ["-p", "tcp", "!", "--tcp-flags", "SYN,FIN,RST", "NONE"],
                ["!", "-p", "tcp"],
            ):
                out.append(self._rule(op, chain, spec, self.chain))
        return out

    def _restore(self, lines):
        text = "*raw\n" + "\n".join(lines) + "\nCOMMIT\n"
        prefix = ["nsenter", f"--net={self.netns}"] if self.netns else []
        try:
            p = subprocess.run(
                prefix + [f"{self.tool}-restore", "-w", "--noflush"],
                input=text,
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UnavailableError(f"cannot run {self.tool}-restore: {exc}") from exc
        return p.returncode == 0, p.stderr.strip()

    @staticmethod
    def expand(spec, icmp="icmp"):
        """Per match: every TCP SYN/FIN/RST (connection set-up, tear-down, refusals: the NAT
        and filter decisions are made on them; TCP data packets have left the chain by its
        first rule), and UDP/ICMP packets up to TRACE_RATE (`icmp`: ipv6-icmp for
        ip6tables)."""
        limit = ["-m", "limit", "--limit", TRACE_RATE, "--limit-burst", str(TRACE_BURST)]
        if "-p" in spec:
            proto = spec[spec.index("-p") + 1]
            return [spec] if proto == "tcp" else [spec + limit]
        return [["-p", "tcp"] + spec, ["-p", "udp"] + spec + limit, ["-p", icmp] + spec + limit]

    def add_many(self, specs):
        """TRACE every spec (one restore call); the first call makes the chain and jumps."""
        icmp = "ipv6-icmp" if self.tool.startswith("ip6") else "icmp"
        specs = [x for spec in specs for x in self.expand(spec, icmp)]
        if not specs:
            return
        lines = [self._rule("-A", self.chain, spec, "TRACE") for spec in specs]
        if not self.made:
            lines = [f":{self.chain} - [0:0]"] + lines + self._jumps("-I")
        ok, err = self._restore(lines)
        if not ok:
            raise UnavailableError(f"cannot add TRACE rules with {self.tool}-restore: {err}")
        self.made = True
        self.added += specs

    def add(self, spec):
        self.add_many([spec])

    def remove(self):
        if not self.made:
            return
        ok, _err = self._restore(self._jumps("-D") + [f"-F {self.chain}", f"-X {self.chain}"])
        if not ok:  # something already gone: one by one
            for line in self._jumps("-D"):
                _run_in(self.netns, [self.tool, "-w", "-t", "raw", *shlex.split(line)])
            _run_in(self.netns, [self.tool, "-w", "-t", "raw", "-F", self.chain])
            _run_in(self.netns, [self.tool, "-w", "-t", "raw", "-X", self.chain])
        self.made = False
        self.added = []


def _dead(pid):
    return pid == os.getpid() or not pid_alive(pid)


def remove_stale_rules(netns=None, tool="iptables-legacy"):
    """Delete the TRACE rules and chains left by dead pyinspect processes (also rules of
    versions that put TRACE rules straight into PREROUTING); returns what was removed."""
    # -save lists the raw table only if it exists (-S would make it)
    from . import iptsave

    text, _err = iptsave.run_save(f"{tool}-save", counters=False, timeout=15, netns=netns)
    raw = iptsave.parse_save(text or "", "legacy").get("raw", {})
    removed = []
    chains = []
    for name in raw:
        if name.startswith(CHAIN_PREFIX):
            with contextlib.suppress(ValueError):
                if _dead(int(name[len(CHAIN_PREFIX) :])):
                    chains.append(name)
    for line in (r.raw for chain in raw.values() for r in chain.rules):
        m = re.search(rf"--comment \"?{COMMENT_PREFIX}(\d+)\"?", line)
        if not m or not _dead(int(m.group(1))):
            continue
        if line.split()[1].startswith(CHAIN_PREFIX):
            continue  # goes with its chain
        argv = shlex.split(line)
        argv[0] = "-D"
        if _run_in(netns, [tool, "-w", "-t", "raw", *argv]) is not None:
            removed.append(line)
    for name in chains:
        _run_in(netns, [tool, "-w", "-t", "raw", "-F", name])
        if _run_in(netns, [tool, "-w", "-t", "raw", "-X", name]) is not None:
            removed.append(f"-N {name}")
    return removed


class LoggerBinding:
    """Bind the namespace's IPv4 nf_log (`family` 10: IPv6, for ip6tables TRACE) to
    nfnetlink_log; restore the previous value.

    The previous value is kept in `state_file` so a later start can restore it after a
    kill -9 (`restore_stale_binding`).
    """

    def __init__(self, netns=None, state_file=None, family=2):
        self.netns = netns
        self.state_file = state_file
        self.path = NF_LOG_SYSCTL if family == 2 else f"/proc/sys/net/netfilter/nf_log/{family}"
        self.previous = None

    def bind(self):
        try:
            with in_netns(self.netns), open(self.path) as f:
                previous = f.read().strip()
        except OSError as exc:
            raise UnavailableError(
                f"no per-namespace nf_log setting ({self.path}: {exc.strerror})"
            ) from exc
        with in_netns(self.netns):
            self.previous = previous
            if self.state_file:
                with open(self.state_file, "w") as f:
                    json.dump(
                        {
                            "netns": self.netns,
                            "previous": self.previous,
                            "pid": os.getpid(),
                            "path": self.path,
                        },
                        f,
                    )
            try:
                with open(self.path, "w") as f:
                    f.write("nfnetlink_log")
            except OSError as exc:
                raise UnavailableError(f"cannot bind nfnetlink_log: {exc.strerror}") from exc

    def restore(self):
        if self.previous is None:
            return
        with contextlib.suppress(OSError, UnavailableError), in_netns(self.netns):
            with open(self.path, "w") as f:
                f.write(self.previous)
        self.previous = None
        if self.state_file:
            with contextlib.suppress(OSError):
                os.unlink(self.state_file)


def restore_stale_binding(state_file):
    """Undo a binding recorded by a process that died; True if something was restored."""
    try:
        with open(state_file) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return False
    if st.get("pid") != os.getpid() and pid_alive(int(st.get("pid", 0))):
        return False
    ok = False
    with contextlib.suppress(OSError, UnavailableError), in_netns(st.get("netns")):
        with open(st.get("path") or NF_LOG_SYSCTL, "w") as f:
            f.write(st.get("previous") or "NONE")
        ok = True
    with contextlib.suppress(OSError):
        os.unlink(state_file)
    return ok


class NflogReader(Receiver):
    """nfnetlink_log group 0 (where TRACE lines go when nfnetlink_log is the bound logger).

    `read(timeout)` returns the trace records now: dicts with ts_ns, prefix, hook, indev,
    outdev, packet, payload."""

    def __init__(self, netns=None, group=0, copy_range=128):
        self.netns = netns
        self.group = group
        self.copy_range = copy_range
        self.sock: socket.socket | None = None
        self.lost = 0
        self.seq = 0

    def _config(self, attrs):
        self.seq += 1
        nfgen = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.group))
        body = nfgen + b"".join(attrs)
        hdr = struct.pack(
            "=IHHII",
            16 + len(body),
            (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            self.seq,
            0,
        )
        sock = self.sock
        assert sock is not None  # start() opened it
        sock.send(hdr + body)
        deadline = time.time() + 2
        while time.time() < deadline:
            if not select.select([sock], [], [], 0.5)[0]:
                continue
            data = sock.recv(65536)
            ln, mtype = struct.unpack_from("=IH", data, 0)
            if mtype == 2:  # NLMSG_ERROR
                err = struct.unpack_from("=i", data, 16)[0]
                if err:
                    raise OSError(-err, os.strerror(-err))
                return

    def start(self):
        try:
            with in_netns(self.netns):
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
            self.sock.bind((0, 0))
            self._config([_nlattr(NFULA_CFG_CMD, struct.pack("=B", CMD_BIND) + b"\0" * 3)])
            self._config(
                [_nlattr(NFULA_CFG_MODE, struct.pack("!IBB", self.copy_range, COPY_PACKET, 0))]
            )
            # deliver each trace line at once, not batched for up to a second
            self._config(
                [
                    _nlattr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)),
                    _nlattr(NFULA_CFG_TIMEOUT, struct.pack("!I", 0)),
                ]
            )
        except OSError as exc:
            if self.sock:
                self.sock.close()
                self.sock = None
            if exc.errno == errno.EBUSY:
                raise UnavailableError(
                    "nfnetlink_log group 0 is taken by another listener (ulogd?)"
                ) from exc
            raise UnavailableError(f"cannot bind nfnetlink_log: {exc.strerror}") from exc
        self.sock.setblocking(False)
        return self

    @staticmethod
    def _parse(data, now):
        """The NFULNL_MSG_PACKET records of one datagram."""
        out = []
        off = 0
        while off + 16 <= len(data):
            ln, mtype = struct.unpack_from("=IH", data, off)
            if ln < 16:
                break
            if mtype == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                a = _attrs(data, off + 20, off + ln)
                prefix = a.get(A_PREFIX, b"").rstrip(b"\0").decode(errors="replace")
                hook = a[A_PACKET_HDR][2] if A_PACKET_HDR in a else None
                rec = {
                    "ts_ns": now,
                    "prefix": prefix,
                    "hook": HOOKS.get(hook, str(hook)),
                    "indev": struct.unpack("!I", a[A_INDEV])[0] if A_INDEV in a else 0,
                    "outdev": struct.unpack("!I", a[A_OUTDEV])[0] if A_OUTDEV in a else 0,
                    "packet": packet_key(a.get(A_PAYLOAD, b"")),
                    "payload": a.get(A_PAYLOAD, b""),
                    "family": data[off + 16],  # nfgenmsg: AF_INET, or AF_INET6 (ip6tables)
                }
                out.append(rec)
            off += (ln + 3) & ~3
        return out

    def stop(self):
        if self.sock:
            with contextlib.suppress(OSError):
                self.sock.setblocking(True)
                self.sock.settimeout(1)
                self._config([_nlattr(NFULA_CFG_CMD, struct.pack("=B", CMD_UNBIND) + b"\0" * 3)])
            self.sock.close()
            self.sock = None


def parse_trace(rec, rulebook=None):
    """A TRACE record -> hop dict, or None if the prefix is not a trace line."""
    m = TRACE_RE.search(rec["prefix"])
    if not m:
        return None
    table, chain, kind, num = m.group(1), m.group(2), m.group(3), int(m.group(4))
    text, verdict = rulebook.describe(table, chain, kind, num) if rulebook else ("", "")
    return {
        "ts_ns": rec["ts_ns"],
        "table": table,
        "chain": chain,
        "kind": kind,
        "rule_num": num,
        "rule_text": text,
        "verdict": verdict,
        "hook": rec.get("hook"),
        "indev": rec.get("indev", 0),
        "outdev": rec.get("outdev", 0),
        "packet": rec.get("packet"),
        "payload": rec.get("payload", b""),
        "ours": COMMENT_PREFIX in text or chain.startswith(CHAIN_PREFIX),
        "backend": "ip6tables-legacy" if rec.get("family") == 10 else "iptables-legacy",
    }


NFT_TABLE_PREFIX = "pyinspect_trace_"
NFT_TRACE_PRIORITY = -301  # raw (-300) - 1: before every raw-priority chain, theirs too

# nf_tables netlink (linux/netfilter/nf_tables.h, nfnetlink.h)
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15
NFT_MSG_TRACE = 17
NFNLGRP_NFTABLES = 7  # ruleset changes
NFNLGRP_NFTRACE = 9  # trace events
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
(TA_TABLE, TA_CHAIN, TA_HANDLE, TA_TYPE, TA_VERDICT, TA_ID) = range(1, 7)
TA_NETWORK, TA_TRANSPORT, TA_IIF, TA_OIF, TA_NFPROTO, TA_POLICY = 8, 9, 10, 12, 15, 16
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
TRACE_TYPES = {1: "policy", 2: "return", 3: "rule"}
VERDICT_NAMES = {
    0: "DROP",
    1: "ACCEPT",
    2: "STOLEN",
    3: "QUEUE",
    4: "REPEAT",
    5: "STOP",
    -1: "CONTINUE",
    -2: "BREAK",
    -3: "JUMP",
    -4: "GOTO",
    -5: "RETURN",
}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
HOOK_NAMES = {
    "prerouting": "PREROUTING",
    "input": "INPUT",
    "forward": "FORWARD",
    "output": "OUTPUT",
    "postrouting": "POSTROUTING",
    "ingress": "INGRESS",
    "egress": "EGRESS",
}
# where the legacy tables sit on their hooks (x_tables priorities)
LEGACY_PRIO = {"raw": -300, "mangle": -150, "nat": -100, "filter": 0, "security": 50}


# -- which mechanism a namespace needs ---------------------------------------------------
@dataclass
class NetfilterMode:
    """How the trace switches the netfilter trace on in one namespace, and why.

    legacy:   x_tables tables with rules, no nf_tables chains: TRACE rules in raw
    nftables: nf_tables chains (iptables-nft, Docker's nft backend, firewalld...) and no
              legacy rules: a `meta nftrace set 1` table of the session's, trace events
    both:     both kinds: the nftrace table (its nf_trace also makes the legacy tables
              log through nfnetlink_log), trace events and TRACE lines
    none:     the kernel has neither
    """

    mode: str
    why: str
    ruleset: object = field(default=None, repr=False)  # the iptsave.NftRuleset read
    legacy_tables: list = field(default_factory=list)  # legacy tables with rules
    nft_tables: list = field(default_factory=list)  # "family name" of tables with hooks
    xtables: bool = True  # the kernel has x_tables (ip_tables)
    nftables: bool = True  # the kernel has nf_tables

    def text(self) -> str:
        return f"{self.mode} ({self.why})"


KERNEL_SYMBOLS = {"nf_tables": "nft_do_chain", "ip_tables": "ipt_do_table"}


def _kernel_has(module: str, proc_file: str | None = None) -> bool:
    """A netfilter part is there: its /proc file or /sys/module entry exists, the module
    is on disk for the running kernel (iptables/nft load it on first use), or it is built
    in (its main function is in /proc/kallsyms)."""
    if proc_file and os.path.exists(proc_file):
        return True
    if os.path.isdir(f"/sys/module/{module}"):
        return True
    release = os.uname().release
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(f"/lib/modules/{release}/{name}") as f:
                if re.search(rf"/{module}\.ko", f.read()):
                    return True
        except OSError:
            continue
    sym = KERNEL_SYMBOLS.get(module)
    if sym:
        with contextlib.suppress(OSError), open("/proc/kallsyms") as f:
            return any(line.rstrip().endswith(f" {sym}") for line in f)
    return False


def legacy_tables_in_use(netns: str | None = None, family: int = 4) -> list[str]:
    """The x_tables (iptables-legacy; ip6tables-legacy with `family` 6) tables of the
    namespace that hold a rule or a non-ACCEPT policy. /proc/net/ip_tables_names lists the
    tables that exist (reading it creates none); empty ones (left by an earlier trace,
    say) do not count."""
    six = "6" if family == 6 else ""
    try:
        with in_netns(netns), open(f"/proc/thread-self/net/ip{six}_tables_names") as f:
            names = f.read().split()
    except (OSError, UnavailableError):
        return []
    if not names:
        return []
    from . import iptsave

    text, _err = iptsave.run_save(
        f"ip{six}tables-legacy-save", counters=False, timeout=15, netns=netns
    )
    if text is None:
        return names  # cannot tell: assume they matter
    rs = iptsave.Ruleset("legacy", iptsave.parse_save(text, "legacy"))
    return [
        t
        for t, chains in rs.tables.items()
        if any(
            c.rules or (c.name in iptsave.BUILTIN and c.policy not in ("ACCEPT", "-"))
            for c in chains.values()
        )
    ]


def decide_mode(
    legacy: list[str], nft: list[str], xtables: bool, nftables: bool
) -> tuple[str, str]:
    """(mode, why) from what the namespace has and what the kernel supports. `nft` names
    the nf_tables tables with base chains as `family name`, those iptables-nft owns marked
    ` (iptables-nft)`."""
    have_l = f"x_tables tables {', '.join(legacy)}" if legacy else "no x_tables rules"
    ipt = [t.split(" (")[0] for t in nft if t.endswith(" (iptables-nft)")]
    native = [t for t in nft if not t.endswith(" (iptables-nft)")]
    have_n = "; ".join(
        [f"iptables-nft tables {', '.join(ipt)}"] * bool(ipt)
        + [f"native nft tables {', '.join(native)}"] * bool(native)
    )
    have_n = have_n or "no nf_tables chains"
    if legacy and nft:
        return "both", f"{have_l} and {have_n}"
    if legacy:
        return "legacy", f"{have_l}, {have_n}"
    if nft:
        return "nftables", f"{have_n}, {have_l}"
    if nftables:
        return "nftables", "no rules yet; the kernel has nf_tables" + (
            "" if xtables else " and no x_tables"
        )
    if xtables:
        return "legacy", "no rules yet; x_tables only (no nf_tables, or no nft command)"
    return "none", "the kernel has neither x_tables nor nf_tables"


def choose_mode(netns: str | None = None, ruleset=None) -> NetfilterMode:
    """What the namespace (this thread's, or the one at path `netns`) has, and the mode."""
    xt = _kernel_has("ip_tables", "/proc/net/ip_tables_names")
    legacy = legacy_tables_in_use(netns) if xt else []
    if ruleset is None:
        from . import iptsave

        ruleset = iptsave.read_nft_rules(netns)
    # nf_tables answers (built in, it has no /sys/module entry) or is a module on disk;
    # without the nft command the trace cannot add its table: as if it had none
    nft_cmd = ruleset.error != "nft not installed"
    nf = nft_cmd and (not ruleset.error or _kernel_has("nf_tables"))
    nft = []
    if not ruleset.error:
        nft = sorted(
            {
                f"{c.family} {c.table}"
                + (" (iptables-nft)" if ruleset.iptables_owned(c.family, c.table) else "")
                for c in ruleset.base_chains(skip_prefix=NFT_TABLE_PREFIX)
            }
        )
    mode, why = decide_mode(legacy, nft, xt, nf)
    if not nft_cmd and not legacy and _kernel_has("nf_tables"):
        # TRACE rules would make legacy tables in a namespace whose rules may all be nft
        mode, why = "none", "no x_tables rules, and no nft command to trace nf_tables with"
    return NetfilterMode(mode, why, ruleset, legacy, nft, xt, nf)


def has_nft_chains(netns=None):
    """True if the namespace has nf_tables base chains other than pyinspect's own."""
    from . import iptsave

    ns = iptsave.read_nft_rules(netns)
    return bool(ns.base_chains(skip_prefix=NFT_TABLE_PREFIX))


# -- the session's nftrace table ---------------------------------------------------------
def nft_expr(spec):
    """An iptables-style spec (see trace_rule_specs) as an nft match expression (IPv6
    addresses as `ip6 saddr/daddr`)."""
    out = []
    proto = None
    i = 0
    while i < len(spec):
        a = spec[i]
        v = spec[i + 1] if i + 1 < len(spec) else None
        fam = "ip6" if v and ":" in v else "ip"
        if a == "-s":
            out.append(f"{fam} saddr {v}")
        elif a == "-d":
            out.append(f"{fam} daddr {v}")
        elif a == "-p":
            proto = v
            out.append(f"meta l4proto {v}")
        elif a == "--dport":
            out.append(f"{proto or 'tcp'} dport {v}")
        elif a == "--sport":
            out.append(f"{proto or 'tcp'} sport {v}")
        i += 2
    return " ".join(out)


class NftTraceTable:
    """`meta nftrace set 1` for the traced flows in a table of our own,
    `table inet pyinspect_trace_<pid>`, chains on prerouting and output at priority -301
    (raw - 1, so chains at raw priority are traced too), with the sampling of the TRACE
    rules: every TCP SYN/FIN/RST, UDP/ICMP up to TRACE_RATE; TCP data leaves at its first
    rule. nf_tables only emits trace events for packets some rule marked this way."""

    CHAINS = ("pre", "out")

    def __init__(self, netns=None):
        self.netns = netns
        self.name = f"{NFT_TABLE_PREFIX}{os.getpid()}"
        self.made = False

    def _rules(self, spec):
        expr = nft_expr(spec)
        proto = spec[spec.index("-p") + 1] if "-p" in spec else None
        rate = (
            f"limit rate {TRACE_RATE.replace('/sec', '/second')} burst {TRACE_BURST} "
            "packets meta nftrace set 1"
        )
        out = []
        for chain in self.CHAINS:
            if proto in (None, "tcp"):
                tcp = expr if "l4proto tcp" in expr else f"meta l4proto tcp {expr}"
                out.append(
                    f"add rule inet {self.name} {chain} {tcp} "
                    "tcp flags & (syn | fin | rst) != 0 meta nftrace set 1"
                )
            if proto is None:
                others = ("udp", "icmpv6") if ":" in expr else ("udp", "icmp")
                for other in others:
                    out.append(
                        f"add rule inet {self.name} {chain} meta l4proto {other} {expr} {rate}"
                    )
            elif proto != "tcp":
                out.append(f"add rule inet {self.name} {chain} {expr} {rate}")
        return out

    def _run(self, lines):
        prefix = ["nsenter", f"--net={self.netns}"] if self.netns else []
        try:
            p = subprocess.run(
                prefix + ["nft", "-f", "-"],
                input="\n".join(lines) + "\n",
                check=False,
                capture_output=True,
                text=True,
                timeout=15,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UnavailableError(f"cannot run nft: {exc}") from exc
        if p.returncode != 0:
            raise UnavailableError(f"cannot add the nftrace table: {p.stderr.strip()[:200]}")

    def create(self, specs):
        prio = NFT_TRACE_PRIORITY
        lines = [
            f"table inet {self.name} {{",
            f"  chain pre {{ type filter hook prerouting priority {prio}; policy accept; }}",
            f"  chain out {{ type filter hook output priority {prio}; policy accept; }}",
            "}",
        ]
        # TCP data (no SYN/FIN/RST) leaves the chain at its first rule
        lines += [
            f"add rule inet {self.name} {chain} meta l4proto tcp "
            "tcp flags & (syn | fin | rst) == 0 accept"
            for chain in self.CHAINS
        ]
        for spec in specs:
            lines += self._rules(spec)
        self._run(lines)
        self.made = True

    def add(self, spec):
        """Trace one more flow (the replies of a MASQUERADEd connection)."""
        if self.made:
            self._run(self._rules(spec))

    def remove(self):
        if self.made:
            _run_in(self.netns, ["nft", "delete", "table", "inet", self.name])
            self.made = False


def remove_stale_nft_tables(netns=None):
    """Delete pyinspect_trace_<pid> tables (any family) of dead processes; their names."""
    out = _run_in(netns, ["nft", "list", "tables"]) or ""
    removed = []
    for m in re.finditer(rf"table (\w+) ({NFT_TABLE_PREFIX}(\d+))", out):
        pid = int(m.group(3))
        if pid != os.getpid() and pid_alive(pid):
            continue
        if _run_in(netns, ["nft", "delete", "table", m.group(1), m.group(2)]) is not None:
            removed.append(f"{m.group(1)} {m.group(2)}")
    return removed


# -- trace events --------------------------------------------------------------------------
@dataclass
class NftTraceEvent:
    """One NFT_MSG_TRACE message: a rule, a chain's end or a base chain's policy that a
    marked packet met. `network`/`transport` are the packet's headers as that base chain
    saw them (only in the first event of each base chain run)."""

    ts_ns: int
    trace_id: int
    family: str  # the table's family
    table: str
    chain: str
    kind: str  # rule | return | policy
    handle: int
    verdict: str  # ACCEPT, DROP, JUMP, GOTO, RETURN, CONTINUE...
    target: str  # the chain a jump/goto goes to
    nfproto: int
    iif: int
    oif: int
    network: bytes
    transport: bytes


def _u32(b):
    return struct.unpack("!I", b[:4])[0] if len(b) >= 4 else 0


def _str(b):
    return b.rstrip(b"\0").decode(errors="replace")


class NftTraceEvents(Receiver):
    """nf_tables trace events (NFNLGRP_NFTRACE) of one namespace, and a flag set when its
    ruleset changed (NFNLGRP_NFTABLES; changes to pyinspect's trace tables do not count).

    `read()` returns NftTraceEvents in the order the kernel sent them."""

    def __init__(self, netns=None):
        self.netns = netns
        self.sock = None
        self.lost = 0
        self.changed = False

    def start(self):
        try:
            with in_netns(self.netns):
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
            self.sock.bind((0, 0))
            for group in (NFNLGRP_NFTRACE, NFNLGRP_NFTABLES):
                self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        except OSError as exc:
            if self.sock:
                self.sock.close()
                self.sock = None
            raise UnavailableError(
                f"cannot listen to nf_tables trace events: {exc.strerror}"
            ) from exc
        self.sock.setblocking(False)
        return self

    def _parse(self, data, now):
        out = []
        off = 0
        while off + 20 <= len(data):
            ln, mtype = struct.unpack_from("=IH", data, off)
            if ln < 16:
                break
            if mtype >> 8 == NFNL_SUBSYS_NFTABLES:
                family = FAMILIES.get(data[off + 16], str(data[off + 16]))
                a = _attrs(data, off + 20, off + ln)
                msg = mtype & 0xFF
                if msg == NFT_MSG_TRACE:
                    ev = self._event(a, family, now)
                    if ev is not None:
                        out.append(ev)
                elif msg != NFT_MSG_NEWGEN and not _str(a.get(1, b"")).startswith(NFT_TABLE_PREFIX):
                    self.changed = True
            off += (ln + 3) & ~3
        return out

    @staticmethod
    def _event(a, family, now):
        table = _str(a.get(TA_TABLE, b""))
        if not table:
            return None
        verdict, target = "", ""
        if TA_VERDICT in a:
            v = _attrs(a[TA_VERDICT], 0, len(a[TA_VERDICT]))
            if NFTA_VERDICT_CODE in v:
                code = struct.unpack("!i", v[NFTA_VERDICT_CODE][:4])[0]
                verdict = VERDICT_NAMES.get(code if code < 0 else code & 0xFF, str(code))
            target = _str(v.get(NFTA_VERDICT_CHAIN, b""))
        if not verdict and TA_POLICY in a:
            verdict = VERDICT_NAMES.get(_u32(a[TA_POLICY]) & 0xFF, "?")
        handle = a.get(TA_HANDLE, b"")
        return NftTraceEvent(
            ts_ns=now,
            trace_id=_u32(a.get(TA_ID, b"")),
            family=family,
            table=table,
            chain=_str(a.get(TA_CHAIN, b"")),
            kind=TRACE_TYPES.get(_u32(a.get(TA_TYPE, b"")), "?"),
            handle=struct.unpack("!Q", handle[:8])[0] if len(handle) >= 8 else 0,
            verdict=verdict,
            target=target,
            nfproto=_u32(a.get(TA_NFPROTO, b"")),
            iif=_u32(a.get(TA_IIF, b"")),
            oif=_u32(a.get(TA_OIF, b"")),
            network=a.get(TA_NETWORK, b""),
            transport=a.get(TA_TRANSPORT, b""),
        )

    def stop(self):
        if self.sock:
            self.sock.close()
            self.sock = None


def packet_headers(network: bytes, transport: bytes) -> bytes:
    """An event's network and transport headers as one IP packet head (what flows.parse_ip
    reads): the IP header (IPv4 with its options, IPv6's fixed 40 bytes) then L4."""
    if not network:
        return b""
    if network[0] >> 4 == 4:
        ihl = (network[0] & 0xF) * 4
        return network[:ihl] + transport if transport else network
    if network[0] >> 4 == 6 and transport:
        return network[:40] + transport if network[6] in (6, 17, 58) else network
    return network


NAT_RE = re.compile(r"\b(dnat|snat)(?: ip6?)? to (\S+)|\b(masquerade|redirect)\b")
SAVE_NAT_RE = re.compile(
    r"-j (DNAT|SNAT|MASQUERADE|REDIRECT)(?:.*?--to-(?:destination|source|ports) (\S+))?"
)


class NftRuleBook:
    """Rule texts and chains of the namespace's nf_tables ruleset, by handle: one read
    (iptsave.read_nft_rules) at start and again after the ruleset changed (NftTracer
    refreshes it on the change notification; `stale` makes an unknown handle re-read)."""

    def __init__(self, netns=None, ruleset=None):
        self.netns = netns
        self.ruleset = ruleset
        self.reads = 0
        self.stale = False
        if ruleset is None or ruleset.error:
            self.refresh()

    def refresh(self):
        from . import iptsave

        self.ruleset = iptsave.read_nft_rules(self.netns)
        self.reads += 1
        self.stale = False

    def chain(self, family, table, name):
        return self.ruleset.chains.get((family, table, name))

    def rule(self, family, table, chain, handle):
        r = self.ruleset.rule(family, table, chain, handle)
        if r is None and self.stale:
            self.refresh()
            r = self.ruleset.rule(family, table, chain, handle)
        return r

    def describe(self, ev: NftTraceEvent) -> tuple[str, str]:
        """(rule text, verdict) of one event: the text as `nft -a list` prints the rule (an
        xt-compat rule of iptables-nft as iptables-nft-save does), the verdict the kernel
        gave, with a NAT rule's translation for its accept."""
        if ev.kind == "policy":
            return f"policy {ev.verdict}", ev.verdict
        if ev.kind == "return":
            return "end of chain", "RETURN"
        verdict = f"{ev.verdict} {ev.target}" if ev.target else ev.verdict
        r = self.rule(ev.family, ev.table, ev.chain, ev.handle)
        if r is None:
            return f"handle {ev.handle}", verdict
        text = r.save if r.xt and r.save else r.text
        if ev.verdict == "ACCEPT":
            m = SAVE_NAT_RE.search(text) if text.startswith("-A ") else NAT_RE.search(text)
            if m and text.startswith("-A "):
                verdict = f"{m.group(1)} {m.group(2)}" if m.group(2) else m.group(1)
            elif m:
                verdict = f"{m.group(1).upper()} {m.group(2)}" if m.group(1) else m.group(3).upper()
        return text, verdict


class NftTracer:
    """Trace events -> hop dicts, in the kernel's order (`seq`), each with its rule's text
    and verdict, the hook and priority of the base chain it ran under, and the packet's
    headers as that base chain saw them (a trace id is per skb, but it can change when NAT
    clears the skb's hash: the correlation places hops by the packet's ident, which NAT
    keeps)."""

    def __init__(self, netns=None):
        self.netns = netns
        self.events: NftTraceEvents | None = None
        self.book: NftRuleBook | None = None
        self.seq = 0
        self._trace = collections.OrderedDict()  # trace id -> {pkt, now, hook, prio}

    def start(self, ruleset=None):
        """Listen, then name rules from `ruleset` (an iptsave.NftRuleset read just
        before, e.g. by choose_mode) or from a read of its own."""
        self.events = NftTraceEvents(self.netns).start()
        self.book = NftRuleBook(self.netns, ruleset)
        return self

    @property
    def lost(self):
        return self.events.lost if self.events else 0

    def read(self):
        evs = self.events.read() if self.events else []
        if self.events and self.events.changed and self.book:
            # read again now: a table made anew (a firewall reload) reuses its handles
            self.events.changed = False
            self.book.refresh()
        return [h for h in (self.hop(ev) for ev in evs) if h is not None]

    def hop(self, ev: NftTraceEvent):
        book = self.book
        assert book is not None  # start() made it
        st = self._trace.get(ev.trace_id)
        if st is None:
            st = self._trace[ev.trace_id] = {"head": b"", "hook": None, "prio": 0}
            if len(self._trace) > 8192:
                self._trace.popitem(last=False)
        head = packet_headers(ev.network, ev.transport)
        if head:  # the first event of each base chain run shows the packet as it is now
            st["head"] = head
        ch = book.chain(ev.family, ev.table, ev.chain)
        if ch is not None and ch.base:
            st["hook"], st["prio"] = HOOK_NAMES.get(ch.hook, ch.hook.upper()), ch.prio or 0
        if ev.table.startswith(NFT_TABLE_PREFIX):
            return None  # our own nftrace table is not part of the path
        if ev.kind == "rule" and not ev.handle:
            # the end of a chain (no rule): a regular chain returns to its caller; a base
            # chain's policy event follows
            if ch is not None and ch.base:
                return None
            ev.kind = "return"
        self.seq += 1
        text, verdict = book.describe(ev)
        return {
            "ts_ns": ev.ts_ns,
            "table": f"{ev.family} {ev.table}",
            "chain": ev.chain,
            "kind": ev.kind,
            "rule_num": ev.handle,
            "handle": ev.handle,
            "rule_text": text,
            "verdict": verdict,
            "hook": st["hook"],
            "prio": st["prio"],
            "seq": self.seq,
            "trace_id": ev.trace_id,
            "indev": ev.iif,
            "outdev": ev.oif,
            "payload": st["head"],
            "ours": False,
            "backend": "nftables",
        }

    def stop(self):
        if self.events:
            self.events.stop()
            self.events = None
