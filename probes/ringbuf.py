"""The shared shape of a tracepoint probe that reports through a BPF ring buffer.

A probe subclass names its C file, its tracepoints (each enabled by a -D macro)
and how to turn one raw record into a dict. This base class:
- checks each tracepoint exists in tracefs before compiling, and compiles only the
  handlers that can attach (a missing one is skipped with a plain message);
- attaches each tracepoint itself (bcc's auto-attach would fail the whole program
  on the first refusal) and skips any the kernel refuses, keeping the rest;
- counts loss: records the kernel could not put in the ring buffer are counted in a
  per-CPU array (`lost`), and the reader lag (now - record timestamp) is tracked;
- detaches everything on stop(). bcc tracepoints are perf-event fds owned by this
  process, so a killed process leaves nothing attached either.
"""

import os
import time
from pathlib import Path

from ..errors import UnavailableError
from . import capabilities

RINGBUF_PAGES = 512  # 2 MiB per probe


def _tp_exists(tracefs, tp):
    category, event = tp.split(":", 1)
    return os.path.exists(os.path.join(tracefs, "events", category, event, "format"))


def _monotonic_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class TracepointProbe:
    """Base class: subclasses set NAME, SOURCE, TRACEPOINTS and implement decode()."""

    NAME = "probe"
    SOURCE = None           # path of the .bpf.c file
    TRACEPOINTS = {}        # "category:event" -> -D macro that compiles its handler

    def __init__(self, tracepoints=None, ring_pages=RINGBUF_PAGES):
        self.tracepoints = dict(tracepoints if tracepoints is not None else self.TRACEPOINTS)
        self.ring_pages = ring_pages
        self.attached = []    # tracepoints delivering events
        self.skipped = []     # (tracepoint, reason)
        self.messages = []    # one plain line per skipped tracepoint
        self.max_lag_ns = 0   # largest (read time - event time) seen
        self._bpf = None
        self._pending = []
        self._lost_seen = 0
        self.clock_offset_ns = 0  # add to a record's bpf_ktime_get_ns() for wall-clock ns

    # -- subclass hooks --------------------------------------------------------------
    def cflags(self, filters):
        """Extra -D flags for this probe."""
        return []

    def configure(self, bpf, filters):
        """Set config maps after load, before attach."""

    def task_fields(self, t, kind):
        """The common event columns from a `struct task_ids` (task_fields.bpf.c)."""
        return {
            "ts_ns": t.ts_ns + self.clock_offset_ns,
            "kind": kind,
            "pid": t.pid,
            "ppid": t.ppid,
            "comm": cstr(t.comm),
            "cgroup_id": t.cgroup_id,
            "netns": t.netns,
            "pidns": t.pidns,
            "mntns": t.mntns,
        }

    def decode(self, raw):
        """One ring buffer record (ctypes struct) -> event dict, or None to drop it."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------
    def _skip(self, tp, reason):
        self.skipped.append((tp, reason))
        self.messages.append(f"{self.NAME} probe: skipped tracepoint {tp}: {reason}")

    def start(self, filters=None):
        """Compile, attach what this kernel allows, and return self once events flow.

        Raises UnavailableError when not one tracepoint could attach."""
        if self._bpf is not None:
            return self
        filters = dict(filters or {})
        tracefs = capabilities.tracefs_dir()
        if tracefs is None:
            raise UnavailableError(
                f"{self.NAME} probe: tracefs is not mounted",
                "mount -t tracefs nodev /sys/kernel/tracing")
        try:
            from bcc import BPF
        except ImportError as exc:
            raise UnavailableError(f"{self.NAME} probe: bcc is not importable ({exc})",
                                   "install python3-bpfcc") from None

        class _ManualAttachBPF(BPF):
            def _trace_autoload(self):
                pass  # attached one by one below, so one refusal does not fail the rest

        wanted = {}
        for tp, macro in self.tracepoints.items():
            if _tp_exists(tracefs, tp):
                wanted[tp] = macro
            else:
                self._skip(tp, f"not in {tracefs}/events (this kernel lacks it)")
        if not wanted:
            raise UnavailableError(f"{self.NAME} probe: none of its tracepoints exist here")
        flags = [f"-DPI_RINGBUF_PAGES={self.ring_pages}", f"-I{Path(self.SOURCE).parent}"]
        flags += [f"-D{m}" for m in sorted(set(wanted.values()))]
        flags += self.cflags(filters)
        try:
            bpf = _ManualAttachBPF(src_file=str(self.SOURCE), cflags=flags)
        except Exception as exc:
            raise UnavailableError(f"{self.NAME} probe: BPF program failed to load: "
                                   f"{str(exc).strip().splitlines()[0]}") from None
        self.configure(bpf, filters)
        for tp in wanted:
            category, event = tp.split(":", 1)
            fn = f"tracepoint__{category}__{event}"
            try:
                bpf.attach_tracepoint(tp=tp, fn_name=fn)
                self.attached.append(tp)
            except Exception as exc:
                self._skip(tp, f"kernel refused the attach ({str(exc).strip()})")
        if not self.attached:
            bpf.cleanup()
            raise UnavailableError(f"{self.NAME} probe: no tracepoint could attach: "
                                   + "; ".join(r for _, r in self.skipped))
        bpf["events"].open_ring_buffer(self._on_record)
        self.clock_offset_ns = boot_time_ns()
        self._bpf = bpf
        return self

    def _on_record(self, ctx, data, size):
        raw = self._bpf["events"].event(data)
        try:
            ev = self.decode(raw)
        except Exception:  # never let one odd record stop the reader
            ev = None
        if ev is not None:
            self._pending.append(ev)
        return 0

    def events(self, timeout_ms=100):
        """Wait up to timeout_ms for records; return the decoded event dicts (maybe [])."""
        if self._bpf is None:
            raise UnavailableError(f"{self.NAME} probe: not started")
        self._bpf.ring_buffer_poll(timeout_ms)
        out, self._pending = self._pending, []
        if out:
            now = time.time_ns()
            lag = now - min(ev["ts_ns"] for ev in out)
            if lag > self.max_lag_ns:
                self.max_lag_ns = lag
        return self.finish(out)

    def finish(self, batch):
        """Post-process a polled batch (subclasses may enrich from /proc)."""
        return batch

    @property
    def lost(self):
        """Records the kernel dropped because the ring buffer was full (since start)."""
        if self._bpf is None:
            return self._lost_seen
        table = self._bpf["lost"]
        total = int(table.sum(table.Key(0)).value)
        self._lost_seen = total
        return total

    def stop(self):
        """Detach everything and free the maps. Idempotent."""
        if self._bpf is not None:
            self.lost  # keep the final count readable after stop
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self):
        return self._bpf is not None


def cstr(value):
    """A char[] field from a decoded record as str (ctypes gives bytes cut at NUL)."""
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")


def btf_cflags(offsets):
    """-D flags that give task_fields.bpf.c the running kernel's struct offsets."""
    if not offsets:
        return []
    return ["-DPI_HAVE_BTF"] + [f"-D{k}={v}" for k, v in sorted(offsets.items())]


def boot_time_ns():
    """CLOCK_REALTIME - CLOCK_MONOTONIC now: add to bpf_ktime_get_ns() for wall-clock ns."""
    return time.time_ns() - _monotonic_ns()
