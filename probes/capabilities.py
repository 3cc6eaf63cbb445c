"""Which eBPF hook types this kernel really loads, found by loading one tiny program of each.

`detect()` compiles one combined bcc program (tracepoint, raw tracepoint, tc
sched_cls and kprobe functions plus a ring buffer and a perf buffer map), loads
each function, attaches the tracepoint/raw tracepoint/kprobe ones briefly and
detaches them. fentry needs its own compile (bcc attaches KFUNC_PROBE at load).
The netfilter and tcx BPF links are not expressible in bcc 0.26, so each is tried with
the raw bpf(2) syscall in a child process inside a throwaway network namespace.
The answer is cached per process; `detect(refresh=True)` probes again.
"""

import ctypes
import errno
import os
import struct
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from . import bpfsys
from .netns import CLONE_NEWNET

HOOKS = (
    "tracepoint",
    "raw_tracepoint",
    "tc",
    "tcx",
    "kprobe",
    "fentry",
    "ringbuf",
    "perf_buffer",
    "netfilter",
)

TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


@dataclass(frozen=True)
class HookStatus:
    """One hook type: whether it loads here and why (a short, plain reason)."""

    name: str
    available: bool
    reason: str

    def __str__(self):
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


_lock = threading.Lock()
_cache = None

_COMBINED = r"""
BPF_RINGBUF_OUTPUT(pi_cap_rb, 1);
BPF_PERF_OUTPUT(pi_cap_pb);
int pi_cap_tp(void *ctx) { return 0; }
int pi_cap_rtp(struct bpf_raw_tracepoint_args *ctx) { return 0; }
int pi_cap_kp(struct pt_regs *ctx) { return 0; }
int pi_cap_cls(struct __sk_buff *skb) { return 0; }
"""

_FENTRY = r"""
KFUNC_PROBE(do_nanosleep) { return 0; }
"""


def tracefs_dir():
    """The mounted tracefs directory, or None."""
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events")):
            return d
    return None


@contextmanager
def _quiet_stderr():
    """Capture fd 2 (libbcc prints diagnostics there); yields a function returning the text."""
    captured = {"text": ""}
    try:
        saved = os.dup(2)
    except OSError:
        yield lambda: ""
        return
    tmp = tempfile.TemporaryFile()
    os.dup2(tmp.fileno(), 2)
    try:
        yield lambda: captured["text"]
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        tmp.seek(0)
        captured["text"] = tmp.read().decode(errors="replace")
        tmp.close()


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _kprobe_reason(exc, log):
    has_pmu = os.path.exists("/sys/bus/event_source/devices/kprobe")
    tfs = tracefs_dir()
    has_events = bool(tfs) and os.path.exists(os.path.join(tfs, "kprobe_events"))
    if not has_pmu and not has_events:
        return (
            "refused by kernel: no kprobe PMU and no kprobe_events in tracefs (CONFIG_KPROBES off)"
        )
    if "Operation not permitted" in log or "EPERM" in log:
        return "refused by kernel (EPERM)"
    return f"attach failed: {_first_line(exc)}"


def _fentry_reason(exc, log):
    if "Operation not permitted" in log or "super-user" in str(exc):
        return "refused by kernel (EPERM loading a BPF_PROG_TYPE_TRACING program)"
    if "BTF" in log or "btf" in log:
        return f"no usable BTF for fentry: {_first_line(exc)}"
    return f"load failed: {_first_line(exc)}"


def _probe_bcc():
    """Statuses for everything bcc can express. Never raises."""
    out = {}
    try:
        from bcc import BPF
    except Exception as exc:  # noqa: BLE001 ImportError, or a broken libbcc
        reason = f"bcc is not importable ({_first_line(exc)}; install python3-bpfcc)"
        return {h: HookStatus(h, False, reason) for h in HOOKS if h != "netfilter"}

    with _quiet_stderr() as log:
        try:
            b = BPF(text=_COMBINED)
        except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
            b = None
            err = exc
    if b is None:
        # The combined program failed (usually a map type): try each part alone.
        return _probe_bcc_separately(BPF, f"{_first_line(err)} {log()}")
    try:
        out.update(_probe_functions(b, BPF))
        out.update(_probe_buffers(b))
    finally:
        b.cleanup()
    out["fentry"] = _probe_fentry(BPF)
    return out


def _probe_functions(b, BPF):
    out = {}
    tfs = tracefs_dir()
    # tracepoint: load, attach to sched:sched_process_exit, detach.
    with _quiet_stderr() as log:
        try:
            b.load_func("pi_cap_tp", BPF.TRACEPOINT)
            if not tfs:
                raise OSError("tracefs not mounted")
            b.attach_tracepoint(tp="sched:sched_process_exit", fn_name="pi_cap_tp")
            b.detach_tracepoint(tp="sched:sched_process_exit")
            ok, why = True, "loads and attaches (sched:sched_process_exit)"
        except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
            ok = False
            why = (
                "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)"
                if not tfs
                else f"refused: {_first_line(exc)}"
            )
    out["tracepoint"] = HookStatus("tracepoint", ok, why)
    with _quiet_stderr() as log:
        try:
            b.load_func("pi_cap_rtp", BPF.RAW_TRACEPOINT)
            b.attach_raw_tracepoint(tp="sched_process_exit", fn_name="pi_cap_rtp")
            b.detach_raw_tracepoint(tp="sched_process_exit")
            ok, why = True, "loads and attaches (sched_process_exit)"
        except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
            ok, why = False, f"refused: {_first_line(exc)} {log()}".strip()
    out["raw_tracepoint"] = HookStatus("raw_tracepoint", ok, why)
    with _quiet_stderr() as log:
        try:
            b.load_func("pi_cap_cls", BPF.SCHED_CLS)
            ok, why = True, "BPF_PROG_TYPE_SCHED_CLS loads (attached per interface via clsact)"
        except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
            ok, why = False, f"refused: {_first_line(exc)}"
    out["tc"] = HookStatus("tc", ok, why)
    with _quiet_stderr() as log:
        try:
            b.load_func("pi_cap_kp", BPF.KPROBE)
            b.attach_kprobe(event="do_nanosleep", fn_name="pi_cap_kp")
            b.detach_kprobe(event="do_nanosleep")
            ok, why = True, "loads and attaches (do_nanosleep)"
        except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
            ok, why = False, ""
            err = exc
    if not ok:
        why = _kprobe_reason(err, log())
    out["kprobe"] = HookStatus("kprobe", ok, why)
    return out


def _probe_buffers(b):
    out = {}
    with _quiet_stderr():
        try:
            b["pi_cap_rb"].open_ring_buffer(lambda *a: None)
            ok, why = True, "BPF_MAP_TYPE_RINGBUF creates and maps"
        except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
            ok, why = False, f"refused: {_first_line(exc)}"
    out["ringbuf"] = HookStatus("ringbuf", ok, why)
    with _quiet_stderr():
        try:
            b["pi_cap_pb"].open_perf_buffer(lambda *a: None, page_cnt=1)
            ok, why = True, "perf event array opens on every CPU"
        except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
            ok, why = False, f"refused: {_first_line(exc)}"
    out["perf_buffer"] = HookStatus("perf_buffer", ok, why)
    return out


def _probe_fentry(BPF):
    with _quiet_stderr() as log:
        try:
            if not BPF.support_kfunc():
                raise OSError("kernel lacks BTF/trampoline support for fentry")
            b = BPF(text=_FENTRY)
            b.cleanup()
            return HookStatus("fentry", True, "loads and attaches (do_nanosleep)")
        except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
            err = exc
    return HookStatus("fentry", False, _fentry_reason(err, log()))


def _probe_bcc_separately(BPF, combined_error):
    """The combined program failed: compile each part alone to find which hook is refused."""
    parts = {
        "ringbuf": "BPF_RINGBUF_OUTPUT(pi_cap_rb, 1);\nint pi_cap_tp(void *ctx) { return 0; }",
        "perf_buffer": "BPF_PERF_OUTPUT(pi_cap_pb);\nint pi_cap_tp(void *ctx) { return 0; }",
    }
    out = {}
    for name, text in parts.items():
        with _quiet_stderr():
            try:
                b = BPF(text=text)
                b.cleanup()
                out[name] = HookStatus(name, True, "map creates")
            except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
                out[name] = HookStatus(name, False, f"refused: {_first_line(exc)}")
    base = (
        "int pi_cap_tp(void *ctx) { return 0; }\n"
        "int pi_cap_rtp(struct bpf_raw_tracepoint_args *ctx) { return 0; }\n"
        "int pi_cap_kp(struct pt_regs *ctx) { return 0; }\n"
        "int pi_cap_cls(struct __sk_buff *skb) { return 0; }\n"
    )
    with _quiet_stderr():
        try:
            b = BPF(text=base)
        except Exception as exc:  # noqa: BLE001 bcc raises plain Exception
            reason = f"bcc cannot compile even a trivial program: {_first_line(exc)}"
            for h in ("tracepoint", "raw_tracepoint", "tc", "kprobe", "fentry"):
                out[h] = HookStatus(h, False, reason)
            return out
    try:
        out.update(_probe_functions(b, BPF))
    finally:
        b.cleanup()
    out["fentry"] = _probe_fentry(BPF)
    return out


# -- netfilter and tcx links via raw bpf(2), in a scratch network namespace ---------------


def _link_buffers(prog_type, r0, expected_attach_type, link_attr):
    """Everything the child needs, allocated BEFORE fork (no malloc/dlopen in the child):
    a two-instruction program (r0 = `r0`; exit) and the link attributes after prog_fd."""
    libc = bpfsys.libc
    insns = struct.pack("<BBhi", 0xB7, 0x00, 0, r0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(256)
    # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
    # prog_flags, prog_name[16], prog_ifindex, expected_attach_type
    struct.pack_into(
        "<IIQQIIQII16sII",
        attr,
        0,
        prog_type,
        2,
        ctypes.addressof(ibuf),
        ctypes.addressof(lic),
        0,
        0,
        0,
        0,
        0,
        b"pi_cap_link",
        0,
        expected_attach_type,
    )
    lattr = ctypes.create_string_buffer(256)
    ctypes.memmove(ctypes.addressof(lattr) + 4, link_attr, len(link_attr))
    return libc, (ibuf, lic), attr, lattr


def _link_child(libc, attr, lattr):
    """In a forked child: a new netns (its lo is ifindex 1), load the program, link it."""
    if libc.unshare(CLONE_NEWNET) != 0:
        return 100 + ctypes.get_errno(), 0
    fd = libc.syscall(bpfsys.SYS_BPF, bpfsys.PROG_LOAD, attr, 256)
    if fd < 0:
        return 1, ctypes.get_errno()
    struct.pack_into("<I", lattr, 0, fd)
    lfd = libc.syscall(bpfsys.SYS_BPF, bpfsys.LINK_CREATE, lattr, 256)
    if lfd < 0:
        return 2, ctypes.get_errno()
    return 0, 0


def _probe_link(name, buffers, ok, too_old):
    """Run the load+link in a child in a scratch netns; HookStatus from (stage, errno)."""
    libc, _keep, attr, lattr = buffers
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report (stage, errno) and exit without Python cleanup
        try:
            os.close(r)
            stage, err = _link_child(libc, attr, lattr)
            os.write(w, struct.pack("<ii", stage, err))
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 8)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    if len(data) != 8:
        return HookStatus(name, False, "probe process failed")
    stage, err = struct.unpack("<ii", data)
    errname = errno.errorcode.get(err, str(err))
    if stage == 0:
        return HookStatus(name, True, ok)
    if stage >= 100:
        return HookStatus(
            name,
            False,
            "could not make a scratch network namespace "
            f"to test in ({errno.errorcode.get(stage - 100, stage - 100)})",
        )
    if stage == 1:
        return HookStatus(name, False, f"load failed: refused by kernel ({errname})")
    if err == errno.EINVAL and too_old:
        return HookStatus(name, False, f"link create refused: {too_old}")
    return HookStatus(name, False, f"link create refused by kernel ({errname})")


def _probe_netfilter():
    # target_fd, attach_type, flags, then netfilter {pf=IPv4, hooknum=LOCAL_IN, priority,
    # flags}; the program accepts (NF_ACCEPT = 1)
    buffers = _link_buffers(
        bpfsys.PROG_TYPE_NETFILTER,
        1,
        bpfsys.NETFILTER,
        struct.pack("<IIIIIiI", 0, bpfsys.NETFILTER, 0, 2, 1, 100, 0),
    )
    st = _probe_link(
        "netfilter",
        buffers,
        "BPF_PROG_TYPE_NETFILTER loads and links (raw bpf(2); bcc 0.26 cannot express it)",
        None,
    )
    if not st.available and st.reason == "load failed: refused by kernel (EINVAL)":
        return HookStatus(
            "netfilter", False, "load failed: program type unknown to this kernel (needs >= 6.4)"
        )
    return st


def _probe_tcx():
    # tcx link on the scratch namespace's lo (ifindex 1); the program returns TCX_NEXT (-1)
    buffers = _link_buffers(
        bpfsys.PROG_TYPE_SCHED_CLS, -1, 0, struct.pack("<III", 1, bpfsys.TCX_INGRESS, 0)
    )
    return _probe_link(
        "tcx",
        buffers,
        "sched_cls links with tcx (what trace attaches with)",
        "no tcx in this kernel (needs >= 6.6); trace uses tc clsact",
    )


def _detect_all():
    if os.geteuid() != 0:
        reason = "needs root (CAP_BPF and CAP_PERFMON or CAP_SYS_ADMIN)"
        return [HookStatus(h, False, reason) for h in HOOKS]
    found = _probe_bcc()
    for name, probe in (("netfilter", _probe_netfilter), ("tcx", _probe_tcx)):
        try:
            found[name] = probe()
        except OSError as exc:
            found[name] = HookStatus(name, False, f"probe failed: {exc}")
    return [found[h] for h in HOOKS]


def detect(refresh=False):
    """[HookStatus] for every hook type in HOOKS, in that order; cached per process."""
    global _cache
    with _lock:
        if _cache is None or refresh:
            _cache = _detect_all()
        return list(_cache)


def status(name):
    """The HookStatus of one hook type (KeyError for an unknown name)."""
    for st in detect():
        if st.name == name:
            return st
    raise KeyError(name)


def available(name):
    """True when hook type `name` loads here."""
    return status(name).available


# -- which loader each probe uses ---------------------------------------------------------
# (probe, source in probes/ or None, loader): every probe a trace or `events --follow`
# starts is a libbpf object compiled once into the cache; only this module's own hook
# detection still compiles with bcc (once per `info`, never on a start path).
PROBE_LOADERS = (
    ("capture (tc)", "packets.bpf.c", "libbpf"),
    ("process events", "process.bpf.c", "libbpf"),
    ("cgroup events", "cgroups.bpf.c", "libbpf"),
    ("drops (skb:kfree_skb)", "drops.bpf.c", "libbpf"),
    ("link events", None, "rtnetlink (no BPF)"),
    ("hook detection (info)", None, "bcc (compiled at each detection)"),
)


def probe_loaders():
    """[{probe, loader, object}] for `pyinspect info`: which loader each probe uses and
    whether its compiled object is in the cache already (`cached`), will be compiled at
    its first start (`not built yet`), or cannot be (`no clang` / `no libbpf`). Cheap:
    no program is loaded (one `clang --version`)."""
    from pathlib import Path

    from . import bpfobj

    here = Path(__file__).resolve().parent
    clang = bpfobj.find_clang()
    try:
        bpfobj.libbpf()
        lib_ok = True
    except Exception:  # noqa: BLE001 - UnavailableError or a broken library: say so
        lib_ok = False
    out = []
    for probe, src, loader in PROBE_LOADERS:
        state = None
        if src:
            path = bpfobj.object_path(here / src, clang)
            if not lib_ok:
                state = "no libbpf (install libbpf1)"
            elif path.exists():
                state = "cached"
            elif not clang:
                state = "no clang (install clang-14)"
            else:
                state = "not built yet (compiled at first start; make install builds it)"
        out.append({"probe": probe, "loader": loader, "object": state})
    return out
