"""Seed groups and the noise gate of every recorded run.

The rule (shown in every verdict):
- A single run's noise is its fold spread (`objective_std`, the std over the k folds).
- `rerun_experiment(id, seeds=N)` reruns that experiment's *snapshot* with other SEEDs. The
  original and its seed reruns form a group. The group's objective is the mean of its succeeded
  runs; its noise per run is max(seed spread, mean fold spread) - the seed spread (sample std of
  the members' objectives) is what really moves between runs, but a lucky small estimate from a
  few seeds never loosens the gate below the fold spread; the group's std is that / sqrt(n), the
  std of a mean of n runs.
- Verdicts compare objectives (group means where there is a group) with the margin
  `noise_sigma * sqrt(std_run^2 + std_best^2)` (tools/verdict.py).
- A seed rerun refines its group: when the group holds the current best, the best's noise estimate
  is updated (nothing else changes); otherwise the group is judged again as a whole against the
  best, and if it now beats it by the margin the rerun row is kept (same snapshot) as the new best.
- A reproduction (`reproduce`) runs the same seed again: it is never grouped nor judged.
"""

from __future__ import annotations

import json
import math
import statistics

from pydantic import BaseModel, Field

from tools.errors import ToolError
from tools.lab import Lab
from tools.verdict import judge

MAX_SEEDS_PER_CALL = 10
MAX_GROUP = 21


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


# -- the verdict of a recorded run (called by runs.record inside its transaction) ---------------
def best_row(conn) -> dict | None:
    """The current best with its group's mean and std when it has a seed group."""
    cur = conn.execute(
        "SELECT id, coalesce(group_objective, objective) AS objective, coalesce(group_std, objective_std) "
        "AS objective_std, group_n, verdict FROM experiments WHERE kept = 1 ORDER BY finished_at DESC, id DESC LIMIT 1")
    row = cur.fetchone()
    return dict(zip([d[0] for d in cur.description], row)) if row else None


def _best_note(best: dict | None) -> str:
    if best and (best.get("group_n") or 0) >= 2:
        return (f" [best #{best['id']} is the mean of {best['group_n']} seed runs, std of the mean "
                f"{best['objective_std']:.4g}]")
    return ""


def verdict_fields(conn, exp: dict, objective: float, std: float | None, cfg) -> dict:
    """verdict, delta, kept, best_id_at_verdict, verdict_reason (+ group columns) for a succeeded run.
    Seed reruns also refresh the group columns of the other members through `conn`."""
    kind = exp.get("rerun_kind")
    if kind == "reproduce":
        orig = conn.execute("SELECT objective FROM experiments WHERE id = ?", [exp["rerun_of"]]).fetchone()
        ref = orig[0] if orig else None
        delta = None if ref is None else objective - ref
        reason = (f"reproduction of #{exp['rerun_of']}: objective {objective:.10g} vs {ref if ref is None else f'{ref:.10g}'}"
                  + ("" if delta is None else f" (difference {delta:+.3g})") + "; not judged against the best")
        return {"verdict": None, "delta": delta, "kept": 0, "best_id_at_verdict": None, "verdict_reason": reason}
    if kind == "seed":
        return _group_verdict(conn, exp, objective, std, cfg)
    best = best_row(conn)
    v = judge(objective=objective, std=std, best=best, direction=cfg.direction, sigmas=cfg.noise_sigma)
    return {"verdict": v.verdict, "delta": v.delta, "kept": int(v.keep), "best_id_at_verdict": best["id"] if best else None,
            "verdict_reason": v.reason + _best_note(best)}


def _group_verdict(conn, exp: dict, objective: float, std: float | None, cfg) -> dict:
    root = exp["rerun_of"]
    rows = conn.execute(
        "SELECT id, objective, objective_std FROM experiments WHERE (id = ? OR (rerun_of = ? AND rerun_kind = 'seed')) "
        "AND status = 'succeeded' AND objective IS NOT NULL AND id != ? ORDER BY id", (root, root, exp["id"])).fetchall()
    members = [*rows, (exp["id"], objective, std)]
    ids = [r[0] for r in members]
    g = group_stats([r[1] for r in members], [r[2] for r in members])
    others = [i for i in ids if i != exp["id"]]
    if others:
        marks = ", ".join("?" for _ in others)
        conn.execute(f"UPDATE experiments SET group_n = ?, group_objective = ?, group_std = ? WHERE id IN ({marks})",
                     [g["n"], g["mean"], g["std"], *others])
    fields = {"group_n": g["n"], "group_objective": g["mean"], "group_std": g["std"]}
    text = describe_group(ids, g)
    best = best_row(conn)  # reads the refreshed group columns
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


# -- rerun_experiment ------------------------------------------------------------------------
class GroupMember(BaseModel):
    id: int
    seed: int | None
    status: str
    objective: float | None
    objective_std: float | None


class GroupSummary(BaseModel):
    experiment_id: int = Field(description="the original run of the group")
    members: list[GroupMember]
    submitted: list[int] = Field(default_factory=list, description="ids queued by this call")
    n: int = Field(description="succeeded runs in the group")
    mean: float | None = None
    seed_std: float | None = Field(None, description="sample std of the members' objectives")
    fold_std: float | None = Field(None, description="mean fold spread of the members")
    std_of_mean: float | None = Field(None, description="max(seed_std, fold_std) / sqrt(n): what verdicts use")
    verdict: str | None = Field(None, description="the group's latest verdict vs the best")
    verdict_reason: str | None = None
    kept_id: int | None = Field(None, description="the member kept as the best, if any")
    next: str | None = None


def seed_of(exp: dict, constants: dict) -> int | None:
    params = json.loads(exp["params_json"] or "{}")
    seed = params.get("SEED", constants.get("SEED"))
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def submit_reruns(lab: Lab, experiment_id: int, seeds: int) -> tuple[int, list[int]]:
    """Queue `seeds` reruns of an experiment's snapshot with fresh SEEDs; returns (root id, new ids)."""
    from tools import runs
    from tools.provenance import snapshot_constants

    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS_PER_CALL:
        raise ToolError(f"invalid seeds={seeds!r}. Fix: pass an integer from 1 to {MAX_SEEDS_PER_CALL}.")
    exp = lab.experiment(experiment_id)
    root = lab.store.get_experiment(exp["rerun_of"]) if exp["rerun_of"] else exp
    if not root["snapshot_commit"]:
        raise ToolError(f"experiment {root['id']} has no snapshot to rerun. Fix: pick another id.")
    constants = snapshot_constants(lab, root["snapshot_commit"])
    base = seed_of(root, constants)
    if base is None:
        raise ToolError(f"the snapshot of experiment {root['id']} has no integer SEED constant, so a rerun cannot "
                        "change the seed. Fix: add `SEED = 0` to train.py, seed the run with it, and run again.")
    members = group_members(lab, root["id"])
    if len(members) + seeds > MAX_GROUP:
        raise ToolError(f"seeds={seeds}: the group of experiment {root['id']} already has {len(members)} runs "
                        f"(at most {MAX_GROUP}). Fix: ask for fewer seeds.")
    used = {m.seed for m in members}
    new_seeds, s = [], base
    while len(new_seeds) < seeds:
        s += 1
        if s not in used:
            new_seeds.append(s)
    params = json.loads(root["params_json"] or "{}")
    desc = root["description"][:1500]
    ids = [runs.submit(lab, description=f"seed rerun of #{root['id']} (SEED={seed}): {desc}",
                       hypothesis=f"noise estimate for experiment {root['id']}", time_budget_s=root["time_budget_s"],
                       params={**params, "SEED": seed}, commit=root["snapshot_commit"], rerun_of=root["id"],
                       rerun_kind="seed")
           for seed in new_seeds]
    return root["id"], ids


def group_members(lab: Lab, root_id: int) -> list[GroupMember]:
    from tools.provenance import snapshot_constants

    rows = list(lab.store.db.query(
        "SELECT * FROM experiments WHERE id = ? OR (rerun_of = ? AND rerun_kind = 'seed') ORDER BY id LIMIT 100",
        [root_id, root_id]))
    constants = snapshot_constants(lab, rows[0]["snapshot_commit"]) if rows else {}
    return [GroupMember(id=r["id"], seed=seed_of(r, constants), status=r["status"], objective=r["objective"],
                        objective_std=r["objective_std"]) for r in rows]


def group_summary(lab: Lab, root_id: int, submitted: list[int] | None = None) -> GroupSummary:
    members = group_members(lab, root_id)
    done = [m for m in members if m.status == "succeeded" and m.objective is not None]
    out = GroupSummary(experiment_id=root_id, members=members, submitted=submitted or [], n=len(done))
    if done:
        g = group_stats([m.objective for m in done], [m.objective_std for m in done])
        out.mean, out.seed_std, out.fold_std, out.std_of_mean = g["mean"], g["seed_std"], g["fold_std"], g["std"]
    latest = None
    for m in members:
        row = lab.store.get_experiment(m.id)
        if row["kept"]:
            out.kept_id = m.id
        if row["verdict_reason"] and (latest is None or (row["finished_at"] or 0) >= (latest["finished_at"] or 0)):
            latest = row
    if latest is not None:
        out.verdict, out.verdict_reason = latest["verdict"], latest["verdict_reason"]
    pending = [m.id for m in members if m.status in ("queued", "running")]
    if pending:
        out.next = f"runs {pending} are not finished: poll experiment_status(id) or call rerun_experiment with wait=true"
    elif (out.verdict_reason or "").startswith("seed rerun of the current best"):
        out.next = "the best's noise is measured: continue the loop; later verdicts use this group's std"
    elif out.verdict == "improved" and out.kept_id:
        out.next = "the group beats the best beyond the noise: it is kept; write_note with the numbers"
    elif out.verdict == "inconclusive":
        out.next = "still within the noise: more seeds shrink the std of the mean by sqrt(n), or revert('best')"
    elif out.verdict == "not_improved":
        out.next = "the group does not beat the best: revert('best') and write_note"
    return out
