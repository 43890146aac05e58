"""The MCP server: builds the MCPServer, registers every tool module, serves stdio. No torch here.

Each tool validates (pydantic, through its signature), calls `tools/` in a worker thread under
the store lock, records the call in the audit table (server/calls.py), and returns a pydantic
model (structured content + a JSON text block).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import anyio

from mcp.server import MCPServer
from mcp.types import CallToolResult, TextContent

from server import experiment_tools, history_tools, research_tools
from server.calls import current_lab, open_workspace, state
from tools.errors import ToolError
from tools.lab import Lab

INSTRUCTIONS = """Research loop on an eCLIP model (lower val mean_rank is better).
Loop: read_notes + read_results first; make ONE change to train.py; run_experiment; if the verdict is
not 'improved', revert('best'); write_note after every run (what changed, verdict, next idea).
Runs are sandboxed and recorded; never wait idly: poll experiment_status when wait=False."""


def _version() -> str:
    try:
        return metadata.version("eclip-autoresearch")
    except metadata.PackageNotFoundError:
        return "0"


async def _hidden_test_eval(ctx, call_next):
    """A call to evaluate_test while it is not listed gets the reason and the fix (and is audited),
    not a bare 'unknown tool'."""
    params = ctx.params if isinstance(ctx.params, dict) else {}
    if ctx.method == "tools/call" and params.get("name") == "evaluate_test" and state.lab is not None \
            and not state.lab.config.allow_test_eval:
        lab = current_lab()
        with state.lock:
            lab.store.audit("evaluate_test", params.get("arguments") or {}, "error", research_tools.TEST_EVAL_DISABLED, 0.0)
        return CallToolResult(content=[TextContent(type="text", text=research_tools.TEST_EVAL_DISABLED)], is_error=True)
    return await call_next(ctx)


def build_server() -> MCPServer:
    server = MCPServer("eclip-autoresearch", version=_version(), instructions=INSTRUCTIONS,
                       middleware=[_hidden_test_eval])
    experiment_tools.register(server)
    research_tools.register(server)
    history_tools.register(server)
    return server


mcp = build_server()


def configure(root: Path | str) -> Lab:
    """Open the workspace (recovering runs left over from a previous server) and list
    evaluate_test only if the workspace allows it."""
    try:
        lab = open_workspace(root)
    except ToolError:
        research_tools.set_test_eval(mcp, False)
        raise
    research_tools.set_test_eval(mcp, bool(lab.config.allow_test_eval))
    return lab


def serve(root: Path | str) -> None:
    configure(root)
    try:
        import uvloop  # noqa: F401
        anyio.run(mcp.run_stdio_async, backend_options={"use_uvloop": True})
    except ImportError:
        anyio.run(mcp.run_stdio_async)
