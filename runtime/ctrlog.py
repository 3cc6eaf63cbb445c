"""The container log: written by the shim, read by `logs`. One JSON object a line:

    {"s": "stdout" | "stderr", "t": nanoseconds since the epoch, "d": text}

`d` is the bytes as read, decoded as UTF-8 with surrogateescape, so any byte sequence
comes back unchanged. A reader stops before a line still being written.
"""

import json
import time
from typing import BinaryIO


def record(stream: str, data: bytes) -> bytes:
    """The log line for `data` read from `stream` now."""
    rec = json.dumps(
        {"s": stream, "t": time.time_ns(), "d": data.decode("utf-8", "surrogateescape")}
    )
    return rec.encode("utf-8", "surrogatepass") + b"\n"


def read_records(f: BinaryIO) -> list[tuple[str, bytes]]:
    """The complete records from `f`'s position on, as (stream, bytes); stops before a
    partial one (leaving `f` there) and skips lines that are not records."""
    out: list[tuple[str, bytes]] = []
    while True:
        pos = f.tell()
        line = f.readline()
        if not line.endswith(b"\n"):
            f.seek(pos)  # nothing more, or a record still being written
            return out
        try:
            rec = json.loads(line)
            out.append((rec["s"], rec["d"].encode("utf-8", "surrogateescape")))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeError):
            continue
