"""model/eval.py (the numpy protocol of model.scoring): the frozen retrieval protocol against a brute-force
reference (ties included)."""
import numpy as np
import pytest
import torch

from model.eval import retrieval_metrics, summarize, tie_ranks


def brute_rank(sim, q):
    """Reference tie rule: #strictly better + 0.5 * #other candidates with an equal score."""
    true = sim[q][q]
    better = sum(1 for j in range(len(sim[q])) if sim[q][j] > true)
    ties = sum(1 for j in range(len(sim[q])) if j != q and sim[q][j] == true)
    return better + 0.5 * ties


def brute_metrics(sim):
    out = {}
    for d, m in (("i2t", sim), ("t2i", [list(c) for c in zip(*sim)])):
        r = np.array([brute_rank(m, q) for q in range(len(m))])
        out[f"{d}_mean_rank"] = r.mean()
        out[f"{d}_median_rank"] = float(np.median(r))
        for k in (1, 5, 10):
            out[f"{d}_r{k}"] = float((r < k).mean())
    out["mean_rank"] = (out["i2t_mean_rank"] + out["t2i_mean_rank"]) / 2
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_match_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n = 37
    # quantised similarities -> many exact ties
    sim = (torch.randint(0, 6, (n, n), generator=g).float() / 5.0)
    sim[torch.arange(n), torch.arange(n)] += (torch.rand(n, generator=g) < 0.5).float() * 0.2
    s = sim.tolist()
    ref = [brute_rank(s, q) for q in range(n)]
    assert tie_ranks(sim).tolist() == ref


def test_metrics_match_brute_force_and_are_normalised():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(-2, 3, (23, 4), generator=g).float()   # integer vectors: ties after normalisation
    txt = torch.randint(-2, 3, (23, 4), generator=g).float()
    m = retrieval_metrics(img * 7.0, txt)                         # scale must not matter (L2-normalised)
    a = torch.nn.functional.normalize(img, dim=-1)
    b = torch.nn.functional.normalize(txt, dim=-1)
    ref = brute_metrics((a @ b.T).tolist())
    for k, v in ref.items():
        assert m[k] == pytest.approx(v), k
    assert m["n_val"] == 23 and m["random_mean_rank"] == 11.0


def test_extremes_perfect_collapsed_and_reversed():
    n = 10
    eye = torch.eye(n)
    m = retrieval_metrics(eye, eye)
    assert m["mean_rank"] == 0 and m["i2t_r1"] == 1 and m["t2i_median_rank"] == 0
    same = torch.ones(n, 3)
    m = retrieval_metrics(same, same)               # a collapsed model scores the random baseline
    assert m["mean_rank"] == pytest.approx((n - 1) / 2) and m["i2t_r1"] == 0
    # seed-style 0-based: true match second best everywhere -> rank 1
    img = eye
    txt = torch.roll(eye, 1, 0) * 1.0 + eye * 0.5   # caption i is most similar to image i+1... then i
    m = retrieval_metrics(img, txt)
    assert m["i2t_mean_rank"] == pytest.approx(1.0) and m["i2t_r1"] == 0 and m["i2t_r5"] == 1


def test_twin_acc():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    twin = torch.tensor([1, 0, 3, 2])
    m = retrieval_metrics(img, txt, twin)
    # row0: own 1 vs twin 1 -> tie 0.5; row1: own 0 vs twin 0 -> 0.5; row2: 1 vs 0 -> 1; row3: 0 vs 1 -> 0
    assert m["twin_acc"] == pytest.approx(0.5)
    assert "twin_acc" not in retrieval_metrics(img, txt, torch.full((4,), -1))


def test_summarize_folds():
    f = [retrieval_metrics(torch.eye(5), torch.eye(5)), retrieval_metrics(torch.ones(5, 2), torch.ones(5, 2))]
    s = summarize(f)
    assert s["objective"] == s["mean_rank"] == pytest.approx(1.0)
    assert s["mean_rank_std"] == pytest.approx(np.std([0.0, 2.0]))
    assert s["objective_name"] == "mean_rank" and s["direction"] == "minimize"
    assert s["random_mean_rank"] == 2.0 and s["n_val"] == 5 and len(s["folds"]) == 2
    assert summarize(f[:1])["mean_rank_std"] == 0.0
