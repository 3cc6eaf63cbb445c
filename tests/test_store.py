"""The SQLite store: versioned migrations, WAL, batched event writes, corrupt files."""

import pytest

from pyinspect.errors import CorruptInputError
from pyinspect.store import MIGRATIONS, Store


def test_migrations_apply_once(tmp_path):
    path = tmp_path / "s.db"
    with Store(path) as s:
        assert s.version == len(MIGRATIONS)
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with Store(path) as s:  # reopening does not re-run or duplicate
        rows = list(s.db["schema_version"].rows)
        assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))


def test_insert_events_batch(tmp_path):
    with Store(tmp_path / "s.db") as s:
        n = s.insert_events(
            [{"ts_ns": i, "kind": "exec", "pid": i, "detail": {"argv": ["x"]}} for i in range(100)]
        )
        assert n == 100
        assert s.db["events"].count == 100
        row = next(s.db["events"].rows_where("pid = 7"))
        assert row["detail"] == '{"argv": ["x"]}'


def test_corrupt_database_is_a_clear_error(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptInputError, match="cannot open store"):
        Store(path)
    assert path.read_bytes() == b"this is not sqlite" * 100  # nothing overwritten
