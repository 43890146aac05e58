"""`reproduce(id)`: run an experiment's snapshot again with the same params (same SEED) and report
the difference, in the objective, in every aggregate metric and in what it ran with (provenance).

On CPU with deterministic code the objective is bit-identical; on GPU it should land within the
noise. A reproduction is recorded as its own experiment (rerun_kind='reproduce'): it never joins a
seed group, is never judged against the best, and is not a trial of the Optuna study.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from tools import runs
from tools.errors import ToolError
from tools.lab import Lab

MAX_DIFFS = 30


class ReproduceReport(BaseModel):
    original_id: int
    reproduction_id: int
    status: str
    objective_original: float | None
    objective_reproduced: float | None
    difference: float | None = Field(None, description="reproduced minus original")
    identical: bool = Field(description="bit-identical objective")
    noise: float | None = Field(None, description="the original's spread (fold std, or its group's)")
    within_noise: bool | None = Field(None, description="|difference| <= noise_sigma * noise")
    metric_differences: dict[str, list[float | None]] = Field(
        default_factory=dict, description="aggregate metrics that differ: name -> [original, reproduced]")
    provenance_differences: dict[str, list] = Field(
        default_factory=dict, description="what changed in what it ran with: key -> [original, reproduced]")
    verdict: str = Field(description="identical | within_noise | outside_noise | failed | running")
    next: str | None = None


def submit_reproduction(lab: Lab, experiment_id: int) -> int:
    """The same snapshot again (its params and SEED are written in it): one more run to compare."""
    exp = lab.succeeded_experiment(experiment_id, "reproduced")
    return runs.submit(lab, description=f"reproduce #{experiment_id}: {exp['description'][:1500]}",
                       hypothesis=f"same snapshot, same params: should match experiment {experiment_id}",
                       time_budget_s=exp["time_budget_s"], commit=exp["snapshot_commit"], rerun_of=experiment_id,
                       rerun_kind="reproduce")


def report(lab: Lab, original_id: int, reproduction_id: int) -> ReproduceReport:
    a, b = lab.store.get_experiment(original_id), lab.store.get_experiment(reproduction_id)
    if a is None or b is None:
        raise ToolError(f"experiment {original_id if a is None else reproduction_id} does not exist.")
    oa, ob = a["objective"], b["objective"]
    diff = None if oa is None or ob is None else ob - oa
    noise = a["group_std"] * (a["group_n"] or 1) ** 0.5 if a["group_std"] is not None else a["objective_std"]
    within = None if diff is None or noise is None else abs(diff) <= lab.config.noise_sigma * noise
    out = ReproduceReport(original_id=original_id, reproduction_id=reproduction_id, status=b["status"],
                          objective_original=oa, objective_reproduced=ob, difference=diff,
                          identical=diff == 0.0, noise=noise, within_noise=within, verdict="running")
    if b["status"] in ("queued", "running"):
        out.next = f"still {b['status']}: poll experiment_status({reproduction_id}, wait_s=120)"
        return out
    if b["status"] != "succeeded":
        out.verdict, out.next = "failed", f"the reproduction {b['status']}: see show_experiment({reproduction_id})"
    else:
        out.verdict = "identical" if out.identical else "within_noise" if within else "outside_noise"
    ma = {m["name"]: m["value"] for m in lab.store.metrics(original_id, aggregate_only=True)}
    mb = {m["name"]: m["value"] for m in lab.store.metrics(reproduction_id, aggregate_only=True)}
    skip = {"train_seconds", "total_seconds", "duration_s"}
    for name in sorted(set(ma) | set(mb)):
        if name not in skip and ma.get(name) != mb.get(name) and len(out.metric_differences) < MAX_DIFFS:
            out.metric_differences[name] = [ma.get(name), mb.get(name)]
    # how far each got against its step budget comes first: a run cut short explains most differences
    for key in ("steps", "max_steps", "stopped_by"):
        if a[key] != b[key]:
            out.provenance_differences[key] = [a[key], b[key]]
    pa, pb = _facts(a), _facts(b)
    for key in sorted(set(pa) | set(pb)):
        if pa.get(key) != pb.get(key) and len(out.provenance_differences) < MAX_DIFFS:
            out.provenance_differences[key] = [pa.get(key), pb.get(key)]
    budget = [k for k in ("steps", "stopped_by") if k in out.provenance_differences]
    if budget and out.verdict != "running":
        out.next = (f"the two trained differently: steps {a['steps']} vs {b['steps']} (stopped by {a['stopped_by']} vs "
                    f"{b['stopped_by']}); compare runs that both finished their step budget")
    elif out.verdict == "outside_noise":
        out.next = ("the result moved beyond the noise: check provenance_differences (packages, device, data) and "
                    "non-determinism in train.py")
    return out


def _facts(exp: dict) -> dict:
    """The flattened record of what a run ran with (provenance, run info from metrics.json, sandbox)."""
    config = json.loads(exp["config_json"] or "{}")
    facts = _flatten({"provenance": config.get("provenance", {}), "run": config.get("run", {}),
                      "params": config.get("params", {})})
    facts["sandbox_backend"] = exp["sandbox_backend"]
    facts.pop("provenance.environment.executable", None)
    return facts


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v, default=str)[:200]
    return out
