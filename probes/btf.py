"""Struct member offsets of the RUNNING kernel, read from its BTF (/sys/kernel/btf/vmlinux).

The kernel headers installed here belong to another kernel, so probes never read kernel
structs by header layout. When a probe needs a field of task_struct (ppid, exit code,
namespace inodes), it asks this module for the byte offsets and puts them in its libbpf
object's .rodata before load; the C code reads them with bpf_probe_read_kernel. The offsets
are cached on disk per BTF blob (cached()), so only the first start on a kernel parses BTF.
If BTF is missing or a member is not found, `offsets()` returns None and the probe falls
back to userspace (/proc).
"""

import hashlib
import json
import os
import struct
import tempfile
import threading

VMLINUX = "/sys/kernel/btf/vmlinux"

(
    _INT,
    _PTR,
    _ARRAY,
    _STRUCT,
    _UNION,
    _ENUM,
    _FWD,
    _TYPEDEF,
    _VOLATILE,
    _CONST,
    _RESTRICT,
    _FUNC,
    _FUNC_PROTO,
    _VAR,
    _DATASEC,
    _FLOAT,
    _DECL_TAG,
    _TYPE_TAG,
    _ENUM64,
) = range(1, 20)
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)


class BTFError(Exception):
    """The BTF blob is missing, malformed or lacks a needed member."""


class BTF:
    """A minimal reader: types by id, structs by name, member offsets by path."""

    def __init__(self, data):
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data, 0
        )
        if magic != 0xEB9F:
            raise BTFError("bad BTF magic")
        self._data = data
        self._strs = hdr_len + str_off
        self._str_end = self._strs + str_len
        # id 0 is void: (kind, name_off, size_or_type, vlen, kflag, pos)
        self.types: list[tuple[int, int, int, int, int, int]] = [(0, 0, 0, 0, 0, 0)]
        self._by_name: dict[str, int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.unpack_from
        while pos < end:
            name_off, info, size_type = unpack("<III", data, pos)
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            body = pos + 12
            self.types.append((kind, name_off, size_type, vlen, kflag, body))
            if kind in (_STRUCT, _UNION) and name_off:
                self._by_name.setdefault(self.name(name_off), len(self.types) - 1)
            if kind == _INT or kind == _VAR or kind == _DECL_TAG:
                pos = body + 4
            elif kind == _ARRAY:
                pos = body + 12
            elif kind in (_STRUCT, _UNION, _DATASEC, _ENUM64):
                pos = body + 12 * vlen
            elif kind in (_ENUM, _FUNC_PROTO):
                pos = body + 8 * vlen
            else:
                pos = body

    def name(self, off):
        start = self._strs + off
        return self._data[start : self._data.index(b"\0", start)].decode()

    def resolve(self, tid):
        """Skip typedefs and qualifiers."""
        while self.types[tid] and self.types[tid][0] in _MODIFIERS:
            tid = self.types[tid][2]
        return tid

    def struct_id(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            raise BTFError(f"struct {name} not in BTF") from None

    def members(self, tid):
        kind, _n, _s, vlen, kflag, body = self.types[tid]
        for i in range(vlen):
            name_off, mtype, off = struct.unpack_from("<III", self._data, body + 12 * i)
            bit = off & 0xFFFFFF if kflag else off
            yield (self.name(name_off) if name_off else ""), mtype, bit

    def member(self, tid, name):
        """(byte offset, type id) of member `name`, looking inside anonymous structs/unions."""
        for mname, mtype, bit in self.members(tid):
            if mname == name:
                if bit % 8:
                    raise BTFError(f"member {name} is a bitfield")
                return bit // 8, mtype
            rt = self.resolve(mtype)
            if not mname and self.types[rt][0] in (_STRUCT, _UNION):
                try:
                    off, t = self.member(rt, name)
                    return bit // 8 + off, t
                except BTFError:
                    continue
        raise BTFError(f"member {name} not found")

    def offset(self, struct_name, path):
        """Byte offset of a dotted member path inside a struct (no pointer hops)."""
        tid = self.struct_id(struct_name)
        total = 0
        for part in path.split("."):
            off, mtype = self.member(tid, part)
            total += off
            tid = self.resolve(mtype)
        return total

    def size(self, struct_name):
        return self.types[self.struct_id(struct_name)][2]

    def enum_value(self, name):
        """The value of enumerator `name` in any enum (e.g. memory_cgrp_id)."""
        want = name.encode()
        for kind, _n, _s, vlen, _k, body in self.types[1:]:
            if kind != _ENUM:
                continue
            for i in range(vlen):
                name_off, val = struct.unpack_from("<Ii", self._data, body + 8 * i)
                start = self._strs + name_off
                if self._data[start : start + len(want) + 1] == want + b"\0":
                    return val
        raise BTFError(f"enumerator {name} not in BTF")


_lock = threading.RLock()
_cache: dict[str, dict[str, int] | None] = {}  # path -> offsets() result
_parsed: dict[str, BTF] = {}  # path -> BTF

# name (was the -D macro) -> (struct, member path)
FIELDS = {
    "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_TASK_EXIT_CODE": ("task_struct", "exit_code"),
    "OFF_TASK_NSPROXY": ("task_struct", "nsproxy"),
    "OFF_TASK_THREAD_PID": ("task_struct", "thread_pid"),
    "OFF_TASK_MM": ("task_struct", "mm"),
    "OFF_MM_ARG_START": ("mm_struct", "arg_start"),
    "OFF_MM_ARG_END": ("mm_struct", "arg_end"),
    "OFF_NSPROXY_NET": ("nsproxy", "net_ns"),
    "OFF_NSPROXY_MNT": ("nsproxy", "mnt_ns"),
    "OFF_NSPROXY_PID_CHILDREN": ("nsproxy", "pid_ns_for_children"),
    "OFF_NET_INUM": ("net", "ns.inum"),
    "OFF_MNTNS_INUM": ("mnt_namespace", "ns.inum"),
    "OFF_PIDNS_INUM": ("pid_namespace", "ns.inum"),
    "OFF_PID_LEVEL": ("pid", "level"),
    "OFF_PID_NUMBERS": ("pid", "numbers"),
    "OFF_UPID_NS": ("upid", "ns"),
}


# Optional: a task's memory cgroup (task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id).
# Missing (e.g. CONFIG_MEMCG off) only drops these macros.
OPTIONAL_FIELDS = {
    "OFF_TASK_CGROUPS": ("task_struct", "cgroups"),
    "OFF_CSSSET_SUBSYS": ("css_set", "subsys"),
    "OFF_CSS_CGROUP": ("cgroup_subsys_state", "cgroup"),
    "OFF_CGROUP_KN": ("cgroup", "kn"),
    "OFF_KN_ID": ("kernfs_node", "id"),
}


def load(path=VMLINUX):
    """The parsed BTF at `path`, read once per process (it takes ~0.2 s)."""
    with _lock:
        if path not in _parsed:
            with open(path, "rb") as f:
                _parsed[path] = BTF(f.read())
        return _parsed[path]


_results: dict[tuple[str, str], object] = {}  # (path, name) -> cached() result


def _cache_file(digest):
    from .bpfobj import cache_dir

    return cache_dir() / f"btf-{digest}.json"


def cached(name, compute, path=VMLINUX):
    """compute(BTF) -> a JSON-able value, for the BTF blob at `path`, kept per process and
    on disk beside the compiled BPF objects, keyed by the blob's sha256: parsing vmlinux
    BTF takes ~0.3 s, reading and hashing it ~10 ms, so a start after the first (or after
    `make install`, which fills the cache) parses nothing. Exceptions from reading,
    parsing or compute() propagate and nothing is stored."""
    with _lock:
        key = (path, name)
        if key in _results:
            return _results[key]
        with open(path, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()[:24]
        cfile = _cache_file(digest)
        try:
            doc = json.loads(cfile.read_text())
        except (OSError, ValueError):
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if name in doc:
            result = doc[name]
        else:
            if path not in _parsed:
                _parsed[path] = BTF(data)
            result = compute(_parsed[path])
            doc[name] = result
            try:
                cfile.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=cfile.parent, suffix=".tmp")
                with os.fdopen(fd, "w") as out:
                    json.dump(doc, out)
                os.replace(tmp, cfile)
            except OSError:
                pass  # a read-only cache: parse again next time
        _results[key] = result
        return result


def _task_offsets(btf):
    try:
        result = {macro: btf.offset(s, m) for macro, (s, m) in FIELDS.items()}
        result["SIZE_UPID"] = btf.size("upid")
    except BTFError:
        return None
    try:
        extra = {macro: btf.offset(s, m) for macro, (s, m) in OPTIONAL_FIELDS.items()}
        extra["MEMORY_CGRP_ID"] = btf.enum_value("memory_cgrp_id")
        result.update(extra)
    except BTFError:
        pass
    return result


def offsets(path=VMLINUX):
    """{name: byte offset} for FIELDS from the running kernel's BTF, plus SIZE_UPID and
    (when all present) OPTIONAL_FIELDS + MEMORY_CGRP_ID; None when BTF is unreadable or
    a required field is missing. Cached per process and on disk (cached())."""
    with _lock:
        if path in _cache:
            return _cache[path]
        try:
            result = cached("task", _task_offsets, path)
        except (OSError, BTFError, struct.error, IndexError, ValueError):
            result = None
        _cache[path] = result
        return result


def available(path=VMLINUX):
    return os.path.exists(path) and offsets(path) is not None
