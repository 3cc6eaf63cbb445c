"""What the dashboard shows, as JSON-ready dicts, from the same library calls the CLI makes.

`Overview(root)` opens the store per call (cheap, WAL readers never block the writer)
and delegates: hostinfo for the host, runtime state + discovery for containers, the
veth map for topology, events.query for the timeline, the trace tables for flows and
sessions, pcap_export for downloads, doctor's stored findings and runbooks.
"""

import json
import os
import re
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..config import database_path
from ..errors import ConflictError, NotFoundError, UsageError

if TYPE_CHECKING:
    from ..host.stats import Sampler
    from ..store import Store

STATS_HISTORY = 300  # samples of each container kept for its charts (10 min at 2 s)
SNAPSHOT_FRESH = 2.0  # seconds a containers/interfaces snapshot is served (the pages poll at 2 s)
SNAPSHOT_MAX_AGE = 5.0  # past this a request waits for a new one (else read in background)
PORTLESS = ("icmp", "icmpv6", "ipv6-icmp")  # flows drawn without ports
EVENTS_MARGIN_NS = 60 * 10**9  # container page: events from its init's start less this
RATE_OF = {
    "rx_pps": "rx_packets",
    "tx_pps": "tx_packets",
    "rx_Bps": "rx_bytes",
    "tx_Bps": "tx_bytes",
}


@dataclass
class HostSnapshot:
    """One reading of the host: discovery records, veth map rows, container details."""

    taken: float  # time.monotonic()
    found: list
    links: list[dict]
    infos: list
    rows: list[dict]  # the Containers table, one row per info


def _iso(ns):
    if not ns:
        return ""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class Overview:
    """The dashboard's data layer over one state root."""

    def __init__(self, root: str | Path, tracer_factory=None) -> None:
        self.root = Path(root)
        self.tracer_factory = tracer_factory
        self.traces: dict = {}  # session id -> running BackgroundTrace
        self.agent_status: dict[str, bool] = {}  # probe name -> bool, set by the serving agent
        self._lock = threading.Lock()
        self._sampler: Sampler | None = None  # made on first use
        self._stats_history: dict[str, deque] = {}  # container id -> StatsRow samples
        self._snap: HostSnapshot | None = None
        self._snap_lock = threading.Lock()

    @contextmanager
    def store(self) -> Iterator["Store"]:
        from ..store import Store

        s = Store(database_path(self.root))
        try:
            yield s
        finally:
            s.close()

    # -- host ----------------------------------------------------------------------------
    def host(self) -> dict:
        from ..host import hostinfo, vethmap

        info = hostinfo.collect()
        kernel = info.get("kernel") or {}
        cg = info.get("cgroups") or {}
        facts = [
            ("kernel", f"{kernel.get('release', '')} {kernel.get('machine', '')}"),
            ("cgroups", cg.get("layout", "")),
            ("tracefs", "mounted" if (info.get("tracefs") or {}).get("mounted") else "not mounted"),
            ("BTF", "present" if (info.get("btf") or {}).get("present") else "absent"),
            ("host netns inode", info.get("netns")),
        ]
        facts += sorted((info.get("sysctls") or {}).items())
        hooks = [
            {
                "name": h["name"],
                "status": "loads" if h["available"] else "refused",
                "reason": h.get("reason", ""),
            }
            for h in _dicts(info.get("ebpf") or [])
        ]
        ipt = [
            {
                "backend": b["backend"],
                "rules": b.get("rules"),
                "command": f"{b.get('tool', b['backend'])}-save"
                if b.get("present")
                else "not installed",
            }
            for b in info.get("iptables") or []
        ]
        rows = vethmap.build(root=self.root)
        bridges = []
        for r in rows:
            if r.get("kind") == "bridge":
                members = [
                    m["ifname"]
                    for m in rows
                    if m.get("master") == r["ifname"] and m.get("netns") == r.get("netns")
                ]
                bridges.append(
                    {
                        "ifname": r["ifname"],
                        "netns": r.get("netns_name"),
                        "addrs": " ".join(_addr_text(r.get("addrs"))),
                        "members": " ".join(members),
                    }
                )
        return {
            "hostname": socket.gethostname(),
            "facts": facts,
            "hooks": hooks,
            "iptables": ipt,
            "bridges": bridges,
        }

    # -- containers ----------------------------------------------------------------------
    def snapshot(self) -> "HostSnapshot":
        """Containers, interfaces and link rates, read at most every SNAPSHOT_FRESH seconds.

        A snapshot younger than SNAPSHOT_FRESH is served as it is; an older one (up to
        SNAPSHOT_MAX_AGE) is served while a background thread reads the next; past that,
        or with none yet, the request reads one itself. Reading costs a /proc scan and a
        netlink dump per namespace (hundreds of ms with 100 containers on 2 cores): the
        pages and their 2 s polls share one reading instead of each making its own."""
        now = time.monotonic()
        snap = self._snap
        if snap is not None and now - snap.taken < SNAPSHOT_FRESH:
            return snap
        if snap is not None and now - snap.taken < SNAPSHOT_MAX_AGE:
            self._refresh_in_background()
            return snap
        with self._snap_lock:
            snap = self._snap
            if snap is not None and time.monotonic() - snap.taken < SNAPSHOT_FRESH:
                return snap
            return self._refresh()

    def _refresh(self) -> "HostSnapshot":
        """Read a new snapshot (the caller holds _snap_lock); rates against the last one."""
        from ..host import discovery, vethmap
        from ..probes import cgroupstat
        from . import containerinfo

        procs = discovery.scan_processes()
        host = discovery.host_namespaces()
        found = discovery.containers(self.root, procs=procs, host=host)
        links = vethmap.build(root=self.root, found=found, procs=procs, host=host)
        infos = containerinfo.collect(self.root, found=found, links=links)
        infos.sort(key=lambda i: (not i.is_container, i.name))
        now = time.monotonic()
        prev = self._snap
        if prev is not None and now > prev.taken:
            dt = now - prev.taken
            before = {(r["netns"], r["ifindex"]): r for r in prev.links}
            for r in links:
                p = before.get((r["netns"], r["ifindex"]))
                if p is None or None in (
                    *(r.get(k) for k in RATE_OF.values()),
                    *(p.get(k) for k in RATE_OF.values()),
                ):
                    continue
                r["rates"] = {name: max(0.0, (r[k] - p[k]) / dt) for name, k in RATE_OF.items()}
        mounts = cgroupstat.mounts()
        self._snap = HostSnapshot(now, found, links, infos, [i.row(mounts) for i in infos])
        return self._snap

    def _refresh_in_background(self) -> None:
        if not self._snap_lock.acquire(blocking=False):
            return  # a reading is under way

        def run():
            try:
                self._refresh()
            finally:
                self._snap_lock.release()

        threading.Thread(target=run, daemon=True, name="snapshot").start()

    def container_infos(self) -> list:
        """containerinfo.collect: every runtime's containers, then bare namespaces."""
        return self.snapshot().infos

    def containers(self) -> list[dict]:
        """pyinspect's containers and every other runtime's (with network and limits), then
        the namespaces that hold processes but are no container."""
        return self.snapshot().rows

    def _info(self, ref: str):
        for i in self.container_infos():
            if ref in (i.name, i.id) or (len(ref) >= 4 and i.id.startswith(ref)):
                return i
        raise NotFoundError(f"no such container: {ref}")

    def container(self, ref: str) -> dict:
        info = self._info(ref)
        return next(r for r in self.snapshot().rows if r["id"] == info.id)

    def container_detail(self, ref: str) -> dict:
        """Everything the container page shows but its charts: the fields and where they
        came from, processes, interfaces, events, traces and doctor findings."""
        from ..proc import started_ns
        from . import containerinfo

        info = self._info(ref)
        names = {info.name, info.id}
        detail = {**info.to_dict(), "row": info.row()}
        detail["processes"] = [p.__dict__ for p in containerinfo.process_tree(info.pids)]
        detail["interfaces"] = [
            r for r in self.interfaces() if info.netns is not None and r["netns"] == info.netns
        ]
        # its events cannot predate its init process (less a margin for the cgroup and
        # namespace set-up before it): the bound keeps a container with few events from
        # walking every stored event (0.3-0.5 s with 1M)
        since = started_ns(info.pid) if info.pid else None
        detail["events"] = self.timeline(
            container=info.name,
            since_ns=since - EVENTS_MARGIN_NS if since else None,
            limit=50,
        )
        detail["traces"] = [
            s
            for s in self.sessions()
            if s.get("container_name") in names or s.get("container_id") in names
        ]
        detail["findings"] = [f for f in self.findings() if f.get("container") in names]
        return detail

    def container_stats(self, ref: str) -> dict:
        """A fresh `stats` reading of one container, its history in this process, and the
        charts of CPU, memory, pids and network rates drawn from it."""
        from .. import units
        from ..host import stats
        from . import charts

        with self._lock:
            if self._sampler is None:
                self._sampler = stats.Sampler(self.root, warmup=0)
            row = self._sampler.sample([ref], found=self.snapshot().found)[0]
            hist = self._stats_history.setdefault(row.id, deque(maxlen=STATS_HISTORY))
            hist.append(row)
            samples = list(hist)
        rx, tx = [], []
        for a, b in zip(samples, samples[1:], strict=False):
            dt = b.ts - a.ts
            ok = dt > 0 and None not in (a.net_rx, b.net_rx, a.net_tx, b.net_tx)
            rx.append((b.ts, (b.net_rx - a.net_rx) / dt if ok else None))
            tx.append((b.ts, (b.net_tx - a.net_tx) / dt if ok else None))
        return {
            "current": {**row.to_dict(), **row.docker_row()},
            "samples": len(samples),
            "charts": {
                "cpu": charts.line_svg(
                    [(r.ts, r.cpu_percent) for r in samples],
                    "CPU %",
                    lambda v: f"{v:.1f}%",
                    ceiling=(row.cpus_limit or 0) * 100 or None,
                    css_id="chart-cpu",
                ),
                "memory": charts.line_svg(
                    [(r.ts, r.mem_usage) for r in samples],
                    "memory",
                    units.binary_size,
                    css_id="chart-memory",
                ),
                "pids": charts.line_svg(
                    [(r.ts, r.pids) for r in samples],
                    "pids",
                    lambda v: f"{v:.0f}",
                    css_id="chart-pids",
                ),
                "net_rx": charts.line_svg(
                    rx, "network in", lambda v: units.decimal_size(v) + "/s", css_id="chart-rx"
                ),
                "net_tx": charts.line_svg(
                    tx, "network out", lambda v: units.decimal_size(v) + "/s", css_id="chart-tx"
                ),
            },
        }

    # -- veth map and topology -------------------------------------------------------------
    def interfaces(self) -> list[dict]:
        """The veth map (of the current snapshot), with rates where there are two readings."""
        return self.snapshot().links

    def interface(self, netns: str, ifname: str) -> dict:
        """One interface of the veth map, by namespace (name or inode) and name."""
        for r in self.interfaces():
            if r["ifname"] == ifname and netns in (str(r["netns"]), r.get("netns_name")):
                return r
        raise NotFoundError(f"no interface {ifname} in netns {netns}")

    def topology_svg(self) -> str:
        """The topology picture of the current snapshot, with its link rates."""
        from .topology import render_svg

        snap = self.snapshot()
        flagged: dict[str, list[str]] = {}
        for f in self.findings(limit=200):
            if f.get("container") and f.get("severity") in ("error", "warning"):
                flagged.setdefault(f["container"], []).append(f["summary"])
        return render_svg(snap.links, snap.infos, flagged)

    # -- timeline ----------------------------------------------------------------------------
    def timeline(
        self,
        container=None,
        kinds=None,
        since_ns=None,
        after_id=None,
        limit=100,
        offset=0,
        ascending=False,
    ):
        from ..host import events

        if kinds:
            kinds = [k for part in kinds for k in part.split(",") if k]
        with self.store() as s:
            rows = events.query(
                s,
                container=container,
                since=since_ns,
                kinds=kinds,
                limit=limit,
                offset=offset,
                after_id=after_id,
                newest_first=not ascending,
                packets=True,
            )
        for r in rows:
            r["time"] = _iso(r["ts_ns"])
            r["summary"] = events.summary(r)
        return rows

    def last_event_id(self) -> int:
        with self.store() as s:
            return s.last_event_id()

    # -- traces and flows --------------------------------------------------------------------
    def sessions(self) -> list[dict]:
        from ..pcap import export as pcap_export

        with self.store() as s:
            rows = pcap_export.list_sessions(s)
            flows = s.flow_counts()
        for r in rows:
            r["started"] = _iso(r["started_ns"])
            r["flows"] = flows.get(r["id"], 0)
            r["lost"] = "" if r.get("lost") is None else r["lost"]
            if r["id"] in self.traces and not self.traces[r["id"]].done:
                r["status"] = "running"
        return rows

    def flows(self, session_id: int | None = None, after_id: int | None = None) -> list[dict]:
        # packets: those the trace's analysis indexed to the flow (the segment files
        # may hold more; `pcap export --flow` finds those too)
        # flows with no packet indexed to them (a conntrack entry the capture never saw)
        # are left out: there is nothing to show or download for them
        with self.store() as s:
            rows = [r for r in s.recent_flows(session_id, after_id, limit=500) if r.get("packets")]
            for r in rows:
                hops = s.flow_rule_hops(r["session_id"], r["id"], limit=200)
                path = []
                for t, c, n, v in hops:
                    step = f"{t}:{c}:{n if n is not None else 'policy'}" + (f" {v}" if v else "")
                    if step not in path:
                        path.append(step)
                r["rule_path"] = path[:40]
                r["rules"] = " > ".join(path[:12])
                r["original"] = flow_tuple(
                    r.get("proto"), r["orig_src"], r["orig_sport"], r["orig_dst"], r["orig_dport"]
                )
                # the reply tuple reversed is what the far side of the NAT saw
                r["translated"] = flow_tuple(
                    r.get("proto"),
                    r["reply_dst"],
                    r["reply_dport"],
                    r["reply_src"],
                    r["reply_sport"],
                )
                r["detail"] = _json(r.get("detail"))
        return rows

    def last_flow_id(self) -> int:
        with self.store() as s:
            return s.last_flow_id()

    def start_trace(
        self, container: str, duration: float = 30.0, bpf_filter: str | None = None
    ) -> dict:
        """Start a trace in the background (the serving agent's process); returns its row."""
        if not 0 < duration <= 3600:
            raise UsageError(f"start trace: duration {duration:g}s is outside 0..3600")
        factory = self.tracer_factory or _background_trace
        trace = factory(self.root, container, duration=duration, bpf_filter=bpf_filter)
        with self._lock:
            self.traces[trace.session_id] = trace
        return {"id": trace.session_id, "container": container, "status": "running"}

    def stop_trace(self, session_id: int) -> dict:
        trace = self.traces.get(session_id)
        if trace is None:
            raise NotFoundError(f"no running trace {session_id} in this agent")
        if trace.done:
            raise ConflictError(f"trace {session_id} has already stopped")
        summary = trace.stop()
        return {"id": session_id, "status": "stopped", "summary": summary}

    def export_pcap(self, session_id: int, flow_id: int | None = None) -> tuple[BinaryIO, str]:
        """A session's (or one of its flows') pcapng, as an open file already unlinked
        (nothing is left behind however the download ends), and a download name."""
        from ..pcap import export as pcap_export

        flow = None
        name = f"trace-{session_id}.pcapng"
        with self.store() as s:
            if flow_id is not None:
                row = s.flow_tuple(flow_id, session_id)
                if row is None:
                    raise NotFoundError(f"no flow {flow_id} in trace session {session_id}")
                flow = (row[0] or "tcp", row[1], row[2], row[3], row[4])
                name = f"trace-{session_id}-flow-{flow_id}.pcapng"
            fd, tmp = tempfile.mkstemp(prefix="pyinspect-export-", suffix=".pcapng")
            os.close(fd)
            try:
                pcap_export.export(s, session_id=session_id, flow=flow, out=tmp)
                f = open(tmp, "rb")  # noqa: SIM115 the caller (the download) closes it
            finally:
                os.unlink(tmp)
        return f, name

    def pcap_path(self, name: str) -> Path | None:
        """A file in the pcap store by its bare name; None for anything else."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}", name) or ".." in name:
            return None
        base = (self.root / "pcaps").resolve()
        path = (base / name).resolve()
        if path.parent != base or not path.is_file():
            return None
        return path

    # -- doctor --------------------------------------------------------------------------
    def findings(self, limit: int = 200) -> list[dict]:
        with self.store() as s:
            rows = s.recent_findings(limit)
        for r in rows:
            r["when"] = _iso(r["run_ns"])
        return rows

    def runbook(self, name: str) -> str:
        """A runbook's text (the package's copy, as doctor shows it)."""
        from ..doctor.model import read_runbook

        return read_runbook(name)

    def runbook_html(self, name: str) -> str:
        """A runbook rendered from Markdown (markdown-it-py, CommonMark + tables; raw HTML
        in the source is escaped, not passed through)."""
        from markdown_it import MarkdownIt

        md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
        return md.render(self.runbook(name))

    def doctor_pending(
        self, check: str, container: str | None = None, port: int | None = None
    ) -> list[dict]:
        """The finding `check` as doctor sees it now, with the exact commands its fix runs."""
        from ..doctor import current_findings, describe_action

        out = []
        for f in current_findings(self.root, check, container, port):
            d = f.to_dict()
            d["commands"] = [describe_action(a) for a in f.actions if a[0] != "ack"]
            out.append(d)
        return out

    def doctor_fix(
        self,
        check: str,
        container: str | None = None,
        port: int | None = None,
        confirmed: bool = False,
    ) -> list[dict]:
        """Apply a finding's safe fix (doctor.fix_finding); [{check, container, status, detail}]."""
        from ..doctor import fix_finding

        return [
            {"check": f.check, "container": f.container, "status": status, "detail": detail}
            for f, status, detail in fix_finding(self.root, check, container, port, confirmed)
        ]

    # -- metrics -------------------------------------------------------------------------
    def metrics(self) -> dict:
        from ..pcap import export as pcap_export

        now = time.time_ns()
        with self.store() as s:
            by_kind, recent = s.event_counts(since_ns=now - 60 * 10**9)
            packets = sum(r["packets"] for r in pcap_export.list_sessions(s))
            flows = s.flow_count()
            lost_probe = s.probe_records_lost()
            lost_pkts = sum(
                int((_json(summary) or {}).get("lost", 0) or 0) for summary in s.session_summaries()
            )
        return {
            "events_by_kind": by_kind,
            "events_per_second": recent / 60.0,
            "packets_captured": packets,
            "packets_lost": lost_pkts,
            "flows": flows,
            "probe_records_lost": lost_probe,
            "probes": dict(self.agent_status),
        }


def _endpoint(ip, port) -> str:
    if ip is None:
        return "?"
    host = f"[{ip}]" if ":" in str(ip) and port is not None else str(ip)
    return host if port is None else f"{host}:{port}"


def flow_tuple(proto, src, sport, dst, dport) -> str:
    """`src:sport -> dst:dport` (no ports for ICMP and other portless protocols; '' when
    the flow has no such tuple, e.g. no reply seen)."""
    if src is None and dst is None:
        return ""
    if proto in PORTLESS:  # conntrack's ICMP id/type are no ports (stored as 0 or None)
        sport = dport = None
    text = f"{_endpoint(src, sport)} -> {_endpoint(dst, dport)}"
    return f"{proto} {text}" if proto and sport is None and dport is None else text


def _dicts(items):
    return [i if isinstance(i, dict) else dict(i.__dict__) for i in items]


def _json(text):
    if not text or not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _addr_text(addrs):
    out = []
    for a in addrs or []:
        if isinstance(a, dict):
            out.append(f"{a.get('address')}/{a.get('prefixlen')}")
        else:
            out.append(str(a))
    return out


class _BackgroundTrace:
    """A TraceSession run by its own thread (SQLite handles stay in the thread that made
    them) until its duration ends or stop() is called. Start-up errors (unknown
    container, missing kernel feature) are raised to the caller."""

    def __init__(self, root, container, duration, bpf_filter=None):
        from ..trace import TraceOptions, TraceSession

        self.session = TraceSession(
            root,
            container,
            # the dashboard reads the store, not the live lines
            TraceOptions(duration=duration, filter=bpf_filter, live="off"),
        )
        self.session_id = None
        self.done = False
        self.summary = None
        self._error = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="trace")
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise self._error
        if self.session_id is None:
            self.stop()
            raise UsageError(f"trace of {container}: did not start within 120 s")

    def _run(self):
        try:
            self.session.start()
            self.session_id = self.session.session_id
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            self._error = exc
            self.done = True
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set() and not self.session.done:
                for _ in self.session.poll(0.2) or ():
                    pass
        finally:
            self.summary = self.session.stop()
            self.done = True

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=60)
        return self.summary


def _background_trace(root, container, duration, bpf_filter=None):
    return _BackgroundTrace(root, container, duration, bpf_filter)
