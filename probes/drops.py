"""Packet drops with the kernel's reason: the skb:kfree_skb tracepoint, filtered in-kernel.

`DropWatch(target, netns)` loads `drops.bpf.c` (a libbpf object compiled once, cached:
probes/bpfobj.py) with sk_buff/net_device/net field offsets taken from the running kernel's
BTF (`btf_offsets()`) and the tracepoint's field offsets from its tracefs format, both in
.rodata, so no header layout is trusted and nothing is compiled at start. Reason names come
from the tracepoint's own format (`reason_names()`), the location from /proc/kallsyms (read
when the first drop is). Records: {ts_ns, reason, location, proto, src, sport, dst, dport,
tcpflags, ifindex, netns}; only drops in the given namespaces (inodes) are kept.
"""

import array
import bisect
import contextlib
import ctypes
import hashlib
import os
import re
import socket
import struct
from pathlib import Path

from pyinspect.errors import UnavailableError

from . import bpfobj, btf
from .packets import (
    RingReader,
    _ip6_key,
    _ip_u32,
    _PortKey6,
    _proto_num,
    split_target,
)
from .ringbuf import Tpf, field_spec, tp_format

SRC = Path(__file__).with_name("drops.bpf.c")
TRACEFS = "/sys/kernel/tracing"
FORMAT = f"{TRACEFS}/events/skb/kfree_skb/format"
DROP = struct.Struct("<QQI16s16sHHBBBxII")
PROTOS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}
RING_BYTES = 64 * 4096
# drops.bpf.c `struct drops_config` members <- btf_offsets() keys
OFFSETS = (
    ("skb_head", "OFF_SKB_HEAD"),
    ("skb_network_header", "OFF_SKB_NETWORK_HEADER"),
    ("skb_dev", "OFF_SKB_DEV"),
    ("dev_ifindex", "OFF_DEV_IFINDEX"),
    ("dev_nd_net", "OFF_DEV_ND_NET"),
    ("net_inum", "OFF_NET_INUM"),
)
# (member, tracepoint field, required)
TP_FIELDS = (
    ("skbaddr", "skbaddr", True),
    ("location", "location", True),
    ("protocol", "protocol", True),
    ("reason", "reason", False),
)


class DropsConfig(ctypes.Structure):
    """drops.bpf.c `struct drops_config` (.rodata)."""

    _fields_ = (
        [(m, ctypes.c_uint32) for m, _ in OFFSETS]
        + [("has_skip_reason", ctypes.c_uint32), ("skip_reason", ctypes.c_uint32)]
        + [(m, Tpf) for m, _, _ in TP_FIELDS]
    )


class _PortKey(ctypes.Structure):
    """drops.bpf.c `struct portkey`."""

    _fields_ = [
        ("ip", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


def _skb_offsets(b):
    return {
        "OFF_SKB_HEAD": b.offset("sk_buff", "head"),
        "OFF_SKB_NETWORK_HEADER": b.offset("sk_buff", "network_header"),
        "OFF_SKB_DEV": b.offset("sk_buff", "dev"),
        "OFF_DEV_IFINDEX": b.offset("net_device", "ifindex"),
        "OFF_DEV_ND_NET": b.offset("net_device", "nd_net.net"),
        "OFF_NET_INUM": b.offset("net", "ns.inum"),
    }


def btf_offsets(path=None):
    """The sk_buff/net_device/net offsets drops.bpf.c needs, from the running kernel's BTF
    (kept in the BTF offset cache, so a start does not parse BTF again)."""
    return btf.cached("drops", _skb_offsets, path or btf.VMLINUX)


def reason_names(path=FORMAT):
    """{number: name} of enum skb_drop_reason, from the tracepoint's print fmt."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    return {int(n): name for n, name in re.findall(r'\{\s*(\d+),\s*"(\w+)"\s*\}', text)}


def _kallsyms_cache_file():
    """The cache file for this boot and these loaded modules, or None."""
    from .bpfobj import cache_dir

    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            key = f.read().strip()
    except OSError:
        return None
    with contextlib.suppress(OSError), open("/proc/modules", "rb") as f:
        key += f.read()  # absent on a kernel without modules
    return cache_dir() / f"kallsyms-{hashlib.sha256(key).hexdigest()[:16]}.bin"


class Kallsyms:
    """Address -> symbol for drop locations (root can read the addresses).

    The text symbols are kept in the cache directory per boot and set of loaded modules
    (reading /proc/kallsyms costs ~0.1 s of CPU, the cache file ~10 ms)."""

    def __init__(self):
        self.addrs: array.array[int] = array.array("Q")
        self.names: list[bytes] = []
        self._loaded = False

    def _load(self):
        self._loaded = True
        cfile = _kallsyms_cache_file()
        if cfile is not None:
            try:
                data = cfile.read_bytes()
                n = struct.unpack_from("<Q", data)[0]
                addrs = array.array("Q")
                addrs.frombytes(data[8 : 8 + 8 * n])
                names = data[8 + 8 * n :].split(b"\n")
                if len(addrs) == n == len(names):
                    self.addrs, self.names = addrs, names
                    return
            except (OSError, struct.error, ValueError):
                pass
        try:
            with open("/proc/kallsyms", "rb") as f:
                rows = [
                    (int(a, 16), name)
                    for a, name in re.findall(rb"^([0-9a-f]+) [tTwW] (\S+)", f.read(), re.M)
                ]
        except OSError:
            rows = []
        rows = sorted(r for r in rows if r[0])
        self.addrs = array.array("Q", [a for a, _ in rows])
        self.names = [n for _, n in rows]
        if cfile is not None and rows:
            tmp = cfile.with_suffix(f".{os.getpid()}.tmp")
            try:
                cfile.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(
                    struct.pack("<Q", len(rows)) + self.addrs.tobytes() + b"\n".join(self.names)
                )
                os.replace(tmp, cfile)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def lookup(self, addr):
        if not self._loaded:  # ~0.2 s: paid when the first drop is read, not at start
            self._load()
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return hex(addr)
        return f"{self.names[i].decode(errors='replace')}+{addr - self.addrs[i]:#x}"


class DropWatch:
    """kfree_skb drops of the traced addresses. Context manager: start(), read(), stop()."""

    def __init__(self, target, netns=()):
        self.target = target
        self.netns = set(netns)  # namespace inodes whose drops count (where we capture)
        self.obj: bpfobj.BpfObject | None = None
        self.reader = None
        self.reasons = {}
        self.syms = None

    def start(self):
        if not Path(FORMAT).exists():
            raise UnavailableError(
                "skb:kfree_skb is not available: tracefs not mounted",
                "mount -t tracefs nodev /sys/kernel/tracing",
            )
        try:
            offs = btf_offsets()
        except (OSError, btf.BTFError, struct.error, ValueError, IndexError) as exc:
            raise UnavailableError(
                f"no usable kernel BTF for sk_buff offsets ({exc})", "needs CONFIG_DEBUG_INFO_BTF"
            ) from exc
        cfg = DropsConfig()
        for member, key in OFFSETS:
            setattr(cfg, member, offs[key])
        fmt = tp_format(TRACEFS, "skb:kfree_skb")
        for member, field, required in TP_FIELDS:
            spec = field_spec(fmt, field)
            if isinstance(spec, str):
                if required:
                    raise UnavailableError(f"skb:kfree_skb cannot be read here: {spec}")
                continue
            setattr(cfg, member, spec)
        self.reasons = reason_names()
        consumed = [n for n, name in self.reasons.items() if name == "CONSUMED"]
        if consumed:
            cfg.has_skip_reason, cfg.skip_reason = 1, consumed[0]
        try:
            self.obj = bpfobj.BpfObject.open(SRC, rodata=bytes(cfg)).load()
            self._fill_maps()
            self.obj.attach_tracepoint("tracepoint__skb__kfree_skb", "skb", "kfree_skb")
            self.reader = RingReader(self.obj.map_fd("drops"), RING_BYTES)
        except (UnavailableError, OSError) as exc:
            self.stop()
            why = exc.message if isinstance(exc, UnavailableError) else (exc.strerror or str(exc))
            raise UnavailableError(
                f"cannot load the kfree_skb program: {why}", getattr(exc, "hint", None)
            ) from None
        self.syms = Kallsyms()
        return self

    def _fill_maps(self):
        from .bpfobj import map_update

        assert self.obj is not None  # start() loaded it
        a4, a6, p4, p6 = split_target(self.target)
        fd = self.obj.map_fd("addrs")
        for a in a4:
            map_update(fd, ctypes.c_uint32(_ip_u32(a)), ctypes.c_uint8(1))
        fd = self.obj.map_fd("ports")
        for ip, port, proto in p4:
            map_update(fd, _PortKey(_ip_u32(ip), int(port), _proto_num(proto)), ctypes.c_uint8(1))
        fd = self.obj.map_fd("addrs6")
        for a in a6:
            map_update(fd, _ip6_key(a), ctypes.c_uint8(1))
        fd = self.obj.map_fd("ports6")
        for ip, port, proto in p6:
            map_update(fd, _PortKey6(_ip6_key(ip), int(port), _proto_num(proto)), ctypes.c_uint8(1))
        fd = self.obj.map_fd("netns_ok")
        for inum in self.netns:
            map_update(fd, ctypes.c_uint32(inum), ctypes.c_uint8(1))

    def read(self, limit=1 << 30):
        """Up to `limit` drop records; the rest wait in the ring (when it is full the kernel
        counts each further drop in `lost`)."""
        out: list = []
        if not self.reader:
            return out
        for raw in self.reader.read(limit or 1 << 30):
            (ts, loc, reason, saddr, daddr, sport, dport, proto, flags, fam, ifindex, netns) = (
                DROP.unpack_from(raw, 0)
            )
            if fam == 6:
                src = socket.inet_ntop(socket.AF_INET6, saddr)
                dst = socket.inet_ntop(socket.AF_INET6, daddr)
            else:
                src, dst = socket.inet_ntoa(saddr[:4]), socket.inet_ntoa(daddr[:4])
            out.append(
                {
                    "ts_ns": ts,
                    "reason": self.reasons.get(reason, str(reason)),
                    "location": self.syms.lookup(loc) if self.syms else hex(loc),
                    "proto": PROTOS.get(proto, str(proto)),
                    "src": src,
                    "sport": sport,
                    "dst": dst,
                    "dport": dport,
                    "tcpflags": flags,
                    "ifindex": ifindex,
                    "netns": netns,
                }
            )
        return out

    @property
    def lost(self):
        if not self.obj:
            return getattr(self, "_lost_seen", 0)
        from .bpfobj import map_lookup

        v = ctypes.c_uint64()
        map_lookup(self.obj.map_fd("dropstats"), ctypes.c_uint32(1), v)
        self._lost_seen = v.value
        return v.value

    def stop(self):
        if self.obj and self.obj.loaded:
            _ = self.lost  # the last count stays readable after stop
        if self.reader:
            self.reader.close()
            self.reader = None
        if self.obj:
            self.obj.close()
            self.obj = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
