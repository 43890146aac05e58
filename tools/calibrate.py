"""Measure this machine once, at `init`: how long a step of the workspace's train.py takes, with
how many threads, so the time budget fits the step budget (the step budget decides; the time
budget is a safety net with at least 2x headroom).

It runs the real template, sandboxed like every run, on the workspace's own fold-0 task for a
few steps (`CAL_STEPS`, written into a copy of train.py), once per thread count worth trying,
and writes `time_budget_s` and `threads` into autoresearch.toml. When even that budget is beyond
`max_time_budget_s` it says so plainly and names the preset that will finish here.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from model.constants import parse_constants, rewrite_constants
from tools import datacache
from tools.config import CONFIG_NAME
from tools.lab import Lab
from tools.launch import launch_sandboxed, sandbox_policy, wait_sandboxed
from tools.rundir import number, read_metrics

CAL_STEPS = 12
HEADROOM = 2.0


@dataclass
class Calibration:
    threads: int
    seconds_per_step: float
    overhead_s: float          # per fold process: imports, model build, task load, eval
    need_s: float              # training seconds for the whole step budget (all folds)
    time_budget_s: float
    tried: dict[int, float]    # threads -> seconds per step
    fits: bool
    message: str


def _measure(lab: Lab, code_dir: Path, run_dir: Path, task_dir: Path, threads: int) -> tuple[float, float] | None:
    """(seconds per step, seconds outside the loop) of CAL_STEPS steps with `threads` threads."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    policy = sandbox_policy(lab, {"id": 0, "time_budget_s": 600}, run_dir, code_dir, task_dir=task_dir, fold=0,
                            budget_s=600)
    policy.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                      AR_THREADS=str(threads))
    result = wait_sandboxed(launch_sandboxed(lab, policy), lambda: False)
    metrics, _ = read_metrics(run_dir)
    if result.returncode != 0 or not metrics:
        return None
    steps, train, total = (number(metrics.get(k)) for k in ("steps", "train_seconds", "total_seconds"))
    if not steps or train is None or total is None:
        return None
    return train / steps, max(0.0, total - train)


def calibrate(lab: Lab, on_line=print) -> Calibration | None:
    """Measure and write the budget into autoresearch.toml; None when there is nothing to measure."""
    script = lab.root / "train.py"
    sizes = datacache.requested_sizes(script)
    constants = parse_constants(script.read_text())
    max_steps = constants.get("MAX_STEPS")
    if lab.config.scorer != "eclip" or sizes is None or not isinstance(max_steps, int) or max_steps < 1:
        return None
    on_line(f"calibrating: {CAL_STEPS} steps of train.py on this machine, sandboxed like every run ...")
    tasks, line = datacache.ensure_tasks(lab, sizes, split="val", log_path=lab.state_dir / "calibration.log",
                                         on_build=on_line)
    if tasks is None:
        on_line(f"calibration skipped: {line}")
        return None
    work = lab.state_dir / "calibration"
    code_dir = work / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    (code_dir / "train.py").write_text(rewrite_constants(script.read_text(), {"MAX_STEPS": CAL_STEPS}))
    cores = max(1, len(__import__("os").sched_getaffinity(0)))
    tried: dict[int, float] = {}
    overheads: dict[int, float] = {}
    try:
        task = datacache.deal_run(lab, tasks, "calibration")[0][0]
        for threads in sorted({cores, 1}, reverse=True):
            m = _measure(lab, code_dir, work / f"run-{threads}", task, threads)
            if m is not None:
                tried[threads], overheads[threads] = m
                on_line(f"  {threads} thread(s): {m[0]:.3f} s/step")
    finally:
        datacache.discard_deal(lab, "calibration")
        shutil.rmtree(work, ignore_errors=True)
    if not tried:
        on_line("calibration failed: the measuring run did not finish (see .autoresearch/calibration.log); "
                "time_budget_s left as the preset's")
        return None
    threads = min(tried, key=tried.get)
    per_step = tried[threads]
    folds = lab.config.processes
    need = per_step * max_steps * folds
    budget = float(max(lab.config.time_budget_s, math.ceil(HEADROOM * need)))
    fits = budget <= lab.config.max_time_budget_s
    if fits:
        msg = (f"calibrated: {per_step:.3f} s/step with {threads} thread(s) -> {max_steps} steps x {folds} fold(s) "
               f"need ~{need:.0f} s; time_budget_s = {budget:.0f} ({HEADROOM:g}x headroom), threads = {threads}")
    else:
        budget = lab.config.max_time_budget_s
        msg = (f"this preset will not finish its {max_steps} steps x {folds} fold(s) here: ~{need:.0f} s of training "
               f"at {per_step:.2f} s/step, beyond max_time_budget_s = {lab.config.max_time_budget_s:g}. Runs would stop "
               "on time and be 'incomparable'. Fix: `autoresearch init DIR --preset tiny` (CPU-sized), or a GPU")
    _write_toml(lab.root / CONFIG_NAME, budget, threads)
    on_line(msg)
    return Calibration(threads=threads, seconds_per_step=per_step, overhead_s=overheads[threads], need_s=need,
                       time_budget_s=budget, tried=tried, fits=fits, message=msg)


def _write_toml(path: Path, budget: float, threads: int) -> None:
    text = path.read_text()
    text = re.sub(r"^time_budget_s = [0-9.e+]+", f"time_budget_s = {budget:g}", text, count=1, flags=re.M)
    text = re.sub(r'^threads = "auto"', f"threads = {threads}", text, count=1, flags=re.M)
    path.write_text(text)
