"""`events --since` and `pcap export --since/--until` read times with one parser."""

import pytest

from pyinspect.dockerfmt.timespec import parse_time as shared
from pyinspect.errors import UsageError
from pyinspect.host.events import parse_since
from pyinspect.pcap.export import parse_time

NOW = 1_764_417_600 * 10**9


@pytest.mark.parametrize(
    "text,want",
    [
        ("90s", NOW - 90 * 10**9),
        ("10m", NOW - 600 * 10**9),
        ("2h", NOW - 7200 * 10**9),
        ("1d", NOW - 86400 * 10**9),
        ("250ms", NOW - 250 * 10**6),
        ("1764417600", NOW),
        ("1764417600.5", NOW + 5 * 10**8),
        ("1764417600000000001", NOW + 1),
        ("2025-11-29T12:00:00Z", NOW),
        ("2025-11-29T13:00:00+01:00", NOW),
        ("2025-11-29T12:00:00", NOW),
        (None, None),
        ("", None),
        (NOW, NOW),
    ],
)
def test_both_commands_read_the_same_forms(text, want):
    assert shared(text, now_ns=NOW) == want
    assert parse_since(text, now_ns=NOW) == want
    assert parse_time(text, now_ns=NOW) == want


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "-5m",
        "-5",
        "5x",
        "inf",
        "nan",
        "1e400",
        "99999999999999999999",
        "9" * 400 + "s",
        "99999999999d",
        "2026-13-45T00:00:00",
    ],
)
def test_bad_times_are_usage_errors_naming_the_value(text):
    with pytest.raises(UsageError, match=r"bad --since value") as exc:
        parse_since(text, now_ns=NOW)
    assert repr(text) in str(exc.value)
    with pytest.raises(UsageError, match=r"bad time"):
        parse_time(text, now_ns=NOW)
