"""The run lifecycle: submit -> queued -> (supervisor) running -> recorded, plus cancel and recovery.

A run never depends on the MCP server that submitted it: `submit` records the experiment as
`queued` and starts a detached supervisor (`python -m tools.supervisor`), which claims queued runs
one slot at a time, runs each in the sandbox, and writes the outcome to the store. The server only
reads the store and the run dir's `events.jsonl`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools.config import gpu_slots
from tools.errors import ToolError
from tools.lab import Lab, harness_dir
from tools.workspace import BEST_REF

LOG_TAIL_LINES = 40
MAX_STORED_STEPS = 2000


# -- submission ----------------------------------------------------------------------------
def submit(lab: Lab, *, description: str, hypothesis: str | None = None, time_budget_s: float | None = None,
           params: dict | None = None, seed: int | None = None, commit: str | None = None,
           rerun_of: int | None = None, rerun_kind: str | None = None) -> int:
    """Snapshot the editable files, queue the experiment, make sure a supervisor will run it.
    With `commit`, run that existing snapshot instead (seed reruns, reproductions: rerun_of/rerun_kind)."""
    from tools.provenance import provenance
    cfg = lab.config
    budget = float(time_budget_s or cfg.time_budget_s)
    if budget > cfg.max_time_budget_s:
        raise ToolError(f"time_budget_s={budget:g} is above max_time_budget_s={cfg.max_time_budget_s:g} "
                        "set in autoresearch.toml. Fix: ask for less, or have a human raise the maximum.")
    params = dict(params or {})
    if seed is not None:
        params["SEED"] = seed
    best = lab.store.best_experiment(cfg.direction)
    config = {"command": cfg.command, "time_budget_s": budget, "params": params,
              "workspace": cfg.model_dump(mode="json")}
    # Commit first, then record the row already 'queued' with its commit: a submitter killed at
    # any point leaves either nothing or a complete queued run, never a half-made one.
    if commit is None:
        commit = lab.workspace.snapshot(f"experiment: {description}\n\n{hypothesis or ''}".strip(),
                                        contents=_baked_params(lab, params))
    elif lab.workspace.ref(commit) != commit:
        raise ToolError(f"commit={commit!r} is not a snapshot in this workspace. Fix: rerun an experiment by its id.")
    config["provenance"] = provenance(lab, commit, params)
    extra = {"rerun_of": rerun_of, "rerun_kind": rerun_kind} if rerun_of is not None else {}
    exp_id = lab.store.insert_experiment(
        status="queued", description=description, hypothesis=hypothesis, time_budget_s=budget,
        parent_id=best["id"] if best else None, config_json=json.dumps(config, default=str),
        params_json=json.dumps(params), snapshot_commit=commit, run_dir_of=lambda i: str(lab.run_dir(i)), **extra)
    lab.workspace.set_experiment_ref(exp_id, commit)
    ensure_supervisor(lab)
    return exp_id


def _baked_params(lab: Lab, params: dict) -> dict[str, bytes]:
    """The experiment script with `params` written into its constants (AR_PARAMS still carries them)."""
    from tools.workspace import apply_constants
    cfg = lab.config
    script = next((a for a in cfg.command[1:] if a in cfg.editable), None)
    if not params or script is None or not (lab.root / script).is_file():
        return {}
    text, _ = apply_constants((lab.root / script).read_text(), params)
    return {script: text.encode()}


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


# -- reading the run dir (written by untrusted code: never follow its symlinks) -------------
def open_run_file(path: Path):
    """Open a file of a run dir for reading without following a symlink the child planted there
    (it could point at a host file this unsandboxed process may read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


# -- reading progress ----------------------------------------------------------------------
@dataclass
class Progress:
    step: int | None = None
    loss: float | None = None
    elapsed: float | None = None


def latest_progress(run_dir: Path) -> Progress:
    """The last line of events.jsonl, read from the file's end (cheap on long runs)."""
    path = Path(run_dir) / "events.jsonl"
    try:
        with open_run_file(path) as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            lines = f.read().splitlines()
    except OSError:
        return Progress()
    for line in reversed(lines):
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and "step" in ev:
            return Progress(step=_int(ev.get("step")), loss=_num(ev.get("loss")), elapsed=_num(ev.get("elapsed")))
    return Progress()


def log_tail(run_dir: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of stderr (tracebacks live there), else of stdout."""
    for name in ("stderr.log", "stdout.log"):
        path = Path(run_dir) / name
        try:
            with open_run_file(path) as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        if text.strip():
            return "\n".join(text.rstrip().splitlines()[-lines:])
    return ""


# -- running one experiment (inside the supervisor) ----------------------------------------
def sandbox_policy(lab: Lab, exp: dict, run_dir: Path, code_dir: Path, slot: int = 0):
    """The SandboxPolicy of one experiment: the single place that decides what a run may touch."""
    from sandbox import Limits, SandboxPolicy

    cfg = lab.config
    budget = float(exp["time_budget_s"] or cfg.time_budget_s)
    env = {"AR_RUN_DIR": str(run_dir), "AR_TIME_BUDGET_S": f"{budget:g}", "AR_EXPERIMENT_ID": str(exp["id"]),
           "AR_EVAL_SPLIT": "val", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    read_only = [code_dir]
    data = lab.data_dir()
    if data is not None:
        env["AR_DATA_DIR"] = str(data)
        read_only.append(data)
    harness = harness_dir()
    if harness is not None:
        read_only.append(harness)
    read_only += [lab.resolve(p) for p in cfg.read_only]
    from tools.datacache import cache_dir
    cache = cache_dir(lab)
    if data is not None and cache.is_dir():  # built by trusted code; read-only for runs
        env["AR_CACHE_DIR"] = str(cache)
        read_only.append(cache)
    params = json.loads(exp["params_json"] or "{}")
    if params:
        (run_dir / "params.json").write_text(json.dumps(params, indent=2))
        env["AR_PARAMS"] = str(run_dir / "params.json")
    hidden = [lab.root / ".git", lab.store.path, Path(str(lab.store.path) + "-wal"), Path(str(lab.store.path) + "-shm")]
    from tools.integrity import hidden_for_agent_runs
    hidden += hidden_for_agent_runs(lab)  # the held-out split (its heldout/ folder) and the test runs
    min_backend = {"auto": "none", "none": "none", "landlock": "landlock", "bwrap": "bwrap", "strict": "bwrap"}[cfg.sandbox]
    limits = Limits(wall_seconds=budget + cfg.timeout_grace_s, max_processes=cfg.max_processes,
                    memory_bytes=int(cfg.memory_limit_gb * 2**30) if cfg.memory_limit_gb else None)
    gpus = gpu_slots(cfg)
    gpu = False
    if gpus:  # each slot owns one GPU: its device node only, and CUDA_VISIBLE_DEVICES to match
        gpu = [gpus[slot % len(gpus)]]
        env["CUDA_VISIBLE_DEVICES"] = str(gpu[0])
    return SandboxPolicy(argv=lab.command_argv(), cwd=code_dir, run_dir=run_dir, read_only=read_only,
                         hidden=[h for h in hidden if h.exists()], env=env, network=cfg.network, limits=limits,
                         gpu=gpu, min_backend=min_backend)


def launch_sandboxed(lab: Lab, policy):
    """Start a policy with the backend autoresearch.toml asks for (a name forces that backend)."""
    from sandbox import launch
    forced = lab.config.sandbox if lab.config.sandbox in ("bwrap", "landlock", "none") else None
    return launch(policy, backend=forced)


def wait_sandboxed(proc, should_cancel):
    """Wait for a sandboxed process, cancelling its whole tree once `should_cancel()` says so."""
    cancelled = False
    while (result := proc.poll()) is None:
        if not cancelled and should_cancel():
            cancelled = True
            proc.cancel()
        time.sleep(0.2)
    return result


def run_claimed(lab: Lab, exp: dict, should_cancel, slot: int = 0) -> None:
    """Run one claimed experiment to its end and record it. `should_cancel()` is polled."""
    from sandbox import SandboxUnavailable

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


CACHE_STATUS = "cache.status"
MAX_CACHE_STATUS = 500


def _warm_data_cache(lab: Lab, code_dir: Path, run_dir: Path, should_cancel) -> None:
    """Build the tensor cache this snapshot asks for (tools/datacache.py); never fails the run."""
    from tools import datacache
    status = run_dir / CACHE_STATUS
    try:
        line = datacache.warm(lab, code_dir, run_dir / "cache.log", should_cancel,
                              on_build=lambda text: status.write_text(text))  # experiment_status shows it
    except Exception as exc:  # a cache is an optimisation: the run loads its data uncached
        line = f"not built ({type(exc).__name__}: {exc}); the run loads uncached"
    status.write_text(line[:MAX_CACHE_STATUS])


def read_cache_status(run_dir: Path) -> str | None:
    """The line _warm_data_cache left in the run dir (the child can write there: bounded, no symlinks)."""
    try:
        with open_run_file(Path(run_dir) / CACHE_STATUS) as f:
            return f.read(MAX_CACHE_STATUS).decode(errors="replace")
    except OSError:
        return None


# -- recording -----------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> tuple[dict | None, str | None]:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None, "metrics.json was not written"
    try:
        with open_run_file(path) as f:
            data = json.loads(f.read(8 * 2**20))
    except (OSError, ValueError) as exc:
        return None, f"metrics.json is not valid JSON: {exc}"
    if not isinstance(data, dict):
        return None, "metrics.json is not a JSON object"
    return data, None


def metric_rows(metrics: dict) -> list[tuple[int | None, str, float]]:
    rows: list[tuple[int | None, str, float]] = []
    for name, value in metrics.items():
        if (v := _num(value)) is not None:
            rows.append((None, str(name)[:100], v))
    folds = metrics.get("folds")
    if isinstance(folds, list):
        for i, fold in enumerate(folds[:100]):
            if isinstance(fold, dict):
                rows += [(i, str(k)[:100], v) for k, val in fold.items() if (v := _num(val)) is not None]
    return rows[:5000]


def read_steps(run_dir: Path) -> list[tuple[int, float | None, float | None]]:
    """Per-step loss from events.jsonl, evenly thinned to a bounded count."""
    rows = []
    try:
        with open_run_file(Path(run_dir) / "events.jsonl") as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict) and (step := _int(ev.get("step"))) is not None:
                    rows.append((step, _num(ev.get("t")), _num(ev.get("loss"))))
    except OSError:
        return []
    if len(rows) > MAX_STORED_STEPS:
        stride = math.ceil(len(rows) / MAX_STORED_STEPS)
        rows = rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])
    return rows


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
        objective = _num(metrics.get(lab.config.objective))
        if objective is None:
            status, error = "failed", (f"metrics.json has no numeric '{lab.config.objective}' "
                                       "(the objective named in autoresearch.toml)")
    if recovered and status == "succeeded":
        error = "recorded from its run dir after the supervisor was gone"
    if error and status != "succeeded":
        tail = log_tail(run_dir)
        error = f"{error}\n--- log tail ---\n{tail}" if tail else error
    from tools import integrity
    denied = integrity.denied_accesses(lab, run_dir)
    if denied:
        error = integrity.describe(denied) + ("\n" + error if error else "")
    # the denied accesses land in the same transaction as the outcome: a reader that sees the
    # finished row also sees why it failed
    record(lab, exp_id, status=status, error=error, metrics=metrics if status == "succeeded" else None,
           objective=objective, result=result, denied=denied)


def record(lab: Lab, exp_id: int, *, status: str, error: str | None = None, metrics: dict | None = None,
           objective: float | None = None, result=None, denied: list[dict] | None = None) -> None:
    """Write the outcome, the verdict, the denied accesses and the best ref in one transaction
    (concurrent runs serialise)."""
    from tools.noise import verdict_fields

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
        std = _num(metrics.get("objective_std"))
        if std is None and isinstance(metrics.get("objective_name"), str):
            std = _num(metrics.get(metrics["objective_name"] + "_std"))
        fields["objective"], fields["objective_std"] = objective, std
        if (mem := _num(metrics.get("peak_memory_gb"))) is not None:
            fields["peak_memory_gb"] = mem
        config["run"] = {k: v for k, v in metrics.items() if _num(v) is None and k != "folds"}
    if (cache_status := read_cache_status(run_dir)) is not None:
        config["data_cache"] = cache_status
    if result is not None:
        config["sandbox"] = {"backend": result.backend, "network": result.network,
                             "warnings": list(result.warnings or [])[:8], "isolation": result.isolation,
                             "limits": result.limits}
    fields["config_json"] = json.dumps(config, default=str)
    with store.transaction() as conn:
        if metrics is not None:  # noise-aware verdict; seed reruns are judged as a group (tools/noise.py)
            fields.update(verdict_fields(conn, exp, objective, fields.get("objective_std"), cfg))
            store.replace_metrics(exp_id, metric_rows(metrics), conn)
        store.replace_steps(exp_id, steps, conn)
        updated = store.update_experiment(exp_id, conn=conn, only_if_status=("running", "queued"),
                                          **fields)
        if updated and denied:
            from tools import integrity
            integrity.record_events(conn, exp_id, denied)
        if updated and fields.get("kept") and exp["snapshot_commit"]:
            # under the write lock: refs move in the order the verdicts were given, and a reader
            # that sees the kept row also sees the ref
            try:
                lab.workspace.advance_best(exp["snapshot_commit"])
            except Exception as exc:  # the ref is a convenience (revert('best') reads the store)
                print(f"autoresearch: could not advance {BEST_REF}: {exc}", file=sys.stderr)
    _prune_checkpoints(lab, exp_id, kept=bool(fields.get("kept")))
    if updated:
        from tools.hpo import after_run
        after_run(lab, exp_id)  # tell the Optuna study (never raises)


def _prune_checkpoints(lab: Lab, exp_id: int, kept: bool) -> None:
    policy = lab.config.keep_checkpoints
    if policy == "all" or (policy == "kept" and kept):
        return
    for ckpt in lab.run_dir(exp_id).glob("*.pt"):
        ckpt.unlink(missing_ok=True)


# -- cancel and recovery -------------------------------------------------------------------
def request_cancel(lab: Lab, exp_id: int) -> str:
    """Cancel a queued or running experiment; returns the status it ends in."""
    exp = lab.experiment(exp_id)
    if exp["status"] == "queued":
        if lab.store.update_experiment(exp_id, only_if_status=("queued",), status="cancelled",
                                       finished_at=time.time(), error="cancelled before it started"):
            from tools.hpo import after_run
            after_run(lab, exp_id)  # a suggested trial is told FAIL
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


# -- small helpers -------------------------------------------------------------------------
def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None
