"""MCP client configs for a workspace: Claude Code, Codex CLI, Cursor, VS Code, Gemini CLI.

Each registers `python -P -m server.cli serve --workspace <root>` over stdio with this
installation's interpreter, so the client needs nothing on PATH. `-P` keeps the client's working
directory (the workspace) off sys.path: a `tools/` or `server/` folder in the workspace can not
shadow the server's own packages.

Claude Code also gets `.claude/settings.json`: the agent may edit the editable files, read, and
call our tools, and nothing else (`defaultMode: dontAsk` refuses whatever no rule allows).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tools.errors import ToolError

SERVER_NAME = "autoresearch"
CLIENTS = ("claude", "codex", "cursor", "vscode", "gemini")
EXTRA_CALL_S = 600  # a blocking run_experiment call may wait in the queue and for eval beyond the budget

# Denied even if a user later re-allows Bash (a bare "Bash" deny removes the tool altogether).
PACKAGE_MANAGERS = ("pip", "pip3", "uv", "uvx", "pipx", "poetry", "conda", "mamba", "micromamba",
                    "npm", "npx", "pnpm", "yarn", "apt", "apt-get", "brew")
NETWORK_COMMANDS = ("curl", "wget", "ssh", "scp", "rsync", "nc", "git clone", "git fetch", "git pull", "git push")
# Workspace files the agent must not change: the config, the DB and run dirs, the data, git, the
# program and every client's config. (Edit rules cover Write/MultiEdit/NotebookEdit too.)
PROTECTED = ("autoresearch.toml", "score.py", ".autoresearch/**", "data/**", ".git/**", ".gitignore", "AGENTS.md", "CLAUDE.md",
             ".mcp.json", ".claude/**", ".codex/**", ".cursor/**", ".vscode/**", ".gemini/**")
HARNESS_PACKAGES = ("model", "sandbox", "server", "tools")


def server_command(root: Path) -> tuple[str, list[str]]:
    return sys.executable, ["-P", "-m", "server.cli", "serve", "--workspace", str(Path(root).resolve())]


def call_timeout_s(time_budget_s: float) -> float:
    """How long a client should let one tool call run: the budget plus queueing and evaluation."""
    return float(time_budget_s) + EXTRA_CALL_S


def harness_dirs() -> list[Path]:
    """This installation's packages (the frozen harness and the server): never editable by the agent."""
    base = Path(__file__).resolve().parent.parent
    return [base / p for p in HARNESS_PACKAGES if (base / p).is_dir()]


def claude_permissions(editable: list[str]) -> dict:
    """Claude Code: edit the editable files, read, call our tools; nothing else."""
    harness = [f"Edit(/{d}/**)" for d in harness_dirs()]  # "//abs/path" is Claude Code's absolute form
    return {
        "permissions": {
            "defaultMode": "dontAsk",
            "allow": [*(f"Edit(./{p})" for p in editable), "Read", "Glob", "Grep", f"mcp__{SERVER_NAME}"],
            "deny": [
                "Bash", "WebFetch", "WebSearch",
                *(f"Bash({c}:*)" for c in (*NETWORK_COMMANDS, *PACKAGE_MANAGERS, "python", "python3", "sudo")),
                *(f"Edit({p})" for p in PROTECTED),
                *harness,
                "Read(data/heldout/**)", "Read(.autoresearch/experiments.db*)",
            ],
        },
        "enabledMcpjsonServers": [SERVER_NAME],
    }


def client_files(root: Path, client: str, *, max_call_s: float, editable: list[str] | None = None) -> dict[str, str]:
    """{relative path: file text} for one client."""
    cmd, args = server_command(root)
    timeout_ms = int(max_call_s * 1000)
    if client == "claude":
        mcp = {"mcpServers": {SERVER_NAME: {"type": "stdio", "command": cmd, "args": args, "env": {},
                                            "timeout": timeout_ms}}}
        return {".mcp.json": json.dumps(mcp, indent=2) + "\n",
                ".claude/settings.json": json.dumps(claude_permissions(editable or ["train.py"]), indent=2) + "\n"}
    if client == "cursor":
        return {".cursor/mcp.json": json.dumps({"mcpServers": {SERVER_NAME: {"command": cmd, "args": args}}},
                                               indent=2) + "\n"}
    if client == "vscode":
        return {".vscode/mcp.json": json.dumps({"servers": {SERVER_NAME: {"type": "stdio", "command": cmd,
                                                                          "args": args}}}, indent=2) + "\n"}
    if client == "gemini":
        cfg = {"mcpServers": {SERVER_NAME: {"command": cmd, "args": args, "timeout": timeout_ms, "trust": False}}}
        return {".gemini/settings.json": json.dumps(cfg, indent=2) + "\n"}
    if client == "codex":
        # Codex reads a project's .codex/config.toml once the project is trusted. JSON strings are
        # valid TOML basic strings, so json.dumps quotes safely.
        toml = ("# eclip-autoresearch: shell commands in Codex's sandbox, no network, ask before untrusted ones.\n"
                'sandbox_mode = "workspace-write"\napproval_policy = "untrusted"\n\n'
                "[sandbox_workspace_write]\nnetwork_access = false\n\n"
                f"[mcp_servers.{SERVER_NAME}]\ncommand = {json.dumps(cmd)}\nargs = {json.dumps(args)}\n"
                f"startup_timeout_sec = 30\ntool_timeout_sec = {int(max_call_s)}\n")
        return {".codex/config.toml": toml}
    raise ToolError(f"client {client!r} is unknown. Fix: use one of {', '.join(CLIENTS)}.")


def render(root: Path, clients: list[str], *, max_call_s: float, editable: list[str] | None = None) -> dict[str, str]:
    """{relative path: text} for several clients ('all' means every one)."""
    names = list(CLIENTS) if "all" in clients else list(dict.fromkeys(clients))
    out: dict[str, str] = {}
    for client in names:
        out.update(client_files(root, client, max_call_s=max_call_s, editable=editable))
    return out


def write_client_configs(root: Path, clients: list[str], *, max_call_s: float, editable: list[str] | None = None,
                         overwrite: bool = True) -> list[str]:
    """Write the configs; with overwrite=False, refuse (before writing anything) to replace a file
    whose text differs, so a user's edits are not lost silently."""
    files = render(root, clients, max_call_s=max_call_s, editable=editable)
    if not overwrite:
        changed = [rel for rel, text in files.items()
                   if (Path(root) / rel).is_file() and (Path(root) / rel).read_text() != text]
        if changed:
            raise ToolError(f"{', '.join(changed)} already exist with other content. "
                            "Fix: pass --force to replace them, or run without --write and merge by hand.")
    written = []
    for rel, text in files.items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(rel)
    return written
