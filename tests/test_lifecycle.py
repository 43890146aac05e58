"""Issue 5: runs that outlive servers, kill -9 fault injection, two servers on one workspace."""

import json
import random
import signal
import subprocess
import sys
import time

import anyio
import pytest

from conftest import processes_with_marker, wait_until
from mcp import Client, StdioServerParameters
from tools.lab import Lab

QUICK_TRAIN = """\
import json, os, time
run_dir = os.environ["AR_RUN_DIR"]
with open(os.path.join(run_dir, "executions.log"), "a") as f:
    f.write(f"{os.getpid()}\\n")
SLEEP = 0.3
time.sleep(SLEEP)
with open(os.path.join(run_dir, "events.jsonl"), "a") as f:
    f.write(json.dumps({"t": time.time(), "step": 1, "loss": 1.0, "elapsed": SLEEP}) + "\\n")
# the toy workspace's scorer (score.py) scores these weights; metrics.json is only informational
json.dump({"folds": [[int(os.environ["AR_EXPERIMENT_ID"]) * 1e-3] * 10] * 3}, open(os.path.join(run_dir, "weights.json"), "w"))
json.dump({"steps": 1}, open(os.path.join(run_dir, "metrics.json"), "w"))
"""


def _set_concurrency(ws, n):
    toml = ws / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('concurrency = "auto"', f"concurrency = {n}"))


def _all_settled(ws):
    lab = Lab.open(ws)
    try:
        return not lab.store.experiments_with_status("queued", "running")
    finally:
        lab.close()


def _rpc(proc, msg):
    proc.stdin.write((json.dumps(msg) + "\n").encode())
    proc.stdin.flush()


def _start_raw_server(ws, n_runs, tag):
    """A real `autoresearch serve` fed raw JSON-RPC: initialize, then n run_experiment(wait=false)."""
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--workspace", str(ws)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _rpc(proc, {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                           "clientInfo": {"name": "fault-test", "version": "0"}}})
    _rpc(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    for i in range(n_runs):
        _rpc(proc, {"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                    "params": {"name": "run_experiment",
                               "arguments": {"description": f"{tag} run {i}", "wait_s": 0}}})
    return proc


@pytest.mark.slow
def _count(ws) -> int:
    lab = Lab.open(ws)
    try:
        return lab.store.count_experiments()
    finally:
        lab.close()


def test_kill_9_server_and_supervisor_loses_nothing(toy_ws):
    (toy_ws / "train.py").write_text(QUICK_TRAIN)
    rng = random.Random(7)
    for round_ in range(4):
        before = _count(toy_ws)
        server = _start_raw_server(toy_ws, 4, f"round {round_}")
        # kill at a random moment after this round's server has recorded a submission (a busy machine
        # can take seconds to start it; a fixed sleep killed it before it did anything)
        assert wait_until(lambda: _count(toy_ws) > before, timeout=180, interval=0.1), f"round {round_}: no submission"
        time.sleep(rng.uniform(0.0, 2.0))
        if round_ % 2 == 1:  # also kill the supervisor mid-run
            for p in processes_with_marker(f"tools.supervisor {toy_ws}"):
                p.send_signal(signal.SIGKILL)
        server.send_signal(signal.SIGKILL)
        server.wait()
    # a fresh server recovers and drains the queue
    server = _start_raw_server(toy_ws, 0, "final")
    try:
        assert wait_until(lambda: _all_settled(toy_ws), timeout=120, interval=0.5)
    finally:
        server.kill()
        server.wait()
    lab = Lab.open(toy_ws)
    try:
        assert lab.store.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = lab.store.experiments_with_status("succeeded", "failed", "timeout", "cancelled", "interrupted")
        assert len(rows) == lab.store.count_experiments() > 0
        statuses = {r["status"] for r in rows}
        assert "succeeded" in statuses
        for r in rows:
            run_dir = lab.run_dir(r["id"])
            executions = (run_dir / "executions.log").read_text().split() if (run_dir / "executions.log").exists() else []
            assert len(executions) <= 1, f"experiment {r['id']} ran {len(executions)} times"
            if r["status"] == "succeeded":
                assert r["objective"] is not None and lab.store.metrics(r["id"])
            else:
                assert r["error"], r
    finally:
        lab.close()


@pytest.mark.slow
def test_two_servers_submit_twenty_runs_each(toy_ws):
    (toy_ws / "train.py").write_text(QUICK_TRAIN.replace("SLEEP = 0.3", "SLEEP = 0.05"))
    _set_concurrency(toy_ws, 2)
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "server.cli", "serve", "--workspace", str(toy_ws)])
    ids: list[int] = []

    async def submit_all(tag):
        async with Client(params) as c:
            for i in range(20):
                r = await c.call_tool("run_experiment", {"description": f"{tag} {i}", "wait_s": 0})
                assert not r.is_error, r.content[0].text
                ids.append(r.structured_content["id"])

    async def main():
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit_all, "A")
            tg.start_soon(submit_all, "B")

    anyio.run(main)
    assert len(ids) == 40 and len(set(ids)) == 40
    assert wait_until(lambda: _all_settled(toy_ws), timeout=240, interval=0.5)
    lab = Lab.open(toy_ws)
    try:
        rows = lab.store.list_experiments(limit=100, status=None, order_by="created", direction="minimize")
        assert len(rows) == 40 and all(r["status"] == "succeeded" for r in rows), [r["error"] for r in rows]
        by_start = [r["id"] for r in sorted(rows, key=lambda r: r["started_at"])]
        assert by_start == sorted(ids)  # claimed in submission (id) order
        events = sorted([(r["started_at"], 1) for r in rows] + [(r["finished_at"], -1) for r in rows])
        running = peak = 0
        for _, d in events:
            running += d
            peak = max(peak, running)
        assert peak <= 2, f"{peak} runs at once with concurrency = 2"
        for r in rows:
            assert len((lab.run_dir(r["id"]) / "executions.log").read_text().split()) == 1
    finally:
        lab.close()


def test_a_run_outlives_the_server_that_started_it(toy_ws):
    (toy_ws / "train.py").write_text(QUICK_TRAIN.replace("SLEEP = 0.3", "SLEEP = 3"))
    server = _start_raw_server(toy_ws, 1, "orphan")
    lab = Lab.open(toy_ws)
    try:
        assert wait_until(lambda: lab.store.count_experiments("running") == 1, timeout=30)
        server.send_signal(signal.SIGKILL)
        server.wait()
        assert wait_until(lambda: lab.store.count_experiments("succeeded") == 1, timeout=30)
    finally:
        lab.close()


def test_each_slot_gets_its_own_gpu(toy_ws):
    (toy_ws / "train.py").write_text(
        "import json, os, time\ntime.sleep(2)\n"
        "json.dump({'folds': [[0.0] * 10] * 3}, open(os.path.join(os.environ['AR_RUN_DIR'], 'weights.json'), 'w'))\n"
        "json.dump({'cvd': float(os.environ['CUDA_VISIBLE_DEVICES'])},"
        " open(os.path.join(os.environ['AR_RUN_DIR'], 'metrics.json'), 'w'))\n")
    toml = toy_ws / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("# gpus = [0, 1]", "gpus = [3, 5]"))
    lab = Lab.open(toy_ws)
    try:
        from tools import experiments as ex
        ids = [ex.submit_experiment(lab, f"gpu run {i}") for i in range(2)]
        done = [ex.wait_for(lab, i) for i in ids]
        assert all(d.status == "succeeded" for d in done), done
        cvd = {ex.show_experiment(lab, i).metrics["cvd"] for i in ids}
        assert cvd == {3.0, 5.0}
    finally:
        lab.close()


def test_cancel_leaves_no_process_behind(toy_ws):
    import uuid
    marker = f"cancel-marker-{uuid.uuid4().hex}"
    (toy_ws / "train.py").write_text(
        "import subprocess, sys, time, os\n"
        f"subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)', '{marker}'])\n"
        "open(os.path.join(os.environ['AR_RUN_DIR'], 'events.jsonl'), 'a').write('{\"step\": 1, \"loss\": 1.0}\\n')\n"
        "time.sleep(600)\n")
    lab = Lab.open(toy_ws)
    try:
        from tools import experiments as ex
        from tools import runs
        exp_id = ex.submit_experiment(lab, "to be cancelled")
        assert wait_until(lambda: processes_with_marker(marker), timeout=30)
        assert runs.request_cancel(lab, exp_id) == "cancelling"
        s = ex.wait_for(lab, exp_id, timeout_s=30)
        assert s.status == "cancelled"
        assert wait_until(lambda: not processes_with_marker(marker), timeout=10)
    finally:
        lab.close()


def test_a_client_that_gives_up_leaves_the_run_going(toy_ws):
    (toy_ws / "train.py").write_text(QUICK_TRAIN.replace("SLEEP = 0.3", "SLEEP = 4"))
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "server.cli", "serve", "--workspace", str(toy_ws)])

    async def main():
        async with Client(params) as c:
            with pytest.raises(Exception, match="timed out"):
                await c.call_tool("run_experiment", {"description": "client times out"}, read_timeout_seconds=2)
            s = await c.call_tool("experiment_status", {"experiment_id": 1, "wait_s": 30})
            return s.structured_content

    s = anyio.run(main)
    assert s["status"] == "succeeded", s


def test_a_tools_folder_in_the_workspace_does_not_shadow_the_supervisor(toy_ws, tmp_path):
    marker = tmp_path / "shadowed"
    (toy_ws / "tools").mkdir()
    (toy_ws / "tools" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran outside the sandbox')\n")
    lab = Lab.open(toy_ws)
    try:
        from tools import experiments as ex
        s = ex.run_experiment(lab, "baseline with a hostile tools/ folder around", params={"STEPS": 5})
        assert s.status == "succeeded"
        assert not marker.exists()
    finally:
        lab.close()
