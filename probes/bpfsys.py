"""The raw bpf(2) syscall, for the few commands bcc does not wrap here (tcx links, program
queries, run-time statistics, the capability probes' own tiny programs)."""

import ctypes
import os
import platform

SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280}.get(platform.machine(), 321)

# enum bpf_cmd
PROG_LOAD, PROG_GET_NEXT_ID, PROG_GET_FD_BY_ID = 5, 11, 13
OBJ_GET_INFO_BY_FD, PROG_QUERY, LINK_CREATE, ENABLE_STATS = 15, 16, 28, 32
# enum bpf_prog_type
PROG_TYPE_SCHED_CLS, PROG_TYPE_NETFILTER = 3, 32
# enum bpf_attach_type
NETFILTER, TCX_INGRESS, TCX_EGRESS = 45, 46, 47

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: ctypes.Structure | ctypes.Array) -> int:
    """bpf(cmd, attr) with `attr` a ctypes buffer (the kernel may write into it); the
    result (an fd for commands that make one), or OSError."""
    r = libc.syscall(SYS_BPF, cmd, attr, ctypes.sizeof(attr))
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return r
