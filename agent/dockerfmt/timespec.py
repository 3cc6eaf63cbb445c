"""Points in time as users type them (`--since`, `--until`, the web's filters).

One parser, so `pyinspect events --since` and `pyinspect pcap export --since`
accept the same forms: a duration ago (`90s`, `5m`, `2h`, `1d`, also `ns`/`us`/`ms`),
epoch seconds (`1764417600.5`), epoch ns (an integer >= 1e15), or ISO 8601 /
RFC 3339 (`2026-11-29T12:00:00Z`, UTC unless it names a zone).
"""

import datetime as _dt
import re
import time

from ..errors import UsageError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)$")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
}
FORMS = "a duration ago (30s, 10m, 2h, 1d), epoch seconds or ns, or an ISO 8601 time"
EXAMPLE = "e.g. 5m, 1764417600, 2026-11-29T12:00:00Z"


def parse_time(text: str | int | None, now_ns: int | None = None, what: str = "time") -> int | None:
    """Epoch ns for `text` (None and "" give None; an int is taken as epoch ns).

    Errors are UsageErrors reading `bad <what> '<text>': ...`; times before 1970 or
    past what SQLite stores (2262) are refused.
    """
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    s = str(text).strip()
    now_ns = time.time_ns() if now_ns is None else now_ns
    m = _DURATION.match(s)
    try:
        if m:
            return _checked(now_ns - int(float(m.group(1)) * _UNIT_NS[m.group(2)]), text, what)
        value = float(s)
    except ValueError:
        pass
    except OverflowError:  # float('9' * 400) is inf
        return _checked(None, text, what)
    else:
        if value != value or value in (float("inf"), float("-inf")):  # nan, inf
            return _checked(None, text, what)
        if value >= 1e15:
            return _checked(int(s) if s.isdigit() else int(value), text, what)
        return _checked(int(value * 1e9), text, what)
    try:
        when = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: expected {FORMS}", EXAMPLE) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return _checked(int(when.timestamp()) * 10**9 + when.microsecond * 1000, text, what)


def _checked(ns: int | None, text: object, what: str) -> int:
    if ns is None or not 0 <= ns < 2**63:
        raise UsageError(f"bad {what} {text!r}: out of range (before 1970 or after 2262)", EXAMPLE)
    return ns
