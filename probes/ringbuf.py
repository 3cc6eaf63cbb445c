"""The shared shape of a tracepoint probe that reports through a BPF ring buffer.

A probe subclass names its C file (a libbpf object: compiled once by clang into the cache,
probes/bpfobj.py), its tracepoints, the tracepoint fields its C code reads and how to turn
one raw record into a dict. This base class:
- checks each tracepoint exists in tracefs and that its `format` has the fields the
  program reads; a missing one is skipped with a plain message and its program is not
  loaded (libbpf autoload), the rest load;
- puts the fields' offsets/sizes from that format (tracepoint.h `struct tpf`) into the
  object's .rodata with the subclass's settings, so one compiled object serves every
  kernel and every start, as bcc's per-start generated structs did;
- attaches each tracepoint itself and skips any the kernel refuses, keeping the rest;
- reads the ring buffer by mmap (a batch per poll, no per-record callback into Python);
- counts loss: records the kernel could not put in the ring buffer are counted in a
  per-CPU array (`lost`), and the reader lag (now - record timestamp) is tracked;
- detaches everything on stop(). libbpf tracepoint links are perf-event fds owned by
  this process, so a killed process leaves nothing attached either.
"""

import ctypes
import mmap
import os
import select
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import UnavailableError
from . import bpfobj, btf, capabilities

RINGBUF_PAGES = 512  # 2 MiB per probe


def _tp_exists(tracefs, tp):
    category, event = tp.split(":", 1)
    return os.path.exists(os.path.join(tracefs, "events", category, event, "format"))


def _monotonic_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# -- tracefs formats ---------------------------------------------------------------------
TPF_UNSIGNED, TPF_SIGNED, TPF_REL_LOC = 0, 1, 2


class Tpf(ctypes.Structure):
    """tracepoint.h `struct tpf`: one tracepoint field (size 0: absent)."""

    _fields_ = [("off", ctypes.c_uint16), ("size", ctypes.c_uint8), ("kind", ctypes.c_uint8)]


_formats: dict[tuple[str, str], dict[str, tuple]] = {}
_formats_lock = threading.Lock()


def tp_format(tracefs, tp):
    """{field name: (offset, size, signed, type)} from tracefs events/<cat>/<name>/format
    (cached per process; {} when it cannot be read)."""
    key = (tracefs, tp)
    with _formats_lock:
        if key in _formats:
            return _formats[key]
    category, event = tp.split(":", 1)
    fields = {}
    try:
        with open(os.path.join(tracefs, "events", category, event, "format")) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("field:"):
                    continue
                parts = dict(p.strip().split(":", 1) for p in line.split(";") if ":" in p)
                decl = parts["field"].strip()
                name = decl.split()[-1].split("[")[0]
                fields[name] = (
                    int(parts["offset"]),
                    int(parts["size"]),
                    parts.get("signed", "0").strip() == "1",
                    decl,
                )
    except (OSError, KeyError, ValueError):
        fields = {}
    with _formats_lock:
        _formats[key] = fields
    return fields


def field_spec(fields, name, string=False):
    """The Tpf for field `name` of a parsed format, or a reason string when unusable."""
    if name not in fields:
        return f"its format has no field {name}"
    off, size, signed, decl = fields[name]
    if string:
        if decl.startswith("__data_loc"):
            return Tpf(off, size, TPF_UNSIGNED)
        if decl.startswith("__rel_loc"):
            return Tpf(off, size, TPF_REL_LOC)
        return f"field {name} is not a dynamic string ({decl})"
    if size not in (1, 2, 4, 8) or off > 0xFFFF:
        return f"field {name} has size {size} at offset {off}"
    return Tpf(off, size, TPF_SIGNED if signed else TPF_UNSIGNED)


# -- kernel struct offsets as .rodata ----------------------------------------------------
# tracepoint.h `struct task_offsets`, in order: (C member, btf.offsets() key)
TASK_OFFSETS = [
    ("task_real_parent", "OFF_TASK_REAL_PARENT"),
    ("task_tgid", "OFF_TASK_TGID"),
    ("task_exit_code", "OFF_TASK_EXIT_CODE"),
    ("task_nsproxy", "OFF_TASK_NSPROXY"),
    ("task_thread_pid", "OFF_TASK_THREAD_PID"),
    ("task_mm", "OFF_TASK_MM"),
    ("mm_arg_start", "OFF_MM_ARG_START"),
    ("mm_arg_end", "OFF_MM_ARG_END"),
    ("nsproxy_net", "OFF_NSPROXY_NET"),
    ("nsproxy_mnt", "OFF_NSPROXY_MNT"),
    ("nsproxy_pid_children", "OFF_NSPROXY_PID_CHILDREN"),
    ("net_inum", "OFF_NET_INUM"),
    ("mntns_inum", "OFF_MNTNS_INUM"),
    ("pidns_inum", "OFF_PIDNS_INUM"),
    ("pid_level", "OFF_PID_LEVEL"),
    ("pid_numbers", "OFF_PID_NUMBERS"),
    ("upid_ns", "OFF_UPID_NS"),
    ("size_upid", "SIZE_UPID"),
    ("task_cgroups", "OFF_TASK_CGROUPS"),
    ("cssset_subsys", "OFF_CSSSET_SUBSYS"),
    ("css_cgroup", "OFF_CSS_CGROUP"),
    ("cgroup_kn", "OFF_CGROUP_KN"),
    ("kn_id", "OFF_KN_ID"),
    ("memory_cgrp_id", "MEMORY_CGRP_ID"),
]
MEMCG_KEYS = (
    "OFF_TASK_CGROUPS",
    "OFF_CSSSET_SUBSYS",
    "OFF_CSS_CGROUP",
    "OFF_CGROUP_KN",
    "OFF_KN_ID",
    "MEMORY_CGRP_ID",
)


class TaskOffsets(ctypes.Structure):
    _fields_ = [("have_btf", ctypes.c_uint32), ("have_memcg", ctypes.c_uint32)] + [
        (name, ctypes.c_uint32) for name, _ in TASK_OFFSETS
    ]


def task_offsets(offsets):
    """A TaskOffsets from btf.offsets() (None: have_btf 0)."""
    t = TaskOffsets()
    if not offsets:
        return t
    t.have_btf = 1
    t.have_memcg = int(all(k in offsets for k in MEMCG_KEYS))
    for name, key in TASK_OFFSETS:
        setattr(t, name, int(offsets.get(key, 0)))
    return t


# tracepoint.h TASK_IDS_FIELDS, for the ctypes records
TASK_IDS_FIELDS: list[Any] = [  # ctypes _fields_ entries
    ("ts_ns", ctypes.c_uint64),
    ("cgroup_id", ctypes.c_uint64),
    ("pid", ctypes.c_uint32),
    ("tid", ctypes.c_uint32),
    ("ppid", ctypes.c_uint32),
    ("netns", ctypes.c_uint32),
    ("pidns", ctypes.c_uint32),
    ("mntns", ctypes.c_uint32),
    ("comm", ctypes.c_char * 16),
]


class TracepointProbe:
    """Base class: subclasses set NAME, SOURCE, TRACEPOINTS, FIELDS, RECORD, CONFIG and
    implement decode()."""

    NAME = "probe"
    SOURCE: Path  # path of the .bpf.c file (a libbpf object)
    TRACEPOINTS: dict[str, str] = {}  # "category:event" -> a short name (kept for callers)
    # "category:event" -> [(cfg member path, field, is_string)]
    FIELDS: dict[str, list[tuple[str, str, bool]]] = {}
    RECORD: type[ctypes.Structure]  # one ring buffer record
    CONFIG: type[ctypes.Structure]  # the object's .rodata `cfg`

    def __init__(self, tracepoints=None, ring_pages=RINGBUF_PAGES):
        self.tracepoints = dict(tracepoints if tracepoints is not None else self.TRACEPOINTS)
        self.ring_pages = ring_pages
        self.attached = []  # tracepoints delivering events
        self.skipped = []  # (tracepoint, reason)
        self.messages = []  # one plain line per skipped tracepoint
        self.max_lag_ns = 0  # largest (read time - event time) seen
        self._obj: bpfobj.BpfObject | None = None
        self._reader: Any = None  # packets.RingReader once started
        self._poll: select.poll | None = None
        self._lost_seen = 0
        self.clock_offset_ns = 0  # add to a record's bpf_ktime_get_ns() for wall-clock ns

    # -- subclass hooks --------------------------------------------------------------
    def make_config(self, filters):
        """The .rodata config (a CONFIG instance) before the field specs are filled in."""
        return self.CONFIG()

    def configure(self, obj, filters):
        """Fill maps after load, before attach (obj: bpfobj.BpfObject)."""

    def task_fields(self, t, kind):
        """The common event columns from a record's task_ids (tracepoint.h)."""
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
        """One ring buffer record (RECORD instance) -> event dict, or None to drop it."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------
    def _skip(self, tp, reason):
        self.skipped.append((tp, reason))
        self.messages.append(f"{self.NAME} probe: skipped tracepoint {tp}: {reason}")

    @staticmethod
    def program_name(tp):
        category, event = tp.split(":", 1)
        return f"tracepoint__{category}__{event}"

    def start(self, filters=None):
        """Load the cached object, attach what this kernel allows, and return self once
        events flow. Raises UnavailableError when not one tracepoint could attach."""
        if self._obj is not None:
            return self
        filters = dict(filters or {})
        tracefs = capabilities.tracefs_dir()
        if tracefs is None:
            raise UnavailableError(
                f"{self.NAME} probe: tracefs is not mounted",
                "mount -t tracefs nodev /sys/kernel/tracing",
            )
        cfg = self.make_config(filters)
        wanted = []
        for tp in self.tracepoints:
            if not _tp_exists(tracefs, tp):
                self._skip(tp, f"not in {tracefs}/events (this kernel lacks it)")
                continue
            fmt = tp_format(tracefs, tp)
            why = None
            for member, field, string in self.FIELDS.get(tp, ()):
                spec = field_spec(fmt, field, string)
                if isinstance(spec, str):
                    why = spec
                    break
                _set_member(cfg, member, spec)
            if why:
                self._skip(tp, f"{why} (the probe reads it)")
                continue
            wanted.append(tp)
        if not wanted:
            raise UnavailableError(f"{self.NAME} probe: none of its tracepoints exist here")
        try:
            obj = bpfobj.BpfObject.open(
                self.SOURCE,
                rodata=bytes(cfg),
                max_entries={"events": self.ring_pages * mmap.PAGESIZE},
                programs={self.program_name(tp) for tp in wanted},
            )
        except UnavailableError as exc:
            raise UnavailableError(
                f"{self.NAME} probe: BPF program failed to load: {exc.message}", exc.hint
            ) from None
        try:
            for tp in list(wanted):
                if not obj.has_program(self.program_name(tp)):
                    self._skip(tp, f"{Path(self.SOURCE).name} has no handler for it")
                    wanted.remove(tp)
            try:
                obj.load()
            except UnavailableError as exc:
                raise UnavailableError(
                    f"{self.NAME} probe: BPF program failed to load: {exc.message}", exc.hint
                ) from None
            self.configure(obj, filters)
            for tp in wanted:
                category, event = tp.split(":", 1)
                try:
                    obj.attach_tracepoint(self.program_name(tp), category, event)
                    self.attached.append(tp)
                except OSError as exc:
                    self._skip(tp, f"kernel refused the attach ({exc.strerror or exc})")
            if not self.attached:
                raise UnavailableError(
                    f"{self.NAME} probe: no tracepoint could attach: "
                    + "; ".join(r for _, r in self.skipped)
                )
            from .packets import RingReader

            fd = obj.map_fd("events")
            self._reader = RingReader(fd, self.ring_pages * mmap.PAGESIZE)
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)
        except BaseException:
            obj.close()
            self._reader = None
            raise
        self.clock_offset_ns = boot_time_ns()
        self._obj = obj
        return self

    def _read(self):
        size = ctypes.sizeof(self.RECORD)
        out = []
        for raw in self._reader.read():
            if len(raw) < size:
                continue
            try:
                ev = self.decode(self.RECORD.from_buffer_copy(raw))
            except Exception:  # noqa: BLE001 never let one odd record stop the reader
                ev = None
            if ev is not None:
                out.append(ev)
        return out

    def events(self, timeout_ms=100):
        """Wait up to timeout_ms for records; return the decoded event dicts (maybe [])."""
        if self._obj is None:
            raise UnavailableError(f"{self.NAME} probe: not started")
        out = self._read()
        if not out and timeout_ms:
            deadline = _monotonic_ns() + int(timeout_ms) * 1_000_000
            while not out:
                left = (deadline - _monotonic_ns()) // 1_000_000
                if left <= 0:
                    break
                if self._poll is None or not self._poll.poll(left):
                    break
                out = self._read()
                if not out:
                    time.sleep(0.001)  # woken by a record still being written
        if out:
            now = time.time_ns()
            lag = now - min(ev["ts_ns"] for ev in out)
            self.max_lag_ns = max(self.max_lag_ns, lag)
        return self.finish(out)

    def finish(self, batch):
        """Post-process a polled batch (subclasses may enrich from /proc)."""
        return batch

    @property
    def lost(self):
        """Records the kernel dropped because the ring buffer was full (since start)."""
        if self._obj is None:
            return self._lost_seen
        self._lost_seen = bpfobj.percpu_sum(self._obj.map_fd("lost"))
        return self._lost_seen

    def prog_fds(self):
        """The fds of this probe's loaded programs (tests find their ids through them)."""
        return self._obj.program_fds() if self._obj else []

    def stop(self):
        """Detach everything and free the maps. Idempotent."""
        if self._obj is not None:
            _ = self.lost  # keep the final count readable after stop
            if self._reader:
                self._reader.close()
                self._reader = None
            self._poll = None
            self._obj.close()
            self._obj = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self):
        return self._obj is not None


def _set_member(obj, path, value):
    """Set a dotted member path of a ctypes struct (e.g. "mkdir.root")."""
    *parents, last = path.split(".")
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, last, value)


def cstr(value):
    """A char[] field from a decoded record as str (ctypes gives bytes cut at NUL)."""
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")


def boot_time_ns():
    """CLOCK_REALTIME - CLOCK_MONOTONIC now: add to bpf_ktime_get_ns() for wall-clock ns."""
    return time.time_ns() - _monotonic_ns()


def offsets_or_none(use_btf):
    """btf.offsets() when asked for and usable, else None."""
    return btf.offsets() if use_btf else None
