"""Verdicts against the current best, with the noise in view.

Seed groups (runs of one snapshot with other SEEDs, see tools/reruns.py): a group's objective is
the mean of its succeeded runs; its noise per run is max(seed spread, mean fold spread) - a lucky
small seed spread from a few runs never loosens the gate below the fold spread - and its std is
that / sqrt(n), the std of a mean of n runs. A seed rerun of the current best refines the best's
noise estimate; any other group is judged again as a whole, and kept (the rerun row, same
snapshot) when it now beats the best by the margin. A reproduction is never grouped nor judged.

The rule, shown with every verdict: a run is `improved` only when it beats the best by more than
`sigmas` times the combined spread sqrt(std_run^2 + std_best^2) (fold std, or seed std). Within
that margin it is `inconclusive`: rerun with other seeds before believing it. With no spread
measured at all, any strict improvement counts, and the reason says the noise is unknown.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    verdict: str          # baseline | improved | not_improved | inconclusive
    delta: float | None   # objective - best objective (negative is better when minimising)
    margin: float         # how far past the best a run must land to count
    keep: bool            # advance refs/autoresearch/best
    reason: str


def judge(*, objective: float, std: float | None, best: dict | None, direction: str, sigmas: float) -> Verdict:
    if best is None or best.get("objective") is None:
        return Verdict("baseline", None, 0.0, True, "first successful run: it is the baseline")
    delta = objective - best["objective"]
    gain = -delta if direction == "minimize" else delta  # > 0 means better
    noise = math.sqrt((std or 0.0) ** 2 + (best.get("objective_std") or 0.0) ** 2)
    margin = sigmas * noise
    rule = (f"improved needs a gain > {sigmas:g} sigma = {margin:.4g} "
            f"(sigma = sqrt(std_run^2 + std_best^2) = {noise:.4g}); gain = {gain:.4g}")
    if noise == 0.0:
        rule = f"no spread measured (single fold, single seed): any gain counts; gain = {gain:.4g}"
    if gain > margin:
        return Verdict("improved", delta, margin, True, rule)
    if gain > 0:
        return Verdict("inconclusive", delta, margin, False,
                       rule + ". Within the noise: rerun with other seeds (rerun_experiment) before keeping it.")
    return Verdict("not_improved", delta, margin, False, rule + ". Consider revert('best').")


# -- statistics ------------------------------------------------------------------------------
def group_stats(objectives: list[float], fold_stds: list[float | None]) -> dict:
    n = len(objectives)
    mean = statistics.fmean(objectives)
    seed_sd = statistics.stdev(objectives) if n >= 2 else None
    folds = [f for f in fold_stds if f is not None]
    fold_sd = statistics.fmean(folds) if folds else None
    per_run = max(seed_sd or 0.0, fold_sd or 0.0)
    return {"n": n, "mean": mean, "seed_std": seed_sd, "fold_std": fold_sd, "per_run": per_run,
            "std": per_run / math.sqrt(n)}


def describe_group(ids: list[int], g: dict) -> str:
    seed = "-" if g["seed_std"] is None else f"{g['seed_std']:.4g}"
    fold = "-" if g["fold_std"] is None else f"{g['fold_std']:.4g}"
    return (f"group of {g['n']} seed run(s) (#{', #'.join(map(str, ids))}): mean {g['mean']:.6g}; noise per run "
            f"max(seed spread {seed}, fold spread {fold}) = {g['per_run']:.4g}; std of the mean = "
            f"{g['per_run']:.4g}/sqrt({g['n']}) = {g['std']:.4g}")


# -- the verdict of a recorded run (runs.record calls it inside its transaction) ------------------
def _best_note(best: dict | None) -> str:
    if best and (best.get("group_n") or 0) >= 2:
        return (f" [best #{best['id']} is the mean of {best['group_n']} seed runs, std of the mean "
                f"{best['objective_std']:.4g}]")
    return ""


def verdict_fields(store, conn, exp: dict, objective: float, std: float | None, cfg) -> dict:
    """verdict, delta, kept, best_id_at_verdict, verdict_reason (+ group columns) for a succeeded run.
    Seed reruns also refresh the group columns of the other members through `conn`."""
    kind = exp.get("rerun_kind")
    if kind == "reproduce":
        ref = store.objective_of(conn, exp["rerun_of"])
        delta = None if ref is None else objective - ref
        reason = (f"reproduction of #{exp['rerun_of']}: objective {objective:.10g} vs {ref if ref is None else f'{ref:.10g}'}"
                  + ("" if delta is None else f" (difference {delta:+.3g})") + "; not judged against the best")
        return {"verdict": None, "delta": delta, "kept": 0, "best_id_at_verdict": None, "verdict_reason": reason}
    if kind == "seed":
        return _group_verdict(store, conn, exp, objective, std, cfg)
    best = store.best_for_verdict(conn)
    v = judge(objective=objective, std=std, best=best, direction=cfg.direction, sigmas=cfg.noise_sigma)
    return {"verdict": v.verdict, "delta": v.delta, "kept": int(v.keep), "best_id_at_verdict": best["id"] if best else None,
            "verdict_reason": v.reason + _best_note(best)}


def _group_verdict(store, conn, exp: dict, objective: float, std: float | None, cfg) -> dict:
    root = exp["rerun_of"]
    members = [*store.seed_group_results(conn, root, exp["id"]), (exp["id"], objective, std)]
    ids = [r[0] for r in members]
    g = group_stats([r[1] for r in members], [r[2] for r in members])
    store.set_group_stats(conn, [i for i in ids if i != exp["id"]], g["n"], g["mean"], g["std"])
    fields = {"group_n": g["n"], "group_objective": g["mean"], "group_std": g["std"]}
    text = describe_group(ids, g)
    best = store.best_for_verdict(conn)  # reads the refreshed group columns
    if best is not None and best["id"] in ids:
        fields.update(verdict=best["verdict"] or "baseline", delta=objective - best["objective"], kept=0,
                      best_id_at_verdict=best["id"],
                      verdict_reason=(f"seed rerun of the current best #{best['id']}: {text}. The best's noise "
                                      f"estimate is now {g['std']:.4g}; later runs need a gain > {cfg.noise_sigma:g} "
                                      f"sigma = {cfg.noise_sigma:g} * sqrt(std_run^2 + {g['std']:.4g}^2)."))
        return fields
    v = judge(objective=g["mean"], std=g["std"], best=best, direction=cfg.direction, sigmas=cfg.noise_sigma)
    fields.update(verdict=v.verdict, delta=v.delta, kept=int(v.keep), best_id_at_verdict=best["id"] if best else None,
                  verdict_reason=f"{text}; the group vs the best: {v.reason}{_best_note(best)}")
    if v.keep:
        fields["verdict_reason"] += f". Kept: this row (snapshot of #{root}) is the new best."
    return fields
