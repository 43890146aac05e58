"""`autoresearch serve --http`: the SDK's Streamable HTTP transport behind a bearer token, loopback by
default, Host/Origin checked (DNS rebinding). Without the token, or with a wrong one: 401; a foreign
Origin or Host: refused; with the token every tool works, progress streams, and every call is
audited like over stdio. Also prints HTTP vs stdio latency side by side."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tools import clients
from tools.lab import Lab

pytestmark = pytest.mark.anyio
ENV = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}


@pytest.fixture
def anyio_backend():
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_cmd(ws, *extra: str) -> list[str]:
    return [sys.executable, "-P", "-m", "server.cli", "serve", "--workspace", str(ws), "--http", *extra]


@pytest.fixture
def http_server(toy_ws):
    port = free_port()
    proc = subprocess.Popen(serve_cmd(toy_ws, "--port", str(port)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
    token = clients.read_token(toy_ws)
    yield f"http://127.0.0.1:{port}/mcp", token, toy_ws
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def post(url: str, headers: dict, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body or {"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def http_client(url: str, token: str) -> Client:
    return Client(streamable_http_client(url, http_client=create_mcp_http_client(
        headers={"Authorization": f"Bearer {token}"})))


def test_no_token_wrong_token_foreign_origin_or_host_are_refused(http_server):
    url, token, ws = http_server
    assert (ws / clients.TOKEN_FILE).stat().st_mode & 0o777 == 0o600 and len(token) >= 32
    for headers in ({}, {"Authorization": "Bearer wrong-token-" + "x" * 40}, {"Authorization": f"Basic {token}"},
                    {"Authorization": f"Bearer {token[:-1]}"}):
        status, body = post(url, headers)
        assert status == 401 and "Bearer" in body, (headers, status, body)
    status, _ = post(url, {"Authorization": f"Bearer {token}", "Origin": "http://evil.example"})
    assert status == 403
    status, _ = post(url, {"Authorization": f"Bearer {token}", "Host": "evil.example:80"})
    assert status == 421
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    status, body = post(url, {"Authorization": f"Bearer {token}", "Origin": "http://localhost:3000"}, init)
    assert status == 200 and "eclip-autoresearch" in body, body


def test_refuses_a_non_loopback_address_without_a_token(toy_ws):
    (toy_ws / clients.TOKEN_FILE).unlink()
    proc = subprocess.run(serve_cmd(toy_ws, "--host", "0.0.0.0", "--port", str(free_port())), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, env=ENV, timeout=60)
    assert proc.returncode == 2 and "REFUSING to bind 0.0.0.0" in proc.stderr, proc.stderr
    assert not (toy_ws / clients.TOKEN_FILE).exists()
    (toy_ws / clients.TOKEN_FILE).write_text("short\n")
    (toy_ws / clients.TOKEN_FILE).chmod(0o600)
    proc = subprocess.run(serve_cmd(toy_ws, "--port", str(free_port())), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=ENV, timeout=60)
    assert proc.returncode == 2 and "weaker than" in proc.stderr, proc.stderr


async def test_every_tool_over_http_with_the_token_is_audited(http_server):
    url, token, ws = http_server
    progress = []

    async def on_progress(p, total, message):
        progress.append((p, total, message))

    async with http_client(url, token) as c:
        assert c.server_info.name == "eclip-autoresearch" and c.server_info.version
        names = {t.name for t in (await c.list_tools()).tools}
        base = await c.call_tool("run_experiment", {"description": "baseline over http",
                                                    "params": {"SLEEP_PER_STEP": 0.005}}, progress_callback=on_progress)
        assert not base.is_error and base.structured_content["status"] == "succeeded", base.content[0].text
        values = [p for p, _, _ in progress]
        assert progress and all(b > a for a, b in zip(values, values[1:])), progress
        calls = {
            "experiment_status": {"experiment_id": 1}, "read_results": {}, "show_experiment": {"experiment_id": 1},
            "write_note": {"text": "over http", "experiment_id": 1}, "read_notes": {},
            "search_experiments": {"query": "baseline"}, "best_trajectory": {},
            "rerun_experiment": {"experiment_id": 1, "seeds": 1}, "compare_experiments": {"a": 1, "b": 2}, "suggest": {},
            "reproduce": {"experiment_id": 1}, "plot_progress": {}, "revert": {"target": "best"},
        }
        for name, args in calls.items():
            res = await c.call_tool(name, args)
            assert not res.is_error, (name, res.content[0].text if res.content else res)
        queued = await c.call_tool("run_experiment", {"description": "to cancel", "wait_s": 0})
        res = await c.call_tool("cancel_experiment", {"experiment_id": queued.structured_content["id"]})
        assert not res.is_error and res.structured_content["status"] == "cancelled", res.content[0].text
        bad = await c.call_tool("experiment_status", {"experiment_id": 1, "wait_seconds": 1})
        assert bad.is_error and "did you mean wait_s?" in bad.content[0].text
        assert {*calls, "run_experiment", "cancel_experiment"} <= names
    lab = Lab.open(ws)
    try:
        audited = [(r["tool"], r["outcome"]) for r in lab.store.audit_rows(500)]
    finally:
        lab.close()
    for name in (*calls, "run_experiment", "cancel_experiment"):
        assert (name, "ok") in audited, (name, audited)
    assert ("experiment_status", "error") in audited and ("tools/list", "ok") in audited


async def test_http_and_stdio_latency_side_by_side(http_server):
    url, token, ws = http_server
    stdio = StdioServerParameters(command=sys.executable, args=["-P", "-m", "server.cli", "serve", "--workspace", str(ws)],
                                  env=ENV)
    timings = {}
    for label, make in (("stdio", lambda: Client(stdio)), ("http", lambda: http_client(url, token))):
        async with make() as c:
            await c.call_tool("read_results", {"limit": 1})
            for what, fn in (("list_prompts", lambda: c.list_prompts()), ("read_results", lambda: c.call_tool("read_results", {"limit": 5}))):
                t0 = time.perf_counter()
                for _ in range(30):
                    await fn()
                timings[(label, what)] = (time.perf_counter() - t0) / 30 * 1000
    print("\nlatency per call (ms), 30 calls each: " + ", ".join(
        f"{what}: stdio {timings[('stdio', what)]:.1f} vs http {timings[('http', what)]:.1f}"
        for what in ("list_prompts", "read_results")))
    assert timings[("http", "read_results")] < 1000


def test_clients_prints_the_http_config_of_each_client(toy_ws, capsys):
    from server.cli import main as cli
    (toy_ws / clients.TOKEN_FILE).unlink()
    assert cli(["clients", "-w", str(toy_ws)]) == 0
    out = capsys.readouterr().out
    http = out.split(f"# ---- {clients.HTTP_ENTRY} ----", 1)[1]
    assert "claude mcp add --transport http autoresearch http://127.0.0.1:8765/mcp --header" in http
    assert f'export {clients.TOKEN_ENV}="$(cat {toy_ws.resolve() / clients.TOKEN_FILE})"' in http
    lines = [line for line in http.splitlines() if line.startswith("{")]
    assert len(lines) == 3 and all("Bearer" in json.dumps(json.loads(line)) for line in lines)  # cursor, vscode, gemini
    assert 'bearer_token_env_var = "AUTORESEARCH_TOKEN"' in http
    assert (toy_ws / clients.TOKEN_FILE).stat().st_mode & 0o777 == 0o600  # printing made the token
    assert cli(["clients", "-w", str(toy_ws), "--write", "--force"]) == 0
    assert not any(p.name.startswith("Streamable") for p in toy_ws.iterdir())
