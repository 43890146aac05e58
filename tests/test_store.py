import sqlite3

import pytest

from tools.store import MIGRATIONS, Store


def test_schema_is_migrated_once_and_uses_wal(tmp_path):
    path = tmp_path / "x.db"
    s = Store(path)
    assert s.schema_version() == len(MIGRATIONS)
    s.close()
    s = Store(path)  # reopening applies nothing twice
    assert s.schema_version() == len(MIGRATIONS)
    assert s.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.db.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
    assert {"experiments", "metrics", "steps", "notes", "audit", "reverts", "schema_version"} <= set(s.db.table_names())


def test_audit_is_append_only(tmp_path):
    s = Store(tmp_path / "x.db")
    s.audit("read_results", {"limit": 3}, "ok", None, 1.0)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        s.db.conn.execute("UPDATE audit SET outcome = 'error'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        s.db.conn.execute("DELETE FROM audit")
    assert s.audit_rows(10)[0]["tool"] == "read_results"


def test_note_search_binds_values(tmp_path):
    s = Store(tmp_path / "x.db")
    s.insert_note("lr 1e-4 helped", None, ["lr"])
    s.insert_note("100% of twins fail", None, ["twins"])
    evil = "x' OR 1=1; DROP TABLE notes; --"
    rows, total = s.notes(limit=10, query=evil)
    assert (rows, total) == ([], 0)
    assert s.notes(limit=10, query="100%")[1] == 1  # LIKE wildcards are literal
    assert s.notes(limit=10, query="%")[1] == 1
    assert [n["text"] for n in s.notes(limit=10, tag="lr")[0]] == ["lr 1e-4 helped"]
    assert s.notes(limit=1)[1] == 2 and len(s.notes(limit=1)[0]) == 1


def test_claim_is_exclusive_and_in_order(tmp_path):
    s = Store(tmp_path / "x.db")
    ids = [s.insert_experiment(description=f"e{i}") for i in range(3)]
    claimed = [s.claim_next_queued(123)["id"] for _ in range(3)]
    assert claimed == ids
    assert s.claim_next_queued(123) is None
    assert s.count_experiments("running") == 3


def test_unknown_columns_are_refused(tmp_path):
    s = Store(tmp_path / "x.db")
    with pytest.raises(ValueError, match="unknown experiment columns"):
        s.insert_experiment(description="x", **{"status; DROP TABLE experiments": "y"})
