"""The run lifecycle: submit -> queued -> (supervisor) running -> recorded, plus cancel and recovery.

A run never depends on the MCP server that submitted it: `submit` records the experiment as
`queued` and starts a detached supervisor (`python -m tools.supervisor`), which claims queued runs
one slot at a time, runs each in the sandbox, and writes the outcome to the store. The server only
reads the store and the run dir's `events.jsonl`.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from sandbox import SandboxUnavailable

from tools import datacache, guard, hpo
from tools.errors import ToolError
from tools.lab import Lab
from tools.launch import launch_sandboxed, sandbox_policy, wait_sandboxed
from tools.params import bake
from tools.provenance import main_file, provenance
from tools.rundir import (log_tail, metric_rows, number, read_cache_status, read_metrics, read_steps, text_facts,
                          write_cache_status)
from tools.verdict import verdict_fields
from tools.workspace import BEST_REF


# -- submission ----------------------------------------------------------------------------
def submit(lab: Lab, *, description: str, hypothesis: str | None = None, time_budget_s: float | None = None,
           params: dict | None = None, commit: str | None = None, rerun_of: int | None = None,
           rerun_kind: str | None = None) -> int:
    """Snapshot the editable files with `params` written into their constants, queue the experiment,
    make sure a supervisor will run it. With `commit`, run that existing snapshot instead (with
    `params`, a new snapshot of it with those values: seed reruns). A bad param is refused before
    any snapshot or row exists."""
    cfg = lab.config
    budget = float(time_budget_s or cfg.time_budget_s)
    if budget > cfg.max_time_budget_s:
        raise ToolError(f"time_budget_s={budget:g} is above max_time_budget_s={cfg.max_time_budget_s:g} "
                        "set in autoresearch.toml. Fix: ask for less, or have a human raise the maximum.")
    params = dict(params or {})
    if commit is not None and lab.workspace.ref(commit) != commit:
        raise ToolError(f"commit={commit!r} is not a snapshot in this workspace. Fix: rerun an experiment by its id.")
    contents = _baked(lab, params, commit)
    best = lab.store.best_experiment()
    config = {"command": cfg.command, "time_budget_s": budget, "workspace": cfg.model_dump(mode="json")}
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
        parent_id=best["id"] if best else None, config_json=json.dumps(config, default=str),
        params_json=json.dumps(params), snapshot_commit=commit, run_dir_of=lambda i: str(lab.run_dir(i)), **extra)
    lab.workspace.set_experiment_ref(exp_id, commit)
    ensure_supervisor(lab)
    return exp_id


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
    """Start a detached supervisor; it exits at once when every slot is already busy."""
    log = open(lab.state_dir / "supervisor.log", "ab")
    try:
        # -P and a cwd outside the workspace: a tools/ folder an agent left in the workspace must not
        # shadow our package in this unsandboxed process.
        subprocess.Popen([sys.executable, "-P", "-m", "tools.supervisor", str(lab.root)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True, close_fds=True, cwd=str(lab.state_dir))
    finally:
        log.close()


# -- running one experiment (inside the supervisor) ----------------------------------------
def run_claimed(lab: Lab, exp: dict, should_cancel, slot: int = 0) -> None:
    """Run one claimed experiment to its end and record it. `should_cancel()` is polled."""
    exp_id = exp["id"]
    run_dir = lab.run_dir(exp_id)
    code_dir = run_dir / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    try:
        lab.workspace.set_experiment_ref(exp_id, exp["snapshot_commit"])  # idempotent; see submit
        lab.workspace.export_snapshot(exp["snapshot_commit"], code_dir)
        _warm_data_cache(lab, code_dir, run_dir, should_cancel)
        try:
            proc = launch_sandboxed(lab, sandbox_policy(lab, exp, run_dir, code_dir, slot))
        except SandboxUnavailable as exc:
            record(lab, exp_id, status="failed", error=f"sandbox refused: {exc}")
            return
        lab.store.update_experiment(exp_id, sandbox_backend=proc.backend)
        record_from_run_dir(lab, exp_id, result=wait_sandboxed(proc, should_cancel))
    except Exception as exc:  # never leave a claimed run in 'running'
        record(lab, exp_id, status="failed", error=f"supervisor error: {type(exc).__name__}: {exc}")
        raise


def _warm_data_cache(lab: Lab, code_dir: Path, run_dir: Path, should_cancel) -> None:
    """Build the tensor cache this snapshot asks for (tools/datacache.py); never fails the run."""
    try:
        line = datacache.warm(lab, code_dir, run_dir / "cache.log", should_cancel,
                              on_build=lambda text: write_cache_status(run_dir, text))  # experiment_status shows it
    except Exception as exc:  # a cache is an optimisation: the run loads its data uncached
        line = f"not built ({type(exc).__name__}: {exc}); the run loads uncached"
    write_cache_status(run_dir, line)


# -- recording -----------------------------------------------------------------------------
def record_from_run_dir(lab: Lab, exp_id: int, *, result=None, recovered: bool = False) -> None:
    """Turn a finished run dir (and the sandbox's result, when we have it) into the store's record."""
    exp = lab.store.get_experiment(exp_id)
    run_dir = lab.run_dir(exp_id)
    metrics, problem = read_metrics(run_dir)
    status, error = "succeeded", None
    if result is not None:
        if result.status == "timeout":
            status, error = "timeout", f"killed after {result.wall_seconds:.0f} s (budget {exp['time_budget_s']:g} s + grace)"
        elif result.status == "cancelled":
            status, error = "cancelled", "cancelled on request"
        elif result.status == "memory":
            status, error = "failed", "killed: over the memory limit"
        elif result.status == "error" or result.returncode != 0:
            status, error = "failed", f"exit code {result.returncode}"
    if status == "succeeded" and metrics is None:
        status, error = ("interrupted" if recovered else "failed"), problem
    objective = None
    if status == "succeeded":
        objective = number(metrics.get(lab.config.objective))
        if objective is None:
            status, error = "failed", (f"metrics.json has no numeric '{lab.config.objective}' "
                                       "(the objective named in autoresearch.toml)")
    if recovered and status == "succeeded":
        error = "recorded from its run dir after the supervisor was gone"
    if error and status != "succeeded":
        tail = log_tail(run_dir)
        error = f"{error}\n--- log tail ---\n{tail}" if tail else error
    denied = guard.denied_accesses(lab, run_dir)
    if denied:
        error = guard.describe(denied) + ("\n" + error if error else "")
    # the denied accesses land in the same transaction as the outcome: a reader that sees the
    # finished row also sees why it failed
    record(lab, exp_id, status=status, error=error, metrics=metrics if status == "succeeded" else None,
           objective=objective, result=result, denied=denied)


def record(lab: Lab, exp_id: int, *, status: str, error: str | None = None, metrics: dict | None = None,
           objective: float | None = None, result=None, denied: list[dict] | None = None) -> None:
    """Write the outcome, the verdict, the denied accesses and the best ref in one transaction
    (concurrent runs serialise)."""
    store, cfg = lab.store, lab.config
    exp = store.get_experiment(exp_id)
    run_dir = lab.run_dir(exp_id)
    steps = read_steps(run_dir)
    now = time.time()
    fields: dict = {"status": status, "error": error, "finished_at": now,
                    "duration_s": (result.wall_seconds if result is not None else
                                   (now - exp["started_at"] if exp["started_at"] else None))}
    if result is not None:
        fields["returncode"] = result.returncode
        fields["sandbox_backend"] = result.backend
        if result.peak_memory_bytes:
            fields["peak_memory_gb"] = round(result.peak_memory_bytes / 2**30, 4)
    config = json.loads(exp["config_json"] or "{}")
    if metrics is not None:
        std = number(metrics.get("objective_std"))
        if std is None and isinstance(metrics.get("objective_name"), str):
            std = number(metrics.get(metrics["objective_name"][:100] + "_std"))
        fields["objective"], fields["objective_std"] = objective, std
        if (mem := number(metrics.get("peak_memory_gb"))) is not None:
            fields["peak_memory_gb"] = mem
        config["run"] = text_facts(metrics)
    if (cache_status := read_cache_status(run_dir)) is not None:
        config["data_cache"] = cache_status
    if result is not None:
        config["sandbox"] = {"backend": result.backend, "network": result.network,
                             "warnings": list(result.warnings or [])[:8], "isolation": result.isolation,
                             "limits": result.limits}
    fields["config_json"] = json.dumps(config, default=str)
    with store.transaction() as conn:
        if metrics is not None:  # noise-aware verdict; seed reruns are judged as a group (tools/verdict.py)
            fields.update(verdict_fields(store, conn, exp, objective, fields.get("objective_std"), cfg))
            store.replace_metrics(exp_id, metric_rows(metrics), conn)
        store.replace_steps(exp_id, steps, conn)
        updated = store.update_experiment(exp_id, conn=conn, only_if_status=("running", "queued"),
                                          **fields)
        if updated and denied:
            store.record_integrity_events(conn, exp_id, denied)
        if updated and fields.get("kept") and exp["snapshot_commit"]:
            # under the write lock: refs move in the order the verdicts were given, and a reader
            # that sees the kept row also sees the ref
            try:
                lab.workspace.advance_best(lab.code_snapshot(exp))
            except Exception as exc:  # the ref is a convenience (revert('best') reads the store)
                print(f"autoresearch: could not advance {BEST_REF}: {exc}", file=sys.stderr)
    _prune_checkpoints(lab, exp_id, kept=bool(fields.get("kept")))
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
    (run_dir / "cancel").touch()
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
    """Settle runs whose supervisor died: record them from the run dir, or mark them interrupted.
    With kick, start a supervisor for runs still queued (a supervisor itself passes kick=False)."""
    settled = []
    for exp in lab.store.experiments_with_status("running"):
        if supervisor_alive(lab, exp["supervisor_pid"]):
            continue
        record_from_run_dir(lab, exp["id"], recovered=True)
        row = lab.store.get_experiment(exp["id"])
        if row["status"] == "interrupted":
            lab.store.update_experiment(exp["id"], error=f"the supervisor died before the run finished: {row['error']}")
        settled.append(exp["id"])
    if kick and lab.store.count_experiments("queued"):
        ensure_supervisor(lab)
    return settled
