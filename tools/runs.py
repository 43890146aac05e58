"""The run lifecycle: submit -> queued -> (supervisor) running -> scored -> recorded, plus cancel
and recovery.

A run never depends on the MCP server that submitted it: `submit` checks the params and writes
them into the snapshot, records the experiment as `queued` and starts a detached supervisor
(`python -m tools.supervisor`), which claims queued runs one slot at a time and runs each in the
sandbox: for the eCLIP scorer one process per fold on its own task folder, for a workspace scorer
the command then the scorer. The trusted scorer (tools/scoring.py) computes the objective; the
run's own files are read through tools/rundir.py (bounded). The server only reads the store and
the run dir's progress.

Where the processes run is the executor's (tools/executors.py). `local`: the supervisor starts each
sandboxed process itself (`execute_claimed`). `slurm` and `ray`: the supervisor submits one job per claimed
run (`submit_job`), whose entry point (tools/job.py) runs `execute_claimed` on a node and leaves its
Outcome in the job's folder; the supervisor (or, after a restart, `recover`) asks SLURM (Ray) how the job
ended and records it here (`settle_job`): only this machine writes the SQLite store.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from model.constants import ConstantError, parse_constants, rewrite_constants
from sandbox import SandboxUnavailable

from tools import datacache, guard, hpo, search
from sandbox import SandboxResult

from tools.errors import ToolError
from tools.executors import (JOB_LABELS, JobHandle, JobSpec, JobStatus, LocalExecutor, executor_for, executor_named,
                             jobs_dir, load_handle, save_handle)
from tools.lab import Lab
from tools.launch import sandbox_policy
from tools.params import bake
from tools.provenance import main_file, provenance
from tools.rundir import (fold_dirs, integer, log_tail, metric_rows, number, read_all_steps, read_cache_status, read_metrics,
                          text_facts, write_cache_status)
from tools.scoring import ScoreError, extras, parse_command_score, score_eclip
from tools.verdict import compute_note, stop_note, verdict_fields
from tools.workspace import BEST_REF


# -- submission ----------------------------------------------------------------------------
def submit(lab: Lab, *, description: str, hypothesis: str | None = None, time_budget_s: float | None = None,
           params: dict | None = None, commit: str | None = None, rerun_of: int | None = None,
           rerun_kind: str | None = None) -> int:
    """Snapshot the editable files with `params` written into their constants, queue the experiment,
    make sure a supervisor will run it. With `commit`, run that existing snapshot instead (with
    `params`, a new snapshot of it with those values: seed reruns). A bad param, or a budget above
    the workspace's, is refused before any snapshot or row exists. A new snapshot that differs from
    an earlier experiment's only in SEED joins that experiment's seed group (a lucky seed is never
    judged alone)."""
    cfg = lab.config
    budget = float(time_budget_s or cfg.time_budget_s)
    if budget > cfg.max_time_budget_s:
        raise ToolError(f"time_budget_s={budget:g} is above max_time_budget_s={cfg.max_time_budget_s:g} "
                        "set in autoresearch.toml. Fix: ask for less, or have a human raise the maximum.")
    params = dict(params or {})
    if rerun_of is None:  # reruns and reproductions keep the budget their original ran with
        check_budget(lab, budget, params)
    if commit is not None and lab.workspace.ref(commit) != commit:
        raise ToolError(f"commit={commit!r} is not a snapshot in this workspace. Fix: rerun an experiment by its id.")
    contents = _baked(lab, params, commit)
    files = _snapshot_files(lab, contents, commit)
    if rerun_of is None:
        check_step_budget(lab, files)
    code_key = seedless_key(lab, files)
    if commit is None:
        if rerun_of is None and code_key is not None:
            joined = _seed_group_of(lab, code_key)
            if joined is not None:
                rerun_of, rerun_kind = joined, "seed"
    # a rerun's parent is the run it reruns (its diff: SEED alone); a new change's parent is the best
    best = lab.store.best_experiment()
    config = {"command": cfg.command, "time_budget_s": budget, "workspace": cfg.model_dump(mode="json")}
    if code_key is not None:
        config["code_key"] = code_key
    # Commit first, then record the row already 'queued' with its commit: a submitter killed at
    # any point leaves either nothing or a complete queued run, never a half-made one.
    message = f"experiment: {description}\n\n{hypothesis or ''}".strip()
    if commit is None:
        commit = lab.workspace.snapshot(message, contents=contents)
    elif contents:
        commit = lab.workspace.snapshot(message, contents=contents, base=commit)
    config["provenance"] = provenance(lab, commit)
    extra = {"rerun_of": rerun_of, "rerun_kind": rerun_kind} if rerun_of is not None else {}
    exp_id = lab.store.insert_experiment(
        status="queued", description=description, hypothesis=hypothesis, time_budget_s=budget,
        parent_id=rerun_of if rerun_of is not None else best["id"] if best else None, config_json=json.dumps(config, default=str),
        params_json=json.dumps(params), snapshot_commit=commit, run_dir_of=lambda i: str(lab.run_dir(i)), **extra)
    lab.workspace.set_experiment_ref(exp_id, commit)
    search.index_diffs(lab)  # the search index is kept on write (issue 16)
    ensure_supervisor(lab)
    return exp_id


# -- the budget is the workspace's (autoresearch.toml, the human's) -------------------------------
def check_budget(lab: Lab, budget: float, params: dict) -> None:
    """ToolError for a run asking more seconds than the workspace gives, or a budget set through params."""
    cfg = lab.config
    if budget > cfg.time_budget_s:
        raise ToolError(f"time_budget_s={budget:g} is above the workspace's time_budget_s={cfg.time_budget_s:g} "
                        "(autoresearch.toml): the compute budget is the human's, so every run is compared at the same "
                        "budget. Fix: leave time_budget_s out (or ask for less), or have a human raise time_budget_s.")
    for name in params:
        if "TIME_BUDGET" in str(name).upper():
            raise ToolError(f"params.{name}: the time budget is the workspace's (time_budget_s in autoresearch.toml), "
                            "not a run's parameter. Fix: drop it from params; a human changes the budget.")


def check_step_budget(lab: Lab, files: dict[str, bytes]) -> None:
    """budget_rule steps: ToolError when the snapshot's step-budget constant is above the workspace's."""
    cfg = lab.config
    script = main_file(lab)
    if cfg.budget_rule != "steps" or not cfg.step_budget or script is None or files.get(script) is None:
        return
    name = cfg.step_budget_constant
    value = parse_constants(files[script]).get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > cfg.step_budget:
        raise ToolError(f"{script}: {name} = {value:g} is above the workspace's step_budget = {cfg.step_budget} "
                        "(autoresearch.toml): under budget_rule = \"steps\" the step budget is the human's, so a gain "
                        f"bought with more steps is not progress. Fix: set {name} = {cfg.step_budget} or less, or have "
                        "a human raise step_budget.")


# -- seed-only changes join a seed group ----------------------------------------------------------
def _snapshot_files(lab: Lab, contents: dict[str, bytes], commit: str | None) -> dict[str, bytes | None]:
    """The editable files as the new snapshot will hold them (the working tree or `commit`, `contents` over it)."""
    out: dict[str, bytes | None] = {}
    for rel in lab.config.editable:
        if rel in contents:
            out[rel] = contents[rel]
            continue
        if commit is not None:
            out[rel] = lab.workspace.read_snapshot_file(commit, rel)
            continue
        path = lab.root / rel
        try:
            out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        except OSError:
            out[rel] = None
    return out


def seedless_key(lab: Lab, files: dict[str, bytes | None]) -> str | None:
    """A fingerprint of the editable files with the main file's SEED set to 0, and the SEED itself;
    two snapshots with one key and different SEEDs differ only in the seed. None without a SEED."""
    script = main_file(lab)
    data = files.get(script) if script else None
    if data is None:
        return None
    seed = parse_constants(data).get("SEED")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return None
    try:
        text = rewrite_constants(data.decode(), {"SEED": 0})
    except (ConstantError, UnicodeDecodeError):
        return None
    h = hashlib.sha256()
    for rel in sorted(files):
        body = text.encode() if rel == script else files[rel]
        h.update(rel.encode() + b"\0" + (b"-" if body is None else b"+" + body) + b"\0")
    return f"{h.hexdigest()}:{seed}"


def _seed_group_of(lab: Lab, code_key: str) -> int | None:
    """The root of the seed group whose code equals this key's but for SEED (an identical snapshot, SEED
    included, is not a new seed: it stays its own experiment); None when there is none."""
    code, _, seed = code_key.rpartition(":")
    rows = lab.store.code_key_rows(code + ":")
    if any(row["code_key"] == code_key for row in rows):
        return None
    for row in rows:
        if row["rerun_kind"] == "reproduce":
            continue
        return row["rerun_of"] if row["rerun_kind"] == "seed" and row["rerun_of"] else row["id"]
    return None


def _baked(lab: Lab, params: dict, commit: str | None) -> dict[str, bytes]:
    """{main file: its text with `params` written in} ({} without params); ToolError for a bad param."""
    if not params:
        return {}
    script = main_file(lab)
    if script is None:
        raise ToolError("params need a Python main file among `editable` in autoresearch.toml, and there is none. "
                        "Fix: drop params, or have a human add train.py to editable.")
    if commit is None:
        path = lab.root / script
        text = path.read_text() if path.is_file() else None
    else:
        data = lab.workspace.read_snapshot_file(commit, script)
        text = data.decode() if data is not None else None
    if text is None:
        raise ToolError(f"params need {script}, which does not exist. Fix: revert('best') to restore it.")
    return {script: bake(text, params, script).encode()}


def ensure_supervisor(lab: Lab) -> None:
    """Start a detached supervisor; it exits at once when every slot (slurm: the one watcher) is busy."""
    log = open(lab.state_dir / "supervisor.log", "ab")
    try:
        # -P and a cwd outside the workspace: a tools/ folder an agent left in the workspace must not
        # shadow our package in this unsandboxed process.
        subprocess.Popen([sys.executable, "-P", "-m", "tools.supervisor", str(lab.root)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True, close_fds=True, cwd=str(lab.state_dir))
    finally:
        log.close()


# -- running one experiment (inside the supervisor) ----------------------------------------
@dataclass
class Outcome:
    """How the sandboxed processes of one run ended, before the scorer looks at them."""
    status: str = "succeeded"
    error: str | None = None
    result: object | None = None        # the last SandboxResult
    wall_seconds: float = 0.0
    peak_memory_bytes: int = 0
    run_seconds: float = 0.0             # the run's own processes (not the scorer), by the harness's clock
    observed: list | None = None         # integrity events the sandbox itself reported (guard.observed_events)


def run_claimed(lab: Lab, exp: dict, should_cancel, slot: int = 0) -> None:
    """Run one claimed experiment to its end, score it, record it. `should_cancel()` is polled."""
    exp_id = exp["id"]
    try:
        try:
            outcome = execute_claimed(lab, exp, should_cancel, slot)
        except SandboxUnavailable as exc:
            record(lab, exp_id, status="failed", error=f"sandbox refused: {exc}")
            return
        record_from_run_dir(lab, exp_id, outcome=outcome)
    except Exception as exc:  # never leave a claimed run in 'running'
        record(lab, exp_id, status="failed", error=f"supervisor error: {type(exc).__name__}: {exc}")
        raise


def execute_claimed(lab: Lab, exp: dict, should_cancel, slot: int = 0) -> Outcome:
    """The launch half of a run, here or on a SLURM node (tools/job.py): the snapshot into the run dir,
    then its sandboxed processes (per fold, or the command and its scorer). Raises SandboxUnavailable."""
    exp_id = exp["id"]
    run_dir = lab.run_dir(exp_id)
    code_dir = run_dir / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    lab.workspace.set_experiment_ref(exp_id, exp["snapshot_commit"])  # idempotent; see submit
    lab.workspace.export_snapshot(exp["snapshot_commit"], code_dir)
    if lab.config.scorer == "eclip":
        return _run_folds(lab, exp, run_dir, code_dir, should_cancel, slot)
    return _run_sandboxed(lab, exp, run_dir, code_dir, should_cancel, slot)


def wait_run(lab: Lab, exp_id: int | None, policy, should_cancel, outcome: Outcome, what: str) -> bool:
    """Start one sandboxed process (a local job) and wait for it; False (with outcome's status set) if it
    did not succeed."""
    local = LocalExecutor(lab)
    handle = local.submit(JobSpec.for_policy(policy, name=what))
    if exp_id is not None:
        lab.store.update_experiment(exp_id, sandbox_backend=handle.proc.backend)
    cancelled = False  # cancel once, then wait for the whole tree to be gone
    while not (st := local.status(handle)).final:
        if not cancelled and should_cancel():
            cancelled = True
            local.cancel(handle)
        time.sleep(0.2)
    result = st.result
    outcome.result = result
    outcome.wall_seconds += result.wall_seconds or 0.0
    if what != "the scorer":
        outcome.run_seconds += result.wall_seconds or 0.0
    if events := guard.observed_events(result):
        outcome.observed = [*(outcome.observed or []), *events][:guard.MAX_EVENTS_PER_RUN]
    outcome.peak_memory_bytes = max(outcome.peak_memory_bytes, result.peak_memory_bytes or 0)
    if result.status == "timeout":
        outcome.status, outcome.error = "timeout", f"{what}: killed after {result.wall_seconds:.0f} s (budget + grace)"
    elif result.status == "cancelled":
        outcome.status, outcome.error = "cancelled", "cancelled on request"
    elif result.status == "memory":
        outcome.status, outcome.error = "failed", f"{what}: killed: over the memory limit"
    elif result.status == "error" or result.returncode != 0:
        outcome.status, outcome.error = "failed", f"{what}: exit code {result.returncode}"
    return outcome.status == "succeeded"


def _run_folds(lab: Lab, exp: dict, run_dir: Path, code_dir: Path, should_cancel, slot: int) -> Outcome:
    """eCLIP: a fresh deal of the task build for this run, then one sandboxed process per training
    process of the protocol (one; one per fold under kfold-pooled), each seeing only its task folder."""
    outcome = Outcome()
    dealt, problem = prepare_tasks(lab, code_dir, run_dir, should_cancel, label=str(exp["id"]))
    if dealt is None:
        outcome.status, outcome.error = "failed", problem
        return outcome
    share = float(exp["time_budget_s"] or lab.config.time_budget_s) / len(dealt)
    for k, (task, _key) in enumerate(dealt):
        fold_dir = run_dir / f"fold-{k}"
        fold_dir.mkdir(exist_ok=True)
        policy = sandbox_policy(lab, exp, fold_dir, code_dir, slot, task_dir=task, fold=k, budget_s=share)
        if not wait_run(lab, exp["id"], policy, should_cancel, outcome, f"fold {k}" if len(dealt) > 1 else "the run"):
            break
    return outcome


def prepare_tasks(lab: Lab, code_dir: Path, run_dir: Path, should_cancel, split: str = "val", *, label: str):
    """(this run's deal of the task build its snapshot needs: [(task folder, key)], None) or (None, why
    not); experiment_status shows the progress."""
    script = main_file(lab) or "train.py"
    sizes = datacache.requested_sizes(code_dir / script)
    if sizes is None:
        return None, sizes_problem(code_dir / script)
    tasks, line = datacache.ensure_tasks(lab, sizes, split=split, log_path=run_dir / "tasks.log",
                                         should_cancel=should_cancel,
                                         on_build=lambda text: write_cache_status(run_dir, text))
    write_cache_status(run_dir, line)
    if tasks is None:
        return None, f"the harness could not prepare the data: {line}"
    return datacache.deal_run(lab, tasks, label), None


def sizes_problem(script: Path) -> str:
    """Why IMAGE_SIZE / CONTEXT_LENGTH could not be read from the snapshot's script (a syntax error is named)."""
    try:
        compile(script.read_bytes(), script.name, "exec", dont_inherit=True)
    except SyntaxError as exc:
        return (f"{script.name} does not parse: SyntaxError: {exc.msg} (line {exc.lineno}). Fix the syntax and "
                "run again")
    except (OSError, ValueError) as exc:
        return f"{script.name} cannot be read ({exc}). Fix: revert('best') to restore it"
    return (f"{script.name} must set IMAGE_SIZE and CONTEXT_LENGTH as integer literals at the top (the harness "
            "builds the data at that size before the run). Fix: e.g. IMAGE_SIZE = 64, CONTEXT_LENGTH = 48")


def _run_sandboxed(lab: Lab, exp: dict, run_dir: Path, code_dir: Path, should_cancel, slot: int) -> Outcome:
    """A workspace with its own scorer: the command once in the sandbox, then the scorer over its outputs."""
    outcome = Outcome()
    if wait_run(lab, exp["id"], sandbox_policy(lab, exp, run_dir, code_dir, slot), should_cancel, outcome, "the run"):
        run_command_scorer(lab, exp, run_dir, code_dir, should_cancel, outcome)
    return outcome


def run_command_scorer(lab: Lab, exp: dict, run_dir: Path, code_dir: Path, should_cancel, outcome: Outcome,
                        split: str = "val", policy_edit=None) -> Path:
    """Run the workspace scorer over the run's outputs; returns the folder it wrote (its stdout.log)."""
    # the scorer writes outside the run dir: nothing the run wrote can pose as its result
    score_dir = lab.score_dir(exp["id"]) if split == "val" else run_dir.parent / (run_dir.name + "-score")
    shutil.rmtree(score_dir, ignore_errors=True)
    score_dir.mkdir(parents=True)
    policy = sandbox_policy(lab, exp, score_dir, code_dir, argv=lab.scorer_argv(), outputs_dir=run_dir,
                            budget_s=lab.config.scorer_timeout_s, split=split)
    policy = policy_edit(policy) if policy_edit else policy
    keep = outcome.result
    ok = wait_run(lab, exp["id"] if split == "val" else None, policy, should_cancel, outcome, "the scorer")
    if keep is not None:
        outcome.result = keep  # the run's sandbox facts, not the scorer's
    if not ok and outcome.status == "failed":
        tail = log_tail(score_dir, 8)
        outcome.error += f" ({' '.join(tail.split())[-600:]})" if tail else ""
    return score_dir


def score(lab: Lab, exp_id: int) -> dict:
    """The trusted score of a finished run (ScoreError when its outputs cannot be scored)."""
    run_dir = lab.run_dir(exp_id)
    if lab.config.scorer == "eclip":
        keys = datacache.dealt_keys(lab, str(exp_id))
        if not keys:
            raise ScoreError("the run's key is gone (keys live only while a run is in flight), so its embeddings "
                             "cannot be scored. Fix: rerun the experiment")
        return score_eclip(run_dir, keys, protocol=lab.config.protocol)
    return parse_command_score(lab.score_dir(exp_id) / "stdout.log", lab.config.objective)


def run_facts(run_dir: Path) -> tuple[dict, list[str]]:
    """What the run's own metrics.json files say (informational), and the score keys they claimed."""
    dirs = fold_dirs(run_dir) or [run_dir]
    merged: dict = {}
    claimed: set[str] = set()
    sums = {"steps": 0.0, "max_steps": 0.0, "train_seconds": 0.0}
    stopped = []
    for d in dirs:
        m, _ = read_metrics(d)
        facts, keys = extras(m)
        claimed.update(keys)
        for k in sums:
            if (v := number(facts.get(k))) is not None:
                sums[k] += v
        if facts.get("stopped_by") in ("steps", "time"):
            stopped.append(facts["stopped_by"])
        merged.update(facts)
    for k, v in sums.items():
        if number(merged.get(k)) is not None:
            merged[k] = int(v) if k != "train_seconds" else round(v, 3)
    if stopped:
        merged["stopped_by"] = "time" if "time" in stopped else "steps"
    return merged, sorted(claimed)


# -- recording -----------------------------------------------------------------------------
def record_from_run_dir(lab: Lab, exp_id: int, *, outcome: Outcome | None = None, recovered: bool = False) -> None:
    """Score a finished run dir with the trusted scorer and turn it into the store's record."""
    run_dir = lab.run_dir(exp_id)
    status, error = (outcome.status, outcome.error) if outcome is not None else ("succeeded", None)
    block = None
    if status == "succeeded":
        try:
            block = score(lab, exp_id)
        except ScoreError as exc:
            status, error = ("interrupted" if recovered else "failed"), f"scoring: {exc}"
    facts, claimed = run_facts(run_dir)
    objective = None
    if block is not None:
        objective = number(block.get(lab.config.objective))
        if objective is None:
            status, error = "failed", f"the scorer's result has no numeric {lab.config.objective!r}"
    if recovered and status == "succeeded":
        error = "scored from its run dir after the supervisor was gone"
    if error and status != "succeeded":
        tail = log_tail(run_dir)
        error = f"{error}\n--- log tail ---\n{tail}" if tail else error
    hints = guard.denied_accesses(lab, run_dir)  # the run's own log: hints, labelled as such
    if hints:
        error = guard.describe(hints) + ("\n" + error if error else "")
    observed = list(outcome.observed or []) if outcome is not None else []
    if claimed:  # the score is the harness's: a run that wrote its own is recorded, and ignored
        observed.append({"kind": "self_scored", "path": "metrics.json",
                         "detail": f"wrote {', '.join(claimed[:8])}: ignored, the harness scores every run"})
    metrics = {**facts, **block} if block is not None and status == "succeeded" else None
    exp = lab.store.get_experiment(exp_id)
    harness = {"budget_s": float(exp["time_budget_s"] or lab.config.time_budget_s) if exp else None,
               "run_seconds": round(outcome.run_seconds, 3) if outcome is not None and outcome.run_seconds else None,
               "killed_at_deadline": bool(outcome is not None and outcome.status == "timeout"),
               "recovered": recovered}
    # the denied accesses land in the same transaction as the outcome: a reader that sees the
    # finished row also sees why it failed
    record(lab, exp_id, status=status, error=error, metrics=metrics, objective=objective,
           result=outcome.result if outcome else None, denied=[*observed, *hints], facts=facts,
           wall_seconds=outcome.wall_seconds if outcome else None,
           peak_memory_bytes=outcome.peak_memory_bytes if outcome else 0, harness=harness, observed=observed)


def claims_contradiction(lab: Lab, facts: dict, harness: dict) -> str | None:
    """Why the run's claims (metrics.json: steps, max_steps, stopped_by) cannot be true given the harness's
    own facts (the budget it gave, the seconds it measured, the workspace's step budget); None if they can."""
    cfg = lab.config
    steps, max_steps = integer(facts.get("steps")), integer(facts.get("max_steps"))
    stopped_by = facts.get("stopped_by")
    said = f"the run claims steps {steps}/{max_steps}, stopped by {stopped_by or '?'}"
    if steps is not None and max_steps is not None and steps > max_steps:
        return f"{said}: more steps than its own step budget"
    if cfg.step_budget and max_steps is not None and max_steps > cfg.step_budget * cfg.run_folds:
        return (f"{said}: a step budget above the workspace's step_budget = {cfg.step_budget} per fold "
                f"({cfg.step_budget * cfg.run_folds} in all)")
    finished = stopped_by == "steps" or (steps is not None and max_steps is not None and steps >= max_steps)
    secs, budget = harness.get("run_seconds"), harness.get("budget_s")
    if finished and secs is not None and budget and secs >= budget:
        return (f"{said} (claimed by the run), but the harness measured {secs:.1f} s of its processes, its whole "
                f"time budget of {budget:g} s: a run that finished its steps stops inside its budget, so its "
                "step count cannot be trusted")
    return None


def record(lab: Lab, exp_id: int, *, status: str, error: str | None = None, metrics: dict | None = None,
           objective: float | None = None, result=None, denied: list[dict] | None = None, facts: dict | None = None,
           wall_seconds: float | None = None, peak_memory_bytes: int = 0, harness: dict | None = None,
           observed: list[dict] | None = None) -> None:
    """Write the outcome, the verdict, the denied accesses and the best ref in one transaction
    (concurrent runs serialise). `harness`: the facts the supervisor owns (the budget it gave, the
    seconds it measured); `observed`: the integrity events it saw itself (they bite: never kept)."""
    store, cfg = lab.store, lab.config
    exp = store.get_experiment(exp_id)
    run_dir = lab.run_dir(exp_id)
    steps = read_all_steps(run_dir)
    now = time.time()
    fields: dict = {"status": status, "error": error, "finished_at": now,
                    "duration_s": (wall_seconds if wall_seconds else
                                   (now - exp["started_at"] if exp["started_at"] else None))}
    if result is not None:
        fields["returncode"] = result.returncode
        fields["sandbox_backend"] = result.backend
    if peak_memory_bytes:
        fields["peak_memory_gb"] = round(peak_memory_bytes / 2**30, 4)
    config = json.loads(exp["config_json"] or "{}")
    facts = facts or {}
    steps_done, steps_max = integer(facts.get("steps")), integer(facts.get("max_steps"))
    stopped_by = facts.get("stopped_by") if facts.get("stopped_by") in ("steps", "time") else None
    fields.update(steps=steps_done, max_steps=steps_max, stopped_by=stopped_by)
    stop = stop_note(steps_done, steps_max, stopped_by)
    if metrics is not None:
        std = number(metrics.get("objective_std"))
        if std is None and isinstance(metrics.get("objective_name"), str):
            std = number(metrics.get(metrics["objective_name"][:100] + "_std"))
        if isinstance(metrics.get("folds"), list) and len(metrics["folds"]) < 2:
            std = None  # one pool measures no spread: the noise is unknown, not 0.0
        fields["objective"], fields["objective_std"] = objective, std
        if "peak_memory_gb" not in fields and (mem := number(metrics.get("peak_memory_gb"))) is not None:
            fields["peak_memory_gb"] = mem
    if metrics is not None or facts:
        config["run"] = text_facts(metrics if metrics is not None else facts)
    if facts:  # what metrics.json says about its own compute is the run's claim, and shown as one
        config["claimed_by_the_run"] = {k: facts.get(k) for k in ("steps", "max_steps", "stopped_by", "train_seconds")
                                        if facts.get(k) is not None}
    harness = dict(harness or {})
    if harness:
        config["harness"] = harness
    contradiction = claims_contradiction(lab, facts, harness) if metrics is not None else None
    blocked = guard.describe(observed, observed=True) if observed else None
    compute = compute_note(steps_done, steps_max, fields.get("duration_s") if harness.get("run_seconds") is None
                           else harness["run_seconds"])
    if (cache_status := read_cache_status(run_dir)) is not None:
        config["data_cache"] = cache_status
    if result is not None:
        config["sandbox"] = {"backend": result.backend, "network": result.network,
                             "warnings": list(result.warnings or [])[:8], "gaps": list(getattr(result, "gaps", []))[:12],
                             "isolation": result.isolation, "limits": result.limits}
    fields["config_json"] = json.dumps(config, default=str)
    with store.transaction() as conn:
        best_before = store.best_experiment_in(conn)
        if metrics is not None:  # noise-aware verdict; seed reruns are judged as a group (tools/verdict.py)
            fields.update(verdict_fields(store, conn, exp, objective, fields.get("objective_std"), cfg, stop=stop,
                                         blocked=blocked, contradiction=contradiction, compute=compute))
            if cfg.leak_note:  # named wherever it is shown
                fields["verdict_reason"] = f"{cfg.leak_note} {fields.get('verdict_reason') or ''}".strip()
            store.replace_metrics(exp_id, metric_rows(metrics), conn)
        store.replace_steps(exp_id, steps, conn)
        updated = store.update_experiment(exp_id, conn=conn, only_if_status=("running", "queued"),
                                          **fields)
        if updated and denied:
            store.record_integrity_events(conn, exp_id, denied)
        best_now = store.best_experiment_in(conn) if updated else best_before
        if best_now is not None and (best_before is None or best_now["id"] != best_before["id"]):
            # under the write lock: the ref follows the best in the order verdicts were given (a
            # demotion moves it back), and a reader that sees the kept row also sees the ref; a
            # record that leaves the best as it was runs no git
            try:
                if best_now.get("snapshot_commit"):
                    lab.workspace.advance_best(lab.code_snapshot(best_now))
            except Exception as exc:  # the ref is a convenience (revert('best') reads the store)
                print(f"autoresearch: could not move {BEST_REF}: {exc}", file=sys.stderr)
    _prune_checkpoints(lab, exp_id, kept=bool(fields.get("kept")))
    datacache.discard_deal(lab, str(exp_id))  # recorded: the key's work is done (and it lived only in flight)
    if updated:
        hpo.after_run(lab, exp_id)  # tell the Optuna study (never raises)


def _prune_checkpoints(lab: Lab, exp_id: int, kept: bool) -> None:
    policy = lab.config.keep_checkpoints
    if policy == "all" or (policy == "kept" and kept):
        return
    for ckpt in lab.run_dir(exp_id).glob("*.pt"):
        try:
            if stat.S_ISDIR(ckpt.lstat().st_mode):  # the child made it: a directory is not ours to remove
                print(f"autoresearch: experiment {exp_id}: {ckpt.name} is a directory, not a checkpoint; left as is",
                      file=sys.stderr)
                continue
            ckpt.unlink(missing_ok=True)  # a symlink is removed, never followed
        except OSError as exc:
            print(f"autoresearch: experiment {exp_id}: could not remove {ckpt.name}: {exc}", file=sys.stderr)


# -- cancel and recovery -------------------------------------------------------------------
def request_cancel(lab: Lab, exp_id: int) -> str:
    """Cancel a queued or running experiment; returns the status it ends in."""
    exp = lab.experiment(exp_id)
    if exp["status"] == "queued":
        if lab.store.update_experiment(exp_id, only_if_status=("queued",), status="cancelled",
                                       finished_at=time.time(), error="cancelled before it started"):
            hpo.after_run(lab, exp_id)  # a suggested trial is told FAIL
            return "cancelled"
        exp = lab.store.get_experiment(exp_id)
    if exp["status"] != "running":
        return exp["status"]
    run_dir = lab.run_dir(exp_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "cancel").touch()  # the source of truth; a SLURM job's entry point sees it too
    handle = load_handle(lab, exp_id)
    if handle is not None and handle.executor in ("slurm", "ray"):
        executor_named(lab, handle.executor).cancel(handle)  # scancel / stop_job now; settled by the supervisor
    pid = exp["supervisor_pid"]
    if pid and supervisor_alive(lab, pid):
        try:
            os.kill(pid, signal.SIGUSR1)  # wakes the supervisor; the cancel file is the source of truth
        except ProcessLookupError:
            pass
    return "cancelling"


def supervisor_lock_path(lab: Lab, pid: int) -> Path:
    return lab.state_dir / "supervisors" / f"{pid}.lock"


def supervisor_alive(lab: Lab, pid: int | None) -> bool:
    """True while supervisor `pid` holds its lock (taken before it claims anything), so a dead
    supervisor is told from a live one without trusting the PID alone."""
    if not pid:
        return False
    path = supervisor_lock_path(lab, pid)
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def recover(lab: Lab, *, kick: bool = True) -> list[int]:
    """Settle runs whose supervisor died: a SLURM job is asked about (finished: recorded; still queued or
    running: left to the next supervisor, which adopts it); a local run is recorded from its run dir,
    or marked interrupted. With kick, start a supervisor for runs still queued or in flight (a
    supervisor itself passes kick=False)."""
    settled, in_flight = [], False
    for exp in lab.store.experiments_with_status("running"):
        if supervisor_alive(lab, exp["supervisor_pid"]):
            continue
        handle = load_handle(lab, exp["id"])
        if handle is not None and handle.executor in ("slurm", "ray"):
            status = executor_named(lab, handle.executor).status(handle)
            if not status.final:
                in_flight = True  # a job nobody watches: the supervisor started below adopts it
                continue
            settle_job(lab, exp, handle, status)
            settled.append(exp["id"])
            continue
        with _recovering(lab, exp["id"]) as mine:
            if not mine or lab.store.get_experiment(exp["id"])["status"] != "running":
                continue  # another process is settling it, or has
            outcome = rescore(lab, exp) if lab.config.scorer != "eclip" else None
            record_from_run_dir(lab, exp["id"], outcome=outcome, recovered=True)
            row = lab.store.get_experiment(exp["id"])
            if row["status"] == "interrupted" and outcome is None:
                lab.store.update_experiment(exp["id"], error=f"the supervisor died before the run finished (its "
                                                             f"outputs are incomplete): {row['error']}")
        settled.append(exp["id"])
    if kick and (in_flight or lab.store.count_experiments("queued")):
        ensure_supervisor(lab)
    return settled


@contextmanager
def _recovering(lab: Lab, exp_id: int):
    """True for the one process that settles an orphaned run (recovery runs in the supervisor and in
    status calls; only one may score it)."""
    folder = lab.state_dir / "recovering"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{exp_id}.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def rescore(lab: Lab, exp: dict) -> Outcome | None:
    """A workspace scorer's run whose supervisor died: scored already (None: score() reads it), else the
    scorer is run now over what the run wrote. A run that trained is scored whoever died in between;
    when its outputs cannot be scored the error says the supervisor died and what the scorer found."""
    try:
        score(lab, exp["id"])
        return None
    except ScoreError:
        pass
    run_dir = lab.run_dir(exp["id"])
    outcome = Outcome()
    try:
        run_command_scorer(lab, exp, run_dir, run_dir / "code", lambda: False, outcome)
    except SandboxUnavailable as exc:
        outcome.status, outcome.error = "failed", f"sandbox refused: {exc}"
    if outcome.status != "succeeded":
        return Outcome(status="interrupted", error=(
            "the supervisor died after the run started and before its scorer answered; the scorer, run again "
            f"over what the run wrote, could not score it ({outcome.error}): the run did not finish its outputs. "
            "Fix: rerun the experiment"))
    return Outcome(status="succeeded")


# -- SLURM: one job per experiment (the supervisor submits and settles) ---------------------
JOB_EXP = "experiment.json"   # the claimed row the entry point runs (the node never opens the SQLite store)
JOB_OUTCOME = "outcome.json"  # what the entry point saw: the Outcome, the last SandboxResult


def job_time_limit_s(lab: Lab, exp: dict) -> float:
    """The job's --time: what our own limits allow the run (budget + grace per process, the scorer)
    plus the [slurm] margin (task builds, interpreter start, the node's file system)."""
    cfg = lab.config
    budget = float(exp["time_budget_s"] or cfg.time_budget_s)
    total = budget + cfg.processes * cfg.timeout_grace_s
    if cfg.scorer != "eclip":
        total += cfg.scorer_timeout_s + cfg.timeout_grace_s
    return total + cfg.jobs.time_margin_s


def job_spec(lab: Lab, exp: dict) -> JobSpec:
    cfg, s = lab.config, lab.config.jobs
    exp_id = exp["id"]
    folder = jobs_dir(lab, exp_id)
    mem = getattr(s, "mem_gb", None) or (cfg.memory_limit_gb + 1 if cfg.memory_limit_gb else None)
    name = "ar-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in cfg.name)[:40] + f"-{exp_id}"
    return JobSpec(argv=[s.python or sys.executable, "-P", "-m", "tools.job", str(lab.root), str(exp_id)],
                   run_dir=lab.run_dir(exp_id), name=name, env={"PYTHONUNBUFFERED": "1"}, gpus=s.gpus_per_run,
                   cpus=s.cpus_per_run, mem_gb=mem, time_limit_s=job_time_limit_s(lab, exp),
                   log_path=folder / "slurm-%j.log" if cfg.executor == "slurm" else None, cwd=folder)


def submit_job(lab: Lab, exp: dict) -> JobHandle:
    """Hand one claimed run to SLURM: the row for the entry point, sbatch, the handle saved (then the
    row's config names the job). A refusal records the run failed."""
    exp_id = exp["id"]
    folder = jobs_dir(lab, exp_id)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / JOB_EXP).write_text(json.dumps(exp, default=str))
    lab.run_dir(exp_id).mkdir(parents=True, exist_ok=True)
    executor = executor_for(lab)
    handle = executor.submit(job_spec(lab, exp))
    save_handle(lab, exp_id, handle)
    row = lab.store.get_experiment(exp_id)
    config = json.loads(row["config_json"] or "{}")
    config["job"] = {"executor": handle.executor, "job_id": handle.job_id, "log": handle.log_path}
    lab.store.update_experiment(exp_id, only_if_status=("running",), config_json=json.dumps(config, default=str))
    return handle


def settle_job(lab: Lab, exp: dict, handle: JobHandle, status: JobStatus) -> None:
    """Record a finished SLURM job: its entry point's Outcome scored as usual, or, where SLURM ended
    it first, what SLURM says (cancelled, timeout; cancelled outside us or lost: interrupted)."""
    exp_id = exp["id"]
    outcome = read_outcome(lab, exp_id)
    requested = (lab.run_dir(exp_id) / "cancel").exists()
    label = JOB_LABELS.get(handle.executor, handle.executor)
    where = f"{label} job {handle.job_id}"
    said = status.native + (f", {status.reason}" if status.reason else "")
    kept = outcome.result if outcome is not None else None
    if status.state == "cancelled" and requested:
        outcome = Outcome(status="cancelled", error="cancelled on request", result=kept)
    elif status.state == "cancelled":
        outcome = Outcome(status="interrupted", result=kept,
                          error=f"{where} was cancelled outside autoresearch ({said}). Fix: rerun the experiment")
    elif status.state == "timeout" and (outcome is None or outcome.status != "timeout"):
        limit = f"{handle.time_limit_s:.0f} s" if handle.time_limit_s else "its limit"
        outcome = Outcome(status="timeout", result=kept,
                          error=f"{where} reached its {label} time limit ({limit}, [{handle.executor}] "
                                f"time_margin_s included) and was killed ({said})")
    elif outcome is None and status.state == "lost":
        outcome = Outcome(status="interrupted", error=f"{where} was lost ({status.reason or status.native}) and left "
                                                      "no result. Fix: rerun the experiment")
    elif outcome is None:
        tail = executor_named(lab, handle.executor).logs(handle, 20).strip()
        outcome = Outcome(status="failed", error=f"{where} ended {said} (exit code {status.exit_code}) before its "
                                                 "entry point wrote a result" + (f"\n--- job log ---\n{tail}" if tail else ""))
    record_from_run_dir(lab, exp_id, outcome=outcome)


def job_note(lab: Lab, exp_id: int) -> str | None:
    """'SLURM job 12: PENDING (Resources)' for a run handed to SLURM or Ray (a status line); None otherwise."""
    handle = load_handle(lab, exp_id)
    if handle is None or handle.executor not in ("slurm", "ray"):
        return None
    st = executor_named(lab, handle.executor).status(handle)
    return f"{JOB_LABELS[handle.executor]} job {handle.job_id}: {st.native or st.state}" + (f" ({st.reason})" if st.reason else "")


def write_outcome(lab: Lab, exp_id: int, outcome: Outcome) -> None:
    """The entry point's account of its run (the job's folder: the run cannot write it)."""
    result = outcome.result.to_dict() if isinstance(outcome.result, SandboxResult) else None
    data = {"status": outcome.status, "error": outcome.error, "wall_seconds": outcome.wall_seconds,
            "peak_memory_bytes": outcome.peak_memory_bytes, "result": result, "run_seconds": outcome.run_seconds,
            "observed": outcome.observed}
    path = jobs_dir(lab, exp_id) / JOB_OUTCOME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def read_outcome(lab: Lab, exp_id: int) -> Outcome | None:
    path = jobs_dir(lab, exp_id) / JOB_OUTCOME
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(4 * 2**20))
        result = data.get("result")
        if result is not None:
            result = SandboxResult(**{**result, "stdout_path": Path(result["stdout_path"]),
                                      "stderr_path": Path(result["stderr_path"])})
        status = data["status"] if data.get("status") in ("succeeded", "failed", "timeout", "cancelled") else "failed"
        return Outcome(status=status, error=data.get("error"), result=result,
                       wall_seconds=float(data.get("wall_seconds") or 0.0),
                       peak_memory_bytes=int(data.get("peak_memory_bytes") or 0),
                       run_seconds=float(data.get("run_seconds") or 0.0),
                       observed=[e for e in data.get("observed") or [] if isinstance(e, dict)][:guard.MAX_EVENTS_PER_RUN])
    except (OSError, ValueError, TypeError, KeyError):
        return None
