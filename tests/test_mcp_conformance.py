"""What any MCP client may rely on (issue 14), through `autoresearch serve` on stdio and the SDK's client:
a lean tools/list (size printed, <= 12 KB) with strict schemas, spec error codes, unknown arguments
refused with the closest name, progress that strictly increases while a run queues and trains, and
calls that return within the workspace's wait bound with the id and how to follow."""

from __future__ import annotations

import json
import os
import re
import sys
import time

import jsonschema
import pytest

from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tools.lab import Lab

pytestmark = pytest.mark.anyio
MAX_TOOLS_LIST = 12 * 1024


@pytest.fixture
def anyio_backend():
    return "asyncio"


def server(ws) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-P", "-m", "server.cli", "serve", "--workspace", str(ws)],
                                 env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")})


def data(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def text(result) -> str:
    return result.content[0].text if result.content else ""


def set_config(ws, **values) -> None:
    toml = ws / "autoresearch.toml"
    body = toml.read_text()
    for key, value in values.items():
        body, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", body)
        assert n == 1, key
    toml.write_text(body)


def drop_nulls(value):
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    return [drop_nulls(v) for v in value] if isinstance(value, list) else value


def assert_strictly_increasing(progress: list[tuple[float, float | None, str | None]]) -> None:
    values = [p for p, _, _ in progress]
    assert all(b > a for a, b in zip(values, values[1:])), progress
    assert all(t is None or p <= t for p, t, _ in progress), progress
    msgs = [(round(p, 3), m) for p, _, m in progress]
    assert len(set(msgs)) == len(msgs), progress


async def test_tools_list_is_lean_strict_and_described(toy_ws):
    async with Client(server(toy_ws)) as c:
        assert c.server_info.name == "eclip-autoresearch" and c.server_info.version
        listed = await c.list_tools()
        wire = listed.model_dump(by_alias=True, mode="json", exclude_none=True)
        size = len(json.dumps(wire, separators=(",", ":")))
        print(f"\ntools/list: {size} bytes for {len(wire['tools'])} tools (issue 14: 31.9 KB before)")
        assert size <= MAX_TOOLS_LIST
        for tool in wire["tools"]:
            assert tool.get("title") and len(tool.get("description", "")) >= 40, tool["name"]
            schema = tool["inputSchema"]
            jsonschema.Draft202012Validator.check_schema(schema)
            assert schema.get("additionalProperties") is False, tool["name"]
            for name, prop in schema.get("properties", {}).items():
                assert "title" not in prop, (tool["name"], name)
            if "outputSchema" in tool:
                jsonschema.Draft202012Validator.check_schema(tool["outputSchema"])
                assert tool["outputSchema"]["type"] == "object"
        tools = {t["name"]: t for t in wire["tools"]}
        params = tools["run_experiment"]["inputSchema"]["properties"]["params"]
        patterns = " ".join(params["patternProperties"])
        assert params["additionalProperties"] is False and "LR" in patterns and "SLEEP_PER_STEP" in patterns
        for name in ("run_experiment", "experiment_status", "rerun_experiment", "reproduce", "cancel_experiment"):
            assert tools[name]["inputSchema"]["properties"]["wait_s"]["maximum"] == 40, name

        # results: the text block is the structured content's JSON (compact), never bigger; both
        # match the published output schema
        await c.call_tool("write_note", {"text": "a note " * 50, "tags": ["x"]})
        for name, args in (("read_results", {}), ("read_notes", {}), ("best_trajectory", {})):
            res = await c.call_tool(name, args)
            body = data(res)
            assert len(text(res).encode()) <= len(json.dumps(body, separators=(",", ":")).encode()) + 2
            assert json.loads(text(res)) == drop_nulls(body)
            jsonschema.validate(body, tools[name]["outputSchema"])


async def test_error_codes_and_strict_arguments(toy_ws):
    async with Client(server(toy_ws)) as c:
        for uri in ("experiments://999", "experiments://abc", "experiments://0"):
            with pytest.raises(MCPError) as err:
                await c.read_resource(uri)
            assert err.value.code == -32602, (uri, err.value.error)
            assert "Fix:" in err.value.message
        with pytest.raises(MCPError) as err:
            await c.get_prompt("no_such_prompt")
        assert err.value.code == -32602 and "research_program" in err.value.message
        with pytest.raises(MCPError) as err:
            await c.call_tool("run_experimnt", {"description": "typo"})
        assert err.value.code == -32602 and "not found" in err.value.message and "run_experiment" in err.value.message

        bad = await c.call_tool("experiment_status", {"experiment_id": 1, "wait_seconds": 3})
        assert bad.is_error and text(bad).startswith("unknown argument wait_seconds; did you mean wait_s?"), text(bad)
        bad = await c.call_tool("read_results", {"limt": 3})
        assert bad.is_error and "did you mean limit?" in text(bad)
        bad = await c.call_tool("run_experiment", {"description": "bad", "params": {"LR": "fast"}})
        assert bad.is_error and "LR" in text(bad) and "float" in text(bad)
        for name, args, needle in (
                ("run_experiment", {"description": "x", "time_budget_s": -1}, "time_budget_s"),
                ("revert", {"target": 2**63}, "target"),
                ("revert", {"target": "worst"}, "'best'"),
                ("search_experiments", {"query": "lr\x00warmup"}, "NUL"),
                ("compare_experiments", {"a": 1}, "b: Field required"),
                ("show_experiment", {"experiment_id": "seven"}, "experiment_id")):
            res = await c.call_tool(name, args)
            assert res.is_error and needle in text(res), (name, text(res))
            assert "pydantic" not in text(res) and "Error executing tool" not in text(res), text(res)
        assert data(await c.call_tool("read_results", {}))["total"] == 0  # nothing was recorded
    # every request above left an audit row, refusals and protocol errors included
    lab = Lab.open(toy_ws)
    try:
        rows = lab.store.audit_rows(200)
    finally:
        lab.close()
    tools = [r["tool"] for r in rows]
    assert tools.count("resources/read") == 3 and "prompts/get" in tools and "run_experimnt" in tools
    assert sum(r["outcome"] == "error" for r in rows if r["tool"] == "revert") == 2


async def test_progress_strictly_increases_while_queued_and_running(toy_ws):
    """A run queued behind another (one slot on CPU), then running: one request's progress strictly
    increases on one clock, heartbeats included (the queue lasts past the 15 s heartbeat)."""
    progress: list = []

    async def on_progress(p, total, message):
        progress.append((p, total, message))

    set_config(toy_ws, time_budget_s=120)  # the budget is the workspace's (issue 21)
    async with Client(server(toy_ws)) as c:
        first = data(await c.call_tool("run_experiment", {"description": "holds the slot", "wait_s": 0,
                                                          "params": {"SLEEP_PER_STEP": 0.03}}))  # ~18 s
        t0 = time.monotonic()
        second = data(await c.call_tool("run_experiment", {"description": "queued behind it",
                                                           "params": {"SLEEP_PER_STEP": 0.01}},
                                        progress_callback=on_progress))
        waited = time.monotonic() - t0
        assert second["status"] == "succeeded", second
        assert data(await c.call_tool("experiment_status", {"experiment_id": first["id"], "wait_s": 0}))["status"] \
            == "succeeded"
    print(f"\nprogress of experiment {second['id']} ({waited:.1f} s):\n" +
          "\n".join(f"  {p:9.3f} / {t}  {m}" for p, t, m in progress))
    assert_strictly_increasing(progress)
    messages = [m for _, _, m in progress]
    assert "queued" in messages[0] and any("running" in m and "step" in m for m in messages), messages
    queued = [p for p, _, m in progress if "queued" in m]
    assert len(queued) >= 2 and queued[1] - queued[0] < 0.01, progress  # a heartbeat: moved on a tiny amount


async def test_a_run_longer_than_the_wait_returns_in_time_with_how_to_follow(toy_ws):
    set_config(toy_ws, max_wait_s=4, time_budget_s=60)
    async with Client(server(toy_ws)) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["experiment_status"].input_schema["properties"]["wait_s"]["maximum"] == 4
        t0 = time.monotonic()
        s = data(await c.call_tool("run_experiment", {"description": "longer than the wait",
                                                      "params": {"SLEEP_PER_STEP": 0.05}}))  # ~30 s
        took = time.monotonic() - t0
        assert took < 4 + 3, took
        assert s["status"] in ("queued", "running"), s
        assert f"experiment_status(experiment_id={s['id']}, wait_s=4)" in s["next"], s
        t0 = time.monotonic()
        again = data(await c.call_tool("experiment_status", {"experiment_id": s["id"], "wait_s": 30}))  # capped
        assert time.monotonic() - t0 < 4 + 3 and again["status"] == "running" and "still running" in again["next"]
        gone = data(await c.call_tool("cancel_experiment", {"experiment_id": s["id"]}))
        assert gone["status"] == "cancelled", gone


@pytest.mark.slow
async def test_eclip_progress_through_the_task_build_and_training(tmp_path):
    """The tiny eCLIP preset (synthetic small): the harness builds the fold's tasks, then the sandboxed
    process trains 3 steps; every request's progress strictly increases, its total grows only by the
    build (not charged to the budget) and is never below the progress."""
    from tools.init import init_workspace
    ws = init_workspace(tmp_path / "lab", preset="tiny", synthetic="small")
    requests = []

    async with Client(server(ws)) as c:
        progress: list = []

        async def on_progress(p, total, message):
            progress.append((p, total, message))

        s = data(await c.call_tool("run_experiment", {"description": "eclip smoke", "params": {
            "MAX_STEPS": 3, "EVAL_BATCH_SIZE": 64}}, progress_callback=on_progress))
        requests.append(progress)
        while s["status"] in ("queued", "running"):
            progress = []
            s = data(await c.call_tool("experiment_status", {"experiment_id": s["id"]}, progress_callback=on_progress))
            requests.append(progress)
    print("\neCLIP tiny progress per request:\n" + "\n".join(
        "  " + "; ".join(f"{p:.3f}/{t:.0f} {m}" for p, t, m in seq) for seq in requests))
    assert s["status"] == "succeeded", s
    for seq in requests:
        assert_strictly_increasing(seq)
    messages = " | ".join(m for seq in requests for _, _, m in seq)
    assert "building the tasks" in messages and "step 3" in messages, messages


async def test_every_result_is_bounded(toy_ws):
    """show_experiment of a run whose code change is huge stays within 8 KB (the diff is cut with a marker);
    the text block is never bigger than the structured content."""
    train = toy_ws / "train.py"
    train.write_text(train.read_text() + "".join(f"# padding line {i} " + "x" * 80 + "\n" for i in range(2000)))
    async with Client(server(toy_ws)) as c:
        s = data(await c.call_tool("run_experiment", {"description": "a huge diff"}))
        res = await c.call_tool("show_experiment", {"experiment_id": s["id"]})
        body = data(res)
        size = len(json.dumps(body, separators=(",", ":")).encode())
        assert size <= 8192 and "…[cut " in body["diff"], size
        assert len(text(res).encode()) <= size
        res = await c.read_resource(f"experiments://{s['id']}")
        assert len(res.contents[0].text.encode()) <= 4 * 8192
