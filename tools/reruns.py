"""rerun_experiment: the same snapshot with other SEEDs, to measure the noise verdicts use.

Each rerun is its own snapshot: the original's files with its `SEED` written in (so the snapshot
is the code that ran), linked to the original by `rerun_of` / rerun_kind 'seed'. The original and
its reruns form a seed group; tools/verdict.py judges the group's mean with the std of that mean.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from tools import runs
from tools.errors import ToolError
from tools.lab import Lab
from tools.provenance import snapshot_constants
from tools.schemas import sig
from tools.verdict import group_stats

MAX_SEEDS_PER_CALL = 10
MAX_GROUP = 21


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


def seed_of(lab: Lab, exp: dict) -> int | None:
    """The SEED a run ran with: its snapshot's constant (params are written into the snapshot)."""
    seed = snapshot_constants(lab, exp["snapshot_commit"]).get("SEED")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def submit_reruns(lab: Lab, experiment_id: int, seeds: int) -> tuple[int, list[int]]:
    """Queue `seeds` reruns of an experiment's snapshot with fresh SEEDs; returns (root id, new ids)."""
    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS_PER_CALL:
        raise ToolError(f"invalid seeds={seeds!r}. Fix: pass an integer from 1 to {MAX_SEEDS_PER_CALL}.")
    exp = lab.experiment(experiment_id)
    root = lab.store.get_experiment(exp["rerun_of"]) if exp["rerun_of"] else exp
    if not root["snapshot_commit"]:
        raise ToolError(f"experiment {root['id']} has no snapshot to rerun. Fix: pick another id.")
    base = seed_of(lab, root)
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
    return [GroupMember(id=r["id"], seed=seed_of(lab, r), status=r["status"], objective=r["objective"],
                        objective_std=r["objective_std"]) for r in lab.store.seed_group(root_id)]


def _shown(members: list[GroupMember]) -> list[GroupMember]:
    return [m.model_copy(update={"objective": sig(m.objective, 6), "objective_std": sig(m.objective_std)})
            for m in members]


def group_summary(lab: Lab, root_id: int, submitted: list[int] | None = None) -> GroupSummary:
    members = group_members(lab, root_id)
    done = [m for m in members if m.status == "succeeded" and m.objective is not None]
    out = GroupSummary(experiment_id=root_id, members=_shown(members), submitted=submitted or [], n=len(done))
    if done:  # the statistics from full precision, shown rounded
        g = group_stats([m.objective for m in done], [m.objective_std for m in done])
        out.mean, out.seed_std = sig(g["mean"], 6), sig(g["seed_std"])
        out.fold_std, out.std_of_mean = sig(g["fold_std"]), sig(g["std"])
    latest = None
    for m in members:
        row = lab.store.get_experiment(m.id)
        if row["kept"]:
            out.kept_id = m.id
        if row["verdict_reason"] and (latest is None or (row["finished_at"] or 0) >= (latest["finished_at"] or 0)):
            latest = row
    if latest is not None:
        out.verdict, out.verdict_reason = latest["verdict"], latest["verdict_reason"]
        if out.verdict is None and out.kept_id is not None:  # a seed rerun of the best has no verdict of its own
            out.verdict = lab.store.get_experiment(out.kept_id)["verdict"]
    pending = [m.id for m in members if m.status in ("queued", "running")]
    if pending:
        out.next = (f"runs {pending} are not finished: poll experiment_status({pending[-1]}); calling rerun_experiment "
                    "again would queue more seeds")
    elif (out.verdict_reason or "").startswith("seed rerun of the current best"):
        out.next = "the best's noise is measured: continue the loop; later verdicts use this group's std"
    elif out.verdict == "improved" and out.kept_id:
        out.next = "the group beats the best beyond the noise: it is kept; write_note with the numbers"
    elif out.verdict == "inconclusive":
        out.next = "still within the noise: more seeds shrink the std of the mean by sqrt(n), or revert('best')"
    elif out.verdict == "not_improved":
        out.next = "the group does not beat the best: revert('best') and write_note"
    return out
