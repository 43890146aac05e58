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

from server.calls import READ_ONLY, WRITES, call, follow, state
from tools import hpo, plots, reruns, testeval
from tools import reproduce as repro
from tools.errors import ToolError
from tools.lab import Lab
from tools.schemas import ExperimentId

Seeds = Annotated[int, Field(ge=1, le=reruns.MAX_SEEDS_PER_CALL,
                             description="how many reruns with new SEEDs (1-10); 2 after a baseline")]
SuggestN = Annotated[int, Field(ge=1, le=hpo.MAX_SUGGEST, description="how many configurations to propose (1-8)")]
Wait = Annotated[bool, Field(description="true: block until the runs end (progress is streamed); false: return at once")]


async def rerun_experiment(experiment_id: ExperimentId, seeds: Seeds = 2, wait: Wait = True,
                           ctx: Context | None = None) -> reruns.GroupSummary:
    """Rerun an experiment's snapshot (its recorded code, not the current files) with new SEEDs to
    measure the noise. The runs join its group; verdicts use the group's mean and the std of that
    mean. Use it on the baseline (seeds=2) and on every 'inconclusive' result."""
    root, ids = await call("rerun_experiment", {"experiment_id": experiment_id, "seeds": seeds, "wait": wait},
                            lambda lab: reruns.submit_reruns(lab, experiment_id, seeds))
    if wait:
        for i in ids:
            await follow(i, ctx, None)
    return await call("rerun_experiment", {"experiment_id": root}, lambda lab: reruns.group_summary(lab, root, ids),
                       audit=False)


async def suggest(n: SuggestN = 1) -> hpo.SuggestResult:
    """Propose hyperparameters (train.py constants from the search_space in autoresearch.toml) with
    Optuna TPE, learned from every experiment so far, yours included. Run each with
    run_experiment(params=...) as given; results are fed back to the study automatically."""
    return await call("suggest", {"n": n}, lambda lab: hpo.suggest(lab, n))


async def reproduce(experiment_id: ExperimentId, ctx: Context | None = None) -> repro.ReproduceReport:
    """Run an experiment's snapshot again with the same params and seed, and report the difference:
    objective, metrics, and what changed in what it ran with (packages, device, data, sandbox)."""
    new_id = await call("reproduce", {"experiment_id": experiment_id},
                         lambda lab: repro.submit_reproduction(lab, experiment_id))
    await follow(new_id, ctx, None)
    return await call("reproduce", {"experiment_id": experiment_id},
                       lambda lab: repro.report(lab, experiment_id, new_id), audit=False)


async def plot_progress(
    limit: Annotated[int, Field(ge=1, le=plots.MAX_PLOT_EXPERIMENTS, description="the last N finished experiments")] = 500,
) -> Image:
    """A PNG of the objective per experiment, the kept runs as a step line (the best so far) and the
    noise band a new run must clear."""
    return await call("plot_progress", {"limit": limit},
                       lambda lab: Image(data=plots.progress_png(lab, limit), format="png"))


# -- the held-out test evaluation: registered only when a human allowed it ----------------------
async def evaluate_test(experiment_id: ExperimentId, ctx: Context | None = None) -> testeval.TestEvaluation:
    """Evaluate one experiment's snapshot ONCE on the held-out test split (train on train+val, test
    once). Enabled only because a human set allow_test_eval = true; never use it to choose changes."""

    def check(lab: Lab) -> str:
        if not lab.config.allow_test_eval:
            raise ToolError(TEST_EVAL_DISABLED)
        return "started"

    args = {"experiment_id": experiment_id}
    await call("evaluate_test", args, check)

    def body() -> testeval.TestEvaluation:  # its own connection: the long run does not hold state.lock
        lab = Lab.open(state.root)
        try:
            return testeval.evaluate_test(lab, experiment_id, requested_by="mcp")
        finally:
            lab.close()

    try:
        result = await anyio.to_thread.run_sync(body)
    except ToolError as exc:
        result = exc
    # audited with its outcome; a refusal comes back as an MCP tool error
    return await call("evaluate_test.done", args,
                       lambda lab: _raise(result) if isinstance(result, ToolError) else result)


def _raise(exc: Exception):
    raise exc


TEST_EVAL_DISABLED = ("evaluate_test is disabled: the test split is for humans (`autoresearch evaluate-test`). "
                      "Fix: a human may set allow_test_eval = true in autoresearch.toml.")


def register(mcp: MCPServer) -> None:
    for fn, hints in ((rerun_experiment, WRITES), (suggest, WRITES), (reproduce, WRITES),
                            (plot_progress, READ_ONLY)):
        mcp.add_tool(fn, annotations=hints)


def set_test_eval(mcp: MCPServer, allowed: bool) -> None:
    """List evaluate_test only when the workspace allows it (the SDK's own add/remove)."""
    try:
        mcp.remove_tool("evaluate_test")
    except MCPToolError:  # it was not registered
        pass
    if allowed:
        mcp.add_tool(evaluate_test, annotations=WRITES)
