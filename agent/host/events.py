"""The process/cgroup timeline: record probe events into the store, query them back.

- `Recorder(store, resolver)` attributes each probe record to a container (by pid,
  pid/net namespace inode and cgroup id, through `pyinspect.host.discovery.Resolver`) and
  writes them in batches with `Store.insert_events` (one transaction per batch). A
  record that a container not found yet may own (one being made: its runtime writes
  its state after making its cgroups and namespaces) is stored at once as it is, and
  held up to `HOLD_S`: attributed again once discovery has looked again, its stored
  row is replaced by an attributed copy (`Store.reattribute_events`), and the live view
  gets it then. So a kill -9 loses at most the batch not yet written.
  It also stores ring buffer loss and reader lag per probe in `probe_loss`.
- `Follower(root, store)` runs the probes (process, cgroup, and probes engineer B's
  netlink link monitor) inside this process and yields attributed
  events as they happen (used by `pyinspect events --follow` and the agent).
- `query(store, container=None, since=None, kinds=None, limit=100, offset=0)` reads
  the stored timeline, oldest first.
"""

import json
import os
import queue
import threading
import time
from datetime import datetime

from ..dockerfmt.timespec import parse_time
from ..errors import UnavailableError, UsageError

COLUMNS = (
    "ts_ns",
    "kind",
    "pid",
    "ppid",
    "comm",
    "cgroup_id",
    "netns",
    "pidns",
    "mntns",
    "container_id",
    "container_name",
    "session_id",
    "detail",
)
PROBES = ("process", "cgroup", "links")
HOLD_S = 3.0  # how long a record in not-yet-known namespaces or cgroups waits for an owner
HOLD_MAX = 20_000  # records held at most; past it they are written unattributed


def parse_since(value, now_ns=None):
    """'30s', '10m', '2h', '1d' (ago), an RFC3339/ISO time, or epoch seconds -> epoch ns
    (the forms of `pyinspect.dockerfmt.timespec`, shared with `pcap export`)."""
    return parse_time(value, now_ns, what="--since value")


def _resolver(root):
    try:
        from .discovery import Resolver
    except ImportError:
        return None
    return Resolver(root)


class _Writer(threading.Thread):
    """The one writer thread: its own connection, batches from a bounded queue."""

    def __init__(self, path):
        super().__init__(name="pyinspect-events-writer", daemon=True)
        self.path = path
        self.queue: queue.Queue = queue.Queue(maxsize=64)  # full -> the reader waits
        self.written = 0
        self.error = None

    def run(self):
        from ..store import Store

        store = Store(self.path)
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                table, rows = item
                try:
                    if table == "events":
                        self.written += store.insert_events(rows)
                    elif table == "reattributed":  # replacements: no new events
                        store.reattribute_events(rows)
                    else:
                        store.insert_probe_loss(rows)
                except Exception as exc:  # noqa: BLE001 - keep writing later batches; report at close
                    self.error = f"{type(exc).__name__}: {exc}"
        finally:
            store.close()


class Recorder:
    """Attribute and batch events into the store: no per-event commit.

    A batch is written when it reaches `batch_size` events or when `flush_interval`
    seconds have passed since the last write (checked on add() and tick()). With
    `threaded=True` batches go to one writer thread with its own connection, so
    SQLite never stalls the ring buffer reader; close() drains it."""

    def __init__(
        self,
        store,
        resolver=None,
        batch_size=1000,
        flush_interval=0.5,
        session_id=None,
        threaded=False,
    ):
        self.store = store
        self.resolver = resolver
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.session_id = session_id
        self._written = 0
        self._write_error = None
        self._writer = None
        if threaded:
            self._writer = _Writer(store.path)
            self._writer.start()
        self._batch = []
        self._last_flush = time.monotonic()
        self._loss_seen = {}
        self._memo = {}  # attribution key -> (container or None, expiry)
        # (deadline, row, its stored copy) waiting for an owner
        self._held: list[tuple[float, dict, dict]] = []
        self._retried = -1  # the discovery scan held records were last attributed with
        self.attribution_errors = 0
        self.last_attribution_error = None
        self.memo_ttl = 2.0  # seconds a (namespaces, cgroup) answer is reused

    def attribute(self, ev, fresh=False):
        """Set container_id / container_name on `ev` (None when it is the host's); `fresh`
        asks discovery again instead of reusing a remembered answer."""
        ev.setdefault("container_id", None)
        ev.setdefault("container_name", None)
        if self.resolver is None:
            return ev
        d = ev.get("detail") or {}
        hit = None
        if ev["kind"].startswith("cgroup_") and d.get("id") is not None:
            # the cgroup being made/removed/joined says more than the actor's cgroup
            hit = self._resolve(cgroup_id=d["id"], cgroup_root=d.get("hierarchy"))
        elif ev["kind"] == "oom" and d.get("memcg_id"):
            # the memory cgroup that ran out names the container even after the victim died
            hit = self._resolve(cgroup_id=d["memcg_id"], cgroup_root=d.get("memcg_hierarchy"))
        if hit is None:
            # The namespaces in the record are the task's at event time; the pid is only
            # a fallback (a process that later joins a container must not drag its
            # earlier host events along), so it is used only when they are unknown.
            known_ns = bool(ev.get("netns") or ev.get("pidns"))
            key = (
                None if known_ns else (ev.get("pid") or None),
                ev.get("netns") or None,
                ev.get("pidns") or None,
                ev.get("cgroup_id") or None,
            )
            now = time.monotonic()
            memo = self._memo.get(key)
            if memo and memo[1] > now and not fresh:
                hit = memo[0]
            else:
                hit = self._resolve(
                    pid=key[0], netns=key[1], pidns=key[2], cgroup_id=key[3], cgroup_root=0
                )
                if len(self._memo) > 10000:
                    self._memo.clear()
                self._memo[key] = (hit, now + self.memo_ttl)
        if hit:
            ev["container_id"], ev["container_name"] = hit
        return ev

    def _resolve(self, **keys):
        """The resolver's answer; a failure in it costs the attribution, not the event."""
        try:
            return self.resolver.resolve(**keys)
        except Exception as exc:  # noqa: BLE001 - discovery reads others' /proc and state files
            self.attribution_errors += 1
            self.last_attribution_error = f"{type(exc).__name__}: {exc}"
            return None

    def add(self, ev):
        """Queue one probe record (attributed here unless already attributed); returns
        it as stored (the table's columns, anything else folded into `detail`), or None
        when it is held for an owner: `tick()` returns it when it is released."""
        attributed = "container_id" not in ev
        if attributed:
            self.attribute(ev)
        if self.session_id is not None:
            ev["session_id"] = self.session_id
        row = {k: ev.get(k) for k in COLUMNS}
        extra = {k: v for k, v in ev.items() if k not in COLUMNS and k != "id"}
        if extra:  # e.g. a link record's ifindex/ifname: kept in detail
            row["detail"] = {**extra, **(row["detail"] or {})}
        if attributed and self._owner_may_appear(row):
            stored = dict(row)  # stored now as it is; replaced if an owner appears
            self._queue(stored)
            self._held.append((time.monotonic() + HOLD_S, row, stored))
            return None
        self._queue(row)
        return row

    def _queue(self, row):
        self._batch.append(row)
        if len(self._batch) >= self.batch_size:
            self.flush()

    def _owner_may_appear(self, row):
        """True when a container not found yet may own this record better than its
        attribution now (discovery's `settled`), and the record is about a cgroup below
        the root or its namespaces are not the host's."""
        host = getattr(self.resolver, "host", None)  # discovery's: the host's namespaces
        if not host or len(self._held) >= HOLD_MAX:
            return False
        hit = (row["container_id"], row["container_name"]) if row["container_id"] else None
        d = row["detail"] or {}
        about_cgroup = row["kind"].startswith("cgroup_") and d.get("path", "/") != "/"
        if self.resolver.settled(hit, row["pidns"] or None, about_cgroup):
            return False
        return bool(
            about_cgroup
            or (row["netns"] and row["netns"] != host.get("net"))
            or (row["pidns"] and row["pidns"] != host.get("pid"))
        )

    def tick(self):
        """Attribute held records again (a new container is found within discovery's
        refresh interval), flush if the batch is older than flush_interval; returns the
        held records released now, attributed or not (their time is up)."""
        released = self._release() if self._held else []
        if self._batch and time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()
        return released

    def release_all(self):
        """Every held record, released now (attributed as well as discovery can)."""
        return self._release(final=True) if self._held else []

    def _release(self, final=False):
        """Held records attributed again after each discovery scan (one a second at most):
        those a runtime's container now owns, and those whose time is up, are queued and
        returned."""
        resolver = self.resolver
        resolver.refresh_if_due()
        again = resolver.generation != self._retried
        self._retried = resolver.generation
        now = time.monotonic()
        out, keep, owned = [], [], []
        for deadline, row, stored in self._held:
            if again:
                self.attribute(row, fresh=True)
            if final or deadline <= now or not self._owner_may_appear(row):
                out.append(row)
                if row["container_id"]:
                    owned.append((row, stored))
            else:
                keep.append((deadline, row, stored))
        self._held = keep
        pending = {id(r) for r in self._batch} if owned else set()
        written = []
        for row, stored in owned:
            owner = {"container_id": row["container_id"], "container_name": row["container_name"]}
            if id(stored) in pending:
                stored.update(owner)  # not written yet: written attributed
            else:  # replaced by an attributed copy (after its own batch: the queue's order)
                written.append({**stored, **owner})
        if written:
            if self._writer:
                self._writer.queue.put(("reattributed", written))
            else:
                self.store.reattribute_events(written)
        return out

    @property
    def written(self):
        """Rows written so far (in threaded mode: by the writer, so far)."""
        return self._written + (self._writer.written if self._writer else 0)

    @property
    def write_error(self):
        return self._writer.error if self._writer else self._write_error

    def flush(self):
        batch, self._batch = self._batch, []
        if batch:
            if self._writer:
                self._writer.queue.put(("events", batch))
            else:
                self._written += self.store.insert_events(batch)
        self._last_flush = time.monotonic()

    def close(self):
        """Write what is queued (held records too); in threaded mode wait for the writer
        to finish."""
        if self._held:
            self._release(final=True)
        self.flush()
        if self._writer:
            writer, self._writer = self._writer, None  # later writes go direct: idempotent
            writer.queue.put(None)
            writer.join()
            self._written += writer.written
            self._write_error = writer.error

    def record_loss(self, probe, lost, lag_ns=0, force=False):
        """Store a probe_loss row when `lost` grew since the last row (or force)."""
        prev = self._loss_seen.get(probe)
        if prev is not None and lost == prev and not force:
            return
        self._loss_seen[probe] = lost
        row = {
            "ts_ns": time.time_ns(),
            "probe": probe,
            "lost": lost,
            "session_id": self.session_id,
            "lag_ns": int(lag_ns),
            "detail": json.dumps({"new": lost - (prev or 0)}),
        }
        if self._writer:
            self._writer.queue.put(("probe_loss", [row]))
        else:
            self.store.insert_probe_loss([row])


def make_probe(name, **kw):
    if name == "process":
        from ..probes.process import ProcessProbe

        return ProcessProbe(**kw)
    if name == "cgroup":
        from ..probes.cgroups import CgroupProbe

        return CgroupProbe(**kw)
    if name == "links":  # probes engineer B's netlink monitor: every named netns too
        from ..probes.links import LinkProbe

        return LinkProbe(**{"all_named": True, **kw})
    raise UsageError(f"unknown probe {name!r}: choose from {', '.join(PROBES)}")


class Follower:
    """Run the event probes here, attribute and record what they see (not this
    process's own records).

        with Follower(root, store) as f:      # f.messages: what was skipped and why
            for ev in f.poll(200): ...
    Probes that cannot load are skipped with a message; UnavailableError only when
    none can."""

    def __init__(
        self,
        root,
        store,
        probes=PROBES,
        container=None,
        kinds=None,
        recorder=None,
        probe_kwargs=None,
        filters=None,
    ):
        self.root = root
        self.store = store
        self.names = list(probes)
        self.container = container
        self.kinds = set(kinds) if kinds else None
        self.recorder = recorder or Recorder(store, _resolver(root), threaded=True)
        self.probe_kwargs = probe_kwargs or {}
        self.filters = {k: dict(v) for k, v in (filters or {}).items()}  # probe -> filters
        self.probes = []
        self.messages = []
        self._last_loss = 0.0
        self._backlog = []
        self._me = os.getpid()

    def start(self):
        """Start every probe that can start (returns self); on an unexpected error,
        undo what was started and re-raise."""
        try:
            return self._start()
        except BaseException:
            for probe in self.probes:
                probe.stop()
            self.probes = []
            self.recorder.close()
            raise

    def _start(self):
        errors = []
        filters = {k: dict(v) for k, v in self.filters.items()}
        namespaces = self._container_namespaces()
        if namespaces:
            # a prefilter in the kernel (a superset); attribution still decides below
            filters.setdefault("process", {})["namespaces"] = sorted(namespaces)
        for name in self.names:
            probe = make_probe(name, **self.probe_kwargs.get(name, {}))
            try:
                probe.start(filters.get(name))
            except (UnavailableError, OSError) as exc:
                msg = str(exc)
                if not msg.startswith(f"{getattr(probe, 'NAME', name)} probe"):
                    msg = f"{name} probe: {msg}"
                errors.append(msg)
                self.messages.append(f"skipped: {msg}")
                continue
            self.messages.extend(getattr(probe, "messages", []))
            self.probes.append(probe)
        if not self.probes:
            raise UnavailableError("events: no probe could start: " + "; ".join(errors))
        # What the first probes saw while the later ones compiled is stored, and not
        # counted as reader lag: lag measures the steady state from here on.
        self._backlog = []
        for probe in self.probes:
            for ev in probe.events(0):
                row = self._take(ev)
                if row is not None:
                    self._backlog.append(row)
            if hasattr(probe, "max_lag_ns"):
                probe.max_lag_ns = 0
        return self

    def _container_namespaces(self):
        """The followed container's own net/pid namespace inodes, when it runs now."""
        resolver = self.recorder.resolver
        if not self.container or resolver is None:
            return None
        try:
            found = [
                d
                for d in resolver.refresh()  # the Discovered records
                if d.name == self.container or d.id.startswith(self.container)
            ]
        except Exception:  # noqa: BLE001 - discovery failed: nothing to follow
            return None
        if len(found) != 1:
            return None
        host = getattr(resolver, "host", {}) or {}
        d = found[0]
        return {
            ino
            for ino in (d.netns, d.pidns)
            if ino and ino not in (host.get("net"), host.get("pid"))
        } or None

    def ready_line(self):
        """One line naming what is attached (printed when events start to flow)."""
        parts = [
            f"{p.NAME} ({len(p.attached)} tracepoints)"
            if hasattr(p, "attached")
            else f"{p.NAME} ({len(getattr(p, 'watched', ()))} namespaces)"
            for p in self.probes
        ]
        return "listening: " + ", ".join(parts)

    def _take(self, ev):
        """Record one probe record; returns the row to deliver now, or None: held for an
        owner (delivered when released), not wanted, or this process's own (the observer
        joining a namespace to watch its links is not an event of that container)."""
        if ev.get("pid") == self._me:
            return None
        row = self.recorder.add(ev)
        return row if row is not None and self._wanted(row) else None

    def _wanted(self, ev):
        if self.kinds and ev["kind"] not in self.kinds:
            return False
        if self.container:
            c = self.container
            return bool(
                ev.get("container_name") == c or (ev.get("container_id") or "").startswith(c)
            )
        return True

    def poll(self, timeout_ms=200):
        """Events seen since the last poll (attributed, recorded, filtered)."""
        out, self._backlog = self._backlog, []
        for i, probe in enumerate(self.probes):
            for ev in probe.events(timeout_ms if i == 0 else 0):
                row = self._take(ev)
                if row is not None:
                    out.append(row)
        out += [row for row in self.recorder.tick() if self._wanted(row)]
        if time.monotonic() - self._last_loss >= 5:
            self.record_loss()
        return out

    def drain(self):
        """The held records this follower still owes its reader, released now: what a
        follower that stops delivers last."""
        return [row for row in self.recorder.release_all() if self._wanted(row)]

    def record_loss(self, force=False):
        self._last_loss = time.monotonic()
        for probe in self.probes:
            self.recorder.record_loss(
                probe.NAME, probe.lost, getattr(probe, "max_lag_ns", 0), force=force
            )

    def loss_summary(self):
        lines = [
            f"{p.NAME} probe: {p.lost} records lost, max reader lag "
            f"{getattr(p, 'max_lag_ns', 0) / 1e6:.1f} ms"
            for p in self.probes
        ]
        if self.recorder.write_error:
            lines.append(f"writing events failed: {self.recorder.write_error}")
        if self.recorder.attribution_errors:
            lines.append(
                f"attribution failed for {self.recorder.attribution_errors} events "
                f"(last: {self.recorder.last_attribution_error}); they are stored "
                "without a container"
            )
        return lines

    def stop(self):
        if self.probes:
            self.record_loss(force=True)
        self.recorder.close()
        for probe in self.probes:
            probe.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _decode(row):
    row = dict(row)
    if isinstance(row.get("detail"), str):
        try:
            row["detail"] = json.loads(row["detail"])
        except ValueError:
            pass
    return row


def known_kinds():
    """Every event kind stored: the probes' (their KINDS, imported only when asked) and
    `dns`."""
    from ..probes import cgroups, links, process

    kinds = set(process.KINDS.values()) | set(cgroups.KINDS.values()) | set(links.KINDS)
    return kinds | {"dns"}  # the DNS lookups a trace stores (trace/dns.py)


PACKET_KINDS = ("flow", "drop")


def query(
    store,
    container=None,
    since=None,
    kinds=None,
    limit=100,
    offset=0,
    until=None,
    after_id=None,
    newest_first=False,
    packets=False,
):
    """Stored events, oldest first (or newest first): filter by container (name, id or id
    prefix), since/until (epoch ns or anything parse_since takes), kinds, and rows after
    a row id (for live tails). `packets` adds each traced connection (`flow`, at its first
    packet) and each explained drop (`drop`) of the container's trace sessions."""
    from ..store import TimelineQuery

    packets = packets and after_id is None
    since_ns, until_ns = parse_since(since), parse_since(until)
    if kinds:
        kinds = list(kinds)
        unknown = sorted(set(kinds) - known_kinds() - (set(PACKET_KINDS) if packets else set()))
        if unknown:
            raise UsageError(
                f"unknown event kind {unknown[0]!r}", f"kinds: {', '.join(sorted(known_kinds()))}"
            )
    rows = store.timeline(
        TimelineQuery(
            container=container or None,
            since_ns=since_ns,
            until_ns=until_ns,
            kinds=kinds or None,
            limit=limit,
            offset=offset,
            after_id=after_id,
            newest_first=newest_first,
            packets=packets,
        )
    )
    return [_decode(r) for r in rows]


def summary(ev):
    """A short human line for the detail of one event."""
    d = ev.get("detail") or {}
    k = ev["kind"]
    if k == "exec":
        argv = d.get("argv") or [d.get("filename", "")]
        return " ".join(argv) + (" ..." if d.get("argv_truncated") else "")
    if k == "exit":
        if d.get("signal"):
            return f"killed by signal {d['signal']}" + (" (core)" if d.get("core_dumped") else "")
        return f"exit {d['exit_code']}" if d.get("exit_code") is not None else "exit ?"
    if k == "fork":
        s = f"parent {d.get('parent_pid')}"
        if d.get("namespaces"):
            s += " new " + ",".join(d["namespaces"])
        return s + (" thread" if d.get("thread") else "")
    if k in ("clone", "unshare"):
        return "new " + (",".join(d.get("namespaces") or []) or "-")
    if k == "setns":
        target = d.get("target", f"fd {d.get('fd')}")
        return f"join {','.join(d.get('nstype') or [])} {target}"
    if k == "oom":
        return f"OOM victim {ev['pid']} ({d.get('victim_comm')}) anon-rss {d.get('anon_rss_kb')} kB"
    if k.startswith("link_"):
        rest = {x: y for x, y in d.items() if x not in ("ifindex", "ifname", "netns_label")}
        return f"{ev.get('ifname') or d.get('ifname')} in {d.get('netns_label')} " + " ".join(
            f"{x}={y}" for x, y in sorted(rest.items())
        )
    if k == "flow":
        s = f"{d.get('proto')} {d.get('src')}:{d.get('sport')} -> {d.get('dst')}:{d.get('dport')}"
        return s + (f"  {d['nat']}" if d.get("nat") else "")
    if k == "drop":
        return f"dropped: {d.get('reason')} at {d.get('location')}"
    if k == "dns":  # a lookup a trace saw (trace/dns.py writes the text of its live line)
        ans = d.get("rcode") or "no reply"
        if ans == "NOERROR":
            ans = ", ".join(d.get("answers") or []) or "no records"
        how = " ".join(str(x) for x in (d.get("proto"), d.get("how")) if x)
        via = d.get("upstream") or d.get("server") or ""
        return (
            f"{d.get('client')} -> {d.get('qtype')} {d.get('qname')}? {ans} "
            f"({d.get('source')}, {how}{' ' + via if via else ''})"
        )
    if k.startswith("cgroup_"):
        ctl = d.get("controllers") or ("v2" if d.get("version") == 2 else "")
        return f"{ctl}:{d.get('path')} id {d.get('id')}"
    return json.dumps(d, sort_keys=True)


def format_line(ev):
    """80-column text line: time, container, kind, pid, comm, summary."""
    ts = datetime.fromtimestamp(ev["ts_ns"] / 1e9).strftime("%H:%M:%S.%f")[:-3]
    who = (ev.get("container_name") or "-")[:16]
    pid = ev.get("pid") or "-"
    return (
        f"{ts} {who:<16} {ev['kind']:<13} {pid:>7} {(ev.get('comm') or '-')[:15]:<15} {summary(ev)}"
    )
