"""What every MCP tool shares: the open workspace, the call helper (worker thread, store lock,
audit, errors), following a run with progress notifications, and the tool annotations.

Tool modules (server/*_tools.py) import from here; server/app.py builds the MCPServer and
registers them. Nothing here registers anything.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import anyio

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.mcpserver.exceptions import ToolError as MCPToolError
from mcp.types import ToolAnnotations

from tools import experiments as ex
from tools import runs
from tools.errors import ToolError
from tools.lab import Lab
from tools.schemas import RunSummary
from tools.store import TERMINAL

READ_ONLY = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)
WRITES = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False)
DESTRUCTIVE = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False)

PROGRESS_EVERY_S = 5.0
POLL_S = 1.0


class _State:
    lab: Lab | None = None
    root: Path = Path.cwd()
    lock = threading.Lock()  # one SQLite connection: calls take turns


state = _State()


def open_workspace(root: Path | str) -> Lab:
    """Open the workspace and settle runs left over from a previous server (recovery)."""
    if state.lab is not None:
        state.lab.close()
    state.root = Path(root).resolve()
    state.lab = Lab.open(state.root)
    runs.recover(state.lab)
    return state.lab


def current_lab() -> Lab:
    if state.lab is None:
        try:
            open_workspace(state.root)
        except ToolError as exc:
            raise MCPToolError(str(exc)) from None
    return state.lab


async def call(tool: str, arguments: dict[str, Any], fn: Callable[[Lab], Any], *, audit: bool = True) -> Any:
    """Run fn(lab) in a worker thread; audit it; turn our errors into MCP tool errors."""
    lab = current_lab()

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


async def read_resource(fn: Callable[[Lab], str]) -> str:
    """Run a resource read in a worker thread, under the store lock; our errors reach the client
    as ResourceError with the reason and the fix (anything else shows as a bare 'Error reading')."""
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
        raise ResourceError(str(exc)) from None


async def follow(exp_id: int, ctx: Context | None, wait_s: float | None) -> RunSummary:
    """Poll the store until the run ends (or wait_s passes), sending progress notifications."""
    lab = current_lab()
    deadline = None if wait_s is None else time.monotonic() + wait_s
    last_sent, last_msg = 0.0, None
    while True:
        s = await call("experiment_status", {"experiment_id": exp_id}, lambda lab: ex.summary(lab, exp_id),
                       audit=False)
        if s.status in TERMINAL or (deadline is not None and time.monotonic() >= deadline):
            return s
        if ctx is not None:
            msg = progress_message(s)
            now = time.monotonic()
            if msg != last_msg or now - last_sent >= PROGRESS_EVERY_S:
                budget = lab.config.time_budget_s
                await ctx.report_progress(float(s.duration_s or 0.0), budget, msg)
                last_sent, last_msg = now, msg
        await anyio.sleep(POLL_S)


def progress_message(s: RunSummary) -> str:
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
