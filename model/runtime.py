"""The run contract between a child `train.py` and the product (frozen harness).

Environment (all optional; the template runs standalone without any of them):
  AR_RUN_DIR         writable output folder (default ./run): events.jsonl, metrics.json or
                     test_metrics.json, model.pt (only with SAVE_CHECKPOINT).
  AR_DATA_DIR        dataset root, read-only (default: the synthetic dataset in the user cache).
  AR_CACHE_DIR       extra tensor-cache folder, read and (if writable) written.
  AR_PARAMS          path to a JSON object overriding UPPERCASE constants of train.py.
  AR_TIME_BUDGET_S   training-time budget in seconds; overrides TIME_BUDGET.
  AR_EVAL_SPLIT      `val` (default: the k-fold protocol) or `test` (train on all train+val,
                     evaluate once on the test annotations, write test_metrics.json).
  AR_TEST_ANNOTATIONS  test annotations (.jsonl) for AR_EVAL_SPLIT=test (default: the manifest's).

Outputs:
  events.jsonl   one JSON line per progress report, flushed: {"t", "step", "loss", "elapsed",
                 "fold"}; at the first step and then at least every EVENT_EVERY_S of training.
  metrics.json   the flat block from `model.eval.summarize` plus run facts; written to a temp file
                 and renamed, so a reader never sees half a file.
"""
from __future__ import annotations

import json
import math
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

EVENT_EVERY_S = 1.0
EVAL_SPLITS = ("val", "test")
_SCALARS = (bool, int, float, str, type(None))


class ParamsError(ValueError):
    pass


def hyperparameters(namespace: dict) -> dict:
    """The UPPERCASE scalar constants of a module namespace (the editable hyperparameters)."""
    return {k: v for k, v in namespace.items()
            if k.isupper() and not k.startswith("_") and isinstance(v, _SCALARS)}


def _coerce(name: str, current, new):
    if current is None:  # a constant defaulting to None takes any scalar
        return new
    if isinstance(current, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(current, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
    elif isinstance(current, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            if not math.isfinite(float(new)):
                raise ParamsError(f"AR_PARAMS: {name} must be finite, got {new!r}")
            return float(new)
    elif isinstance(current, str):
        if isinstance(new, str):
            return new
    raise ParamsError(f"AR_PARAMS: {name} must be {type(current).__name__} like its default "
                      f"{current!r}, got {type(new).__name__} {new!r}")


def apply_params(namespace: dict, path: str | None = None) -> dict:
    """Override constants in `namespace` from the JSON object at `path` (default $AR_PARAMS).

    For the template: a bad file, an unknown key or a wrong type ends the run (exit 2) with one
    `FAIL:` line naming the key and the valid choices. Returns the overrides applied.
    """
    try:
        return load_params(namespace, path)
    except ParamsError as e:
        fail(str(e), code=2)


def load_params(namespace: dict, path: str | None = None) -> dict:
    """apply_params, raising ParamsError instead of exiting."""
    path = path if path is not None else os.environ.get("AR_PARAMS")
    if not path:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as e:
        raise ParamsError(f"AR_PARAMS: cannot read {path} ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ParamsError(f"AR_PARAMS: {path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"AR_PARAMS: {path} must hold a JSON object, got {type(raw).__name__}")
    known = hyperparameters(namespace)
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise ParamsError(f"AR_PARAMS: unknown parameter(s) {unknown}; valid: {sorted(known)}")
    out = {k: _coerce(k, known[k], v) for k, v in raw.items()}
    namespace.update(out)
    return out


def time_budget(default: float) -> float:
    """$AR_TIME_BUDGET_S (seconds of training, all folds together) if set, else `default`."""
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


def eval_split() -> str:
    s = os.environ.get("AR_EVAL_SPLIT") or "val"
    if s not in EVAL_SPLITS:
        fail(f"AR_EVAL_SPLIT must be one of {list(EVAL_SPLITS)}, got {s!r}", code=2)
    return s


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


def json_safe(params: dict) -> dict:
    return {k: v for k, v in params.items() if isinstance(v, _SCALARS)}


def fail(msg: str, code: int = 1):
    """Print a clear failure line to stderr and exit non-zero (never writes metrics.json)."""
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)
