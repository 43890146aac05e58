"""The tensor cache runs read: warmed by trusted code before a run, read-only inside it.

A run's data load is near instant only when the uint8 cache for its IMAGE_SIZE and CONTEXT_LENGTH
exists (model/data.py). Runs may not write it: a run that could would poison what later runs train
and are validated on. So before launching a run whose snapshot asks for a size that has no cache
yet, the supervisor builds it outside the sandbox with the installed harness
(`python -P -m model.prepare --no-generate --cache-dir C ...`), taking only two bounded integers from
the snapshot's train.py. A marker per (size, context length, annotation files' size and mtime)
skips the child once the cache is warm. The build's time is not charged to the run's budget.
"""

from __future__ import annotations

import fcntl
import json
import re
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
_FINGERPRINT = re.compile(r"[0-9a-f]{8,64}")  # model.data.fingerprint: hex


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


def warm(lab: Lab, code_dir: Path, log_path: Path, should_cancel=lambda: False, on_build=lambda line: None) -> str:
    """Make sure the cache for this snapshot's sizes exists; one line saying what happened."""
    data = lab.data_dir()
    if data is None or not lab.config.warm_cache:
        return "skipped (no dataset)" if data is None else "skipped (warm_cache = false)"
    sizes = requested_sizes(code_dir / "train.py")
    if sizes is None:
        return "skipped (train.py sets no literal IMAGE_SIZE and CONTEXT_LENGTH)"
    sig = _signature(data)
    if sig is None:
        return "skipped (no dataset layout under data)"
    cdir = cache_dir(lab)
    cdir.mkdir(parents=True, exist_ok=True)
    marker = cdir / f"warm-{sizes[0]}px-tok{sizes[1]}.json"
    with open(cdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two supervisors warming one size build it once
        if _is_warm(marker, sig, sizes, [data / ".cache", cdir]):
            return f"warm ({sizes[0]} px, context {sizes[1]})"
        on_build(f"building the data cache ({sizes[0]} px, context {sizes[1]}) before the run starts")
        t0 = time.monotonic()
        argv = [sys.executable, "-P", "-m", "model.prepare", "--data", str(data), "--no-generate",
                "--cache-dir", str(cdir), "--image-size", str(sizes[0]), "--context-length", str(sizes[1])]
        info_path = log_path.with_name(log_path.name + ".json")
        with open(log_path, "ab") as err, open(info_path, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=str(cdir),
                                    start_new_session=True)
            while proc.poll() is None:
                if should_cancel() or time.monotonic() - t0 > BUILD_TIMEOUT_S:
                    proc.kill()
                    proc.wait()
                    return "not built (cancelled or over time); the run loads the data uncached"
                time.sleep(0.2)
        try:
            fingerprint = json.loads(info_path.read_text().strip().splitlines()[-1])["fingerprint"]
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            fingerprint = None
        if proc.returncode != 0 or not _is_fingerprint(fingerprint):
            return f"not built (model.prepare exit {proc.returncode}, see {log_path.name}); the run loads uncached"
        marker.write_text(json.dumps({"signature": sig, "fingerprint": fingerprint}))
        return f"built ({sizes[0]} px, context {sizes[1]}) in {time.monotonic() - t0:.1f} s"


def _is_warm(marker: Path, sig: dict, sizes: tuple[int, int], dirs: list[Path]) -> bool:
    """The marker matches the annotations and both cache files are still there."""
    try:
        m = json.loads(marker.read_text())
        fp = m["fingerprint"]
        if m["signature"] != sig or not _is_fingerprint(fp):
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    names = [f"{fp}-{sizes[0]}px-", f"{fp}-tok{sizes[1]}-"]
    return all(any(next(d.glob(n + "v*.npz"), None) for d in dirs if d.is_dir()) for n in names)


def _is_fingerprint(value) -> bool:
    """A cache fingerprint as model.prepare prints it (hex; it becomes part of a glob)."""
    return isinstance(value, str) and _FINGERPRINT.fullmatch(value) is not None
