"""Querying the past: search_experiments, compare_experiments, best_trajectory, the leaderboard
resource and the resume prompt. Thin functions over tools.search and tools.history; all
read-only and bounded; `register` adds them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mcp.server import MCPServer

from server.calls import READ_ONLY, call, read_resource, resource_json, respond
from tools import history, search
from tools.schemas import Status


# -- tools ---------------------------------------------------------------------------------
async def search_experiments(
    query: search.Query,
    status: Status | None = None,
    verdict: search.Verdict | None = None,
    limit: search.SearchLimit = 10,
) -> search.SearchPage:
    """Full-text search of past experiments (descriptions, hypotheses, notes, code changes): was an
    idea tried, and how did it go?"""
    return respond(await call("search_experiments",
                              lambda lab: search.search_experiments(lab, query, status, verdict, limit)))


async def compare_experiments(
    a: Annotated[int, Field(ge=1, le=10**9, description="the reference experiment, e.g. the best")],
    b: Annotated[int, Field(ge=1, le=10**9, description="the experiment to compare with a")],
) -> history.Comparison:
    """What separates two experiments: config changes, the code diff a -> b, each metric's delta and
    noise (|sigmas| < 2: within the noise)."""
    return respond(await call("compare_experiments", lambda lab: history.compare_experiments(lab, a, b)))


async def best_trajectory(
    limit: Annotated[int, Field(ge=1, le=200, description="points to return (first and latest)")] = 30,
) -> history.Trajectory:
    """Each experiment that became the new best (noise-aware), in order, with its objective and gain."""
    return respond(await call("best_trajectory", lambda lab: history.best_trajectory(lab, limit)))


# -- resources -----------------------------------------------------------------------------
async def leaderboard_resource() -> str:
    """The 10 best successful experiments and the best-so-far trajectory."""
    return await read_resource(lambda lab: resource_json(history.leaderboard(lab)))


# -- prompts -------------------------------------------------------------------------------
async def resume() -> str:
    """Pick the research loop up after a restart: where things stand, the best, the trajectory,
    the latest runs and notes, and what to do next."""
    return await read_resource(history.resume_brief)


TOOLS = ((search_experiments, "Search past experiments"), (compare_experiments, "Compare two experiments"),
         (best_trajectory, "Best-so-far trajectory"))


def register(mcp: MCPServer) -> None:
    for fn, title in TOOLS:
        mcp.add_tool(fn, title=title, annotations=READ_ONLY)
    mcp.resource("leaderboard://top", mime_type="application/json")(leaderboard_resource)
    mcp.prompt(title="Resume the research loop")(resume)
