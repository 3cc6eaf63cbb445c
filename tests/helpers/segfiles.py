"""Segment files written by hand, byte by byte, in the format the tracer writes
(docs/pcapng.md): SHB, one IDB per capture point, then EPBs in runs (each run in time
order, the runs not), filler blocks of local-use type 0x80000A11 between them, an
opt_endofopt on some EPBs. `add_trace()` makes the store rows the tracer makes."""

import struct
from dataclasses import dataclass

from pyinspect.store import IndexCapture, JourneyRow, TracePoint

FILLER_TYPE = 0x80000A11
FILLER = struct.pack("<II", FILLER_TYPE, 24) + b"\xa5" * 12 + struct.pack("<I", 24)


def _opt(code, value):
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(btype, body):
    return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))


def shb():
    return _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + b"\0\0\0\0")


def idb(name, description, snaplen=262144):
    body = (
        struct.pack("<HHI", 1, 0, snaplen)
        + _opt(2, name.encode())
        + _opt(3, description.encode())
        + _opt(9, b"\x09")
        + b"\0\0\0\0"
    )
    return _block(1, body)


def epb(if_id, ts, data, orig_len=None, direction=None, endofopt=False):
    body = struct.pack(
        "<IIIII",
        if_id,
        ts >> 32,
        ts & 0xFFFFFFFF,
        len(data),
        len(data) if orig_len is None else orig_len,
    )
    body += data + b"\0" * (-len(data) % 4)
    body += _opt(2, struct.pack("<I", {"in": 1, "out": 2}[direction])) if direction else b""
    if endofopt:
        body += b"\0\0\0\0"
    return _block(6, body)


@dataclass
class Pkt:
    point: int  # index into the trace's points (== interface id, seq)
    ts: int
    data: bytes
    direction: str = None
    flow: int = None  # flows.id to index it to; None: not indexed
    indexed: bool = None  # default: indexed when it has a flow
    orig_len: int = None


def segment_bytes(interfaces, runs):
    """(bytes, [(Pkt, offset)]) of one segment file."""
    buf = bytearray(shb())
    for name, desc in interfaces:
        buf += idb(name, desc)
    placed = []
    n = 0
    for run in runs:
        for p in run:
            buf += FILLER
            placed.append((p, len(buf)))
            buf += epb(p.point, p.ts, p.data, p.orig_len, p.direction, endofopt=n % 3 == 0)
            n += 1
    return bytes(buf), placed


def add_trace(
    store,
    name,
    points,
    segments,
    *,
    cid="ab" * 32,
    started=None,
    stopped=None,
    status="stopped",
    pid=None,
    summary=None,
    flows=(),
    cut=0,
    extra=0,
):
    """A trace session as the tracer leaves it. `points` [(name, description)] (stored
    names; the files carry the export names), `segments` a list of runs lists of Pkt,
    `flows` flow row dicts (inserted first, ids from 1 in each store in order; Pkt.flow
    refers to them by position in this list, from 0), `cut` bytes cut off the last file
    (a killed trace), `extra` interfaces in the files beyond the points (`extra<N>@host`:
    no capture point of the store). Returns (session id, [flow ids], [segment ids])."""
    from pyinspect.pcap.export import point_name
    from pyinspect.store import FlowRow

    all_pkts = [p for seg in segments for run in seg for p in run]
    started = started if started is not None else min(p.ts for p in all_pkts) - 1000
    stopped = stopped if stopped is not None else max(p.ts for p in all_pkts) + 1000
    sid, pids = store.begin_trace(
        container_id=cid,
        container_name=name,
        started_ns=started,
        snaplen=262144,
        pid=pid,
        points=[TracePoint(n, d, linktype=1) for n, d in points],
    )
    fids = [store.insert_flow(FlowRow(session_id=sid, **f)) for f in flows]
    directory = store.path.parent / "pcap" / str(sid)
    directory.mkdir(parents=True, exist_ok=True)
    seg_ids = []
    index = []
    for seq, runs in enumerate(segments, start=1):
        data, placed = segment_bytes(
            [(point_name(n, d, name), d) for n, d in points]
            + [(f"extra{i}@host", "not a point") for i in range(extra)],
            runs,
        )
        if cut and seq == len(segments):
            data = data[:-cut]
        path = directory / f"seg-{seq:05d}.pcapng"
        path.write_bytes(data)
        ts = [p.ts for run in runs for p in run]
        seg_id = store.add_segment(sid, seq, path, min(ts) if ts else started)
        seg_ids.append(seg_id)
        if status != "running":
            store.finish_segment(seg_id, len(data), max(ts) if ts else stopped)
        for p, off in placed:
            if p.indexed or (p.indexed is None and p.flow is not None):
                index.append(
                    JourneyRow(  # one capture a journey: the export reads captures
                        sid,
                        None if p.flow is None else fids[p.flow],
                        [IndexCapture(seg_id, off, p.ts, pids[p.point], p.direction, len(p.data))],
                    )
                )
    store.add_journeys(index)
    if status != "running":
        store.end_trace(sid, status, summary, stopped_ns=stopped)
    return sid, fids, seg_ids
