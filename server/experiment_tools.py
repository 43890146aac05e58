"""The core tools: run, status, cancel, results, show, revert, notes; their resources and the
research program prompt. Thin functions over tools/experiments.py; `register` adds them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError

from server.calls import DESTRUCTIVE, READ_ONLY, WRITES, call, current_lab, follow, read_resource
from tools import experiments as ex
from tools import program, runs
from tools.schemas import (Description, ExperimentDetail, ExperimentId, Hypothesis, Limit, NoteOut, NotesPage,
                           NoteText, Params, ResultsTable, RevertResult, RevertTarget, RunSummary, Status, Tags,
                           TimeBudget)


# -- tools ---------------------------------------------------------------------------------
async def run_experiment(
    description: Description,
    hypothesis: Hypothesis = None,
    time_budget_s: TimeBudget = None,
    params: Params = None,
    wait: Annotated[bool, Field(description="true: block until done (progress is streamed); false: return the id at once")] = True,
    ctx: Context | None = None,
) -> RunSummary:
    """Snapshot the editable files and run one sandboxed experiment with the workspace's command.

    Returns id, status, objective, delta vs the best, the noise-aware verdict and, on failure, the
    log tail. With wait=false, returns at once; then poll experiment_status(id). Closing the call
    does not stop the run: use cancel_experiment for that."""
    args = {"description": description, "hypothesis": hypothesis, "time_budget_s": time_budget_s,
            "params": params, "wait": wait}
    exp_id = await call("run_experiment", args,
                         lambda lab: ex.submit_experiment(lab, description, hypothesis, time_budget_s, params))
    if not wait:
        return await call("experiment_status", {"experiment_id": exp_id}, lambda lab: ex.summary(lab, exp_id),
                           audit=False)
    return await follow(exp_id, ctx, None)


async def experiment_status(
    experiment_id: ExperimentId,
    wait_s: Annotated[float, Field(ge=0, le=240, description="long-poll up to this many seconds for the end")] = 0,
    ctx: Context | None = None,
) -> RunSummary:
    """Status of one experiment: queued/running (latest step and loss) or the final result."""
    await call("experiment_status", {"experiment_id": experiment_id, "wait_s": wait_s},
                lambda lab: ex.summary(lab, experiment_id))
    return await follow(experiment_id, ctx, wait_s)


async def cancel_experiment(experiment_id: ExperimentId, ctx: Context | None = None) -> RunSummary:
    """Stop a queued or running experiment (its whole process tree) and record it as cancelled."""
    await call("cancel_experiment", {"experiment_id": experiment_id},
                lambda lab: runs.request_cancel(lab, experiment_id))
    return await follow(experiment_id, ctx, 30)


async def read_results(
    limit: Limit = 20,
    status: Status | None = None,
    order_by: Literal["objective", "created"] = "created",
    include_metrics: bool = False,
) -> ResultsTable:
    """The experiments table (newest first, or best first with order_by='objective'), at most `limit` rows;
    `total` counts all matches."""
    return await call("read_results", {"limit": limit, "status": status, "order_by": order_by,
                                        "include_metrics": include_metrics},
                       lambda lab: ex.read_results(lab, limit, status, order_by, include_metrics))


async def show_experiment(experiment_id: ExperimentId) -> ExperimentDetail:
    """One experiment in full: config, every metric (per fold too), loss curve, the code diff against
    its parent, and the log tail."""
    return await call("show_experiment", {"experiment_id": experiment_id},
                       lambda lab: ex.show_experiment(lab, experiment_id))


async def revert(target: RevertTarget) -> RevertResult:
    """Restore the editable files (only those) to an experiment's snapshot, or to 'best'."""
    return await call("revert", {"target": target}, lambda lab: ex.revert(lab, target))


async def write_note(
    text: NoteText,
    experiment_id: ExperimentId | None = None,
    tags: Tags = None,
) -> NoteOut:
    """Add to the research notebook (your working memory across sessions): what changed, the verdict,
    what you learned, the next idea. Link it to an experiment when it is about one."""
    return await call("write_note", {"text": text, "experiment_id": experiment_id, "tags": tags},
                       lambda lab: ex.write_note(lab, text, experiment_id, tags or []))


async def read_notes(
    limit: Limit = 20,
    tag: Annotated[str | None, Field(None, max_length=40)] = None,
    query: Annotated[str | None, Field(None, max_length=200, description="substring to search for")] = None,
) -> NotesPage:
    """The research notebook, newest first; filter by tag or a search phrase."""
    return await call("read_notes", {"limit": limit, "tag": tag, "query": query},
                       lambda lab: ex.read_notes(lab, limit, tag, query))


# -- resources and prompts -----------------------------------------------------------------
async def experiment_resource(experiment_id: str) -> str:
    """One experiment, as show_experiment returns it (experiments://<id>, the id from read_results)."""
    if not (experiment_id.isascii() and experiment_id.isdigit()) or len(experiment_id) > 10:
        raise ResourceError(f"experiments://{experiment_id[:40]}: the id must be a positive integer. "
                            f"Fix: use experiments://<id> with an id from read_results, e.g. experiments://1.")
    exp_id = int(experiment_id)
    if not 1 <= exp_id <= 10**9:
        raise ResourceError(f"experiments://{exp_id}: ids start at 1. Fix: use an id from read_results.")
    return await read_resource(lambda lab: ex.show_experiment(lab, exp_id).model_dump_json(indent=1))


async def recent_notes() -> str:
    """The 20 most recent research notes."""
    return await read_resource(lambda lab: ex.read_notes(lab, 20).model_dump_json(indent=1))


async def program_resource() -> str:
    """The research program (AGENTS.md of this workspace)."""
    return await read_resource(lambda lab: program.read_program(lab.root))


def research_program() -> str:
    """The research program: how to run the experiment loop with these tools."""
    return program.read_program(current_lab().root)


def register(mcp: MCPServer) -> None:
    for fn, hints in ((run_experiment, WRITES), (experiment_status, READ_ONLY), (cancel_experiment, DESTRUCTIVE),
                            (read_results, READ_ONLY), (show_experiment, READ_ONLY), (revert, DESTRUCTIVE),
                            (write_note, WRITES), (read_notes, READ_ONLY)):
        mcp.add_tool(fn, annotations=hints)
    mcp.resource("experiments://{experiment_id}", mime_type="application/json")(experiment_resource)
    mcp.resource("notes://recent", mime_type="application/json")(recent_notes)
    mcp.resource("program://agents", mime_type="text/markdown")(program_resource)
    mcp.prompt()(research_program)
