"""What every MCP tool shares: the open workspace, the call helper (worker thread, store lock, clear
errors), bounded results, following runs with progress notifications, and the tool annotations.

Tool modules (server/*_tools.py) import from here; server/app.py builds the MCPServer, registers
them and audits every request (its middleware). Nothing here registers anything.

Bounds: every tool result is at most MAX_RESULT_BYTES of JSON (structured content; the text block is
the same JSON, compact and without nulls, so never bigger). A longer string is cut with a marker
"…[cut N chars]", a longer list loses its last items (tables say `total`). plot_progress returns
one PNG (tools/plots.py bounds it). A call that waits for a run returns after wait_s at most (the
workspace's max_wait_s, 40 s by default) with the id and how to follow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Callable

import anyio
from pydantic import BaseModel, Field

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.server.mcpserver.exceptions import ToolError as MCPToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations

from tools import experiments as ex
from tools import runs
from tools.errors import ToolError
from tools.lab import Lab
from tools.rundir import CACHE_STATUS, fold_dirs, latest_progress, read_cache_status
from tools.schemas import RunSummary
from tools.store import TERMINAL

log = logging.getLogger("autoresearch.server")

# The spec's defaults (readOnlyHint false, idempotentHint false) are left out: tools/list stays lean.
# openWorldHint false: no tool reaches beyond this workspace.
READ_ONLY = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
WRITES = ToolAnnotations(destructiveHint=False, openWorldHint=False)
DESTRUCTIVE = ToolAnnotations(destructiveHint=True, idempotentHint=True, openWorldHint=False)

MAX_RESULT_BYTES = 8192
HEARTBEAT_S = 15.0     # an unchanged state is re-reported (a little further on) this often, never more
POLL_S = 1.0
TINY = 1e-3            # how far a heartbeat moves progress when the clock stands still (queued)


class _State:
    lab: Lab | None = None
    root: Path = Path.cwd()
    lock = threading.Lock()  # one SQLite connection: calls take turns
    warned: set[str] = set()  # the sandbox warnings this server (one agent session over stdio) has shown


state = _State()


def open_workspace(root: Path | str) -> Lab:
    """Open the workspace and settle runs left over from a previous server (recovery)."""
    if state.lab is not None:
        state.lab.close()
    state.root = Path(root).resolve()
    state.lab = Lab.open(state.root)
    state.warned = set()
    runs.recover(state.lab)
    return state.lab


def current_lab() -> Lab:
    if state.lab is None:
        try:
            open_workspace(state.root)
        except ToolError as exc:
            raise MCPToolError(str(exc)) from None
    return state.lab


def internal_error(what: str, exc: BaseException) -> str:
    """The text of an error we did not anticipate: what failed and what to do, never a bare 'Error'."""
    log.error("%s failed", what, exc_info=exc)
    return (f"{what} failed with an internal error ({type(exc).__name__}: {str(exc)[:200]}); nothing is known to "
            "have changed. Fix: check the arguments against the tool's schema and retry; if it persists, report it "
            "with the server log")


async def call(tool: str, fn: Callable[[Lab], Any], *, locked: bool = True) -> Any:
    """Run fn(lab) in a worker thread under the store lock (locked=False: fn opens its own store
    connection, so a slow call such as suggest never makes the other tools wait); our errors (and
    any other) become clear MCP tool errors. The request itself is audited by server/app.py's middleware."""
    lab = current_lab()

    def body():
        if not locked:
            return fn(lab)
        with state.lock:
            return fn(lab)

    try:
        return await anyio.to_thread.run_sync(body)
    except ToolError as exc:
        raise MCPToolError(str(exc)) from None
    except (MCPToolError, ResourceError):
        raise
    except Exception as exc:
        raise MCPToolError(internal_error(tool, exc)) from None


# -- bounded results ----------------------------------------------------------------------------
def _size(data) -> int:
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())


def _drop_nulls(data):
    if isinstance(data, dict):
        return {k: _drop_nulls(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_nulls(v) for v in data]
    return data


def _largest(data, path=()):
    """(size, path) of the biggest string or non-empty list inside data."""
    best = (0, None)
    if isinstance(data, str):
        return (len(data.encode()), path)
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    if isinstance(data, list) and data:
        best = (_size(data), path)
    for k, v in items:
        if isinstance(v, (str, list, dict)):
            cand = _largest(v, (*path, k))
            if cand[1] is not None and cand[0] > best[0]:
                best = cand
    return best


def bounded(data: dict, limit: int = MAX_RESULT_BYTES, model: type[BaseModel] | None = None) -> dict:
    """data cut down to `limit` bytes of JSON: the biggest strings are cut (with a marker), the longest
    lists lose their last items; the result still validates against `model`."""
    excess = _size(data) - limit
    for _ in range(200):
        if excess <= 0:
            return data
        size, path = _largest(data)
        if path is None or size < 64:
            break
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        value = parent[path[-1]] if path else data
        if isinstance(value, str):
            keep = max(32, len(value) - excess - 40)
            keep = min(keep, len(value) - 40)
            parent[path[-1]] = value[:keep] + f"…[cut {len(value) - keep} chars]"
        else:
            n = len(value)
            del value[n - min(n, max(1, math.ceil(excess / max(1, size // n)))):]
        excess = _size(data) - limit
    if model is not None and excess > 0:
        raise MCPToolError(f"the result is larger than {limit} bytes even when cut. Fix: ask for fewer rows "
                           "(a smaller limit)")
    return data


def respond(out: BaseModel, limit: int = MAX_RESULT_BYTES) -> CallToolResult:
    """A model as a bounded tool result: the structured content (every field, as the model has it),
    and as the one text block the same JSON, compact and without nulls (clients that show only text
    see everything; it is never bigger than the structured content)."""
    data = bounded(out.model_dump(mode="json"), limit, type(out))
    text = json.dumps(_drop_nulls(data), separators=(",", ":"), ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


def resource_json(out: BaseModel, limit: int = 4 * MAX_RESULT_BYTES) -> str:
    return json.dumps(_drop_nulls(bounded(out.model_dump(mode="json"), limit, type(out))),
                      separators=(",", ":"), ensure_ascii=False)


async def read_resource(fn: Callable[[Lab], str], *, about_params: bool = False) -> str:
    """Run a resource read in a worker thread, under the store lock. With about_params, our errors
    concern the URI's parameters (an experiment that does not exist): -32602 with the reason and the
    fix; otherwise -32603 with them."""
    try:
        lab = current_lab()
    except MCPToolError as exc:
        raise ResourceError(str(exc)) from None

    def body() -> str:
        with state.lock:
            return fn(lab)

    try:
        return await anyio.to_thread.run_sync(body)
    except ToolError as exc:
        raise (ResourceNotFoundError if about_params else ResourceError)(str(exc)) from None
    except ResourceError:
        raise
    except Exception as exc:
        raise ResourceError(internal_error("reading the resource", exc)) from None


# -- waiting for runs, with progress -----------------------------------------------------------
WaitS = Annotated[float | None, Field(None, ge=0, le=3600, description=(
    "seconds to wait for the end (default and cap: the workspace's max_wait_s, 40); 0: return at once"))]


def wait_bound(lab: Lab, wait_s: float | None) -> tuple[float, float]:
    """(seconds this call may wait, the workspace's max_wait_s)."""
    limit = float(lab.config.max_wait_s)
    return (limit if wait_s is None else max(0.0, min(float(wait_s), limit))), limit


class Progress:
    """The progress of one request: one clock (seconds since the followed run started; queued time
    counts as 0), strictly increasing across every notification, including the runs a request
    follows one after another; an unchanged state is re-sent only as a heartbeat every HEARTBEAT_S,
    moved on by at least TINY. `total` is what bounds the runs (budget + grace per process, and the
    scorer's timeout), never below the progress."""

    def __init__(self, ctx: Context | None, runs: int = 1):
        self.ctx, self.runs_left = ctx, max(1, runs)
        self.offset = 0.0
        self.last: float | None = None
        self.total: float | None = None
        self.last_msg: str | None = None
        self.sent_at = -math.inf
        self.sent: list[tuple[float, float | None, str]] = []  # for tests and the log

    def next_run(self) -> None:
        """The request moves on to its next run: that run's clock starts where this one stopped."""
        self.offset = self.last or 0.0
        self.runs_left = max(1, self.runs_left - 1)

    async def report(self, value: float, bound: float, msg: str) -> None:
        if self.ctx is None:
            return
        now = time.monotonic()
        if msg == self.last_msg and now - self.sent_at < HEARTBEAT_S:
            return
        v = self.offset + max(0.0, value)
        if self.last is not None and v <= self.last:
            v = self.last + TINY
        total = max(self.offset + bound + (self.runs_left - 1) * bound, v, self.total or 0.0)
        v, total = round(v, 3), round(total, 3)
        if self.last is not None and v <= self.last:
            v = round(self.last + TINY, 3)
        self.last, self.total, self.last_msg, self.sent_at = v, total, msg, now
        self.sent.append((v, total, msg))
        await self.ctx.report_progress(v, total, msg)


def _observe(lab: Lab, exp_id: int) -> tuple[RunSummary, float, float, str]:
    """(summary, seconds since it started (0 while queued), what bounds it in seconds, the message)."""
    s = ex.summary(lab, exp_id)
    exp = lab.experiment(exp_id)
    cfg = lab.config
    eclip = cfg.scorer == "eclip"
    bound = float(exp["time_budget_s"] or cfg.time_budget_s) + cfg.processes * cfg.timeout_grace_s + \
        (0.0 if eclip else cfg.scorer_timeout_s)
    started = exp["started_at"]
    if s.status == "queued" or not started:
        return s, 0.0, bound, f"experiment {exp_id} queued"
    elapsed = max(0.0, time.time() - started)
    run_dir = lab.run_dir(exp_id)
    parts = [f"experiment {exp_id} {s.status}"]
    if eclip:  # the harness builds each fold's data first (not charged to the budget): the bound moves on
        status = read_cache_status(run_dir)
        if status and status.startswith("building"):
            bound += elapsed
            parts.append(status[:120])
        else:
            try:
                bound += max(0.0, os.lstat(run_dir / CACHE_STATUS).st_mtime - started)
            except OSError:
                pass
        folds = fold_dirs(run_dir)
        if folds and cfg.processes > 1:
            parts.append(f"fold {len(folds)}/{cfg.processes}")
    p = latest_progress(run_dir)
    if p.step is not None:
        parts.append(f"step {p.step}")
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4g}")
    return s, elapsed, bound, ", ".join(parts)


async def follow(exp_id: int, progress: Progress, deadline: float) -> RunSummary:
    """Poll until the run ends or the monotonic deadline passes, reporting progress."""
    t0 = time.monotonic()
    while True:
        s, value, bound, msg = await call("experiment_status", lambda lab: _observe(lab, exp_id))
        if s.status in TERMINAL or time.monotonic() >= deadline:
            return s
        await progress.report(value, bound, msg)
        # a status read is ~0.1 ms: poll fast while a short run may be ending, then back off
        await anyio.sleep(min(poll_interval(time.monotonic() - t0), max(0.05, deadline - time.monotonic())))


def poll_interval(waited_s: float, slow: float = POLL_S) -> float:
    """0.05 s for the first 2 s of a wait, then `slow` (short runs end sooner, long ones cost nothing)."""
    return 0.05 if waited_s < 2.0 else slow


def follow_hint(exp_ids: list[int], limit: float) -> str:
    """How to follow runs that are still going when a call returns."""
    which = f"experiment_id={exp_ids[0]}" if len(exp_ids) == 1 else f"experiment_id=<each of {exp_ids}>"
    return (f"follow with experiment_status({which}, wait_s={limit:g}) (it returns when the run ends, or after "
            f"{limit:g} s with progress on the way), or cancel_experiment; meanwhile read_notes / "
            "search_experiments to plan the next change")


def once_per_session(warnings: list[str] | None) -> list[str] | None:
    """The sandbox's warnings are the same for every run of a backend: a session reads each once (the
    first result that has it); `autoresearch doctor` and show_experiment(id, detail='full') keep them."""
    new = [w for w in warnings or [] if w not in state.warned]
    state.warned.update(new)
    return new or None


async def wait_for(exp_ids: list[int], ctx: Context | None, wait_s: float | None) -> list[RunSummary]:
    """Follow runs one after another for at most the call's wait; unfinished ones say how to follow."""
    waited, limit = wait_bound(current_lab(), wait_s)
    t0 = time.monotonic()
    deadline = t0 + waited
    progress = Progress(ctx, len(exp_ids))
    out = []
    for i, exp_id in enumerate(exp_ids):
        if i:
            progress.next_run()
        s = await follow(exp_id, progress, deadline)
        s.warnings = once_per_session(s.warnings)
        if s.status not in TERMINAL:
            s.next = f"still {s.status} after {time.monotonic() - t0:.0f} s: " + follow_hint([exp_id], limit)
        out.append(s)
    return out
