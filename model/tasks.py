"""Task builds and per-run task folders for sandboxed runs (trusted: the supervisor runs this
outside the sandbox).

    python -m model.tasks build --data D [--cache-dir C] --image-size 64 --context-length 48 \
                                --folds K [--protocol split|kfold-pooled] --split val|test \
                                [--test-annotations T] --out OUT

Two protocols (`protocol` in autoresearch.toml; the agent cannot change it):

  split (default, leak-free)  one training process on the training split; the validation pairs are
                              cut into K disjoint eval pools (twin pairs kept together, a fixed
                              seed). No pair of any scored pool is ever in any training set.
  kfold-pooled (LEAKY)        the seed's protocol: K folds over pooled train+val, one process per
                              fold. Fold j trains on the other folds' eval pools, paired, so a fold
                              can hand its neighbours' answers to them (through the agent, which
                              reads the logs). Only for comparing with the seed's own numbers.

`--split test`: one process whose training pairs are all of train+val, one pool: the test pairs.

A *build* (cached, reused by every run with the same sizes, protocol and data) holds the expensive
part, decoded and resized, in the canonical pool order; it is never mounted into a run:

    OUT/tasks.json                 {format, protocol, num_folds (processes), num_pools, split,
                                    image_size, context_length, data_fingerprint, n_train, n_eval
                                    (lists, per process)}; written last: it marks the build complete
    OUT/fold-<k>/train_*.npy       the process's training pairs (see TASK_FILES)
    OUT/fold-<k>/pool/             eval_images.npy, eval_tokens.npy (paired, canonical order),
                                   eval_twin.npy (twin row inside the eval set, or -1),
                                   eval_pool.npy (the pool of each row)

Each run gets its own *deal* (`deal_task`): a task folder with the training files (hard links) and
the eval set as images and captions in two fresh secret orders drawn from os.urandom, and a key
apart. Nothing learned from one run's score about row positions says anything about the next run.

    TASK/                          mounted read-only into the process as $AR_TASK_DIR
        train_images.npy           uint8 [N, 3, S, S]
        train_tokens.npy           int64 [N, L]
        train_boxes.npy            float32 [N, M, 4]    normalised x1, y1, x2, y2
        train_box_valid.npy        bool [N, M]
        train_phrase_tokens.npy    int32 [N, M, L]
        train_twin.npy             int64 [N]            row of the twin inside the training set, or -1
        eval_images.npy            uint8 [E, 3, S, S]   every pool's images in a secret order A
        eval_tokens.npy            int64 [E, L]         every pool's captions in an independent order B
        task.json                  {format, fold, num_folds, num_pools, protocol, split, n_train,
                                    n_eval, image_size, context_length, data_fingerprint}
    KEY (.npz, never mounted)      image_pool[r] / text_pool[r] = the canonical row of eval row r;
                                   twin[c] = the twin of canonical row c, or -1; pool[c] = its pool

Nothing in the task tells which eval image goes with which caption, nor which rows share a pool.
Builds are atomic: a temp folder beside OUT renamed into place; an existing complete OUT built with
the same settings is left as it is. Exit 0 with one JSON line (tasks.json plus "out"); exit 2 with
one `error:` line on bad input.
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

from .pools import make_pools, twin_within
from .presets import CACHE_SIZE_BOUNDS

FORMAT = 2
MAX_FOLDS = 20
SPLITS = ("val", "test")
PROTOCOLS = ("split", "kfold-pooled")
LEAKY_PROTOCOLS = ("kfold-pooled",)
TRAIN_FILES = ("train_images.npy", "train_tokens.npy", "train_boxes.npy", "train_box_valid.npy",
               "train_phrase_tokens.npy", "train_twin.npy")
POOL_FILES = ("eval_images.npy", "eval_tokens.npy", "eval_twin.npy", "eval_pool.npy")
TASK_FILES = (*TRAIN_FILES, "eval_images.npy", "eval_tokens.npy", "task.json")


class TaskError(ValueError):
    """Bad input for a task build (the message says what and how to fix it)."""


def processes(protocol: str, folds: int, split: str = "val") -> int:
    """How many training processes a run of this protocol has (kfold-pooled: one per fold)."""
    return folds if (protocol == "kfold-pooled" and split == "val") else 1


def _secret_permutation(rng: np.random.Generator, n: int, avoid: np.ndarray | None = None) -> np.ndarray:
    """A uniformly random permutation, redrawn (n >= 3) while it is the identity or equals `avoid`."""
    ident = np.arange(n)
    while True:
        p = rng.permutation(n)
        if n < 3 or not (np.array_equal(p, ident) or (avoid is not None and np.array_equal(p, avoid))):
            return p


def fresh_rng() -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(os.urandom(32), "little")))


def _check(image_size: int, context_length: int, num_folds: int, split: str, protocol: str) -> None:
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
    if protocol not in PROTOCOLS:
        raise TaskError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def read_manifest(out_dir) -> dict | None:
    """OUT/tasks.json if the build there is complete (every process's files), else None."""
    out = Path(out_dir)
    try:
        meta = json.loads((out / "tasks.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("num_folds"), int):
        return None
    for k in range(meta["num_folds"]):
        fold = out / f"fold-{k}"
        if not all((fold / f).is_file() for f in TRAIN_FILES) or not all((fold / "pool" / f).is_file() for f in POOL_FILES):
            return None
    return meta


def _save(path: Path, arr, mode: int = 0o644) -> None:
    np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
    os.chmod(path, mode)


def _write_fold(fold_dir: Path, train, train_rows: np.ndarray, pool_data, pool_rows: np.ndarray,
                pool_ids: np.ndarray) -> None:
    fold_dir.mkdir(parents=True)
    tr = train_rows
    _save(fold_dir / "train_images.npy", train.images.numpy()[tr])
    _save(fold_dir / "train_tokens.npy", train.tokens.numpy()[tr].astype(np.int64))
    _save(fold_dir / "train_boxes.npy", train.boxes.numpy()[tr])
    _save(fold_dir / "train_box_valid.npy", train.box_valid.numpy()[tr])
    _save(fold_dir / "train_phrase_tokens.npy", train.phrase_tokens.numpy()[tr])
    _save(fold_dir / "train_twin.npy", twin_within(train.twin.numpy(), tr))
    # the canonical eval set, grouped by pool: paired, so never mounted anywhere
    order = np.argsort(pool_ids, kind="stable")
    rows, ids = pool_rows[order], pool_ids[order]
    pdir = fold_dir / "pool"
    pdir.mkdir(mode=0o700)
    twin = twin_within(pool_data.twin.numpy(), rows)
    twin = np.where((twin >= 0) & (ids[np.maximum(twin, 0)] == ids), twin, -1)  # a twin counts inside its pool
    _save(pdir / "eval_images.npy", pool_data.images.numpy()[rows], 0o600)
    _save(pdir / "eval_tokens.npy", pool_data.tokens.numpy()[rows].astype(np.int64), 0o600)
    _save(pdir / "eval_twin.npy", twin, 0o600)
    _save(pdir / "eval_pool.npy", ids.astype(np.int64), 0o600)
    os.chmod(fold_dir, 0o755)


def _plan(data, test, num_folds: int, split: str, protocol: str):
    """[(train rows, eval data, eval rows, global pool id of each eval row)] per process."""
    from .data import make_folds  # import-graph: heavy (torch, only when building)
    if split == "test":
        return [(np.arange(len(data)), test, np.arange(len(test)), np.zeros(len(test), np.int64))]
    if protocol == "kfold-pooled":
        try:
            folds = make_folds(data, num_folds)
        except ValueError as e:
            raise TaskError(str(e)) from None
        return [(tr.numpy(), data, va.numpy(), np.full(len(va), k, np.int64)) for k, (tr, va) in enumerate(folds)]
    split_col = data.split.numpy()
    tr, va = np.nonzero(split_col == 0)[0], np.nonzero(split_col == 1)[0]
    if len(va) == 0:
        raise TaskError("the dataset has no val records: the split protocol scores on the validation pairs")
    return [(tr, data, va, make_pools(data.twin.numpy(), va, num_folds))]


def build_tasks(data_dir, cache_dir, *, image_size: int, context_length: int, num_folds: int, split: str = "val",
                protocol: str = "split", test_annotations=None, out_dir, log=print) -> dict:
    """Build OUT (see the module docstring) and return its tasks.json; a no-op if OUT is already
    complete with the same settings (TaskError if it holds a different build)."""
    _check(image_size, context_length, num_folds, split, protocol)
    out = Path(out_dir).expanduser().absolute()
    pools = num_folds if split == "val" else 1
    want = {"split": split, "protocol": protocol, "image_size": image_size, "context_length": context_length,
            "num_folds": processes(protocol, num_folds, split), "num_pools": pools}

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

    from .data import load_pairs  # import-graph: heavy (torch, only when building)
    data = load_pairs(image_size, context_length, data_dir=data_dir, cache_dir=cache_dir, log=log)
    test = None
    if split == "test":
        test = load_pairs(image_size, context_length, data_dir=data_dir, cache_dir=cache_dir, split="test",
                          annotations=test_annotations, log=log)
    plan = _plan(data, test, num_folds, split, protocol)
    for k, (tr, _, va, ids) in enumerate(plan):
        wanted = range(pools) if (split == "val" and protocol == "split") else np.unique(ids)
        sizes = [int((ids == p).sum()) for p in wanted]
        if len(tr) < 1 or min(sizes) < 2:
            raise TaskError(f"fold {k}: {len(tr)} training pairs and eval pools of {', '.join(map(str, sizes))}; "
                            f"every process needs >= 1 training pair and every pool >= 2 (fewer folds, or a larger "
                            f"dataset)")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        meta = {"format": FORMAT, **want, "data_fingerprint": data.fingerprint, "n_train": [], "n_eval": [],
                "pool_sizes": [int(sum((ids == p).sum() for *_, ids in plan)) for p in range(pools)]}
        if test is not None:
            meta["test_fingerprint"] = test.fingerprint
        for k, (tr, pool_data, va, ids) in enumerate(plan):
            _write_fold(tmp / f"fold-{k}", data, tr, pool_data, va, ids)
            meta["n_train"].append(len(tr))
            meta["n_eval"].append(len(va))
            log(f"tasks: fold {k}: {len(tr)} training pairs, eval set {len(va)}")
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
    log(f"tasks: wrote {out} ({len(plan)} process(es), {pools} pool(s), protocol {protocol}, split {split})")
    return meta


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:                                # another filesystem: a copy
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)


def deal_task(build_dir, fold: int, task_out, key_out, rng: np.random.Generator | None = None) -> dict:
    """One run's task folder for process `fold` of a complete build: the training files linked, the
    eval set in two fresh secret orders; the key (the only pairing) written to `key_out` (0600).
    Returns the task.json written."""
    build = Path(build_dir)
    meta = read_manifest(build)
    if meta is None:
        raise TaskError(f"{build} is not a complete task build")
    if not 0 <= fold < meta["num_folds"]:
        raise TaskError(f"fold {fold} is out of range (the build has {meta['num_folds']})")
    rng = rng if rng is not None else fresh_rng()
    src = build / f"fold-{fold}"
    task = Path(task_out)
    task.mkdir(parents=True)
    for name in TRAIN_FILES:
        _link_or_copy(src / name, task / name)
    pool = src / "pool"
    images = np.load(pool / "eval_images.npy", mmap_mode="r", allow_pickle=False)
    tokens = np.load(pool / "eval_tokens.npy", mmap_mode="r", allow_pickle=False)
    m = len(tokens)
    a = _secret_permutation(rng, m)
    b = _secret_permutation(rng, m, avoid=a)
    _save(task / "eval_images.npy", images[a])
    _save(task / "eval_tokens.npy", tokens[b])
    info = {"format": FORMAT, "fold": fold, "num_folds": meta["num_folds"], "num_pools": meta["num_pools"],
            "protocol": meta["protocol"], "split": meta["split"], "n_train": meta["n_train"][fold], "n_eval": m,
            "image_size": meta["image_size"], "context_length": meta["context_length"],
            "data_fingerprint": meta["data_fingerprint"]}
    (task / "task.json").write_text(json.dumps(info, indent=2) + "\n")
    os.chmod(task / "task.json", 0o644)
    os.chmod(task, 0o755)
    key = Path(key_out)
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        np.savez(f, image_pool=a.astype(np.int64), text_pool=b.astype(np.int64),
                 twin=np.load(pool / "eval_twin.npy", allow_pickle=False),
                 pool=np.load(pool / "eval_pool.npy", allow_pickle=False))
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.tasks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the cached task data (never mounted into a run)")
    b.add_argument("--data", required=True, help="dataset root")
    b.add_argument("--cache-dir", default=None, help="extra tensor-cache folder (as model.prepare --cache-dir)")
    b.add_argument("--image-size", type=int, required=True)
    b.add_argument("--context-length", type=int, required=True)
    b.add_argument("--folds", type=int, default=1, help="eval pools (split) or folds (kfold-pooled); test: one")
    b.add_argument("--protocol", default="split", choices=PROTOCOLS)
    b.add_argument("--split", default="val", choices=SPLITS)
    b.add_argument("--test-annotations", default=None, help="test .jsonl (default: the manifest's)")
    b.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    log = lambda *m: print(*m, file=sys.stderr, flush=True)  # noqa: E731  (stdout: the JSON line only)
    try:
        meta = build_tasks(a.data, a.cache_dir, image_size=a.image_size, context_length=a.context_length,
                           num_folds=a.folds, split=a.split, protocol=a.protocol,
                           test_annotations=a.test_annotations, out_dir=a.out, log=log)
    except (ValueError, OSError) as e:  # TaskError, ODVGError, make_folds
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps({**meta, "out": str(Path(a.out).expanduser().absolute())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
