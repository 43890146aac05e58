"""The data a run trains and is scored on, prepared by trusted code before it starts.

For the eCLIP scorer the supervisor builds, outside the sandbox with the installed harness
(`python -P -m model.tasks build ...`), one task folder per fold of the workspace's protocol at
the snapshot's IMAGE_SIZE / CONTEXT_LENGTH: the fold's training pairs and its eval pool as
images and captions in two secret orders, with the pairing (key.npz) kept apart. Only two bounded
integers are taken from the snapshot. A build is reused by every later run with the same sizes,
folds and annotation files (size and mtime); it also fills the tensor cache (`cache_dir`) that
makes it fast. Runs see only their own fold's task folder, read-only; the dataset, the cache, the
other folds and the keys are hidden. The build's time is not charged to the run's budget.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from model.constants import parse_constants
from model.odvg import ODVGError, resolve_dataset  # torch-free
from model.presets import CACHE_SIZE_BOUNDS
from tools.lab import Lab

CACHE_SUBDIR = "cache"
MAX_TRAIN_PY_BYTES = 1_000_000
BUILD_TIMEOUT_S = 3600.0


def cache_dir(lab: Lab) -> Path:
    """Where warmed caches live: `cache_dir` in autoresearch.toml, else .autoresearch/cache."""
    return lab.resolve(lab.config.cache_dir) if lab.config.cache_dir else lab.state_dir / CACHE_SUBDIR


def requested_sizes(train_py: Path) -> tuple[int, int] | None:
    """(IMAGE_SIZE, CONTEXT_LENGTH) as module-level integer literals of train.py, else None."""
    try:
        if train_py.stat().st_size > MAX_TRAIN_PY_BYTES:
            return None
        constants = parse_constants(train_py.read_bytes().decode(), drop_reassigned=True)
    except (OSError, SyntaxError, ValueError):  # ValueError covers a bad encoding and NUL bytes
        return None
    sizes = []
    for name, (lo, hi) in CACHE_SIZE_BOUNDS.items():
        v = constants.get(name)
        if type(v) is not int or not lo <= v <= hi:  # a bool is not a size
            return None
        sizes.append(v)
    return sizes[0], sizes[1]


def _signature(data: Path) -> dict | None:
    """What the cache depends on, cheaply: the train/val annotation files' size and mtime."""
    try:
        layout = resolve_dataset(data)
        stats = {f: f.stat() for f in (layout.train, layout.val)}
        return {str(f): [st.st_size, st.st_mtime_ns] for f, st in stats.items()}
    except (ODVGError, OSError):
        return None


TASKS_SUBDIR = "tasks"


def tasks_root(lab: Lab) -> Path:
    """Where the per-fold task folders live (hidden from every run but for its own fold's task/)."""
    return lab.state_dir / TASKS_SUBDIR


def _build_dir(lab: Lab, sizes: tuple[int, int], split: str, sig: dict) -> Path:
    folds = lab.config.folds if split == "val" else 1
    digest = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:12]
    return tasks_root(lab) / f"{split}-{sizes[0]}px-tok{sizes[1]}-k{folds}-{digest}"


def _task_signature(lab: Lab, split: str) -> dict | None:
    data = lab.data_dir()
    sig = _signature(data) if data is not None else None
    if sig is not None and split == "test":
        test = lab.test_annotations()
        if test is None or not test.is_file():
            return None
        st = test.stat()
        sig[str(test)] = [st.st_size, st.st_mtime_ns]
    return sig


def built_tasks(lab: Lab, sizes: tuple[int, int], *, split: str = "val") -> Path | None:
    """The complete task build for these sizes (None when there is none): the scorer's keys."""
    sig = _task_signature(lab, split)
    out = _build_dir(lab, sizes, split, sig) if sig is not None else None
    return out if out is not None and (out / "tasks.json").is_file() else None


def ensure_tasks(lab: Lab, sizes: tuple[int, int], *, split: str, log_path: Path, should_cancel=lambda: False,
                 on_build=lambda line: None) -> tuple[Path | None, str]:
    """The task build for these sizes, the workspace's folds and `split` (built if missing);
    (its folder or None, one line saying what happened)."""
    data = lab.data_dir()
    if data is None:
        return None, "no dataset: `data` is unset in autoresearch.toml"
    test = lab.test_annotations() if split == "test" else None
    if split == "test" and (test is None or not test.is_file()):
        return None, f"no test annotations ({test or 'test_annotations is unset'})"
    sig = _task_signature(lab, split)
    if sig is None:
        return None, f"no dataset layout under {data}"
    folds = lab.config.folds if split == "val" else 1
    out = _build_dir(lab, sizes, split, sig)
    what = f"{sizes[0]} px, context {sizes[1]}, {folds} fold(s), {split}"
    if (out / "tasks.json").is_file():
        return out, f"ready ({what})"
    cdir = cache_dir(lab)
    cdir.mkdir(parents=True, exist_ok=True)
    tasks_root(lab).mkdir(parents=True, exist_ok=True)
    with open(tasks_root(lab) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two supervisors asking for one build make it once
        if (out / "tasks.json").is_file():
            return out, f"ready ({what})"
        on_build(f"building the tasks ({what}) before the run starts")
        t0 = time.monotonic()
        argv = [sys.executable, "-P", "-m", "model.tasks", "build", "--data", str(data), "--cache-dir", str(cdir),
                "--image-size", str(sizes[0]), "--context-length", str(sizes[1]), "--folds", str(folds),
                "--split", split, "--out", str(out)]
        if test is not None:
            argv += ["--test-annotations", str(test)]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(cdir),
                                    start_new_session=True)
            while proc.poll() is None:
                if should_cancel() or time.monotonic() - t0 > BUILD_TIMEOUT_S:
                    proc.kill()
                    proc.wait()
                    return None, "not built (cancelled or over time)"
                time.sleep(0.2)
        if proc.returncode != 0 or not (out / "tasks.json").is_file():
            tail = log_path.read_bytes()[-600:].decode(errors="replace").strip().splitlines()
            return None, f"not built (model.tasks exit {proc.returncode}: {tail[-1] if tail else 'no output'})"
        return out, f"built ({what}) in {time.monotonic() - t0:.1f} s"
