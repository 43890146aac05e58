"""End to end: `autoresearch serve` as a subprocess, driven by the MCP SDK's stdio client."""

import json
import os
import sys
import time

import pytest

from mcp import Client, StdioServerParameters

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def _server(ws):
    return StdioServerParameters(command=sys.executable, args=["-m", "server.cli", "serve", "--workspace", str(ws)],
                                 env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")})


def _data(result):
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def test_full_loop_over_stdio(toy_ws):
    train = toy_ws / "train.py"
    progress = []

    async def on_progress(p, total, message):
        progress.append((p, total, message))

    async with Client(_server(toy_ws)) as c:
        info = c.server_info
        assert info.name == "eclip-autoresearch" and info.version and info.version != "0.0.0+unknown", info
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"run_experiment", "read_results", "show_experiment", "write_note", "read_notes", "revert",
                "experiment_status", "cancel_experiment"} <= names
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["read_results"].annotations.read_only_hint is True
        assert tools["revert"].annotations.destructive_hint is True
        assert all(t.title for t in tools.values()), [n for n, t in tools.items() if not t.title]

        # 1) a baseline that lasts a few seconds so that progress flows
        t0 = time.perf_counter()
        base = _data(await c.call_tool("run_experiment", {"description": "baseline",
                                                          "params": {"SLEEP_PER_STEP": 0.01}},
                                       progress_callback=on_progress))
        assert base["status"] == "succeeded" and base["verdict"] == "baseline"
        assert progress and any("step" in (m or "") for _, _, m in progress), progress

        # 2) a better one, 3) a worse one
        train.write_text(train.read_text().replace("LR = 0.1 ", "LR = 0.5 "))
        better = _data(await c.call_tool("run_experiment", {"description": "LR 0.1 -> 0.5"}))
        assert better["verdict"] == "improved"
        better_bytes = train.read_bytes()
        train.write_text(train.read_text().replace("LR = 0.5 ", "LR = 0.002 "))
        worse = _data(await c.call_tool("run_experiment", {"description": "LR 0.5 -> 0.002"}))
        assert worse["verdict"] == "not_improved" and worse["delta_vs_best"] > 0

        table = _data(await c.call_tool("read_results", {"limit": 2, "order_by": "objective"}))
        assert table["total"] == 3 and len(table["rows"]) == 2 and table["rows"][0]["id"] == better["id"]

        r = _data(await c.call_tool("revert", {"target": "best"}))
        assert r["experiment_id"] == better["id"] and r["restored"] == ["train.py"]
        assert train.read_bytes() == better_bytes

        detail = _data(await c.call_tool("show_experiment", {"experiment_id": worse["id"]}))
        assert "LR = 0.002" in detail["diff"] and detail["parent_id"] == better["id"]

        note = _data(await c.call_tool("write_note", {"text": "LR 0.5 helps; 0.002 too slow",
                                                      "experiment_id": better["id"], "tags": ["lr"]}))
        notes = _data(await c.call_tool("read_notes", {"tag": "lr"}))
        assert notes["total"] == 1 and notes["notes"][0]["id"] == note["id"]
        res = await c.read_resource("notes://recent")
        assert "0.002 too slow" in res.contents[0].text
        res = await c.read_resource(f"experiments://{better['id']}")
        assert json.loads(res.contents[0].text)["verdict"] == "improved"
        prompt = await c.get_prompt("research_program")
        assert "revert" in prompt.messages[0].content.text

        # bad input: a clear tool error naming the field, and nothing recorded
        bad = await c.call_tool("run_experiment", {"description": "x", "time_budget_s": -1})
        assert bad.is_error and "time_budget_s" in bad.content[0].text
        bad = await c.call_tool("read_results", {"order_by": "objective; DROP TABLE experiments"})
        assert bad.is_error and "order_by" in bad.content[0].text
        bad = await c.call_tool("revert", {"target": 4242})
        assert bad.is_error and "4242" in bad.content[0].text
        table = _data(await c.call_tool("read_results", {}))
        assert table["total"] == 3

        # latency of a cheap read over stdio, for the record
        t = time.perf_counter()
        for _ in range(20):
            await c.call_tool("read_results", {"limit": 5})
        per_call_ms = (time.perf_counter() - t) / 20 * 1000
        print(f"\nread_results over stdio: {per_call_ms:.1f} ms/call; whole loop {time.perf_counter() - t0:.1f} s")


async def test_async_run_status_and_cancel(toy_ws):
    async with Client(_server(toy_ws)) as c:
        s = _data(await c.call_tool("run_experiment", {"description": "slow run", "wait_s": 0,
                                                       "params": {"SLEEP_PER_STEP": 0.2}}))
        assert s["status"] in ("queued", "running")
        s = _data(await c.call_tool("experiment_status", {"experiment_id": s["id"], "wait_s": 3}))
        assert s["status"] == "running"
        s = _data(await c.call_tool("cancel_experiment", {"experiment_id": s["id"]}))
        assert s["status"] == "cancelled"
        bad = await c.call_tool("experiment_status", {"experiment_id": 0})
        assert bad.is_error and "experiment_id" in bad.content[0].text
