"""The run contract between a child `train.py` and the product (frozen harness, child side).

One process trains one fold: it reads the fold's task, trains, embeds the fold's eval pool and
hands the embeddings back. The supervisor scores them outside the sandbox (`model.scoring`);
nothing the child writes can set the objective.

Environment (all optional; the template runs standalone without any of them):
  AR_TASK_DIR        the fold's task folder (read-only; `model.tasks`): training pairs, the eval
                     pool as images and captions in two independent secret orders, task.json.
                     Unset: a one-fold task is built in a temp folder from AR_DATA_DIR (default:
                     the synthetic dataset in the user cache), and `save_embeddings` prints the
                     local score (a convenience for running `python train.py` by hand).
  AR_RUN_DIR         writable output folder (default ./run).
  AR_TIME_BUDGET_S   this fold's training seconds (its share of the run's budget); overrides
                     TIME_BUDGET.
  AR_DATA_DIR, AR_CACHE_DIR   standalone only: where the temp task's data and tensor cache are.

Outputs in AR_RUN_DIR:
  image_embeddings.npy, text_embeddings.npy   float32 [n_eval, D], row r = row r of
                 task.eval_images / task.eval_tokens (written to a temp file and renamed).
  events.jsonl   one JSON line per progress report, flushed: {"t", "step", "loss", "elapsed"};
                 at the first step and then at least every EVENT_EVERY_S of training.
  metrics.json   informational facts of the run (steps, stopped_by, loss, peak memory, ...);
                 written atomically; never the objective.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import math
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import scoring
from .data import PairData
from .tasks import build_tasks, deal_task

EVENT_EVERY_S = 1.0

_standalone_key: Path | None = None      # the key of a task built here (standalone runs only)
_n_eval: int | None = None


@dataclass
class Task:
    """One fold's work: `train` (PairData of the training pairs), the unpaired eval pool, task.json."""
    train: PairData
    eval_images: torch.Tensor         # uint8 [E, 3, S, S], the pool in secret order A
    eval_tokens: torch.Tensor         # long [E, L], the pool in an independent secret order B
    fold: int
    num_folds: int                    # training processes of the run (1 but for the leaky kfold-pooled protocol)
    split: str
    info: dict = field(default_factory=dict)
    dir: Path | None = None


def _load(path: Path, mmap: bool = False) -> torch.Tensor:
    # mmap_mode "c": copy-on-write pages of the read-only file (writable for torch, nothing written back)
    return torch.from_numpy(np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False))


def read_task(path) -> Task:
    """The task in `task_dir` (the layout of model.tasks)."""
    d = Path(path)
    try:
        info = json.loads((d / "task.json").read_text())
    except (OSError, ValueError) as e:
        fail(f"AR_TASK_DIR={d}: no readable task.json ({e})", code=2)
    images = _load(d / "train_images.npy", mmap=True)
    n = images.shape[0]
    train = PairData(
        images=images,
        tokens=_load(d / "train_tokens.npy").long(),
        boxes=_load(d / "train_boxes.npy"),
        box_valid=_load(d / "train_box_valid.npy"),
        phrase_tokens=_load(d / "train_phrase_tokens.npy"),
        split=torch.zeros(n, dtype=torch.int8),
        twin=_load(d / "train_twin.npy").long(),
        fingerprint=str(info.get("data_fingerprint", "")),
    )
    return Task(train=train, eval_images=_load(d / "eval_images.npy", mmap=True),
                eval_tokens=_load(d / "eval_tokens.npy").long(), fold=int(info["fold"]),
                num_folds=int(info["num_folds"]), split=str(info["split"]), info=info, dir=d)


def load_task(image_size: int | None = None, context_length: int | None = None, log=print) -> Task:
    """The fold's task from $AR_TASK_DIR; standalone (unset), a one-fold val task built in a temp
    folder for `image_size` / `context_length`. A task built for other sizes ends the run (exit 2)."""
    global _standalone_key, _n_eval
    d = os.environ.get("AR_TASK_DIR")
    if not d:
        if image_size is None or context_length is None:
            fail("AR_TASK_DIR is not set; a standalone run needs load_task(IMAGE_SIZE, CONTEXT_LENGTH)", code=2)
        tmp = Path(tempfile.mkdtemp(prefix="eclip-task-"))
        atexit.register(shutil.rmtree, tmp, True)
        log(f"task: AR_TASK_DIR not set; building a one-fold task in {tmp} (standalone run)")
        build_tasks(None, None, image_size=image_size, context_length=context_length, num_folds=1, split="val",
                    out_dir=tmp / "tasks", log=log)
        d, _standalone_key = tmp / "task", tmp / "key.npz"
        deal_task(tmp / "tasks", 0, d, _standalone_key)
    task = read_task(d)
    for name, want in (("image_size", image_size), ("context_length", context_length)):
        if want is not None and task.info.get(name) != want:
            fail(f"the task in {d} was built for {name} {task.info.get(name)}, this script asks for {want}; "
                 f"the supervisor builds tasks from the script's IMAGE_SIZE / CONTEXT_LENGTH literals", code=2)
    _n_eval = len(task.eval_tokens)
    return task


def save_embeddings(image_emb, text_emb) -> dict | None:
    """Write RUN_DIR/image_embeddings.npy and text_embeddings.npy (float32, atomically): row r of
    each is the embedding of row r of task.eval_images / task.eval_tokens. Standalone runs also
    score them here and return the metrics (the product scores them itself; None then)."""
    arrays = {}
    for name, x in ((scoring.IMAGE_FILE, image_emb), (scoring.TEXT_FILE, text_emb)):
        if isinstance(x, torch.Tensor):
            x = x.detach().float().cpu().numpy()
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if x.ndim != 2 or (_n_eval is not None and x.shape[0] != _n_eval):
            fail(f"{name}: shape {x.shape}, expected [{_n_eval if _n_eval is not None else 'n_eval'}, D] "
                 f"(one row per row of task.eval_images / task.eval_tokens, in order)")
        arrays[name] = x
    out = run_dir()
    for name, x in arrays.items():
        fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=out)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, x, allow_pickle=False)
            os.replace(tmp, out / name)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    if _standalone_key is None:
        return None
    m = scoring.summarize(scoring.score_fold(out, _standalone_key))
    print(f"local score (standalone, not recorded): mean_rank {m['mean_rank']:.3f} of random "
          f"{m['random_mean_rank']:.1f}, R@1 i2t {m['i2t_r1']:.3f} t2i {m['t2i_r1']:.3f}"
          + (f", twin_acc {m['twin_acc']:.3f}" if "twin_acc" in m else ""), flush=True)
    return m


def content_order(rows: torch.Tensor) -> torch.Tensor:
    """The permutation that sorts `rows` by a hash of each row's bytes (ties: by position). It depends on
    the rows' content only, never on the order a run received them in: batching the eval set this way
    makes a row's numerics the same in every run, whatever its secret order."""
    arr = rows.numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    keys = [hashlib.blake2b(np.ascontiguousarray(arr[i]).tobytes(), digest_size=16).digest() for i in range(len(arr))]
    return torch.tensor(sorted(range(len(keys)), key=lambda i: (keys[i], i)), dtype=torch.long)


def time_budget(default: float) -> float:
    """$AR_TIME_BUDGET_S (this fold's training seconds) if set, else `default`."""
    v = os.environ.get("AR_TIME_BUDGET_S")
    if not v:
        return float(default)
    try:
        b = float(v)
    except ValueError:
        b = float("nan")
    if not (math.isfinite(b) and b > 0):
        fail(f"AR_TIME_BUDGET_S must be a positive number of seconds, got {v!r}", code=2)
    return b


def run_dir() -> Path:
    d = Path(os.environ.get("AR_RUN_DIR") or "run")
    d.mkdir(parents=True, exist_ok=True)
    return d


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{torch.get_num_threads()}threads"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; deterministic kernels where cheap (warn, not fail, otherwise)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: peak allocated memory; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1e6 if platform.system() != "Darwin" else kb / 1e9


def versions() -> dict:
    import open_clip
    return {"torch_version": torch.__version__, "open_clip_version": open_clip.__version__}


class EventLog:
    """Appends progress lines to RUN_DIR/events.jsonl, flushed; the first step always, then at
    most one line per EVENT_EVERY_S (the product reads them for progress)."""

    def __init__(self, run_dir: Path, every_s: float = EVENT_EVERY_S):
        self.path = Path(run_dir) / "events.jsonl"
        self.f = open(self.path, "a", buffering=1)
        self.every = every_s
        self.last = -math.inf
        self.t0 = time.time()

    def log(self, step: int, loss: float, force: bool = False, **extra) -> None:
        now = time.time()
        if force or now - self.last >= self.every:
            rec = {"t": now, "step": int(step), "loss": float(loss), "elapsed": round(now - self.t0, 3), **extra}
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()
            self.last = now

    def close(self) -> None:
        self.f.close()


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fail(msg: str, code: int = 1):
    """Print a clear failure line to stderr and exit non-zero (writes no embeddings, no metrics)."""
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)
