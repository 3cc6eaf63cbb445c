"""Packet drops with the kernel's reason: the skb:kfree_skb tracepoint, filtered in-kernel.

`DropWatch(target, netns)` loads `drops.bpf.c` with sk_buff/net_device/net field offsets taken
from the running kernel's BTF (`btf_offsets()`), so no header layout is trusted. Reason
names come from the tracepoint's own format (`reason_names()`), the location from
/proc/kallsyms. Records: {ts_ns, reason, location, proto, src, sport, dst, dport,
tcpflags, ifindex, netns}; only drops in the given namespaces (inodes) are kept.
"""

import bisect
import ctypes
import mmap
import re
import socket
import struct
from pathlib import Path

from pyinspect.errors import UnavailableError

from . import btf
from .packets import RingReader, fill_target_maps

SRC = Path(__file__).with_name("drops.bpf.c")
FORMAT = "/sys/kernel/tracing/events/skb/kfree_skb/format"
DROP = struct.Struct("<QQIIIHHBBHII")
PROTOS = {6: "tcp", 17: "udp", 1: "icmp"}


def btf_offsets(path=None):
    """The -D offsets drops.bpf.c needs, from the running kernel's BTF."""
    b = btf.load(path or btf.VMLINUX)
    return {
        "OFF_SKB_HEAD": b.offset("sk_buff", "head"),
        "OFF_SKB_NETWORK_HEADER": b.offset("sk_buff", "network_header"),
        "OFF_SKB_DEV": b.offset("sk_buff", "dev"),
        "OFF_DEV_IFINDEX": b.offset("net_device", "ifindex"),
        "OFF_DEV_ND_NET": b.offset("net_device", "nd_net.net"),
        "OFF_NET_INUM": b.offset("net", "ns.inum"),
    }


def reason_names(path=FORMAT):
    """{number: name} of enum skb_drop_reason, from the tracepoint's print fmt."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    return {int(n): name for n, name in re.findall(r'\{\s*(\d+),\s*"(\w+)"\s*\}', text)}


class Kallsyms:
    """Address -> symbol for drop locations (root can read the addresses)."""

    def __init__(self):
        self.addrs, self.names = [], []
        try:
            with open("/proc/kallsyms") as f:
                rows = []
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] in "tTwW":
                        a = int(parts[0], 16)
                        if a:
                            rows.append((a, parts[2]))
        except OSError:
            rows = []
        rows.sort()
        self.addrs = [a for a, _ in rows]
        self.names = [n for _, n in rows]

    def lookup(self, addr):
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return hex(addr)
        return f"{self.names[i]}+{addr - self.addrs[i]:#x}"


class DropWatch:
    """kfree_skb drops of the traced addresses. Context manager: start(), read(), stop()."""

    def __init__(self, target, netns=()):
        self.target = target
        self.netns = set(netns)    # namespace inodes whose drops count (where we capture)
        self.bpf = None
        self.reader = None
        self.reasons = {}
        self.syms = None

    def start(self):
        try:
            from bcc import BPF
        except ImportError as exc:
            raise UnavailableError("drop tracing needs bcc (python3-bpfcc)") from exc
        if not Path(FORMAT).exists():
            raise UnavailableError("skb:kfree_skb is not available: tracefs not mounted",
                                   "mount -t tracefs nodev /sys/kernel/tracing")
        try:
            offs = btf_offsets()
        except (OSError, btf.BTFError, struct.error, ValueError, IndexError) as exc:
            raise UnavailableError(f"no usable kernel BTF for sk_buff offsets ({exc})",
                                   "needs CONFIG_DEBUG_INFO_BTF") from exc
        self.reasons = reason_names()
        cflags = [f"-D{k}={v}" for k, v in offs.items()]
        consumed = [n for n, name in self.reasons.items() if name == "CONSUMED"]
        if consumed:
            cflags.append(f"-DSKIP_REASON={consumed[0]}")
        try:
            self.bpf = BPF(src_file=str(SRC), cflags=cflags)
        except Exception as exc:
            raise UnavailableError(f"cannot load the kfree_skb program: {exc}") from exc
        fill_target_maps(self.bpf, self.target)
        for inum in self.netns:
            self.bpf["netns_ok"][ctypes.c_uint32(inum)] = ctypes.c_uint8(1)
        self.reader = RingReader(self.bpf["drops"].map_fd, 64 * mmap.PAGESIZE)
        self.syms = Kallsyms()
        return self

    def read(self, limit=1 << 30):
        """Up to `limit` drop records; the rest wait in the ring (when it is full the kernel
        counts each further drop in `lost`)."""
        out = []
        if not self.reader:
            return out
        for raw in self.reader.read(limit or 1 << 30):
            (ts, loc, reason, saddr, daddr, sport, dport, proto, flags, _pad, ifindex,
             netns) = DROP.unpack_from(raw, 0)
            out.append({
                "ts_ns": ts, "reason": self.reasons.get(reason, str(reason)),
                "location": self.syms.lookup(loc) if self.syms else hex(loc),
                "proto": PROTOS.get(proto, str(proto)),
                "src": socket.inet_ntoa(struct.pack("<I", saddr)), "sport": sport,
                "dst": socket.inet_ntoa(struct.pack("<I", daddr)), "dport": dport,
                "tcpflags": flags, "ifindex": ifindex, "netns": netns,
            })
        return out

    @property
    def lost(self):
        if not self.bpf:
            return 0
        return self.bpf["dropstats"][ctypes.c_int(1)].value

    def stop(self):
        if self.reader:
            self.reader.close()
            self.reader = None
        if self.bpf:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
