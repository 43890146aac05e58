"""The trusted scorer: the fixed retrieval protocol on embeddings a run hands back (numpy only).

The supervisor imports this outside the sandbox (no torch). A run's sandboxed process gets its eval
set as images and captions in two independent secret orders, fresh for every run (`model.tasks`),
and writes `image_embeddings.npy` and `text_embeddings.npy` (one row per row of `eval_images` /
`eval_tokens`, in that order) into its run folder. `score_fold(run_dir, key_path)` checks both
files, un-permutes them with the run's key (never visible to the run) and computes the protocol's
metrics per eval pool; `summarize` averages the pools into the flat block the store records.

Protocol (the seed's prepare.py `evaluate`, on the pools of `model.tasks`; frozen):
  * each eval pool is scored on its own: the candidates of a query are its pool's rows (the run
    sees every pool's rows in one secret order and cannot tell which rows share a pool);
  * embeddings are L2-normalised here, whatever the run returns; similarity = cosine; image i's
    true match is caption i of the pool (and vice versa);
  * rank = 0-based position of the true match among all N candidates;
  * per direction (i2t = image -> texts, t2i = text -> images): mean rank, median rank, R@1/5/10
    (R@k = share of queries with rank < k);
  * `mean_rank` = (i2t mean rank + t2i mean rank) / 2; the objective is its mean over pools,
    reported with the (population, np.std) std across pools and the random baseline (N - 1) / 2.

Tie rule: rank = #(candidates strictly more similar than the true match)
                 + 0.5 * #(other candidates exactly as similar).
This is the expected rank under a random tie-break: it equals the seed's argsort rank when there
are no ties, and a collapsed model (all similarities equal) scores the random baseline (N - 1) / 2
instead of a perfect 0. Ranks can therefore be x.5; R@k uses rank < k.

twin_acc (when the pool has twin pairs): share of images whose similarity to their own caption is
greater than to their twin's caption (a tie counts 0.5); chance is 0.5.

Numbers: the run's embeddings are read as float32 (what `runtime.save_embeddings` writes),
normalised and compared in float32 like the in-process torch evaluation they replace.
"""
from __future__ import annotations

import errno
import math
import os
import stat

import numpy as np

from .pools import twin_within

DIRECTION_KEYS = ("mean_rank", "median_rank", "r1", "r5", "r10")
IMAGE_FILE = "image_embeddings.npy"
TEXT_FILE = "text_embeddings.npy"
MAX_DIM = 8192                 # embedding width bound
MAX_HEADER = 4096              # .npy header bytes (numpy writes < 200 for a 2-D float array)
ALLOWED_DTYPES = ("float16", "float32", "float64")
FIX = "Fix: embed every row of task.eval_images and task.eval_tokens, in order, and save both with " \
      "runtime.save_embeddings(image_emb, text_emb)"


class ScoringError(ValueError):
    """A run's embeddings cannot be scored; the message names the file, what is wrong and the fix."""


# ---------------------------------------------------------------------------------------------
# The protocol on paired embeddings (row i of img pairs with row i of txt)

def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """torch.nn.functional.normalize: x / max(||x||, 1e-12), in float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32))
    return x / np.maximum(norm, np.float32(1e-12))[:, None]


def tie_ranks(sim) -> np.ndarray:
    """sim [Q, C] with the true match of query q at column q -> float64 ranks [Q] (tie rule)."""
    sim = np.asarray(sim, dtype=np.float32)
    q = sim.shape[0]
    true = sim[np.arange(q), np.arange(q)][:, None]
    greater = (sim > true).sum(1).astype(np.float64)
    ties = (sim == true).sum(1).astype(np.float64) - 1.0  # minus the true match itself
    return greater + 0.5 * ties


def direction_metrics(ranks) -> dict:
    r = np.asarray(ranks, dtype=np.float64)
    return {
        "mean_rank": float(r.mean()),
        "median_rank": float(np.median(r)),
        "r1": float((r < 1).mean()),
        "r5": float((r < 5).mean()),
        "r10": float((r < 10).mean()),
    }


def _ranks_chunked(q: np.ndarray, c: np.ndarray, chunk: int) -> np.ndarray:
    """tie_ranks(q @ c.T) without holding more than `chunk` rows of the similarity matrix."""
    out = np.empty(q.shape[0], np.float64)
    for s in range(0, q.shape[0], chunk):
        sim = q[s:s + chunk] @ c.T
        rows = np.arange(sim.shape[0])
        true = sim[rows, rows + s][:, None]
        out[s:s + chunk] = (sim > true).sum(1) + 0.5 * ((sim == true).sum(1) - 1.0)
    return out


def retrieval_metrics(img, txt, twin=None) -> dict:
    """img, txt [N, D] (normalised here); twin [N] index of each row's twin in the pool or -1."""
    img = _l2_normalize(img)
    txt = _l2_normalize(txt)
    n = img.shape[0]
    chunk = max(1, (1 << 26) // max(1, n))     # <= 256 MB of float32 similarities at a time
    out = {"n_val": int(n), "random_mean_rank": (n - 1) / 2.0}
    i2t = direction_metrics(_ranks_chunked(img, txt, chunk))
    t2i = direction_metrics(_ranks_chunked(txt, img, chunk))
    out["mean_rank"] = (i2t["mean_rank"] + t2i["mean_rank"]) / 2.0
    for k in DIRECTION_KEYS:
        out[f"i2t_{k}"] = i2t[k]
    for k in DIRECTION_KEYS:
        out[f"t2i_{k}"] = t2i[k]
    if twin is not None:
        twin = np.asarray(twin, dtype=np.int64)
        rows = np.nonzero(twin >= 0)[0]
        if len(rows):
            own = np.einsum("ij,ij->i", img[rows], txt[rows], dtype=np.float32)
            other = np.einsum("ij,ij->i", img[rows], txt[twin[rows]], dtype=np.float32)
            out["twin_acc"] = float(((own > other) + 0.5 * (own == other)).mean())
    return out


def summarize(folds: list[dict]) -> dict:
    """Average the pools' metrics into the flat block (mean_rank_std across pools, objective = mean_rank).
    The list keeps its historical name `folds`: one entry per eval pool."""
    if not folds:
        raise ValueError("no folds to summarize")
    out = {}
    mr = [f["mean_rank"] for f in folds]
    out["objective"] = float(np.mean(mr))
    out["objective_name"] = "mean_rank"
    out["direction"] = "minimize"
    out["mean_rank"] = float(np.mean(mr))
    out["mean_rank_std"] = float(np.std(mr)) if len(mr) > 1 else 0.0
    out["random_mean_rank"] = float(np.mean([f["random_mean_rank"] for f in folds]))
    out["n_val"] = int(round(float(np.mean([f["n_val"] for f in folds]))))
    for d in ("i2t", "t2i"):
        for k in DIRECTION_KEYS:
            out[f"{d}_{k}"] = float(np.mean([f[f"{d}_{k}"] for f in folds]))
    if all("twin_acc" in f for f in folds):
        out["twin_acc"] = float(np.mean([f["twin_acc"] for f in folds]))
    out["folds"] = [dict(f) for f in folds]
    for v in _numbers(out):
        if not math.isfinite(v):
            raise ValueError(f"non-finite metric in {out}")
    return out


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield float(obj)


# ---------------------------------------------------------------------------------------------
# Reading what an untrusted run wrote

def read_embeddings(run_dir, name: str, n_rows: int) -> np.ndarray:
    """The float32 array [n_rows, D] in run_dir/name, checked before anything is allocated:
    no symlink, a regular file, a small .npy header parsed first, a float dtype, 2-D with
    n_rows rows and 1 <= D <= MAX_DIM, exactly the bytes the header promises, all finite."""
    try:
        dfd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise ScoringError(f"{name}: the run folder {run_dir} cannot be opened ({e.strerror}). {FIX}") from None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        except FileNotFoundError:
            raise ScoringError(f"{name}: missing, the run wrote no {name}. {FIX}") from None
        except OSError as e:
            what = "a symbolic link" if e.errno in (errno.ELOOP, errno.EMLINK) else f"unreadable ({e.strerror})"
            raise ScoringError(f"{name}: {what}; it must be a regular file written by the run. {FIX}") from None
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ScoringError(f"{name}: not a regular file; it must be a .npy file written by the run. {FIX}")
        limit = MAX_HEADER + 64 + n_rows * MAX_DIM * 8
        if st.st_size > limit:
            raise ScoringError(f"{name}: {st.st_size} bytes, more than any [{n_rows}, <= {MAX_DIM}] float array "
                               f"needs ({limit}). {FIX}")
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, OSError, SyntaxError, EOFError) as e:
            raise ScoringError(f"{name}: not a readable .npy file ({e}). {FIX}") from None
        if dtype.hasobject or dtype.name not in ALLOWED_DTYPES:
            raise ScoringError(f"{name}: dtype {dtype} is not allowed (only {', '.join(ALLOWED_DTYPES)}; "
                               f"no objects, no pickles). {FIX}")
        if len(shape) != 2:
            raise ScoringError(f"{name}: shape {tuple(shape)}, expected 2-D [{n_rows}, D]. {FIX}")
        rows, dim = shape
        if rows != n_rows:
            raise ScoringError(f"{name}: {rows} rows, the eval pool has {n_rows}. {FIX}")
        if not 1 <= dim <= MAX_DIM:
            raise ScoringError(f"{name}: embedding width {dim}, must be 1 to {MAX_DIM}. {FIX}")
        nbytes = rows * dim * dtype.itemsize
        if st.st_size - f.tell() != nbytes:
            raise ScoringError(f"{name}: {st.st_size - f.tell()} data bytes, the header promises {nbytes} "
                               f"({rows} x {dim} {dtype}). {FIX}")
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise ScoringError(f"{name}: truncated ({len(buf)} of {nbytes} data bytes). {FIX}")
    arr = np.frombuffer(buf, dtype=dtype)
    arr = arr.reshape((dim, rows)).T if fortran else arr.reshape((rows, dim))
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        r = int(np.nonzero(bad.any(1))[0][0])
        raise ScoringError(f"{name}: {int(bad.any(1).sum())} row(s) with NaN or inf (first: row {r}; float32). "
                           f"Fix: check the model for divergence; every value must be finite")
    return arr


def read_key(key_path) -> dict:
    """A run's key (trusted, written by model.tasks.deal_task): image_pool, text_pool, twin, pool (int64 [M])."""
    with np.load(key_path, allow_pickle=False) as z:
        key = {k: np.asarray(z[k], dtype=np.int64) for k in ("image_pool", "text_pool", "twin")}
        key["pool"] = np.asarray(z["pool"], dtype=np.int64) if "pool" in z.files else np.zeros(len(key["twin"]), np.int64)
    m = len(key["twin"])
    for k in ("image_pool", "text_pool"):
        if len(key[k]) != m or not np.array_equal(np.sort(key[k]), np.arange(m)):
            raise ValueError(f"{key_path}: {k} is not a permutation of the {m} eval rows")
    if len(key["pool"]) != m:
        raise ValueError(f"{key_path}: pool has {len(key['pool'])} rows, not {m}")
    return key


def score_fold(output_dir, key_path) -> list[dict]:
    """The protocol's metrics of each eval pool of one process, from the run's embeddings (ScoringError
    when malformed): one dict per pool, in pool order, each with its "pool" number."""
    key = read_key(key_path)
    n = len(key["twin"])
    img = read_embeddings(output_dir, IMAGE_FILE, n)
    txt = read_embeddings(output_dir, TEXT_FILE, n)
    if img.shape[1] != txt.shape[1]:
        raise ScoringError(f"{IMAGE_FILE}, {TEXT_FILE}: widths {img.shape[1]} and {txt.shape[1]} differ; both "
                           f"towers must embed into the same space. Fix: project both to one width")
    img_c = np.empty_like(img)
    txt_c = np.empty_like(txt)
    img_c[key["image_pool"]] = img        # row r of eval_images is canonical row image_pool[r]
    txt_c[key["text_pool"]] = txt
    out = []
    for p in np.unique(key["pool"]):
        rows = np.nonzero(key["pool"] == p)[0]
        twin = twin_within(key["twin"], rows)
        m = retrieval_metrics(img_c[rows], txt_c[rows], twin if (twin >= 0).any() else None)
        out.append({"pool": int(p), **m})
    return out
