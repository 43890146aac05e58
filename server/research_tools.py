"""Tools for research integrity and smarter search: rerun_experiment (seed groups, the noise
estimate), suggest (Optuna), reproduce, plot_progress, and evaluate_test, which exists only when a
human set `allow_test_eval = true`. Every call goes through `call`, so it is audited. No torch,
optuna or matplotlib at import."""

from __future__ import annotations

from typing import Annotated

import anyio
from pydantic import Field

from mcp.server import MCPServer
from mcp.server.mcpserver import Context, Image
from mcp.server.mcpserver.exceptions import ToolError as MCPToolError

from server.calls import (READ_ONLY, WRITES, WaitS, call, current_lab, follow_hint, internal_error, respond, state,
                          wait_bound, wait_for)
from tools import hpo, plots, reruns, testeval
from tools import reproduce as repro
from tools.errors import ToolError
from tools.lab import Lab
from tools.schemas import ExperimentId
from tools.store import TERMINAL

Seeds = Annotated[int, Field(ge=1, le=reruns.MAX_SEEDS_PER_CALL,
                             description="how many reruns with new SEEDs (1-10); 2 after a baseline")]
SuggestN = Annotated[int, Field(ge=1, le=hpo.MAX_SUGGEST, description="how many configurations to propose (1-8)")]


async def rerun_experiment(experiment_id: ExperimentId, seeds: Seeds = 2, wait_s: WaitS = None,
                           ctx: Context | None = None) -> reruns.GroupSummary:
    """Rerun an experiment's snapshot with new SEEDs to measure the noise: its group's mean and std
    decide verdicts. Use it on the baseline and on 'inconclusive' results. Waits up to wait_s."""
    root, ids = await call("rerun_experiment", lambda lab: reruns.submit_reruns(lab, experiment_id, seeds))
    done = await wait_for(ids, ctx, wait_s)
    out = await call("rerun_experiment", lambda lab: reruns.group_summary(lab, root, ids))
    going = [s.id for s in done if s.status not in TERMINAL]
    if going:
        out.next = follow_hint(going, wait_bound(current_lab(), None)[1]) + \
            f"; the group's verdict: read_results or rerun's members via show_experiment({root})"
    return respond(out)


async def suggest(n: SuggestN = 1) -> hpo.SuggestResult:
    """Propose train.py constants from the search_space (Optuna TPE over every experiment). Run each
    with run_experiment(params=...); results feed back automatically."""
    return respond(await call("suggest", lambda lab: hpo.suggest(lab, n), locked=False))


async def reproduce(experiment_id: ExperimentId, wait_s: WaitS = None,
                    ctx: Context | None = None) -> repro.ReproduceReport:
    """Rerun a snapshot with the same params and seed; report the difference (objective, metrics,
    environment). Waits up to wait_s."""
    new_id = await call("reproduce", lambda lab: repro.submit_reproduction(lab, experiment_id))
    (s,) = await wait_for([new_id], ctx, wait_s)
    out = await call("reproduce", lambda lab: repro.report(lab, experiment_id, new_id))
    if s.status not in TERMINAL:
        out.next = s.next + f"; then reproduce's report: compare_experiments(a={experiment_id}, b={new_id})"
    return respond(out)


async def plot_progress(
    limit: Annotated[int, Field(ge=1, le=plots.MAX_PLOT_EXPERIMENTS, description="the last N finished experiments")] = 500,
) -> Image:
    """A PNG of the objective per experiment: kept runs as the best-so-far step line, and the noise band."""
    return await call("plot_progress", lambda lab: Image(data=plots.progress_png(lab, limit), format="png"))


# -- the held-out test evaluation: registered only when a human allowed it ----------------------
async def evaluate_test(experiment_id: ExperimentId, ctx: Context | None = None) -> testeval.TestEvaluation:
    """Evaluate one experiment's snapshot ONCE on the held-out test split (train on train+val, test
    once). Enabled only because a human set allow_test_eval = true; never use it to choose changes."""

    def check(lab: Lab) -> str:
        if not lab.config.allow_test_eval:
            raise ToolError(TEST_EVAL_DISABLED)
        return "started"

    await call("evaluate_test", check)

    def body() -> testeval.TestEvaluation:  # its own connection: the long run does not hold state.lock
        lab = Lab.open(state.root)
        try:
            return testeval.evaluate_test(lab, experiment_id, requested_by="mcp")
        finally:
            lab.close()

    try:
        result = await anyio.to_thread.run_sync(body)
    except ToolError as exc:
        raise MCPToolError(str(exc)) from None
    except Exception as exc:
        raise MCPToolError(internal_error("evaluate_test", exc)) from None
    return respond(result)


TEST_EVAL_DISABLED = ("evaluate_test is disabled: the test split is for humans (`autoresearch evaluate-test`). "
                      "Fix: a human may set allow_test_eval = true in autoresearch.toml.")


TOOLS = ((rerun_experiment, "Rerun with new seeds", WRITES), (suggest, "Suggest hyperparameters", WRITES),
         (reproduce, "Reproduce an experiment", WRITES), (plot_progress, "Plot the progress", READ_ONLY))


def register(mcp: MCPServer) -> None:
    for fn, title, hints in TOOLS:
        mcp.add_tool(fn, title=title, annotations=hints)


def set_test_eval(mcp: MCPServer, allowed: bool) -> None:
    """List evaluate_test only when the workspace allows it (the SDK's own add/remove)."""
    try:
        mcp.remove_tool("evaluate_test")
    except MCPToolError:  # it was not registered
        pass
    if allowed:
        mcp.add_tool(evaluate_test, title="Evaluate on the test split (once)", annotations=WRITES)
