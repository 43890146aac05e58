"""The MCP Inspector CLI (npm @modelcontextprotocol/inspector, --cli mode) against `autoresearch serve`
on a fresh toy workspace: what any MCP client would see, from a client we did not write.

.ci/run installs the Inspector into .ci/node; without node/npm this module is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import missing_external

ROOT = Path(__file__).resolve().parents[1]
INSPECTOR_VERSION = "2.12.0"  # keep in step with .ci/run
INSTALL = f"npm install --no-save --prefix .ci/node @modelcontextprotocol/inspector@{INSPECTOR_VERSION}"
TIMINGS: list[tuple[str, float]] = []


def find_inspector() -> str | None:
    for candidate in (os.environ.get("AR_INSPECTOR"), ROOT / ".ci/node/node_modules/.bin/mcp-inspector",
                      shutil.which("mcp-inspector")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def inspector() -> str:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        missing_external(f"{' and '.join(missing)} not installed: the MCP Inspector CLI check needs Node >= 20 and npm",
                         f"install Node >= 20 with npm, then {INSTALL} (as .ci/run does)")
    path = find_inspector()
    if path is None:
        missing_external("the MCP Inspector CLI is not installed",
                         f"{INSTALL} (what .ci/run does), or point AR_INSPECTOR at an mcp-inspector binary")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A fresh toy workspace, made with the real command line."""
    ws = tmp_path_factory.mktemp("inspector") / "lab"
    subprocess.run(serve_command()[:-1] + ["init", str(ws), "--preset", "toy", "--time-budget", "20"],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    return ws


def serve_command() -> list[str]:
    """`autoresearch serve` (the console script next to this interpreter), without the workspace yet."""
    script = Path(sys.executable).parent / "autoresearch"
    return [str(script), "serve"] if script.is_file() else [sys.executable, "-P", "-m", "server.cli", "serve"]


def inspect(inspector: str, ws: Path, *args: str) -> tuple[int, dict | str, str]:
    """One Inspector CLI call: (exit code, parsed stdout (JSON when it is), stderr). Records the wall time."""
    cmd = [inspector, "--cli", "-q", "--format", "json", *serve_command(), "--workspace", str(ws), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=180)
    TIMINGS.append((" ".join(args[:4]), time.perf_counter() - t0))
    try:
        out: dict | str = json.loads(proc.stdout)
    except ValueError:
        out = proc.stdout
    return proc.returncode, out, proc.stderr


def ok(result: tuple[int, dict | str, str]) -> dict:
    rc, out, err = result
    assert rc == 0 and isinstance(out, dict), f"rc={rc}\nstdout={str(out)[:2000]}\nstderr={err[-2000:]}"
    return out["result"]


def test_inspector_drives_the_loop(inspector, workspace):
    tools = {t["name"]: t for t in ok(inspect(inspector, workspace, "--method", "tools/list"))["tools"]}
    assert {"run_experiment", "experiment_status", "cancel_experiment", "read_results", "show_experiment",
            "revert", "write_note", "read_notes", "search_experiments", "compare_experiments",
            "best_trajectory"} <= set(tools)
    assert tools["read_results"]["annotations"]["readOnlyHint"] is True
    assert tools["search_experiments"]["annotations"]["readOnlyHint"] is True

    run = ok(inspect(inspector, workspace, "--method", "tools/call", "--tool-name", "run_experiment",
                     "--tool-args-json", json.dumps({"description": "baseline", "hypothesis": "the toy as shipped"})))
    assert run["structuredContent"]["status"] == "succeeded" and run["structuredContent"]["verdict"] == "baseline"

    table = ok(inspect(inspector, workspace, "--method", "tools/call", "--tool-name", "read_results",
                       "--tool-args-json", '{"limit": 5}'))["structuredContent"]
    assert table["total"] == 1 and table["best_id"] == 1 and table["rows"][0]["id"] == 1

    found = ok(inspect(inspector, workspace, "--method", "tools/call", "--tool-name", "search_experiments",
                       "--tool-args-json", '{"query": "toy shipped"}'))["structuredContent"]
    assert [h["id"] for h in found["hits"]] == [1] and found["hits"][0]["matched_in"] == ["hypothesis"]

    board = ok(inspect(inspector, workspace, "--method", "resources/read", "--uri", "leaderboard://top"))
    assert json.loads(board["contents"][0]["text"])["best_id"] == 1
    exp = ok(inspect(inspector, workspace, "--method", "resources/read", "--uri", "experiments://1"))
    assert json.loads(exp["contents"][0]["text"])["verdict"] == "baseline"
    templates = ok(inspect(inspector, workspace, "--method", "resources/templates/list"))
    assert "experiments://{experiment_id}" in [t["uriTemplate"] for t in templates["resourceTemplates"]]

    prompt = ok(inspect(inspector, workspace, "--method", "prompts/get", "--prompt-name", "resume"))
    assert "Best: #1" in prompt["messages"][0]["content"]["text"]
    prompt = ok(inspect(inspector, workspace, "--method", "prompts/get", "--prompt-name", "research_program"))
    assert "revert" in prompt["messages"][0]["content"]["text"]
    print("\nInspector CLI wall times: " + ", ".join(f"{name} {s:.1f}s" for name, s in TIMINGS))


def test_inspector_bad_calls_exit_nonzero_with_a_clear_message(inspector, workspace):
    cases = [
        (["--method", "tools/call", "--tool-name", "run_experiment",
          "--tool-args-json", '{"description": "bad budget", "time_budget_s": -1}'], "time_budget_s"),
        (["--method", "tools/call", "--tool-name", "search_experiments", "--tool-args-json", '{"query": "***"}'],
         "has no words to search for"),
        (["--method", "tools/call", "--tool-name", "compare_experiments", "--tool-args-json", '{"a": 998, "b": 999}'],
         "a=998 does not exist"),
        (["--method", "resources/read", "--uri", "experiments://abc"], "must be a positive integer"),
        (["--method", "resources/read", "--uri", "experiments://..%2F..%2Fetc%2Fpasswd"], "Unknown resource"),
        (["--method", "tools/call", "--tool-name", "no_such_tool"], "not found"),
    ]
    for args, needle in cases:
        rc, out, err = inspect(inspector, workspace, *args)
        text = (json.dumps(out) if isinstance(out, dict) else out) + err
        assert rc != 0, f"{args}: exited 0\n{text[-2000:]}"
        assert needle in text, f"{args}: rc={rc}, no {needle!r} in\n{text[-2000:]}"
    # nothing was recorded by the refused run
    table = ok(inspect(inspector, workspace, "--method", "tools/call", "--tool-name", "read_results"))
    assert "bad budget" not in json.dumps(table)
