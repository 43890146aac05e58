"""The research tools as plain Python: run, read, show, revert. `server/` is a thin face over these."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Callable

from tools import runs
from tools.errors import ToolError
from tools.lab import Lab
from tools.rundir import latest_progress, log_tail, read_cache_status, thin
from tools.store import TERMINAL
from tools.workspace import SAVED_REF
from tools.verdict import compute_note, noise_unknown, stop_note
from tools.schemas import (Description, ExperimentDetail, ExperimentId, Hypothesis, Limit, NoteOut, NotesPage,
                           NoteText, Params, ResultRow, ResultsTable, RevertResult, RevertTarget, RunSummary,
                           Status, Tag, Tags, TimeBudget, sig, validate)

ProgressFn = Callable[[RunSummary], None]


MAX_CURVE_POINTS = 50


# -- run -----------------------------------------------------------------------------------
def submit_experiment(lab: Lab, description: str, hypothesis: str | None = None,
                      time_budget_s: float | None = None, params: dict | None = None) -> int:
    description = validate("description", Description, description)
    hypothesis = validate("hypothesis", Hypothesis, hypothesis)
    time_budget_s = validate("time_budget_s", TimeBudget, time_budget_s)
    params = validate("params", Params, params)
    return runs.submit(lab, description=description.strip(), hypothesis=hypothesis, time_budget_s=time_budget_s,
                       params=params)


def run_experiment(lab: Lab, description: str, hypothesis: str | None = None, time_budget_s: float | None = None,
                   params: dict | None = None, on_progress: ProgressFn | None = None,
                   poll_s: float = 0.5) -> RunSummary:
    """Submit and wait for the end, calling on_progress with the latest step/loss."""
    exp_id = submit_experiment(lab, description, hypothesis, time_budget_s, params)
    return wait_for(lab, exp_id, on_progress=on_progress, poll_s=poll_s)


def wait_for(lab: Lab, exp_id: int, *, timeout_s: float | None = None, on_progress: ProgressFn | None = None,
             poll_s: float = 0.5) -> RunSummary:
    t0 = time.monotonic()
    deadline = None if timeout_s is None else t0 + timeout_s
    while True:
        s = summary(lab, exp_id)
        if s.status in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return s
        if on_progress:
            on_progress(s)
        time.sleep(0.05 if time.monotonic() - t0 < 2.0 else poll_s)  # short runs end soon: look often first


def summary(lab: Lab, exp_id: int) -> RunSummary:
    exp = _get(lab, exp_id)
    if exp["status"] == "running" and not runs.supervisor_alive(lab, exp["supervisor_pid"]):
        runs.recover(lab)  # its supervisor is gone: settle it now rather than leave it 'running'
        exp = _get(lab, exp_id)
    out = RunSummary(id=exp["id"], status=exp["status"], verdict=exp["verdict"], objective=sig(exp["objective"], 6),
                     objective_std=sig(exp["objective_std"]), delta_vs_best=sig(exp["delta"]),
                     best_id=exp["best_id_at_verdict"], kept=bool(exp["kept"]), duration_s=_round(exp["duration_s"]),
                     peak_memory_gb=exp["peak_memory_gb"], sandbox=exp["sandbox_backend"],
                     verdict_reason=exp["verdict_reason"], stopped=stopped_label(exp))
    if exp["status"] == "running" and exp["run_dir"]:
        p = latest_progress(lab.run_dir(exp_id))
        out.step, out.loss = p.step, sig(p.loss)
        out.duration_s = _round(p.elapsed if p.elapsed is not None else time.time() - (exp["started_at"] or time.time()))
    if exp["status"] in ("failed", "timeout", "interrupted", "cancelled"):
        out.error = exp["error"]
    if warnings := sandbox_warnings(exp):
        out.warnings = warnings  # the MCP face shows each one once per session (server/calls.py)
    out.next = _next_hint(exp)
    if exp["status"] == "running" and out.step is None:
        phase = _cache_phase(lab.run_dir(exp_id))
        if phase:
            out.next = f"{phase} (not charged to its budget); {out.next}"
        elif lab.config.executor != "local" and (note := runs.job_note(lab, exp_id)):
            out.next = f"{note}; {out.next}"
            return out
    job = json.loads(exp["config_json"] or "{}").get("job")
    if isinstance(job, dict) and job.get("job_id"):  # the executor and job id of a run handed to a cluster
        where = f"{job.get('executor')} job {job['job_id']}"
        out.next = f"{where}; {out.next}" if out.next else where
    return out


def sandbox_warnings(exp: dict) -> list[str]:
    """The backend's warnings for a run (e.g. NOT ISOLATED) and the isolation gaps it leaves open."""
    sandbox_info = json.loads(exp["config_json"] or "{}").get("sandbox") or {}
    warnings = [str(w)[:300] for w in sandbox_info.get("warnings") or []]
    return warnings + [f"isolation gap: {g}"[:300] for g in (sandbox_info.get("gaps") or [])[:6]]


def stopped_label(exp: dict) -> str | None:
    """'stopped by time at step 12/300 (claimed by the run)' for a run that did not finish its step budget."""
    note = stop_note(exp.get("steps"), exp.get("max_steps"), exp.get("stopped_by")) if exp.get("stopped_by") else None
    return f"{note} (claimed by the run)" if note else None


def role_label(exp: dict) -> str | None:
    """A rerun row's own role ('seed rerun of #3'): never a verdict it did not get."""
    if exp.get("rerun_of") is None:
        return None
    return f"{'reproduction' if exp.get('rerun_kind') == 'reproduce' else 'seed rerun'} of #{exp['rerun_of']}"


def compute_label(exp: dict) -> str | None:
    """The compute a finished run used: steps as it claimed them, seconds as the harness measured them."""
    if exp.get("status") not in TERMINAL or exp.get("status") in ("cancelled",) or exp.get("steps") is None \
            and exp.get("duration_s") is None:
        return None
    harness = (json.loads(exp["harness"] or "{}") if "harness" in exp
               else json.loads(exp.get("config_json") or "{}").get("harness")) or {}
    return compute_note(exp.get("steps"), exp.get("max_steps"), harness.get("run_seconds") or exp.get("duration_s"))


def _cache_phase(run_dir) -> str | None:
    """'building the tasks ...' while the supervisor prepares the run's data (tools/datacache.py)."""
    text = read_cache_status(run_dir)
    return text if text and text.startswith("building the tasks") else None


def _next_hint(exp: dict) -> str | None:
    status, verdict = exp["status"], exp["verdict"]
    if status in ("queued", "running"):
        return f"poll experiment_status({exp['id']}) or cancel_experiment({exp['id']})"
    if status != "succeeded":
        return "read the error, fix train.py (or revert('best')), then run again"
    if exp.get("rerun_of") is not None and verdict != "incomparable":
        return _rerun_hint(exp)
    if verdict == "inconclusive" and noise_unknown(exp["verdict_reason"]):
        return (f"better, but no noise is measured (one pool, no seed reruns): rerun_experiment({exp['id']}, "
                "seeds=2) and rerun the best the same way, or revert('best')")
    return {
        "baseline": "baseline recorded; write_note, then try one change at a time",
        "improved": "kept as the new best; write_note with what changed and why it helped",
        "not_improved": "revert('best') to undo the change, then write_note",
        "inconclusive": "within the noise: rerun with other seeds before keeping, or revert('best')",
        "improved?": "provisional: its confirmation seed reruns are queued; it becomes the best only if they confirm "
                     "it (rerun_experiment shows the group). Meanwhile revert('best') or keep working on it",
        "incomparable": "not compared: read verdict_reason (budget, integrity event or a claim the harness contradicts)",
    }.get(verdict or "")


def _rerun_hint(exp: dict) -> str:
    """A rerun ran a recorded snapshot, never the working tree: its advice is about its group, not a revert."""
    root, verdict = exp["rerun_of"], exp["verdict"]
    if exp.get("rerun_kind") == "reproduce":
        return f"reproduction of #{root}: compare_experiments(a={root}, b={exp['id']}) shows what differs"
    if verdict is None:
        return f"seed rerun of #{root}: the group's noise estimate is refined; continue the loop"
    return {
        "improved": f"the seed group of #{root} beats the best: this row is kept as the best; write_note",
        "inconclusive": f"the seed group of #{root} is within the noise: rerun_experiment({root}) adds seeds, "
                        "or move on",
        "not_improved": f"the seed group of #{root} does not beat the best; write_note and move on (a rerun leaves "
                        "train.py as it was)",
    }.get(verdict, f"seed rerun of #{root}: rerun_experiment({root}) shows the group")


# -- read ----------------------------------------------------------------------------------
def read_results(lab: Lab, limit: int = 20, status: str | None = None, order_by: str = "created",
                 include_metrics: bool = False) -> ResultsTable:
    limit = validate("limit", Limit, limit)
    if status is not None:
        status = validate("status", Status, status)
    if order_by not in ("objective", "created"):
        raise ToolError(f"invalid order_by={order_by!r}. Fix: use 'objective' or 'created'.")
    cfg = lab.config
    rows = lab.store.list_experiments(limit=limit, status=status, order_by=order_by, direction=cfg.direction)
    out = []
    for r in rows:
        metrics = None
        if include_metrics:
            metrics = {m["name"]: sig(m["value"], 6) for m in lab.store.metrics(r["id"], aggregate_only=True)}
            metrics = dict(list(metrics.items())[:30])
        out.append(ResultRow(id=r["id"], status=r["status"], verdict=r["verdict"], objective=sig(r["objective"], 6),
                             objective_std=sig(r["objective_std"]), delta=sig(r["delta"]), kept=bool(r["kept"]),
                             duration_s=_round(r["duration_s"]), description=_clip(r["description"], 120),
                             stopped=stopped_label(r), role=role_label(r), compute=compute_label(r),
                             metrics=metrics))
    best = lab.store.best_experiment()
    return ResultsTable(total=lab.store.count_experiments(status), best_id=best["id"] if best else None,
                        objective=cfg.objective, direction=cfg.direction, rows=out)


SHOW_DETAILS = ("summary", "full")


def _config_summary(config: dict) -> dict:
    """What decides a run, not how the harness ran it: the command, budget, constants and seed, the
    compute; the sandbox record, interpreter and package versions are behind detail='full'."""
    prov = config.get("provenance") or {}
    out = {k: config[k] for k in ("command", "time_budget_s", "claimed_by_the_run") if k in config}
    out["constants"] = prov.get("constants")
    if (h := config.get("harness")) is not None:
        out["run_seconds"] = h.get("run_seconds")
    if (sb := config.get("sandbox")) is not None:
        out["sandbox"] = sb.get("backend")
    return {k: v for k, v in out.items() if v is not None}


def show_experiment(lab: Lab, experiment_id: int, detail: str = "summary") -> ExperimentDetail:
    exp = _get(lab, validate("experiment_id", ExperimentId, experiment_id))
    if detail not in SHOW_DETAILS:
        raise ToolError(f"invalid detail={detail!r}. Fix: use 'summary' (the default) or 'full' (the whole config: "
                        "the sandbox record, environment and provenance).")
    full = detail == "full"
    metrics, folds = {}, {}
    for m in lab.store.metrics(exp["id"]):
        value = m["value"] if full else sig(m["value"], 6)
        if m["fold"] is None:
            metrics[m["name"]] = value
        else:
            folds.setdefault(m["fold"], {})[m["name"]] = value
    # the first and last step always; a NaN/inf loss (stored as None) stays a gap, never a 0
    curve = [[s["step"], sig(s["loss"])] for s in thin(lab.store.steps(exp["id"]), MAX_CURVE_POINTS)]
    diff = "(no snapshot)"
    if exp["snapshot_commit"]:
        parent = lab.store.get_experiment(exp["parent_id"]) if exp["parent_id"] else None
        base = parent["snapshot_commit"] if parent else None
        diff = lab.workspace.diff(base, exp["snapshot_commit"], max_chars=8000)
    config = json.loads(exp["config_json"] or "{}")
    config.pop("workspace", None)  # the toml is on disk; keep the answer small
    if not full:
        config = _config_summary(config)
    return ExperimentDetail(
        id=exp["id"], status=exp["status"], verdict=exp["verdict"], verdict_reason=exp["verdict_reason"],
        description=exp["description"], hypothesis=exp["hypothesis"], snapshot_commit=exp["snapshot_commit"],
        parent_id=exp["parent_id"], objective=exp["objective"] if full else sig(exp["objective"], 6),
        objective_std=exp["objective_std"] if full else sig(exp["objective_std"]),
        delta=exp["delta"] if full else sig(exp["delta"]), kept=bool(exp["kept"]), duration_s=_round(exp["duration_s"]),
        peak_memory_gb=exp["peak_memory_gb"], sandbox=exp["sandbox_backend"], config=config, metrics=metrics,
        fold_metrics=[folds[k] for k in sorted(folds)], loss_curve=curve, diff=diff,
        log_tail=log_tail(lab.run_dir(exp["id"])) if exp["run_dir"] else "", stopped=stopped_label(exp),
        error=exp["error"])


# -- revert --------------------------------------------------------------------------------
def revert(lab: Lab, target: int | str) -> RevertResult:
    """Restore the editable files to a snapshot. Edits not in any run's snapshot are saved first
    (revert('saved') brings them back), so a revert never loses work."""
    target = validate("target", RevertTarget, target)
    latest = lab.store.list_experiments(limit=1, status=None, order_by="created", direction=lab.config.direction)
    if target == "saved":
        commit = lab.workspace.ref(SAVED_REF)
        if commit is None or not latest:
            raise ToolError("target='saved' but no revert has saved edits yet. Fix: pass an experiment id or 'best'.")
        exp = latest[0]
    elif target == "best":
        exp = lab.store.best_experiment()
        if exp is None:
            raise ToolError("target='best' but no experiment has been kept yet. Fix: run a baseline first, "
                            "or pass an experiment id.")
        commit = lab.code_snapshot(exp)
    else:
        exp = _get(lab, target)
        if not exp["snapshot_commit"]:
            raise ToolError(f"experiment {target} has no snapshot (status {exp['status']}). Fix: pick another id.")
        commit = exp["snapshot_commit"]
    saved = None
    ws = lab.workspace
    if not ws.matches(commit) and not (latest and ws.matches(latest[0]["snapshot_commit"])) \
            and not ws.matches(ws.ref(SAVED_REF)):
        saved = ws.save_edits()
    changed = ws.restore(commit)
    lab.store.insert_revert(str(target), exp["id"], commit, changed)
    return RevertResult(experiment_id=exp["id"], snapshot_commit=commit, restored=changed,
                        unchanged=[p for p in lab.config.editable if p not in changed], saved_edits=saved,
                        next=(f"your unsaved edits of {', '.join(lab.config.editable)} are saved ({saved[:10]}): "
                              "revert('saved') brings them back") if saved else None)


# -- notes ---------------------------------------------------------------------------------
def write_note(lab: Lab, text: str, experiment_id: int | None = None, tags: list[str] | None = None) -> NoteOut:
    text = validate("text", NoteText, text)
    tags = validate("tags", Tags, tags or [])
    if experiment_id is not None:
        _get(lab, validate("experiment_id", ExperimentId, experiment_id))
    note_id = lab.store.insert_note(text, experiment_id, tags)
    return _note_out(lab.store.get_note(note_id))


def read_notes(lab: Lab, limit: int = 20, tag: str | None = None, query: str | None = None) -> NotesPage:
    limit = validate("limit", Limit, limit)
    if tag is not None:
        tag = validate("tag", Tag, tag)
    if query is not None and len(query) > 200:
        raise ToolError("query is longer than 200 characters. Fix: search for a shorter phrase.")
    rows, total = lab.store.notes(limit=limit, tag=tag, query=query or None)
    return NotesPage(total=total, notes=[_note_out(r) for r in rows])


def _note_out(r: dict) -> NoteOut:
    return NoteOut(id=r["id"], created_at=_iso(r["created_at"]), experiment_id=r["experiment_id"], tags=r["tags"],
                   text=r["text"])


# -- helpers -------------------------------------------------------------------------------
def _get(lab: Lab, exp_id: int) -> dict:
    return lab.experiment(exp_id)


def _round(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
