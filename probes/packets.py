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

import array
import contextlib
import ctypes
import itertools
import mmap
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2.netlink.exceptions import NetlinkDecodeError, NetlinkError

from pyinspect.errors import UnavailableError, UsageError
from pyinspect.proc import pid_alive

from . import bpfobj, bpfsys, cdefs, pcapfilter
from .evring import POS_WORDS, EvAreas, EvRing, EvStream, cpu_list, default_ring_bytes
from .netns import in_netns

SRC = Path(__file__).with_name("packets.bpf.c")
HEADER = SRC.with_name("packets.h")
TC_PRIO = 0xC1A5  # tc filter preference used only by pyinspect trace
TC_HANDLE_BASE = 0x70690000  # "pi" << 16; a session's filters use base + (pid & 0xffff)
TC_NAME_PREFIX = "pyinspect-trace:"
(MAX_POINTS,) = cdefs.require(HEADER, "MAX_POINTS")
CONTROL_PACKETS_PER_PERIOD = 8  # SYN/FIN/RST kept per budget period and point, at least
_BUSY = 1 << 31
_DISCARD = 1 << 30
BUSY_TAIL = 8  # the newest records of a batch, read one by one (a program may be writing them)


@dataclass
class CapturePoint:
    """One interface to capture on: `netns` is a path (None = ours); `mode` 'filtered',
    'all' (only the container's traffic passes here) or 'all+learn' (also where the
    container's packets enter the host: outbound flows are learned for the uplinks)."""

    name: str
    ifindex: int
    netns: str | None = None
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


# what a netlink request through pyroute2 raises (the socket, the kernel's answer, decoding)
# and what entering a namespace that is gone raises
_NETLINK_ERRORS = (OSError, NetlinkError, NetlinkDecodeError, UnavailableError)


def _ensure_clsact(ipr, ifindex):
    """Add a clsact qdisc if missing; True when we added it."""
    for q in ipr.get_qdiscs(index=ifindex):
        if q.get_attr("TCA_KIND") == "clsact":
            return False
    ipr.tc("add", "clsact", ifindex)
    return True


def tc_handle(pid):
    """The tc filter handle of one session (distinct per live process: traces can overlap)."""
    return TC_HANDLE_BASE + (pid & 0xFFFF)


ATTACH_ENV = "PYINSPECT_TC_ATTACH"  # "tcx" or "clsact" forces one; unset: tcx if it works
ATTACH_KINDS = ("tcx", "clsact")


def _tcx_type(direction):
    return bpfsys.TCX_INGRESS if direction == "ingress" else bpfsys.TCX_EGRESS


def tcx_attach(point, fd, direction):
    """Attach a sched_cls program with a tcx link (kernel >= 6.6); returns the link fd.

    The link belongs to this process: the kernel detaches it when the fd is closed, also
    when the process is killed. Raises OSError when the kernel refuses (no tcx)."""
    attr = ctypes.create_string_buffer(64)  # prog_fd, target_ifindex, attach_type, flags
    struct.pack_into("<IIII", attr, 0, fd, point.ifindex, _tcx_type(direction), 0)
    with in_netns(point.netns):  # the ifindex is looked up in the caller's netns
        return bpfsys.bpf(bpfsys.LINK_CREATE, attr)


def tcx_program_ids(ifindex, direction, netns=None):
    """Ids of the programs attached by tcx on one side of an interface ([] if none or no
    tcx here)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = ctypes.create_string_buffer(64)  # target_ifindex, attach_type, .., prog_ids, count
    struct.pack_into(
        "<IIIIQI", attr, 0, ifindex, _tcx_type(direction), 0, 0, ctypes.addressof(ids), 64
    )
    try:
        with in_netns(netns):
            bpfsys.bpf(bpfsys.PROG_QUERY, attr)
    except (OSError, UnavailableError):  # no tcx here, or the namespace is gone
        return []
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(ids[: min(count, 64)])


def attach_filter(point, fd, prog_name, direction, owner_pid, ipr=None):
    """Attach a loaded sched_cls program on one side of `point`; True if clsact was added."""
    parent = "ffff:fff2" if direction == "ingress" else "ffff:fff3"
    own = ipr is None
    if own:
        ipr = _iproute(point.netns)
    try:
        added = _ensure_clsact(ipr, point.ifindex)
        ipr.tc(
            "add-filter",
            "bpf",
            point.ifindex,
            tc_handle(owner_pid),
            fd=fd,
            name=f"{TC_NAME_PREFIX}{owner_pid}:{prog_name}",
            parent=parent,
            prio=TC_PRIO,
            classid=1,
            direct_action=True,
        )
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
        except _NETLINK_ERRORS:  # no clsact here
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
    except _NETLINK_ERRORS:
        return
    try:
        mine = f"{TC_NAME_PREFIX}{os.getpid()}:"
        for parent, name, prio, handle in _our_filters(ipr, point.ifindex):
            if not name.startswith(mine):
                continue  # another live session's filter
            with contextlib.suppress(Exception):
                ipr.tc("del-filter", "bpf", point.ifindex, handle, parent=parent, prio=prio)
    except _NETLINK_ERRORS:
        pass
    finally:
        ipr.close()
    if remove_clsact:  # only if no one else's filters sit on it now
        remove_clsact_if_empty(point.netns, point.ifindex)


def remove_clsact_if_empty(netns, ifindex):
    """Delete a clsact qdisc that has no filters left (one pyinspect added). True if removed."""
    try:
        ipr = _iproute(netns)
    except _NETLINK_ERRORS:
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
    except _NETLINK_ERRORS:
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
        except _NETLINK_ERRORS:
            continue
        try:
            for link in ipr.get_links():
                idx = link["index"]
                for parent, name, prio, handle in _our_filters(ipr, idx):
                    try:
                        pid = int(name[len(TC_NAME_PREFIX) :].split(":")[0])
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
    """Reads a BPF ring buffer map by mmap, a whole batch per call, no per-record callback.

    Positions and record headers are read and written as whole aligned words (memoryview
    casts), never byte by byte as struct's '<Q' does: the kernel reads the consumer
    position while we write it, and we read a header while a program commits it."""

    def __init__(self, map_fd, size, record_bytes=0):
        self.size = size
        # with `record_bytes`, every record's size when the programs write one size only
        # (spans() then checks a batch's headers at once instead of one by one)
        self.record_bytes = record_bytes
        self._stride = (record_bytes + 8 + 7) & ~7  # a record with its 8-byte header
        # a committed header of that size, as many times as the ring holds records
        self._committed = memoryview(
            array.array("I", [record_bytes]) * (size // self._stride + 1 if record_bytes else 0)
        )
        page = mmap.PAGESIZE
        self.cons = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self.prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self.page = page
        self.mask = size - 1
        self._cons_word = memoryview(self.cons)[:8].cast("Q")
        self._prod_word = memoryview(self.prod)[:8].cast("Q")
        self._u32 = memoryview(self.prod).cast("I")  # record headers (8-aligned)

    def spans(self, limit=1 << 30):
        """(buffer, payload starts, consumer position past them) of the records available
        now, at most `limit`: each payload is read in place from `buffer` (the mapping,
        which holds a record that crosses the ring's end whole) until release() gives the
        space back."""
        cons_pos = self._cons_word[0]
        prod_pos = self._prod_word[0]
        words = self._u32
        base = self.page
        mask = self.mask
        got = 0
        bulk = None
        if self.record_bytes:
            # one size of record: the batch's headers are every stride-th word from here
            # (the data pages are mapped twice, so a batch that crosses the ring's end is
            # contiguous); when all of them say committed, not discarded, that size, the
            # records start a stride apart. The last few, which a program may still be
            # writing, are read one by one below
            stride = self._stride
            n = min((prod_pos - cons_pos) // stride, limit) - BUSY_TAIL
            if n > 0:
                w = (base + (cons_pos & mask)) >> 2
                if words[w : w + n * (stride >> 2) : stride >> 2] == self._committed[:n]:
                    bulk = range((w << 2) + 8, (w << 2) + 8 + n * stride, stride)
                    cons_pos += n * stride
                    got = n
        starts: list[int] = []
        add = starts.append
        while cons_pos < prod_pos and got < limit:
            off = base + (cons_pos & mask)
            ln = words[off >> 2]
            if ln & _BUSY:
                break
            if not ln & _DISCARD:
                add(off + 8)
            cons_pos += ((ln & ~(_BUSY | _DISCARD)) + 8 + 7) & ~7
            got += 1
        if bulk is not None:
            return self.prod, itertools.chain(bulk, starts) if starts else bulk, cons_pos
        return self.prod, starts, cons_pos

    def release(self, cons_pos):
        """Give the ring the space up to `cons_pos` (from spans()) back."""
        self._cons_word[0] = cons_pos

    def read(self, limit=1 << 30):
        """Return a list of record payloads (bytes) available now; advances the consumer."""
        buf, starts, cons_pos = self.spans(limit)
        words = self._u32
        out = [buf[s : s + (words[(s - 8) >> 2] & ~(_BUSY | _DISCARD))] for s in starts]
        self.release(cons_pos)
        return out

    def close(self):
        for view in (self._cons_word, self._prod_word, self._u32, self._committed):
            view.release()
        self.cons.close()
        self.prod.close()


def _proto_num(proto):
    return socket.IPPROTO_UDP if proto == "udp" else socket.IPPROTO_TCP


def is_v6(ip) -> bool:
    """True for an IPv6 address text ('::' included)."""
    return bool(ip) and ":" in ip


def _ip_u32(ip):
    """An IPv4 address as the u32 the kernel sees (network order bytes read little-endian);
    0 for '' or 0.0.0.0 (any)."""
    if not ip or ip == "0.0.0.0":
        return 0
    return struct.unpack("<I", socket.inet_aton(ip))[0]


def _ip6_key(ip):
    """An IPv6 address as the kernel's in6_addr (four network-order words); all zero for
    '', '::' or '0.0.0.0' (any)."""
    k = _In6Key()
    if ip and ip not in ("::", "0.0.0.0"):
        ctypes.memmove(ctypes.addressof(k), socket.inet_pton(socket.AF_INET6, ip), 16)
    return k


def fill_target_maps(bpf, target):
    """Fill a bcc program's `addrs` (u32) and `ports` (struct portkey) maps from `target`
    (drops.bpf.c declares both)."""
    for a in target.addrs:
        bpf["addrs"][ctypes.c_uint32(_ip_u32(a))] = ctypes.c_uint8(1)
    ports = bpf["ports"]
    for ip, port, proto in target.ports:
        k = ports.Key()
        k.ip = _ip_u32(ip)
        k.port = int(port)
        k.proto = _proto_num(proto)
        ports[k] = ctypes.c_uint8(1)


# -- the structs of packets.h ----------------------------------------------------------
# Written once, in packets.h; read from there (probes/cdefs.py) so the loader cannot drift.
(
    NCONST_ADDRS,
    NCONST_PORTS,
    NCONST_ADDRS6,
    NCONST_PORTS6,
    EV_MAXCAP,
    ASNAP,
    FILLER_TYPE,
    EV_SLACK,
    EV_POS_WORDS,
    C_SEEN,
    C_LOST,
    C_CAPPED,
    C_SHED,
    C_ALOST,
    NCOUNT,
) = cdefs.require(
    HEADER,
    "NCONST_ADDRS",
    "NCONST_PORTS",
    "NCONST_ADDRS6",
    "NCONST_PORTS6",
    "EV_MAXCAP",
    "ASNAP",
    "FILLER_TYPE",
    "EV_SLACK",
    "EV_POS_WORDS",
    "C_SEEN",
    "C_LOST",
    "C_CAPPED",
    "C_SHED",
    "C_ALOST",
    "NCOUNT",
)


class _PortKey(ctypes.Structure):
    _fields_ = [
        ("ip", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class _In6Key(ctypes.Structure):
    _fields_ = [("a", ctypes.c_uint32 * 4)]


class _PortKey6(ctypes.Structure):
    _fields_ = [
        ("ip", _In6Key),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class _FlowKey6(ctypes.Structure):
    _fields_ = [
        ("peer_ip", _In6Key),
        ("peer_port", ctypes.c_uint16),
        ("local_port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class _CPort(ctypes.Structure):
    _fields_ = [("port", ctypes.c_uint16), ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


class _FlowKey(ctypes.Structure):
    _fields_ = [
        ("peer_ip", ctypes.c_uint32),
        ("peer_port", ctypes.c_uint16),
        ("local_port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class _Config(ctypes.Structure):
    _fields_ = [
        ("all_points", ctypes.c_uint32),
        ("learn_points", ctypes.c_uint32),
        ("portfilter", ctypes.c_uint32),
        ("snaplen", ctypes.c_uint32),
        ("ring_bytes", ctypes.c_uint32),
        ("naddrs", ctypes.c_uint32),
        ("nports", ctypes.c_uint32),
        ("ncports", ctypes.c_uint32),
        ("addrs", ctypes.c_uint32 * NCONST_ADDRS),
        ("ports", _PortKey * NCONST_PORTS),
        ("cports", _CPort * NCONST_PORTS),
        ("naddrs6", ctypes.c_uint32),
        ("nports6", ctypes.c_uint32),
        ("addrs6", _In6Key * NCONST_ADDRS6),
        ("ports6", _PortKey6 * NCONST_PORTS6),
    ]


class _Ctl(ctypes.Structure):
    _fields_ = [
        ("tokens", ctypes.c_int64),
        ("control", ctypes.c_int64),
        ("limited", ctypes.c_uint32),
        ("evidence", ctypes.c_uint32),
        ("clock_offset", ctypes.c_int64),
    ]


class _Counters(ctypes.Structure):
    _fields_ = [("v", ctypes.c_uint64 * (MAX_POINTS * NCOUNT))]


assert EV_POS_WORDS == POS_WORDS, "struct evpos in packets.h and probes/evring.py differ"


AREC = struct.Struct("<QqIIIHBx")  # struct arec header in packets.h
AREC_SIZE = AREC.size + ASNAP


@dataclass(frozen=True, slots=True)
class Record:
    """One analysis record: a packet as the analysis path sees it (the first ASNAP bytes).
    `cpu`/`stream_pos` locate its evidence copy (stream_pos -1: none)."""

    ts_ns: int  # CLOCK_REALTIME
    point: int
    direction: str  # 'in' | 'out'
    len: int
    data: bytes
    cpu: int
    stream_pos: int


def parse(raw) -> Record:
    ts, pos, ln, caplen, cpu, point, d = AREC.unpack_from(raw, 0)
    return Record(
        ts, point, "out" if d else "in", ln, bytes(raw[AREC.size : AREC.size + caplen]), cpu, pos
    )


@dataclass
class PointCounters:
    """Per capture point, from the kernel: seen == captured + lost + capped."""

    seen: int = 0
    lost: int = 0  # evidence ring full
    capped: int = 0  # not written: the size cap was reached
    shed: int = 0  # over the analysis budget (still in the file)
    alost: int = 0  # analysis ring full (still in the file)

    @property
    def captured(self) -> int:
        return self.seen - self.lost - self.capped


@dataclass
class Chunk:
    """A range of one CPU's evidence stream, ready to append to a segment file: `parts`
    are whole pcapng blocks (EPB, filler, ..., EPB). A record at stream position p has
    its EPB at byte `p - start` of the chunk."""

    cpu: int
    start: int
    end: int
    parts: list


def split_target(target):
    """(IPv4 addresses, IPv6 addresses, IPv4 ports, IPv6 ports) of `target`. A port
    published on any address ('' / None) is published on both families, as Docker's
    `-p 8080:80` is on an IPv6-enabled network."""
    a4 = [a for a in target.addrs if not is_v6(a)]
    a6 = [a for a in target.addrs if is_v6(a)]
    p4 = [(ip, port, proto) for ip, port, proto in target.ports if not is_v6(ip)]
    p6 = [
        (ip, port, proto)
        for ip, port, proto in target.ports
        if is_v6(ip) or ip in (None, "", "0.0.0.0")  # the runtime records "any" as 0.0.0.0
    ]
    return a4, a6, p4, p6


def make_config(points, target, snaplen, ring_bytes):
    a4, a6, p4, p6 = split_target(target)
    target = Target(a4, p4, target.only_ports, target.container_ports)
    c = _Config()
    c.all_points = sum(1 << i for i, p in enumerate(points) if p.mode in ("all", "all+learn"))
    c.learn_points = sum(1 << i for i, p in enumerate(points) if p.mode == "all+learn")
    c.portfilter = 1 if target.only_ports else 0
    c.snaplen = snaplen
    c.ring_bytes = ring_bytes
    c.naddrs = len(target.addrs) if len(target.addrs) <= NCONST_ADDRS else NCONST_ADDRS + 1
    for i, a in enumerate(target.addrs[:NCONST_ADDRS]):
        c.addrs[i] = _ip_u32(a)
    c.nports = len(target.ports) if len(target.ports) <= NCONST_PORTS else NCONST_PORTS + 1
    for i, (ip, port, proto) in enumerate(target.ports[:NCONST_PORTS]):
        c.ports[i].ip, c.ports[i].port, c.ports[i].proto = _ip_u32(ip), int(port), _proto_num(proto)
    cports = sorted(set(target.container_ports))
    c.ncports = len(cports) if len(cports) <= NCONST_PORTS else NCONST_PORTS + 1
    for i, (port, proto) in enumerate(cports[:NCONST_PORTS]):
        c.cports[i].port, c.cports[i].proto = int(port), _proto_num(proto)
    c.naddrs6 = len(a6) if len(a6) <= NCONST_ADDRS6 else NCONST_ADDRS6 + 1
    for i, a in enumerate(a6[:NCONST_ADDRS6]):
        c.addrs6[i] = _ip6_key(a)
    c.nports6 = len(p6) if len(p6) <= NCONST_PORTS6 else NCONST_PORTS6 + 1
    for i, (ip, port, proto) in enumerate(p6[:NCONST_PORTS6]):
        c.ports6[i] = _PortKey6(_ip6_key(ip), int(port), _proto_num(proto))
    return c


def _pow2_pages(nbytes):
    pages = 1
    while pages * mmap.PAGESIZE < nbytes:
        pages *= 2
    return pages * mmap.PAGESIZE


class PacketCapture:
    """tc capture on `points` for `target`: start(), evidence via wait()/chunks()/
    consumed(), analysis records via read(), counters(), stop(), close().

    Evidence: every matched packet (up to `snaplen`, at most EV_MAXCAP) as pcapng EPBs in
    per-CPU rings of `ring_mb` MiB each (None: evring.default_ring_bytes()) in an mmapped
    BPF array (probes/evring.py).
    Analysis: within the budget (set_budget), the first ASNAP bytes of each packet in a
    ring buffer.
    """

    def __init__(self, points, target, snaplen=262144, ring_mb=None, analysis_mb=4):
        if len(points) > MAX_POINTS:
            raise UsageError(f"too many capture points: {len(points)}", f"at most {MAX_POINTS}")
        if snaplen < 0:
            raise UsageError(f"bad --snaplen {snaplen}: must be >= 0")
        self.points = list(points)
        self.target = target
        self.snaplen = EV_MAXCAP if snaplen == 0 else min(snaplen, EV_MAXCAP)
        self.ring_bytes = (
            default_ring_bytes() if ring_mb is None else _pow2_pages(int(ring_mb * 1024 * 1024))
        )
        self.analysis_bytes = _pow2_pages(analysis_mb * 1024 * 1024)
        self.obj: bpfobj.BpfObject | None = None
        self.rings: list[EvStream] = []  # per online CPU
        self._ring_of: dict[int, EvStream] = {}  # the same by CPU
        self.areas: EvAreas | None = None
        self.reader = None
        self.attached = []  # (point, added_clsact)
        self.links = []  # tcx link fds
        wanted = os.environ.get(ATTACH_ENV) or None
        if wanted not in (None,) + ATTACH_KINDS:
            raise UsageError(f"bad {ATTACH_ENV}={wanted!r}", "use tcx or clsact")
        self.forced = wanted
        self.attach_kind = wanted
        self.attach_note = None
        self.lock = threading.Lock()
        self._ctl = _Ctl(evidence=1, clock_offset=_clock_offset())
        self._ctl_lock = threading.Lock()  # the writer thread and the poll both set ctl
        self._possible = cpu_list("possible")
        self._epoll = None
        self._final = None

    def _loaded(self) -> bpfobj.BpfObject:
        if self.obj is None:
            raise UnavailableError("the tc capture program is not loaded")
        return self.obj

    # -- start / stop -------------------------------------------------------------------
    def start(self):
        ncpu = max(self._possible) + 1
        cfg = make_config(self.points, self.target, self.snaplen, self.ring_bytes)
        progs = {f"pi_{d}_{i}" for i in range(len(self.points)) for d in ("in", "eg")}
        # an area for each online CPU's index (the array allocates every entry; a CPU that
        # comes online later finds none and counts its packets lost, as it found no ring)
        nev = max(cpu_list("online")) + 1
        sizes = {"evbuf": nev, "evpos": nev, "evbells": ncpu, "arecs": self.analysis_bytes}
        try:
            self.obj = bpfobj.BpfObject.open(
                SRC,
                rodata=bytes(cfg),
                programs=progs,
                max_entries=sizes,
                value_sizes={"evbuf": self.ring_bytes + EV_SLACK},
            ).load()
        except UnavailableError as exc:
            self.close()
            raise UnavailableError(
                f"cannot load the tc capture program: {exc}", _hook_reason("tc")
            ) from None
        try:
            self._fill_maps()
            self._write_ctl()  # the budget is in place before the first program attaches
            self._open_rings()
            self.reader = RingReader(
                self.obj.map_fd("arecs"), self.analysis_bytes, record_bytes=AREC_SIZE
            )
            self._attach()
        except Exception as exc:
            self.close()
            if isinstance(exc, UnavailableError):
                raise
            raise UnavailableError(f"cannot attach tc capture: {exc}", _hook_reason("tc")) from exc
        return self

    def _open_rings(self):
        import select

        obj = self._loaded()
        self._epoll = select.epoll()
        online = cpu_list("online")
        self.areas = EvAreas(
            obj.map_fd("evbuf"),
            obj.map_fd("evpos"),
            max(online) + 1,
            self.ring_bytes,
            EV_SLACK,
        )
        bells = obj.map_fd("evbells")
        for cpu in online:
            bell = EvRing(cpu, mmap.PAGESIZE)
            try:
                _map_update(bells, ctypes.c_uint32(cpu), ctypes.c_uint32(bell.fd))
            except OSError:
                bell.close()
                raise
            stream = self.areas.stream(cpu, bell)
            self.rings.append(stream)
            self._ring_of[cpu] = stream
            self._epoll.register(stream.fd, select.EPOLLIN | select.EPOLLET)

    def _attach(self):
        obj = self._loaded()
        pid = os.getpid()
        sockets = {}
        try:
            for i, point in enumerate(self.points):
                if point.netns not in sockets:
                    sockets[point.netns] = _iproute(point.netns)
                added = False
                for direction, prefix in (("ingress", "pi_in_"), ("egress", "pi_eg_")):
                    fd = obj.prog_fd(f"{prefix}{i}")
                    if self.attach_kind != "clsact" and self._attach_tcx(point, fd, direction):
                        continue
                    added = (
                        attach_filter(
                            point,
                            fd,
                            f"{point.name}:{direction}",
                            direction,
                            pid,
                            sockets[point.netns],
                        )
                        or added
                    )
                self.attached.append((point, added))
        finally:
            for ipr in sockets.values():
                ipr.close()

    def _attach_tcx(self, point, fd, direction):
        """Attach by tcx; False (and clsact from now on) if the kernel has no tcx."""
        try:
            self.links.append(tcx_attach(point, fd, direction))
        except OSError as exc:
            if self.forced == "tcx" or self.links:  # forced, or tcx broke half way
                raise UnavailableError(
                    f"cannot attach tcx on {point.name}: {exc.strerror}"
                ) from exc
            self.attach_kind = "clsact"
            self.attach_note = (
                f"tcx unavailable ({exc.strerror}): capturing with tc clsact "
                f"(cls_bpf) filters instead"
            )
            return False
        self.attach_kind = "tcx"
        return True

    def _fill_maps(self):
        obj = self._loaded()
        t = self.target
        a4, a6, p4, p6 = split_target(t)
        if len(a4) > NCONST_ADDRS:
            fd = obj.map_fd("addrs")
            for a in a4:
                _map_update(fd, ctypes.c_uint32(_ip_u32(a)), ctypes.c_uint8(1))
        if len(p4) > NCONST_PORTS:
            fd = obj.map_fd("ports")
            for ip, port, proto in p4:
                _map_update(
                    fd, _PortKey(_ip_u32(ip), int(port), _proto_num(proto)), ctypes.c_uint8(1)
                )
        if len(a6) > NCONST_ADDRS6:
            fd = obj.map_fd("addrs6")
            for a in a6:
                _map_update(fd, _ip6_key(a), ctypes.c_uint8(1))
        if len(p6) > NCONST_PORTS6:
            fd = obj.map_fd("ports6")
            for ip, port, proto in p6:
                _map_update(
                    fd, _PortKey6(_ip6_key(ip), int(port), _proto_num(proto)), ctypes.c_uint8(1)
                )
        fd = obj.map_fd("portfilter")
        for p in t.only_ports:
            _map_update(fd, ctypes.c_uint16(int(p)), ctypes.c_uint8(1))

    def add_flow(self, peer_ip, peer_port, local_port, proto):
        """Also capture an outbound flow on uplinks (e.g. learned from conntrack after SNAT)."""
        if not self.obj:
            return
        if is_v6(peer_ip):
            k6 = _FlowKey6(_ip6_key(peer_ip), int(peer_port), int(local_port), _proto_num(proto))
            _map_update(self.obj.map_fd("flows6"), k6, ctypes.c_uint8(1))
            return
        k = _FlowKey(_ip_u32(peer_ip), int(peer_port), int(local_port), _proto_num(proto))
        _map_update(self.obj.map_fd("flows"), k, ctypes.c_uint8(1))

    def stop(self):
        """Detach every program (and the clsact qdiscs we added); counters stay readable."""
        for point, added in self.attached:
            detach_point(point, added)
        self.attached = []
        for lfd in self.links:
            os.close(lfd)
        self.links = []

    def close(self):
        self.stop()
        if self.obj and self._final is None:
            with contextlib.suppress(Exception):
                self._final = self.counters()
        if self.reader:
            with self.lock:
                self.reader.close()
            self.reader = None
        if self._epoll:
            self._epoll.close()
            self._epoll = None
        for ring in self.rings:
            ring.close()
        self.rings = []
        self._ring_of = {}
        if self.areas:
            self.areas.close()
            self.areas = None
        if self.obj:
            self.obj.close()
            self.obj = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- evidence -----------------------------------------------------------------------
    def evidence_cpus(self):
        """The CPUs with an evidence buffer, in order."""
        return [ring.cpu for ring in self.rings]

    def wait(self, timeout):
        """Sleep until some CPU has produced another quarter of its evidence ring (its
        bell rang), or `timeout` s. Several writer threads may wait at once."""
        if not self._epoll:
            return
        self._epoll.poll(timeout)
        for ring in self.rings:  # also after a timeout: a full bell rings no more
            ring.ring_off()

    def chunks(self, cpus=None):
        """The evidence each CPU (of `cpus`, default all) has produced since the last
        call, as Chunks (whole pcapng blocks). Give each back with consumed() once
        written. One caller at a time per CPU."""
        out = []
        for ring in self.rings:
            if cpus is not None and ring.cpu not in cpus:
                continue
            chunk = self.chunk(ring.cpu, ring.tail)
            if chunk is not None:
                out.append(chunk)
        return out

    def tail(self, cpu):
        """Where `cpu`'s stream was last given back (consumed)."""
        return self._ring(cpu).tail

    def chunk(self, cpu, start):
        """`cpu`'s stream from `start` (a block boundary at or after its tail) to what
        the program has committed, as a Chunk; None when there is nothing new. Several
        writers can hold chunks of one stream: give_back() in stream order."""
        ring = self._ring(cpu)
        head = ring.head()
        if head == start:
            return None
        if not self._chain_ok(ring, start, head) or start < ring.tail:
            raise UnavailableError(f"evidence stream of CPU {cpu} is out of step at {start}")
        return Chunk(cpu, start, head, ring.pending(start, head))

    def give_back(self, cpu, upto):
        """Everything of `cpu`'s stream before `upto` is written: its space goes back."""
        self._ring(cpu).consume(upto)

    def _ring(self, cpu):
        return self._ring_of[cpu]

    @staticmethod
    def _chain_ok(ring, start, head):
        """The range starts with one of our blocks, no longer than the range: cheap
        evidence that the stream and our position agree."""
        return (
            start < head
            and head - start <= ring.size
            and ring.read_u32(start) in (6, FILLER_TYPE)
            and 32 <= ring.read_u32(start, 4) <= head - start
        )

    def consumed(self, chunk):
        """The chunk is written: its space goes back to the program."""
        for v in chunk.parts:
            v.release()
        self.give_back(chunk.cpu, chunk.end)

    def set_evidence(self, on):
        """Write evidence (True) or count it as capped (False: the size cap was reached)."""
        with self._ctl_lock:
            self._ctl.evidence = 1 if on else 0
            self._write_ctl(keep_tokens=True)

    # -- analysis -----------------------------------------------------------------------
    def read(self, limit=1 << 30):
        """Analysis records available now (raw bytes; decode with `parse`)."""
        if not self.reader:
            return []
        with self.lock:
            return self.reader.read(limit)

    def read_in_place(self, take, limit=1 << 30):
        """take(buffer, starts) on the analysis records available now, read in place
        (AREC header, then the packet's first bytes, at each start) before their space
        goes back to the ring; returns what take returned (None when nothing runs)."""
        if not self.reader:
            return None
        with self.lock:
            buf, starts, cons_pos = self.reader.spans(limit)
            try:
                return take(buf, starts)
            finally:
                self.reader.release(cons_pos)

    def set_budget(self, records, burst=None):
        """Allow `records` more analysis records (None: no budget); the rest are shed,
        except TCP SYN/FIN/RST packets, which have a budget of their own: `records` or
        enough for CONTROL_PACKETS_PER_PERIOD packets at every point, whichever is more.
        With `burst`, what is left of the last budget is kept as well, up to `burst`
        records in all (a token bucket); without, it is replaced. The evidence file does
        not depend on it."""
        with self._ctl_lock:
            c = self._ctl
            if records is None:
                c.limited = 0
            else:
                tokens = int(records)
                if burst is not None and self.obj:
                    last = self._read_ctl()
                    left = max(0, last.tokens) if last.limited else 0
                    tokens = min(int(burst), left + tokens)
                elif burst is not None:
                    tokens = min(tokens, int(burst))
                c.tokens = tokens
                c.control = max(int(records), CONTROL_PACKETS_PER_PERIOD * len(self.points))
                c.limited = 1
            c.clock_offset = _clock_offset()
            self._write_ctl()

    def _read_ctl(self):
        obj = self._loaded()
        c = _Ctl()
        _map_lookup(obj.map_fd("ctl"), ctypes.c_uint32(0), c)
        return c

    def _write_ctl(self, keep_tokens=False):
        if not self.obj:
            return
        if keep_tokens:
            last = self._read_ctl()
            self._ctl.tokens, self._ctl.control = last.tokens, last.control
        _map_update(self.obj.map_fd("ctl"), ctypes.c_uint32(0), self._ctl)

    # -- counters -----------------------------------------------------------------------
    def counters(self):
        """{point index: PointCounters} summed over CPUs (the last reading after close)."""
        if not self.obj:
            return self._final or {}
        per = ctypes.sizeof(_Counters)
        buf = (_Counters * len(self._possible))()
        assert per % 8 == 0
        _map_lookup(self.obj.map_fd("stats"), ctypes.c_uint32(0), buf)
        out = {}
        for i in range(len(self.points)):
            vals = [sum(c.v[i * NCOUNT + k] for c in buf) for k in range(NCOUNT)]
            out[i] = PointCounters(*vals)
        return out

    def produced(self):
        """{cpu: evidence bytes committed} for each CPU's stream."""
        return {ring.cpu: ring.head() for ring in self.rings}

    @property
    def lost(self):
        return sum(v.lost for v in self.counters().values())


def _clock_offset():
    return time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def _map_update(fd, key, value):
    from .bpfobj import libbpf

    if libbpf().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf map update: {os.strerror(err)}")


def _map_lookup(fd, key, value):
    from .bpfobj import libbpf

    if libbpf().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf map lookup: {os.strerror(err)}")


class BpfFilter(pcapfilter.BpfFilter):
    """A pcap-filter expression for the captured Ethernet frames (`trace --filter`): the
    binding is probes/pcapfilter.py's; `match(frame, wirelen)` sees the first --snaplen
    bytes only, as tcpdump would with the same snap length."""

    def __init__(self, expr: str, snaplen: int = EV_MAXCAP) -> None:
        super().__init__(expr, pcapfilter.DLT_EN10MB, snaplen)
