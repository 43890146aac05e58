"""The data a run trains and is scored on, prepared by trusted code before it starts.

For the eCLIP scorer the supervisor builds, outside the sandbox with the installed harness
(`python -P -m model.tasks build ...`), the workspace's protocol at the snapshot's IMAGE_SIZE /
CONTEXT_LENGTH: each process's training pairs and the eval pools, decoded and resized, in their
canonical (paired) order. Only two bounded integers are taken from the snapshot. A build is reused
by every later run with the same sizes, protocol and annotation files (size and mtime); it also
fills the tensor cache (`cache_dir`). The build's time is not charged to the run's budget, and no
run ever sees a build.

Each run then gets its own deal (`deal_run`, model.tasks.deal_task): a task folder per process with
the eval set in two fresh secret orders, and a key per process under .autoresearch/keys/ (0600)
that exists only while the run is in flight: `discard_deal` removes both once the run is scored or
has ended otherwise. A run sees only its own task folder, read-only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from model.constants import parse_constants
from model.odvg import ODVGError, resolve_dataset  # torch-free
from model.presets import CACHE_SIZE_BOUNDS
from model.tasks import TaskError, deal_task, read_manifest  # numpy only
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


KEYS_SUBDIR = "keys"
LIVE_SUBDIR = "live"


def keys_root(lab: Lab) -> Path:
    """The keys of the runs in flight (one folder per run; hidden from runs, denied to agents)."""
    return lab.state_dir / KEYS_SUBDIR


def _protocol(lab: Lab, split: str) -> tuple[str, int]:
    """(protocol, k) of a build: the workspace's for the val split; the test split is one pool."""
    return (lab.config.protocol, lab.config.folds) if split == "val" else ("split", 1)


def _build_dir(lab: Lab, sizes: tuple[int, int], split: str, sig: dict) -> Path:
    protocol, folds = _protocol(lab, split)
    digest = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:12]
    return tasks_root(lab) / f"{split}-{sizes[0]}px-tok{sizes[1]}-{protocol}{folds}-{digest}"


def deal_run(lab: Lab, build: Path, label: str) -> list[tuple[Path, Path]]:
    """A fresh deal of `build` for one run (label: its id): [(task folder, key)] per process. Fresh
    secret orders every time; an older deal of the same label is discarded first."""
    discard_deal(lab, label)
    meta = read_manifest(build)
    if meta is None:
        raise TaskError(f"{build} is not a complete task build")
    keys = keys_root(lab) / label
    keys.mkdir(parents=True, mode=0o700)
    os.chmod(keys_root(lab), 0o700)
    out = []
    for k in range(meta["num_folds"]):
        task, key = tasks_root(lab) / LIVE_SUBDIR / label / f"fold-{k}", keys / f"fold-{k}.npz"
        deal_task(build, k, task, key)
        out.append((task, key))
    return out


def dealt_keys(lab: Lab, label: str) -> list[Path]:
    """The keys of a run's deal, in process order ([] when there is none)."""
    keys = keys_root(lab) / label
    found = sorted(keys.glob("fold-*.npz"), key=lambda p: int(p.stem.split("-")[1])) if keys.is_dir() else []
    return found


def discard_deal(lab: Lab, label: str) -> None:
    """Remove a run's task folders and keys (after scoring, or when it ended unscored)."""
    for d in (keys_root(lab) / label, tasks_root(lab) / LIVE_SUBDIR / label):
        shutil.rmtree(d, ignore_errors=True)


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
    return out if out is not None and read_manifest(out) is not None else None


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
    protocol, folds = _protocol(lab, split)
    out = _build_dir(lab, sizes, split, sig)
    what = f"{sizes[0]} px, context {sizes[1]}, {protocol} protocol, k = {folds}, {split}"
    if read_manifest(out) is not None:
        return out, f"ready ({what})"
    cdir = cache_dir(lab)
    cdir.mkdir(parents=True, exist_ok=True)
    tasks_root(lab).mkdir(parents=True, exist_ok=True)
    with open(tasks_root(lab) / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two supervisors asking for one build make it once
        if read_manifest(out) is not None:
            return out, f"ready ({what})"
        on_build(f"building the tasks ({what}) before the run starts")
        t0 = time.monotonic()
        argv = [sys.executable, "-P", "-m", "model.tasks", "build", "--data", str(data), "--cache-dir", str(cdir),
                "--image-size", str(sizes[0]), "--context-length", str(sizes[1]), "--folds", str(folds),
                "--protocol", protocol, "--split", split, "--out", str(out)]
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
        if proc.returncode != 0 or read_manifest(out) is None:
            tail = log_path.read_bytes()[-600:].decode(errors="replace").strip().splitlines()
            return None, f"not built (model.tasks exit {proc.returncode}: {tail[-1] if tail else 'no output'})"
        return out, f"built ({what}) in {time.monotonic() - t0:.1f} s"
