"""Client configs: every file parses, its exact command starts a server that answers, the timeouts
fit the budget, and the Claude Code permissions allow only what the research loop needs."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest

from mcp import Client, StdioServerParameters
from mcp.client.stdio import get_default_environment

from server.cli import main as cli
from tools import clients

pytestmark = pytest.mark.anyio

FILES = {"claude": ".mcp.json", "cursor": ".cursor/mcp.json", "vscode": ".vscode/mcp.json",
         "gemini": ".gemini/settings.json", "codex": ".codex/config.toml"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


def server_entry(ws: Path, client: str) -> dict:
    """Parse one client's file the way that client does and return our server's entry."""
    path = ws / FILES[client]
    if client == "codex":
        data = tomllib.loads(path.read_text())
        return data["mcp_servers"]["autoresearch"] | {"_top": {k: v for k, v in data.items() if k != "mcp_servers"}}
    data = json.loads(path.read_text())
    key = "servers" if client == "vscode" else "mcpServers"
    assert list(data[key]) == ["autoresearch"], data
    return data[key]["autoresearch"]


async def test_every_client_config_parses_and_starts_a_server(toy_ws):
    """`autoresearch clients --write` for all five; each file's command+args (exactly) serve this workspace."""
    # A workspace folder named like our packages must not shadow them (-P keeps cwd off sys.path).
    for pkg in ("tools", "server"):
        (toy_ws / pkg).mkdir()
        (toy_ws / pkg / "__init__.py").write_text("raise SystemExit('shadowed by the workspace')\n")
    assert cli(["clients", "-w", str(toy_ws), "--write"]) == 0  # same text as init wrote: no --force needed
    for client in clients.CLIENTS:
        entry = server_entry(toy_ws, client)
        if client in ("claude", "vscode"):
            assert entry["type"] == "stdio"
        assert Path(entry["command"]).is_absolute() and entry["args"][-1] == str(toy_ws)
        env = get_default_environment() | entry.get("env", {})
        params = StdioServerParameters(command=entry["command"], args=entry["args"], env=env, cwd=str(toy_ws))
        async with Client(params) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"run_experiment", "read_results", "search_experiments", "compare_experiments"} <= names, client
            table = await c.call_tool("read_results", {"limit": 1})
            assert not table.is_error and table.structured_content["total"] == 0, client


def test_timeouts_scale_with_the_budget(toy_ws):
    assert cli(["clients", "-w", str(toy_ws), "--write"]) == 0
    assert server_entry(toy_ws, "claude")["timeout"] == (20 + clients.EXTRA_CALL_S) * 1000  # toy_ws budget: 20 s
    codex = server_entry(toy_ws, "codex")
    assert codex["startup_timeout_sec"] >= 30 and codex["tool_timeout_sec"] == 20 + clients.EXTRA_CALL_S
    assert codex["_top"]["sandbox_mode"] == "workspace-write"
    assert codex["_top"]["sandbox_workspace_write"]["network_access"] is False
    assert server_entry(toy_ws, "gemini")["timeout"] == (20 + clients.EXTRA_CALL_S) * 1000

    toml = toy_ws / "autoresearch.toml"
    toml.write_text(re.sub(r"(?m)^time_budget_s = .*$", "time_budget_s = 1800", toml.read_text()))
    assert cli(["clients", "claude", "codex", "-w", str(toy_ws), "--write"]) == 2  # differs: refused
    assert server_entry(toy_ws, "claude")["timeout"] == (20 + clients.EXTRA_CALL_S) * 1000  # untouched
    assert cli(["clients", "claude", "codex", "-w", str(toy_ws), "--write", "--force"]) == 0
    assert server_entry(toy_ws, "claude")["timeout"] == (1800 + clients.EXTRA_CALL_S) * 1000
    assert server_entry(toy_ws, "codex")["tool_timeout_sec"] == 1800 + clients.EXTRA_CALL_S


def test_print_mode_writes_nothing(toy_ws, capsys):
    assert cli(["clients", "vscode", "-w", str(toy_ws)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ---- .vscode/mcp.json ----") and '"servers"' in out
    assert "# vscode: what the agent cannot read: NONE" in out  # said plainly where a client cannot deny
    assert not (toy_ws / ".vscode").exists()


# -- Claude Code permissions ---------------------------------------------------------------
# Our reading of Claude Code's documented rule semantics: deny beats allow; `Tool` alone matches
# every use; `Bash(prefix:*)` matches a command starting with prefix; Read/Edit rules follow
# gitignore patterns (`//abs` absolute, `./x` from the project, a bare name at any depth); in
# `dontAsk` mode anything no rule allows is refused.
def _path_match(pattern: str, path: str, ws: Path) -> bool:
    if pattern.startswith("//"):
        target, pattern = str(ws / path) if not path.startswith("/") else path, pattern[1:]
    else:
        target = path
        if pattern.startswith("./"):
            pattern = pattern[2:]
        elif "/" not in pattern.rstrip("/*"):
            return any(fnmatch.fnmatchcase(part, pattern) for part in Path(path).parts) or \
                fnmatch.fnmatchcase(Path(path).name, pattern)
    regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
    return re.fullmatch(regex, target) is not None


def _matches(rule: str, tool: str, arg: str, ws: Path) -> bool:
    m = re.fullmatch(r"([A-Za-z_]+)(?:\((.*)\))?", rule)
    name, spec = m.group(1), m.group(2)
    if name.startswith("mcp__"):
        return tool == name or tool.startswith(name + "__")
    if name != tool:
        return False
    if spec is None:
        return True
    if tool == "Bash":
        prefix = spec[:-2] if spec.endswith(":*") else spec
        return arg == prefix or arg.startswith(prefix + " ")
    return _path_match(spec, arg, ws)


def decide(settings: dict, tool: str, arg: str, ws: Path) -> str:
    perms = settings["permissions"]
    if any(_matches(r, tool, arg, ws) for r in perms["deny"]):
        return "deny"
    if any(_matches(r, tool, arg, ws) for r in perms["allow"]):
        return "allow"
    return "deny" if perms.get("defaultMode") == "dontAsk" else "ask"


def test_claude_permissions_deny_what_the_loop_does_not_need(toy_ws):
    settings = json.loads((toy_ws / ".claude" / "settings.json").read_text())
    perms = settings["permissions"]
    assert settings["enabledMcpjsonServers"] == ["autoresearch"]
    assert perms["defaultMode"] == "dontAsk"  # no prompt can be clicked through: unlisted means refused
    # Claude Code consults only Read(...) and Edit(...) path rules (Write(...) is ignored, with a warning).
    assert not [r for r in perms["allow"] + perms["deny"] if r.startswith("Write(")]
    assert [r for r in perms["allow"] if r.startswith("Edit")] == ["Edit(./train.py)"]
    assert not [r for r in perms["allow"] if r.startswith(("Bash", "WebFetch", "WebSearch"))]
    harness = Path(clients.__file__).resolve().parents[1]

    def d(tool, arg=""):
        return decide(settings, tool, arg, toy_ws)

    # shell, network tools, package managers, git push
    for cmd in ["ls", "python train.py", "git push origin main", "curl https://x.org", "wget x", "pip install numpy",
                "uv pip install x", "npm install x", "conda install x", "apt-get install x", "git fetch"]:
        assert d("Bash", cmd) == "deny", cmd
        if cmd.split()[0] not in ("ls",):
            assert any(_matches(r, "Bash", cmd, toy_ws) for r in perms["deny"] if r != "Bash"), \
                f"{cmd!r} is denied only by the bare Bash rule; re-allowing Bash would let it through"
    assert d("WebFetch", "https://example.org") == "deny" and d("WebSearch", "eclip") == "deny"
    # editing: only the editable files
    assert d("Edit", "train.py") == "allow"
    for path in ["autoresearch.toml", ".autoresearch/experiments.db", ".autoresearch/runs/1/metrics.json",
                 "data/synthetic-prints/train.jsonl", ".git/config", ".mcp.json", ".claude/settings.json",
                 "AGENTS.md", "CLAUDE.md", ".codex/config.toml", "notes.md", "model.py",
                 str(harness / "model" / "eval.py"), str(harness / "sandbox" / "policy.py"),
                 str(harness / "tools" / "runs.py")]:
        assert d("Edit", path) == "deny", path
    # reading: yes, except the DB and the held-out split
    assert d("Read", "train.py") == "allow" and d("Grep", "") == "allow"
    assert d("Read", ".autoresearch/experiments.db") == "deny"
    assert d("Read", "data/heldout/test.jsonl") == "deny"
    # our MCP tools, and no one else's
    assert d("mcp__autoresearch__run_experiment") == "allow"
    assert d("mcp__autoresearch__search_experiments") == "allow"
    assert d("mcp__filesystem__write_file") == "deny"


def test_claude_permissions_follow_the_editable_list(toy_ws):
    toml = toy_ws / "autoresearch.toml"
    toml.write_text(re.sub(r"(?m)^editable = .*$", 'editable = ["train.py", "aug/extra.py"]', toml.read_text()))
    assert cli(["clients", "claude", "-w", str(toy_ws), "--write", "--force"]) == 0
    settings = json.loads((toy_ws / ".claude" / "settings.json").read_text())
    assert decide(settings, "Edit", "aug/extra.py", toy_ws) == "allow"
    assert decide(settings, "Edit", "aug/other.py", toy_ws) == "deny"


def test_unknown_client_is_a_clear_error(toy_ws):
    from tools.errors import ToolError
    with pytest.raises(ToolError, match="client 'zed' is unknown. Fix: use one of claude, codex"):
        clients.client_files(toy_ws, "zed", max_call_s=60)



def test_read_denies_come_from_the_workspace_s_own_paths(tmp_path):
    """Each deny rule is checked against the real file it protects, with Claude Code's matching:
    the dataset (inside or outside the workspace), the held-out split, task keys, scores, the DB."""
    import tomllib

    from tools import datacache
    from tools.init import init_workspace
    from tools.lab import Lab

    outside = tmp_path / "shared-data"
    ws = init_workspace(tmp_path / "lab", preset="tiny", synthetic="small")
    settings = json.loads((ws / ".claude" / "settings.json").read_text())
    cfg = tomllib.loads((ws / "autoresearch.toml").read_text())
    lab = Lab.open(ws)
    try:
        (datacache.tasks_root(lab) / "b" / "fold-0").mkdir(parents=True)
        key = datacache.tasks_root(lab) / "b" / "fold-0" / "key.npz"
        key.write_bytes(b"k")
        score = lab.score_dir(1)
        score.mkdir(parents=True)
        (score / "stdout.log").write_text("{}")
    finally:
        lab.close()
    data = ws / cfg["data"]
    protected = [ws / cfg["test_annotations"], *sorted((data / "heldout" / "images").glob("*"))[:2],
                 data / "train.jsonl" if (data / "train.jsonl").exists() else next(data.rglob("*.jsonl")),
                 key, score / "stdout.log", ws / ".autoresearch" / "experiments.db"]
    for path in protected:
        assert path.exists(), path
        for arg in (str(path.relative_to(ws)), str(path)):
            assert decide(settings, "Read", arg, ws) == "deny", arg
    assert decide(settings, "Read", "train.py", ws) == "allow"  # the agent still reads its own code

    # a dataset outside the workspace gets absolute rules
    import shutil
    shutil.copytree(data, outside)
    toml = ws / "autoresearch.toml"
    toml.write_text(toml.read_text().replace(f'data = "{cfg["data"]}"', f'data = "{outside}"'))
    from tools.clients import claude_permissions
    perms = claude_permissions(["train.py"], ws)
    some = next(outside.rglob("*.png"))
    assert decide(perms, "Read", str(some), ws) == "deny"


def test_clients_that_can_hide_files_get_the_protected_reads(toy_ws, capsys):
    """Cursor and Gemini get ignore files with the workspace's protected paths (keys and builds among
    them); Gemini loses its shell; Codex and VS Code are named as unable to deny reads."""
    assert cli(["clients", "cursor", "gemini", "codex", "-w", str(toy_ws)]) == 0
    out = capsys.readouterr().out
    for name in (".cursorignore", ".geminiignore"):
        block = out.split(f"# ---- {name} ----\n")[1].split("# ----")[0]
        assert "/.autoresearch/keys/" in block and "/.autoresearch/tasks/" in block and "/.autoresearch/http-token" in block
    assert '"run_shell_command"' in out and "# codex: what the agent cannot read: NONE" in out
