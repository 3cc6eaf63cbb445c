"""Process and namespace events from tracepoints: fork, exec, exit, clone/unshare/setns, OOM.

    with ProcessProbe() as probe:          # compiles and attaches; events flow on return
        for ev in probe.events(100): ...   # dicts: ts_ns kind pid ppid comm cgroup_id
                                           #        netns pidns mntns detail
Kinds: fork (pid = child), exec (filename, argv head), exit (code or signal), clone /
unshare / setns (CLONE_NEW* flags decoded; clone only when it makes namespaces), oom (pid =
victim). ppid, namespace inodes, exit code and argv are read in the kernel at the event
using field offsets taken from the running kernel's BTF (probes/btf.py), put in the libbpf
object's .rodata at load. Without BTF they come from /proc when the record is read
(`detail["ns_source"]` says which), and exit codes come from exit_group() (a death by signal
is then unknown).
"""

import ctypes
import os
import re
from pathlib import Path

from . import btf
from .ringbuf import TASK_IDS_FIELDS, TaskOffsets, Tpf, TracepointProbe, task_offsets
from .ringbuf import cstr as _str

SOURCE = Path(__file__).with_name("process.bpf.c")

KINDS = {1: "fork", 2: "exec", 3: "exit", 4: "clone", 5: "unshare", 6: "setns", 7: "oom"}

NAMESPACE_FLAGS = {  # CLONE_NEW* bit -> namespace name (as in /proc/<pid>/ns)
    0x00000080: "time",
    0x00020000: "mnt",
    0x02000000: "cgroup",
    0x04000000: "uts",
    0x08000000: "ipc",
    0x10000000: "user",
    0x20000000: "pid",
    0x40000000: "net",
}
OTHER_CLONE_FLAGS = {
    0x00000100: "VM",
    0x00000200: "FS",
    0x00000400: "FILES",
    0x00000800: "SIGHAND",
    0x00001000: "PIDFD",
    0x00002000: "PTRACE",
    0x00004000: "VFORK",
    0x00008000: "PARENT",
    0x00010000: "THREAD",
    0x00040000: "SYSVSEM",
    0x00080000: "SETTLS",
    0x00100000: "PARENT_SETTID",
    0x00200000: "CHILD_CLEARTID",
    0x01000000: "CHILD_SETTID",
    0x200000000: "INTO_CGROUP",
}
CLONE_THREAD = 0x00010000
NS_LINK = re.compile(r"^[a-z_]+:\[\d+\]$")  # what /proc/<pid>/fd/N reads for an nsfs fd

CFG_THREADS = 1
CFG_ALL_CLONES = 2
CFG_NS_FILTER = 4
# exec records: process.bpf.c ARGV_* (in proc_event.flags) and ARGS_MAX
ARGV_ENTRY, ARGV_TRUNCATED, ARGV_UNREADABLE, ARGV_MM = 1, 2, 4, 8
ARGS_MAX = 256


class ProcConfig(ctypes.Structure):
    """process.bpf.c `struct proc_config` (.rodata)."""

    _fields_ = [("task", TaskOffsets), ("flags", ctypes.c_uint64)] + [
        (name, Tpf)
        for name in (
            "fork_child_pid",
            "exec_old_pid",
            "exec_filename",
            "execve_argv",
            "execveat_argv",
            "clone_flags",
            "clone3_uargs",
            "unshare_flags",
            "setns_fd",
            "setns_nstype",
            "exit_group_code",
            "oom_pid",
            "oom_comm",
            "oom_total_vm",
            "oom_anon_rss",
            "oom_score_adj",
        )
    ]


class ProcEvent(ctypes.Structure):
    """process.bpf.c `struct proc_event` (one ring buffer record)."""

    _fields_ = TASK_IDS_FIELDS + [
        ("flags", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("exit_code", ctypes.c_int32),
        ("other_pid", ctypes.c_uint32),
        ("aux", ctypes.c_int32),
        ("aux2", ctypes.c_uint64),
        ("aux3", ctypes.c_uint64),
        ("memcg_id", ctypes.c_uint64),
        ("filename", ctypes.c_char * 128),
        ("args", ctypes.c_char * (2 * ARGS_MAX)),
    ]


def decode_argv(r) -> dict:
    """{"argv", "argv_truncated", "argv_unreadable", "argv_source"} of an exec record.

    argv read at execve() entry is what the caller passed; read from the new stack at
    exec (no entry record: the probe started between the two, or the syscall tracepoints
    are missing) it can miss pages. Either way a cut or unreadable argv says so instead
    of showing empty strings."""
    field = type(r).args  # a c_char array field reads as NUL-truncated bytes
    size = ARGS_MAX if r.flags & ARGV_ENTRY else field.size
    raw = ctypes.string_at(ctypes.addressof(r) + field.offset, max(0, min(r.aux, size)))
    truncated = bool(r.flags & ARGV_TRUNCATED) or r.aux > size
    unreadable = bool(r.flags & ARGV_UNREADABLE)
    parts = raw.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    elif parts:
        truncated = True  # the last string was cut by the buffer's end
    if not r.flags & ARGV_ENTRY and b"" in parts:
        # the stack's strings were not all readable: what follows a hole is not argv
        parts = parts[: parts.index(b"")]
        unreadable = True
    return {
        "argv": [p.decode(errors="replace") for p in parts],
        "argv_truncated": truncated,
        "argv_unreadable": unreadable,
        "argv_source": "execve" if r.flags & ARGV_ENTRY else "exec-stack",
    }


def namespace_names(flags):
    """CLONE_NEW* bits of `flags` as namespace names, e.g. ['net', 'pid']."""
    return [name for bit, name in sorted(NAMESPACE_FLAGS.items()) if flags & bit]


def clone_flag_names(flags):
    """All known CLONE_* flags set in `flags` ('NEWNET', 'THREAD', ...)."""
    names = [
        f"NEW{NAMESPACE_FLAGS[b].upper()}" if NAMESPACE_FLAGS[b] != "mnt" else "NEWNS"
        for b in sorted(NAMESPACE_FLAGS)
        if flags & b
    ]
    names += [n for b, n in sorted(OTHER_CLONE_FLAGS.items()) if flags & b]
    return names


def decode_exit_code(raw):
    """task->exit_code -> {"exit_code": n} or {"signal": n, "core_dumped": bool}."""
    if raw is None or raw < 0:
        return {"exit_code": None}
    sig = raw & 0x7F
    if sig:
        return {"exit_code": None, "signal": sig, "core_dumped": bool(raw & 0x80)}
    return {"exit_code": (raw >> 8) & 0xFF}


def memcg_location(cg_id):
    """{"memcg_hierarchy": id, "memcg_path": path} of the memory cgroup with this id
    (the inode of its directory), found under the memory controller's mount."""
    hid, mount = None, None
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                h, ctrls, _ = line.rstrip("\n").split(":", 2)
                if "memory" in ctrls.split(","):
                    hid = int(h)
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, right = line.split(" - ", 1)
                fstype, _src, opts = right.split()[:3]
                if (hid is not None and fstype == "cgroup" and "memory" in opts.split(",")) or (
                    hid is None and fstype == "cgroup2"
                ):
                    mount = left.split()[4]
                    break
    except (OSError, ValueError):
        return {}
    if mount is None:
        return {}
    hid = 0 if hid is None else hid
    stack = [(mount, 0)]
    while stack:
        path, depth = stack.pop()
        try:
            if os.stat(path).st_ino == cg_id:
                return {"memcg_hierarchy": hid, "memcg_path": path[len(mount) :] or "/"}
            if depth < 8:
                with os.scandir(path) as it:
                    stack += [(e.path, depth + 1) for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
    return {"memcg_hierarchy": hid}


def proc_namespaces(pid):
    """(netns, pidns, mntns) inodes of a live pid from /proc, or None."""
    try:
        return tuple(os.stat(f"/proc/{pid}/ns/{n}").st_ino for n in ("net", "pid", "mnt"))
    except OSError:
        return None


def proc_ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class ProcessProbe(TracepointProbe):
    """fork/exec/exit/clone/unshare/setns/oom events (see the module docstring).

    filters: {"threads": bool (thread create/exit too), "all_clones": bool (clone
    syscalls without CLONE_NEW* flags too), "namespaces": [inode, ...] (only tasks
    whose net or pid namespace is one of these; in the kernel when BTF gives the
    namespaces there, else after reading)}."""

    NAME = "process"
    SOURCE = SOURCE
    RECORD = ProcEvent
    CONFIG = ProcConfig
    # tracepoint -> [(cfg member, field in its tracefs format, is a string)]
    FIELDS = {
        "sched:sched_process_fork": [("fork_child_pid", "child_pid", False)],
        "sched:sched_process_exec": [
            ("exec_old_pid", "old_pid", False),
            ("exec_filename", "filename", True),
        ],
        "sched:sched_process_exit": [],
        "syscalls:sys_enter_execve": [("execve_argv", "argv", False)],
        "syscalls:sys_enter_execveat": [("execveat_argv", "argv", False)],
        "syscalls:sys_enter_clone": [("clone_flags", "clone_flags", False)],
        "syscalls:sys_enter_clone3": [("clone3_uargs", "uargs", False)],
        "syscalls:sys_enter_unshare": [("unshare_flags", "unshare_flags", False)],
        "syscalls:sys_enter_setns": [("setns_fd", "fd", False), ("setns_nstype", "flags", False)],
        "syscalls:sys_enter_exit_group": [("exit_group_code", "error_code", False)],
        "oom:mark_victim": [
            ("oom_pid", "pid", False),
            ("oom_comm", "comm", True),
            ("oom_total_vm", "total_vm", False),
            ("oom_anon_rss", "anon_rss", False),
            ("oom_score_adj", "oom_score_adj", False),
        ],
    }
    TRACEPOINTS = {
        "sched:sched_process_fork": "PI_FORK",
        "sched:sched_process_exec": "PI_EXEC",
        "sched:sched_process_exit": "PI_EXIT",
        "syscalls:sys_enter_execve": "PI_EXECVE",
        "syscalls:sys_enter_execveat": "PI_EXECVEAT",
        "syscalls:sys_enter_clone": "PI_CLONE",
        "syscalls:sys_enter_clone3": "PI_CLONE3",
        "syscalls:sys_enter_unshare": "PI_UNSHARE",
        "syscalls:sys_enter_setns": "PI_SETNS",
        "oom:mark_victim": "PI_OOM",
    }

    def __init__(self, tracepoints=None, ring_pages=None, use_btf=True):
        kw = {} if ring_pages is None else {"ring_pages": ring_pages}
        super().__init__(tracepoints, **kw)
        self.offsets = btf.offsets() if use_btf else None
        self.field_source = "kernel (BTF offsets)" if self.offsets else "/proc at read time"
        if not self.offsets:
            self.messages.append(
                "process probe: no usable kernel BTF; ppid, namespaces and argv are read "
                "from /proc when events are read; exit codes come from exit_group(), "
                "deaths by signal are unknown"
            )
            if "sched:sched_process_exit" in self.tracepoints:
                # the exit status, caught where the process asks for it
                self.tracepoints.setdefault("syscalls:sys_enter_exit_group", "PI_EXIT_GROUP")
        self._known = {}  # pid -> (ppid, netns, pidns, mntns) learned from earlier events
        self.ns_filter = None

    def make_config(self, filters):
        cfg = ProcConfig()
        cfg.task = task_offsets(self.offsets)
        value = (CFG_THREADS if filters.get("threads") else 0) | (
            CFG_ALL_CLONES if filters.get("all_clones") else 0
        )
        self.ns_filter = None
        if filters.get("namespaces") is not None:
            self.ns_filter = {int(n) for n in filters["namespaces"]}
            if self.offsets:
                value |= CFG_NS_FILTER
            else:
                self.messages.append(
                    "process probe: namespace filter applied after reading "
                    "(no BTF: the kernel does not know the namespaces)"
                )
        cfg.flags = value
        return cfg

    def configure(self, obj, filters):
        if self.ns_filter is not None and self.offsets:
            from .bpfobj import map_update

            fd = obj.map_fd("ns_allow")
            for ino in self.ns_filter:
                map_update(fd, ctypes.c_uint32(ino), ctypes.c_uint8(1))

    def decode(self, r):
        kind = KINDS.get(r.kind, str(r.kind))
        ev = self.task_fields(r, kind)
        detail = {"tid": r.tid}
        if kind == "fork":
            detail["parent_pid"] = r.other_pid
            if r.flags:
                detail["clone_flags"] = clone_flag_names(r.flags)
                detail["namespaces"] = namespace_names(r.flags)
            detail["thread"] = bool(r.flags & CLONE_THREAD)
        elif kind == "exec":
            detail["filename"] = _str(r.filename)
            if r.flags & ARGV_ENTRY or self.offsets:
                detail.update(decode_argv(r))
            detail["old_pid"] = r.other_pid
        elif kind == "exit":
            detail.update(decode_exit_code(r.exit_code))
        elif kind in ("clone", "unshare"):
            detail["flags"] = r.flags
            detail["namespaces"] = namespace_names(r.flags)
            detail["clone_flags"] = clone_flag_names(r.flags)
        elif kind == "setns":
            detail["fd"] = r.aux
            detail["nstype"] = namespace_names(r.flags) or ["any"]
        elif kind == "oom":
            detail["victim_comm"] = _str(r.filename)
            detail["invoker_pid"] = r.other_pid
            detail["total_vm_kb"] = r.aux2
            detail["anon_rss_kb"] = r.aux3
            detail["oom_score_adj"] = r.aux
            if r.memcg_id:
                detail["memcg_id"] = r.memcg_id
                detail.update(memcg_location(r.memcg_id))
            ev["comm"] = detail["victim_comm"]
        ev["detail"] = detail
        return ev

    def finish(self, batch):
        """Fill what the kernel could not: from /proc, else from what earlier events said."""
        for ev in batch:
            d = ev["detail"]
            pid = ev["pid"]
            if ev["kind"] == "oom" and d["invoker_pid"] != pid:
                # the namespaces in the record are the invoker's: prefer the victim's
                ev["ppid"] = 0
                ev["netns"] = ev["pidns"] = ev["mntns"] = 0
            if ev["kind"] == "fork" and d.get("namespaces"):
                # the record holds the parent's namespaces; the child has new ones
                ns = proc_namespaces(pid)
                if ns:
                    ev["netns"], ev["pidns"], ev["mntns"] = ns
                    d["ns_source"] = "proc"
                else:
                    d["ns_source"] = "parent"
            elif ev["netns"]:
                d["ns_source"] = "kernel"
            else:
                ns = proc_namespaces(pid)
                if ns:
                    ev["netns"], ev["pidns"], ev["mntns"] = ns
                    d["ns_source"] = "proc"
                elif pid in self._known:
                    ev["netns"], ev["pidns"], ev["mntns"] = self._known[pid][1:]
                    d["ns_source"] = "cache"
                else:
                    d["ns_source"] = "unknown"
            if not ev["ppid"]:
                ppid = proc_ppid(pid)
                if ppid is None and pid in self._known:
                    ppid = self._known[pid][0]
                ev["ppid"] = ppid or 0
            if ev["kind"] == "exec" and "argv" not in d:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        d["argv"] = [
                            a.decode(errors="replace") for a in f.read(4096).split(b"\0") if a
                        ][:16]
                except OSError:
                    d["argv"] = None
            if ev["kind"] == "setns" and d["fd"] >= 0:
                # read after the fact: keep it only if the fd still names a namespace (the
                # task may have closed and reused it, e.g. for a file or a bpf program)
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{d['fd']}")
                    if NS_LINK.match(target):
                        d["target"] = target
                except OSError:
                    pass
            if ev["kind"] == "exit":
                self._known.pop(pid, None)
            elif ev["netns"]:
                self._known[pid] = (ev["ppid"], ev["netns"], ev["pidns"], ev["mntns"])
        if len(self._known) > 65536:
            self._known.clear()
        if self.ns_filter is not None and not self.offsets:
            batch = [
                ev for ev in batch if ev["netns"] in self.ns_filter or ev["pidns"] in self.ns_filter
            ]
        return batch
