"""Per-fold tasks for sandboxed runs (trusted: the supervisor runs this outside the sandbox).

    python -m model.tasks build --data D [--cache-dir C] --image-size 64 --context-length 48 \
                                --folds K --split val|test [--test-annotations T] --out OUT

One task per fold of the frozen protocol (`model.data.make_folds`: k folds over pooled train+val,
twin pairs kept together; k = 1 is the original train/val split). `--split test`: one task whose
training pairs are all of train+val and whose eval pool is the test annotations.

    OUT/tasks.json                 {format, num_folds, split, image_size, context_length,
                                    data_fingerprint, n_train, n_eval (lists, per fold)}; written
                                    last: its presence marks the build complete
    OUT/fold-<k>/task/             mounted read-only into fold k's process as $AR_TASK_DIR
        train_images.npy           uint8 [N, 3, S, S]   the fold's training pairs
        train_tokens.npy           int64 [N, L]
        train_boxes.npy            float32 [N, M, 4]    normalised x1, y1, x2, y2
        train_box_valid.npy        bool [N, M]
        train_phrase_tokens.npy    int32 [N, M, L]
        train_twin.npy             int64 [N]            row of the twin inside the training set, or -1
        eval_images.npy            uint8 [E, 3, S, S]   the eval pool in a secret order A
        eval_tokens.npy            int64 [E, L]         the eval pool in an independent secret order B
        task.json                  {format, fold, num_folds, split, n_train, n_eval, image_size,
                                    context_length, data_fingerprint}
    OUT/fold-<k>/key.npz           never mounted: image_pool[r] / text_pool[r] = the pool row of
                                   eval row r; twin[p] = the twin of pool row p inside the pool, or -1

Nothing in task/ tells which eval image goes with which eval caption: no ids, no boxes or phrases
or twins of the eval pool, and the orders come from os.urandom (a known seed would let anyone
recompute the pairing from the two permutations). The build is atomic: a temp folder beside OUT
renamed into place; an existing complete OUT built with the same settings is left as it is.
Exit 0 with one JSON line (tasks.json plus "out"); exit 2 with one `error:` line on bad input.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .presets import CACHE_SIZE_BOUNDS

FORMAT = 1
MAX_FOLDS = 20
SPLITS = ("val", "test")
TASK_FILES = ("train_images.npy", "train_tokens.npy", "train_boxes.npy", "train_box_valid.npy",
              "train_phrase_tokens.npy", "train_twin.npy", "eval_images.npy", "eval_tokens.npy", "task.json")


class TaskError(ValueError):
    """Bad input for a task build (the message says what and how to fix it)."""


def _secret_permutation(rng: np.random.Generator, n: int, avoid: np.ndarray | None = None) -> np.ndarray:
    """A uniformly random permutation, redrawn (n >= 3) while it is the identity or equals `avoid`."""
    ident = np.arange(n)
    while True:
        p = rng.permutation(n)
        if n < 3 or not (np.array_equal(p, ident) or (avoid is not None and np.array_equal(p, avoid))):
            return p


def _check(image_size: int, context_length: int, num_folds: int, split: str) -> None:
    for name, v in (("image_size", image_size), ("context_length", context_length), ("folds", num_folds)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TaskError(f"{name} must be an integer, got {v!r}")
    for name, key, v in (("image_size", "IMAGE_SIZE", image_size), ("context_length", "CONTEXT_LENGTH", context_length)):
        lo, hi = CACHE_SIZE_BOUNDS[key]
        if not lo <= v <= hi:
            raise TaskError(f"{name} {v} is out of range ({lo} to {hi})")
    if not 1 <= num_folds <= MAX_FOLDS:
        raise TaskError(f"folds {num_folds} is out of range (1 to {MAX_FOLDS})")
    if split not in SPLITS:
        raise TaskError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def read_manifest(out_dir) -> dict | None:
    """OUT/tasks.json if the build there is complete (every fold's task.json and key.npz), else None."""
    out = Path(out_dir)
    try:
        meta = json.loads((out / "tasks.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("num_folds"), int):
        return None
    for k in range(meta["num_folds"]):
        fold = out / f"fold-{k}"
        if not (fold / "key.npz").is_file() or not all((fold / "task" / f).is_file() for f in TASK_FILES):
            return None
    return meta


def task_dir(out_dir, fold: int) -> Path:
    return Path(out_dir) / f"fold-{fold}" / "task"


def key_path(out_dir, fold: int) -> Path:
    return Path(out_dir) / f"fold-{fold}" / "key.npz"


def _save(path: Path, arr, mode: int = 0o644) -> None:
    np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
    os.chmod(path, mode)


def _twin_within(twin: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each row of the pool `rows`, the position of its twin inside the pool, or -1."""
    pos = np.full(len(twin), -1, np.int64)
    pos[rows] = np.arange(len(rows))
    t = twin[rows]
    return np.where(t >= 0, pos[np.maximum(t, 0)], -1).astype(np.int64)


def _write_fold(fold_dir: Path, train, train_rows: np.ndarray, pool, pool_rows: np.ndarray, info: dict,
                rng: np.random.Generator) -> None:
    tdir = fold_dir / "task"
    tdir.mkdir(parents=True)
    tr = train_rows
    _save(tdir / "train_images.npy", train.images.numpy()[tr])
    _save(tdir / "train_tokens.npy", train.tokens.numpy()[tr].astype(np.int64))
    _save(tdir / "train_boxes.npy", train.boxes.numpy()[tr])
    _save(tdir / "train_box_valid.npy", train.box_valid.numpy()[tr])
    _save(tdir / "train_phrase_tokens.npy", train.phrase_tokens.numpy()[tr])
    _save(tdir / "train_twin.npy", _twin_within(train.twin.numpy(), tr))
    m = len(pool_rows)
    a = _secret_permutation(rng, m)
    b = _secret_permutation(rng, m, avoid=a)
    _save(tdir / "eval_images.npy", pool.images.numpy()[pool_rows[a]])
    _save(tdir / "eval_tokens.npy", pool.tokens.numpy()[pool_rows[b]].astype(np.int64))
    (tdir / "task.json").write_text(json.dumps(info, indent=2) + "\n")
    os.chmod(tdir / "task.json", 0o644)
    np.savez(fold_dir / "key.npz", image_pool=a.astype(np.int64), text_pool=b.astype(np.int64),
             twin=_twin_within(pool.twin.numpy(), pool_rows), pool_rows=pool_rows.astype(np.int64))
    os.chmod(fold_dir / "key.npz", 0o600)
    for d in (tdir, fold_dir):
        os.chmod(d, 0o755)


def build_tasks(data_dir, cache_dir, *, image_size: int, context_length: int, num_folds: int, split: str = "val",
                test_annotations=None, out_dir, log=print) -> dict:
    """Build OUT (see the module docstring) and return its tasks.json; a no-op if OUT is already
    complete with the same settings (TaskError if it holds a different build)."""
    _check(image_size, context_length, num_folds, split)
    out = Path(out_dir).expanduser().absolute()
    want = {"split": split, "image_size": image_size, "context_length": context_length,
            "num_folds": num_folds if split == "val" else 1}

    def existing():
        meta = read_manifest(out)
        if meta is None:
            return None
        diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
        if diff:
            raise TaskError(f"{out} holds a different task build ({', '.join(f'{k} {a!r} != {b!r}' for k, (a, b) in diff.items())}); "
                            f"use another --out")
        return meta

    meta = existing()
    if meta is not None:
        log(f"tasks: {out} is complete, nothing to do")
        return meta

    from .data import load_pairs, make_folds  # import-graph: heavy (torch, only when building)
    data = load_pairs(image_size, context_length, data_dir=data_dir, cache_dir=cache_dir, log=log)
    if split == "val":
        try:
            plan = [(tr.numpy(), data, va.numpy()) for tr, va in make_folds(data, num_folds)]
        except ValueError as e:
            raise TaskError(str(e)) from None
    else:
        test = load_pairs(image_size, context_length, data_dir=data_dir, cache_dir=cache_dir, split="test",
                          annotations=test_annotations, log=log)
        plan = [(np.arange(len(data)), test, np.arange(len(test)))]
    for k, (tr, _, va) in enumerate(plan):
        if len(va) < 2 or len(tr) < 1:
            raise TaskError(f"fold {k}: {len(tr)} training and {len(va)} eval pairs; a fold needs >= 1 and >= 2 "
                            f"(fewer folds, or a larger dataset)")

    rng = np.random.default_rng(np.random.SeedSequence(int.from_bytes(os.urandom(32), "little")))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        meta = {"format": FORMAT, **want, "data_fingerprint": data.fingerprint, "n_train": [], "n_eval": []}
        if split == "test":
            meta["test_fingerprint"] = plan[0][1].fingerprint
        for k, (tr, pool, va) in enumerate(plan):
            info = {"format": FORMAT, "fold": k, "num_folds": len(plan), "split": split, "n_train": len(tr),
                    "n_eval": len(va), "image_size": image_size, "context_length": context_length,
                    "data_fingerprint": data.fingerprint}
            _write_fold(tmp / f"fold-{k}", data, tr, pool, va, info, rng)
            meta["n_train"].append(len(tr))
            meta["n_eval"].append(len(va))
            log(f"tasks: fold {k}: {len(tr)} training pairs, eval pool {len(va)}")
        (tmp / "tasks.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp / "tasks.json", 0o644)
        os.chmod(tmp, 0o755)
        if out.exists() and read_manifest(out) is None and not out.is_symlink():
            stale = Path(tempfile.mkdtemp(prefix=f".{out.name}.stale-", dir=out.parent))
            os.rename(out, stale / "old")          # an incomplete leftover: out of the way, then gone
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:                            # a concurrent build won the rename
            done = existing()
            if done is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return done
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"tasks: wrote {out} ({len(plan)} task(s), split {split})")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.tasks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the per-fold task folders and keys")
    b.add_argument("--data", required=True, help="dataset root")
    b.add_argument("--cache-dir", default=None, help="extra tensor-cache folder (as model.prepare --cache-dir)")
    b.add_argument("--image-size", type=int, required=True)
    b.add_argument("--context-length", type=int, required=True)
    b.add_argument("--folds", type=int, default=1, help="k of the fold protocol (split val; test builds one task)")
    b.add_argument("--split", default="val", choices=SPLITS)
    b.add_argument("--test-annotations", default=None, help="test .jsonl (default: the manifest's)")
    b.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    log = lambda *m: print(*m, file=sys.stderr, flush=True)  # noqa: E731  (stdout: the JSON line only)
    try:
        meta = build_tasks(a.data, a.cache_dir, image_size=a.image_size, context_length=a.context_length,
                           num_folds=a.folds, split=a.split, test_annotations=a.test_annotations, out_dir=a.out,
                           log=log)
    except (ValueError, OSError) as e:  # TaskError, ODVGError, make_folds
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps({**meta, "out": str(Path(a.out).expanduser().absolute())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
