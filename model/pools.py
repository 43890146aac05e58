"""Twin groups and eval pools (numpy only): who may share a pool, and which pool each row is in.

Used by the task builder (model.tasks), the fold split (model.data.make_folds) and the scorer
(model.scoring), so the three agree on twins and groups by construction.
"""
from __future__ import annotations

import numpy as np

POOL_SEED = 42          # fixed: every run is scored on the same pools (only the row orders are fresh)


def twin_within(twin: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each row of the set `rows`, the position of its twin inside the set, or -1 (numpy twin of
    PairData.twin_within; the scorer maps a pool's twins with it too)."""
    pos = np.full(len(twin), -1, np.int64)
    pos[rows] = np.arange(len(rows))
    t = twin[rows]
    return np.where(t >= 0, pos[np.maximum(t, 0)], -1).astype(np.int64)


def make_pools(twin: np.ndarray, rows: np.ndarray, k: int, seed: int = POOL_SEED) -> np.ndarray:
    """The pool (0..k-1) of each of `rows`: twin groups shuffled with a fixed seed and dealt round-robin,
    so pools differ in size by at most one group and a twin pair never straddles two pools."""
    rows = np.asarray(rows, np.int64)
    inside = twin_within(np.asarray(twin, np.int64), rows)
    group = np.where(inside >= 0, np.minimum(np.arange(len(rows)), inside), np.arange(len(rows)))
    groups = np.unique(group)
    order = np.random.default_rng(seed).permutation(groups)
    pool_of_group = {int(g): i % k for i, g in enumerate(order)}
    return np.array([pool_of_group[int(g)] for g in group], np.int64)
