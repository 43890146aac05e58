"""One sandboxed process of a run: the policy that decides what it may touch, its start and wait.

Agent runs and held-out test evaluations both start here, so both get the same isolation.
"""

from __future__ import annotations

import time
from pathlib import Path

from sandbox import Limits, SandboxPolicy, launch

from tools.config import gpu_slots
from tools.datacache import cache_dir
from tools.guard import hidden_for_agent_runs
from tools.lab import Lab, harness_dir

BACKEND_FLOOR = {"auto": "none", "none": "none", "landlock": "landlock", "bwrap": "bwrap", "strict": "bwrap"}


def sandbox_policy(lab: Lab, exp: dict, run_dir: Path, code_dir: Path, slot: int = 0) -> SandboxPolicy:
    """The SandboxPolicy of one experiment: the single place that decides what a run may touch."""
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
    cache = cache_dir(lab)
    if data is not None and cache.is_dir():  # built by trusted code; read-only for runs
        env["AR_CACHE_DIR"] = str(cache)
        read_only.append(cache)
    hidden = [lab.root / ".git", lab.store.path, Path(str(lab.store.path) + "-wal"), Path(str(lab.store.path) + "-shm")]
    hidden += hidden_for_agent_runs(lab)  # the held-out split (its heldout/ folder) and the test runs
    limits = Limits(wall_seconds=budget + cfg.timeout_grace_s, max_processes=cfg.max_processes,
                    memory_bytes=int(cfg.memory_limit_gb * 2**30) if cfg.memory_limit_gb else None)
    gpus = gpu_slots(cfg)
    gpu = False
    if gpus:  # each slot owns one GPU: its device node only, and CUDA_VISIBLE_DEVICES to match
        gpu = [gpus[slot % len(gpus)]]
        env["CUDA_VISIBLE_DEVICES"] = str(gpu[0])
    return SandboxPolicy(argv=lab.command_argv(), cwd=code_dir, run_dir=run_dir, read_only=read_only,
                         hidden=[h for h in hidden if h.exists()], env=env, network=cfg.network, limits=limits,
                         gpu=gpu, min_backend=BACKEND_FLOOR[cfg.sandbox])


def launch_sandboxed(lab: Lab, policy: SandboxPolicy):
    """Start a policy with the backend autoresearch.toml asks for (a name forces that backend)."""
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
