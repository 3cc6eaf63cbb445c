"""Typed rows the store reads and writes, and their column lists."""

import functools
import json
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple


@dataclass
class TracePoint:
    """A capture point as begin_trace() stores it."""

    name: str
    description: str = ""
    ifindex: int | None = None
    netns: int | None = None
    linktype: int = 1


class TraceIds(NamedTuple):
    session_id: int
    point_ids: list


class IndexCapture(NamedTuple):
    """One capture of a packet the analysis looked at: where its EPB is in the segment
    files, when and where it was seen."""

    segment_id: int
    offset: int  # of its EPB in the segment file
    ts_ns: int
    point_id: int
    direction: str | None  # "in" | "out" (None: not known, from an old store)
    len: int | None  # original length on the wire (None: not known)


# a capture in `journeys.captures`: segment id, offset, time, point id, length (0: not
# known), direction (0 in, 1 out, 2 not known)
CAPTURE = struct.Struct("<IqqIIB")
_DIRECTIONS = ("in", "out", None)


def pack_capture(c: IndexCapture) -> bytes:
    """An IndexCapture's bytes in `journeys.captures` (the tracer packs its own inline)."""
    code = 1 if c.direction == "out" else 0 if c.direction == "in" else 2
    return CAPTURE.pack(c.segment_id, c.offset, c.ts_ns, c.point_id, c.len or 0, code)


def unpack_captures(blob: bytes) -> list[IndexCapture]:
    """`journeys.captures` as IndexCaptures, in the order the analysis stored them."""
    return [
        IndexCapture(seg, off, ts, point, _DIRECTIONS[d], ln or None)
        for seg, off, ts, point, ln, d in CAPTURE.iter_unpack(blob)
    ]


class JourneyRow(NamedTuple):
    """One packet's way through the capture points, as the analysis indexed it: a flow
    (or None) and its captures (at least one); the journey's time is its first
    capture's."""

    session_id: int
    flow_id: int | None
    captures: list[IndexCapture]


@dataclass
class FlowRow:
    session_id: int
    proto: str
    orig_src: str | None = None
    orig_sport: int | None = None
    orig_dst: str | None = None
    orig_dport: int | None = None
    reply_src: str | None = None
    reply_sport: int | None = None
    reply_dst: str | None = None
    reply_dport: int | None = None
    ct_id: int | None = None
    nat: str = ""
    first_ns: int | None = None
    last_ns: int | None = None
    detail: dict | str | None = None


@dataclass
class HopRow:
    session_id: int
    flow_id: int | None
    journey_id: int | None  # a journeys id (the packet whose trace line it was)
    ts_ns: int
    table_name: str
    chain: str
    rule_num: int | None
    rule_text: str
    verdict: str
    detail: dict | str | None = None


@dataclass
class DropRow:
    session_id: int
    ts_ns: int
    reason: str
    location: str
    ifindex: int | None
    flow_id: int | None
    detail: dict | str | None = None


class SessionRef(NamedTuple):
    """What export needs of a trace session."""

    id: int
    container_id: str | None
    container_name: str | None
    snaplen: int | None


_SESSION_REF_COLS = "id, container_id, container_name, snaplen"


class SegmentInfo(NamedTuple):
    id: int
    session_id: int
    seq: int
    path: str  # relative to the database's directory
    started_ns: int | None
    ended_ns: int | None
    bytes: int | None
    complete: int


class SegmentIndex(NamedTuple):
    """What the index says of one segment file: its indexed packets' time span, and the
    offsets (sorted) of those indexed to a flow with their flow ids."""

    first_ns: int
    last_ns: int
    offsets: list[int]
    flow_ids: list[int]


_SEGMENT_COLS = "id, session_id, seq, path, started_ns, ended_ns, bytes, complete"
_FLOW_FIELDS = [f.name for f in fields(FlowRow)]
_FLOW_COLS = ", ".join(_FLOW_FIELDS)
_FLOW_QS = ",".join("?" * len(_FLOW_FIELDS))
_FLOW_SET = ", ".join(f"{c} = ?" for c in _FLOW_FIELDS)


# JSON text with sorted keys, from one encoder (json.dumps makes one a call for sort_keys)
_json_sorted = json.JSONEncoder(sort_keys=True).encode


def _json_text(value: object) -> object:
    return _json_sorted(value) if isinstance(value, (dict, list)) else value


def _with_json(row: Any) -> list:
    """A row dataclass's values in field order, its last field (detail) as JSON text.
    (Not dataclasses.astuple: that deep-copies every dict it meets.)"""
    values = list(_fields_of(row.__class__)(row))
    values[-1] = _json_text(values[-1])
    return values


@functools.cache
def _fields_of(cls: Any) -> Callable[[Any], tuple]:
    """A getter of the dataclass's values in field order (one C call for all of them)."""
    return operator.attrgetter(*(f.name for f in fields(cls)))
