"""The SQLite store (sqlite-utils, WAL): schema, versioned migrations, and the only SQL.

Open it with `Store(path)`; every migration runs once, in order, and the version reached
is kept in the `schema_version` table (`migrations.py`).

Packet bytes are not in SQLite: a trace writes them to pcapng segment files under
`<database dir>/pcap/<session id>/` (docs/pcapng.md), and the store keeps the segment
rows (`pcap_segments`) and an index of the packets the analysis looked at (`journeys`:
one row per packet's way through the capture points, its flow, and each capture's
segment, EPB byte offset, time, point, direction and length packed in one column). Opening a store
marks traces whose process is gone as `killed` (`reap_killed_traces`).

The rest of pyinspect reads and writes through `Store`'s per-table methods
(`database.py`: events and the timeline, trace sessions, flows, hops, drops, segments
and the packet index, doctor's findings and memory, veth map snapshots) and the typed
rows of `rows.py`; no module outside this package writes SQL (tests/test_layering.py).
"""

from .database import Store, TimelineQuery
from .migrations import MIGRATIONS, SEGMENT_DIR, segment_name
from .rows import (
    DropRow,
    FlowRow,
    HopRow,
    IndexCapture,
    JourneyRow,
    SegmentIndex,
    SegmentInfo,
    SessionRef,
    TraceIds,
    TracePoint,
)

__all__ = [
    "MIGRATIONS",
    "SEGMENT_DIR",
    "DropRow",
    "FlowRow",
    "HopRow",
    "IndexCapture",
    "JourneyRow",
    "SegmentIndex",
    "SegmentInfo",
    "SessionRef",
    "Store",
    "TimelineQuery",
    "TraceIds",
    "TracePoint",
    "segment_name",
]
