"""pcap-filter expressions (tcpdump syntax) compiled by libpcap and run on captured bytes.

The one libpcap binding in pyinspect (ctypes): the tracer's `--filter` and `pcap export
--filter` both use `BpfFilter`. An expression is compiled once to classic BPF for one
link type (`pcap_compile` on a dead handle) and run in userspace with libpcap's
`bpf_filter`; it sees the bytes it is given, as tcpdump would with the same snap length.
The compiled program is freed with the filter.
"""

import ctypes
import ctypes.util

from ..errors import UnavailableError, UsageError

DLT_EN10MB = 1
DEFAULT_SNAPLEN = 262144


class _BpfInsn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_LIBPCAP = None


def libpcap() -> ctypes.CDLL:
    """The loaded libpcap (ctypes), or UnavailableError with the reason."""
    global _LIBPCAP
    if _LIBPCAP is None:
        name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise UnavailableError(
                f"pcap filter: cannot load libpcap ({exc})",
                "install libpcap0.8 (scripts/install.sh does)",
            ) from None
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        ]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        lib.bpf_filter.restype = ctypes.c_uint
        lib.bpf_filter.argtypes = [
            ctypes.POINTER(_BpfInsn),
            ctypes.c_char_p,
            ctypes.c_uint,
            ctypes.c_uint,
        ]
        _LIBPCAP = lib
    return _LIBPCAP


class BpfFilter:
    """A pcap-filter expression compiled once for `linktype`; `match(data, wirelen)`."""

    def __init__(
        self, expression: str, linktype: int = DLT_EN10MB, snaplen: int = DEFAULT_SNAPLEN
    ) -> None:
        lib = libpcap()
        self.expression = expression
        self._lib = lib
        self._prog = _BpfProgram()
        handle = lib.pcap_open_dead(linktype, snaplen)
        if not handle:
            raise UnavailableError("pcap filter: pcap_open_dead failed")
        try:
            if (
                lib.pcap_compile(
                    handle, ctypes.byref(self._prog), expression.encode(), 1, 0xFFFFFFFF
                )
                != 0
            ):
                err = lib.pcap_geterr(handle).decode(errors="replace")
                raise UsageError(
                    f"bad --filter {expression!r}: {err}", "see pcap-filter(7) for the syntax"
                )
        finally:
            lib.pcap_close(handle)
        self._insns = self._prog.bf_insns
        self._bpf = lib.bpf_filter

    @property
    def expr(self) -> str:
        return self.expression

    def match(self, data: bytes, wirelen: int | None = None) -> bool:
        """True when the program accepts `data` (captured bytes of a `wirelen`-byte packet)."""
        n = len(data)
        return self._bpf(self._insns, data, wirelen or n, n) != 0

    def __del__(self) -> None:
        prog, lib = getattr(self, "_prog", None), getattr(self, "_lib", None)
        if prog is not None and lib is not None and prog.bf_insns:
            lib.pcap_freecode(ctypes.byref(prog))
            prog.bf_insns = None
