"""What both halves of the CLI share: finding the workspace, one-line argument errors, the
workspace's metric name, and following runs with progress bars (cancelled on Ctrl-C)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from server.render import ProgressBars, RunView
from tools import experiments as ex
from tools import runs
from tools.config import CONFIG_NAME
from tools.errors import ToolError
from tools.lab import Lab
from tools.rundir import latest_progress, read_cache_status
from tools.store import TERMINAL


class UsageError(ToolError):
    """A bad command-line argument: printed as one line, exit code 2."""


# -- the workspace --------------------------------------------------------------------------
def find_workspace(start: Path) -> Path | None:
    """The folder at or above `start` that holds autoresearch.toml (so `lab/data` finds `lab`)."""
    start = start.resolve()
    for d in (start, *start.parents):
        if (d / CONFIG_NAME).is_file():
            return d
    return None


def workspace_root(args) -> Path:
    """-w DIR as given (it must be a workspace), else the workspace at or above the current folder."""
    given = getattr(args, "workspace", None)
    cwd = Path(os.getcwd())
    if given is not None and Path(given).resolve() != cwd.resolve():
        root = Path(given).resolve()
        if not (root / CONFIG_NAME).is_file():
            above = find_workspace(root)
            hint = f"did you mean -w {above}? " if above else ""
            raise UsageError(f"{root} is not a workspace (no {CONFIG_NAME}). Fix: {hint}pass the folder made by "
                             f"`autoresearch init`, or make one with `autoresearch init {given}`.")
        return root
    root = find_workspace(cwd)
    if root is None:
        raise UsageError(f"no workspace in {cwd} or above it (no {CONFIG_NAME}). Fix: cd into a workspace, pass "
                         "-w DIR, or make one with `autoresearch init DIR`.")
    return root


def open_lab(args) -> Lab:
    return Lab.open(workspace_root(args))


# -- arguments ------------------------------------------------------------------------------
def parse_params(text: str | None) -> dict | None:
    """--params as a JSON object; the error shows the quoting that works."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--params {text!r} is not JSON ({exc.msg.lower()}). Fix: quote the names, e.g. "
                         "--params '{\"LR\": 1e-4}'.") from None
    if not isinstance(value, dict):
        raise UsageError(f"--params {text!r} is not a JSON object. Fix: e.g. --params '{{\"LR\": 1e-4}}'.")
    return value


def experiment_id(text: str, what: str = "experiment id") -> int:
    if not re.fullmatch(r"\s*\d{1,9}\s*", text or "") or int(text) < 1:
        raise UsageError(f"{what} {text!r} is not an experiment id. Fix: pass a number from `autoresearch results` "
                         "(e.g. 3).")
    return int(text)


# -- the metric -----------------------------------------------------------------------------
def metric_info(lab: Lab) -> tuple[str, str]:
    """(name, direction) of the objective as the scorer names it (e.g. mean_rank), from the latest
    succeeded runs' record; the toml's `objective` when no run has said."""
    for r in lab.store.list_experiments(limit=5, status="succeeded", order_by="created",
                                        direction=lab.config.direction):
        run = json.loads(r["config_json"] or "{}").get("run") or {}
        name = run.get("objective_name") if isinstance(run, dict) else None
        if isinstance(name, str) and re.fullmatch(r"[\w.-]{1,60}", name):
            return name, run.get("direction") if run.get("direction") in ("minimize", "maximize") \
                else lab.config.direction
    return lab.config.objective, lab.config.direction


# -- following runs -------------------------------------------------------------------------
def step_budget(row: dict, folds: int) -> int | None:
    """The steps one training process should reach, from the constants its snapshot ran with:
    MAX_STEPS (eCLIP: per fold process), else the toy's STEPS per fold times the folds it loops
    over in one process; None when neither says."""
    consts = (json.loads(row.get("config_json") or "{}").get("provenance") or {}).get("constants") or {}
    per = consts.get("MAX_STEPS")
    if isinstance(per, int) and not isinstance(per, bool) and per > 0:
        return per
    per = consts.get("STEPS")
    if isinstance(per, int) and not isinstance(per, bool) and per > 0:
        return per * max(1, folds)
    return None


def run_view(lab: Lab, exp_id: int):
    """(RunSummary, RunView) of one poll: the summary for the end, the view for the bar."""
    s = ex.summary(lab, exp_id)
    row = lab.store.get_experiment(exp_id) or {}
    v = RunView(id=exp_id, status=s.status, started_at=row.get("started_at"), loss=s.loss,
                budget_s=row.get("time_budget_s") or lab.config.time_budget_s)
    if s.status == "running":
        run_dir = lab.run_dir(exp_id)
        p = latest_progress(run_dir)
        folds = lab.config.run_folds
        total = step_budget(row, folds)
        if p.fold is not None:  # one process per fold: each counts its own steps from 0
            v.fold, v.folds = p.fold, folds
            if total is not None and p.step is not None:
                v.step, v.steps_total = p.fold * total + p.step, total * folds
            else:
                v.step = p.step
        else:
            v.step, v.steps_total = p.step, total
        cache = read_cache_status(run_dir)
        if p.step is None and cache and cache.startswith("building the data cache"):
            v.phase = "building the data cache"
    return s, v


def follow(lab: Lab, ids: list[int], bars: ProgressBars, poll_s: float = 0.5) -> dict[int, object]:
    """Poll runs until each ends, drawing their bars; returns {id: RunSummary}."""
    done: dict[int, object] = {}
    while len(done) < len(ids):
        for i in ids:
            if i in done:
                continue
            s, v = run_view(lab, i)
            if s.status in TERMINAL:
                done[i] = s
                bars.finish(i, s.status)
            else:
                bars.update(v)
        if len(done) < len(ids):
            time.sleep(poll_s)
    return done


def cancel_runs(lab: Lab, ids: list[int], wait_s: float = 30.0) -> dict[int, str]:
    """Cancel what a command started (Ctrl-C) and wait briefly for each to end."""
    for i in ids:
        runs.request_cancel(lab, i)
    deadline = time.monotonic() + wait_s
    states = {}
    for i in ids:
        while True:
            st = (lab.store.get_experiment(i) or {}).get("status", "?")
            if st in TERMINAL or time.monotonic() > deadline:
                states[i] = st
                break
            time.sleep(0.2)
    return states
