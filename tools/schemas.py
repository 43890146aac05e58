"""Bounded input types and compact result models shared by the MCP face and the CLI.

The annotated aliases are the input schema of each tool: the server's signatures use them, so an
agent sees the bounds, and `tools` re-validates with them, so the CLI gets the same refusals.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from tools.errors import ToolError

def validate(name: str, type_, value):
    """Validate one argument; a refusal names the field, the problem and the fix."""
    try:
        return TypeAdapter(type_).validate_python(value)
    except ValidationError as exc:
        msgs = "; ".join(e["msg"] for e in exc.errors())
        raise ToolError(f"invalid {name}={value!r}: {msgs}. Fix: pass a valid {name} (see the tool's schema).") from None


ExperimentId = Annotated[int, Field(ge=1, le=10**9)]  # ids come from read_results (no description: 7 tools share it)
Description = Annotated[str, Field(min_length=3, max_length=2000,
                                   description="what this run changes, one line (e.g. 'LR 3e-4 -> 1e-4')")]
Hypothesis = Annotated[str | None, Field(None, max_length=4000, description="why it should help")]
TimeBudget = Annotated[float | None, Field(None, ge=5, le=7 * 24 * 3600,
                                           description="training seconds; default from autoresearch.toml")]
ParamValue = float | int | str | bool
Params = Annotated[dict[Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")], ParamValue] | None,
                   Field(None, max_length=64,
                         description="overrides of train.py's UPPERCASE constants, e.g. {'LR': 1e-4}")]
Limit = Annotated[int, Field(20, ge=1, le=200, description="rows to return")]
Status = Literal["queued", "running", "succeeded", "failed", "timeout", "cancelled", "interrupted"]
NoteText = Annotated[str, Field(min_length=1, max_length=20_000)]
Tag = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,40}$")]
Tags = Annotated[list[Tag] | None, Field(None, max_length=20, description="short labels, e.g. ['lr', 'idea']")]
RevertTarget = Annotated[Annotated[int, Field(ge=1, le=10**9)] | Literal["best", "saved"],
                         Field(description="an experiment id, 'best' for the best kept snapshot, or 'saved' for the "
                                           "edits the last revert saved")]


def sig(x: float | None, digits: int = 4) -> float | None:
    """A number as an agent reads it: `digits` significant digits (the store keeps full precision).
    Objectives get 6 (a gain of 1e-5 on 0.2 stays visible), spreads, deltas and losses 4."""
    return None if x is None else float(f"{x:.{digits}g}")


class RunSummary(BaseModel):
    id: int
    status: str
    verdict: str | None = None
    objective: float | None = None
    objective_std: float | None = Field(None, description="spread across folds/seeds")
    delta_vs_best: float | None = Field(None, description="objective minus the best's (negative = lower)")
    best_id: int | None = Field(None, description="the best experiment this run was judged against")
    kept: bool = False
    duration_s: float | None = None
    peak_memory_gb: float | None = None
    sandbox: str | None = None
    warnings: list[str] | None = Field(None, description="e.g. the run was NOT isolated")
    step: int | None = None
    loss: float | None = None
    verdict_reason: str | None = None
    stopped: str | None = Field(None, description="'stopped by time at step 12/300' when it did not finish its "
                                                  "step budget (verdict incomparable)")
    error: str | None = Field(None, description="why it failed, with the last 40 log lines")
    next: str | None = Field(None, description="what to do next")


class ResultRow(BaseModel):
    id: int
    status: str
    verdict: str | None
    objective: float | None
    objective_std: float | None
    delta: float | None
    kept: bool
    duration_s: float | None
    description: str
    stopped: str | None = None
    role: str | None = Field(None, description="what the row is when not a plain experiment: 'seed rerun of #N', "
                                               "'reproduction of #N'")
    compute: str | None = Field(None, description="steps (claimed by the run) and seconds (measured by the harness)")
    metrics: dict[str, float] | None = None


class ResultsTable(BaseModel):
    total: int = Field(description="experiments matching the filter (the table shows at most `limit`)")
    best_id: int | None
    objective: str
    direction: str
    rows: list[ResultRow]


class ExperimentDetail(BaseModel):
    id: int
    status: str
    verdict: str | None
    verdict_reason: str | None
    description: str
    hypothesis: str | None
    snapshot_commit: str | None
    parent_id: int | None
    objective: float | None
    objective_std: float | None
    delta: float | None
    kept: bool
    duration_s: float | None
    peak_memory_gb: float | None
    sandbox: str | None
    config: dict[str, Any]
    metrics: dict[str, float]
    fold_metrics: list[dict[str, float]]
    loss_curve: list[list[int | float | None]] = Field(description="[step, loss] pairs, thinned to at most 50, the first and last step kept; loss null where it was NaN/inf")
    diff: str = Field(description="the editable files' diff against the parent (the best at submit time; a rerun: the run it reruns)")
    log_tail: str
    stopped: str | None = None
    error: str | None


class NoteOut(BaseModel):
    id: int
    created_at: str
    experiment_id: int | None
    tags: list[str]
    text: str


class NotesPage(BaseModel):
    total: int
    notes: list[NoteOut]


class RevertResult(BaseModel):
    experiment_id: int
    snapshot_commit: str
    restored: list[str] = Field(description="files whose bytes changed")
    unchanged: list[str]
    saved_edits: str | None = Field(None, description="the commit holding the unsaved edits this revert replaced")
    next: str | None = None
