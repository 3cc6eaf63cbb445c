"""A trace session: follow one container's packets through NAT, the bridge and its veth.

    s = TraceSession(root, "web", TraceOptions(duration=10))
    s.start()                   # resolve, attach, print-ready; s.ready is the ready line
    for item in s.poll(): ...   # {"type": flow|hop|drop|note, "flow": id, "text": ...}
    summary = s.stop()          # detach everything, store the session, close the pcapng

Run it in the container host's network namespace (where the bridge, the veth's host end
and the NAT rules live). Capture points: the uplinks (every non-bridge interface of this
namespace that is up, or `--via`), the bridge, the container's host-side veth and its
eth0 (attached inside the container's namespace). Sources: tc capture (probes.packets),
conntrack events (probes.conntrack), the netfilter trace (probes.nftrace) and kfree_skb
drops (probes.drops); each optional source degrades to a one-line note.

Packets are correlated after a short delay (`SETTLE_NS`) so the conntrack event and the
trace lines of a packet are in hand when it is placed into its flow.
"""

import collections
import contextlib
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import flows as F
from .config import database_path
from .errors import NotFoundError, PyinspectError, UnavailableError, UsageError
from .proc import pid_alive

from .trace.evidence import SEGMENT_BYTES, EvidenceWriter, Interface, SegmentFiles

SETTLE_NS = 250_000_000
WHOLE_SNAPLEN = 262144          # tcpdump's default: with -w the file keeps whole packets
HEADERS_SNAPLEN = 256           # without -w: every packet's headers, for pcap export
AUTO_MAX_SIZE = 4 << 30         # segment files of one trace, at most (and free disk - 1 GiB)
LIVE_PACKETS_PER_FLOW = 20      # live hop lines for the first N packets of each flow
POLL_INTERVAL = 0.1             # seconds between reads of the sources (SETTLE_NS is longer)
# ... while less than a core is idle: each poll costs ~1 ms of CPU whatever it reads, so
# under load 10 polls/s were half the reader's CPU time (docs/trace.md, "Measured")
POLL_INTERVAL_BUSY = 0.25
# Automatic budget: the reader's share of one core when the machine is busy, up to
# AUTO_CPU_SHARE_IDLE of idle CPU. Under load each ms the reader spends costs the traced
# traffic several times that (iperf3 here lost ~5% to 500 records/s, 1.5% of a core), so
# the busy share is small (docs/trace.md, "Measured").
AUTO_CPU_SHARE = 0.002
AUTO_CPU_SHARE_IDLE = 0.5
AUTO_MIN_RATE, AUTO_MAX_RATE = 100, 100000      # records/s bounds of the automatic budget
BUDGET_BURST_S = 1.0            # the budget saves up to this many seconds of its rate
MAX_DYNAMIC_RULES = 64
DROPS_PER_POLL = 50
RECENT_JOURNEYS = 4096
MAX_DROP_ROWS_PER_FLOW = 100    # stored drop rows per flow; all are counted
LIVE_DROPS_PER_CAUSE = 3
STATE_DIR = "trace"


@dataclass
class TraceOptions:
    port: int = None
    filter: str = None
    via: list = None
    snaplen: int = None       # None: whole packets with -w (tcpdump's 262144), else HEADERS
    duration: float = None
    count: int = None
    pcap: str = None
    live_per_flow: int = LIVE_PACKETS_PER_FLOW
    max_rate: int = None      # capture records/s the reader takes; None = auto; 0 = all
    events: bool = True                   # interleave the container's process events
    ring_mb: int = 16                     # evidence buffer per CPU
    max_size: int = None                  # bytes of segment files; None: automatic; 0: no cap
    segment_size: int = SEGMENT_BYTES


@dataclass
class TraceTarget:
    """The container as the tracer needs it."""
    name: str
    id: str
    netns_path: str
    netns: int
    addrs: list
    ports: list = field(default_factory=list)      # (host_ip or None, host_port, proto, ctr_port)
    source: str = ""
    pid: int = 0


def _mono_to_real():
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _self_netns():
    return os.stat("/proc/thread-self/ns/net").st_ino


# -- resolving the container -----------------------------------------------------------

def resolve(root, ref):
    """Find `ref` (name, id or id prefix; or a named netns) -> TraceTarget."""
    if not ref:
        raise UsageError("trace: --container is required")
    own = None
    try:
        from pyinspect.runtime import state
        for c in state.load_all(root):
            if ref in (c.name, c.id) or (len(ref) >= 4 and c.id.startswith(ref)):
                own = c
                break
    except Exception:   # runtime not importable or no state: fall back to discovery
        own = None
    if own is not None:
        if own.status != "running" or not own.pid:
            raise UsageError(f"trace: container {own.name} is not running ({own.status})",
                             f"pyinspect start {own.name}")
        net = own.network or {}
        path = f"/proc/{own.pid}/ns/net"
        ports = [(p.get("host_ip") or None, int(p["host_port"]), p.get("proto", "tcp"),
                  int(p["container_port"])) for p in net.get("ports") or []]
        addrs = [net["ip"]] if net.get("ip") else []
        return TraceTarget(own.name, own.id, path, os.stat(path).st_ino, addrs, ports,
                           "pyinspect", own.pid)
    found = None
    with contextlib.suppress(Exception):
        from pyinspect import discovery
        for d in discovery.containers(root):
            names = [d.name, d.id] + list((d.detail or {}).get("netns_names") or [])
            if ref in names or (len(ref) >= 4 and d.id.startswith(ref)):
                found = d
                break
    if found is not None and found.netns_path:
        return TraceTarget(found.name, found.id, found.netns_path,
                           os.stat(found.netns_path).st_ino, [], [], found.source, found.pid)
    path = f"/run/netns/{ref}"
    if "/" not in ref and os.path.exists(path):
        return TraceTarget(ref, f"netns:{os.stat(path).st_ino}", path, os.stat(path).st_ino,
                           [], [], "netns")
    raise NotFoundError(f"trace: no such container: {ref}",
                        "pyinspect ps -a lists pyinspect's; pyinspect map shows namespaces")


def _dnat_ports(addrs):
    """Published ports from DNAT rules (legacy and nft backends) pointing at `addrs`."""
    out = []
    for tool in ("iptables-legacy", "iptables-nft"):
        try:
            text = subprocess.run([tool, "-w", "-t", "nat", "-S"], capture_output=True,
                                  text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in text.splitlines():
            m = re.search(r"--to-destination (\d+\.\d+\.\d+\.\d+)(?::(\d+))?", line)
            if not m or m.group(1) not in addrs:
                continue
            dport = re.search(r"--dport (\d+)", line)
            if not dport:
                continue
            proto = re.search(r"-p (\w+)", line)
            dst = re.search(r"-d (\d+\.\d+\.\d+\.\d+)/32", line)
            hp = int(dport.group(1))
            entry = (dst.group(1) if dst else None, hp, proto.group(1) if proto else "tcp",
                     int(m.group(2)) if m.group(2) else hp)
            if entry not in out:
                out.append(entry)
    return out


def capture_points(target, via=None, rows=None):
    """CapturePoints for `target` from the veth map: uplinks, bridge, host veth, eth0."""
    from pyinspect.probes.packets import CapturePoint
    if rows is None:
        from pyinspect import vethmap
        rows = vethmap.build()
    here = _self_netns()
    mine = [r for r in rows if r["netns"] == here]
    inner = [r for r in rows if r["netns"] == target.netns and r["kind"] != "loopback"
             and r.get("ifname") != "lo"]
    if not inner:
        raise UnavailableError(f"trace: {target.name} has no network interfaces",
                               "is it running with --network none?")
    points = []
    host_veths = []
    for r in inner:
        v4 = [a.split("/")[0] for a in r.get("addrs") or [] if ":" not in a]
        for a in v4:
            if a not in target.addrs:
                target.addrs.append(a)
        if r.get("peer_netns") == here:
            host = next((h for h in mine if h["ifindex"] == r["peer_ifindex"]), None)
            if host:
                host_veths.append(host)
        points.append(CapturePoint(r["ifname"], r["ifindex"], target.netns_path, "all",
                                   f"{r['ifname']} in {target.name}", target.netns,
                                   r["ifname"]))
    if not host_veths:
        peers = {r.get("peer_netns_name") or r.get("peer_netns") for r in inner}
        raise UsageError(f"trace: {target.name}'s veth peer is not in this network namespace "
                         f"(it is in {', '.join(map(str, peers))})",
                         "run pyinspect trace in the namespace that holds the bridge")
    bridges = []
    for h in host_veths:
        points.append(CapturePoint(h["ifname"], h["ifindex"], None, "all+learn",
                                   f"host end of {target.name}'s veth", here, h["ifname"]))
        if h.get("master_ifindex"):
            br = next((b for b in mine if b["ifindex"] == h["master_ifindex"]), None)
            if br and br not in bridges:
                bridges.append(br)
    for br in bridges:
        points.append(CapturePoint(br["ifname"], br["ifindex"], None, "filtered",
                                   "bridge", here, br["ifname"]))
    taken = {p.ifindex for p in points if p.netns is None}
    if via:
        names = {r["ifname"]: r for r in mine}
        for name in via:
            if name not in names:
                raise NotFoundError(f"trace: --via {name}: no such interface here",
                                    f"interfaces: {', '.join(sorted(names))}")
            r = names[name]
            if r["ifindex"] not in taken:
                points.append(CapturePoint(name, r["ifindex"], None, "filtered", "uplink",
                                           here, name))
    else:
        for r in mine:
            if r["ifindex"] in taken or r.get("kind") in ("bridge", "loopback") or \
                    r.get("ifname") == "lo" or r.get("master_ifindex") or not r.get("up"):
                continue
            if r.get("kind") == "veth" and r.get("peer_netns") == target.netns:
                continue
            points.append(CapturePoint(r["ifname"], r["ifindex"], None, "filtered", "uplink",
                                       here, r["ifname"]))
    order = {"uplink": 0, "bridge": 1}
    points.sort(key=lambda p: (order.get(p.description, 2 if p.netns is None else 3)))
    return points


def _role(p):
    if p.netns is not None:
        return "container"
    if p.description in ("uplink", "bridge"):
        return p.description
    return "veth"


def _describe(p):
    role = _role(p)
    return role if p.description == role else f"{role}: {p.description}"


# -- crash recovery --------------------------------------------------------------------

def _state_dir(root):
    d = Path(root) / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def cleanup_stale(root):
    """Undo what killed trace sessions left: tc filters, TRACE rules, the nf_log binding.

    Reads `<root>/trace/<pid>.json` of dead pids; also sweeps this namespace for
    pyinspect tc filters and TRACE rules whose owner is gone. Returns what was removed.
    """
    from pyinspect.probes import nftrace, packets
    removed = []
    d = Path(root) / STATE_DIR
    paths = {None}
    if d.is_dir():
        for f in d.glob("*.json"):
            if f.name.endswith(".nflog.json"):
                continue
            try:
                pid = int(f.stem)
                st = json.loads(f.read_text())
            except (ValueError, OSError):
                continue
            if pid == os.getpid() or pid_alive(pid):
                continue
            for p in st.get("points", []):
                path = p.get("netns")
                if path and os.path.exists(path):
                    paths.add(path)
            removed += [f"tc filter: {r}" for r in packets.remove_stale_filters(sorted(
                paths, key=lambda x: x or ""))]
            for p in st.get("points", []):
                path = p.get("netns")
                if p.get("added_clsact") and (path is None or os.path.exists(path)) and \
                        packets.remove_clsact_if_empty(path, p["ifindex"]):
                    removed.append(f"clsact qdisc on {p.get('name')}")
            nfl = d / f"{pid}.nflog.json"
            if nfl.exists() and nftrace.restore_stale_binding(str(nfl)):
                removed.append(f"nf_log binding restored (pid {pid})")
            for netns in {st.get("rules_netns")}:
                removed += [f"TRACE rule: {r}" for r in nftrace.remove_stale_rules(netns)]
            with contextlib.suppress(OSError):
                f.unlink()
    removed += [f"tc filter: {r}" for r in packets.remove_stale_filters(sorted(
        paths, key=lambda x: x or ""))]
    removed += [f"TRACE rule: {r}" for r in nftrace.remove_stale_rules(None)]
    removed += [f"nft table: {t}" for t in nftrace.remove_stale_nft_tables(None)]
    return removed


# -- the session -----------------------------------------------------------------------

class TraceSession:
    """One trace of one container (see the module docstring)."""

    def __init__(self, root, container_ref, options=None):
        self.root = Path(root)
        self.ref = container_ref
        self.opt = options or TraceOptions()
        self.target = None
        self.points = []
        self.cap = None
        self.ct = None
        self.drops = None
        self.nflog = None
        self.binding = None
        self.rules = None
        self.rulebook = None
        self.nftmon = None
        self.nfttable = None
        self.procs = None
        self.links = None
        self.cgroups = None
        self.ev_pending = []
        self.events_seen = 0
        self.evidence = None        # EvidenceWriter: every packet into segment files
        self.segment_ids = {}       # segment number -> store id
        self.segments_done = set()
        self.store = None
        self.session_id = None
        self.notes = []
        self.flows = F.FlowTable()
        self.pending = []           # (ts_ns, point, dir, len, data, Pkt, cpu, stream_pos)
        self.nf_pending = []        # hop dicts
        self.drop_pending = []
        self.journeys = {}          # flow id -> [Journey]
        self.captured = {}          # point index -> records read
        self.filtered_out = 0
        self.traced_packets = 0
        self.drop_rows = []
        self.dynamic_rules = set()
        self.started_ns = 0
        self.offset = 0
        self.ready = ""
        self.done = False
        self.pfilter = None
        self._state_file = None
        self._stopped = False
        self._budget_t = None
        self.recent = collections.OrderedDict()
        self.fast = {}              # 5-tuple bytes -> Flow (flows past their live lines)
        self._fast_by_flow = {}
        self.fastq = []             # (ts, point, dir, len, cpu, pos, Flow)
        self.fast_packets = 0
        self.reader_cpu = 0.0       # CPU seconds of the reader's thread in polls
        self._cost = 40e-6          # CPU seconds per capture record, learned while running
        self._cpu_prev = None
        self._idle = None           # idle cores between the last two polls (None: unknown)
        self._ncpu = os.cpu_count() or 1
        self._share = 0.0

    # -- start -------------------------------------------------------------------------
    def start(self):
        from pyinspect.probes import packets as P
        if self.opt.snaplen is not None and self.opt.snaplen < 0:
            raise UsageError(f"trace: bad --snaplen {self.opt.snaplen}: must be >= 0")
        if self.opt.filter:
            self.pfilter = P.BpfFilter(self.opt.filter, P.EV_MAXCAP)
        if self.opt.snaplen is None:
            self.opt.snaplen = WHOLE_SNAPLEN if self.opt.pcap else HEADERS_SNAPLEN
        cleaned = cleanup_stale(self.root)
        if cleaned:
            self.notes.append(f"removed leftovers of a killed trace: {'; '.join(cleaned)}")
        self.target = resolve(self.root, self.ref)
        self.points = capture_points(self.target, self.opt.via)
        t = self.target
        t.ports = [p for p in t.ports] + [p for p in _dnat_ports(t.addrs) if p not in t.ports]
        if self.opt.port:
            t.ports = [p for p in t.ports if p[3] == self.opt.port or p[1] == self.opt.port]
        only = []
        if self.opt.port:
            only = sorted({self.opt.port} | {p[1] for p in t.ports})
        tgt = P.Target(addrs=list(t.addrs), ports=[(p[0], p[1], p[2]) for p in t.ports],
                       only_ports=only,
                       container_ports=sorted({(p[3], p[2]) for p in t.ports if p[3]}))
        self.started_ns = time.time_ns()
        self.offset = _mono_to_real()
        self._state_file = _state_dir(self.root) / f"{os.getpid()}.json"
        self._write_state()
        try:
            self.cap = P.PacketCapture(self.points, tgt, self.opt.snaplen, self.opt.ring_mb)
            self._open_outputs()         # a bad -w path fails here, before any attach
            self._refill_budget()            # budgeted from the first packet, not first poll
            self.cap.start()
            self.evidence = EvidenceWriter(self.cap, self._segment_files()).start()
            self.capture_hook = self.cap.attach_kind
            if self.cap.attach_note:
                self.notes.append(f"capture: {self.cap.attach_note}")
            self._write_state(points=[{"netns": p.netns, "ifindex": p.ifindex, "name": p.name,
                                       "added_clsact": added}
                                      for p, added in self.cap.attached])
            self._start_optional(tgt)
        except BaseException as exc:
            self._teardown()
            self._fail(exc)
            raise
        self._refill_budget()     # start-up took seconds: ready for a burst from the first packet
        self.ready_ns = time.time_ns()       # --duration counts from here
        roles = ", ".join(f"{p.name} ({_role(p)})" for p in self.points)
        self.ready = (f"tracing {t.name} ({', '.join(t.addrs) or 'no IPv4'}) on {roles}; "
                      f"Ctrl-C to stop")
        return self

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
        st = {"pid": os.getpid(), "container": self.target.name, "rules_netns": None,
              "points": [{"netns": p.netns, "ifindex": p.ifindex, "name": p.name}
                         for p in self.points]}
        st.update(extra)
        self._state_file.write_text(json.dumps(st))

    def _start_optional(self, tgt):
        """Start every source besides the capture; each one that fails is a one-line note."""
        from pyinspect.probes import nftrace
        for name, start, undo in (
                ("conntrack", self._start_conntrack, self._undo_conntrack),
                ("netfilter trace", lambda: self._start_nftrace(tgt), self._undo_nftrace),
                ("nftables trace", lambda: self._start_nft(tgt), self._undo_nft),
                ("process events", self._start_events, self._undo_events),
                ("drops", lambda: self._start_drops(tgt), self._undo_drops)):
            if name == "nftables trace" and not nftrace.has_nft_chains():
                continue                 # no nf_tables chains here: nothing to trace there
            if name == "process events" and not self.opt.events:
                continue
            try:
                start()
            except Exception as exc:     # noqa: BLE001 - any failure degrades to a note
                with contextlib.suppress(Exception):
                    undo()
                why = str(exc) if isinstance(exc, PyinspectError) else \
                    f"{type(exc).__name__}: {exc}"
                self.notes.append(f"{name}: unavailable: {why}")

    def _start_conntrack(self):
        from pyinspect.probes import conntrack
        self.ct = conntrack.ConntrackEvents().start()
        if not conntrack.events_enabled():
            self.notes.append("conntrack: net.netfilter.nf_conntrack_events is 0 here: "
                              "no NAT tuples from conntrack")
        for ev in self.ct.dump():
            if self._ours(ev):
                self.flows.conntrack(ev)

    def _undo_conntrack(self):
        if self.ct:
            self.ct.stop()
        self.ct = None

    def _start_nftrace(self, tgt):
        from pyinspect.probes import nftrace
        self.binding = nftrace.LoggerBinding(
            None, str(_state_dir(self.root) / f"{os.getpid()}.nflog.json"))
        self.binding.bind()
        self.nflog = nftrace.NflogReader().start()
        self.rules = nftrace.TraceRules()
        self.rules.add_many(nftrace.trace_rule_specs(tgt.addrs, tgt.ports))
        self.rulebook = nftrace.RuleBook()

    def _undo_nftrace(self):
        if self.rules:
            self.rules.remove()
        if self.nflog:
            self.nflog.stop()
        if self.binding:
            self.binding.restore()
        self.rules = self.nflog = self.binding = None

    def _start_nft(self, tgt):
        # nf_tables chains (iptables-nft, nft) are traced through nftrace events
        from pyinspect.probes import nftrace
        self.nftmon = nftrace.NftMonitor().start()
        self.nfttable = nftrace.NftTraceTable()
        self.nfttable.create(nftrace.trace_rule_specs(tgt.addrs, tgt.ports))

    def _undo_nft(self):
        if self.nftmon:
            self.nftmon.stop()
        if self.nfttable:
            self.nfttable.remove()
        self.nftmon = self.nfttable = None

    def _start_events(self):
        from pyinspect.probes.process import ProcessProbe
        # fork/exec/exit/oom only: enabling any syscalls:* tracepoint sends every syscall of
        # every task through the tracing slow path (measured -2% on a send() flood)
        tps = {k: v for k, v in ProcessProbe.TRACEPOINTS.items()
               if not k.startswith("syscalls:")}
        self.procs = ProcessProbe(tracepoints=tps).start({"namespaces": [self.target.netns]})
        self.notes += list(self.procs.messages)
        # link changes of the capture points and inside the container (rtnetlink), and the
        # container's cgroup events: each optional, a note when it cannot start
        from pyinspect.probes.cgroups import CgroupProbe
        from pyinspect.probes.links import LinkProbe
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

    def _undo_events(self):
        for probe in (self.procs, self.links, self.cgroups):
            if probe:
                probe.stop()
        self.procs = self.links = self.cgroups = None

    def _other_events(self):
        """Link events of our capture points or the container's netns; the container's
        cgroup events (its cgroup path holds its id)."""
        out = []
        if self.links:
            names = {p.name for p in self.points if p.netns is None}
            out += [e for e in self.links.events(0)
                    if e.get("netns") == self.target.netns or e.get("ifname") in names]
        if self.cgroups:
            out += [e for e in self.cgroups.events(0)
                    if self.target.id in ((e.get("detail") or {}).get("path") or "")]
        return out

    def _start_drops(self, tgt):
        from pyinspect.probes import drops
        netns = {p.netns_inode for p in self.points} | {self.target.netns}
        self.drops = drops.DropWatch(tgt, netns).start()

    def _undo_drops(self):
        if self.drops:
            self.drops.stop()
        self.drops = None

    def _ours(self, ev):
        addrs = set(self.target.addrs)
        ports = {(p[1], p[2]) for p in self.target.ports}
        o, r = ev["orig"], ev.get("reply") or (None,) * 4
        if o[0] in addrs or o[2] in addrs or r[0] in addrs or r[2] in addrs:
            return True
        return (o[3], ev["proto"]) in ports

    def _open_outputs(self):
        from .store import Store
        if self.opt.pcap:
            out = Path(self.opt.pcap)
            parent = out.parent if str(out.parent) else Path(".")
            if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
                raise UsageError(f"trace: cannot write {self.opt.pcap}: "
                                 f"{'a directory' if out.is_dir() else 'no writable directory'}",
                                 "give -w a path in a writable directory")
        self.store = Store(database_path(self.root))
        self.session_id, self.point_ids = self.store.begin_trace(
            container_id=self.target.id, container_name=self.target.name,
            started_ns=self.started_ns, filter=self.opt.filter or "",
            snaplen=self.cap.snaplen, pcap_path=str(self.opt.pcap or ""), pid=os.getpid(),
            points=[{"name": p.name, "description": _describe(p), "ifindex": p.ifindex,
                     "netns": p.netns_inode, "linktype": 1} for p in self.points])

    def _segment_files(self):
        """Where this session's evidence goes: <state root>/pcap/<session id>/seg-*.pcapng,
        one interface per capture point, named as `pcap export` names them."""
        from .pcap_export import point_name
        directory = database_path(self.root).parent / "pcap" / str(self.session_id)
        directory.mkdir(parents=True, exist_ok=True)
        cap = self.opt.max_size
        if cap is None:
            st = os.statvfs(directory)
            cap = max(64 << 20, min(AUTO_MAX_SIZE, st.f_bavail * st.f_frsize - (1 << 30)))
        self.max_size = cap
        return SegmentFiles(
            directory,
            [Interface(point_name(p.name, _describe(p), self.target.name), _describe(p),
                       self.cap.snaplen) for p in self.points],
            segment_bytes=self.opt.segment_size, max_bytes=cap)

    def _sync_segments(self):
        """Record new segment files, and finished ones, in the store (the writer thread
        never touches SQLite: its connection belongs to this thread)."""
        if not self.evidence or not self.store:
            return
        for seg in self.evidence.segments():
            if seg.seq not in self.segment_ids:
                self.segment_ids[seg.seq] = self.store.add_segment(
                    self.session_id, seg.seq, seg.path, seg.started_ns)
            if seg.ended_ns and seg.seq not in self.segments_done:
                self.segments_done.add(seg.seq)
                self.store.finish_segment(self.segment_ids[seg.seq], seg.size, seg.ended_ns)

    # -- polling -----------------------------------------------------------------------
    def poll(self, timeout=None, final=False):
        """Read every source, correlate what has settled; returns output items. Sleeps
        `timeout` s first (default: `poll_interval`, which follows the machine's load)."""
        from pyinspect.probes import nftrace, packets as P
        if timeout is None:
            timeout = self.poll_interval
        if not final and timeout:
            time.sleep(timeout)
        items = []
        if self.ct:
            for ev in self.ct.read():
                if self._ours(ev):
                    f = self.flows.conntrack(ev)
                    if f and ev["kind"] in ("new", "destroy"):
                        self._forget_fast(f)     # a new connection may reuse its tuples
                    if f and ev["kind"] == "new":
                        self._follow_snat(f)
        if self.nflog:
            for rec in self.nflog.read():
                hop = nftrace.parse_trace(rec, self.rulebook)
                if hop and not hop["ours"]:      # our own TRACE rule is not part of the path
                    hop["pkt"] = F.parse_ip(hop.pop("payload", b""))
                    self.nf_pending.append(hop)
        if self.nftmon:
            for hop in self.nftmon.read():
                p = hop.pop("nft_packet", None)
                if p and p[1] and p[3]:
                    hop["pkt"] = F.Pkt(p[0], p[1], p[2], p[3], p[4], p[5] or 0, 0, 0, p[6] or 0)
                    hop["loose_ident"] = True
                self.nf_pending.append(hop)
        if self.drops:
            # bounded like the capture: a drop storm is counted, not all decoded
            self.drop_pending.extend(self.drops.read(None if final else DROPS_PER_POLL))
        if self.procs:
            self.ev_pending.extend(self.procs.events(0))
            self.ev_pending.extend(self._other_events())
        self._refill_budget()
        cpu0 = time.thread_time()
        n = self._read_records(P)
        self._sync_segments()
        cutoff = None if final else time.clock_gettime_ns(time.CLOCK_MONOTONIC) - SETTLE_NS
        items += self._settle(cutoff)
        spent = time.thread_time() - cpu0
        self.reader_cpu += spent
        if n >= 50:      # learn what one record costs this reader, for the automatic budget
            self._cost = 0.8 * self._cost + 0.2 * spent / n
        if self.opt.duration and time.time_ns() - self.ready_ns >= self.opt.duration * 1e9:
            self.done = True
        if self.opt.count and self.traced_packets >= self.opt.count:
            self.done = True
        return items

    def _read_records(self, P):
        """Analysis records -> pending. A packet of a flow whose live lines are done (and
        that opens, closes or resets nothing) takes the fast path: its 5-tuple bytes find
        the flow in `fast`, and it is only counted and indexed; the rest are parsed and
        grouped into journeys when they settle."""
        unpack = P.AREC.unpack_from
        hdr = P.AREC.size
        off = self.offset
        frame = F.parse_frame
        captured = self.captured
        fast = self.fast
        fastq = self.fastq
        pending = self.pending
        n = 0
        for raw in self.cap.read():
            ts, pos, ln, caplen, cpu, point, d = unpack(raw, 0)
            captured[point] = captured.get(point, 0) + 1
            n += 1
            data = bytes(raw[hdr:hdr + caplen])
            if fast:
                key = _fast_key(data)
                f = fast.get(key) if key else None
                if f is not None:
                    fastq.append((ts - off, point, d, ln, cpu, pos, f))
                    continue
            pending.append((ts - off, point, "out" if d else "in", ln, data, frame(data),
                            cpu, pos))
        return n

    def _settle_fast(self, cutoff):
        """Count and index the fast-path packets that have settled."""
        if not self.fastq:
            return
        if cutoff is None:
            ready, self.fastq = self.fastq, []
        else:
            ready = [q for q in self.fastq if q[0] < cutoff]
            self.fastq = [q for q in self.fastq if q[0] >= cutoff]
        if not ready or not self.store:
            return
        locate = self.evidence.locate_many() if self.evidence else (lambda cpu, pos: None)
        seg_ids, pids, sid, off = self.segment_ids, self.point_ids, self.session_id, self.offset
        rows = []
        for ts, point, d, ln, cpu, pos, f in ready:
            f.packets += 1
            if ts + off > f.last_ns:
                f.last_ns = ts + off
            loc = locate(cpu, pos)
            if loc is not None and loc[0] in seg_ids:
                rows.append((sid, seg_ids[loc[0]], loc[1], ts + off, pids[point], f.store_id,
                             "out" if d else "in", ln))
        self.fast_packets += len(ready)
        if rows:
            self.store.add_index(rows)

    def _learn_fast(self, j):
        """After its live lines, a flow's packets take the fast path (not with --count,
        which counts packets one by one)."""
        f = j.flow
        if self.opt.count or f.journeys < self.opt.live_per_flow or f.store_id is None:
            return
        keys = self._fast_by_flow.setdefault(f.id, set())
        for c in j.captures:
            key = _fast_key(c["data"])
            if key and key not in keys:
                keys.add(key)
                self.fast[key] = f

    def _forget_fast(self, f):
        for key in self._fast_by_flow.pop(f.id, ()):
            self.fast.pop(key, None)

    @property
    def poll_interval(self):
        """Seconds between polls, from the machine's idle CPU at the last poll."""
        busy = self._idle is not None and self._idle < min(1.0, self._ncpu / 2)
        return POLL_INTERVAL_BUSY if busy else POLL_INTERVAL

    def _refill_budget(self):
        """Give the kernel the records the reader may take until the next poll (and note
        the machine's idle CPU, which sets that and the poll interval)."""
        idle = self._idle_cores()
        if idle is not None:
            self._idle = idle
        rate = self.opt.max_rate if self.opt.max_rate is not None else self._auto_rate()
        if rate:
            now = time.monotonic()
            dt = now - self._budget_t if self._budget_t else 0.1
            self._budget_t = now
            # a token bucket: a short connection's ~15 packets at ~4 points arrive within
            # a millisecond, more than one poll's share of a low rate
            burst = rate * BUDGET_BURST_S
            self.cap.set_budget(min(rate * dt, burst), burst=burst)

    def _auto_rate(self):
        """Records/s the reader may take: what its CPU share can process, where the share
        follows the machine's idle CPU (AUTO_CPU_SHARE when busy, more when idle), so the
        traced traffic keeps the cores it is using."""
        share = AUTO_CPU_SHARE
        idle = self._idle
        if idle is not None:   # only a whole idle core beyond the first is taken, by half
            share = min(AUTO_CPU_SHARE_IDLE, max(AUTO_CPU_SHARE, 0.5 * (idle - 1.0)))
        self._share = share
        return int(min(AUTO_MAX_RATE, max(AUTO_MIN_RATE, share / self._cost)))

    def _idle_cores(self):
        """Idle CPUs (0..ncpu) since the last call, from /proc/stat; None the first time."""
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle, total = fields[3] + fields[4], sum(fields[:8])
        prev, self._cpu_prev = self._cpu_prev, (idle, total)
        if prev is None or total <= prev[1]:
            return None
        return (idle - prev[0]) / (total - prev[1]) * self._ncpu

    def _follow_snat(self, f):
        """Outbound MASQUERADEd flow: capture its uplink copy and trace its replies."""
        if "snat" not in f.nat or not f.reply:
            return
        c, r, d, s = f.reply
        if f.orig[1] != s and self.cap:
            self.cap.add_flow(c, r, s, f.proto)
        key = (f.proto, c, r, s)
        if self.rules and key not in self.dynamic_rules and \
                len(self.dynamic_rules) < MAX_DYNAMIC_RULES and f.proto in ("tcp", "udp"):
            self.dynamic_rules.add(key)
            with contextlib.suppress(PyinspectError):
                self.rules.add(["-p", f.proto, "-s", c, "--sport", str(r), "-d", d,
                                "--dport", str(s)])

    def _settle(self, cutoff):
        """Group settled captures into journeys; attach trace lines; emit output items."""
        if cutoff is None:
            ready, self.pending = self.pending, []
        else:
            ready = [p for p in self.pending if p[0] < cutoff]
            if not ready:
                self._settle_fast(cutoff)
                return self._in_time_order(self._settle_drops(cutoff) +
                                           self._settle_events(cutoff))
            self.pending = [p for p in self.pending if p[0] >= cutoff]
        ready.sort(key=lambda p: p[0])
        journeys = {}
        order = []
        loose = []
        for rec in ready:
            ts, point, d, ln, data, pkt, cpu, pos = rec
            if pkt is None:
                loose.append(rec)
                continue
            flow, direction, _stage = self.flows.for_packet(pkt, ts + self.offset)
            key = (flow.id, direction, pkt.ident)
            j = journeys.get(key)
            if j is None:
                j = F.Journey(flow, direction, pkt.ident, first_ns=ts + self.offset)
                journeys[key] = j
                order.append(j)
            j.captures.append({"ts_ns": ts + self.offset, "point": point, "dir": d, "len": ln,
                               "data": data, "pkt": pkt, "cpu": cpu, "pos": pos})
        # netfilter trace lines: attach to the journey of the same packet
        nf_keep = []
        late_hops = []
        by_id = None
        now = time.time_ns()
        for hop in self.nf_pending:
            pk = hop.get("pkt")
            placed = False
            if pk:
                hit = self.flows.lookup(pk.tuple)
                if hit and hop.get("loose_ident"):       # nft traces: ip id + length only
                    if by_id is None:
                        by_id = {(k[0], k[1], k[2][0], k[2][3]): v for k, v in journeys.items()}
                    j = by_id.get((hit[0].id, hit[1], pk.ipid, pk.iplen))
                elif hit:
                    j = journeys.get((hit[0].id, hit[1], pk.ident))
                else:
                    j = None
                if hit:
                    if j is not None:
                        self._nf_into(j, hop)
                        placed = True
            if not placed and cutoff is not None and now - hop["ts_ns"] < 2 * SETTLE_NS:
                nf_keep.append(hop)
            elif not placed and pk:
                late = self._recent_journey(pk, hop)
                if late is not None:
                    late_hops.append((late, hop))    # its packet was already shown: store it
                    continue
                # a packet the trace saw but no capture point did (e.g. dropped before
                # leaving the host): it still belongs to its flow
                j = self._orphan_journey(hop, journeys, order)
                if j:
                    self._nf_into(j, hop)
        self.nf_pending = nf_keep
        items = []
        if self.pfilter:
            for j in order:
                if any(self.pfilter.match(c["data"], c["len"]) for c in j.captures):
                    j.flow.matched = True
            for j in order:
                if not j.flow.matched:
                    self.filtered_out += len(j.captures)
            order = [j for j in order if j.flow.matched]
        if self.opt.count:
            room = max(0, self.opt.count - self.traced_packets)
            if len(order) > room:
                order = order[:room]          # --count: nothing past the Nth packet
                self.done = True
        for j in order:
            items += self._emit(j)
        items += self._settle_drops(cutoff)
        self._write_rows(order, loose, late_hops)
        for j in order:
            self._remember(j)
            self._learn_fast(j)
        self._settle_fast(cutoff)
        return self._in_time_order(items + self._settle_events(cutoff))

    def _remember(self, j):
        """Keep recent journeys so a trace line that arrives after its packet was settled
        still lands on it (in the store)."""
        key = (j.flow.id, j.direction, j.ident)
        self.recent[key] = j
        if len(self.recent) > RECENT_JOURNEYS:
            self.recent.popitem(last=False)

    def _recent_journey(self, pk, hop):
        hit = self.flows.lookup(pk.tuple)
        if not hit:
            return None
        if hop.get("loose_ident"):
            for (fid, d, ident), j in reversed(self.recent.items()):
                if fid == hit[0].id and d == hit[1] and ident[0] == pk.ipid and \
                        ident[3] == pk.iplen:
                    return j
            return None
        return self.recent.get((hit[0].id, hit[1], pk.ident))

    @staticmethod
    def _in_time_order(items):
        """Journeys (kept whole), drops and process events by time."""
        return sorted(items, key=lambda i: i.get("_ts", 0))

    def _nf_into(self, j, hop):
        j.nf.append(hop)
        v = hop.get("verdict", "")
        if v.startswith("DNAT") or v.startswith("SNAT") or v.startswith("MASQUERADE"):
            if j.flow.nat_rule is None:
                j.flow.nat_rule = hop
            if not j.flow.reply and hop.get("pkt") and v.startswith("DNAT"):
                to = v.split()[1] if len(v.split()) > 1 else ""
                m = re.match(r"(\d+\.\d+\.\d+\.\d+)(?::(\d+))?", to)
                if m:
                    a, p, b, q = j.flow.orig
                    j.flow.reply = (m.group(1), int(m.group(2) or q), a, p)
                    j.flow.nat = "dnat"
                    self.flows._index(j.flow)

    def _orphan_journey(self, hop, journeys, order):
        pkt = hop["pkt"]
        flow, direction, _ = self.flows.for_packet(pkt, hop["ts_ns"])
        key = (flow.id, direction, pkt.ident)
        j = journeys.get(key)
        if j is None:
            j = F.Journey(flow, direction, pkt.ident, first_ns=hop["ts_ns"])
            journeys[key] = j
            order.append(j)
        return j

    def _settle_events(self, cutoff):
        """The container's process events (fork, exec, exit...) that have settled."""
        if not self.ev_pending:
            return []
        limit = None if cutoff is None else cutoff + self.offset
        ready = [e for e in self.ev_pending if limit is None or e["ts_ns"] < limit]
        if not ready:
            return []
        self.ev_pending = [e for e in self.ev_pending if limit is not None and
                           e["ts_ns"] >= limit]
        items = []
        rows = []
        me = os.getpid()
        for ev in ready:
            if ev["pid"] == me:
                continue                 # this trace entering the namespace to attach
            self.events_seen += 1
            rows.append(dict(ev, session_id=self.session_id, container_id=self.target.id,
                             container_name=self.target.name))
            if ev["kind"] == "setns":
                continue                 # tools looking into the namespace: stored only
            d = ev.get("detail") or {}
            what = {"exec": " ".join(d.get("argv") or [d.get("filename", "")]),
                    "exit": f"code {d.get('code')}" if "code" in d else
                    (f"signal {d.get('signal')}" if "signal" in d else ""),
                    "fork": f"from {d.get('parent_pid')}"}.get(ev["kind"], "")
            if ev["kind"].startswith("link_"):
                what = f"{ev.get('ifname')} {json.dumps(d, sort_keys=True)[:80]}"
            elif ev["kind"].startswith("cgroup_"):
                what = f"{d.get('controllers') or 'v2'}:{d.get('path')}"
            text = (f"[{self.target.name}] {ev['kind']:<5} pid {ev['pid']} ({ev['comm']}) "
                    f"{what}").rstrip()
            items.append({"type": "event", "_ts": ev["ts_ns"], "ts_ns": ev["ts_ns"],
                          "kind": ev["kind"], "pid": ev["pid"], "comm": ev["comm"],
                          "text": text})
        if self.store and rows:
            self.store.insert_events(rows)
        return items

    def _settle_drops(self, cutoff):
        items = []
        keep = []
        for d in self.drop_pending:
            if cutoff is not None and d["ts_ns"] >= cutoff:
                keep.append(d)
                continue
            if d["reason"] in F.BENIGN_DROP_REASONS:
                continue
            tup = (d["proto"], d["src"], d["sport"], d["dst"], d["dport"])
            hit = self.flows.lookup(tup)
            if hit is None:
                pkt = F.Pkt(d["proto"], d["src"], d["sport"], d["dst"], d["dport"], 0, 0, 0, 0)
                hit = self.flows.for_packet(pkt, d["ts_ns"] + self.offset)
            flow = hit[0]
            if self.pfilter and not flow.matched:
                continue
            text = F.explain_drop(d, flow, self.journeys.get(flow.id, []), self.target.name,
                                  self.target.netns)
            d = dict(d, ts_ns=d["ts_ns"] + self.offset, explanation=text)
            n = flow.drop_counts.get(text, 0) + 1
            flow.drop_counts[text] = n
            if len(flow.drops) < MAX_DROP_ROWS_PER_FLOW:     # the rest are counted
                flow.drops.append(d)
                self.drop_rows.append((flow, d))
            if n <= LIVE_DROPS_PER_CAUSE:
                items.append({"type": "drop", "flow": flow.id, "_ts": d["ts_ns"],
                              "text": f"[{flow.id}] DROP {text} (kfree_skb reason "
                                      f"{d['reason']} at {d['location']})",
                              "reason": d["reason"], "explanation": text})
        self.drop_pending = keep
        if items:
            self._write_drops()
        return items

    # -- output ------------------------------------------------------------------------
    def _emit(self, j):
        f = j.flow
        items = []
        self.journeys.setdefault(f.id, []).append(j)
        if len(self.journeys[f.id]) > 64:
            self.journeys[f.id] = self.journeys[f.id][-64:]
        if not f.journeys:
            items.append({"type": "flow", "flow": f.id, "_ts": j.first_ns,
                          "text": f"[{f.id}] {f.header()}",
                          "proto": f.proto, "orig": f.orig, "reply": f.reply, "nat": f.nat})
        f.journeys += 1
        f.packets += len(j.captures)
        f.last_ns = max(f.last_ns, j.first_ns)
        self.traced_packets += 1
        show = f.journeys <= self.opt.live_per_flow
        if not show:
            return items
        # the whole rule path for the first packet each way; later only what is not a
        # plain ACCEPT (NAT, drops, rejects, jumps)
        full_path = j.direction not in f.dirs_shown
        if j.nf:
            f.dirs_shown.add(j.direction)
        host_points = {i for i, p in enumerate(self.points) if p.netns is None}
        t0 = None
        for kind, h in j.hops(host_points):
            if kind == "capture":
                t0 = h["ts_ns"] if t0 is None else t0
                p = self.points[h["point"]]
                pk = h["pkt"]
                rel = (h["ts_ns"] - t0) / 1000
                text = (f"[{f.id}] {rel:+9.1f}us  {p.name:<8} {_role(p):<9} {h['dir']:<3} "
                        f"{pk.src}:{pk.sport} -> {pk.dst}:{pk.dport} "
                        f"{F.tcp_flag_text(pk.flags)} len {h['len']}").rstrip()
                item = {"type": "hop", "flow": f.id, "hop": "capture", "ts_ns": h["ts_ns"],
                        "_ts": j.first_ns,
                        "point": p.name, "role": _role(p), "dir": h["dir"], "src": pk.src,
                        "sport": pk.sport, "dst": pk.dst, "dport": pk.dport, "len": h["len"],
                        "text": text}
            else:
                where = f"{h['table']}:{h['chain']}"
                num = ""
                if h["kind"] == "rule" or not h["rule_text"].startswith("policy"):
                    num = f" rule {h['rule_num']}" if h["rule_num"] else " rule"
                rule = h["rule_text"] if h["kind"] == "rule" or num else h["rule_text"]
                text = f"[{f.id}] {'':>11}  netfilter {where}{num} -> {h['verdict']}"
                if rule and rule != f"policy {h['verdict']}":
                    text += f"  ({rule})"
                elif h["kind"] == "policy":
                    text += " (policy)"
                item = {"type": "hop", "flow": f.id, "hop": "netfilter", "_ts": j.first_ns,
                        "table": h["table"],
                        "chain": h["chain"], "kind": h["kind"], "rule_num": h["rule_num"],
                        "rule_text": h["rule_text"], "verdict": h["verdict"],
                        "backend": h["backend"], "text": text}
            if (kind == "capture" or full_path or
                         h["verdict"] not in ("ACCEPT", "TRACE", "RETURN")):
                items.append(item)
        return items

    # -- store -------------------------------------------------------------------------
    def _flow_row(self, f):
        o = f.orig
        r = f.reply or (None, None, None, None)
        return {"session_id": self.session_id, "ct_id": f.ct_id, "proto": f.proto,
                "orig_src": o[0], "orig_sport": o[1], "orig_dst": o[2], "orig_dport": o[3],
                "reply_src": r[0], "reply_sport": r[1], "reply_dst": r[2], "reply_dport": r[3],
                "nat": f.nat_text() or "", "first_ns": f.first_ns, "last_ns": f.last_ns,
                "detail": json.dumps({"packets": f.packets, "traced_packets": f.journeys,
                                      "tcp_state": f.tcp_state, "nat_rule": _rule_ref(f),
                                      "drops": f.drop_counts})}

    def _ensure_flow(self, f):
        if f.store_id is None:
            f.store_id = self.store.insert_flow(self._flow_row(f))
        return f.store_id

    def _write_rows(self, journeys, loose=(), late_hops=()):
        """Index rows (where each analysed packet's bytes are in the segment files) and
        the netfilter hops of settled journeys, in one transaction each. The packets
        themselves are already in the files: the evidence path wrote them."""
        if not (journeys or late_hops) or not self.store:
            return
        sid = self.session_id
        pids = self.point_ids
        locate = self.evidence.locate_many() if self.evidence else (lambda cpu, pos: None)
        seg_ids = self.segment_ids
        rows = []
        first_row = {}           # journey index -> index of its first packet row
        for n, j in enumerate(journeys):
            fid = self._ensure_flow(j.flow)
            for c in j.captures:
                loc = locate(c["cpu"], c["pos"])
                if loc is None or loc[0] not in seg_ids:
                    continue     # not in the files (ring full, size cap): counted as lost
                first_row.setdefault(n, len(rows))
                rows.append((sid, seg_ids[loc[0]], loc[1], c["ts_ns"], pids[c["point"]], fid,
                             c["dir"], c["len"]))
        ids = self.store.add_index(rows) if rows else []
        hops = []
        for n, j in enumerate(journeys):
            if not j.nf:
                continue
            pid = ids[first_row[n]] if n in first_row and ids else None
            ts = j.captures[0]["ts_ns"] if j.captures else j.first_ns
            for h in j.nf:
                hops.append(self._hop_row(j, h, pid, ts, late=False))
        for j, h in late_hops:
            ts = j.captures[0]["ts_ns"] if j.captures else j.first_ns
            hops.append(self._hop_row(j, h, None, ts, late=True))
        if hops:
            self.store.insert_hops(hops)

    def _hop_row(self, j, h, packet_id, ts, late):
        detail = {"kind": h["kind"], "backend": h["backend"], "hook": h["hook"]}
        if late:
            detail["late"] = True
        return {"session_id": self.session_id, "flow_id": j.flow.store_id,
                "packet_id": packet_id, "ts_ns": ts, "table_name": h["table"],
                "chain": h["chain"], "rule_num": h["rule_num"], "rule_text": h["rule_text"],
                "verdict": h["verdict"], "detail": json.dumps(detail)}

    def _write_drops(self):
        if not self.store:
            return
        rows = []
        for f, d in self.drop_rows:
            rows.append({"session_id": self.session_id, "ts_ns": d["ts_ns"],
                         "reason": d["reason"], "location": d["location"],
                         "ifindex": d["ifindex"], "flow_id": self._ensure_flow(f),
                         "detail": json.dumps({k: d[k] for k in (
                             "explanation", "proto", "src", "sport", "dst", "dport",
                             "netns", "tcpflags")})})
        self.store.insert_drops(rows)
        self.drop_rows = []

    # -- stop --------------------------------------------------------------------------
    def stop(self):
        """Detach everything, flush the rest, write the summary; returns it (a dict)."""
        if self._stopped:
            return self.summary
        self._stopped = True
        tail = []
        counters = {}
        try:
            if self.cap:
                self.cap.stop()          # detach first: nothing new arrives
                if self.evidence:
                    self.evidence.stop()     # write what the buffers still hold
                counters = self.cap.counters()
            if self.ct or self.cap:
                tail = self.poll(0, final=True)
            self._drop_lost = self.drops.lost if self.drops else 0
            self._ct_lost = self.ct.lost if self.ct else 0
            self._nflog_lost = self.nflog.lost if self.nflog else 0
        finally:
            self._teardown()
        self.tail = tail
        self.summary = self._summary(counters)
        if self.store:
            self._sync_segments()
            for f in self.flows.flows.values():
                if f.store_id is not None:
                    self.store.update_flow(f.store_id, self._flow_row(f))
            self.store.end_trace(self.session_id, "stopped", self.summary)
            if self.opt.pcap:
                self._write_pcap()
            self.store.close()
            self.store = None
        return self.summary

    def _write_pcap(self):
        """-w FILE: the session's packets, every capture point, in time order, with each
        flow's NAT as the packet comment (what `pcap export --session` writes)."""
        from .pcap_export import export
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
            key = f"{p.name} ({_role(p)})"
            per_point[key] = {"captured": c.captured, "seen": c.seen, "lost": c.lost,
                              "capped": c.capped, "analysed": self.captured.get(i, 0),
                              "shed": c.shed, "analysis_lost": c.alost}
        ev = self.evidence
        if ev and ev.capped_at:
            self.notes.append(
                f"pcap: the size cap ({_size(self.max_size)}) was reached at "
                f"{time.strftime('%H:%M:%S', time.localtime(ev.capped_at / 1e9))}: later "
                f"packets are not in the files (counted as capped; raise it with --max-size)")
        if ev and ev.error:
            self.notes.append(f"pcap: writing the segment files failed: {ev.error}")
        shown = [f for f in self.flows.flows.values() if f.journeys or f.drops]
        nat = sorted({f.nat_text() for f in shown if f.nat_text()})
        return {
            "session_id": self.session_id,
            "container": self.target.name if self.target else self.ref,
            "duration_s": round((time.time_ns() - getattr(self, "ready_ns", self.started_ns))
                                / 1e9, 3),
            "flows": len(shown),
            "connections": [f.header() for f in shown],
            "traced_packets": self.traced_packets,
            "packets_per_point": per_point,
            "nat": nat,
            "drops": [f"[{f.id}] {text}" + (f" (x{n})" if n > 1 else "")
                      for f in shown for text, n in f.drop_counts.items()],
            "lost": total.lost + total.capped,     # seen in the kernel, not in the files
            "pcap_files": {"segments": len(ev.files.segments) if ev else 0,
                           "bytes": ev.files.total if ev else 0,
                           "snaplen": self.cap.snaplen if self.cap else self.opt.snaplen},
            "loss": {"capture": total.lost, "capped": total.capped, "shed": total.shed,
                     "analysis_lost": total.alost, "drops": getattr(self, "_drop_lost", 0),
                     "conntrack_overruns": getattr(self, "_ct_lost", 0),
                     "trace_overruns": getattr(self, "_nflog_lost", 0)},
            "filtered_out": self.filtered_out,
            "process_events": self.events_seen,
            "reader_budget": (self.opt.max_rate if self.opt.max_rate is not None else
                              f"auto (last {self._auto_rate()} records/s: "
                              f"{self._share:.1%} of a core at "
                              f"{self._cost * 1e6:.0f} us/record)"),
            "poll_interval_s": self.poll_interval,
            "reader_us_per_record": round(self.reader_cpu * 1e6 / max(1, sum(
                self.captured.values())), 1),
            "fast_path_packets": self.fast_packets,
            "capture_hook": getattr(self, "capture_hook", None),
            "notes": list(self.notes),
            "pcap": str(self.opt.pcap) if self.opt.pcap else None,
        }

    def _teardown(self):
        """Remove every kernel object this session made; safe to call twice."""
        if self.evidence:
            self.evidence.stop()
        if self.cap:
            self.cap.close()
            self.cap = None
        for undo in (self._undo_nftrace, self._undo_nft, self._undo_drops, self._undo_events,
                     self._undo_conntrack):
            undo()
        if self._state_file:
            with contextlib.suppress(OSError):
                self._state_file.unlink()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _fast_key(frame):
    """The bytes that name an IPv4 TCP/UDP packet's 5-tuple (protocol, addresses, ports),
    or None for anything else and for TCP packets that open, close or reset (those always
    take the full path: the netfilter trace follows them)."""
    if len(frame) < 38 or frame[12] != 8 or frame[13] != 0 or frame[14] >> 4 != 4:
        return None
    proto = frame[23]
    l4 = 14 + (frame[14] & 0xf) * 4
    if proto == 6:
        if len(frame) < l4 + 14 or frame[l4 + 13] & 0x07:
            return None
    elif proto != 17 or len(frame) < l4 + 4:
        return None
    return frame[23:24] + frame[26:34] + frame[l4:l4 + 4]


def parse_size(text):
    """'500M', '2G', '1024', '0' -> bytes (K/M/G/T are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.I)
    if not m:
        raise UsageError(f"bad --max-size {text!r}", "give bytes or a size like 500M or 2G")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _rule_ref(f):
    r = f.nat_rule
    if not r:
        return None
    return {"table": r["table"], "chain": r["chain"], "rule_num": r["rule_num"],
            "rule_text": r["rule_text"], "verdict": r["verdict"]}


def format_summary(s):
    """The end-of-trace summary as text lines."""
    lines = [f"--- trace of {s['container']}: {s['duration_s']}s, {s['flows']} flow(s), "
             f"{s['traced_packets']} packet(s) traced"]
    for c in s["connections"]:
        lines.append(f"  {c}")
    hook = f" [{s['capture_hook']}]" if s.get("capture_hook") else ""
    lines.append(f"packets per capture point{hook}: in the files / seen / lost (ring full) / "
                 f"capped (size cap); analysed / shed (over the analysis budget)")
    for name, v in s["packets_per_point"].items():
        lines.append(f"  {name:<26} {v['captured']:>8} {v['seen']:>8} {v['lost']:>6} "
                     f"{v['capped']:>6}; {v['analysed']:>8} {v['shed']:>8}")
    files = s.get("pcap_files") or {}
    if files:
        lines.append(f"pcap files: {files['segments']} segment(s), {files['bytes']} bytes, "
                     f"snaplen {files['snaplen']} (pyinspect pcap export --session "
                     f"{s['session_id']})")
    lines.append("NAT translations: " + ("; ".join(s["nat"]) if s["nat"] else "none"))
    lines.append("drops: " + ("; ".join(s["drops"]) if s["drops"] else "none"))
    loss = s["loss"]
    lines.append(f"loss: capture {loss['capture']} (ring full), capped {loss['capped']}; "
                 f"analysis: shed {loss['shed']} (--max-rate), lost {loss['analysis_lost']}; "
                 f"drop events {loss['drops']}, conntrack overruns "
                 f"{loss['conntrack_overruns']}, trace overruns {loss['trace_overruns']}")
    if s.get("filtered_out"):
        lines.append(f"--filter left out {s['filtered_out']} captured packet(s)")
    for n in s.get("notes") or []:
        lines.append(f"note: {n}")
    if s.get("pcap"):
        lines.append(f"pcapng: {s['pcap']}")
    return lines

