"""`autoresearch.toml`: what a workspace is, validated with pydantic.

A bad file is refused with the field, the value and the fix; nothing runs on a half-read config.
"""

from __future__ import annotations

import glob
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tools.errors import ToolError

CONFIG_NAME = "autoresearch.toml"
STATE_DIR = ".autoresearch"


class SearchParam(BaseModel):
    """One dimension of the `suggest` search space."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[float | int | str | bool] | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> "SearchParam":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs `choices = [...]` (at least one value)")
            if self.low is not None or self.high is not None or self.log:
                raise ValueError("a categorical parameter takes `choices` only, not low/high/log")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs numbers low < high (got low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0 (got low={self.low})")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int parameter needs whole-number bounds (got {self.low}, {self.high})")
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not `choices`")
        return self


class SlurmConfig(BaseModel):
    """`[slurm]`: how each experiment becomes one `sbatch` job (tools/executors.py). SLURM schedules."""

    model_config = ConfigDict(extra="forbid")
    partition: str | None = Field(None, max_length=200)
    account: str | None = Field(None, max_length=200)
    gpus_per_run: int = Field(1, ge=0, le=64, description="--gres=gpu:N per experiment (0: CPU-only jobs)")
    cpus_per_run: int = Field(1, ge=1, le=512, description="--cpus-per-task; also the run's threads")
    mem_gb: float | None = Field(None, gt=0, le=4096, description="--mem; default memory_limit_gb + 1")
    time_margin_s: float = Field(300.0, ge=0, le=24 * 3600,
                                 description="--time = the run's budget + grace (+ scorer) + this (task builds, start)")
    signal_s: int = Field(60, ge=0, le=3600, description="--signal=B:TERM@this: a graceful stop before the limit")
    extra_args: list[str] = Field(default_factory=list, max_length=50,
                                  description="more sbatch flags as-is, e.g. [\"--qos=short\", \"--constraint=a100\"]")
    max_jobs: int = Field(16, ge=1, le=10_000, description="experiments in flight (pending + running) at once")
    python: str | None = Field(None, description="the interpreter on the nodes (default: this one; same env on a "
                                                 "shared filesystem)")
    poll_s: float = Field(2.0, ge=0.2, le=300, description="how often squeue/sacct are asked")


class RayConfig(BaseModel):
    """`[ray]`: each experiment one Ray job (the Jobs API, tools/executors.py). Ray schedules."""

    model_config = ConfigDict(extra="forbid")
    address: str = Field("http://127.0.0.1:8265", max_length=500,
                         description="the cluster's Jobs API (its dashboard), or 'auto' (the cluster this machine joined)")
    gpus_per_run: float = Field(1, ge=0, le=64, description="entrypoint_num_gpus per experiment (Ray sets "
                                                             "CUDA_VISIBLE_DEVICES; 0: CPU-only jobs)")
    cpus_per_run: float = Field(1, ge=0, le=512, description="entrypoint_num_cpus; also the run's threads")
    time_margin_s: float = Field(300.0, ge=0, le=24 * 3600,
                                 description="the job's own time limit = the run's budget + grace (+ scorer) + this")
    max_jobs: int = Field(16, ge=1, le=10_000, description="experiments in flight (pending + running) at once")
    python: str | None = Field(None, description="the interpreter on the nodes (default: this one; same env on a "
                                                 "shared filesystem)")
    poll_s: float = Field(1.0, ge=0.2, le=300, description="how often Ray is asked about the jobs")


class WorkspaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("eclip", max_length=100)
    editable: list[str] = Field(default_factory=lambda: ["train.py"], min_length=1, max_length=50,
                                description="files the agent may edit; snapshotted and reverted")
    command: list[str] = Field(default_factory=lambda: ["python", "train.py"], min_length=1,
                               description="argv of one experiment; 'python' means this installation's interpreter")
    objective: str = Field("objective", description="key in metrics.json that is optimised")
    direction: Literal["minimize", "maximize"] = "minimize"
    time_budget_s: float = Field(120.0, gt=0, le=24 * 3600)
    max_time_budget_s: float = Field(3600.0, gt=0, le=7 * 24 * 3600)
    timeout_grace_s: float = Field(60.0, ge=0, le=3600,
                                   description="extra wall time after the budget for eval and writing metrics")
    max_wait_s: float = Field(40.0, ge=1, le=3600,
                              description="the longest an MCP tool call waits for a run (the default and cap of "
                                          "wait_s); then it returns the id and how to follow. Keep it under every "
                                          "client's request timeout (60 s for several)")
    data: str | None = Field(None, description="dataset root (read-only inside runs)")
    test_annotations: str | None = Field(None, description="held-out test annotations, never mounted into agent runs")
    read_only: list[str] = Field(default_factory=list, max_length=50,
                                 description="extra paths runs may read (e.g. local pretrained weights)")
    sandbox: Literal["auto", "strict", "bwrap", "landlock", "none"] = Field(
        "auto", description="auto: best available; strict: refuse without bwrap; bwrap|landlock|none: exactly that "
                            "backend (none = no isolation, not advised)")
    network: bool = False
    memory_limit_gb: float | None = Field(None, gt=0, le=4096)
    max_processes: int = Field(512, ge=8, le=100_000)
    concurrency: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field("auto", description="runs at a time; auto: one per GPU, 1 on CPU")
    threads: Annotated[int, Field(ge=1, le=512)] | Literal["auto"] = Field(
        "auto", description="CPU threads per run (torch, OpenMP, MKL); auto: the cores / the concurrent slots")
    gpus: list[int] | None = Field(None, description="GPU indices to hand out; None: every /dev/nvidiaN present")
    folds: int = Field(1, ge=1, le=20, description="k of the protocol (the harness's, not train.py's): eval pools "
                                                   "of the split protocol, folds of kfold-pooled")
    protocol: Literal["split", "kfold-pooled"] = Field(
        "split", description="split (leak-free): train on the training split, score on k disjoint pools of the "
                             "validation pairs; kfold-pooled (LEAKY, the seed's): k folds over pooled train+val, "
                             "each fold trains on the other folds' eval pairs; only to compare with the seed")
    scorer: Literal["eclip"] | Annotated[list[str], Field(min_length=1, max_length=20)] = Field(
        "eclip", description='"eclip": the harness scores the embeddings each fold hands back; or the argv of this '
                             "workspace's own frozen scorer (e.g. [\"python\", \"score.py\"]), run in the sandbox "
                             "after the run with the run's outputs read-only; it prints the objective as JSON")
    scorer_timeout_s: float = Field(300.0, gt=0, le=3600)
    budget_rule: Literal["steps", "time"] = Field(
        "steps", description="steps: the step budget decides, a run stopped on time first is incomparable; "
                             "time: fixed seconds, steps vary (karpathy's rule), every finished run is compared")
    baseline_seeds: int = Field(0, ge=0, le=10, description="seed reruns queued after the first baseline (noise)")
    confirm_seeds: int = Field(2, ge=0, le=10, description="seed reruns queued for a run that would be improved "
                                                           "with no noise estimate of its own (verdict improved?); "
                                                           "0: such a run is improved at once (not advised)")
    step_budget: int | None = Field(None, ge=1, description="budget_rule steps: the most steps per fold a run may "
                                                            "set in its step-budget constant (the human's, like "
                                                            "time_budget_s); None: not checked")
    step_budget_constant: str = Field("MAX_STEPS", pattern=r"^[A-Z][A-Z0-9_]{0,63}$",
                                      description="the main file's constant that holds its step budget per fold")
    noise_sigma: float = Field(2.0, ge=0, le=10, description="improved only if better by this many sigma")
    keep_checkpoints: Literal["kept", "all", "none"] = "kept"
    search_space: dict[str, SearchParam] = Field(default_factory=dict, max_length=32,
                                                 description="train.py constants that `suggest` tunes")
    hpo_sampler: Literal["tpe", "random", "gp"] = Field(
        "tpe", description="suggest's Optuna sampler; gp needs torch and runs in a child process")
    allow_test_eval: bool = Field(False, description="expose evaluate_test as an MCP tool (humans: the CLI)")
    cache_dir: str | None = Field(None, description="tensor caches built before runs (read-only inside them); "
                                                    "default .autoresearch/cache")
    warm_cache: bool = Field(True, description="build the tensor cache for a run's IMAGE_SIZE/CONTEXT_LENGTH "
                                               "before it starts (outside the sandbox, not charged to its budget)")
    executor: Literal["local", "slurm", "ray"] = Field(
        "local", description="local: detached supervisor + slots on this machine; slurm: one sbatch job per "
                             "experiment (the [slurm] table; the workspace on a filesystem the nodes share); "
                             "ray: one Ray job per experiment (the [ray] table; pip install 'eclip-autoresearch[ray]')")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @property
    def processes(self) -> int:
        """Sandboxed training processes per run: one per fold under kfold-pooled (eCLIP), else one."""
        return self.folds if (self.protocol == "kfold-pooled" and self.scorer == "eclip") else 1

    @property
    def run_folds(self) -> int:
        """The folds one run trains, one after the other: its processes (eCLIP), or the folds a workspace
        command loops over by itself (the toy)."""
        return self.processes if self.scorer == "eclip" else self.folds

    @property
    def leaky(self) -> bool:
        """The protocol hands eval pairs of one fold to another fold's training (kfold-pooled, folds > 1)."""
        return self.protocol == "kfold-pooled" and self.folds > 1 and self.scorer == "eclip"

    @property
    def leak_note(self) -> str | None:
        """The words every verdict of a leaky protocol carries (None for a leak-free one)."""
        if not self.leaky:
            return None
        return (f"LEAKY protocol (kfold-pooled, {self.folds} folds): each fold trains on the other folds' eval "
                "pairs, so a run can be handed its answers (through the agent); comparable only with the seed's "
                "own numbers, never proof of a better method. protocol = \"split\" is leak-free.")

    @property
    def jobs(self) -> "SlurmConfig | RayConfig":
        """The table of the cluster executor in use (poll_s, max_jobs, time_margin_s, python, *_per_run)."""
        return self.ray if self.executor == "ray" else self.slurm

    @field_validator("search_space")
    @classmethod
    def _constant_names(cls, space: dict) -> dict:
        for name in space:
            if not re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", name) or name == "SEED":
                raise ValueError(f"search_space key {name!r} must name an UPPERCASE constant of train.py "
                                 "(not SEED: seeds are for rerun_experiment)")
        return space

    @model_validator(mode="after")
    def _scorer_is_frozen(self) -> "WorkspaceConfig":
        if isinstance(self.scorer, list):
            mine = [a for a in self.scorer[1:] if a in self.editable]
            if mine:
                raise ValueError(f"scorer {self.scorer} runs {mine[0]}, which is in `editable`: the agent could "
                                 "write its own score. Fix: keep the scorer's files out of `editable`")
        return self

    @field_validator("editable")
    @classmethod
    def _relative_paths(cls, paths: list[str]) -> list[str]:
        for p in paths:
            pp = Path(p)
            if pp.is_absolute() or ".." in pp.parts or p.startswith(".git") or p.startswith(STATE_DIR):
                raise ValueError(f"editable path {p!r} must be relative, inside the workspace, not in .git or {STATE_DIR}")
        return paths


def detect_gpus() -> list[int]:
    """GPU indices from the device nodes (no torch, no nvidia-smi needed)."""
    found = (re.fullmatch(r"/dev/nvidia(\d+)", p) for p in glob.glob("/dev/nvidia*"))
    return sorted(int(m.group(1)) for m in found if m)


def gpu_slots(cfg: "WorkspaceConfig") -> list[int]:
    return list(cfg.gpus) if cfg.gpus is not None else detect_gpus()


def slot_count(cfg: "WorkspaceConfig") -> int:
    if cfg.concurrency == "auto":
        return max(1, len(gpu_slots(cfg)))
    return cfg.concurrency


MEMORY_SHARE = 0.75  # of the machine's RAM, for all concurrent runs together


def default_memory_limit_gb(slots: int | None = None) -> float:
    """A memory cap per run that leaves the machine usable: MEMORY_SHARE of its RAM over the slots
    (one per GPU, else 1), in half-GiB steps, at least 1 GiB."""
    slots = slots or max(1, len(detect_gpus()))
    gib = psutil.virtual_memory().total / 2**30 * MEMORY_SHARE / slots
    return max(1.0, math.floor(gib * 2) / 2)


def threads_per_run(cfg: "WorkspaceConfig") -> int:
    """CPU threads each run gets: set, or the usable cores shared by the concurrent slots."""
    if cfg.threads != "auto":
        return cfg.threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // slot_count(cfg))


def load_config(root: Path) -> WorkspaceConfig:
    path = Path(root) / CONFIG_NAME
    if not path.exists():
        raise ToolError(f"{path} not found: this folder is not a workspace. Fix: run `autoresearch init {root}`.")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ToolError(f"{path} is not valid TOML ({exc}). Fix the file and retry.") from exc
    try:
        return WorkspaceConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ToolError(f"{path} is invalid: {problems}. Fix those fields and retry.") from exc


def _toml_value(v) -> str:
    return "[" + ", ".join(f'"{a}"' for a in v) + "]" if isinstance(v, list) else f'"{v}"'


def render_config(*, name: str, data: str, test_annotations: str | None, time_budget_s: float,
                  folds: int = 1, protocol: str = "split", scorer: str | list[str] = "eclip", baseline_seeds: int = 2,
                  confirm_seeds: int = 2, step_budget: int | None = None, step_budget_constant: str = "MAX_STEPS",
                  memory_limit_gb: float | None = None, search_space_toml: str = "") -> str:
    memory_limit_gb = memory_limit_gb or default_memory_limit_gb()
    """The autoresearch.toml that `init` writes (commented, for people)."""
    step_line = (f"step_budget = {step_budget}                 # budget_rule steps: the most steps per fold a run may set"
                 if step_budget else "# step_budget = 300               # budget_rule steps: the most steps per fold a run may set")
    test_line = f'test_annotations = "{test_annotations}"' if test_annotations else "# test_annotations = \"...\""
    return f'''# eclip-autoresearch workspace. Humans edit this file; the agent may not (see .claude/settings.json).
name = "{name}"
editable = ["train.py"]            # the only files the agent edits; snapshotted per experiment
command = ["python", "train.py"]   # 'python' = the interpreter autoresearch is installed in
objective = "objective"            # the key of the scorer's result that is optimised
scorer = {_toml_value(scorer)}{" " * max(1, 18 - len(_toml_value(scorer)))}# "eclip": the harness scores each fold's embeddings; or your own frozen scorer's argv
folds = {folds}                          # k of the protocol: eval pools (split) or folds (kfold-pooled); train.py cannot change it
protocol = "{protocol}"               # split: train on train, score on k disjoint val pools (leak-free) | kfold-pooled: the seed's, LEAKY
direction = "minimize"
time_budget_s = {time_budget_s:g}            # training seconds per experiment: the human's; a run may not ask for more
max_time_budget_s = 3600
timeout_grace_s = 60               # extra wall time for eval; the run is killed after budget + grace
max_wait_s = 40                    # an MCP call waits at most this long for a run, then returns its id (poll to follow)
data = "{data}"                    # read-only inside every run
{test_line}   # never visible to agent runs
sandbox = "auto"                   # auto | strict (refuse without bubblewrap) | bwrap | landlock | none
network = false
memory_limit_gb = {memory_limit_gb:g}             # per run (the whole process tree): {MEMORY_SHARE:.0%} of this machine's RAM / concurrent runs
threads = "auto"                   # CPU threads per run (torch/OpenMP/MKL): "auto" = cores / concurrent runs
concurrency = "auto"               # runs at a time: "auto" = one per GPU (each its own CUDA_VISIBLE_DEVICES), 1 on CPU
# gpus = [0, 1]                    # which GPUs to hand out (default: all)
noise_sigma = 2.0                  # 'improved' must beat the best by this many sigma of the noise
budget_rule = "steps"              # steps: a run stopped on time before its steps is 'incomparable' | time: fixed seconds
baseline_seeds = {baseline_seeds}                 # seed reruns queued after the first baseline, to measure the noise (0: off)
confirm_seeds = {confirm_seeds}                  # seed reruns queued for an 'improved?' run (no noise of its own); best only if confirmed
{step_line}
step_budget_constant = "{step_budget_constant}"  # the train.py constant that holds the step budget per fold
keep_checkpoints = "kept"
hpo_sampler = "tpe"                # suggest(): tpe | random | gp (gp runs in a child; needs torch + scipy)
allow_test_eval = false            # true exposes evaluate_test as an MCP tool; humans use `autoresearch evaluate-test`
warm_cache = true                  # build the tensor cache a run asks for (IMAGE_SIZE, CONTEXT_LENGTH) before it starts
# cache_dir = ".autoresearch/cache"  # where those caches live (read-only inside runs)
executor = "local"                 # local | slurm | ray: each experiment one sbatch / Ray job (README: running on a cluster)
# [slurm]                          # only with executor = "slurm"; the workspace must be on a filesystem the nodes share
# partition = "gpu"
# account = "my-project"
# gpus_per_run = 1                 # --gres=gpu:N (SLURM sets CUDA_VISIBLE_DEVICES)
# cpus_per_run = 4                 # --cpus-per-task, and the run's threads
# mem_gb = 32                      # --mem (default: memory_limit_gb + 1)
# time_margin_s = 300              # --time = budget + grace (+ scorer) + this
# signal_s = 60                    # --signal=B:TERM@60: the job stops its run cleanly before the limit
# max_jobs = 16                    # experiments in flight at once (each its own job)
# extra_args = ["--qos=normal"]    # passed to sbatch as they are
# python = "/shared/venv/bin/python"  # the interpreter on the nodes (default: this one)
# [ray]                            # only with executor = "ray" (pip install 'eclip-autoresearch[ray]')
# address = "http://127.0.0.1:8265"  # the cluster's Jobs API; token auth: RAY_AUTH_TOKEN(_PATH) or ~/.ray/auth_token
# gpus_per_run = 1                 # entrypoint_num_gpus (Ray sets CUDA_VISIBLE_DEVICES)
# cpus_per_run = 4                 # entrypoint_num_cpus, and the run's threads
# max_jobs = 16                    # experiments in flight at once (each its own Ray job)
{search_space_toml}'''
