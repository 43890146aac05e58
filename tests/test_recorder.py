"""Issue 13: the recorder never trusts a run's files. Garbage in events.jsonl, metrics.json or a
checkpoint fails (at most) that run; the supervisor goes on with the queue; `serve` starts after
it; a run writing 1 GiB of events does not grow the supervisor. Real toy runs in the sandbox."""

import json
import subprocess
import sys
import threading
import time

import psutil
import pytest

from tools import experiments as ex
from tools import rundir

WEIGHTS = "json.dump({'folds': [[0.1] * 10] * 3}, open(os.path.join(d, 'weights.json'), 'w'))\n"


def _script(body: str) -> str:
    return "import json, os\nd = os.environ['AR_RUN_DIR']\n" + body + WEIGHTS


GARBAGE = {
    "deep events line": "open(os.path.join(d, 'events.jsonl'), 'w').write('[' * 5000 + ']' * 5000 + '\\n')\n",
    "400-digit step": "open(os.path.join(d, 'events.jsonl'), 'w').write('{\"step\": ' + '9' * 400 + ', \"loss\": 1}\\n')\n",
    "huge float": "open(os.path.join(d, 'events.jsonl'), 'w').write('{\"step\": 1, \"loss\": 1e999}\\n' * 3)\n",
    "deep metrics": "open(os.path.join(d, 'metrics.json'), 'w').write('{\"a\":' * 5000 + '1' + '}' * 5000)\n",
    "400-digit metric": "open(os.path.join(d, 'metrics.json'), 'w').write('{\"steps\": ' + '7' * 400 + '}')\n",
    "7 MB of string metrics": "json.dump({f'k{i}': 'x' * 7000 for i in range(1000)}, open(os.path.join(d, 'metrics.json'), 'w'))\n",
    "NaN and negative std": "open(os.path.join(d, 'metrics.json'), 'w').write('{\"objective_std\": -5, \"x\": NaN}')\n",
    "checkpoint is a directory": "os.mkdir(os.path.join(d, 'model.pt'))\n",
    "checkpoint symlink": "os.symlink('/etc/passwd', os.path.join(d, 'model.pt'))\n",
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_garbage_in_a_run_dir_fails_at_most_that_run(lab, case):
    (lab.root / "train.py").write_text(_script(GARBAGE[case]))
    r = ex.run_experiment(lab, f"garbage: {case}")
    assert r.status in ("succeeded", "failed"), (r.status, r.error)
    if r.status == "succeeded":  # the score is the scorer's; the garbage is simply not a fact
        assert r.objective is not None and r.objective > 0
    detail = ex.show_experiment(lab, r.id)
    assert len(detail.model_dump_json()) < 60_000
    assert all(v == v and abs(v) < 1e300 for v in detail.metrics.values())  # finite numbers only
    # the queue goes on, and a fresh server starts on this workspace
    (lab.root / "train.py").write_text(_script(""))
    after = ex.run_experiment(lab, "a normal run after the garbage")
    assert after.status == "succeeded", after.error
    assert _serve_answers_initialize(lab.root)


def _serve_answers_initialize(ws) -> bool:
    """`autoresearch serve` starts on the workspace and answers initialize (stdio JSON-RPC)."""
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--workspace", str(ws)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        msg = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
               "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
        proc.stdin.write((json.dumps(msg) + "\n").encode())
        proc.stdin.flush()
        line = proc.stdout.readline()
        return json.loads(line).get("result", {}).get("serverInfo", {}).get("name") == "eclip-autoresearch"
    finally:
        proc.kill()
        proc.wait()


def test_readers_bound_what_they_parse(tmp_path):
    (tmp_path / "events.jsonl").write_text("[" * 10_000 + "\n" + '{"step": 3, "loss": 0.5}\n')
    assert rundir.latest_progress(tmp_path).step == 3
    (tmp_path / "metrics.json").write_text('{"a": ' * 100 + "1" + "}" * 100)
    data, problem = rundir.read_metrics(tmp_path)
    assert data is None and "nested too deeply" in problem
    (tmp_path / "metrics.json").write_text('{"n": ' + "1" * 500 + "}")
    data, problem = rundir.read_metrics(tmp_path)
    assert data is None and "digits" in problem
    (tmp_path / "metrics.json").write_bytes(b"{" + b" " * (rundir.MAX_METRICS_BYTES + 10) + b"}")
    data, problem = rundir.read_metrics(tmp_path)
    assert data is None and "larger than" in problem
    assert rundir.number(10 ** 400) is None and rundir.number(float("nan")) is None and rundir.number(True) is None


@pytest.mark.slow
def test_a_run_writing_1_gib_of_events_does_not_grow_the_supervisor(lab):
    body = ("line = json.dumps({'t': 0.0, 'step': 1, 'loss': 0.5, 'pad': 'x' * 900}) + '\\n'\n"
            "with open(os.path.join(d, 'events.jsonl'), 'w') as f:\n"
            "    block = line * 1024\n"
            "    for _ in range(1200):\n"  # ~1.1 GiB
            "        f.write(block)\n")
    (lab.root / "train.py").write_text(_script(body))
    exp_id = ex.submit_experiment(lab, "1 GiB of events")
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            for p in psutil.process_iter(["cmdline"]):
                try:
                    if "tools.supervisor" in " ".join(p.info["cmdline"] or []):
                        peak[0] = max(peak[0], p.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()
    try:
        s = ex.wait_for(lab, exp_id, timeout_s=600)
    finally:
        done.set()
        t.join()
    assert s.status == "succeeded", s.error
    assert (lab.run_dir(exp_id) / "events.jsonl").stat().st_size > 2**30
    print(f"supervisor peak RSS while recording 1 GiB of events: {peak[0] / 2**20:.0f} MiB")
    assert 0 < peak[0] < 200 * 2**20
