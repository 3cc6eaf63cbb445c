"""cgroup events from tracepoints: cgroup_mkdir, cgroup_rmdir, cgroup_attach_task.

    with CgroupProbe() as probe:
        for ev in probe.events(100): ...
Kinds: cgroup_mkdir, cgroup_rmdir, cgroup_attach (pid = the moved task). detail:
{"id", "level", "path" (relative to the hierarchy root), "hierarchy" (id; 0 is
cgroup v2), "version" (1|2), "controllers" (e.g. "memory", "name=systemd", ""
for v2), "mount" (where that hierarchy is mounted here, when known), and for an
attach "actor_pid" (who wrote cgroup.procs)}. Works the same on v1 and v2: the
tracepoints fire for every hierarchy.
"""

from pathlib import Path

from . import btf
from .process import proc_namespaces, proc_ppid
from .ringbuf import TracepointProbe, btf_cflags, cstr

SOURCE = Path(__file__).with_name("cgroups.bpf.c")
KINDS = {1: "cgroup_mkdir", 2: "cgroup_rmdir", 3: "cgroup_attach"}


def hierarchies():
    """{hierarchy id: (controllers, mount point or None)} for this machine."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                hid, controllers, _path = line.rstrip("\n").split(":", 2)
                out[int(hid)] = [controllers, None]
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
                    opts = set(opts.split(","))
                    for hid, entry in out.items():
                        if hid and entry[1] is None and set(entry[0].split(",")) <= opts:
                            entry[1] = mnt
    except OSError:
        pass
    return {hid: (c, m) for hid, (c, m) in out.items()}


class CgroupProbe(TracepointProbe):
    """cgroup mkdir/rmdir/attach events on every hierarchy."""

    NAME = "cgroup"
    SOURCE = SOURCE
    TRACEPOINTS = {
        "cgroup:cgroup_mkdir": "PI_MKDIR",
        "cgroup:cgroup_rmdir": "PI_RMDIR",
        "cgroup:cgroup_attach_task": "PI_ATTACH",
    }

    def __init__(self, tracepoints=None, ring_pages=None, use_btf=True):
        kw = {} if ring_pages is None else {"ring_pages": ring_pages}
        super().__init__(tracepoints, **kw)
        self.offsets = btf.offsets() if use_btf else None
        self._hier = hierarchies()

    def cflags(self, filters):
        return btf_cflags(self.offsets)

    def decode(self, r):
        ev = self.task_fields(r, KINDS.get(r.kind, str(r.kind)))
        if r.root not in self._hier:
            self._hier = hierarchies()
        controllers, mount = self._hier.get(r.root, (None, None))
        path = cstr(r.path)
        detail = {"id": r.id, "level": r.level, "path": path, "hierarchy": r.root,
                  "version": 2 if r.root == 0 else 1, "controllers": controllers,
                  "mount": mount}
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
