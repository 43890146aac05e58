"""The fixed evaluation protocol (frozen harness; experiments must not change it).

Protocol (the seed's prepare.py `evaluate`):
  * k folds over pooled train+val (`model.data.make_folds`; k = 1 means the original train/val
    split); a model is trained per fold and evaluated on that fold's held-out pool;
  * embeddings are L2-normalised here, whatever the experiment returns; no heatmaps at eval;
  * similarity = cosine, image i's true match is caption i (and vice versa);
  * rank = 0-based position of the true match among all N candidates;
  * per direction (i2t = image -> texts, t2i = text -> images): mean rank, median rank, R@1/5/10
    (R@k = share of queries with rank < k);
  * `mean_rank` = (i2t mean rank + t2i mean rank) / 2; the run's objective is its mean over
    folds, reported with the (population, np.std) std across folds and the random baseline
    (N - 1) / 2 beside it.

Tie rule: rank = #(candidates strictly more similar than the true match)
                 + 0.5 * #(other candidates exactly as similar).
This is the expected rank under a random tie-break, so it equals the seed's argsort rank when
there are no ties, and a collapsed model (all similarities equal) scores the random baseline
(N - 1) / 2 instead of a perfect 0. Ranks can therefore be x.5; R@k uses rank < k.

twin_acc (when the data has twin pairs in the pool): share of images whose similarity to their
own caption is greater than to their twin's caption (a tie counts 0.5); chance is 0.5.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DIRECTION_KEYS = ("mean_rank", "median_rank", "r1", "r5", "r10")


def tie_ranks(sim: torch.Tensor) -> torch.Tensor:
    """sim [Q, C] with the true match of query q at column q -> float64 ranks [Q] (tie rule above)."""
    sim = sim.float()
    q = sim.shape[0]
    true = sim[torch.arange(q), torch.arange(q)][:, None]
    greater = (sim > true).sum(1).double()
    ties = (sim == true).sum(1).double() - 1.0  # minus the true match itself
    return greater + 0.5 * ties


def direction_metrics(ranks: torch.Tensor) -> dict:
    r = ranks.double().cpu().numpy()
    return {
        "mean_rank": float(r.mean()),
        "median_rank": float(np.median(r)),
        "r1": float((r < 1).mean()),
        "r5": float((r < 5).mean()),
        "r10": float((r < 10).mean()),
    }


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, twin: torch.Tensor | None = None) -> dict:
    """img, txt [N, D] (normalised here); twin [N] index of each row's twin in the pool or -1."""
    img = F.normalize(img.float(), dim=-1)
    txt = F.normalize(txt.float(), dim=-1)
    n = img.shape[0]
    sim = img @ txt.T
    out = {"n_val": int(n), "random_mean_rank": (n - 1) / 2.0}
    i2t = direction_metrics(tie_ranks(sim))
    t2i = direction_metrics(tie_ranks(sim.T.contiguous()))
    out["mean_rank"] = (i2t["mean_rank"] + t2i["mean_rank"]) / 2.0
    for k in DIRECTION_KEYS:
        out[f"i2t_{k}"] = i2t[k]
    for k in DIRECTION_KEYS:
        out[f"t2i_{k}"] = t2i[k]
    if twin is not None:
        twin = twin.to(sim.device)
        has = twin >= 0
        if has.any():
            rows = torch.arange(n, device=sim.device)[has]
            own = sim[rows, rows]
            other = sim[rows, twin[has]]
            acc = (own > other).double() + 0.5 * (own == other).double()
            out["twin_acc"] = float(acc.mean())
    return out


@torch.no_grad()
def embed(fn, inputs: torch.Tensor, batch_size: int, device, prep=None) -> torch.Tensor:
    """Run `fn` over `inputs` in batches (no grad), returning float32 CPU embeddings."""
    outs = []
    for s in range(0, inputs.shape[0], batch_size):
        x = inputs[s:s + batch_size].to(device)
        if prep is not None:
            x = prep(x)
        outs.append(fn(x).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0, 1)


@torch.no_grad()
def evaluate(encode_image, encode_text, data, idx: torch.Tensor, device, batch_size: int = 256) -> dict:
    """Retrieval metrics of a model on the pool `data[idx]` (the fixed protocol).

    encode_image(float images [B, 3, S, S], normalised) -> [B, D]; encode_text(tokens [B, L]) -> [B, D].
    """
    from .data import normalize_images  # local: keeps import order simple for the template
    idx = idx.cpu()
    img = embed(encode_image, data.images[idx], batch_size, device, prep=normalize_images)
    txt = embed(encode_text, data.tokens[idx], batch_size, device)
    twin = data.twin_within(idx) if data.has_twins else None
    return retrieval_metrics(img, txt, twin)


def summarize(folds: list[dict]) -> dict:
    """Average fold metrics into the flat metrics.json block (mean_rank_std across folds)."""
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
