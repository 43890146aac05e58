"""The workspace's SQLite store: one file, WAL mode, numbered migrations.

Open it with `sqlite-utils tables .autoresearch/experiments.db --counts` or Datasette: the schema
below is the API. Every query binds its values; identifiers come from whitelists.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

BUSY_TIMEOUT_MS = 60_000

# Each entry is applied once, in order, inside a transaction; never edit a released one.
MIGRATIONS: list[str] = [
    # 1: the core tables
    """
    CREATE TABLE experiments (
        id INTEGER PRIMARY KEY,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        status TEXT NOT NULL,            -- queued|running|succeeded|failed|timeout|cancelled|interrupted
        verdict TEXT,                    -- baseline|improved|not_improved|inconclusive (NULL until done)
        kept INTEGER NOT NULL DEFAULT 0, -- 1 when this run advanced refs/autoresearch/best
        description TEXT NOT NULL,
        hypothesis TEXT,
        snapshot_commit TEXT,
        parent_id INTEGER REFERENCES experiments(id),  -- the best when submitted (a rerun: the run it reruns)
        best_id_at_verdict INTEGER REFERENCES experiments(id),
        config_json TEXT NOT NULL DEFAULT '{}',
        params_json TEXT NOT NULL DEFAULT '{}',
        objective REAL,
        objective_std REAL,
        delta REAL,                      -- objective minus the best's at verdict time
        duration_s REAL,
        peak_memory_gb REAL,
        time_budget_s REAL,
        run_dir TEXT,
        sandbox_backend TEXT,
        returncode INTEGER,
        supervisor_pid INTEGER,
        error TEXT,
        verdict_reason TEXT
    );
    CREATE INDEX experiments_status ON experiments(status);
    CREATE TABLE metrics (
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        fold INTEGER,                    -- NULL: the aggregate over folds
        name TEXT NOT NULL,
        value REAL NOT NULL
    );
    CREATE INDEX metrics_experiment ON metrics(experiment_id, name);
    CREATE TABLE steps (
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        step INTEGER NOT NULL,
        t REAL,
        loss REAL
    );
    CREATE INDEX steps_experiment ON steps(experiment_id, step);
    CREATE TABLE notes (
        id INTEGER PRIMARY KEY,
        created_at REAL NOT NULL,
        experiment_id INTEGER REFERENCES experiments(id),
        tags TEXT NOT NULL DEFAULT '[]', -- JSON list of strings
        text TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        tool TEXT NOT NULL,
        arguments TEXT NOT NULL,         -- JSON
        outcome TEXT NOT NULL,           -- ok|error
        detail TEXT,
        duration_ms REAL
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    CREATE TABLE reverts (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        target TEXT NOT NULL,
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        snapshot_commit TEXT NOT NULL,
        files TEXT NOT NULL              -- JSON list of restored paths
    );
    """,
    # 2: full-text search over experiments (issue 6). A derived index (rowid = experiments.id) that
    # tools.search fills lazily: description, hypothesis, the notes linked to the run, and the
    # changed lines of its snapshot diff; notes_max_id tells when a run's notes changed.
    """
    CREATE VIRTUAL TABLE experiments_fts USING fts5(
        description, hypothesis, notes, diff,
        notes_max_id UNINDEXED,
        tokenize = 'porter unicode61'
    );
    """,
    # 3 (issue 7): seed reruns and reproductions, held-out test evaluations, integrity events, HPO trials
    """
    ALTER TABLE experiments ADD COLUMN rerun_of INTEGER REFERENCES experiments(id);  -- the original run
    ALTER TABLE experiments ADD COLUMN rerun_kind TEXT;        -- seed (joins the noise group) | reproduce
    ALTER TABLE experiments ADD COLUMN group_n INTEGER;        -- succeeded runs in this run's seed group
    ALTER TABLE experiments ADD COLUMN group_objective REAL;   -- their mean objective (what verdicts use)
    ALTER TABLE experiments ADD COLUMN group_std REAL;         -- the std of that mean (see tools/verdict.py)
    CREATE INDEX experiments_rerun_of ON experiments(rerun_of);
    CREATE TABLE test_evaluations (
        id INTEGER PRIMARY KEY,
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),
        created_at REAL NOT NULL,
        finished_at REAL,
        status TEXT NOT NULL,            -- running|succeeded|failed|timeout|cancelled
        requested_by TEXT NOT NULL,      -- cli|mcp
        snapshot_commit TEXT NOT NULL,
        objective REAL,
        objective_std REAL,
        metrics_json TEXT NOT NULL DEFAULT '{}',
        run_dir TEXT,
        sandbox_backend TEXT,
        returncode INTEGER,
        error TEXT
    );
    CREATE TABLE integrity_events (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        experiment_id INTEGER REFERENCES experiments(id),
        kind TEXT NOT NULL,              -- test_split_access|harness_write|data_write|cache_write|state_access|denied_access
        path TEXT,
        detail TEXT
    );
    CREATE TRIGGER integrity_events_no_update BEFORE UPDATE ON integrity_events
        BEGIN SELECT RAISE(ABORT, 'integrity_events is append-only'); END;
    CREATE TRIGGER integrity_events_no_delete BEFORE DELETE ON integrity_events
        BEGIN SELECT RAISE(ABORT, 'integrity_events is append-only'); END;
    CREATE TABLE hpo_trials (
        id INTEGER PRIMARY KEY,
        created_at REAL NOT NULL,
        study TEXT NOT NULL,
        trial_number INTEGER,            -- the Optuna trial (NULL: the experiment has no search-space values)
        experiment_id INTEGER UNIQUE REFERENCES experiments(id),  -- NULL while a suggestion is not run yet
        source TEXT NOT NULL,            -- suggest|agent
        params_json TEXT NOT NULL,
        state TEXT NOT NULL,             -- pending|running|complete|fail|abandoned|skipped
        told_at REAL
    );
    """,
    # 4 (issue 12): how far a run got against its step budget, and every change of the best
    """
    ALTER TABLE experiments ADD COLUMN steps INTEGER;          -- steps trained (all folds), as the run reported
    ALTER TABLE experiments ADD COLUMN max_steps INTEGER;      -- its step budget (all folds)
    ALTER TABLE experiments ADD COLUMN stopped_by TEXT;        -- steps | time (time before max_steps: truncated)
    CREATE TABLE best_changes (
        id INTEGER PRIMARY KEY,
        t REAL NOT NULL,
        experiment_id INTEGER NOT NULL REFERENCES experiments(id),  -- the run whose best status changed
        other_id INTEGER REFERENCES experiments(id),               -- the run it replaced / that is best again
        action TEXT NOT NULL,            -- demoted
        reason TEXT NOT NULL
    );
    CREATE TRIGGER best_changes_no_update BEFORE UPDATE ON best_changes
        BEGIN SELECT RAISE(ABORT, 'best_changes is append-only'); END;
    """,
    # 5 (issue 16): every read stays cheap at 100k experiments. Indexes for the orders and filters
    # the read tools use (a row's objective and rerun_of sit behind its ~5 KB config_json, so a scan
    # reads every overflow page). The search index is kept on write: triggers index the text fields
    # and the linked notes in the writer's transaction; tools/search.py adds the snapshot diff (git)
    # when a run is submitted, off the queue search_pending. Existing rows are indexed here once.
    """
    CREATE INDEX experiments_kept ON experiments(finished_at, id) WHERE kept = 1;
    CREATE INDEX experiments_objective ON experiments(objective, id);
    CREATE INDEX experiments_status_objective ON experiments(status, objective, id);
    CREATE INDEX notes_experiment ON notes(experiment_id, id);
    CREATE INDEX hpo_trials_study_state ON hpo_trials(study, state);
    CREATE INDEX hpo_trials_study_experiment ON hpo_trials(study, experiment_id);
    CREATE TABLE search_pending (experiment_id INTEGER PRIMARY KEY);  -- runs whose diff is not indexed yet
    INSERT INTO search_pending SELECT e.id FROM experiments e WHERE e.snapshot_commit IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM experiments_fts f WHERE f.rowid = e.id);
    INSERT INTO experiments_fts (rowid, description, hypothesis, notes, diff, notes_max_id)
        SELECT e.id, e.description, coalesce(e.hypothesis, ''), '', '', 0 FROM experiments e
        WHERE NOT EXISTS (SELECT 1 FROM experiments_fts f WHERE f.rowid = e.id);
    UPDATE experiments_fts SET notes = coalesce((SELECT substr(group_concat(n.text, char(10)), 1, 20000)
        FROM (SELECT text FROM notes WHERE experiment_id = experiments_fts.rowid ORDER BY id) n), '');
    CREATE TRIGGER experiments_fts_insert AFTER INSERT ON experiments BEGIN
        INSERT INTO experiments_fts (rowid, description, hypothesis, notes, diff, notes_max_id)
            VALUES (new.id, new.description, coalesce(new.hypothesis, ''), '', '', 0);
        INSERT OR IGNORE INTO search_pending SELECT new.id WHERE new.snapshot_commit IS NOT NULL;
    END;
    CREATE TRIGGER experiments_fts_text AFTER UPDATE OF description, hypothesis ON experiments BEGIN
        UPDATE experiments_fts SET description = new.description, hypothesis = coalesce(new.hypothesis, '')
            WHERE rowid = new.id;
    END;
    CREATE TRIGGER experiments_fts_note AFTER INSERT ON notes WHEN new.experiment_id IS NOT NULL BEGIN
        UPDATE experiments_fts SET notes = substr(CASE WHEN notes = '' THEN new.text
                                                       ELSE notes || char(10) || new.text END, 1, 20000),
                                   notes_max_id = new.id
            WHERE rowid = new.experiment_id;
    END;
    """,
    # 6 (issue 28): a rerun's parent is the run it reruns (it was the best at submit, so its diff showed
    # the best's change reversed and search found it by that change); their diffs are indexed again.
    """
    UPDATE experiments SET parent_id = rerun_of WHERE rerun_of IS NOT NULL AND parent_id IS NOT rerun_of;
    INSERT OR IGNORE INTO search_pending SELECT id FROM experiments WHERE rerun_of IS NOT NULL
        AND snapshot_commit IS NOT NULL;
    """,
]

# The lifecycle's end states (the one definition: every module that waits or tells reads it here).
TERMINAL = ("succeeded", "failed", "timeout", "cancelled", "interrupted")


class Store:
    """Small, well-named verbs over the workspace database."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so writers queue on the
        # busy timeout instead of failing with "database is locked" on lock upgrade.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        self.db = sqlite_utils.Database(conn)
        self._migrate()
        # writable columns come from the schema itself (migrations are their only owner)
        self._columns = {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")}
                         for t in ("experiments", "test_evaluations")}

    def close(self) -> None:
        self.db.conn.close()

    # -- transactions and schema ---------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        row = self.db.conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return row[0] or 0

    def _migrate(self) -> None:
        with self.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
            for version, script in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in _split_sql(script):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, time.time()))

    # -- experiments ---------------------------------------------------------------------
    def insert_experiment(self, *, run_dir_of=None, **fields: Any) -> int:
        """Insert one experiment; run_dir_of(id) fills run_dir in the same transaction."""
        fields.setdefault("created_at", time.time())
        fields.setdefault("status", "queued")
        cols = list(fields)
        self._check_columns("experiments", cols)
        sql = f"INSERT INTO experiments ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
        with self.transaction() as conn:
            exp_id = conn.execute(sql, [fields[c] for c in cols]).lastrowid
            if run_dir_of is not None:
                conn.execute("UPDATE experiments SET run_dir = ? WHERE id = ?", (run_dir_of(exp_id), exp_id))
            return exp_id

    def update_experiment(self, experiment_id: int, *, only_if_status: tuple[str, ...] | None = None,
                          conn: sqlite3.Connection | None = None, **fields: Any) -> bool:
        """Set fields; with only_if_status, only when the row is in one of those states."""
        self._check_columns("experiments", fields)
        sets = ", ".join(f"{c} = ?" for c in fields)
        sql = f"UPDATE experiments SET {sets} WHERE id = ?"
        args = [*fields.values(), experiment_id]
        if only_if_status:
            sql += f" AND status IN ({', '.join('?' for _ in only_if_status)})"
            args += list(only_if_status)
        if conn is not None:
            return conn.execute(sql, args).rowcount == 1
        with self.transaction() as c:
            return c.execute(sql, args).rowcount == 1

    def get_experiment(self, experiment_id: int) -> dict | None:
        rows = list(self.db.query("SELECT * FROM experiments WHERE id = ?", [experiment_id]))
        return rows[0] if rows else None

    def best_experiment(self) -> dict | None:
        """The current best: the most recent kept run (a run is kept only when it beats the best)."""
        rows = list(self.db.query(
            "SELECT * FROM experiments WHERE kept = 1 ORDER BY finished_at DESC, id DESC LIMIT 1"))
        return rows[0] if rows else None

    def best_experiment_in(self, conn: sqlite3.Connection) -> dict | None:
        """best_experiment, read through the caller's transaction."""
        cur = conn.execute("SELECT * FROM experiments WHERE kept = 1 ORDER BY finished_at DESC, id DESC LIMIT 1")
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None

    def best_for_verdict(self, conn: sqlite3.Connection) -> dict | None:
        """The current best with its group's mean and std when it has a seed group (inside a verdict's
        transaction, so it sees the group columns that transaction refreshed)."""
        cur = conn.execute(
            "SELECT id, coalesce(group_objective, objective) AS objective, coalesce(group_std, objective_std) "
            "AS objective_std, group_n, verdict, time_budget_s, steps, max_steps, duration_s FROM experiments "
            "WHERE kept = 1 ORDER BY finished_at DESC, id DESC LIMIT 1")
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None

    def judged_row(self, conn: sqlite3.Connection, experiment_id: int) -> dict | None:
        """id, objective and objective_std as verdicts see them (its group's mean and std of the mean
        where it has a seed group), with its own verdict and the best it was judged against."""
        cur = conn.execute("SELECT id, coalesce(group_objective, objective) AS objective, coalesce(group_std, "
                           "objective_std) AS objective_std, verdict, best_id_at_verdict FROM experiments WHERE id = ?",
                           [experiment_id])
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row)) if row else None

    def objective_of(self, conn: sqlite3.Connection, experiment_id: int) -> float | None:
        row = conn.execute("SELECT objective FROM experiments WHERE id = ?", [experiment_id]).fetchone()
        return row[0] if row else None

    def seed_group_results(self, conn: sqlite3.Connection, root_id: int, exclude_id: int) -> list[tuple]:
        """(id, objective, objective_std) of the succeeded runs of root_id's seed group, but exclude_id."""
        return conn.execute(
            "SELECT id, objective, objective_std FROM experiments WHERE (id = ? OR (rerun_of = ? AND rerun_kind = 'seed')) "
            "AND status = 'succeeded' AND objective IS NOT NULL AND coalesce(verdict, '') != 'incomparable' AND id != ? "
            "ORDER BY id",
            (root_id, root_id, exclude_id)).fetchall()

    def group_pending(self, conn: sqlite3.Connection, root_id: int, exclude_id: int) -> int:
        """Runs of root_id's seed group still queued or running (exclude_id: the one being recorded)."""
        return conn.execute("SELECT count(*) FROM experiments WHERE (id = ? OR (rerun_of = ? AND rerun_kind = 'seed')) "
                            "AND status IN ('queued', 'running') AND id != ?", (root_id, root_id, exclude_id)).fetchone()[0]

    def settle_provisional(self, conn: sqlite3.Connection, experiment_id: int, verdict: str, note: str) -> None:
        """An `improved?` run's final word once its confirmation reruns landed (its row is never kept)."""
        conn.execute("UPDATE experiments SET verdict = ?, verdict_reason = coalesce(verdict_reason, '') || ? "
                     "WHERE id = ? AND verdict = 'improved?'", (verdict, " " + note, experiment_id))

    def set_group_stats(self, conn: sqlite3.Connection, ids: list[int], n: int, mean: float, std: float) -> None:
        if ids:
            marks = ", ".join("?" for _ in ids)
            conn.execute(f"UPDATE experiments SET group_n = ?, group_objective = ?, group_std = ? WHERE id IN ({marks})",
                         [n, mean, std, *ids])

    def unkeep(self, conn: sqlite3.Connection, ids: list[int], reason: str) -> None:
        """These runs stop being (or standing for) the best; the reason is appended to their verdict."""
        if ids:
            marks = ", ".join("?" for _ in ids)
            conn.execute(f"UPDATE experiments SET kept = 0, verdict_reason = coalesce(verdict_reason, '') || ? "
                         f"WHERE id IN ({marks}) AND kept = 1", [f" [demoted: {reason}]", *ids])

    def record_best_change(self, conn: sqlite3.Connection, experiment_id: int, other_id: int | None, action: str,
                           reason: str) -> None:
        conn.execute("INSERT INTO best_changes (t, experiment_id, other_id, action, reason) VALUES (?, ?, ?, ?, ?)",
                     [time.time(), experiment_id, other_id, action, reason[:2000]])

    def best_changes(self, limit: int = 50) -> list[dict]:
        return list(self.db.query("SELECT * FROM best_changes ORDER BY id DESC LIMIT ?", [int(limit)]))

    def code_key_rows(self, prefix: str, limit: int = 50) -> list[dict]:
        """Live or succeeded experiments whose code fingerprint (config_json's code_key, runs.seedless_key)
        starts with `prefix`, newest first: the runs a seed-only change joins."""
        return list(self.db.query(
            "SELECT id, rerun_of, rerun_kind, code_key FROM (SELECT id, rerun_of, rerun_kind, "
            "json_extract(config_json, '$.code_key') AS code_key FROM experiments "
            "WHERE status IN ('queued', 'running', 'succeeded')) WHERE substr(code_key, 1, ?) = ? "
            "ORDER BY id DESC LIMIT ?", [len(prefix), prefix, limit]))

    def seed_group(self, root_id: int, limit: int = 100) -> list[dict]:
        """The original run and its seed reruns, in id order."""
        return list(self.db.query(
            "SELECT * FROM experiments WHERE id = ? OR (rerun_of = ? AND rerun_kind = 'seed') ORDER BY id LIMIT ?",
            [root_id, root_id, limit]))

    def kept_experiments(self) -> list[dict]:
        """Every run that became the best, in the order it did."""
        return list(self.db.query("SELECT id, objective, objective_std, description, status, steps, max_steps, "
                                  "duration_s, json_extract(config_json, '$.harness') AS harness FROM experiments "
                                  "WHERE kept = 1 ORDER BY finished_at, id"))

    def status_counts(self) -> dict[str, int]:
        return dict(self.db.conn.execute("SELECT status, count(*) FROM experiments GROUP BY status").fetchall())

    def finished_experiments(self, limit: int | None = None) -> list[dict]:
        """Runs that ended (not queued or running), in id order; with limit, the latest `limit`."""
        if limit is None:
            return list(self.db.query("SELECT * FROM experiments WHERE status NOT IN ('queued', 'running') ORDER BY id"))
        return list(self.db.query(
            "SELECT * FROM (SELECT * FROM experiments WHERE status NOT IN ('queued', 'running') ORDER BY id DESC "
            "LIMIT ?) ORDER BY id", [int(limit)]))

    def claim_next_queued(self, supervisor_pid: int) -> dict | None:
        """Atomically move the oldest queued experiment to running; None when the queue is empty."""
        with self.transaction() as conn:
            row = conn.execute("SELECT id FROM experiments WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            conn.execute("UPDATE experiments SET status = 'running', started_at = ?, supervisor_pid = ? WHERE id = ?",
                         (time.time(), supervisor_pid, row[0]))
        return self.get_experiment(row[0])

    def count_experiments(self, status: str | None = None) -> int:
        if status is None:
            return self.db.conn.execute("SELECT count(*) FROM experiments").fetchone()[0]
        return self.db.conn.execute("SELECT count(*) FROM experiments WHERE status = ?", [status]).fetchone()[0]

    def list_experiments(self, *, limit: int, status: str | None, order_by: str, direction: str) -> list[dict]:
        """The first `limit` rows by id (newest first) or by objective (best first, then the runs without
        one, oldest first). Both walk an index (migration 5) and read only `limit` rows."""
        where, args = ("status = ? AND ", [status]) if status else ("", [])
        if order_by == "created":
            return list(self.db.query(f"SELECT * FROM experiments WHERE {where}1 ORDER BY id DESC LIMIT ?",
                                      [*args, limit]))
        if order_by != "objective":
            raise ValueError(f"unknown order_by {order_by!r}")
        order = "ASC" if direction == "minimize" else "DESC"  # whitelisted
        rows = list(self.db.query(f"SELECT * FROM experiments WHERE {where}objective IS NOT NULL "
                                  f"ORDER BY objective {order}, id LIMIT ?", [*args, limit]))
        if len(rows) < limit:
            rows += self.db.query(f"SELECT * FROM experiments WHERE {where}objective IS NULL ORDER BY id LIMIT ?",
                                  [*args, limit - len(rows)])
        return rows

    def experiments_with_status(self, *statuses: str) -> list[dict]:
        marks = ", ".join("?" for _ in statuses)
        # INDEXED BY: the planner must not trade the index for a scan of every row when statistics say
        # statuses are even (they are not: queued and running are a handful among 100k finished runs)
        return list(self.db.query(f"SELECT * FROM experiments INDEXED BY experiments_status WHERE status IN ({marks}) "
                                  "ORDER BY id", list(statuses)))

    # -- metrics and steps ---------------------------------------------------------------
    def replace_metrics(self, experiment_id: int, rows: list[tuple[int | None, str, float]],
                        conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM metrics WHERE experiment_id = ?", [experiment_id])
        conn.executemany("INSERT INTO metrics (experiment_id, fold, name, value) VALUES (?, ?, ?, ?)",
                         [(experiment_id, fold, name, value) for fold, name, value in rows])

    def metrics(self, experiment_id: int, *, aggregate_only: bool = False) -> list[dict]:
        sql = "SELECT fold, name, value FROM metrics WHERE experiment_id = ?"
        if aggregate_only:
            sql += " AND fold IS NULL"
        return list(self.db.query(sql + " ORDER BY fold IS NOT NULL, fold, name", [experiment_id]))

    def replace_steps(self, experiment_id: int, rows: list[tuple[int, float | None, float | None]],
                      conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM steps WHERE experiment_id = ?", [experiment_id])
        conn.executemany("INSERT INTO steps (experiment_id, step, t, loss) VALUES (?, ?, ?, ?)",
                         [(experiment_id, *r) for r in rows])

    def steps(self, experiment_id: int) -> list[dict]:
        return list(self.db.query("SELECT step, t, loss FROM steps WHERE experiment_id = ? ORDER BY step",
                                  [experiment_id]))

    # -- notes ---------------------------------------------------------------------------
    def insert_note(self, text: str, experiment_id: int | None, tags: list[str]) -> int:
        with self.transaction() as conn:
            return conn.execute("INSERT INTO notes (created_at, experiment_id, tags, text) VALUES (?, ?, ?, ?)",
                                (time.time(), experiment_id, json.dumps(tags), text)).lastrowid

    def get_note(self, note_id: int) -> dict | None:
        rows = list(self.db.query("SELECT * FROM notes WHERE id = ?", [note_id]))
        for r in rows:
            r["tags"] = json.loads(r["tags"])
        return rows[0] if rows else None

    def notes(self, *, limit: int, tag: str | None = None, query: str | None = None,
              experiment_id: int | None = None) -> tuple[list[dict], int]:
        clauses, args = [], []
        if tag:
            clauses.append("EXISTS (SELECT 1 FROM json_each(notes.tags) WHERE json_each.value = ?)")
            args.append(tag)
        if query:
            clauses.append("text LIKE ? ESCAPE '\\'")
            args.append("%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        if experiment_id is not None:
            clauses.append("experiment_id = ?")
            args.append(experiment_id)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        total = self.db.conn.execute(f"SELECT count(*) FROM notes {where}", args).fetchone()[0]
        rows = list(self.db.query(f"SELECT * FROM notes {where} ORDER BY id DESC LIMIT ?", [*args, limit]))
        for r in rows:
            r["tags"] = json.loads(r["tags"])
        return rows, total

    # -- audit and reverts ---------------------------------------------------------------
    def audit(self, tool: str, arguments: dict, outcome: str, detail: str | None, duration_ms: float) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO audit (t, tool, arguments, outcome, detail, duration_ms) VALUES (?, ?, ?, ?, ?, ?)",
                         (time.time(), tool, json.dumps(arguments, default=str)[:4000], outcome,
                          (detail or "")[:2000], duration_ms))

    def audit_rows(self, limit: int) -> list[dict]:
        return list(self.db.query("SELECT * FROM audit ORDER BY id DESC LIMIT ?", [limit]))

    def insert_revert(self, target: str, experiment_id: int, commit: str, files: list[str]) -> int:
        with self.transaction() as conn:
            return conn.execute("INSERT INTO reverts (t, target, experiment_id, snapshot_commit, files) VALUES (?, ?, ?, ?, ?)",
                                (time.time(), target, experiment_id, commit, json.dumps(files))).lastrowid

    # -- integrity events (append-only) ----------------------------------------------------
    def record_integrity_events(self, conn: sqlite3.Connection, experiment_id: int | None, events: list[dict]) -> None:
        """Append denied accesses inside the caller's transaction (with the run's outcome)."""
        conn.executemany("INSERT INTO integrity_events (t, experiment_id, kind, path, detail) VALUES (?, ?, ?, ?, ?)",
                         [(time.time(), experiment_id, e["kind"], e["path"], e["detail"]) for e in events])

    def integrity_events(self, experiment_id: int | None = None, limit: int = 100) -> list[dict]:
        sql, args = "SELECT * FROM integrity_events", []
        if experiment_id is not None:
            sql, args = sql + " WHERE experiment_id = ?", [experiment_id]
        return list(self.db.query(sql + " ORDER BY id DESC LIMIT ?", [*args, int(limit)]))

    # -- held-out test evaluations ---------------------------------------------------------
    def count_test_evaluations(self, experiment_id: int) -> int:
        return self.db.conn.execute("SELECT count(*) FROM test_evaluations WHERE experiment_id = ? AND status = "
                                    "'succeeded'", [experiment_id]).fetchone()[0]

    def insert_test_evaluation(self, experiment_id: int, requested_by: str, commit: str) -> int:
        with self.transaction() as conn:
            return conn.execute(
                "INSERT INTO test_evaluations (experiment_id, created_at, status, requested_by, snapshot_commit) "
                "VALUES (?, ?, 'running', ?, ?)", (experiment_id, time.time(), requested_by, commit)).lastrowid

    def update_test_evaluation(self, eval_id: int, **fields: Any) -> None:
        self._check_columns("test_evaluations", fields)
        if not fields:
            return
        with self.transaction() as conn:
            conn.execute(f"UPDATE test_evaluations SET {', '.join(c + ' = ?' for c in fields)} WHERE id = ?",
                         [*fields.values(), eval_id])

    def get_test_evaluation(self, eval_id: int) -> dict | None:
        rows = list(self.db.query("SELECT * FROM test_evaluations WHERE id = ?", [eval_id]))
        return rows[0] if rows else None

    def test_evaluations(self, limit: int = 50) -> list[dict]:
        return list(self.db.query("SELECT * FROM test_evaluations ORDER BY id DESC LIMIT ?", [int(limit)]))

    # -- HPO trials (the link between Optuna trials and experiments) --------------------------
    def experiments_without_trial(self, study: str, limit: int = 1000) -> list[dict]:
        """Experiments that are not reruns and not yet linked to a trial of `study`. Trials are linked
        in id order, so only ids above the study's last linked one are looked at (O(new), not O(all))."""
        return list(self.db.query(
            "SELECT e.* FROM experiments e WHERE e.id > (SELECT coalesce(max(experiment_id), 0) FROM hpo_trials "
            "WHERE study = ?) AND e.rerun_of IS NULL AND NOT EXISTS "
            "(SELECT 1 FROM hpo_trials h WHERE h.experiment_id = e.id AND h.study = ?) ORDER BY e.id LIMIT ?",
            [study, study, limit]))

    def trial_counts(self, study: str) -> dict[str, int]:
        return dict(self.db.conn.execute("SELECT state, count(*) FROM hpo_trials WHERE study = ? GROUP BY state",
                                         [study]).fetchall())

    def trials_in_state(self, study: str, state: str) -> list[dict]:
        return list(self.db.query("SELECT * FROM hpo_trials WHERE study = ? AND state = ? ORDER BY id", [study, state]))

    def running_trials_of_finished_runs(self, study: str) -> list[dict]:
        marks = ", ".join("?" for _ in TERMINAL)
        return list(self.db.query(
            "SELECT h.id, h.trial_number, e.status, CASE WHEN e.verdict = 'incomparable' THEN NULL ELSE e.objective END "
            "AS objective FROM hpo_trials h JOIN experiments e ON "
            f"e.id = h.experiment_id WHERE h.study = ? AND h.state = 'running' AND e.status IN ({marks})",
            [study, *TERMINAL]))

    def insert_trial(self, study: str, number: int | None, experiment_id: int | None, source: str, params: dict,
                     state: str, told: bool = False) -> int:
        with self.transaction() as conn:
            return conn.execute(
                "INSERT INTO hpo_trials (created_at, study, trial_number, experiment_id, source, params_json, state, "
                "told_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [time.time(), study, number, experiment_id, source, json.dumps(params), state,
                 time.time() if told else None]).lastrowid

    def insert_trials(self, rows: list[tuple]) -> None:
        """rows: (study, number, experiment_id, source, params, state, told), in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO hpo_trials (created_at, study, trial_number, experiment_id, source, params_json, state, "
                "told_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(now, st, num, eid, src, json.dumps(params), state, now if told else None)
                 for st, num, eid, src, params, state, told in rows])

    def link_trial(self, trial_row_id: int, experiment_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE hpo_trials SET experiment_id = ?, state = 'running' WHERE id = ?",
                         [experiment_id, trial_row_id])

    def set_trial_state(self, trial_row_id: int, state: str) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE hpo_trials SET state = ?, told_at = ? WHERE id = ?", [state, time.time(), trial_row_id])

    def experiment_of_trial(self, study: str, number: int) -> int | None:
        row = self.db.conn.execute("SELECT experiment_id FROM hpo_trials WHERE study = ? AND trial_number = ?",
                                   [study, number]).fetchone()
        return row[0] if row else None

    # -- the full-text index (experiments_fts, derived) ----------------------------------------
    def note_texts(self, experiment_id: int) -> list[str]:
        return [t for (t,) in self.db.conn.execute("SELECT text FROM notes WHERE experiment_id = ? ORDER BY id",
                                                   [experiment_id])]

    def pending_search_diffs(self, limit: int) -> list[tuple]:
        """(id, snapshot_commit, parent's snapshot_commit) of runs whose diff is not indexed yet, newest first."""
        return self.db.conn.execute(
            "SELECT e.id, e.snapshot_commit, p.snapshot_commit FROM search_pending s JOIN experiments e ON e.id = "
            "s.experiment_id LEFT JOIN experiments p ON p.id = e.parent_id ORDER BY s.experiment_id DESC LIMIT ?",
            [int(limit)]).fetchall()

    def count_pending_search_diffs(self) -> int:
        return self.db.conn.execute("SELECT count(*) FROM search_pending").fetchone()[0]

    def set_search_diffs(self, rows: list[tuple[int, str]]) -> None:
        """rows: (id, changed lines); the runs leave the pending queue."""
        with self.transaction() as conn:
            conn.executemany("UPDATE experiments_fts SET diff = ? WHERE rowid = ?", [(d, i) for i, d in rows])
            conn.executemany("DELETE FROM search_pending WHERE experiment_id = ?", [(i,) for i, _ in rows])

    @staticmethod
    def _search_filters(status: str | None, verdict: str | None) -> tuple[str, str, list]:
        """(join, where, args): a filter joins each match's experiment row, driven from the index
        (CROSS JOIN keeps that order); status and verdict sit before config_json, so only the row's
        first page is read."""
        clauses, args = "", []
        if status:
            clauses, args = clauses + " AND e.status = ?", [*args, status]
        if verdict:
            clauses, args = clauses + " AND e.verdict = ?", [*args, verdict]
        if not clauses:
            return "", "", []
        return " CROSS JOIN experiments e ON e.id = f.rowid", clauses, args

    def search_count(self, fts_query: str, status: str | None, verdict: str | None) -> int:
        join, where, args = self._search_filters(status, verdict)
        return self.db.conn.execute(
            f"SELECT count(*) FROM experiments_fts f{join} WHERE experiments_fts MATCH ?{where}",
            [fts_query, *args]).fetchone()[0]

    def search(self, fts_query: str, status: str | None, verdict: str | None, limit: int,
               weights: tuple[float, ...]) -> list[tuple]:
        """(id, status, verdict, objective, delta, kept, description, snippet), best bm25 first.
        Ranked on the index alone (rowid and bm25); the rows and snippets are read for the hits only:
        a term in every run's diff must not read 100k experiment rows (their objective sits behind
        config_json) nor make 100k snippets."""
        join, where, args = self._search_filters(status, verdict)
        w = ", ".join(str(float(x)) for x in weights)
        ids = [r[0] for r in self.db.conn.execute(
            f"SELECT f.rowid FROM experiments_fts f{join} WHERE experiments_fts MATCH ?{where} "
            f"ORDER BY bm25(experiments_fts, {w}), f.rowid DESC LIMIT ?", [fts_query, *args, limit])]
        if not ids:
            return []
        marks = ", ".join("?" for _ in ids)
        snippets = dict(self.db.conn.execute(
            f"SELECT rowid, snippet(experiments_fts, -1, '[', ']', '…', 12) FROM experiments_fts "
            f"WHERE experiments_fts MATCH ? AND rowid IN ({marks})", [fts_query, *ids]).fetchall())
        rows = {r[0]: r for r in self.db.conn.execute(
            f"SELECT id, status, verdict, objective, delta, kept, description FROM experiments WHERE id IN ({marks})",
            ids).fetchall()}
        return [(*rows[i], snippets.get(i, "")) for i in ids if i in rows]

    def search_matched_columns(self, fts_query: str, ids: list[int]) -> dict[int, list[str]]:
        """Which indexed fields hold the terms, per id (column names from the fixed list below)."""
        out: dict[int, list[str]] = {}
        if not ids:
            return out
        marks = ", ".join("?" for _ in ids)
        for col in SEARCH_COLUMNS:
            for (rowid,) in self.db.conn.execute(
                    f"SELECT rowid FROM experiments_fts WHERE experiments_fts MATCH ? AND rowid IN ({marks})",
                    [f"{col} : ({fts_query})", *ids]):
                out.setdefault(rowid, []).append(col)
        return out

    def _check_columns(self, table: str, cols) -> None:
        unknown = set(cols) - self._columns[table]
        if unknown:
            raise ValueError(f"unknown {table.rstrip('s').replace('_', ' ')} columns: {sorted(unknown)}")


SEARCH_COLUMNS = ("description", "hypothesis", "notes", "diff")  # the indexed fields of experiments_fts


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (BEGIN ... END;) whole."""
    statements, current = [], []
    for line in script.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        if not stripped.strip():
            continue
        current.append(stripped)
        text = "\n".join(current)
        if stripped.endswith(";") and (("BEGIN" not in text) or text.rstrip().endswith("END;")):
            statements.append(text)
            current = []
    if current:
        statements.append("\n".join(current))
    return statements
