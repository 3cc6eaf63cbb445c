"""Packet capture with tc programs on chosen capture points, filtered in the kernel.

`PacketCapture(points, target, snaplen)` attaches `packets.bpf.c` ingress+egress on every
capture point (an interface in some network namespace), reads records from the ring buffer
by mmap in bulk (no per-record ctypes callback) and counts in-kernel what it could not
deliver. Filters are BPF maps filled at start: container addresses, published ports, ports
(`--port`). Programs are attached with tcx links where the kernel has them (6.6+): cheaper
per packet than a clsact qdisc with cls_bpf filters, and owned by this process's fds, so
even a kill -9 leaves nothing attached. Otherwise (or with PYINSPECT_TC_ATTACH=clsact) they
are cls_bpf filters with a distinctive prio/handle and the name `pyinspect-trace:<pid>`, so
a later start finds and removes them after a kill -9 (`remove_stale_filters`).
"""

import contextlib
import ctypes
import mmap
import os
import socket
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pyinspect.errors import UnavailableError, UsageError
from pyinspect.proc import pid_alive

from . import bpfsys
from .netns import in_netns

SRC = Path(__file__).with_name("packets.bpf.c")
TC_PRIO = 0xC1A5          # tc filter preference used only by pyinspect trace
TC_HANDLE_BASE = 0x70690000   # "pi" << 16; a session's filters use base + (pid & 0xffff)
TC_NAME_PREFIX = "pyinspect-trace:"
MAX_POINTS = 16
MAXCAP = 16384
CONTROL_PACKETS_PER_PERIOD = 8   # SYN/FIN/RST kept per budget period and point, at least
DEFAULT_SNAPLEN = 160     # ethernet + IPv4 + TCP with options, and a bit of payload
HDR = struct.Struct("<QIIHB5x")   # struct rec header in packets.bpf.c
HDR_LEN = HDR.size
_BUSY = 1 << 31
_DISCARD = 1 << 30


@dataclass
class CapturePoint:
    """One interface to capture on: `netns` is a path (None = ours); `mode` 'filtered',
    'all' (only the container's traffic passes here) or 'all+learn' (also where the
    container's packets enter the host: outbound flows are learned for the uplinks)."""
    name: str
    ifindex: int
    netns: str = None
    mode: str = "filtered"
    description: str = ""
    netns_inode: int = 0
    ifname: str = ""


@dataclass
class Target:
    """What to keep: container addresses, published (ip or '', port, proto), --port, and
    the container-side (port, proto) of the published ports."""
    addrs: list = field(default_factory=list)
    ports: list = field(default_factory=list)
    only_ports: list = field(default_factory=list)
    container_ports: list = field(default_factory=list)


def netns_inode(path=None):
    return os.stat(path or "/proc/thread-self/ns/net").st_ino


def _iproute(netns=None):
    from pyroute2 import IPRoute
    with in_netns(netns):
        return IPRoute()


def _ensure_clsact(ipr, ifindex):
    """Add a clsact qdisc if missing; True when we added it."""
    for q in ipr.get_qdiscs(index=ifindex):
        if q.get_attr("TCA_KIND") == "clsact":
            return False
    ipr.tc("add", "clsact", ifindex)
    return True


def tc_handle(pid):
    """The tc filter handle of one session (distinct per live process: traces can overlap)."""
    return TC_HANDLE_BASE + (pid & 0xffff)


ATTACH_ENV = "PYINSPECT_TC_ATTACH"     # "tcx" or "clsact" forces one; unset: tcx if it works
ATTACH_KINDS = ("tcx", "clsact")


def _tcx_type(direction):
    return bpfsys.TCX_INGRESS if direction == "ingress" else bpfsys.TCX_EGRESS


def tcx_attach(point, fd, direction):
    """Attach a sched_cls program with a tcx link (kernel >= 6.6); returns the link fd.

    The link belongs to this process: the kernel detaches it when the fd is closed, also
    when the process is killed. Raises OSError when the kernel refuses (no tcx)."""
    attr = ctypes.create_string_buffer(64)   # prog_fd, target_ifindex, attach_type, flags
    struct.pack_into("<IIII", attr, 0, fd, point.ifindex, _tcx_type(direction), 0)
    with in_netns(point.netns):     # the ifindex is looked up in the caller's netns
        return bpfsys.bpf(bpfsys.LINK_CREATE, attr)


def tcx_program_ids(ifindex, direction, netns=None):
    """Ids of the programs attached by tcx on one side of an interface ([] if none or no
    tcx here)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(64)   # target_ifindex, attach_type, .., prog_ids, count
    struct.pack_into("<IIIIQI", attr, 0, ifindex, _tcx_type(direction), 0, 0,
                     ctypes.addressof(ids), 64)
    try:
        with in_netns(netns):
            bpfsys.bpf(bpfsys.PROG_QUERY, attr)
    except (OSError, UnavailableError):      # no tcx here, or the namespace is gone
        return []
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[:min(count, 64)])


def attach_filter(point, fd, prog_name, direction, owner_pid, ipr=None):
    """Attach a loaded sched_cls program on one side of `point`; True if clsact was added."""
    parent = "ffff:fff2" if direction == "ingress" else "ffff:fff3"
    own = ipr is None
    if own:
        ipr = _iproute(point.netns)
    try:
        added = _ensure_clsact(ipr, point.ifindex)
        ipr.tc("add-filter", "bpf", point.ifindex, tc_handle(owner_pid), fd=fd,
               name=f"{TC_NAME_PREFIX}{owner_pid}:{prog_name}", parent=parent,
               prio=TC_PRIO, classid=1, direct_action=True)
        return added
    finally:
        if own:
            ipr.close()


def _our_filters(ipr, ifindex):
    """(parent, name, prio, handle) of pyinspect tc filters on one interface."""
    out = []
    for parent in ("ffff:fff2", "ffff:fff3"):
        try:
            filters = ipr.get_filters(index=ifindex, parent=parent)
        except Exception:  # no clsact here
            continue
        for f in filters:
            opts = f.get_attr("TCA_OPTIONS")
            name = opts.get_attr("TCA_BPF_NAME") if opts else None
            if name and name.startswith(TC_NAME_PREFIX):
                out.append((parent, name, f["info"] >> 16, f["handle"]))
    return out


def detach_point(point, remove_clsact):
    """Remove our filters (and the clsact we added) from one capture point; quiet if gone."""
    try:
        ipr = _iproute(point.netns)
    except Exception:
        return
    try:
        mine = f"{TC_NAME_PREFIX}{os.getpid()}:"
        for parent, name, prio, handle in _our_filters(ipr, point.ifindex):
            if not name.startswith(mine):
                continue                 # another live session's filter
            with contextlib.suppress(Exception):
                ipr.tc("del-filter", "bpf", point.ifindex, handle, parent=parent, prio=prio)
    except Exception:
        pass
    finally:
        ipr.close()
    if remove_clsact:                    # only if no one else's filters sit on it now
        remove_clsact_if_empty(point.netns, point.ifindex)


def remove_clsact_if_empty(netns, ifindex):
    """Delete a clsact qdisc that has no filters left (one pyinspect added). True if removed."""
    try:
        ipr = _iproute(netns)
    except Exception:
        return False
    try:
        if not any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex)):
            return False
        for parent in ("ffff:fff2", "ffff:fff3"):
            with contextlib.suppress(Exception):
                if list(ipr.get_filters(index=ifindex, parent=parent)):
                    return False
        ipr.tc("del", "clsact", ifindex)
        return True
    except Exception:
        return False
    finally:
        ipr.close()


def remove_stale_filters(netns_paths):
    """Remove pyinspect trace filters whose owner process is gone, in each namespace given.

    Returns a list of 'netns ifname direction' strings that were removed.
    """
    removed = []
    for path in netns_paths:
        try:
            ipr = _iproute(path)
        except Exception:
            continue
        try:
            for link in ipr.get_links():
                idx = link["index"]
                for parent, name, prio, handle in _our_filters(ipr, idx):
                    try:
                        pid = int(name[len(TC_NAME_PREFIX):].split(":")[0])
                    except ValueError:
                        pid = 0
                    if pid and pid_alive(pid) and pid != os.getpid():
                        continue
                    with contextlib.suppress(Exception):
                        ipr.tc("del-filter", "bpf", idx, handle, parent=parent, prio=prio)
                        side = "ingress" if parent.endswith("2") else "egress"
                        removed.append(f"{path or 'self'} {link.get_attr('IFLA_IFNAME')} {side}")
        finally:
            ipr.close()
    return removed


def _hook_reason(name):
    """What capabilities.detect() says about a hook type (only asked after a failure)."""
    try:
        from . import capabilities
        return str(capabilities.status(name))
    except Exception:  # noqa: BLE001 - a hint only
        return None


class RingReader:
    """Reads a BPF ring buffer map by mmap, a whole batch per call, no per-record callback."""

    def __init__(self, map_fd, size):
        self.size = size
        page = mmap.PAGESIZE
        self.cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                              offset=0)
        self.prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                              offset=page)
        self.page = page
        self.mask = size - 1

    def read(self, limit=1 << 30):
        """Return a list of record payloads (bytes) available now; advances the consumer."""
        cons_pos = struct.unpack_from("<Q", self.cons, 0)[0]
        prod_pos = struct.unpack_from("<Q", self.prod, 0)[0]
        out = []
        buf = self.prod
        base = self.page
        mask = self.mask
        unpack = struct.unpack_from
        got = 0
        while cons_pos < prod_pos and got < limit:
            off = base + (cons_pos & mask)
            ln = unpack("<I", buf, off)[0]
            if ln & _BUSY:
                break
            real = ln & ~(_BUSY | _DISCARD)
            if not ln & _DISCARD:
                out.append(buf[off + 8: off + 8 + real])
            cons_pos += (real + 8 + 7) & ~7
            got += 1
        struct.pack_into("<Q", self.cons, 0, cons_pos)
        return out

    def close(self):
        self.cons.close()
        self.prod.close()


def parse(raw):
    """Record bytes -> (ts_ns, point, direction 'in'|'out', len, data)."""
    ts, ln, caplen, point, d = HDR.unpack_from(raw, 0)
    return ts, point, "out" if d else "in", ln, raw[HDR_LEN:HDR_LEN + caplen]


CONST_ADDRS, CONST_PORTS = 4, 8   # up to this many are compiled in as constants


def _proto_num(proto):
    return socket.IPPROTO_UDP if proto == "udp" else socket.IPPROTO_TCP


def _ip_u32(ip):
    """An IPv4 address as the u32 the kernel sees (network order bytes read little-endian);
    0 for '' or 0.0.0.0 (any)."""
    if not ip or ip == "0.0.0.0":
        return 0
    return struct.unpack("<I", socket.inet_aton(ip))[0]


def fill_target_maps(bpf, target):
    """Fill a program's `addrs` (u32) and `ports` (struct portkey) maps from `target`
    (packets.bpf.c and drops.bpf.c declare both the same way)."""
    for a in target.addrs:
        bpf["addrs"][ctypes.c_uint32(_ip_u32(a))] = ctypes.c_uint8(1)
    ports = bpf["ports"]
    for ip, port, proto in target.ports:
        k = ports.Key()
        k.ip = _ip_u32(ip)
        k.port = int(port)
        k.proto = _proto_num(proto)
        ports[k] = ctypes.c_uint8(1)


def target_cflags(target):
    """-D flags compiling the target's addresses and published ports in as constants when
    there are few (the filter then needs no hash lookup for them); else the maps serve.
    The container-side ports of published ports (replies from them are not learned as
    outbound flows) exist only as constants: with more than CONST_PORTS, every flow is
    learned."""
    flags = []
    if len(target.addrs) <= CONST_ADDRS:
        flags.append(f"-DNADDRS={len(target.addrs)}")
        flags += [f"-DADDR{i}={_ip_u32(a):#x}" for i, a in enumerate(target.addrs)]
    if len(target.ports) <= CONST_PORTS:
        flags.append(f"-DNPORTS={len(target.ports)}")
        for i, (ip, port, proto) in enumerate(target.ports):
            flags += [f"-DPORT{i}={int(port)}", f"-DPPROTO{i}={_proto_num(proto)}",
                      f"-DPIP{i}={_ip_u32(ip):#x}"]
    cports = sorted(set(target.container_ports))
    if len(cports) <= CONST_PORTS:
        flags.append(f"-DNCPORTS={len(cports)}")
        for i, (port, proto) in enumerate(cports):
            flags += [f"-DCPORT{i}={int(port)}", f"-DCPPROTO{i}={_proto_num(proto)}"]
    return flags


def point_cflags(points, only_ports):
    """-D flags compiling each point's mode and --port in: ALL_POINTS/LEARN_POINTS masks."""
    every = sum(1 << i for i, p in enumerate(points) if p.mode in ("all", "all+learn"))
    learn = sum(1 << i for i, p in enumerate(points) if p.mode == "all+learn")
    return [f"-DALL_POINTS={every:#x}", f"-DLEARN_POINTS={learn:#x}",
            f"-DPORTFILTER={1 if only_ports else 0}"]


class PacketCapture:
    """tc capture on `points` for `target`. Context manager: start(), read(), stop()."""

    def __init__(self, points, target, snaplen=DEFAULT_SNAPLEN, ring_mb=16):
        if len(points) > MAX_POINTS:
            raise UsageError(f"too many capture points: {len(points)}", f"at most {MAX_POINTS}")
        if snaplen < 0:
            raise UsageError(f"bad --snaplen {snaplen}: must be >= 0")
        self.points = list(points)
        self.target = target
        self.snaplen = MAXCAP if snaplen == 0 else min(snaplen, MAXCAP)
        pages = 1
        while pages * mmap.PAGESIZE < ring_mb * 1024 * 1024:
            pages *= 2
        self.ring_pages = pages
        self.bpf = None
        self.reader = None
        self.attached = []      # (point, added_clsact)
        self.links = []         # tcx link fds
        wanted = os.environ.get(ATTACH_ENV) or None
        if wanted not in (None,) + ATTACH_KINDS:
            raise UsageError(f"bad {ATTACH_ENV}={wanted!r}", "use tcx or clsact")
        self.forced = wanted
        self.attach_kind = wanted    # set at start(): "tcx" or "clsact"
        self.attach_note = None      # why tcx was not used, when it was wanted
        self.lock = threading.Lock()
        self.budget = None      # last set_budget(); applied before the programs attach

    def start(self):
        try:
            from bcc import BPF
        except ImportError as exc:
            raise UnavailableError("packet capture needs bcc: python3-bpfcc is not installed",
                                   "run make install") from exc
        cflags = [f"-DSNAPLEN={self.snaplen}", f"-DRINGBUF_PAGES={self.ring_pages}",
                  f"-DNPOINTS={max(1, len(self.points))}",
                  "-Wno-macro-redefined"] + target_cflags(self.target) + \
            point_cflags(self.points, self.target.only_ports)
        try:
            self.bpf = BPF(src_file=str(SRC), cflags=cflags)
        except Exception as exc:
            raise UnavailableError(f"cannot load the tc capture program: {exc}",
                                   _hook_reason("tc")) from exc
        self._fill_maps()
        # the budget is in place before the first program attaches: a busy interface would
        # otherwise fill the ring unbudgeted while the other points attach
        self._write_budget()
        ring = self.bpf["events"]
        self.reader = RingReader(ring.map_fd, self.ring_pages * mmap.PAGESIZE)
        pid = os.getpid()
        sockets = {}
        try:
            for i, point in enumerate(self.points):
                if point.netns not in sockets:
                    sockets[point.netns] = _iproute(point.netns)
                added = False
                for direction, prefix in (("ingress", "pi_in_"), ("egress", "pi_eg_")):
                    fn = self.bpf.load_func(f"{prefix}{i}", BPF.SCHED_CLS)
                    if self.attach_kind != "clsact" and self._attach_tcx(point, fn.fd,
                                                                         direction):
                        continue
                    added = attach_filter(point, fn.fd, f"{point.name}:{direction}", direction,
                                          pid, sockets[point.netns]) or added
                self.attached.append((point, added))
        except Exception as exc:
            for ipr in sockets.values():
                ipr.close()
            self.stop()
            if isinstance(exc, UnavailableError):
                raise
            raise UnavailableError(f"cannot attach tc capture: {exc}",
                                   _hook_reason("tc")) from exc
        for ipr in sockets.values():
            ipr.close()
        return self

    def _attach_tcx(self, point, fd, direction):
        """Attach by tcx; False (and clsact from now on) if the kernel has no tcx."""
        try:
            self.links.append(tcx_attach(point, fd, direction))
        except OSError as exc:
            if self.forced == "tcx" or self.links:   # forced, or tcx broke half way
                raise UnavailableError(f"cannot attach tcx on {point.name}: {exc.strerror}")
            self.attach_kind = "clsact"
            self.attach_note = (f"tcx unavailable ({exc.strerror}): capturing with tc clsact "
                                f"(cls_bpf) filters instead")
            return False
        self.attach_kind = "tcx"
        return True

    def _fill_maps(self):
        import ctypes as ct
        b = self.bpf
        fill_target_maps(b, self.target)
        for p in self.target.only_ports:
            b["portfilter"][ct.c_uint16(int(p))] = ct.c_uint8(1)

    def add_flow(self, peer_ip, peer_port, local_port, proto):
        """Also capture an outbound flow on uplinks (e.g. learned from conntrack after SNAT)."""
        if not self.bpf:
            return
        flows = self.bpf["flows"]
        k = flows.Key()
        k.peer_ip = _ip_u32(peer_ip)
        k.peer_port = int(peer_port)
        k.local_port = int(local_port)
        k.proto = _proto_num(proto)
        flows[k] = ctypes.c_uint8(1)

    def read(self, limit=1 << 30):
        """Raw records available now (bytes; decode with `parse`)."""
        if not self.reader:
            return []
        with self.lock:
            return self.reader.read(limit)

    def set_budget(self, records, burst=None):
        """Allow `records` more ring buffer records (None: no budget); the rest are shed,
        except TCP SYN/FIN/RST packets, which have a budget of their own: `records` or
        enough for CONTROL_PACKETS_PER_PERIOD packets at every point, whichever is more.
        With `burst`, what is left of the last budget is kept as well, up to `burst`
        records in all (a token bucket: a quiet spell saves up for a burst); without, it
        is replaced. Before start() it sets the budget the programs start with."""
        self.budget = records
        self._write_budget(burst)

    def _write_budget(self, burst=None):
        if not self.bpf:
            if self.budget is not None and burst is not None:
                self.budget = min(self.budget, burst)
            return
        records = self.budget
        table = self.bpf["ctl"]
        key = ctypes.c_int(0)
        c = table.Leaf()
        if records is not None:
            tokens = int(records)
            if burst is not None:
                # read, then written: packets counted by the kernel in between are given
                # back (a few records over the budget, never a miscount)
                last = table[key]
                left = max(0, last.tokens) if last.limited else 0
                tokens = min(int(burst), left + tokens)
            c.tokens = tokens
            c.control = max(int(records), CONTROL_PACKETS_PER_PERIOD * len(self.points))
            c.limited = 1
        table[key] = c

    def counters(self):
        """{point index: (seen, lost, shed)} summed over CPUs, from the kernel."""
        out = {}
        if not self.bpf:
            return out
        per_cpu = self.bpf["stats"][ctypes.c_int(0)]
        for i in range(len(self.points)):
            out[i] = tuple(sum(c.v[i * 3 + k] for c in per_cpu) for k in range(3))
        return out

    @property
    def lost(self):
        return sum(v[1] for v in self.counters().values())

    def stop(self):
        """Detach every filter (and the clsact qdiscs we added); keep counters readable."""
        for point, added in self.attached:
            detach_point(point, added)
        self.attached = []
        for lfd in self.links:
            os.close(lfd)
        self.links = []

    def close(self):
        self.stop()
        if self.reader:
            with self.lock:
                self.reader.close()
            self.reader = None
        if self.bpf:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _PcapPkthdr(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long),
                ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class BpfFilter:
    """A pcap-filter expression (tcpdump syntax) compiled by libpcap, run on captured bytes.

    The expression is compiled once to classic BPF for Ethernet frames; `match(frame, wirelen)`
    runs it with pcap_offline_filter in userspace. It sees the first --snaplen bytes only, as
    tcpdump would with the same snap length.
    """

    def __init__(self, expr, snaplen=MAXCAP):
        import ctypes.util
        name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise UnavailableError("--filter needs libpcap (libpcap0.8)") from exc
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram),
                                     ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_BpfProgram),
                                            ctypes.POINTER(_PcapPkthdr), ctypes.c_char_p]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        self.lib = lib
        self.expr = expr
        handle = lib.pcap_open_dead(1, snaplen)   # DLT_EN10MB
        self.prog = _BpfProgram()
        try:
            if lib.pcap_compile(handle, ctypes.byref(self.prog), expr.encode(), 1,
                                0xFFFFFFFF) != 0:
                err = lib.pcap_geterr(handle).decode(errors="replace")
                raise UsageError(f"bad --filter {expr!r}: {err}")
        finally:
            lib.pcap_close(handle)
        self.hdr = _PcapPkthdr()
        self._match = lib.pcap_offline_filter
        self._ref_prog = ctypes.byref(self.prog)
        self._ref_hdr = ctypes.byref(self.hdr)

    def match(self, frame, wirelen=None):
        self.hdr.caplen = len(frame)
        self.hdr.len = wirelen or len(frame)
        return self._match(self._ref_prog, self._ref_hdr, frame) != 0
