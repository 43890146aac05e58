"""The held-out test evaluation: one experiment's snapshot, once, on the test split.

`evaluate_test` runs the snapshot with AR_EVAL_SPLIT=test in the sandbox with the test annotations
readable (every agent run has them hidden, tools/guard.py), and records the result in
`test_evaluations`, never in `metrics`. Humans call it through `autoresearch evaluate-test`; the
MCP tool exists only when `allow_test_eval = true` in autoresearch.toml.
"""

from __future__ import annotations

import dataclasses
import json
import time

from pydantic import BaseModel, Field
from sandbox import SandboxUnavailable

from tools.errors import ToolError
from tools.guard import TEST_RUNS, denied_accesses, describe, test_paths, under
from tools.lab import Lab
from tools.launch import launch_sandboxed, sandbox_policy, wait_sandboxed
from tools.rundir import MAX_METRICS_BYTES, RunFileError, log_tail, number, read_json_file


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
    exp = lab.succeeded_experiment(experiment_id, "evaluated on test")
    test = lab.test_annotations()
    if test is None or not test.exists():
        raise ToolError("no held-out test split: `test_annotations` in autoresearch.toml is "
                        f"{'unset' if test is None else repr(str(test)) + ' (missing)'}. "
                        "Fix: point test_annotations at the test file (e.g. data/.../heldout/test.jsonl).")
    previous = lab.store.count_test_evaluations(experiment_id)
    if previous and not again:
        raise ToolError(f"experiment {experiment_id} was already evaluated on test ({previous} time(s)). The test split "
                        "is for one final look. Fix: read the earlier result, or pass --again to look twice.")
    eval_id = lab.store.insert_test_evaluation(experiment_id, requested_by, exp["snapshot_commit"])
    run_dir = lab.state_dir / TEST_RUNS / str(eval_id)
    code_dir = run_dir / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    fields: dict = {}
    try:
        lab.workspace.export_snapshot(exp["snapshot_commit"], code_dir)
        policy = sandbox_policy(lab, exp, run_dir, code_dir)
        open_up = [*test_paths(lab), test, lab.state_dir / TEST_RUNS]
        hidden = [h for h in policy.hidden if not any(under(str(h), p) or under(str(p), h) for p in open_up)]
        env = {**policy.env, "AR_EVAL_SPLIT": "test", "AR_TEST_ANNOTATIONS": str(test)}
        policy = dataclasses.replace(policy, hidden=hidden, env=env, read_only=[*policy.read_only, test])
        t0 = time.time()
        try:
            proc = launch_sandboxed(lab, policy)
        except SandboxUnavailable as exc:
            raise ToolError(f"sandbox refused the test evaluation: {exc}") from None
        result = wait_sandboxed(proc, should_cancel)
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
            try:
                metrics = read_json_file(run_dir / "test_metrics.json", MAX_METRICS_BYTES)
                if not isinstance(metrics, dict):
                    raise RunFileError("test_metrics.json is not a JSON object")
            except RunFileError as exc:
                status, error = "failed", (f"test_metrics.json missing or invalid ({exc}). Fix: the command must "
                                           "honour AR_EVAL_SPLIT=test and write RUN_DIR/test_metrics.json.")
        if metrics is not None:
            objective = number(metrics.get(lab.config.objective))
            if objective is None:
                status, error = "failed", f"test_metrics.json has no numeric {lab.config.objective!r}"
            std = number(metrics.get("objective_std"))
            if std is None and isinstance(metrics.get("objective_name"), str):
                std = number(metrics.get(metrics["objective_name"] + "_std"))
            fields.update(objective=objective, objective_std=std,
                          metrics_json=json.dumps({k: v for k, v in metrics.items() if k != "folds"},
                                                  default=str)[:20000])
        if error and status != "succeeded":
            tail = log_tail(run_dir)
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
        lab.store.update_test_evaluation(eval_id, **fields)
    return _test_out(lab, eval_id, previous, duration)


def _test_out(lab: Lab, eval_id: int, previous: int, duration: float | None) -> TestEvaluation:
    row = lab.store.get_test_evaluation(eval_id)
    metrics = {k: v for k, v in json.loads(row["metrics_json"] or "{}").items() if number(v) is not None}
    return TestEvaluation(id=row["id"], experiment_id=row["experiment_id"], status=row["status"],
                          snapshot_commit=row["snapshot_commit"], objective=row["objective"],
                          objective_std=row["objective_std"], metrics=dict(list(metrics.items())[:30]),
                          duration_s=None if duration is None else round(duration, 2), sandbox=row["sandbox_backend"],
                          previous_evaluations=previous, error=row["error"])
