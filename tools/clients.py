"""MCP client configs for a workspace: Claude Code, Codex CLI, Cursor, VS Code, Gemini CLI.

Each registers `python -P -m server.cli serve --workspace <root>` over stdio with this
installation's interpreter, so the client needs nothing on PATH. `-P` keeps the client's working
directory (the workspace) off sys.path: a `tools/` or `server/` folder in the workspace can not
shadow the server's own packages.

Claude Code also gets `.claude/settings.json`: the agent may edit the editable files, read, and
call our tools, and nothing else (`defaultMode: dontAsk` refuses whatever no rule allows).

`autoresearch serve --http` (the agent on a laptop, the GPU box elsewhere) needs the bearer token in
TOKEN_FILE: a random 0600 file that writing the configs creates (`init`, `clients`); `clients`
prints each HTTP-capable client's config for it. Timeouts: every call that waits for a run returns
after the workspace's max_wait_s, so a client's tool timeout only has to cover that (plus a margin)
and evaluate_test, which runs to its end.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import sys
import tomllib
from pathlib import Path

from tools.errors import ToolError

SERVER_NAME = "autoresearch"
CLIENTS = ("claude", "codex", "cursor", "vscode", "gemini")
EXTRA_CALL_S = 600  # evaluate_test (when a human allows it) runs to its end: the budget plus queue and eval
DEFAULT_MAX_WAIT_S = 40.0  # autoresearch.toml max_wait_s: what any other call waits at most
WAIT_MARGIN_S = 60  # beyond max_wait_s: the store lock, the last poll, the transport
TOKEN_FILE = ".autoresearch/http-token"
MIN_TOKEN_CHARS = 32
HTTP_URL = "http://127.0.0.1:8765/mcp"
TOKEN_ENV = "AUTORESEARCH_TOKEN"

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


def call_timeout_s(time_budget_s: float, max_wait_s: float = DEFAULT_MAX_WAIT_S) -> float:
    """How long a client should let one tool call run: at least max_wait_s plus a margin (the calls that
    wait for a run), and the budget plus queueing and evaluation (evaluate_test, when allowed)."""
    return max(float(time_budget_s) + EXTRA_CALL_S, float(max_wait_s) + WAIT_MARGIN_S)


def _workspace_timeout(root: Path, max_call_s: float) -> float:
    """max_call_s, raised to cover the workspace's own max_wait_s (autoresearch.toml) when it has one."""
    try:
        from_file = tomllib.loads((Path(root) / "autoresearch.toml").read_text()).get("max_wait_s")
    except (OSError, ValueError):
        return max_call_s
    if isinstance(from_file, (int, float)) and not isinstance(from_file, bool) and 0 < from_file <= 3600:
        return max(max_call_s, float(from_file) + WAIT_MARGIN_S)
    return max_call_s


# -- the bearer token of `serve --http` --------------------------------------------------------------
def ensure_token(root: Path) -> Path:
    """Create the workspace's HTTP bearer token (random, mode 0600) unless it exists; its path."""
    path = Path(root) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path


def read_token(root: Path, *, create: bool = False) -> str:
    """The bearer token `serve --http` requires; a ToolError (the server refuses to start) when it is
    missing, weak, a link, or readable by others."""
    path = Path(root) / TOKEN_FILE
    if create:
        ensure_token(root)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ToolError(f"refusing to serve HTTP without a bearer token: {path} does not exist. Fix: run "
                        f"`autoresearch clients -w {root}` (it creates the token), then retry.") from None
    if not stat.S_ISREG(st.st_mode):
        raise ToolError(f"refusing to serve HTTP: {path} is not a regular file. Fix: delete it and run "
                        f"`autoresearch clients -w {root}` to create a new token.")
    if st.st_mode & 0o077:
        raise ToolError(f"refusing to serve HTTP: the bearer token {path} is readable by others "
                        f"(mode {stat.S_IMODE(st.st_mode):o}). Fix: chmod 600 {path}.")
    token = path.read_text(errors="replace").strip()
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or any(c.isspace() for c in token):
        raise ToolError(f"refusing to serve HTTP: the bearer token in {path} is weaker than {MIN_TOKEN_CHARS} "
                        f"printable characters. Fix: delete it and run `autoresearch clients -w {root}`.")
    return token


def http_configs(root: Path, *, max_call_s: float, url: str = HTTP_URL) -> str:
    """How each client that speaks Streamable HTTP connects to `autoresearch serve --http`."""
    token = Path(root).resolve() / TOKEN_FILE
    ms = int(max_call_s * 1000)
    hdr = {"Authorization": f"Bearer ${{{TOKEN_ENV}}}"}
    vscode = {"servers": {SERVER_NAME: {"type": "http", "url": url,
                                        "headers": {"Authorization": "Bearer ${input:autoresearch-token}"}}},
              "inputs": [{"type": "promptString", "id": "autoresearch-token", "password": True,
                          "description": f"the token in {token}"}]}
    return "\n".join([
        f"# Streamable HTTP: on the machine with the workspace, `autoresearch serve --http -w {Path(root).resolve()}`",
        "# (127.0.0.1:8765; from a laptop: ssh -N -L 8765:127.0.0.1:8765 <gpu-box>). Every request needs the",
        f"# bearer token: export {TOKEN_ENV}=\"$(cat {token})\"",
        "# Claude Code:",
        f"claude mcp add --transport http {SERVER_NAME} {url} --header \"Authorization: Bearer ${TOKEN_ENV}\"",
        f"#   (or .mcp.json: {json.dumps({'mcpServers': {SERVER_NAME: {'type': 'http', 'url': url, 'headers': hdr, 'timeout': ms}}})})",
        "# Codex CLI (.codex/config.toml):",
        f"[mcp_servers.{SERVER_NAME}]\nurl = {json.dumps(url)}\nbearer_token_env_var = {json.dumps(TOKEN_ENV)}\n"
        f"tool_timeout_sec = {int(max_call_s)}",
        "# Cursor (.cursor/mcp.json):",
        json.dumps({"mcpServers": {SERVER_NAME: {"url": url, "headers": {"Authorization": f"Bearer ${{env:{TOKEN_ENV}}}"}}}}),
        "# VS Code (.vscode/mcp.json):",
        json.dumps(vscode),
        "# Gemini CLI (.gemini/settings.json):",
        json.dumps({"mcpServers": {SERVER_NAME: {"httpUrl": url, "headers": {"Authorization": f"Bearer ${TOKEN_ENV}"},
                                                 "timeout": ms}}}),
    ]) + "\n"


def harness_dirs() -> list[Path]:
    """This installation's packages (the frozen harness and the server): never editable by the agent."""
    base = Path(__file__).resolve().parent.parent
    return [base / p for p in HARNESS_PACKAGES if (base / p).is_dir()]


def _path_rules(root: Path, path: Path, tree: bool) -> list[str]:
    """Claude Code path patterns for `path`: `//abs` (its Read tool passes absolute paths), and
    `./rel` too inside the workspace."""
    path = Path(path).resolve()
    tail = "/**" if tree else ""
    out = ["/" + str(path) + tail]  # "//abs/path" is Claude Code's absolute form
    try:
        out.append("./" + str(path.relative_to(Path(root).resolve())) + tail)
    except ValueError:
        pass
    return out


def protected_reads(root: Path) -> list[str]:
    """What the agent must not read, from this workspace's own paths: the dataset (all of it: with
    folds over train+val any pair may be an eval pair, and a train.py holding a looked-up pairing
    would score without learning), the held-out split, the state dir's database, task keys,
    scores, caches and token."""
    root = Path(root)
    state = root / ".autoresearch"
    paths: list[tuple[Path, bool]] = [(state / "tasks", True), (state / "keys", True), (state / "scores", True),
                                      (state / "cache", True),
                                      (state / "test_runs", True), (root / "data", True)]  # data/: init's default
    rules = [r for p, tree in paths for r in _path_rules(root, p, tree)]
    rules += [r for p in (state / "experiments.db*", root / TOKEN_FILE) for r in _path_rules(root, p, False)]
    try:
        cfg = tomllib.loads((root / "autoresearch.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        cfg = {}
    for key, tree in (("data", True), ("test_annotations", False), ("cache_dir", True)):
        value = cfg.get(key)
        if isinstance(value, str) and value:
            p = Path(value).expanduser()
            p = p if p.is_absolute() else root / p
            rules += _path_rules(root, p, tree)
            if key == "test_annotations" and p.parent.name == "heldout":
                rules += _path_rules(root, p.parent, True)
    out = []
    for r in rules:
        r = r if r.startswith("Read(") else f"Read({r})"
        if r not in out:
            out.append(r)
    return out


def claude_permissions(editable: list[str], root: Path | None = None) -> dict:
    """Claude Code: edit the editable files, read, call our tools; nothing else. The read denies
    come from this workspace's own paths (protected_reads)."""
    harness = [f"Edit(/{d}/**)" for d in harness_dirs()]  # "//abs/path" is Claude Code's absolute form
    reads = protected_reads(root) if root is not None else ["Read(data/heldout/**)",
                                                             "Read(.autoresearch/experiments.db*)", f"Read(./{TOKEN_FILE})"]
    return {
        "permissions": {
            "defaultMode": "dontAsk",
            "allow": [*(f"Edit(./{p})" for p in editable), "Read", "Glob", "Grep", f"mcp__{SERVER_NAME}"],
            "deny": [
                "Bash", "WebFetch", "WebSearch",
                *(f"Bash({c}:*)" for c in (*NETWORK_COMMANDS, *PACKAGE_MANAGERS, "python", "python3", "sudo")),
                *(f"Edit({p})" for p in PROTECTED),
                *harness,
                *reads,
            ],
        },
        "enabledMcpjsonServers": [SERVER_NAME],
    }


# What each client can deny the agent of the protected reads (the dataset, the held-out split, task
# builds, the keys of runs in flight, the DB, the token). Said by `clients` and `doctor`.
READ_DENIES = {
    "claude": "enforced: .claude/settings.json denies every protected read, and the shell (Bash) is denied",
    "gemini": "file tools only: .geminiignore lists the protected paths and the shell tool is excluded; "
              "nothing stops an MCP server or extension the user adds",
    "cursor": "file tools only (.cursorignore); Cursor's agent terminal can still read every file as your user",
    "codex": "NONE: Codex has no per-path read deny; its shell reads every file your user can (the dataset with "
             "its pairs, a run's key while the run is in flight). Use Claude Code, or run the harness as "
             "another OS user",
    "vscode": "NONE: VS Code's agent mode has no per-path read deny; its terminal reads every file your user can. "
              "Use Claude Code, or run the harness as another OS user",
}


def ignore_patterns(root: Path) -> list[str]:
    """The protected reads as .gitignore-style lines anchored at the workspace; paths outside it cannot
    be expressed there and are listed as comments."""
    rules = [r[len("Read("):-1] for r in protected_reads(root)]
    inside = {r[2:] for r in rules if r.startswith("./")}
    out = []
    for path in rules:
        if path.startswith("./"):
            line = "/" + path[2:].removesuffix("/**") + ("/" if path.endswith("/**") else "")
        elif not any(("/" + str(Path(root).resolve()) + "/" + rel) == path for rel in inside):
            line = f"# outside the workspace, not covered: {path[1:]}"
        else:
            continue
        if line not in out:
            out.append(line)
    return out


def client_files(root: Path, client: str, *, max_call_s: float, editable: list[str] | None = None) -> dict[str, str]:
    """{relative path: file text} for one client."""
    cmd, args = server_command(root)
    timeout_ms = int(max_call_s * 1000)
    if client == "claude":
        mcp = {"mcpServers": {SERVER_NAME: {"type": "stdio", "command": cmd, "args": args, "env": {},
                                            "timeout": timeout_ms}}}
        return {".mcp.json": json.dumps(mcp, indent=2) + "\n",
                ".claude/settings.json": json.dumps(claude_permissions(editable or ["train.py"], root), indent=2) + "\n"}
    ignore = ("# eclip-autoresearch: what the agent must not read (data pairs, keys, builds, the DB, the token)\n"
              + "\n".join(ignore_patterns(root)) + "\n")
    if client == "cursor":
        return {".cursor/mcp.json": json.dumps({"mcpServers": {SERVER_NAME: {"command": cmd, "args": args}}},
                                               indent=2) + "\n", ".cursorignore": ignore}
    if client == "vscode":
        return {".vscode/mcp.json": json.dumps({"servers": {SERVER_NAME: {"type": "stdio", "command": cmd,
                                                                          "args": args}}}, indent=2) + "\n"}
    if client == "gemini":
        cfg = {"mcpServers": {SERVER_NAME: {"command": cmd, "args": args, "timeout": timeout_ms, "trust": False}},
               "tools": {"exclude": ["run_shell_command", "web_fetch", "google_web_search"]}}
        return {".gemini/settings.json": json.dumps(cfg, indent=2) + "\n", ".geminiignore": ignore}
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


HTTP_ENTRY = "Streamable HTTP (autoresearch serve --http)"


def render(root: Path, clients: list[str], *, max_call_s: float, editable: list[str] | None = None,
           http: bool = True) -> dict[str, str]:
    """{relative path: text} for several clients ('all' means every one); with http, also the
    HTTP_ENTRY text (printed, never written) and the token it needs."""
    names = list(CLIENTS) if "all" in clients else list(dict.fromkeys(clients))
    max_call_s = _workspace_timeout(root, max_call_s)
    out: dict[str, str] = {}
    for client in names:
        out.update(client_files(root, client, max_call_s=max_call_s, editable=editable))
    if http:
        ensure_token(root)
        out[HTTP_ENTRY] = http_configs(root, max_call_s=max_call_s)
    return out


def write_client_configs(root: Path, clients: list[str], *, max_call_s: float, editable: list[str] | None = None,
                         overwrite: bool = True) -> list[str]:
    """Write the configs; with overwrite=False, refuse (before writing anything) to replace a file
    whose text differs, so a user's edits are not lost silently."""
    files = render(root, clients, max_call_s=max_call_s, editable=editable, http=False)
    if not overwrite:
        changed = [rel for rel, text in files.items()
                   if (Path(root) / rel).is_file() and (Path(root) / rel).read_text() != text]
        if changed:
            raise ToolError(f"{', '.join(changed)} already exist with other content. "
                            "Fix: pass --force to replace them, or run without --write and merge by hand.")
    ensure_token(root)
    written = []
    for rel, text in files.items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(rel)
    return written
