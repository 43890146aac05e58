"""The core tools: run, status, cancel, results, show, revert, notes; their resources and the
research program prompt. Thin functions over tools/experiments.py; `register` adds them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError

from server.calls import (DESTRUCTIVE, READ_ONLY, WRITES, WaitS, call, current_lab, read_resource, resource_json,
                          respond, wait_for)
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
    wait_s: WaitS = None,
    ctx: Context | None = None,
) -> RunSummary:
    """Snapshot the editable files and run one sandboxed experiment: its result (objective,
    delta_vs_best, verdict, error) if it ends within wait_s, else its id and `next` (follow with
    experiment_status; the run goes on)."""
    exp_id = await call("run_experiment",
                        lambda lab: ex.submit_experiment(lab, description, hypothesis, time_budget_s, params))
    return respond((await wait_for([exp_id], ctx, wait_s))[0])


async def experiment_status(experiment_id: ExperimentId, wait_s: WaitS = None,
                            ctx: Context | None = None) -> RunSummary:
    """One experiment: queued/running (step, loss) or its result; waits up to wait_s for the end."""
    return respond((await wait_for([experiment_id], ctx, wait_s))[0])


async def cancel_experiment(experiment_id: ExperimentId, wait_s: WaitS = None,
                            ctx: Context | None = None) -> RunSummary:
    """Stop a queued or running experiment (its whole process tree); recorded as cancelled."""
    await call("cancel_experiment", lambda lab: runs.request_cancel(lab, experiment_id))
    return respond((await wait_for([experiment_id], ctx, wait_s))[0])


async def read_results(
    limit: Limit = 20,
    status: Status | None = None,
    order_by: Literal["objective", "created"] = "created",
    include_metrics: bool = False,
) -> ResultsTable:
    """The experiments table, newest first (or best first: order_by='objective'); `total` counts all."""
    return respond(await call("read_results",
                              lambda lab: ex.read_results(lab, limit, status, order_by, include_metrics)))


async def show_experiment(
    experiment_id: ExperimentId,
    detail: Literal["summary", "full"] = "summary",
) -> ExperimentDetail:
    """One experiment: verdict, metrics (per pool too), loss curve, code diff vs its parent, log tail, the
    config that decides it. detail='full': the whole record (sandbox, environment, full precision)."""
    return respond(await call("show_experiment", lambda lab: ex.show_experiment(lab, experiment_id, detail)))


async def revert(target: RevertTarget) -> RevertResult:
    """Restore the editable files (only those) to an experiment's snapshot, or to 'best'."""
    return respond(await call("revert", lambda lab: ex.revert(lab, target)))


async def write_note(
    text: NoteText,
    experiment_id: ExperimentId | None = None,
    tags: Tags = None,
) -> NoteOut:
    """Add to the research notebook (your memory across sessions): the change, the verdict, what you
    learned, the next idea; link it to its experiment."""
    return respond(await call("write_note", lambda lab: ex.write_note(lab, text, experiment_id, tags or [])))


async def read_notes(
    limit: Limit = 20,
    tag: Annotated[str | None, Field(None, max_length=40)] = None,
    query: Annotated[str | None, Field(None, max_length=200, description="substring to search for")] = None,
) -> NotesPage:
    """The research notebook, newest first; filter by tag or a phrase."""
    return respond(await call("read_notes", lambda lab: ex.read_notes(lab, limit, tag, query)))


# -- resources and prompts -----------------------------------------------------------------
async def experiment_resource(experiment_id: str) -> str:
    """One experiment, as show_experiment returns it (experiments://<id>, the id from read_results)."""
    if not (experiment_id.isascii() and experiment_id.isdigit()) or len(experiment_id) > 10:
        raise ResourceNotFoundError(f"experiments://{experiment_id[:40]}: the id must be a positive integer. "
                                    "Fix: use experiments://<id> with an id from read_results, e.g. experiments://1.")
    exp_id = int(experiment_id)
    if not 1 <= exp_id <= 10**9:
        raise ResourceNotFoundError(f"experiments://{exp_id}: ids start at 1. Fix: use an id from read_results.")
    return await read_resource(lambda lab: resource_json(ex.show_experiment(lab, exp_id)), about_params=True)


async def recent_notes() -> str:
    """The 20 most recent research notes."""
    return await read_resource(lambda lab: resource_json(ex.read_notes(lab, 20)))


async def program_resource() -> str:
    """The research program (AGENTS.md of this workspace)."""
    return await read_resource(lambda lab: program.read_program(lab.root))


def research_program() -> str:
    """The research program: how to run the experiment loop with these tools."""
    return program.read_program(current_lab().root)


TOOLS = ((run_experiment, "Run an experiment", WRITES), (experiment_status, "Experiment status", READ_ONLY),
         (cancel_experiment, "Cancel an experiment", DESTRUCTIVE), (read_results, "Results table", READ_ONLY),
         (show_experiment, "Show one experiment", READ_ONLY), (revert, "Revert the editable files", DESTRUCTIVE),
         (write_note, "Write a research note", WRITES), (read_notes, "Read the research notes", READ_ONLY))


def register(mcp: MCPServer) -> None:
    for fn, title, hints in TOOLS:
        mcp.add_tool(fn, title=title, annotations=hints)
    mcp.resource("experiments://{experiment_id}", mime_type="application/json")(experiment_resource)
    mcp.resource("notes://recent", mime_type="application/json")(recent_notes)
    mcp.resource("program://agents", mime_type="text/markdown")(program_resource)
    mcp.prompt(title="Research program")(research_program)
