"""What the dashboard shows, as JSON-ready dicts, from the same library calls the CLI makes.

`Overview(root)` opens the store per call (cheap, WAL readers never block the writer)
and delegates: hostinfo for the host, runtime state + discovery for containers, the
veth map for topology, events.query for the timeline, the trace tables for flows and
sessions, pcap_export for downloads, doctor's stored findings and runbooks.
"""

import contextlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .config import database_path
from .errors import ConflictError, NotFoundError, UsageError

if TYPE_CHECKING:
    from .store import Store


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

    @contextmanager
    def store(self) -> Iterator["Store"]:
        from .store import Store

        s = Store(database_path(self.root))
        try:
            yield s
        finally:
            s.close()

    # -- host ----------------------------------------------------------------------------
    def host(self) -> dict:
        from . import hostinfo, vethmap

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
    def containers(self) -> list[dict]:
        """pyinspect's containers (with network and limits) and every discovered foreign one."""
        from . import discovery
        from .runtime import state

        own = {c.id: c for c in state.load_all(self.root)}
        out = []
        for d in discovery.containers(self.root):
            c = own.pop(d.id, None)
            out.append(_container_row(d, c))
        for c in own.values():  # records discovery did not report
            out.append(_container_row(None, c))
        return out

    def container(self, ref: str) -> dict:
        for row in self.containers():
            if ref in (row["name"], row["id"]) or (len(ref) >= 4 and row["id"].startswith(ref)):
                return row
        raise NotFoundError(f"no such container: {ref}")

    # -- veth map and topology -------------------------------------------------------------
    def interfaces(self) -> list[dict]:
        from . import vethmap

        return vethmap.build(root=self.root)

    def topology_svg(self) -> str:
        from .topology import render_svg

        return render_svg(self.interfaces())

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
        from . import events

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
        from .pcap import export as pcap_export

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
        with self.store() as s:
            rows = s.recent_flows(session_id, after_id, limit=500)
            for r in rows:
                hops = s.flow_rule_hops(r["id"], limit=200)
                path = []
                for t, c, n, v in hops:
                    step = f"{t}:{c}:{n if n is not None else 'policy'}" + (f" {v}" if v else "")
                    if step not in path:
                        path.append(step)
                r["rules"] = " > ".join(path[:12])
                r["original"] = (
                    f"{r['orig_src']}:{r['orig_sport']} -> {r['orig_dst']}:{r['orig_dport']}"
                )
                # the reply tuple reversed is what the far side of the NAT saw
                r["translated"] = (
                    f"{r['reply_dst']}:{r['reply_dport']} -> {r['reply_src']}:{r['reply_sport']}"
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

    def export_pcap(self, session_id: int, flow_id: int | None = None) -> tuple[str, str]:
        """A temp pcapng of a session (or one of its flows) and a download name."""
        from .pcap import export as pcap_export

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
            except Exception:
                os.unlink(tmp)
                raise
        _unlink_later(tmp)
        return tmp, name

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
        from .doctor.model import read_runbook

        return read_runbook(name)

    # -- metrics -------------------------------------------------------------------------
    def metrics(self) -> dict:
        from .pcap import export as pcap_export

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


def _container_row(d, c):
    """One row of the containers page from a discovery record and/or a runtime record."""
    row = {
        "id": (c.id if c else d.id),
        "name": (c.name if c else d.name),
        "source": d.source if d else "pyinspect",
        "status": (c.status if c else d.status),
        "image": c.image if c else "",
        "pid": (d.pid if d else c.pid),
        "ip": "",
        "ports": "",
        "veth": "",
        "cgroup": "",
        "limits": "",
        "oom_killed": "",
    }
    row["id_short"] = row["id"][:12]
    if c is not None:
        net = c.network or {}
        row["ip"] = net.get("ip", "") or ""
        row["ports"] = ", ".join(
            f"{p.get('host_ip') or '0.0.0.0'}:{p['host_port']}->{p['container_port']}/{p['proto']}"
            for p in net.get("ports") or []
        )
        if net.get("veth_host"):
            row["veth"] = f"{net['veth_host']} <-> eth0"
        row["cgroup"] = " ".join(sorted(set((c.cgroup or {}).values())))[:120]
        spec = c.spec
        limits = []
        if spec is not None:
            for label, value in (
                ("memory", spec.memory),
                ("cpus", spec.cpus),
                ("pids", spec.pids_limit),
            ):
                if value:
                    limits.append(f"{label} {value}")
        row["limits"] = ", ".join(limits)
        row["oom_killed"] = "yes" if c.oom_killed else "no"
    elif d is not None:
        row["cgroup"] = " ".join(sorted(set((d.cgroups or {}).values())))[:120]
    return row


def _unlink_later(path, seconds=60):
    """Remove a served temp file once the download had time to finish."""

    def remove():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    t = threading.Timer(seconds, remove)
    t.daemon = True
    t.start()


class _BackgroundTrace:
    """A TraceSession run by its own thread (SQLite handles stay in the thread that made
    them) until its duration ends or stop() is called. Start-up errors (unknown
    container, missing kernel feature) are raised to the caller."""

    def __init__(self, root, container, duration, bpf_filter=None):
        from .trace import TraceOptions, TraceSession

        self.session = TraceSession(
            root, container, TraceOptions(duration=duration, filter=bpf_filter)
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
