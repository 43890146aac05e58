"""One sandboxed process of a run: the policy that decides what it may touch, its start and wait.

Agent runs and held-out test evaluations both start here, so both get the same isolation.
"""

from __future__ import annotations

import time
from pathlib import Path

from sandbox import Limits, SandboxPolicy, launch

from tools.config import gpu_slots, threads_per_run
from tools.datacache import cache_dir, keys_root, tasks_root
from tools.guard import TEST_RUNS, hidden_for_agent_runs, under
from tools.lab import Lab, harness_dir

BACKEND_FLOOR = {"auto": "none", "none": "none", "landlock": "landlock", "bwrap": "bwrap", "strict": "bwrap"}


def sandbox_policy(lab: Lab, exp: dict, run_dir: Path, code_dir: Path, slot: int = 0, *,
                   task_dir: Path | None = None, fold: int | None = None, budget_s: float | None = None,
                   argv: list[str] | None = None, outputs_dir: Path | None = None,
                   split: str = "val") -> SandboxPolicy:
    """The SandboxPolicy of one process of an experiment: the single place that decides what a run
    may touch. `run_dir` is the only writable folder.

    - Every process: the workspace root and its .autoresearch/ are shown empty (masked), so only the
      grants below appear: its run dir (rw), its code snapshot, the harness, human-listed read_only paths.
    - An eCLIP process (`task_dir`): reads its own task folder of this run only; the dataset, the
      tensor cache, every build, other runs' deals and every key are out of sight.
    - A workspace-scored run: reads the dataset (without the held-out split) read-only.
    - The workspace scorer (`argv`, `outputs_dir`): reads the run's outputs read-only.
    """
    cfg = lab.config
    budget = float(budget_s if budget_s is not None else (exp["time_budget_s"] or cfg.time_budget_s))
    env = {"AR_RUN_DIR": str(run_dir), "AR_TIME_BUDGET_S": f"{budget:g}", "AR_EXPERIMENT_ID": str(exp["id"]),
           "AR_NUM_FOLDS": str(cfg.run_folds), "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    threads = str(threads_per_run(cfg))  # explicit: oversubscribed threads are the slowest thing on a busy box
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, AR_THREADS=threads)
    read_only = [code_dir]
    hidden = hidden_for_agent_runs(lab)  # the held-out split (its heldout/ folder) and the test runs
    if split == "test":  # a test evaluation's own folder lives among the test runs
        hidden = [h for h in hidden if h != lab.state_dir / TEST_RUNS]
    data = lab.data_dir()
    if task_dir is not None:
        env.update(AR_TASK_DIR=str(task_dir), AR_FOLD=str(fold or 0))
        read_only.append(task_dir)
        hidden += [p for p in (data, cache_dir(lab)) if p is not None]
    else:
        env["AR_EVAL_SPLIT"] = split
        if data is not None:
            env["AR_DATA_DIR"] = str(data)
            read_only.append(data)
        cache = cache_dir(lab)
        if data is not None and cache.is_dir():  # built by trusted code; read-only for runs
            env["AR_CACHE_DIR"] = str(cache)
            read_only.append(cache)
    if outputs_dir is not None:
        env["AR_OUTPUTS_DIR"] = str(outputs_dir)
        read_only.append(outputs_dir)
    if argv is not None:  # the workspace scorer's own files (its script), read-only
        read_only += [Path(a) for a in argv[1:] if Path(a).is_absolute() and Path(a).is_file()]
    harness = harness_dir()
    if harness is not None:
        read_only.append(harness)
    read_only += [lab.resolve(p) for p in cfg.read_only]
    # The workspace and its state are shown empty, wherever they live, on every backend: a run sees
    # only what is granted beneath them (its run dir, its snapshot, its own task folder, the paths a
    # human listed), never other runs, other folds, builds, keys, the DB, optuna.db or the token.
    grants = [run_dir, *read_only]
    masked = [m for m in (lab.root, lab.state_dir) if m.is_dir() and not any(under(str(m), g) for g in grants)]
    secrets = [lab.root / ".git", lab.store.path, Path(str(lab.store.path) + "-wal"),
               Path(str(lab.store.path) + "-shm"), tasks_root(lab), keys_root(lab)]
    hidden += [p for p in secrets if not any(under(str(p), m) for m in masked)]  # a human granted a folder above
    hidden = [h for h in hidden if not any(under(str(h), m) for m in masked) or any(under(str(h), g) for g in grants)]
    limits = Limits(wall_seconds=budget + cfg.timeout_grace_s, max_processes=cfg.max_processes,
                    memory_bytes=int(cfg.memory_limit_gb * 2**30) if cfg.memory_limit_gb else None)
    gpus = gpu_slots(cfg)
    gpu = False
    if gpus and argv is None:  # each slot owns one GPU: its device node only, and CUDA_VISIBLE_DEVICES to match
        per = max(1, cfg.slurm.gpus_per_run) if cfg.executor == "slurm" else 1  # a job: its whole allocation
        gpu = [gpus[(slot * per + i) % len(gpus)] for i in range(min(per, len(gpus)))]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu))
    return SandboxPolicy(argv=argv or lab.command_argv(), cwd=code_dir, run_dir=run_dir, read_only=read_only,
                         hidden=[h for h in hidden if h.exists()], masked=masked, env=env, network=cfg.network,
                         limits=limits, gpu=gpu, min_backend=BACKEND_FLOOR[cfg.sandbox])


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
