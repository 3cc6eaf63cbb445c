"""The netfilter rule path of traced packets, from the kernel's own trace facility.

Legacy iptables (x_tables, what python-iptables and `iptables-legacy` write): TRACE rules in
a chain of the session's own in the raw table (`PI-TRACE-<pid>`), jumped to from the top of
`raw PREROUTING` and `raw OUTPUT` by rules marked with the comment `pyinspect-trace:<pid>`.
TCP data packets (no SYN/FIN/RST) are not sent to the chain (an inline protocol compare and
one tcp match, no jump); its rules TRACE only the traced flows. The trace lines are
delivered by nfnetlink_log: the namespace's IPv4 logger (`/proc/sys/net/netfilter/nf_log/2`,
a per-namespace setting) is bound to `nfnetlink_log` for the session and restored
afterwards, and a netlink socket bound to group 0 receives `TRACE: table:chain:type:num`
prefixes with the packet. No global sysctl (`nf_log_all_netns`) and no kernel log parsing is
needed.

nf_tables (Debian's `iptables`, nft): skb->nf_trace, set by the same TRACE rules, makes
nf_tables emit trace events to listeners in the packet's namespace; when the namespace has
nf_tables chains, `nft monitor trace` is run there and its lines parsed into the same hops.

Hop dicts: {ts_ns, table, chain, kind: rule|return|policy, rule_num, rule_text, verdict,
hook, indev, outdev, packet: (proto, src, sport, dst, dport, ipid), backend}.
"""

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
HOOKS = {0: "PREROUTING", 1: "INPUT", 2: "FORWARD", 3: "OUTPUT", 4: "POSTROUTING"}
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
    def expand(spec):
        """Per match: every TCP SYN/FIN/RST (connection set-up, tear-down, refusals: the NAT
        and filter decisions are made on them; TCP data packets have left the chain by its
        first rule), and UDP/ICMP packets up to TRACE_RATE."""
        limit = ["-m", "limit", "--limit", TRACE_RATE, "--limit-burst", str(TRACE_BURST)]
        if "-p" in spec:
            proto = spec[spec.index("-p") + 1]
            return [spec] if proto == "tcp" else [spec + limit]
        return [["-p", "tcp"] + spec, ["-p", "udp"] + spec + limit, ["-p", "icmp"] + spec + limit]

    def add_many(self, specs):
        """TRACE every spec (one restore call); the first call makes the chain and jumps."""
        specs = [x for spec in specs for x in self.expand(spec)]
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
    """Bind the namespace's IPv4 nf_log to nfnetlink_log; restore the previous value.

    The previous value is kept in `state_file` so a later start can restore it after a
    kill -9 (`restore_stale_binding`).
    """

    def __init__(self, netns=None, state_file=None):
        self.netns = netns
        self.state_file = state_file
        self.previous = None

    def bind(self):
        try:
            with in_netns(self.netns), open(NF_LOG_SYSCTL) as f:
                previous = f.read().strip()
        except OSError as exc:
            raise UnavailableError(
                f"no per-namespace nf_log setting ({NF_LOG_SYSCTL}: {exc.strerror})"
            ) from exc
        with in_netns(self.netns):
            self.previous = previous
            if self.state_file:
                with open(self.state_file, "w") as f:
                    json.dump(
                        {"netns": self.netns, "previous": self.previous, "pid": os.getpid()}, f
                    )
            try:
                with open(NF_LOG_SYSCTL, "w") as f:
                    f.write("nfnetlink_log")
            except OSError as exc:
                raise UnavailableError(f"cannot bind nfnetlink_log: {exc.strerror}") from exc

    def restore(self):
        if self.previous is None:
            return
        with contextlib.suppress(OSError, UnavailableError), in_netns(self.netns):
            with open(NF_LOG_SYSCTL, "w") as f:
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
        with open(NF_LOG_SYSCTL, "w") as f:
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
        self.sock = None
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
        self.sock.send(hdr + body)
        deadline = time.time() + 2
        while time.time() < deadline:
            if not select.select([self.sock], [], [], 0.5)[0]:
                continue
            data = self.sock.recv(65536)
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
        "backend": "iptables-legacy",
    }


def has_nft_chains(netns=None):
    """True if the namespace has nf_tables base chains other than pyinspect's own."""
    out = _run_in(netns, ["nft", "list", "ruleset"])
    if not out:
        return False
    table = None
    for line in out.splitlines():
        m = re.match(r"\s*table (\S+) (\S+)", line)
        if m:
            table = m.group(2)
        elif "hook " in line and table and not table.startswith(NFT_TABLE_PREFIX):
            return True
    return False


NFT_TABLE_PREFIX = "pyinspect_trace_"


def nft_expr(spec):
    """An iptables-style spec (see trace_rule_specs) as an nft match expression."""
    out = []
    proto = None
    i = 0
    while i < len(spec):
        a = spec[i]
        v = spec[i + 1] if i + 1 < len(spec) else None
        if a == "-s":
            out.append(f"ip saddr {v}")
        elif a == "-d":
            out.append(f"ip daddr {v}")
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
    """`meta nftrace set 1` for the traced flows in a table of our own (nf_tables backend).

    nf_tables only emits trace events once some rule sets nftrace; this table does, before
    every other hook (priority -301), with the same sampling as the TRACE rules.
    """

    def __init__(self, netns=None):
        self.netns = netns
        self.name = f"{NFT_TABLE_PREFIX}{os.getpid()}"
        self.made = False

    def create(self, specs):
        lines = [
            f"table ip {self.name} {{",
            "  chain pre { type filter hook prerouting priority -301; policy accept; }",
            "  chain out { type filter hook output priority -301; policy accept; }",
            "}",
        ]
        # TCP data (no SYN/FIN/RST) leaves the chain at its first rule
        lines += [
            f"add rule ip {self.name} {chain} meta l4proto tcp "
            "tcp flags & (syn | fin | rst) == 0 accept"
            for chain in ("pre", "out")
        ]
        for spec in specs:
            expr = nft_expr(spec)
            proto = spec[spec.index("-p") + 1] if "-p" in spec else None
            rate = (
                f"limit rate {TRACE_RATE.replace('/sec', '/second')} burst {TRACE_BURST} "
                "packets meta nftrace set 1"
            )
            for chain in ("pre", "out"):
                if proto in (None, "tcp"):
                    tcp = expr if "l4proto tcp" in expr else f"meta l4proto tcp {expr}"
                    lines.append(
                        f"add rule ip {self.name} {chain} {tcp} "
                        "tcp flags & (syn | fin | rst) != 0 meta nftrace set 1"
                    )
                if proto is None:
                    for other in ("udp", "icmp"):
                        lines.append(
                            f"add rule ip {self.name} {chain} meta l4proto {other} {expr} {rate}"
                        )
                elif proto != "tcp":
                    lines.append(f"add rule ip {self.name} {chain} {expr} {rate}")
        prefix = ["nsenter", f"--net={self.netns}"] if self.netns else []
        try:
            p = subprocess.run(
                prefix + ["nft", "-f", "-"],
                input="\n".join(lines) + "\n",
                capture_output=True,
                text=True,
                timeout=15,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UnavailableError(f"cannot run nft: {exc}") from exc
        if p.returncode != 0:
            raise UnavailableError(f"cannot add the nftrace table: {p.stderr.strip()[:200]}")
        self.made = True

    def remove(self):
        if self.made:
            _run_in(self.netns, ["nft", "delete", "table", "ip", self.name])
            self.made = False


def remove_stale_nft_tables(netns=None):
    """Delete pyinspect_trace_<pid> tables of dead processes; returns their names."""
    out = _run_in(netns, ["nft", "list", "tables"]) or ""
    removed = []
    for m in re.finditer(rf"table ip ({NFT_TABLE_PREFIX}(\d+))", out):
        pid = int(m.group(2))
        if pid != os.getpid() and pid_alive(pid):
            continue
        if _run_in(netns, ["nft", "delete", "table", "ip", m.group(1)]) is not None:
            removed.append(m.group(1))
    return removed


class NftMonitor:
    """`nft monitor trace` in one namespace; lines parsed into hop dicts (backend nftables).

    Each trace id starts with a `packet:` line (addresses, ports, ip id, length) that the
    following rule/policy lines of the same id belong to.
    """

    LINE = re.compile(r"^trace id (\w+) (\w+) (\S+) (\S+) (rule|policy|packet:)\s*(.*)$")
    FIELDS = {
        "ip saddr": "src",
        "ip daddr": "dst",
        "ip id": "ipid",
        "ip length": "iplen",
        "sport": "sport",
        "dport": "dport",
        "ip protocol": "proto",
    }

    def __init__(self, netns=None):
        self.netns = netns
        self.proc = None
        self._buf = b""
        self._packets = {}

    def start(self):
        prefix = ["nsenter", f"--net={self.netns}"] if self.netns else []
        try:
            self.proc = subprocess.Popen(
                prefix + ["nft", "monitor", "trace"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise UnavailableError(f"cannot run nft monitor trace: {exc.strerror}") from exc
        os.set_blocking(self.proc.stdout.fileno(), False)
        return self

    @staticmethod
    def packet_of(text):
        """The `packet:` part of a trace -> (proto, src, sport, dst, dport, ipid, iplen)."""

        def grab(pat, cast=str):
            m = re.search(pat, text)
            return cast(m.group(1)) if m else None

        proto = grab(r"\b(tcp|udp|icmp) ") or "?"
        return (
            proto,
            grab(r"ip saddr (\S+)"),
            grab(rf"{proto} sport (\d+)", int) or 0,
            grab(r"ip daddr (\S+)"),
            grab(rf"{proto} dport (\d+)", int) or 0,
            grab(r"ip id (\d+)", int),
            grab(r"ip length (\d+)", int),
        )

    def read(self):
        out = []
        if not self.proc:
            return out
        try:
            chunk = self.proc.stdout.read()
        except (BlockingIOError, ValueError):
            chunk = None
        if chunk:
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        now = time.time_ns()
        for raw in lines:
            m = self.LINE.match(raw.decode(errors="replace").strip())
            if not m:
                continue
            tid, family, table, chain, kind, rest = m.groups()
            if kind == "packet:":
                self._packets[(tid, table)] = self.packet_of(rest)
                if len(self._packets) > 4096:
                    self._packets.pop(next(iter(self._packets)))
                continue
            if table.startswith(NFT_TABLE_PREFIX):
                continue  # our own nftrace table is not part of the path
            verdict = ""
            vm = re.search(r"\(verdict (\w+)\)|^(\w+)\s*$", rest)
            if vm:
                verdict = (vm.group(1) or vm.group(2)).upper()
            text = re.sub(r"\s*\(verdict \w+\)", "", rest).strip()
            text = re.sub(r"counter packets \d+ bytes \d+\s*", "", text).strip()
            nat = re.search(r"\b(dnat|snat)(?: ip)? to (\S+)", text)
            if nat:
                verdict = f"{nat.group(1).upper()} {nat.group(2)}"
            elif re.search(r"\bmasquerade\b", text):
                verdict = "MASQUERADE"
            if kind == "policy":
                text = f"policy {text.upper()}"
            out.append(
                {
                    "ts_ns": now,
                    "table": f"{family} {table}",
                    "chain": chain,
                    "kind": kind,
                    "rule_num": 0,
                    "rule_text": text,
                    "verdict": verdict,
                    "hook": None,
                    "indev": 0,
                    "outdev": 0,
                    "nft_packet": self._packets.get((tid, table)),
                    "ours": False,
                    "backend": "nftables",
                }
            )
        return out

    def stop(self):
        if self.proc:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
