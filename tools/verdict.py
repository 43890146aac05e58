"""Verdicts against the current best, with the noise in view.

The rule, shown with every verdict: a run is `improved` only when it beats the best by more than
`sigmas` times the combined spread sqrt(std_run^2 + std_best^2) (fold std, or seed std). Within
that margin it is `inconclusive`: rerun with other seeds before believing it. With no spread
measured at all, any strict improvement counts, and the reason says the noise is unknown.
"""

from __future__ import annotations

import math
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
