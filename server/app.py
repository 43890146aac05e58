"""The MCP face: one thin function per tool; validation, progress and errors. No torch here.

Each tool validates (pydantic, through the signature), calls `tools/` in a worker thread, records
the call in the audit table, and returns a pydantic model (structured content + a JSON text block).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import anyio
from pydantic import Field

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.mcpserver.exceptions import ToolError as MCPToolError
from mcp.types import ToolAnnotations

from tools import experiments as ex
from tools import program, runs
from tools.errors import ToolError
from tools.lab import Lab
from tools.schemas import (Description, ExperimentDetail, ExperimentId, Hypothesis, Limit, NoteOut, NotesPage,
                           NoteText, Params, ResultsTable, RevertResult, RevertTarget, RunSummary, Status, Tags,
                           TimeBudget)

INSTRUCTIONS = """Research loop on an eCLIP model (lower val mean_rank is better).
Loop: read_notes + read_results first; make ONE change to train.py; run_experiment; if the verdict is
not 'improved', revert('best'); write_note after every run (what changed, verdict, next idea).
Runs are sandboxed and recorded; never wait idly: poll experiment_status when wait=False."""

mcp = MCPServer("eclip-autoresearch", instructions=INSTRUCTIONS)

READ_ONLY = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)
RUNS = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)
ADDITIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)
DESTRUCTIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False)

PROGRESS_EVERY_S = 5.0
POLL_S = 1.0


class _State:
    lab: Lab | None = None
    root: Path = Path.cwd()
    lock = threading.Lock()  # one SQLite connection: calls take turns


state = _State()


def configure(root: Path | str) -> Lab:
    """Open the workspace and settle runs left over from a previous server (recovery)."""
    if state.lab is not None:
        state.lab.close()
    state.root = Path(root).resolve()
    state.lab = Lab.open(state.root)
    runs.recover(state.lab)
    return state.lab


def _lab() -> Lab:
    if state.lab is None:
        try:
            configure(state.root)
        except ToolError as exc:
            raise MCPToolError(str(exc)) from None
    return state.lab


async def _call(tool: str, arguments: dict[str, Any], fn: Callable[[Lab], Any], *, audit: bool = True) -> Any:
    """Run fn(lab) in a worker thread; audit it; turn our errors into MCP tool errors."""
    lab = _lab()

    def body():
        with state.lock:
            t0 = time.perf_counter()
            try:
                out = fn(lab)
            except ToolError as exc:
                if audit:
                    lab.store.audit(tool, arguments, "error", str(exc), (time.perf_counter() - t0) * 1000)
                raise
            if audit:
                lab.store.audit(tool, arguments, "ok", _brief(out), (time.perf_counter() - t0) * 1000)
            return out

    try:
        return await anyio.to_thread.run_sync(body)
    except ToolError as exc:
        raise MCPToolError(str(exc)) from None


def _brief(out: Any) -> str:
    if hasattr(out, "model_dump_json"):
        return out.model_dump_json()[:500]
    return str(out)[:500]


async def _follow(exp_id: int, ctx: Context | None, wait_s: float | None) -> RunSummary:
    """Poll the store until the run ends (or wait_s passes), sending progress notifications."""
    lab = _lab()
    deadline = None if wait_s is None else time.monotonic() + wait_s
    last_sent, last_msg = 0.0, None
    while True:
        s = await _call("experiment_status", {"experiment_id": exp_id}, lambda lab: ex.summary(lab, exp_id),
                        audit=False)
        if s.status in ex.TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return s
        if ctx is not None:
            msg = _progress_message(s, lab)
            now = time.monotonic()
            if msg != last_msg or now - last_sent >= PROGRESS_EVERY_S:
                budget = lab.config.time_budget_s
                await ctx.report_progress(float(s.duration_s or 0.0), budget, msg)
                last_sent, last_msg = now, msg
        await anyio.sleep(POLL_S)


def _progress_message(s: RunSummary, lab: Lab) -> str:
    if s.status == "queued":
        return f"experiment {s.id} queued"
    parts = [f"experiment {s.id} {s.status}"]
    if s.step is not None:
        parts.append(f"step {s.step}")
    if s.loss is not None:
        parts.append(f"loss {s.loss:.4f}")
    if s.duration_s is not None:
        parts.append(f"{s.duration_s:.0f}s")
    return ", ".join(parts)


# -- tools ---------------------------------------------------------------------------------
@mcp.tool(annotations=RUNS)
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
    exp_id = await _call("run_experiment", args,
                         lambda lab: ex.submit_experiment(lab, description, hypothesis, time_budget_s, params))
    if not wait:
        return await _call("experiment_status", {"experiment_id": exp_id}, lambda lab: ex.summary(lab, exp_id),
                           audit=False)
    return await _follow(exp_id, ctx, None)


@mcp.tool(annotations=READ_ONLY)
async def experiment_status(
    experiment_id: ExperimentId,
    wait_s: Annotated[float, Field(ge=0, le=240, description="long-poll up to this many seconds for the end")] = 0,
    ctx: Context | None = None,
) -> RunSummary:
    """Status of one experiment: queued/running (latest step and loss) or the final result."""
    await _call("experiment_status", {"experiment_id": experiment_id, "wait_s": wait_s},
                lambda lab: ex.summary(lab, experiment_id))
    return await _follow(experiment_id, ctx, wait_s)


@mcp.tool(annotations=DESTRUCTIVE)
async def cancel_experiment(experiment_id: ExperimentId, ctx: Context | None = None) -> RunSummary:
    """Stop a queued or running experiment (its whole process tree) and record it as cancelled."""
    await _call("cancel_experiment", {"experiment_id": experiment_id},
                lambda lab: runs.request_cancel(lab, experiment_id))
    return await _follow(experiment_id, ctx, 30)


@mcp.tool(annotations=READ_ONLY)
async def read_results(
    limit: Limit = 20,
    status: Status | None = None,
    order_by: Literal["objective", "created"] = "created",
    include_metrics: bool = False,
) -> ResultsTable:
    """The experiments table (newest first, or best first with order_by='objective'), at most `limit` rows;
    `total` counts all matches."""
    return await _call("read_results", {"limit": limit, "status": status, "order_by": order_by,
                                        "include_metrics": include_metrics},
                       lambda lab: ex.read_results(lab, limit, status, order_by, include_metrics))


@mcp.tool(annotations=READ_ONLY)
async def show_experiment(experiment_id: ExperimentId) -> ExperimentDetail:
    """One experiment in full: config, every metric (per fold too), loss curve, the code diff against
    its parent, and the log tail."""
    return await _call("show_experiment", {"experiment_id": experiment_id},
                       lambda lab: ex.show_experiment(lab, experiment_id))


@mcp.tool(annotations=DESTRUCTIVE)
async def revert(target: RevertTarget) -> RevertResult:
    """Restore the editable files (only those) to an experiment's snapshot, or to 'best'."""
    return await _call("revert", {"target": target}, lambda lab: ex.revert(lab, target))


@mcp.tool(annotations=ADDITIVE)
async def write_note(
    text: NoteText,
    experiment_id: ExperimentId | None = None,
    tags: Tags = None,
) -> NoteOut:
    """Add to the research notebook (your working memory across sessions): what changed, the verdict,
    what you learned, the next idea. Link it to an experiment when it is about one."""
    return await _call("write_note", {"text": text, "experiment_id": experiment_id, "tags": tags},
                       lambda lab: ex.write_note(lab, text, experiment_id, tags or []))


@mcp.tool(annotations=READ_ONLY)
async def read_notes(
    limit: Limit = 20,
    tag: Annotated[str | None, Field(None, max_length=40)] = None,
    query: Annotated[str | None, Field(None, max_length=200, description="substring to search for")] = None,
) -> NotesPage:
    """The research notebook, newest first; filter by tag or a search phrase."""
    return await _call("read_notes", {"limit": limit, "tag": tag, "query": query},
                       lambda lab: ex.read_notes(lab, limit, tag, query))


# -- resources and prompts -----------------------------------------------------------------
async def _read(fn: Callable[[Lab], str]) -> str:
    """Run a resource read in a worker thread, under the store lock; our errors reach the client
    as ResourceError with the reason and the fix (anything else shows as a bare 'Error reading')."""
    try:
        lab = _lab()
    except MCPToolError as exc:
        raise ResourceError(str(exc)) from None

    def body() -> str:
        with state.lock:
            return fn(lab)

    try:
        return await anyio.to_thread.run_sync(body)
    except ToolError as exc:
        raise ResourceError(str(exc)) from None


@mcp.resource("experiments://{experiment_id}", mime_type="application/json")
async def experiment_resource(experiment_id: str) -> str:
    """One experiment, as show_experiment returns it (experiments://<id>, the id from read_results)."""
    if not (experiment_id.isascii() and experiment_id.isdigit()) or len(experiment_id) > 10:
        raise ResourceError(f"experiments://{experiment_id[:40]}: the id must be a positive integer. "
                            f"Fix: use experiments://<id> with an id from read_results, e.g. experiments://1.")
    exp_id = int(experiment_id)
    if not 1 <= exp_id <= 10**9:
        raise ResourceError(f"experiments://{exp_id}: ids start at 1. Fix: use an id from read_results.")
    return await _read(lambda lab: ex.show_experiment(lab, exp_id).model_dump_json(indent=1))


@mcp.resource("notes://recent", mime_type="application/json")
async def recent_notes() -> str:
    """The 20 most recent research notes."""
    return await _read(lambda lab: ex.read_notes(lab, 20).model_dump_json(indent=1))


@mcp.resource("program://agents", mime_type="text/markdown")
async def program_resource() -> str:
    """The research program (AGENTS.md of this workspace)."""
    return await _read(lambda lab: program.read_program(lab.root))


@mcp.prompt()
def research_program() -> str:
    """The research program: how to run the experiment loop with these tools."""
    return program.read_program(_lab().root)


def serve(root: Path | str) -> None:
    configure(root)
    try:
        import uvloop  # noqa: F401
        anyio.run(mcp.run_stdio_async, backend_options={"use_uvloop": True})
    except ImportError:
        anyio.run(mcp.run_stdio_async)


# Tools that live in their own modules register themselves on `mcp` when imported.
from server import integrity, research  # noqa: E402,F401
