"""How many trials does `suggest` (Optuna TPE, as tools/hpo.py configures it) need to reach what
random search finds in 60? On a cheap surrogate of the eCLIP tuning task, over many seeds.

    python -m bench.suggest_vs_random [--seeds 50] [--budget 60] [--noise 4]

The surrogate is a deterministic function of the `seed` preset's default search space
(tools/hpo.default_search_space): LR (log), BATCH_SIZE, EMBED_DIM, EXPERT_PROB, WARMUP_STEPS ->
val mean_rank (lower is better), shaped after the seed run's findings (docs: shared research
notes): a log-LR bowl whose optimum moves with the batch (sqrt scaling) and that collapses above
~1e-3, a bigger projection helping (-13 from 128 to 512), expert prob best near 0.8 (~5 points),
warm-up best near 160 of 800 steps (~3 points), plus Gaussian run noise (sd --noise, default 4,
like the seed's seed-to-seed spread). Each sampler sees noisy values; it is scored by the TRUE value
of its incumbent (the trial it would keep), so luck in the noise does not count.

Figure: target = median over seeds of random search's incumbent after `budget` trials; for each
seed, the trials TPE needs until its incumbent reaches the target (budget + 1 when it never
does); report the median over seeds (and random search's own, for scale). Runs in seconds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from tools import hpo  # noqa: E402
from tools.config import SearchParam  # noqa: E402
from bench.common import record  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def surrogate(p: dict) -> float:
    """True val mean_rank of one configuration (no noise)."""
    lr, batch, dim = math.log10(p["LR"]), p["BATCH_SIZE"], p["EMBED_DIM"]
    best_lr = math.log10(2e-4) + 0.5 * math.log10(batch / 64)           # sqrt batch scaling
    d = lr - best_lr
    rank = 155.0 + 55.0 * d * d                                         # the LR bowl
    if lr > -3.0:                                                       # too hot: training collapses
        rank += 260.0 * (lr + 3.0) ** 1.5
    rank += {128: 13.0, 256: 5.5, 512: 0.0}[dim]                        # bigger projection helps
    rank += {32: 6.0, 48: 2.5, 64: 0.0, 96: 1.5}[batch]                 # 64 is the sweet spot
    rank += 7.0 * (p["EXPERT_PROB"] - 0.8) ** 2 / 0.64                  # expert path: ~5 points at p=0
    rank += 3.0 * ((p["WARMUP_STEPS"] - 160) / 240) ** 2                # warm-up: ~3 points
    return rank


def run(sampler, dists, budget: int, noise: float, rng: np.random.Generator) -> list[float]:
    """The true value of the incumbent (best noisy observation so far) after each trial."""
    study = optuna.create_study(direction="minimize", sampler=sampler)
    best_obs, incumbent, curve = math.inf, math.inf, []
    for _ in range(budget):
        trial = study.ask(dists)
        true = surrogate(trial.params)
        obs = true + rng.normal(0.0, noise)
        study.tell(trial, obs)
        if obs < best_obs:
            best_obs, incumbent = obs, true
        curve.append(incumbent)
    return curve


def trials_to(curve: list[float], target: float) -> int:
    return next((i + 1 for i, v in enumerate(curve) if v <= target), len(curve) + 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--noise", type=float, default=4.0)
    ap.add_argument("--gp-seeds", type=int, default=12,
                    help="seeds for the optional GP sampler (hpo_sampler = \"gp\"; ~10 s a seed); 0 = skip")
    ap.add_argument("--gp-budget", type=int, default=30, help="GP trials per seed (it is slow per trial)")
    args = ap.parse_args(argv)
    space = {k: SearchParam(**v) for k, v in hpo.default_search_space("seed").items()}
    dists = hpo.distributions(space)
    t0 = time.perf_counter()
    curves = {"random": [], "tpe": []}
    for seed in range(args.seeds):
        curves["random"].append(run(hpo.make_sampler("random", seed), dists, args.budget, args.noise,
                                    np.random.default_rng(10_000 + seed)))
        curves["tpe"].append(run(hpo.make_sampler("tpe", seed), dists, args.budget, args.noise,
                                 np.random.default_rng(20_000 + seed)))
    target = statistics.median(c[-1] for c in curves["random"])
    print(f"surrogate eCLIP tuning task, 5-D space of the 'seed' preset, noise sd {args.noise:g}, "
          f"{args.seeds} seeds, budget {args.budget}; TPE as suggest() configures it "
          f"(n_startup_trials={hpo.N_STARTUP_TRIALS})")
    print(f"target = median random best@{args.budget} (true value of the incumbent) = {target:.2f} "
          f"(optimum 155.00)")
    rows = []
    for name, cs in curves.items():
        need = [trials_to(c, target) for c in cs]
        reached = sum(n <= args.budget for n in need)
        rows.append((name, statistics.median(need), reached, statistics.median(c[min(19, len(c) - 1)] for c in cs),
                     statistics.median(c[-1] for c in cs)))
    print(f"{'sampler':8} {'median trials to target':>24} {'seeds reaching it':>18} {'median best@20':>15} "
          f"{'median best@' + str(args.budget):>15}")
    for name, med, reached, b20, bN in rows:
        print(f"{name:8} {med:>24g} {f'{reached}/{args.seeds}':>18} {b20:>15.2f} {bN:>15.2f}")
    if args.gp_seeds:
        need = []
        for seed in range(args.gp_seeds):
            c = run(hpo.make_sampler("gp", seed), dists, args.gp_budget, args.noise, np.random.default_rng(30_000 + seed))
            need.append(trials_to(c, target))
        print(f"{'gp':8} {statistics.median(need):>24g} {f'{sum(n <= args.gp_budget for n in need)}/{args.gp_seeds}':>18} "
              f"{'':>15} {'':>15}   (budget {args.gp_budget}; hpo_sampler = \"gp\", runs in a child: needs torch+scipy)")
    tpe = rows[1][1]
    print(f"suggest (TPE) reaches random search's best-of-{args.budget} in a median of {tpe:g} trials "
          f"({args.budget / tpe:.1f}x fewer); target <= 20: {'met' if tpe <= 20 else 'NOT met'} "
          f"[{time.perf_counter() - t0:.1f} s]")
    record("suggest_vs_random", vars(args), {"target": target, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
