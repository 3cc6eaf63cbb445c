"""A trace session: follow one container's packets through NAT, the bridge and its veth.

    s = TraceSession(root, "web", TraceOptions(duration=10))
    s.start()                   # resolve, attach; s.ready is the ready line
    for item in s.poll(): ...   # {"type": flow|hop|drop|event, "flow": id, "text": ...}
    summary = s.stop()          # detach everything, store the session, write -w

Run it in the container host's network namespace. The session only orchestrates:
  target.py    which container, which capture points
  evidence.py  every packet -> pcapng segment files (its own thread, no analysis)
  budget.py    how many packets a second the analysis looks at
  sources.py   conntrack, netfilter trace, drops, process events (each may degrade)
  flows.py     correlation: records, conntrack, trace lines, drops -> flows, journeys
  sinks.py     live lines and the store (index rows into the files, flows, hops, ...)
  summary.py   the summary
"""

import contextlib
import gc
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..config import database_path
from ..errors import PyinspectError, UsageError
from . import flows as F
from .budget import ReaderBudget
from .dns import DnsLookups
from .evidence import SEGMENT_BYTES, EvidenceWriter, Interface, SegmentFiles
from .sinks import STORE_EVERY_S, LiveText, StoreSink
from .sources import (
    Conntrack,
    ContainerEvents,
    Drops,
    NetfilterTrace,
    NftTrace,
    Source,
    start_all,
)
from .stale import cleanup_stale, state_dir
from .summary import size_text
from .target import (
    TraceTarget,
    capture_points,
    describe,
    dnat_ports,
    paused_note,
    resolve,
    role,
)

if TYPE_CHECKING:
    from pyinspect.probes.packets import PacketCapture

    from ..store import Store

WHOLE_SNAPLEN = 262144  # tcpdump's default: with -w the file keeps whole packets
# without -w: every packet's headers, for pcap export: Ethernet + VLAN tag + IPv6 + TCP
# with the most options fit, and it is what the analysis sees (ASNAP). 256 cost iperf3
# x0.865 of its throughput against x0.914 at 128 (docs/trace.md, Measured)
HEADERS_SNAPLEN = 128
AUTO_MAX_SIZE = 4 << 30  # segment files of one trace, at most (and free disk - 1 GiB)
LIVE_PACKETS_PER_FLOW = 20  # live hop lines for the first N packets of each flow
GC_EVERY_S = 30  # TraceOptions.own_gc: a cycle collection this often


@dataclass
class TraceOptions:
    port: int | None = None
    filter: str | None = None
    via: list | None = None
    snaplen: int | None = None  # None: WHOLE_SNAPLEN with -w, else HEADERS_SNAPLEN
    duration: float | None = None
    count: int | None = None
    pcap: str | None = None
    live_per_flow: int = LIVE_PACKETS_PER_FLOW
    max_rate: int | None = None  # packets/s the analysis takes; None = auto; 0 = all
    events: bool = True  # interleave the container's process events
    ring_mb: float | None = None  # evidence buffer per CPU (None: evring.default_ring_bytes)
    max_size: int | None = None  # bytes of segment files; None: automatic; 0: no cap
    segment_size: int = SEGMENT_BYTES
    stream_fd: int | None = None  # evidence as one pcapng stream to this fd, no files
    stream_filter: str | None = None  # pcap-filter: only matching packets go to the stream
    stream_delay: float = 0  # s the stream holds packets back for NAT comments
    roles: list | None = None  # capture points of these roles only (target.role)
    # what poll() returns of the journeys: "full" (items with every field: the JSON
    # view), "text" (their text lines only) or "off" (none: nobody reads them)
    live: Literal["full", "text", "off"] = "full"
    # the process is the trace's own (the CLI): from the ready line on, what start-up made
    # is frozen and the automatic cycle collector is off (the analysis makes no reference
    # cycles, yet its collections walked every pending capture and journey every few
    # hundred allocations); a poll collects what the last GC_EVERY_S left instead
    own_gc: bool = False


def _mono_to_real():
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class TraceSession:
    """One trace of one container (see the module docstring)."""

    def __init__(self, root, container_ref, options=None):
        self.root = Path(root)
        self.ref = container_ref
        self.opt = options or TraceOptions()
        # None until start() (stop() and the summary cope with a start that failed)
        self.target: TraceTarget | None = None
        self.points: list = []
        self.cap: PacketCapture | None = None
        self.evidence: EvidenceWriter | None = None
        self.sources: list[Source] = []
        self.conntrack: Conntrack | None = None
        self.nftrace: NetfilterTrace | None = None
        self.nfttrace: NftTrace | None = None
        self.nf_mode = None  # probes.nftrace.NetfilterMode
        self.dns: DnsLookups | None = None
        self.store: Store | None = None
        self.sink: StoreSink | None = None
        self.live: LiveText | None = None
        self.corr: F.Correlator | None = None
        self.session_id: int | None = None
        self.notes = []
        self.budget = ReaderBudget(self.opt.max_rate)
        self.analysed = {}  # point index -> analysis records read
        self.reader_cpu = 0.0  # CPU seconds of the reader's thread in polls
        self.started_ns = 0
        self.ready_ns = 0
        self.offset = 0
        self.ready = ""
        self.done = False
        self.pfilter = None
        self.max_size = 0
        self.capture_hook = None
        self.ring_bytes = None  # each CPU's evidence ring (kept for the summary)
        self.summary = None
        self.tail = []
        self._state_file: Path | None = None
        self._stopped = False
        self._lost = {}
        self._stream_keep = None
        self._settled_ns = None  # the last poll's settle cutoff (CLOCK_MONOTONIC)
        self._gc_ns = 0  # own_gc: when the last collection ran (0: the collector is on)

    def _started(self) -> tuple[TraceTarget, F.Correlator]:
        """The target and the correlator, which start() made before anything uses them."""
        assert self.target is not None and self.corr is not None, "not started"
        return self.target, self.corr

    @property
    def flows(self):
        return self._started()[1].flows

    @property
    def poll_interval(self):
        return self.budget.poll_interval

    # -- start -------------------------------------------------------------------------
    def start(self):
        from pyinspect.probes import packets as P

        if self.opt.snaplen is not None and self.opt.snaplen < 0:
            raise UsageError(f"trace: bad --snaplen {self.opt.snaplen}: must be >= 0")
        if self.opt.filter:
            self.pfilter = P.BpfFilter(self.opt.filter, P.EV_MAXCAP)
        if self.opt.stream_filter:
            self._stream_keep = P.BpfFilter(self.opt.stream_filter, P.EV_MAXCAP).match
        if self.opt.snaplen is None:
            whole = self.opt.pcap or self.opt.stream_fd is not None
            self.opt.snaplen = WHOLE_SNAPLEN if whole else HEADERS_SNAPLEN
        cleaned = cleanup_stale(self.root)
        if cleaned:
            self.notes.append(f"removed leftovers of a killed trace: {'; '.join(cleaned)}")
        self.target = t = resolve(self.root, self.ref)
        paused = paused_note(t)
        if paused:
            self.notes.append(paused)
        self.points = capture_points(t, self.opt.via)
        if self.opt.roles:
            self.points = [p for p in self.points if role(p) in self.opt.roles]
            if not self.points:
                raise UsageError(
                    f"trace: {t.name} has no capture point of the roles {', '.join(self.opt.roles)}"
                )
        t.ports = list(t.ports) + [p for p in dnat_ports(t.addrs) if p not in t.ports]
        if self.opt.port:
            t.ports = [p for p in t.ports if self.opt.port in (p[3], p[1])]
        only = sorted({self.opt.port} | {p[1] for p in t.ports}) if self.opt.port else []
        tgt = P.Target(
            addrs=list(t.addrs),
            ports=[(p[0], p[1], p[2]) for p in t.ports],
            only_ports=only,
            container_ports=sorted({(p[3], p[2]) for p in t.ports if p[3]}),
        )
        self.started_ns = time.time_ns()
        self.offset = _mono_to_real()
        self.corr = F.Correlator(
            self.offset, self.opt.live_per_flow, self.pfilter, self.opt.count, t.name, t.netns
        )
        self.live = LiveText(
            self.points, self.opt.live_per_flow, t.name, fields=self.opt.live == "full"
        )
        self._state_file = state_dir(self.root) / f"{os.getpid()}.json"
        self._write_state()
        try:
            self.cap = P.PacketCapture(self.points, tgt, self.opt.snaplen, self.opt.ring_mb)
            self._open_store()  # a bad -w path fails here, before any attach
            self.budget.refill(self.cap)  # budgeted from the first packet, not first poll
            self.cap.start()
            self.evidence = EvidenceWriter(self.cap, self._segment_files()).start()
            self.capture_hook = self.cap.attach_kind
            self.ring_bytes = self.cap.ring_bytes
            if self.cap.attach_note:
                self.notes.append(f"capture: {self.cap.attach_note}")
            self._write_state(
                points=[
                    {"netns": p.netns, "ifindex": p.ifindex, "name": p.name, "added_clsact": added}
                    for p, added in self.cap.attached
                ]
            )
            self._start_sources(tgt)
        except BaseException as exc:
            self._teardown()
            self._fail(exc)
            raise
        self.budget.fill(self.cap)  # ready: a full bucket, for a burst at once
        if self.opt.own_gc:
            gc.freeze()
            gc.disable()
            self._gc_ns = time.monotonic_ns()
        self.ready_ns = time.time_ns()  # --duration counts from here
        roles = ", ".join(f"{p.name} ({role(p)})" for p in self.points)
        rules = f"; rule path: {self.nf_mode.mode}" if self.nf_mode else ""
        self.ready = (
            f"tracing {t.name} ({', '.join(t.addrs) or 'no IPv4'}) on {roles}{rules}; "
            "Ctrl-C to stop"
        )
        return self

    def _start_sources(self, tgt):
        from pyinspect.probes import nftrace

        target, corr = self._started()
        conntrack = self.conntrack = Conntrack(target, self.notes)
        # legacy TRACE rules, or an nftrace table of our own, or both: from what the
        # namespace has (never legacy tables in a namespace that has none in use)
        self.nf_mode = nftrace.choose_mode()
        wanted: list[Source] = [conntrack]
        mode = self.nf_mode.mode
        if mode in ("legacy", "both"):
            self.nftrace = NetfilterTrace(self.root, tgt, rules=mode == "legacy")
            wanted.append(self.nftrace)
        if mode in ("nftables", "both"):
            self.nfttrace = NftTrace(tgt, self.nf_mode.ruleset)
            wanted.append(self.nfttrace)
        if mode == "none":
            self.notes.append(f"netfilter trace: unavailable: {self.nf_mode.why}")
        if self.opt.events:
            wanted.append(ContainerEvents(target, self.points, self.notes))
        wanted.append(Drops(tgt, {p.netns_inode for p in self.points} | {target.netns}))
        self.dns = DnsLookups(self.root, target, self.points)
        wanted.append(self.dns)  # its read(): the embedded DNS's answers, as events
        self.sources = start_all(wanted, self.notes)
        if conntrack in self.sources:
            for ev in conntrack.existing:
                corr.conntrack(ev)

    def _fail(self, exc):
        """Mark the session row failed (if one was written) and close the store."""
        if self.store and self.session_id:
            with contextlib.suppress(Exception):
                self.store.fail_trace(self.session_id, str(exc))
        if self.store:
            self.store.close()
            self.store = None
        self._stopped = True
        self.summary = None

    def _write_state(self, **extra):
        assert self.target is not None and self._state_file is not None  # start() set them
        st = {
            "pid": os.getpid(),
            "container": self.target.name,
            "rules_netns": None,
            "points": [
                {"netns": p.netns, "ifindex": p.ifindex, "name": p.name} for p in self.points
            ],
        }
        st.update(extra)
        self._state_file.write_text(json.dumps(st))

    def _open_store(self):
        from ..store import Store

        if self.opt.pcap:
            out = Path(self.opt.pcap)
            parent = out.parent if str(out.parent) else Path(".")
            if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
                raise UsageError(
                    f"trace: cannot write {self.opt.pcap}: "
                    f"{'a directory' if out.is_dir() else 'no writable directory'}",
                    "give -w a path in a writable directory",
                )
        target = self._started()[0]
        assert self.cap is not None  # made before the store
        store = self.store = Store(database_path(self.root))
        self.session_id, point_ids = store.begin_trace(
            container_id=target.id,
            container_name=target.name,
            started_ns=self.started_ns,
            filter=self.opt.filter or "",
            snaplen=self.cap.snaplen,
            pcap_path=str(self.opt.pcap or ""),
            pid=os.getpid(),
            points=[
                {
                    "name": p.name,
                    "description": describe(p),
                    "ifindex": p.ifindex,
                    "netns": p.netns_inode,
                    "linktype": 1,
                }
                for p in self.points
            ],
        )
        self.sink = StoreSink(
            store,
            self.session_id,
            point_ids,
            target,
            self.offset,
            # a live stream comments its packets with their stored flow ids: stored now
            every_s=0 if self.opt.stream_fd is not None else STORE_EVERY_S,
        )

    def _segment_files(self):
        """Where this session's evidence goes: <state root>/pcap/<session id>/seg-*.pcapng,
        one interface per capture point, named as `pcap export` names them."""
        from ..pcap.export import point_name

        target = self._started()[0]
        assert self.cap is not None  # the evidence is the capture's
        if self.opt.stream_fd is not None:
            from .stream import StreamFile

            dnat: dict[tuple, str] = {}  # the published ports, once each (live EPBs: no comment)
            v4 = [a for a in target.addrs if ":" not in a]
            v6 = [a for a in target.addrs if ":" in a and not a.startswith("fe80:")]
            for hip, hport, proto, cport in target.ports:
                if not cport:
                    continue
                if v4 and ":" not in (hip or ""):
                    dnat.setdefault(
                        (proto, hport, cport, 4),
                        f"; DNAT {proto} {hip or '*'}:{hport} -> {v4[0]}:{cport}",
                    )
                if v6 and (hip in (None, "", "0.0.0.0") or ":" in hip):
                    host = F.ep(hip if hip and ":" in hip else "*", hport)
                    dnat.setdefault(
                        (proto, hport, cport, 6),
                        f"; DNAT {proto} {host} -> {F.ep(v6[0], cport)}",
                    )
            nat = "".join(dnat.values())
            return StreamFile(
                self.opt.stream_fd,
                [
                    Interface(
                        point_name(p.name, describe(p), target.name),
                        describe(p) + nat,
                        self.cap.snaplen,
                    )
                    for p in self.points
                ],
                keep=self._stream_keep,
                delay_ns=int(self.opt.stream_delay * 1e9),
            )
        directory = database_path(self.root).parent / "pcap" / str(self.session_id)
        directory.mkdir(parents=True, exist_ok=True)
        cap = self.opt.max_size
        if cap is None:
            st = os.statvfs(directory)
            cap = max(64 << 20, min(AUTO_MAX_SIZE, st.f_bavail * st.f_frsize - (1 << 30)))
        self.max_size = cap
        return SegmentFiles(
            directory,
            [
                Interface(
                    point_name(p.name, describe(p), target.name), describe(p), self.cap.snaplen
                )
                for p in self.points
            ],
            segment_bytes=self.opt.segment_size,
            max_bytes=cap,
        )

    # -- polling -----------------------------------------------------------------------
    def poll(self, timeout=None, final=False):
        """Read every source, correlate what has settled; returns output items. Sleeps
        `timeout` s first (default: the budget's poll interval, which follows the
        machine's load)."""
        if timeout is None:
            timeout = self.poll_interval
        if not final and timeout:
            time.sleep(timeout)
        corr = self._started()[1]
        for src in self.sources:
            got = src.read(final)
            if src is self.conntrack:
                for ev in got:
                    f = corr.conntrack(ev)
                    if f and ev["kind"] == "new":
                        self._follow_snat(f)
            elif isinstance(src, (NetfilterTrace, NftTrace)):
                corr.nf_pending.extend(got)
            elif isinstance(src, Drops):
                corr.drop_pending.extend(got)
            else:
                corr.ev_pending.extend(got)
        self.budget.refill(self.cap)
        cpu0 = time.thread_time()
        n = self._read_records()
        if self.evidence and self.sink:
            self.sink.segments(self.evidence.segments())
        cutoff = None if final else time.clock_gettime_ns(time.CLOCK_MONOTONIC) - F.SETTLE_NS
        settled = corr.settle(cutoff)
        self._settled_ns = cutoff
        items = self._output(settled)
        gone = corr.let_go()  # a long trace: idle flows past FLOWS_KEPT leave memory
        if gone and self.sink:
            self.sink.flows_done(gone)
        if final and self.sink:
            self.sink.flush()  # the last rows: the reader's work like any poll's
        spent = time.thread_time() - cpu0
        self.reader_cpu += spent + self._collect()
        self.budget.learn(
            spent,
            n,
            sum(len(j.captures) for j in settled.journeys) + len(settled.fast),
            whole=not (self.sink and self.sink.pending),
        )
        if corr.done:
            self.done = True
        if self.opt.duration and time.time_ns() - self.ready_ns >= self.opt.duration * 1e9:
            self.done = True
        return items

    def _collect(self):
        """With own_gc, a cycle collection every GC_EVERY_S of what the last GC_EVERY_S
        left (the survivors are frozen in turn: a long trace's flows and journeys are not
        walked again and again); returns its CPU seconds (the reader's, though not a
        record's: the budget does not learn it)."""
        if not self._gc_ns or time.monotonic_ns() - self._gc_ns < GC_EVERY_S * 10**9:
            return 0.0
        cpu0 = time.thread_time()
        gc.collect()
        gc.freeze()
        self._gc_ns = time.monotonic_ns()
        return time.thread_time() - cpu0

    def _read_records(self):
        from pyinspect.probes.packets import AREC

        assert self.cap is not None  # started
        corr = self._started()[1]
        got = self.cap.read_in_place(lambda buf, starts: corr.records_at(buf, starts, AREC))
        analysed = self.analysed
        for point, k in (got or {}).items():
            analysed[point] = analysed.get(point, 0) + k
        return sum(got.values()) if got else 0

    def _output(self, settled):
        """Live items (journeys kept whole, drops and events, by time) and store rows."""
        live = self.live
        assert live is not None  # started
        items = []
        if self.dns is not None:  # DNS in the packets: `dns` events like the embedded's
            settled.events += self.dns.packets(settled.journeys, self._stopped)
        if self.opt.live != "off":
            for j in settled.journeys:
                items += live.journey(j)
        items += [live.link(lp) for lp in settled.links]
        for f, d, n, _stored in settled.drops:
            item = live.drop(f, d, n)
            if item:
                items.append(item)
        me = os.getpid()
        settled.events = [e for e in settled.events if e["pid"] != me]  # attaching
        for ev in settled.events:
            item = live.event(ev)
            if item:
                items.append(item)
        if self.sink:
            locate = self.evidence.locate_many() if self.evidence else (lambda c, p: None)
            self.sink.settled(settled, locate)
            if self.opt.stream_fd is not None and self.opt.stream_delay:
                self._comment_stream(settled, locate)
        return sorted(items, key=lambda i: i.get("_ts", 0))

    def _comment_stream(self, settled, locate):
        """A live stream: the comments `pcap export` gives the indexed packets ("flow N:
        NAT"), on those packets the stream still holds back."""
        from .stream import StreamFile

        assert self.evidence is not None
        files = self.evidence.files
        assert isinstance(files, StreamFile)  # only a stream holds packets back
        for j in settled.journeys:
            f = j.flow
            if f.store_id is None:
                continue
            nat = f.nat_text()
            text = f"flow {f.store_id}: {nat}" if nat else f"flow {f.store_id}"
            for c in j.captures:
                loc = locate(c.cpu, c.pos)
                if loc is not None:
                    files.comment(loc[1], text)
        files.release(self._settled_ns)

    def _follow_snat(self, f):
        """Outbound MASQUERADEd flow: capture its uplink copy and trace its replies."""
        if "snat" not in f.nat or not f.reply:
            return
        c, r, d, s = f.reply
        if f.orig[1] != s and self.cap:
            self.cap.add_flow(c, r, s, f.proto)
        for src in (self.nftrace, self.nfttrace):
            if src is not None and src in self.sources:
                src.follow(f.proto, c, r, d, s)

    # -- stop --------------------------------------------------------------------------
    def stop(self):
        """Detach everything, flush the rest, write the summary; returns it (a dict)."""
        if self._stopped:
            return self.summary
        self._stopped = True
        counters = {}
        try:
            if self.cap:
                self.cap.stop()  # detach first: nothing new arrives
                if self.evidence:
                    self.evidence.stop()  # write what the buffers still hold
                counters = self.cap.counters()
                self.tail = self.poll(0, final=True)
            self._lost = {type(s).__name__: s.lost for s in self.sources}
        finally:
            self._teardown()
        self.summary = self._summary(counters)
        if self.store:
            sink = self.sink
            assert sink is not None  # made with the store
            if self.evidence:
                sink.segments(self.evidence.segments())
            sink.finish(self.corr.flows.flows.values() if self.corr else [], self.summary)
            if self.opt.pcap:
                self._write_pcap()
            self.store.close()
            self.store = None
        return self.summary

    def _write_pcap(self):
        """-w FILE: the session's packets, every capture point, in time order, with each
        flow's NAT as the packet comment (what `pcap export --session` writes)."""
        from ..pcap.export import export

        assert self.summary is not None  # stop() wrote it first
        try:
            export(self.store, session_id=self.session_id, out=str(self.opt.pcap))
        except PyinspectError as exc:
            self.summary["notes"].append(f"-w {self.opt.pcap}: not written: {exc}")
            self.summary["pcap"] = None

    def _summary(self, counters):
        from pyinspect.probes.packets import PointCounters

        per_point = {}
        total = PointCounters()
        for i, p in enumerate(self.points):
            c = counters.get(i) or PointCounters()
            for k in ("seen", "lost", "capped", "shed", "alost"):
                setattr(total, k, getattr(total, k) + getattr(c, k))
            per_point[f"{p.name} ({role(p)})"] = {
                "captured": c.captured,
                "seen": c.seen,
                "lost": c.lost,
                "capped": c.capped,
                "analysed": self.analysed.get(i, 0),
                "shed": c.shed,
                "analysis_lost": c.alost,
            }
        ev = self.evidence
        if ev and ev.capped_at:
            self.notes.append(
                f"pcap: the size cap ({size_text(self.max_size)}) was reached at "
                f"{time.strftime('%H:%M:%S', time.localtime(ev.capped_at / 1e9))}: later "
                f"packets are not in the files (counted as capped; raise it with --max-size)"
            )
        if ev and ev.error:
            self.notes.append(f"pcap: writing the segment files failed: {ev.error}")
        corr = self.corr or F.Correlator(0, 0)
        shown = [f for f in corr.flows.flows.values() if f.journeys or f.drops]
        gone = corr.gone  # flows a long trace let go of: counted, the first ones named
        nat = sorted({f.nat_text() for f in shown if f.nat_text()} | gone.nat)
        lost = self._lost
        return {
            "session_id": self.session_id,
            "container": self.target.name if self.target else self.ref,
            "duration_s": round((time.time_ns() - (self.ready_ns or self.started_ns)) / 1e9, 3),
            "flows": len(shown) + gone.flows,
            "connections": gone.headers + [f.header() for f in shown],
            "connections_not_listed": gone.flows - len(gone.headers),
            "traced_packets": corr.traced_packets,
            "netfilter_trace": self.nf_mode.text() if self.nf_mode else None,
            "neighbour_discovery": corr.link_packets,
            "packets_per_point": per_point,
            "nat": nat,
            "drops": gone.drops + [line for f in shown for line in f.drop_lines()],
            "lost": total.lost + total.capped,  # seen in the kernel, not in the files
            "pcap_files": {
                "segments": len(ev.files.segments) if ev else 0,
                "bytes": ev.files.total if ev else 0,
                "snaplen": self.cap.snaplen if self.cap else self.opt.snaplen,
                "buffer_per_cpu": self.ring_bytes,
            },
            "loss": {
                "capture": total.lost,
                "capped": total.capped,
                "shed": total.shed,
                "analysis_lost": total.alost,
                "drops": lost.get("Drops", 0),
                "conntrack_overruns": lost.get("Conntrack", 0),
                "trace_overruns": lost.get("NetfilterTrace", 0) + lost.get("NftTrace", 0),
                "dns_reports": lost.get("DnsLookups", 0),
            },
            "filtered_out": corr.filtered_out,
            "process_events": (self.sink.events_seen if self.sink else 0)
            - (self.dns.lookups if self.dns else 0),
            "dns_lookups": self.dns.lookups if self.dns else 0,
            "reader_budget": self.budget.describe(),
            "poll_interval_s": self.poll_interval,
            # learned apart: what a record adds, what a poll costs whatever it reads
            "reader_cost": {
                "per_record_us": round(self.budget.cost * 1e6, 1),
                "per_poll_ms": round(self.budget.poll_cost * 1e3, 2),
            },
            "reader_us_per_record": round(
                self.reader_cpu * 1e6 / max(1, sum(self.analysed.values())), 1
            ),
            "fast_path_packets": corr.fast_packets,
            "capture_hook": self.capture_hook,
            "notes": list(self.notes),
            "pcap": str(self.opt.pcap) if self.opt.pcap else None,
        }

    def _teardown(self):
        """Remove every kernel object this session made; safe to call twice."""
        if self._gc_ns:
            gc.enable()  # own_gc: the process's collector as it was
            self._gc_ns = 0
        if self.evidence:
            self.evidence.stop()
        if self.cap:
            self.cap.close()
            self.cap = None
        for src in reversed(self.sources):
            with contextlib.suppress(Exception):
                src.stop()
        if self._state_file:
            with contextlib.suppress(OSError):
                self._state_file.unlink()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
