"""MCP client configs for a workspace: Claude Code, Codex CLI, Cursor, VS Code, Gemini CLI.

Each registers `autoresearch serve --workspace <root>` over stdio with this installation's
interpreter, so the client needs nothing on PATH.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tools.errors import ToolError

SERVER_NAME = "autoresearch"
CLIENTS = ("claude", "codex", "cursor", "vscode", "gemini")
TOOLS = ("run_experiment", "experiment_status", "cancel_experiment", "read_results", "show_experiment",
         "revert", "write_note", "read_notes")


def server_command(root: Path) -> tuple[str, list[str]]:
    return sys.executable, ["-m", "server.cli", "serve", "--workspace", str(Path(root).resolve())]


def claude_permissions(editable: list[str]) -> dict:
    """Claude Code: the agent may edit the editable files, read, and call our tools; nothing else."""
    return {
        "permissions": {
            "allow": [*(f"Edit({p})" for p in editable), "Read", "Glob", "Grep", f"mcp__{SERVER_NAME}"],
            "deny": [
                "Bash", "WebFetch", "WebSearch",
                "Bash(git push:*)", "Bash(pip:*)", "Bash(uv:*)", "Bash(curl:*)", "Bash(wget:*)", "Bash(python:*)",
                "Edit(autoresearch.toml)", "Edit(.autoresearch/**)", "Edit(data/**)", "Edit(.git/**)",
                "Edit(.mcp.json)", "Edit(.claude/**)", "Edit(AGENTS.md)",
                "Write(autoresearch.toml)", "Write(.autoresearch/**)", "Write(data/**)", "Write(.git/**)",
                "Write(.mcp.json)", "Write(.claude/**)",
                "Read(data/heldout/**)", "Read(.autoresearch/experiments.db*)",
            ],
        },
        "enabledMcpjsonServers": [SERVER_NAME],
    }


def client_files(root: Path, client: str, *, max_call_s: float, editable: list[str] | None = None) -> dict[str, str]:
    """{relative path: file text} for one client."""
    cmd, args = server_command(root)
    if client == "claude":
        mcp = {"mcpServers": {SERVER_NAME: {"type": "stdio", "command": cmd, "args": args, "env": {},
                                            "timeout": int(max_call_s * 1000)}}}
        return {".mcp.json": json.dumps(mcp, indent=2) + "\n",
                ".claude/settings.json": json.dumps(claude_permissions(editable or ["train.py"]), indent=2) + "\n"}
    if client == "cursor":
        return {".cursor/mcp.json": json.dumps({"mcpServers": {SERVER_NAME: {"command": cmd, "args": args}}},
                                               indent=2) + "\n"}
    if client == "vscode":
        return {".vscode/mcp.json": json.dumps({"servers": {SERVER_NAME: {"type": "stdio", "command": cmd,
                                                                          "args": args}}}, indent=2) + "\n"}
    if client == "gemini":
        cfg = {"mcpServers": {SERVER_NAME: {"command": cmd, "args": args, "timeout": int(max_call_s * 1000),
                                            "includeTools": list(TOOLS)}}}
        return {".gemini/settings.json": json.dumps(cfg, indent=2) + "\n"}
    if client == "codex":
        toml = (f"[mcp_servers.{SERVER_NAME}]\ncommand = {json.dumps(cmd)}\nargs = {json.dumps(args)}\n"
                f"startup_timeout_sec = 30\ntool_timeout_sec = {int(max_call_s)}\n")
        return {".codex/config.toml": toml}
    raise ToolError(f"client {client!r} is unknown. Fix: use one of {', '.join(CLIENTS)}.")


def write_client_configs(root: Path, clients: list[str], *, max_call_s: float,
                         editable: list[str] | None = None) -> list[str]:
    written = []
    for client in dict.fromkeys(clients):
        for rel, text in client_files(root, client, max_call_s=max_call_s, editable=editable).items():
            path = Path(root) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(rel)
    return written
