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

from tools.errors import ToolError
from tools.guard import TEST_RUNS, denied_accesses, describe, test_paths, under
from tools.lab import Lab
from tools.launch import sandbox_policy
from tools.rundir import log_tail, number
from tools.datacache import discard_deal
from tools.runs import Outcome, prepare_tasks, run_command_scorer, wait_run
from tools.scoring import ScoreError, parse_command_score, score_eclip


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
    t0 = time.time()
    try:
        lab.workspace.export_snapshot(exp["snapshot_commit"], code_dir)
        outcome, block = _train_and_score(lab, exp, run_dir, code_dir, should_cancel)
        result = outcome.result
        if result is not None:
            fields.update(sandbox_backend=result.backend, returncode=result.returncode)
        status, error = outcome.status, outcome.error
        if status == "succeeded":
            objective = number(block.get(lab.config.objective))
            std = number(block.get("objective_std"))
            if std is None and isinstance(block.get("objective_name"), str):
                std = number(block.get(block["objective_name"][:100] + "_std"))
            fields.update(objective=objective, objective_std=std,
                          metrics_json=json.dumps({k: v for k, v in block.items() if k != "folds"}, default=str)[:20000])
        if error and status != "succeeded":
            tail = log_tail(run_dir)
            error = f"{error}\n--- log tail ---\n{tail}" if tail else error
        denied = denied_accesses(lab, run_dir)
        if denied:
            error = (error + "\n" if error else "") + describe(denied)
        fields.update(status=status, error=error, run_dir=str(run_dir), finished_at=time.time())
    except BaseException as exc:  # never leave the row 'running'
        if "status" not in fields:
            fields.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        duration = time.time() - t0
        fields.setdefault("finished_at", time.time())
        lab.store.update_test_evaluation(eval_id, **fields)
    return _test_out(lab, eval_id, previous, duration)


def _train_and_score(lab: Lab, exp: dict, run_dir, code_dir, should_cancel) -> tuple[Outcome, dict | None]:
    """Train once on all of train+val and score once on the test split, by the trusted scorer.
    eCLIP: the run gets the test pool unpaired (a one-fold test task); a workspace scorer gets the
    test annotations, the training process never does."""
    cfg = lab.config
    share = float(exp["time_budget_s"] or cfg.time_budget_s) / cfg.processes  # a val run's per-process share
    outcome = Outcome()
    try:
        if cfg.scorer == "eclip":
            label = f"test-{run_dir.name}"
            try:
                dealt, problem = prepare_tasks(lab, code_dir, run_dir, should_cancel, split="test", label=label)
                if dealt is None:
                    outcome.status, outcome.error = "failed", problem
                    return outcome, None
                fold_dir = run_dir / "fold-0"
                fold_dir.mkdir(exist_ok=True)
                policy = sandbox_policy(lab, exp, fold_dir, code_dir, task_dir=dealt[0][0], fold=0,
                                        budget_s=share, split="test")
                if not wait_run(lab, None, policy, should_cancel, outcome, "the test run"):
                    return outcome, None
                return outcome, score_eclip(run_dir, [key for _, key in dealt])
            finally:
                discard_deal(lab, label)
        test = lab.test_annotations()
        policy = sandbox_policy(lab, exp, run_dir, code_dir, budget_s=share, split="test")
        if not wait_run(lab, None, policy, should_cancel, outcome, "the test run"):
            return outcome, None
        open_up = [*test_paths(lab), test]

        def with_test(policy):  # only the scorer reads the test annotations
            hidden = [h for h in policy.hidden if not any(under(str(h), p) or under(str(p), h) for p in open_up)]
            env = {**policy.env, "AR_TEST_ANNOTATIONS": str(test)}
            return dataclasses.replace(policy, hidden=hidden, env=env, read_only=[*policy.read_only, test])

        score_dir = run_command_scorer(lab, exp, run_dir, code_dir, should_cancel, outcome, split="test",
                                       policy_edit=with_test)
        if outcome.status != "succeeded":
            return outcome, None
        return outcome, parse_command_score(score_dir / "stdout.log", cfg.objective)
    except ScoreError as exc:
        outcome.status, outcome.error = "failed", f"scoring: {exc}"
        return outcome, None


def _test_out(lab: Lab, eval_id: int, previous: int, duration: float | None) -> TestEvaluation:
    row = lab.store.get_test_evaluation(eval_id)
    metrics = {k: v for k, v in json.loads(row["metrics_json"] or "{}").items() if number(v) is not None}
    return TestEvaluation(id=row["id"], experiment_id=row["experiment_id"], status=row["status"],
                          snapshot_commit=row["snapshot_commit"], objective=row["objective"],
                          objective_std=row["objective_std"], metrics=dict(list(metrics.items())[:30]),
                          duration_s=None if duration is None else round(duration, 2), sandbox=row["sandbox_backend"],
                          previous_evaluations=previous, error=row["error"])
