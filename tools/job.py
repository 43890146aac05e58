"""The trusted entry point of a SLURM job: `python -P -m tools.job WORKSPACE EXPERIMENT_ID`.

It runs on the compute node what the local supervisor runs for a claimed experiment
(`runs.execute_claimed`: the snapshot, the per-fold sandboxed processes or the command and its
frozen scorer, each under the same SandboxPolicy), on the GPUs SLURM allocated, and leaves the
Outcome in the job's folder. It never opens the SQLite store (SQLite on a shared filesystem is not
safe across hosts): the supervisor on the submit host scores and records the run from that folder
(`runs.settle_job`). SIGTERM (`--signal=B:TERM@N` ahead of the time limit, or scancel) stops the
run cleanly; a cancel file in the run dir (cancel_experiment) does too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from sandbox import SandboxUnavailable

from tools.config import load_config
from tools.executors import jobs_dir
from tools.lab import Lab
from tools.runs import JOB_EXP, Outcome, execute_claimed, write_outcome
from tools.workspace import Workspace


class NodeStore:
    """What a run's launch needs of the store on a node: where it is (hidden from runs), and a sink
    for the one field the local supervisor writes while a run starts (the sandbox backend)."""

    def __init__(self, path: Path):
        self.path = path
        self.fields: dict = {}

    def update_experiment(self, experiment_id: int, **fields) -> bool:
        self.fields.update(fields)
        return True


def allocated_gpus(environ=os.environ) -> list[int] | None:
    """The GPU indices SLURM gave this job (SLURM_JOB_GPUS, else CUDA_VISIBLE_DEVICES); None: no GPUs."""
    for key in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = environ.get(key, "").strip()
        if value and re.fullmatch(r"\d+(,\d+)*", value):
            return [int(v) for v in value.split(",")]
    return None


def node_lab(root: Path) -> Lab:
    """The workspace as a job sees it: its config fitted to this job's allocation, no SQLite."""
    root = root.resolve()
    cfg = load_config(root)
    cfg.gpus = allocated_gpus() or []
    cfg.concurrency = 1  # this job is the one slot on its allocation
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("AUTORESEARCH_JOB_CPUS", "")  # ray: ours
    if cfg.threads == "auto" and cpus.isdigit():
        cfg.threads = int(cpus)
    lab = Lab(root=root, config=cfg, store=None, workspace=Workspace(root, cfg.editable))
    lab.store = NodeStore(lab.state_dir / "experiments.db")
    return lab


def main(argv: list[str]) -> int:
    root, exp_id = Path(argv[0]), int(argv[1])
    lab = node_lab(root)
    exp = json.loads((jobs_dir(lab, exp_id) / JOB_EXP).read_text())
    cancel_file = lab.run_dir(exp_id) / "cancel"
    terminating: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: terminating.append(1))
    # Ray has no time limit of its own: the executor passes the job's (budget + grace + margin) here
    limit_s = float(os.environ.get("AUTORESEARCH_JOB_TIME_LIMIT_S") or 0)
    deadline = time.monotonic() + limit_s if limit_s > 0 else None
    over = lambda: deadline is not None and time.monotonic() > deadline  # noqa: E731
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("AUTORESEARCH_JOB_ID")  # ray: its submission id
    print(f"autoresearch job: experiment {exp_id} on {socket.gethostname()}, job {job_id}, "
          f"gpus {lab.config.gpus or 'none'}, threads {lab.config.threads}", flush=True)
    try:
        outcome = execute_claimed(lab, exp, lambda: bool(terminating) or cancel_file.exists() or over())
    except SandboxUnavailable as exc:
        outcome = Outcome(status="failed", error=f"sandbox refused: {exc}")
    except Exception as exc:  # the supervisor records it failed with this and the job log's tail
        traceback.print_exc()
        write_outcome(lab, exp_id, Outcome(status="failed", error=f"job error: {type(exc).__name__}: {exc}"))
        return 1
    if over() and outcome.status == "cancelled" and not cancel_file.exists():
        outcome.status = "timeout"
        outcome.error = f"stopped at the job's time limit ({limit_s:.0f} s: budget + grace + [ray] time_margin_s)"
    elif terminating and outcome.status == "cancelled" and not cancel_file.exists() and \
            os.environ.get("AUTORESEARCH_EXECUTOR") != "ray":  # ray: only stop_job sends it (cancelled outside)
        outcome.status = "timeout"  # SLURM's --signal ahead of the limit (a scancel from outside reads CANCELLED)
        outcome.error = "stopped by SLURM's signal ahead of the job's time limit ([slurm] signal_s, time_margin_s)"
    write_outcome(lab, exp_id, outcome)
    print(f"autoresearch job: experiment {exp_id} ended {outcome.status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
