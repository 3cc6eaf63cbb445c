"""cgroup events from tracepoints: cgroup_mkdir, cgroup_rmdir, cgroup_attach_task, and
cgroup2's freezer: cgroup_freeze, cgroup_unfreeze.

    with CgroupProbe() as probe:
        for ev in probe.events(100): ...
Kinds: cgroup_mkdir, cgroup_rmdir, cgroup_attach (pid = the moved task),
cgroup_freeze and cgroup_unfreeze (`pause`/`unpause`: cgroup.freeze written; the v1
freezer has no tracepoint). detail:
{"id", "level", "path" (relative to the hierarchy root), "hierarchy" (id; 0 is
cgroup v2), "version" (1|2), "controllers" (e.g. "memory", "name=systemd", ""
for v2), "mount" (where that hierarchy is mounted here, when known), and for an
attach "actor_pid" (who wrote cgroup.procs)}. Works the same on v1 and v2: the
tracepoints fire for every hierarchy.
"""

import ctypes
from pathlib import Path

from . import btf
from .process import proc_namespaces, proc_ppid
from .ringbuf import (
    TASK_IDS_FIELDS,
    TaskOffsets,
    Tpf,
    TracepointProbe,
    cstr,
    task_offsets,
)

SOURCE = Path(__file__).with_name("cgroups.bpf.c")
KINDS = {
    1: "cgroup_mkdir",
    2: "cgroup_rmdir",
    3: "cgroup_attach",
    4: "cgroup_freeze",
    5: "cgroup_unfreeze",
}


class DirFields(ctypes.Structure):
    _fields_ = [("root", Tpf), ("id", Tpf), ("level", Tpf), ("path", Tpf)]


class CgConfig(ctypes.Structure):
    """cgroups.bpf.c `struct cg_config` (.rodata)."""

    _fields_ = [
        ("task", TaskOffsets),
        ("mkdir", DirFields),
        ("rmdir", DirFields),
        ("attach", DirFields),
        ("attach_pid", Tpf),
        ("attach_comm", Tpf),
        ("freeze", DirFields),
        ("unfreeze", DirFields),
    ]


class CgEvent(ctypes.Structure):
    """cgroups.bpf.c `struct cg_event` (one ring buffer record)."""

    _fields_ = TASK_IDS_FIELDS + [
        ("id", ctypes.c_uint64),
        ("root", ctypes.c_int32),
        ("level", ctypes.c_int32),
        ("kind", ctypes.c_uint32),
        ("actor_pid", ctypes.c_uint32),
        ("path", ctypes.c_char * 192),
        ("task_comm", ctypes.c_char * 16),
    ]


def _dir_fields(member):
    return [
        (f"{member}.root", "root", False),
        (f"{member}.id", "id", False),
        (f"{member}.level", "level", False),
        (f"{member}.path", "path", True),
    ]


def hierarchies():
    """{hierarchy id: (controllers, mount point or None)} for this machine."""
    out: dict[int, list] = {}  # [controllers, mount point or None]
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                num, controllers, _path = line.rstrip("\n").split(":", 2)
                out[int(num)] = [controllers, None]
    except OSError:
        pass
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, right = line.split(" - ", 1)
                fstype, _src, opts = right.split()[:3]
                mnt = left.split()[4]
                if fstype == "cgroup2":
                    out.setdefault(0, ["", None])[1] = out.get(0, ["", None])[1] or mnt
                elif fstype == "cgroup":
                    mounted = set(opts.split(","))
                    for hid, entry in out.items():
                        if hid and entry[1] is None and set(entry[0].split(",")) <= mounted:
                            entry[1] = mnt
    except OSError:
        pass
    return {hid: (c, m) for hid, (c, m) in out.items()}


class CgroupProbe(TracepointProbe):
    """cgroup mkdir/rmdir/attach events on every hierarchy, freeze/unfreeze on cgroup2."""

    NAME = "cgroup"
    SOURCE = SOURCE
    RECORD = CgEvent
    CONFIG = CgConfig
    FIELDS = {
        "cgroup:cgroup_mkdir": _dir_fields("mkdir"),
        "cgroup:cgroup_rmdir": _dir_fields("rmdir"),
        "cgroup:cgroup_attach_task": [
            ("attach.root", "dst_root", False),
            ("attach.id", "dst_id", False),
            ("attach.level", "dst_level", False),
            ("attach.path", "dst_path", True),
            ("attach_pid", "pid", False),
            ("attach_comm", "comm", True),
        ],
        "cgroup:cgroup_freeze": _dir_fields("freeze"),
        "cgroup:cgroup_unfreeze": _dir_fields("unfreeze"),
    }
    TRACEPOINTS = {
        "cgroup:cgroup_mkdir": "PI_MKDIR",
        "cgroup:cgroup_rmdir": "PI_RMDIR",
        "cgroup:cgroup_attach_task": "PI_ATTACH",
        "cgroup:cgroup_freeze": "PI_FREEZE",
        "cgroup:cgroup_unfreeze": "PI_UNFREEZE",
    }

    def __init__(self, tracepoints=None, ring_pages=None, use_btf=True):
        kw = {} if ring_pages is None else {"ring_pages": ring_pages}
        super().__init__(tracepoints, **kw)
        self.offsets = btf.offsets() if use_btf else None
        self._hier = hierarchies()

    def make_config(self, filters):
        cfg = CgConfig()
        cfg.task = task_offsets(self.offsets)
        return cfg

    def decode(self, r):
        ev = self.task_fields(r, KINDS.get(r.kind, str(r.kind)))
        if r.root not in self._hier:
            self._hier = hierarchies()
        controllers, mount = self._hier.get(r.root, (None, None))
        path = cstr(r.path)
        detail = {
            "id": r.id,
            "level": r.level,
            "path": path,
            "hierarchy": r.root,
            "version": 2 if r.root == 0 else 1,
            "controllers": controllers,
            "mount": mount,
        }
        if ev["kind"] == "cgroup_attach":
            detail["actor_pid"] = r.actor_pid
            ev["comm"] = cstr(r.task_comm) or ev["comm"]
        ev["detail"] = detail
        return ev

    def finish(self, batch):
        for ev in batch:
            if not ev["netns"]:
                ns = proc_namespaces(ev["pid"])
                if ns:
                    ev["netns"], ev["pidns"], ev["mntns"] = ns
                    ev["detail"]["ns_source"] = "proc"
                else:
                    ev["detail"]["ns_source"] = "unknown"
            else:
                ev["detail"]["ns_source"] = "kernel"
            if not ev["ppid"]:
                ev["ppid"] = proc_ppid(ev["pid"]) or 0
        return batch
