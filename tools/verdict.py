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
measured at all (one fold, one seed, no reruns) a gain is `inconclusive` too, with the fix: the
noise is unknown, so no gain can be told from it.

Comparable runs only: under the step budget (the default `budget_rule = "steps"`) a run that
stopped on time before its step budget is `incomparable`: never improved, never kept, never in a
seed group's statistics. Under `budget_rule = "time"` (karpathy's rule: fixed seconds, steps
vary) every finished run is compared, and the reason says so.

When reruns change the best's group, the best is judged again against the run it replaced
(`rejudge_best`): a best that no longer clears the margin stops being best (its rows are no
longer kept, the best ref moves back), and `best_changes` records why.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    verdict: str          # baseline | improved | not_improved | inconclusive | incomparable (| improved?, set by
                          # verdict_fields: a gain with no noise of its own, until its seed reruns confirm it)
    delta: float | None   # objective - best objective (negative is better when minimising)
    margin: float         # how far past the best a run must land to count
    keep: bool            # advance refs/autoresearch/best
    reason: str


NO_NOISE = "no noise estimate"


def noise_unknown(reason: str | None) -> bool:
    """Whether a verdict was reached with no spread measured at all (judge's rule says so)."""
    return bool(reason) and NO_NOISE in reason


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
        rule = f"{NO_NOISE} (one fold, one seed, no reruns): gain = {gain:.4g} cannot be told from noise"
        if gain > 0:
            return Verdict("inconclusive", delta, margin, False,
                           rule + f". Fix: rerun_experiment({best.get('id', '<best id>')}, seeds=2) measures the best's "
                                  "noise; then rerun this one the same way.")
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


def shown_truncated(verdict, stopped_by, steps, max_steps) -> bool:
    """How tables and plots tell a truncated run: judged incomparable, or stopped by time short of its
    step budget (a reproduction is never judged, so its stop reason alone says it)."""
    return verdict == "incomparable" or (stopped_by == "time" and not (steps and max_steps and steps >= max_steps))


def stop_note(steps, max_steps, stopped_by) -> str | None:
    """'stopped by time at step 12/300' for a run that did not finish its step budget, else None."""
    if stopped_by == "time" or (steps is not None and max_steps is not None and steps < max_steps):
        return f"stopped by {stopped_by or 'time'} at step {steps if steps is not None else '?'}/{max_steps or '?'}"
    return None


def compute_note(steps, max_steps, duration_s) -> str:
    """'300/300 steps (claimed by the run), 41 s (measured by the harness)': the compute one run used."""
    st = f"{steps if steps is not None else '?'}/{max_steps if max_steps is not None else '?'} steps (claimed by the run)"
    secs = "? s" if duration_s is None else f"{duration_s:.0f} s"
    return f"{st}, {secs} (measured by the harness)"


def _compute_line(compute: str | None, best: dict | None) -> str:
    if not compute:
        return ""
    theirs = "" if best is None else (f"; best #{best['id']}: "
                                      f"{compute_note(best.get('steps'), best.get('max_steps'), best.get('duration_s'))}")
    return f" Compute: this run {compute}{theirs}."


def _incomparable(store, conn, objective, reason: str) -> dict:
    best = store.best_for_verdict(conn)
    delta = None if best is None else objective - best["objective"]
    return {"verdict": "incomparable", "delta": delta, "kept": 0, "best_id_at_verdict": best["id"] if best else None,
            "verdict_reason": reason}


def verdict_fields(store, conn, exp: dict, objective: float, std: float | None, cfg, stop: str | None = None,
                   blocked: str | None = None, contradiction: str | None = None, compute: str | None = None) -> dict:
    """verdict, delta, kept, best_id_at_verdict, verdict_reason (+ group columns) for a succeeded run.
    Seed reruns also refresh the group columns of the other members through `conn`. `stop`: the
    run did not finish its step budget (stop_note). `blocked`: the integrity events the harness
    observed (never kept). `contradiction`: the run's claims contradict the harness's facts.
    `compute`: this run's compute_note, shown beside the best's."""
    kind = exp.get("rerun_kind")
    if blocked and kind != "reproduce":
        return _incomparable(store, conn, objective, f"{blocked}: a run with an integrity event is never kept or best. "
                                                     "Fix: remove what did it from train.py and run again.")
    if contradiction and cfg.budget_rule == "steps" and kind != "reproduce":
        return _incomparable(store, conn, objective, f"{contradiction}, so it is not compared. Fix: report steps and "
                                                     "stopped_by as they were; lower the step budget constant if the "
                                                     "time budget cuts the run.")
    if stop and cfg.budget_rule == "steps" and kind != "reproduce":
        return _incomparable(store, conn, objective,
                             f"{stop}: it trained less than its step budget, so it is not compared (the step "
                             "budget decides; the time budget is a safety net). Fix: a human raises time_budget_s "
                             "in autoresearch.toml, or lower MAX_STEPS, or run when the machine is quieter")
    if kind == "reproduce":
        ref = store.objective_of(conn, exp["rerun_of"])
        delta = None if ref is None else objective - ref
        reason = (f"reproduction of #{exp['rerun_of']}: objective {objective:.10g} vs {ref if ref is None else f'{ref:.10g}'}"
                  + ("" if delta is None else f" (difference {delta:+.3g})") + "; not judged against the best")
        return {"verdict": None, "delta": delta, "kept": 0, "best_id_at_verdict": None, "verdict_reason": reason}
    best = store.best_for_verdict(conn)
    if cfg.budget_rule == "time" and best is not None and best.get("time_budget_s") is not None \
            and exp.get("time_budget_s") is not None and float(exp["time_budget_s"]) != float(best["time_budget_s"]):
        return _incomparable(store, conn, objective,
                             f"time budget {float(exp['time_budget_s']):g} s differs from the best's "
                             f"{float(best['time_budget_s']):g} s (#{best['id']}): under budget_rule = \"time\" runs are "
                             "compared at equal seconds only. Fix: run with the workspace's time_budget_s (leave it "
                             "out); after a human changed it, rerun the best at the new budget first.")
    if kind == "seed":
        fields = _group_verdict(store, conn, exp, objective, std, cfg)
        fields["verdict_reason"] += _compute_line(compute, best)
        return fields
    v = judge(objective=objective, std=std, best=best, direction=cfg.direction, sigmas=cfg.noise_sigma)
    time_rule = " (time-fair budget: runs are compared at equal seconds, steps vary)" if cfg.budget_rule == "time" else ""
    fields = {"verdict": v.verdict, "delta": v.delta, "kept": int(v.keep), "best_id_at_verdict": best["id"] if best else None,
              "verdict_reason": v.reason + _best_note(best) + time_rule}
    if v.verdict == "improved" and not std and cfg.confirm_seeds > 0:
        # one run, no spread of its own: a lucky seed looks exactly like this (issue 21)
        fields.update(verdict=PROVISIONAL, kept=0, verdict_reason=fields["verdict_reason"] + (
            f". Provisional: one run with no noise estimate of its own (one fold, one seed); {cfg.confirm_seeds} "
            f"confirmation seed rerun(s) are queued, and only if the group of them still beats the best does it "
            "become the best; the best is unchanged meanwhile."))
    fields["verdict_reason"] += _compute_line(compute, best)
    return fields


PROVISIONAL = "improved?"


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
        fields.update(verdict=None, delta=objective - best["objective"], kept=0,
                      best_id_at_verdict=best["id"],
                      verdict_reason=(f"seed rerun of the current best #{best['id']} (delta measured against the "
                                      f"group's mean): {text}. The best's noise estimate is now {g['std']:.4g}; later "
                                      f"runs need a gain > {cfg.noise_sigma:g} sigma = {cfg.noise_sigma:g} * "
                                      f"sqrt(std_run^2 + {g['std']:.4g}^2)."))
        demoted = rejudge_best(store, conn, best["id"], ids, g, cfg)
        if demoted:
            fields["verdict_reason"] += " " + demoted
        return fields
    v = judge(objective=g["mean"], std=g["std"], best=best, direction=cfg.direction, sigmas=cfg.noise_sigma)
    fields.update(verdict=v.verdict, delta=v.delta, kept=int(v.keep), best_id_at_verdict=best["id"] if best else None,
                  verdict_reason=(f"{text}; the group vs the best #{best['id'] if best else '-'} (delta = group mean "
                                  f"minus the best's): {v.reason}{_best_note(best)}"))
    if v.keep:
        fields["verdict_reason"] += f". Kept: this row (snapshot of #{root}) is the new best."
    root_row = store.judged_row(conn, root)
    if root_row is not None and root_row["verdict"] == PROVISIONAL:
        if v.keep:
            store.settle_provisional(conn, root, "improved", f"Confirmed by its seed group ({text}): seed rerun "
                                                             f"#{exp['id']} is kept as the best.")
            fields["verdict_reason"] += f" It confirms #{root} (improved?)."
        elif not store.group_pending(conn, root, exp["id"]):
            store.settle_provisional(conn, root, v.verdict, f"Not confirmed: with its seed reruns the group is "
                                                            f"{v.verdict.replace('_', ' ')} ({text}); the best stays "
                                                            f"#{best['id'] if best else '-'}.")
            fields["verdict_reason"] += f" #{root} (improved?) is not confirmed; the best is unchanged."
    return fields


def rejudge_best(store, conn, best_id: int, group_ids: list[int], g: dict, cfg) -> str | None:
    """The best's group changed: judge it again against the run it replaced. If it no longer clears
    the margin it stops being best (its kept rows are unkept: the previous best is best again) and
    the change is recorded. Returns the sentence saying so, or None when it stays best."""
    best = store.judged_row(conn, best_id)
    replaced_id = best["best_id_at_verdict"] if best else None
    if replaced_id is None or (best["verdict"] or "") == "baseline":
        return None
    replaced = store.judged_row(conn, replaced_id)
    if replaced is None or replaced["objective"] is None:
        return None
    v = judge(objective=g["mean"], std=g["std"], best=replaced, direction=cfg.direction, sigmas=cfg.noise_sigma)
    if v.verdict == "improved":
        return None
    reason = (f"no longer best: with {g['n']} seed runs its group mean {g['mean']:.6g} does not beat #{replaced_id} "
              f"({replaced['objective']:.6g}) beyond the noise ({v.reason})")
    store.unkeep(conn, group_ids, reason)
    store.record_best_change(conn, best_id, replaced_id, "demoted", reason)
    return f"Best #{best_id} is demoted: {reason}; #{replaced_id} is the best again."
