"""Typed rows the store reads and writes, and their column lists."""

import functools
import json
import operator
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


class IndexRow(NamedTuple):
    """One packet of a segment file that the analysis looked at (a NamedTuple: one is
    made per analysed packet, and SQLite takes it as it is)."""

    session_id: int
    segment_id: int
    offset: int  # of its EPB in the segment file
    ts_ns: int
    point_id: int
    flow_id: int | None = None
    direction: str | None = None
    len: int | None = None  # original length on the wire


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
    packet_id: int | None  # a packet_index id
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


_SEGMENT_COLS = "id, session_id, seq, path, started_ns, ended_ns, bytes, complete"
_FLOW_FIELDS = [f.name for f in fields(FlowRow)]
_FLOW_COLS = ", ".join(_FLOW_FIELDS)
_FLOW_QS = ",".join("?" * len(_FLOW_FIELDS))
_FLOW_SET = ", ".join(f"{c} = ?" for c in _FLOW_FIELDS)


def _json_text(value: object) -> object:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


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
