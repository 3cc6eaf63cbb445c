"""The trace's optional sources, one interface each: start() / read() / lost / stop().

Besides the packet capture (required; probes/packets.py, read by the session), a trace
reads conntrack events (NAT tuples), the netfilter trace (legacy TRACE lines through
nfnetlink_log, nf_tables' trace events; probes.nftrace.choose_mode says which),
kfree_skb drops, and the container's process, link and cgroup events. Each source that
cannot start degrades to one note (`start_all`); `read()` returns what arrived since the
last call, already filtered to the traced container, as the items the correlation takes
(probes' dicts, hops with their parsed packet).
"""

from __future__ import annotations

import contextlib
import os

from ..errors import PyinspectError
from . import flows as F
from .stale import state_dir

MAX_DYNAMIC_RULES = 64
DROPS_PER_POLL = 50


def _v4(tgt):
    """The IPv4 addresses and ports of a capture target (the iptables and `ip` family
    TRACE rules take only those)."""
    addrs = [a for a in tgt.addrs if ":" not in a]
    return addrs, [p for p in tgt.ports if ":" not in (p[0] or "")]


def _v6(tgt):
    """The IPv6 addresses and ports (those on any address too) for ip6tables TRACE rules."""
    addrs = [a for a in tgt.addrs if ":" in a]
    return addrs, [p for p in tgt.ports if ":" in (p[0] or ":")]


class Source:
    """A probe the trace reads. `name` is what its note says when it cannot start."""

    name = "source"

    def start(self) -> Source:
        return self

    def read(self, final=False) -> list:
        return []

    @property
    def lost(self) -> int:
        return 0

    def stop(self) -> None:
        pass


class Conntrack(Source):
    """ctnetlink events of the traced container's connections (by address or published
    port); start() also takes the table as it is."""

    name = "conntrack"

    def __init__(self, target, notes):
        self.target = target
        self.notes = notes
        self.ct = None
        self.existing = []
        addrs = set(target.addrs)
        self._addrs = addrs
        self._ports = {(p[1], p[2]) for p in target.ports}

    def ours(self, ev):
        o, r = ev["orig"], ev.get("reply") or (None,) * 4
        a = self._addrs
        if o[0] in a or o[2] in a or r[0] in a or r[2] in a:
            return True
        return (o[3], ev["proto"]) in self._ports

    def start(self):
        from pyinspect.probes import conntrack

        self.ct = conntrack.ConntrackEvents().start()
        if not conntrack.events_enabled():
            self.notes.append(
                "conntrack: net.netfilter.nf_conntrack_events is 0 here: "
                "no NAT tuples from conntrack"
            )
        self.existing = [ev for ev in self.ct.dump() if self.ours(ev)]
        return self

    def read(self, final=False):
        if self.ct is None:  # not started
            return []
        return [ev for ev in self.ct.read() if self.ours(ev)]

    @property
    def lost(self):
        return self.ct.lost if self.ct else 0

    def stop(self):
        if self.ct:
            self.ct.stop()
        self.ct = None


class NetfilterTrace(Source):
    """Legacy (x_tables) trace lines, logged through nfnetlink_log group 0 (the
    namespace's nf_log bound for the session). With `rules`, TRACE rules in a raw chain of
    this session's mark the traced flows (mode legacy); without, the nftrace table of
    NftTrace marks them (mode both: a marked packet is logged by x_tables too)."""

    name = "netfilter trace"

    def __init__(self, root, capture_target, rules=True):
        self.root = root
        self.tgt = capture_target
        self.want_rules = rules
        self.binding = self.nflog = self.rules = self.rulebook = None
        # IPv6 (ip6tables-legacy), when the container has IPv6 addresses and the namespace
        # legacy ip6tables rules: the AF_INET6 nf_log bound too, rule texts of its own
        self.binding6 = self.rules6 = self.rulebook6 = None
        self.dynamic = set()
        self.seq = 0

    def start(self):
        from pyinspect.probes import nftrace

        self.binding = nftrace.LoggerBinding(
            None, str(state_dir(self.root) / f"{os.getpid()}.nflog.json")
        )
        self.binding.bind()
        self.nflog = nftrace.NflogReader().start()
        if self.want_rules:
            self.rules = nftrace.TraceRules()
            self.rules.add_many(nftrace.trace_rule_specs(*_v4(self.tgt)))
        self.rulebook = nftrace.RuleBook()
        addrs6, ports6 = _v6(self.tgt)
        if addrs6 and nftrace.legacy_tables_in_use(family=6):
            self.binding6 = nftrace.LoggerBinding(
                None, str(state_dir(self.root) / f"{os.getpid()}.nflog6.json"), family=10
            )
            self.binding6.bind()
            if self.want_rules:
                self.rules6 = nftrace.TraceRules(tool="ip6tables-legacy")
                self.rules6.add_many(nftrace.trace_rule_specs(addrs6, ports6))
            self.rulebook6 = nftrace.RuleBook(tool="ip6tables-legacy")
        return self

    def read(self, final=False):
        from pyinspect.probes import nftrace

        out: list = []
        if self.nflog is None:  # not started
            return out
        for rec in self.nflog.read():
            six = rec.get("family") == 10 and self.rulebook6 is not None
            hop = nftrace.parse_trace(rec, self.rulebook6 if six else self.rulebook)
            if hop and not hop["ours"]:  # our own TRACE rule is not part of the path
                hop["pkt"] = F.parse_ip(hop.pop("payload", b""))
                self.seq += 1
                hop["seq"] = self.seq
                hop["prio"] = nftrace.LEGACY_PRIO.get(hop["table"], 0)
                out.append(hop)
        return out

    def follow(self, proto, src, sport, dst, dport):
        """Also trace the replies of an outbound (MASQUERADEd) flow: one rule each."""
        key = (proto, src, sport, dport)
        rules = self.rules6 if ":" in src else self.rules
        if (
            rules
            and key not in self.dynamic
            and len(self.dynamic) < MAX_DYNAMIC_RULES
            and proto in ("tcp", "udp")
        ):
            self.dynamic.add(key)
            with contextlib.suppress(PyinspectError):
                rules.add(_reply_spec(proto, src, sport, dst, dport))

    @property
    def lost(self):
        return self.nflog.lost if self.nflog else 0

    def stop(self):
        for rules in (self.rules, self.rules6):
            if rules:
                rules.remove()
        if self.nflog:
            self.nflog.stop()
        for binding in (self.binding, self.binding6):
            if binding:
                binding.restore()
        self.rules = self.nflog = self.binding = self.rules6 = self.binding6 = None


def _reply_spec(proto, src, sport, dst, dport):
    return ["-p", proto, "-s", src, "--sport", str(sport), "-d", dst, "--dport", str(dport)]


class NftTrace(Source):
    """nf_tables (iptables-nft, Docker's nftables backend, netavark, firewalld): `meta
    nftrace set 1` for the traced flows in `table inet pyinspect_trace_<pid>`, the
    kernel's trace events (NFNLGRP_NFTRACE) read in order, each rule named by its handle
    in one read of the ruleset (again after a ruleset change)."""

    name = "nftables trace"

    def __init__(self, capture_target, ruleset=None):
        self.tgt = capture_target
        self.ruleset = ruleset  # what choose_mode read: not read twice
        self.tracer = self.table = None
        self.dynamic = set()

    def start(self):
        from pyinspect.probes import nftrace

        self.tracer = nftrace.NftTracer().start(self.ruleset)
        self.table = nftrace.NftTraceTable()
        self.table.create(nftrace.trace_rule_specs(self.tgt.addrs, self.tgt.ports))
        return self

    def read(self, final=False):
        out: list = []
        if self.tracer is None:  # not started
            return out
        for hop in self.tracer.read():
            hop["pkt"] = F.parse_ip(hop.pop("payload", b""))
            out.append(hop)
        return out

    def follow(self, proto, src, sport, dst, dport):
        """Also trace the replies of an outbound (MASQUERADEd) flow: one rule each."""
        key = (proto, src, sport, dport)
        if (
            self.table
            and key not in self.dynamic
            and len(self.dynamic) < MAX_DYNAMIC_RULES
            and proto in ("tcp", "udp")
        ):
            self.dynamic.add(key)
            with contextlib.suppress(PyinspectError):
                self.table.add(_reply_spec(proto, src, sport, dst, dport))

    @property
    def lost(self):
        return self.tracer.lost if self.tracer else 0

    def stop(self):
        if self.table:
            self.table.remove()
        if self.tracer:
            self.tracer.stop()
        self.tracer = self.table = None


class Drops(Source):
    """skb:kfree_skb in the capture points' namespaces, bounded per poll (a drop storm is
    counted, not all decoded)."""

    name = "drops"

    def __init__(self, capture_target, netns):
        self.tgt = capture_target
        self.netns = netns
        self.watch = None

    def start(self):
        from pyinspect.probes import drops

        self.watch = drops.DropWatch(self.tgt, self.netns).start()
        return self

    def read(self, final=False):
        if self.watch is None:  # not started
            return []
        return self.watch.read(None if final else DROPS_PER_POLL)

    @property
    def lost(self):
        return self.watch.lost if self.watch else 0

    def stop(self):
        if self.watch:
            self.watch.stop()
        self.watch = None


class ContainerEvents(Source):
    """The container's process events (sched fork/exec/exit, oom; not syscalls:*, which
    slow every syscall on the host), link changes of the capture points and inside the
    container (rtnetlink), and its cgroup events (pyinspect's containers)."""

    name = "process events"

    def __init__(self, target, points, notes):
        self.target = target
        self.points = points
        self.notes = notes
        self.procs = self.links = self.cgroups = None

    def start(self):
        from pyinspect.probes.cgroups import CgroupProbe
        from pyinspect.probes.links import LinkProbe
        from pyinspect.probes.process import ProcessProbe

        tps = {k: v for k, v in ProcessProbe.TRACEPOINTS.items() if not k.startswith("syscalls:")}
        self.procs = ProcessProbe(tracepoints=tps).start({"namespaces": [self.target.netns]})
        self.notes += list(self.procs.messages)
        try:
            paths = [self.target.netns_path] if self.target.netns_path else []
            self.links = LinkProbe(netns=paths, own=True).start()
        except Exception as exc:  # noqa: BLE001 - degrade to a note
            self.links = None
            self.notes.append(f"link events: unavailable: {exc}")
        if self.target.source == "pyinspect" and self.target.id:
            try:
                self.cgroups = CgroupProbe().start()
                self.notes += list(self.cgroups.messages)
            except Exception as exc:  # noqa: BLE001 - degrade to a note
                self.cgroups = None
                self.notes.append(f"cgroup events: unavailable: {exc}")
        return self

    def read(self, final=False):
        if self.procs is None:  # not started
            return []
        out = list(self.procs.events(0))
        if self.links:
            names = {p.name for p in self.points if p.netns is None}
            out += [
                e
                for e in self.links.events(0)
                if e.get("netns") == self.target.netns or e.get("ifname") in names
            ]
        if self.cgroups:
            out += [
                e
                for e in self.cgroups.events(0)
                if self.target.id in ((e.get("detail") or {}).get("path") or "")
            ]
        return out

    def stop(self):
        for probe in (self.procs, self.links, self.cgroups):
            if probe:
                probe.stop()
        self.procs = self.links = self.cgroups = None


def start_all(sources, notes):
    """Start each source; one that fails is stopped and becomes a note. Returns the
    sources that run."""
    running = []
    for src in sources:
        try:
            src.start()
            running.append(src)
        except Exception as exc:  # noqa: BLE001 - any failure degrades to a note
            with contextlib.suppress(Exception):
                src.stop()
            why = str(exc) if isinstance(exc, PyinspectError) else f"{type(exc).__name__}: {exc}"
            notes.append(f"{src.name}: unavailable: {why}")
    return running
