"""The guarded test split and the record of denied accesses.

- Agent runs never see the held-out split: `test_paths` names what `runs.sandbox_policy` hides
  (the whole `heldout/` folder when the annotations live in one, else the file), plus the test
  evaluations' run dirs.
- A denied access that surfaces in a run's log (PermissionError / read-only file system on the
  test split, the harness, the data, the workspace's state) is recorded in the append-only
  `integrity_events` table and named in the run's error.
- `evaluate_test` runs one experiment's snapshot once on the test split (AR_EVAL_SPLIT=test) in the
  sandbox with the annotations readable, and records the result in `test_evaluations`, never in
  `metrics`. Humans call it through `autoresearch evaluate-test`; the MCP tool exists only when
  `allow_test_eval = true` in autoresearch.toml.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path

from pydantic import BaseModel, Field

from tools.errors import ToolError
from tools.lab import Lab, harness_dir

TEST_RUNS = "test_runs"
MAX_EVENTS_PER_RUN = 20
_DENIED = re.compile(r"\[Errno (1|13|30)\] ([A-Za-z ,-]{3,60}): '([^'\n]{1,1000})'")


# -- what agent runs must not see ------------------------------------------------------------
def test_paths(lab: Lab) -> list[Path]:
    """The held-out split as hidden from agent runs: its `heldout/` folder, else the file itself."""
    test = lab.test_annotations()
    if test is None:
        return []
    return [test.parent] if test.parent.name == "heldout" else [test]


def hidden_for_agent_runs(lab: Lab) -> list[Path]:
    """Added to every agent run's `hidden` list (runs.sandbox_policy)."""
    test_runs = lab.state_dir / TEST_RUNS
    test_runs.mkdir(parents=True, exist_ok=True)  # hidden only if it exists: make it now
    return [*test_paths(lab), test_runs]


# -- denied accesses -----------------------------------------------------------------------
def _under(path: str, root: Path | None) -> bool:
    if root is None:
        return False
    r = str(root)
    return path == r or path.startswith(r.rstrip(os.sep) + os.sep)


def classify(lab: Lab, path: str, code_dir: Path) -> str:
    p = os.path.normpath(path if os.path.isabs(path) else os.path.join(code_dir, path))
    test = lab.test_annotations()
    if any(_under(p, t) for t in test_paths(lab)) or (test is not None and _under(p, test)):
        return "test_split_access"
    if _under(p, harness_dir()):
        return "harness_write"
    if _under(p, lab.data_dir()):
        return "data_write"
    from tools.datacache import cache_dir
    if _under(p, cache_dir(lab)):
        return "cache_write"
    if _under(p, lab.root / ".git") or (_under(p, lab.state_dir) and not _under(p, code_dir.parent)):
        return "state_access"
    return "denied_access"


def denied_accesses(lab: Lab, run_dir: Path) -> list[dict]:
    """Denied file accesses reported in the run's logs (stderr, then stdout; last 256 KB of each)."""
    from tools.runs import open_run_file  # never follows a symlink the child planted

    found, seen = [], set()
    for name in ("stderr.log", "stdout.log"):
        try:
            with open_run_file(Path(run_dir) / name) as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 256 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        for m in _DENIED.finditer(text):
            errno_, what, path = m.groups()
            if path in seen:
                continue
            seen.add(path)
            found.append({"kind": classify(lab, path, Path(run_dir) / "code"), "path": path[:500],
                          "detail": f"[Errno {errno_}] {what}"})
            if len(found) >= MAX_EVENTS_PER_RUN:
                return found
    return found


def describe(events: list[dict]) -> str:
    """One line for a run's error: what it tried and that the sandbox refused it."""
    names = {"test_split_access": "read the held-out test split", "harness_write": "write the frozen harness",
             "data_write": "write the dataset", "cache_write": "write the shared data cache",
             "state_access": "touch the workspace's git/database",
             "denied_access": "access a protected path"}
    parts = [f"tried to {names.get(e['kind'], e['kind'])} ({e['path']}: {e['detail']})" for e in events[:5]]
    return "integrity: " + "; ".join(parts) + " - denied by the sandbox and recorded"


def record_events(conn, experiment_id: int | None, events: list[dict]) -> None:
    """Append `events` inside the caller's transaction (runs.record: with the run's outcome)."""
    conn.executemany("INSERT INTO integrity_events (t, experiment_id, kind, path, detail) VALUES (?, ?, ?, ?, ?)",
                     [(time.time(), experiment_id, e["kind"], e["path"], e["detail"]) for e in events])


def events(lab: Lab, experiment_id: int | None = None, limit: int = 100) -> list[dict]:
    sql, args = "SELECT * FROM integrity_events", []
    if experiment_id is not None:
        sql, args = sql + " WHERE experiment_id = ?", [experiment_id]
    return list(lab.store.db.query(sql + " ORDER BY id DESC LIMIT ?", [*args, int(limit)]))


# -- the held-out evaluation -----------------------------------------------------------------
class TestEvaluation(BaseModel):
    id: int
    experiment_id: int
    status: str
    snapshot_commit: str
    objective: float | None = None
    objective_std: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="numeric test metrics (at most 30)")
    duration_s: float | None = None
    sandbox: str | None = None
    previous_evaluations: int = Field(0, description="earlier test evaluations of this experiment")
    error: str | None = None


def evaluate_test(lab: Lab, experiment_id: int, *, requested_by: str = "cli", again: bool = False,
                  should_cancel=lambda: False) -> TestEvaluation:
    """Run the snapshot of `experiment_id` once with AR_EVAL_SPLIT=test; record it in test_evaluations."""
    from sandbox import SandboxUnavailable
    from tools import runs

    exp = lab.succeeded_experiment(experiment_id, "evaluated on test")
    test = lab.test_annotations()
    if test is None or not test.exists():
        raise ToolError("no held-out test split: `test_annotations` in autoresearch.toml is "
                        f"{'unset' if test is None else repr(str(test)) + ' (missing)'}. "
                        "Fix: point test_annotations at the test file (e.g. data/.../heldout/test.jsonl).")
    previous = lab.store.db.conn.execute(
        "SELECT count(*) FROM test_evaluations WHERE experiment_id = ? AND status = 'succeeded'",
        [experiment_id]).fetchone()[0]
    if previous and not again:
        raise ToolError(f"experiment {experiment_id} was already evaluated on test ({previous} time(s)). The test split "
                        "is for one final look. Fix: read the earlier result, or pass --again to look twice.")
    with lab.store.transaction() as conn:
        eval_id = conn.execute(
            "INSERT INTO test_evaluations (experiment_id, created_at, status, requested_by, snapshot_commit) "
            "VALUES (?, ?, 'running', ?, ?)", (experiment_id, time.time(), requested_by,
                                               exp["snapshot_commit"])).lastrowid
    run_dir = lab.state_dir / TEST_RUNS / str(eval_id)
    code_dir = run_dir / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    fields: dict = {}
    try:
        lab.workspace.export_snapshot(exp["snapshot_commit"], code_dir)
        policy = runs.sandbox_policy(lab, exp, run_dir, code_dir)
        open_up = [*test_paths(lab), test, lab.state_dir / TEST_RUNS]
        hidden = [h for h in policy.hidden if not any(_under(str(h), p) or _under(str(p), h) for p in open_up)]
        env = {**policy.env, "AR_EVAL_SPLIT": "test", "AR_TEST_ANNOTATIONS": str(test)}
        policy = dataclasses.replace(policy, hidden=hidden, env=env, read_only=[*policy.read_only, test])
        t0 = time.time()
        try:
            proc = runs.launch_sandboxed(lab, policy)
        except SandboxUnavailable as exc:
            raise ToolError(f"sandbox refused the test evaluation: {exc}") from None
        result = runs.wait_sandboxed(proc, should_cancel)
        fields.update(sandbox_backend=result.backend, returncode=result.returncode,
                      finished_at=time.time())
        status, error = "succeeded", None
        if result.status == "timeout":
            status, error = "timeout", f"killed after {result.wall_seconds:.0f} s"
        elif result.status == "cancelled":
            status, error = "cancelled", "cancelled"
        elif result.status != "exited" or result.returncode != 0:
            status, error = "failed", f"exit code {result.returncode} ({result.status})"
        metrics = None
        if status == "succeeded":
            path = run_dir / "test_metrics.json"
            try:
                with runs.open_run_file(path) as f:
                    metrics = json.loads(f.read(4 << 20))
                if not isinstance(metrics, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                status, error = "failed", (f"test_metrics.json missing or invalid ({exc}). Fix: the command must "
                                           "honour AR_EVAL_SPLIT=test and write RUN_DIR/test_metrics.json.")
        if metrics is not None:
            objective = _num(metrics.get(lab.config.objective))
            if objective is None:
                status, error = "failed", f"test_metrics.json has no numeric {lab.config.objective!r}"
            std = _num(metrics.get("objective_std"))
            if std is None and isinstance(metrics.get("objective_name"), str):
                std = _num(metrics.get(metrics["objective_name"] + "_std"))
            fields.update(objective=objective, objective_std=std,
                          metrics_json=json.dumps({k: v for k, v in metrics.items() if k != "folds"},
                                                  default=str)[:20000])
        if error and status != "succeeded":
            tail = runs.log_tail(run_dir)
            error = f"{error}\n--- log tail ---\n{tail}" if tail else error
        denied = denied_accesses(lab, run_dir)
        if denied:
            error = (error + "\n" if error else "") + describe(denied)
        fields.update(status=status, error=error, run_dir=str(run_dir))
        fields["duration"] = time.time() - t0
    except BaseException as exc:  # never leave the row 'running'
        if "status" not in fields:
            fields.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        duration = fields.pop("duration", None)
        fields.setdefault("finished_at", time.time())
        cols = [c for c in fields if c in _TEST_COLUMNS]
        with lab.store.transaction() as conn:
            conn.execute(f"UPDATE test_evaluations SET {', '.join(c + ' = ?' for c in cols)} WHERE id = ?",
                         [fields[c] for c in cols] + [eval_id])
    return _test_out(lab, eval_id, previous, duration)


_TEST_COLUMNS = {"finished_at", "status", "objective", "objective_std", "metrics_json", "run_dir", "sandbox_backend",
                 "returncode", "error"}


def _test_out(lab: Lab, eval_id: int, previous: int, duration: float | None) -> TestEvaluation:
    row = next(iter(lab.store.db.query("SELECT * FROM test_evaluations WHERE id = ?", [eval_id])))
    metrics = {k: v for k, v in json.loads(row["metrics_json"] or "{}").items() if _num(v) is not None}
    return TestEvaluation(id=row["id"], experiment_id=row["experiment_id"], status=row["status"],
                          snapshot_commit=row["snapshot_commit"], objective=row["objective"],
                          objective_std=row["objective_std"], metrics=dict(list(metrics.items())[:30]),
                          duration_s=None if duration is None else round(duration, 2), sandbox=row["sandbox_backend"],
                          previous_evaluations=previous, error=row["error"])


def test_evaluations(lab: Lab, limit: int = 50) -> list[dict]:
    return list(lab.store.db.query("SELECT * FROM test_evaluations ORDER BY id DESC LIMIT ?", [int(limit)]))


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None
