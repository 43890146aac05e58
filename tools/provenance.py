"""What an experiment ran with: the snapshot's constants, seeds, environment and data fingerprint.

No torch here: package versions come from installed metadata, constants from parsing the
snapshot's train.py (model.constants, never exec). `runs.submit` stores `provenance(...)` in
config_json, so every experiment records its commit, the constants its snapshot ran with (the
tuned params are written into the snapshot, the seed included), a data fingerprint, package
versions, host and (once it ran) device and sandbox backend.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from model.constants import parse_constants
from model.odvg import ODVGError, resolve_dataset
from tools.config import threads_per_run
from tools.guard import test_paths

PACKAGES = ("numpy", "torch", "torchvision", "open_clip_torch", "pillow", "scipy", "eclip-autoresearch")
MAX_FINGERPRINT_FILES = 20_000


def main_file(lab) -> str | None:
    """The editable file the command runs (its constants are the hyperparameters)."""
    editable = list(lab.config.editable)
    for arg in lab.config.command[1:]:
        if arg in editable:
            return arg
    if "train.py" in editable:
        return "train.py"
    return next((p for p in editable if p.endswith(".py")), None)


def snapshot_constants(lab, commit: str | None) -> dict:
    """The constants of the main file in a snapshot ({} when it has none)."""
    rel = main_file(lab)
    if not commit or rel is None:
        return {}
    data = lab.workspace.read_snapshot_file(commit, rel)
    return parse_constants(data) if data else {}


@functools.lru_cache(maxsize=1)
def environment() -> dict:
    """Interpreter, platform and the versions of the packages that shape a result."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "executable": sys.executable, "platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "packages": versions}


def data_fingerprint(root: Path | None, exclude: list[Path] = ()) -> str | None:
    """A cheap fingerprint of the dataset, taken at every submit: for an ODVG dataset the stat of its
    train/val annotation files and of the image folders (a folder's mtime moves when a file is
    added, removed or renamed), not a walk over its 10k+ images; otherwise sha256 over every file's
    path, size and mtime. (The task build records a content fingerprint too.) The held-out split
    never enters it."""
    if root is None or not Path(root).is_dir():
        return None
    root = Path(root)
    try:
        layout = resolve_dataset(root)
        parts = [layout.train, layout.val, *sorted({p.parent for p in (layout.train, layout.val)}), layout.images]
        h = hashlib.sha256()
        for p in parts:
            st = os.stat(p)
            h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "stat-sha256:" + h.hexdigest()[:32]
    except (ODVGError, OSError):
        pass
    skip = [str(Path(p)) for p in exclude]
    h = hashlib.sha256()
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if any(dirpath == s or dirpath.startswith(s + os.sep) for s in skip):
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if p in skip:
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            count += 1
            if count >= MAX_FINGERPRINT_FILES:
                return "listing-sha256:" + h.hexdigest()[:32] + f" (first {count} files)"
    return "listing-sha256:" + h.hexdigest()[:32]


def provenance(lab, commit: str | None) -> dict:
    """The record stored with each experiment at submit time (the held-out split never enters the
    fingerprint)."""
    constants = snapshot_constants(lab, commit)
    return {"commit": commit, "main_file": main_file(lab), "constants": _json_safe(constants),
            "seed": constants.get("SEED"), "data_fingerprint": data_fingerprint(lab.data_dir(), test_paths(lab)),
            "environment": environment(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads_per_run": threads_per_run(lab.config)}


def _json_safe(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        else:
            out[k] = repr(v)[:200]
    return out
