"""Export traced packets to one pcapng: a named interface per capture point.

A trace's packets live in pcapng segment files (`<database dir>/pcap/<session>/
seg-NNNNN.pcapng`, one interface per capture point, interface id = the point's `seq`);
the store has the segment rows and an index of the packets the analysis looked at.
`export()` reads the segment files of one or more `trace_sessions` (each file sorted by
time with `pyinspect.pcapng.Segment`: its packets come in runs) and merges them by
timestamp through `PcapNgWriter`. Filters: session or container, a time window (whole
files skipped by their time range), a flow 5-tuple (matched through the `flows` table,
so the NAT-translated side of the same connection comes along: the indexed packets of
those flows, plus every packet with one of their tuples in the files that overlap the
flows' time), and a pcap-filter expression compiled to BPF with libpcap
(`probes/pcapfilter.py`, the one libpcap binding).
"""

import bisect
import heapq
import ipaddress
import json
import re
import struct
from array import array
from pathlib import Path

from ..dockerfmt.timespec import parse_time as _parse_time
from ..errors import NotFoundError, UsageError
from ..probes.pcapfilter import BpfFilter
from ..runtime.fsutil import atomic_write
from .pcapng import KEY_OFFSET, KEY_SHIFT, RAW_EPB, PcapNgWriter, Segment

U32_LE = struct.Struct("<I")


# -- argument parsing (shared with the CLI and the web) --------------------------------
def parse_time(text, now_ns=None):
    """A point in time as epoch ns: see `pyinspect.dockerfmt.timespec` for the accepted forms."""
    return _parse_time(text, now_ns)


_ENDPOINT = r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+)(?::(\d+))?"
_FLOW = re.compile(
    r"^(?:(tcp|udp|sctp|icmp|icmp6)[\s:/]+)?"
    + _ENDPOINT
    + r"\s*(?:->|>|,|\s)\s*"
    + _ENDPOINT
    + r"$",
    re.I,
)


def parse_flow(text):
    """`[PROTO ]SRC[:SPORT]->DST[:DPORT]` -> (proto, src, sport, dst, dport).

    Separators `->`, `>`, `,` or a space; IPv6 in brackets (`[fd00::2]:80`). The proto
    defaults to tcp when ports are given; ports are None when left out.
    """
    if isinstance(text, (tuple, list)):
        proto, src, sport, dst, dport = text
        return (
            proto.lower(),
            str(ipaddress.ip_address(src)),
            sport,
            str(ipaddress.ip_address(dst)),
            dport,
        )
    m = _FLOW.match(str(text).strip())
    if not m:
        raise UsageError(
            f"bad --flow {text!r}: expected [PROTO ]SRC:SPORT->DST:DPORT",
            "e.g. 'tcp 192.168.1.2:40000->192.168.1.10:8088'",
        )
    proto, src, sport, dst, dport = m.groups()
    try:
        src = str(ipaddress.ip_address(src.strip("[]")))
        dst = str(ipaddress.ip_address(dst.strip("[]")))
    except ValueError as exc:
        raise UsageError(f"bad --flow {text!r}: {exc}") from None
    sport = int(sport) if sport else None
    dport = int(dport) if dport else None
    for p in (sport, dport):
        if p is not None and not 0 <= p <= 65535:
            raise UsageError(f"bad --flow {text!r}: port {p} out of range")
    proto = (proto or ("tcp" if sport or dport else "ip")).lower()
    return (proto, src, sport, dst, dport)


def _side(host, port, role):
    part = f"{role} host {host}"
    if port is not None:
        part += f" and {role} port {port}"
    return part


def flow_expression(tuples):
    """pcap-filter text matching any of the (proto, src, sport, dst, dport) tuples in
    either direction."""
    alts = []
    for proto, src, sport, dst, dport in tuples:
        fwd = f"({_side(src, sport, 'src')} and {_side(dst, dport, 'dst')})"
        rev = f"({_side(dst, dport, 'src')} and {_side(src, sport, 'dst')})"
        p = {"ip": "", "icmp6": "icmp6"}.get(proto, proto)
        alts.append(f"({p + ' and ' if p else ''}({fwd} or {rev}))")
    return " or ".join(alts)


# -- store queries ---------------------------------------------------------------------
def list_sessions(store):
    """Every trace session (newest first) with its capture points, packets (the
    summary's captured count per point, summed; the index count when the trace has no
    summary, e.g. killed), lost (from the summary), segment files and their bytes."""
    rows = store.session_list()
    for r in rows:
        summary = _summary(r.pop("summary"))
        packets = _captured(summary)
        if packets is None:
            packets = store.indexed_count(session_id=r["id"])
        r["packets"] = packets
        r["lost"] = summary.get("lost") if summary else None
        if r["bytes"] is None or r["status"] == "running":
            # a trace still writing (or killed before it said): the files' own sizes
            sizes = [
                st.st_size
                for g in store.segments([r["id"]])
                if (st := _stat(store.segment_path(g.path)))
            ]
            r["bytes"] = sum(sizes) if sizes else r["bytes"]
        r["bytes"] = r["bytes"] or 0
    return rows


def _summary(text):
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _captured(summary):
    """Packets the trace's files hold, from its summary; None when it does not say."""
    per_point = (summary or {}).get("packets_per_point")
    if not isinstance(per_point, dict):
        return None
    return sum(int(v.get("captured") or 0) for v in per_point.values() if isinstance(v, dict))


def _stat(path):
    try:
        return path.stat()
    except OSError:
        return None


def find_sessions(store, session_id=None, container=None):
    """Session rows for an id or a container (name, full id or id prefix)."""
    if session_id is not None:
        try:
            sid = int(session_id)
        except (TypeError, ValueError):
            raise UsageError(f"bad session id {session_id!r}: not a number") from None
        ref = store.session_ref(sid) if -(2**63) <= sid < 2**63 else None
        rows = [ref] if ref else []
        if not rows:
            raise NotFoundError(f"no trace session {sid}", "see `pyinspect pcap ls`")
        if (
            container
            and container not in (rows[0][1], rows[0][2])
            and not (rows[0][1] or "").startswith(container)
        ):
            raise NotFoundError(f"trace session {sid} is not of container {container}")
        return rows
    if not container:
        raise UsageError("pcap export: give --session ID or --container NAME")
    rows = store.sessions_of(container)
    if not rows and len(container) >= 4 and re.fullmatch(r"[0-9a-f]+", container):
        rows = store.sessions_of(container, id_prefix=True)
    if not rows:
        raise NotFoundError(
            f"no trace sessions of container {container}", "trace it first with `pyinspect trace`"
        )
    return rows


def _flow_match(store, session_ids, flow):
    """(flow ids, tuples) of stored flows that match `flow` on either NAT side."""
    proto, src, sport, dst, dport = flow
    ids, tuples = set(), {flow}
    for row in store.flow_sides(session_ids):
        fid, fproto = row[0], (row[1] or "").lower()
        if proto not in ("ip", fproto):
            continue
        sides = [(row[2], row[3], row[4], row[5]), (row[6], row[7], row[8], row[9])]
        want = [(src, sport, dst, dport), (dst, dport, src, sport)]
        if any(_tuple_eq(side, w) for side in sides for w in want):
            ids.add(fid)
            for s in sides:
                if s[0] and s[2]:
                    tuples.add((fproto or proto, s[0], s[1], s[2], s[3]))
    return ids, sorted(tuples, key=str)


def _tuple_eq(side, want):
    a, ap, b, bp = side
    wa, wap, wb, wbp = want
    return a == wa and b == wb and (wap is None or ap == wap) and (wbp is None or bp == wbp)


def point_name(name, description, container):
    """The pcapng if_name of a stored capture point.

    The tracer stores bare interface names (two points may both be `eth0`) and a
    description that starts with the point's role; this gives the names Wireshark shows:
    container `test/eth0`, veth `vethab12cd3@host (test)`, bridge `pyinspect0`, uplink
    `eth0@host`. A name that already says where it is (has `@` or `/`) is kept.
    """
    name = name or ""
    if not name or "@" in name or "/" in name:
        return name
    role = (description or "").split(":", 1)[0].strip()
    if role == "container" and container:
        return f"{container}/{name}"
    if role == "veth":
        return f"{name}@host ({container})" if container else f"{name}@host"
    if role == "uplink":
        return f"{name}@host"
    return name


class _Interfaces(dict):
    """(session id, interface id in its segment files) -> output interface id.

    Capture points are added up front; an interface of a segment file that is not a
    capture point of the store gets an interface on first use, named as in the file
    (`names`, filled as files are opened) or `point<ID>`."""

    def __init__(self, writer):
        super().__init__()
        self.writer = writer
        self.names = {}
        self.by_name = {}  # (name, description, linktype) -> output interface id

    def add(self, key, name, desc, linktype, snaplen=0):
        """Map `key` to the interface of that name, adding it if it is new."""
        named = (name, desc, linktype)
        if named not in self.by_name:
            self.by_name[named] = self.writer.add_interface(name, desc, linktype, snaplen)
        self[key] = self.by_name[named]
        return self[key]

    def __missing__(self, key):
        name, desc, linktype = self.names.get(key) or ("", "", 1)
        return self.add(
            key, name or f"point{key[1]}", desc or "capture point not in the store", linktype or 1
        )


# How far a segment's packets may lie outside its [started_ns, ended_ns]: a packet is
# captured a little before the file it lands in is opened (the evidence writer drains
# the kernel buffers every 50 ms). SKIP_SLACK_NS widens the range used to skip files
# for --since/--until/--flow; MERGE_SLACK_NS decides when a file joins the merge (the
# files open at once are those of this span, so memory stays bounded).
SKIP_SLACK_NS = 10 * 10**9
MERGE_SLACK_NS = 2 * 10**9
_INF = float("inf")


class _Source:
    """One segment file's part of an export: `rows()` yields write_rows() tuples in
    time order. `only` limits it to these EPB offsets (indexed packets)."""

    def __init__(self, seg, path, lo, hi, order, only=None):
        self.seg, self.path, self.lo, self.hi = seg, path, lo, hi
        self.order = order
        self.only = only


class _Export:
    """The state of one export(): filters, comments, interface names."""

    def __init__(self, index, since, until, flow_offsets, flow_match, user_match, comments, ifmap):
        self.index = index  # segment id -> SegmentIndex
        self.since, self.until = since, until
        self.flow_offsets = flow_offsets  # segment id -> {offset} (indexed to the flow)
        self.flow_match = flow_match  # (data, wirelen, linktype) -> bool, or None
        self.user_match = user_match
        self.comments = comments  # flow id -> comment text
        self.ifmap = ifmap
        self.missing = []

    def rows(self, src):
        seg = src.seg
        try:
            f = Segment(src.path)
        except NotFoundError:
            self.missing.append(str(src.path))
            return
        with f:
            keys = f.keys()
            sid = seg.session_id
            for iface in f.interfaces:
                self.ifmap.names.setdefault(
                    (sid, iface.index), (iface.name, iface.description, iface.linktype)
                )
            linktypes = [i.linktype for i in f.interfaces]
            # packets copied block by block (no decode) from interfaces in the writer's
            # own form: little-endian, nanosecond timestamps, no offset
            raw_ok = [
                f.sec.endian == "<" and mult == 1 and div == 1 and shift is None and not tsoffset
                for _i, mult, div, shift, tsoffset in f.sec.interfaces
            ]
            index = self.index.get(seg.id)
            offs = array("q", index.offsets if index else ())
            fids = index.flow_ids if index else []
            comments = self.comments
            start = 0
            if self.since is not None:
                start = bisect.bisect_left(keys, self.since << KEY_SHIFT)
            stop = _INF if self.until is None else (self.until << KEY_SHIFT) | KEY_OFFSET
            only = src.only
            flow_set = self.flow_offsets.get(seg.id, ())
            flow_match, user_match = self.flow_match, self.user_match
            packet_at = f.packet_at
            mm = f.mapped
            u32 = U32_LE.unpack_from
            for i in range(start, len(keys)):
                key = keys[i]
                if key > stop:
                    break
                off = key & KEY_OFFSET
                if only is not None and off not in only:
                    continue
                if_id = u32(mm, off + 8)[0]  # keys() checked the block is whole
                if flow_match is not None or user_match is not None:
                    caplen = u32(mm, off + 20)[0]
                    data, wirelen = mm[off + 28 : off + 28 + caplen], u32(mm, off + 24)[0]
                    if (
                        flow_match is not None
                        and off not in flow_set
                        and not flow_match(data, wirelen, linktypes[if_id])
                    ):
                        continue
                    if user_match is not None and not user_match(data, wirelen, linktypes[if_id]):
                        continue
                comment = None
                if offs:
                    j = bisect.bisect_left(offs, off)
                    if j < len(offs) and offs[j] == off:
                        comment = comments.get(fids[j])
                if comment is None and raw_ok[if_id]:
                    yield (
                        key >> KEY_SHIFT,
                        mm[off : off + u32(mm, off + 4)[0]],
                        (sid, if_id),
                        None,
                        RAW_EPB,
                        None,
                    )
                    continue
                pkt = packet_at(off)  # a comment to add, or another time form
                yield (
                    key >> KEY_SHIFT,
                    pkt.data,
                    (sid, if_id),
                    pkt.direction,
                    pkt.orig_len,
                    pkt.comment or comment,
                )


def _merge(sources, rows_of):
    """Rows of every source in timestamp order (ties: source order, then file order).

    Sources join the heap when the merge reaches their `lo`, so only the files whose
    time ranges overlap the current point are open (and sorted in memory) at once."""
    pending = sorted(sources, key=lambda s: (s.lo, s.order))
    pending.reverse()  # pop() from the end: the earliest
    heap: list[tuple] = []
    while heap or pending:
        while pending and (not heap or pending[-1].lo <= heap[0][0]):
            src = pending.pop()
            gen = rows_of(src)
            first = next(gen, None)
            if first is not None:
                heapq.heappush(heap, (first[0], src.order, first, gen))
        if not heap:
            break
        if len(heap) == 1:  # one file open: no heap work until the next joins
            _, order, row, gen = heap.pop()
            yield row
            limit = pending[-1].lo if pending else _INF
            for row in gen:
                if row[0] >= limit:
                    heapq.heappush(heap, (row[0], order, row, gen))
                    break
                yield row
            continue
        _, order, row, gen = heap[0]
        yield row
        nxt = next(gen, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt[0], order, nxt, gen))


def export(
    store,
    session_id=None,
    container=None,
    since=None,
    until=None,
    flow=None,
    bpf_filter=None,
    out=None,
):
    """Write the packets of a session (or of every session of a container) to `out`.

    `since`/`until` are epoch ns (or parse_time() strings), `flow` a 5-tuple or its
    text, `bpf_filter` a pcap-filter expression. `out` is a path (written to a temp
    file beside it and renamed on success) or a binary file object.
    Returns {"output", "packets", "interfaces", "sessions", "missing"} (`missing`: the
    segment files the store lists that are gone).
    """
    if out is None:
        raise UsageError("pcap export: no output file (-o FILE)")
    sessions = find_sessions(store, session_id, container)
    sids = [row[0] for row in sessions]
    snaplen = max((row[3] or 0) for row in sessions)
    since, until = parse_time(since), parse_time(until)
    if since is not None and until is not None and since > until:
        raise UsageError("pcap export: --since is after --until")
    points = [
        (sid, seq, point_name(name, desc, cname), desc, linktype)
        for sid, seq, name, desc, linktype, cname in store.session_points(sids)
    ]

    def compiled(cache, expr, linktype):
        f = cache.get(linktype)
        if f is None:
            f = cache[linktype] = BpfFilter(expr, linktype or 1, snaplen or 262144)
        return f

    user_match = None
    if bpf_filter:
        user_filters: dict[int, BpfFilter] = {}
        for lt in {p[4] or 1 for p in points} or {1}:
            compiled(user_filters, bpf_filter, lt)  # syntax errors before any output

        def user_match(data, wirelen, lt):
            return compiled(user_filters, bpf_filter, lt).match(data, wirelen)

    segments = store.segments(sids)
    index = store.segment_index(sids)
    lo_hi = {g.id: _bounds(store, g, index.get(g.id)) for g in segments}
    flow_match = None
    flow_offsets: dict[int, set[int]] = {}
    scan = segments
    if flow is not None:
        flow = parse_flow(flow)
        flow_ids, tuples = _flow_match(store, sids, flow)
        flow_expr = flow_expression(tuples)
        flow_filters: dict[int, BpfFilter] = {}

        def flow_match(data, wirelen, lt):
            return compiled(flow_filters, flow_expr, lt).match(data, wirelen)

        for seg_id, offset, _ts in store.indexed_packets(flow_ids):
            flow_offsets.setdefault(seg_id, set()).add(offset)
        first, last = store.flow_span(flow_ids)
        if first is not None:  # scan the files that overlap the flows' time
            scan = [
                g
                for g in segments
                if lo_hi[g.id][1] >= first - SKIP_SLACK_NS
                and lo_hi[g.id][0] <= last + SKIP_SLACK_NS
            ]
    sources = []
    scanned = {g.id for g in scan}
    for order, g in enumerate(segments):
        lo, hi = lo_hi[g.id]
        if since is not None and hi < since or until is not None and lo > until:
            continue
        only = None
        if g.id not in scanned:
            only = flow_offsets.get(g.id)
            if not only:
                continue
        sources.append(
            _Source(
                g, store.segment_path(g.path), lo + SKIP_SLACK_NS - MERGE_SLACK_NS, hi, order, only
            )
        )
    comments = {
        fid: f"flow {fid}: {nat}" if nat else f"flow {fid}"
        for fid, nat in store.flow_nats(sids).items()
    }

    def write(fh):
        with PcapNgWriter(fh, flush_interval=None) as w:
            ifmap = _Interfaces(w)
            for sid, seq, name, desc, linktype in points:  # same name: one interface
                ifmap.add(
                    (sid, seq), name or f"point{seq}", desc or "", linktype or 1, snaplen or 0
                )
            job = _Export(
                index, since, until, flow_offsets, flow_match, user_match, comments, ifmap
            )
            n = w.write_rows(_merge(sources, job.rows), ifmap)
            return n, len(w.interfaces), job.missing

    if hasattr(out, "write"):
        n, nif, missing = write(out)
        name = getattr(out, "name", None)
    else:
        out = Path(out)
        if not out.parent.is_dir():
            raise NotFoundError(f"pcap export: directory {out.parent} does not exist")
        if out.is_dir():
            raise UsageError(f"pcap export: {out} is a directory", "give a file name")
        try:
            replacing = atomic_write(out, perms=0o644)
        except OSError as exc:
            raise UsageError(f"pcap export: cannot write {out}: {exc.strerror}") from None
        with replacing as fh:
            n, nif, missing = write(fh)
        name = str(out)
    return {"output": name, "packets": n, "interfaces": nif, "sessions": sids, "missing": missing}


def _bounds(store, seg, index):
    """(lo, hi): a time range that holds every packet of a segment file (SKIP_SLACK_NS
    wider than the file's own and its indexed packets' times (`index`: its SegmentIndex
    or None); open-ended while written)."""
    imin, imax = (index.first_ns, index.last_ns) if index else (None, None)
    lo = min(x for x in (seg.started_ns, imin, _INF) if x is not None)
    ended = seg.ended_ns
    if ended is None and seg.complete:
        st = _stat(store.segment_path(seg.path))
        ended = st.st_mtime_ns if st else None
    hi = _INF if ended is None else max(x for x in (ended, imax) if x is not None)
    if lo == _INF:
        lo = -_INF
    return lo - SKIP_SLACK_NS, hi + SKIP_SLACK_NS
