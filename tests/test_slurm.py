"""Issue 17 on a REAL single-node SLURM (munge + slurmctld + slurmd, two fake GPUs as gres), started by
this test session with .ci/slurm.sh. Toy experiments go through the product path (tools.experiments,
the MCP server), each an sbatch job running our sandboxed entry point.

Without SLURM these tests skip with the command that enables them; with AUTORESEARCH_REQUIRE_EXTERNAL=1
(CI) they fail instead.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from conftest import ROOT, processes_with_marker, wait_until
from mcp import Client, StdioServerParameters
from tools import experiments as ex
from tools import runs
from tools.executors import JobSpec, SlurmExecutor, jobs_dir, load_handle, slurm_missing
from tools.config import SlurmConfig
from tools.lab import Lab

SLURM_SH = ROOT / ".ci" / "slurm.sh"
ENABLE = f"sudo {SLURM_SH} up   (Debian: installs slurmctld slurmd munge, starts a single-node SLURM with 2 fake GPUs)"


def _unavailable(why: str):
    if os.environ.get("AUTORESEARCH_REQUIRE_EXTERNAL") == "1":
        pytest.fail(f"SLURM is required here (AUTORESEARCH_REQUIRE_EXTERNAL=1) but {why}. Fix: {ENABLE}")
    pytest.skip(f"SLURM not available: {why}. Enable: {ENABLE}")


@pytest.fixture(scope="module")
def slurm():
    """A running single-node SLURM; started here (as root) when it is not up yet. Yields facts measured."""
    missing = slurm_missing()
    if missing and os.geteuid() != 0:
        _unavailable(f"{', '.join(missing)} not installed")
    if missing and os.environ.get("AUTORESEARCH_REQUIRE_EXTERNAL") != "1":
        _unavailable(f"{', '.join(missing)} not installed")  # installing packages is CI's call (.ci/run), not a test's
    t0 = time.monotonic()
    up = subprocess.run(["bash", str(SLURM_SH), "up"], capture_output=True, text=True, timeout=600)
    start_s = time.monotonic() - t0
    if up.returncode != 0:
        _unavailable(f".ci/slurm.sh up failed: {(up.stderr or up.stdout).strip()[-800:]}")
    conf = subprocess.run(["bash", str(SLURM_SH), "env"], capture_output=True, text=True).stdout.split("=", 1)[1].strip()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    print(f"\nslurm: up in {start_s:.2f} s: {up.stdout.strip()}")
    yield {"start_s": start_s}
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def _squeue() -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _slurm_ws(toy_ws: Path, train: str | None = None, extra: str = "") -> Path:
    toml = toy_ws / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('executor = "local"', 'executor = "slurm"').replace(
        "timeout_grace_s = 60", "timeout_grace_s = 5") + extra
        + "\n[slurm]\ngpus_per_run = 1\ncpus_per_run = 1\nmem_gb = 1\ntime_margin_s = 30\npoll_s = 0.5\n")
    if train is not None:
        (toy_ws / "train.py").write_text(train)
    return toy_ws


# a toy run that says which GPU it was given and lasts SLEEP seconds; score.py scores its weights
TRAIN = """\
import json, os, time
run_dir = os.environ["AR_RUN_DIR"]
t0 = time.time()
open(os.path.join(run_dir, "events.jsonl"), "a").write(json.dumps({"t": t0, "step": 1, "loss": 1.0}) + "\\n")
SLEEP = 4
time.sleep(SLEEP)
json.dump({"folds": [[0.01] * 10] * 3}, open(os.path.join(run_dir, "weights.json"), "w"))
json.dump({"steps": 1, "cvd": float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1")), "t0": t0, "t1": time.time()},
          open(os.path.join(run_dir, "metrics.json"), "w"))
"""


def _job_id(lab: Lab, exp_id: int) -> str | None:
    h = load_handle(lab, exp_id)
    return h.job_id if h else None


def _kill_supervisors(ws: Path) -> None:
    for p in processes_with_marker(f"tools.supervisor {ws}"):
        p.send_signal(signal.SIGKILL)
        p.wait(10)


def test_experiments_run_as_concurrent_slurm_jobs_each_on_its_gpu(slurm, toy_ws):
    ws = _slurm_ws(toy_ws, TRAIN)
    lab = Lab.open(ws)
    try:
        t_submit = time.time()
        ids = [ex.submit_experiment(lab, f"slurm run {i}") for i in range(3)]
        seen: list[dict] = []
        assert wait_until(lambda: (seen.append(_squeue()) or True) and all(_job_id(lab, i) for i in ids)
                          and "RUNNING" in seen[-1].values(), timeout=30)
        jobs = [_job_id(lab, i) for i in ids]
        assert len(set(jobs)) == 3  # each experiment its own job
        assert wait_until(lambda: (seen.append(_squeue()) or True)
                          and list(seen[-1].values()).count("RUNNING") == 2, timeout=30)
        states = seen[-1]
        assert sorted(states.get(j, "") for j in jobs) == ["PENDING", "RUNNING", "RUNNING"], states  # a third waits
        waiting = next(i for i, j in zip(ids, jobs) if states[j] == "PENDING")
        assert runs.job_note(lab, waiting).startswith(f"SLURM job {_job_id(lab, waiting)}: PENDING")
        done = [ex.wait_for(lab, i, timeout_s=90) for i in ids]
        assert [d.status for d in done] == ["succeeded"] * 3, done
        metrics = [ex.show_experiment(lab, i, detail="full").metrics for i in ids]  # run-reported clock times
        first_two = sorted(jobs, key=int)[:2]
        cvd = [m["cvd"] for i, m in zip(ids, metrics) if _job_id(lab, i) in first_two]
        assert sorted(cvd) == [0.0, 1.0], metrics  # SLURM's gres: distinct CUDA_VISIBLE_DEVICES
        spans = sorted((m["t0"], m["t1"]) for m in metrics)
        assert spans[1][0] < spans[0][1], spans  # two ran at the same time
        assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.5, spans  # the third after one of them
        for i in ids:
            config = json.loads(lab.store.get_experiment(i)["config_json"])
            assert config["job"]["executor"] == "slurm" and config["job"]["job_id"] == _job_id(lab, i)
        latency = min(m["t0"] for m in metrics) - t_submit
        handles = [load_handle(lab, i) for i in ids]
        sbatch_to_run = min(m["t0"] - h.submitted_at for m, h in zip(metrics, handles))
        print(f"\nslurm: sbatch -> run started in the sandbox on the node {sbatch_to_run:.2f} s")
        print(f"\nslurm: submit -> first run started {latency:.2f} s; 3 runs of 4 s on 2 GPUs recorded in "
              f"{time.time() - t_submit:.1f} s")
    finally:
        lab.close()


def test_max_jobs_bounds_the_jobs_in_flight(slurm, toy_ws):
    ws = _slurm_ws(toy_ws, TRAIN.replace("SLEEP = 4", "SLEEP = 2"))
    toml = ws / "autoresearch.toml"
    toml.write_text(toml.read_text() + "max_jobs = 3\n")
    lab = Lab.open(ws)
    try:
        ids = [ex.submit_experiment(lab, f"bounded {i}") for i in range(5)]
        peak = 0
        deadline = time.monotonic() + 120
        while lab.store.experiments_with_status("queued", "running") and time.monotonic() < deadline:
            ours = {_job_id(lab, i) for i in ids} - {None}
            peak = max(peak, len([j for j in _squeue() if j in ours]))
            time.sleep(0.2)
        assert [ex.summary(lab, i).status for i in ids] == ["succeeded"] * 5
        assert peak == 3, peak  # 3 in flight (2 running on the 2 GPUs, 1 pending), the rest queued with us
        print(f"\nslurm: 5 runs with max_jobs=3: at most {peak} jobs in squeue")
    finally:
        lab.close()


def test_a_failing_job_is_failed_with_its_log_tail(slurm, toy_ws):
    ws = _slurm_ws(toy_ws, "import sys\nprint('about to fail')\nraise SystemExit('boom: the run broke on purpose')\n")
    lab = Lab.open(ws)
    try:
        s = ex.run_experiment(lab, "fails on the node")
        assert s.status == "failed", s
        assert "exit code 1" in s.error and "boom: the run broke on purpose" in s.error, s.error
    finally:
        lab.close()


def test_cancel_scancels_the_job(slurm, toy_ws):
    ws = _slurm_ws(toy_ws, TRAIN.replace("SLEEP = 4", "SLEEP = 300"))
    lab = Lab.open(ws)
    try:
        exp_id = ex.submit_experiment(lab, "to be cancelled")
        assert wait_until(lambda: _job_id(lab, exp_id) and _squeue().get(_job_id(lab, exp_id)) == "RUNNING", timeout=30)
        job = _job_id(lab, exp_id)
        assert runs.request_cancel(lab, exp_id) == "cancelling"
        s = ex.wait_for(lab, exp_id, timeout_s=30)
        assert s.status == "cancelled", s
        assert job not in _squeue()  # gone from the queue
    finally:
        lab.close()


def test_a_run_over_its_budget_is_timeout(slurm, toy_ws):
    ws = _slurm_ws(toy_ws, "import time\ntime.sleep(300)\n")
    lab = Lab.open(ws)
    try:
        s = ex.run_experiment(lab, "sleeps past its budget", time_budget_s=5)
        assert s.status == "timeout", s
        assert "budget + grace" in s.error
    finally:
        lab.close()


@pytest.mark.slow
def test_slurm_s_own_time_limit_is_timeout_after_a_graceful_signal(slurm, tmp_path):
    """--time=1 (the minimum), --signal=B:TERM@30: the job is told first, then SLURM ends it: `timeout`."""
    ex_ = SlurmExecutor(SlurmConfig(signal_s=30))
    script = "trap 'echo got TERM' TERM; while true; do sleep 1; done"
    handle = ex_.submit(JobSpec(argv=["/bin/bash", "-c", script], run_dir=tmp_path, name="ar-timeout",
                                env={"PYTHONUNBUFFERED": "1"}, time_limit_s=60, log_path=tmp_path / "slurm-%j.log"))
    assert wait_until(lambda: ex_.status(handle).state == "running", timeout=30)
    assert wait_until(lambda: ex_.status(handle).final, timeout=150, interval=1)
    st = ex_.status(handle)
    assert st.state == "timeout", st
    assert "got TERM" in ex_.logs(handle)


def test_a_job_cancelled_behind_our_back_is_interrupted_after_a_restart(slurm, toy_ws):
    ws = _slurm_ws(toy_ws, TRAIN.replace("SLEEP = 4", "SLEEP = 300"))
    lab = Lab.open(ws)
    try:
        exp_id = ex.submit_experiment(lab, "scancelled from outside")
        assert wait_until(lambda: _job_id(lab, exp_id) and _squeue().get(_job_id(lab, exp_id)) == "RUNNING", timeout=30)
        _kill_supervisors(ws)  # nobody watches now
        job = _job_id(lab, exp_id)
        subprocess.run(["scancel", job], check=True)
        assert wait_until(lambda: job not in _squeue(), timeout=30)
        assert lab.store.get_experiment(exp_id)["status"] == "running"  # nobody has recorded it yet
        s = ex.wait_for(lab, exp_id, timeout_s=30)  # the server's status call: recovery asks SLURM
        assert s.status == "interrupted", s
        assert f"SLURM job {job} was cancelled outside autoresearch" in s.error, s.error
    finally:
        lab.close()


def _serve(ws: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "server.cli", "serve", "--workspace", str(ws)],
                                 env={**os.environ})


def test_a_job_that_finished_while_no_server_was_up_is_recorded(slurm, toy_ws):
    ws = _slurm_ws(toy_ws, TRAIN.replace("SLEEP = 4", "SLEEP = 6"))

    async def submit():
        async with Client(_serve(ws)) as c:
            r = await c.call_tool("run_experiment", {"description": "finishes unwatched", "wait_s": 0})
            return r.structured_content

    first = anyio.run(submit)
    exp_id = first["id"]
    lab = Lab.open(ws)
    try:
        assert wait_until(lambda: _job_id(lab, exp_id) and _squeue().get(_job_id(lab, exp_id)) == "RUNNING", timeout=30)
        _kill_supervisors(ws)  # the server is gone (its client closed) and now the supervisor too
        job = _job_id(lab, exp_id)
        assert wait_until(lambda: job not in _squeue(), timeout=60)
        assert (jobs_dir(lab, exp_id) / "outcome.json").exists()
        assert lab.store.get_experiment(exp_id)["status"] == "running"  # finished, but nobody recorded it
    finally:
        lab.close()

    async def status():
        async with Client(_serve(ws)) as c:
            r = await c.call_tool("experiment_status", {"experiment_id": exp_id, "wait_s": 20})
            return r.structured_content

    s = anyio.run(status)
    assert s["status"] == "succeeded" and s["objective"] is not None, s
