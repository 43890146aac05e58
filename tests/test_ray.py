"""Issue 17, `executor = "ray"`: each experiment one job of the Ray Jobs API.

The first tests need no Ray (the state mapping on a fake client, the missing extra). The rest start
a REAL local Ray head (`ray start --head`, token auth on, in a temp dir, stopped at the end) and run
toy experiments through the product path (tools.experiments): recorded with the trusted scorer's
objective, a failing job with its log tail, a cancel. Without the `ray` extra they skip with the
command that installs it (CI does not install it: Ray is an optional extra).
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_until
from tools import executors
from tools import experiments as ex
from tools import runs
from tools.config import RayConfig, load_config
from tools.errors import ToolError
from tools.executors import JobHandle, RayExecutor, load_handle
from tools.lab import Lab

INSTALL = ".venv/bin/pip install 'eclip-autoresearch[ray]'  (or: pip install 'ray[default]')"


# -- without Ray ------------------------------------------------------------------------------
class FakeInfo:
    def __init__(self, status, message=None, driver_exit_code=None):
        self.status, self.message, self.driver_exit_code = status, message, driver_exit_code


class FakeClient:
    def __init__(self, answer):
        self.answer = answer
        self.stopped = []

    def get_job_info(self, job_id):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return True

    def get_job_logs(self, job_id):
        return "\n".join(f"line {i}" for i in range(100))


def _status(answer):
    return RayExecutor(RayConfig(), client=FakeClient(answer)).status(JobHandle("ray", "ar-x-1-abc"))


def test_ray_s_words_map_to_our_states():
    got = {w: _status(FakeInfo(w)).state for w in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED")}
    assert got == {"PENDING": "pending", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed",
                   "STOPPED": "cancelled"}
    failed = _status(FakeInfo("FAILED", "Job entrypoint command failed with exit code 3, last logs:\nboom", 3))
    assert (failed.exit_code, failed.reason) == (3, "Job entrypoint command failed with exit code 3, last logs:")
    lost = _status(RuntimeError("Request failed with status code 404: Job ar-x-1-abc does not exist."))
    assert lost.state == "lost" and "unknown to the Ray cluster" in lost.reason
    down = _status(ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:8265"))
    assert down.state == "running" and "Ray did not answer" in down.reason  # not a verdict: ask again later
    fake = FakeClient(FakeInfo("RUNNING"))
    ray_ex = RayExecutor(RayConfig(), client=fake)
    ray_ex.cancel(JobHandle("ray", "j1"))
    assert fake.stopped == ["j1"] and ray_ex.logs(JobHandle("ray", "j1"), tail=3) == "line 97\nline 98\nline 99"


def test_the_token_goes_as_a_header(tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert executors.ray_auth_headers() == {"authorization": "Bearer s3cret"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert executors.ray_auth_headers() == {}


def test_without_the_extra_the_error_says_how_to_install_it(monkeypatch, toy_ws):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    assert "pip install 'eclip-autoresearch[ray]'" in executors.usable_executors()["ray"]
    toml = toy_ws / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('executor = "local"', 'executor = "ray"')
                    + '\n[ray]\naddress = "http://127.0.0.1:1"\ngpus_per_run = 0\nmax_jobs = 2\n')
    cfg = load_config(toy_ws)
    assert (cfg.executor, cfg.ray.gpus_per_run, cfg.ray.max_jobs, cfg.jobs) == ("ray", 0, 2, cfg.ray)
    lab = Lab.open(toy_ws)
    try:
        with pytest.raises(ToolError, match=r"pip install 'eclip-autoresearch\[ray\]'"):
            executors.executor_for(lab).submit(runs.job_spec(lab, {"id": 1, "time_budget_s": None}))
        assert executors.executor_for(lab).status(JobHandle("ray", "x")).state == "running"  # not a verdict on a job
    finally:
        lab.close()


# -- a real local Ray head --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(session: psutil.Process | None, marker: str) -> None:
    """Stop the Ray processes this test started (its session, anything naming its temp dir, and their
    children) and nothing else: `ray stop` would stop every Ray on the machine."""
    procs = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) or (session is not None and os.getpgid(p.pid) == session.pid):
                procs[p.pid] = p
                procs.update({c.pid: c for c in p.children(recursive=True)})
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    for p in procs.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head with token auth (Ray 2.52+ turns it on when a token exists), in a temp dir."""
    try:
        import ray  # noqa: F401
        import ray.job_submission  # noqa: F401
    except ImportError:
        pytest.skip(f"the ray extra is not installed. Enable: {INSTALL}")
    temp = Path(tempfile.mkdtemp(prefix="ar-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    dash = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = Path(sys.executable).with_name("ray")
    argv = [str(ray_bin), "start", "--head", "--num-cpus", "2", "--num-gpus", "0", "--disable-usage-stats",
            "--temp-dir", str(temp / "r"), "--port", str(_free_port()), "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dash), "--object-store-memory", str(100 * 2**20), "--include-dashboard", "true"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    session = psutil.Process(proc.pid)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
    start_s = time.monotonic() - t0
    old = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    # our side gets the token's path only, not RAY_AUTH_MODE: the executor sends the token itself
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ.pop("RAY_AUTH_MODE", None)
    address = f"http://127.0.0.1:{dash}"
    try:
        if proc.returncode != 0:
            pytest.fail(f"`ray start --head` failed ({proc.returncode}): {out[-1500:]}")
        assert wait_until(lambda: executors.ray_unusable(address) is None, timeout=30, interval=0.5), \
            executors.ray_unusable(address)
        print(f"\nray: `ray start --head` {start_s:.2f} s, Jobs API at {address}")
        yield {"address": address, "start_s": start_s}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _stop(session, str(temp))


def _ray_ws(toy_ws: Path, address: str, train_edit=None) -> Path:
    toml = toy_ws / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('executor = "local"', 'executor = "ray"').replace(
        "timeout_grace_s = 60", "timeout_grace_s = 5")
        + f'\n[ray]\naddress = "{address}"\ngpus_per_run = 0\ncpus_per_run = 1\ntime_margin_s = 30\npoll_s = 0.3\n')
    if train_edit is not None:
        train = toy_ws / "train.py"
        train.write_text(train_edit(train.read_text()))
    return toy_ws


def _ray_status(lab: Lab, exp_id: int) -> str:
    h = load_handle(lab, exp_id)
    return RayExecutor(lab.config.ray).status(h).native if h else ""


def _trusted_score(ws: Path, run_dir: Path) -> float:
    """The toy's frozen scorer run by hand on what the run handed back (the number the product must record)."""
    out = subprocess.run([sys.executable, str(ws / "score.py")], capture_output=True, text=True, check=True,
                         env={**os.environ, "AR_OUTPUTS_DIR": str(run_dir), "AR_NUM_FOLDS": "3"})
    return json.loads(out.stdout.strip().splitlines()[-1])["objective"]


def test_an_experiment_runs_as_a_ray_job_and_is_scored_by_the_trusted_scorer(ray_head, toy_ws):
    ws = _ray_ws(toy_ws, ray_head["address"])
    lab = Lab.open(ws)
    try:
        t_submit = time.time()
        s = ex.run_experiment(lab, "toy on ray", poll_s=0.2)
        total = time.time() - t_submit
        assert s.status == "succeeded", s
        run_dir = lab.run_dir(s.id)
        assert s.objective == pytest.approx(_trusted_score(ws, run_dir), rel=1e-12)
        h = load_handle(lab, s.id)
        config = json.loads(lab.store.get_experiment(s.id)["config_json"])
        assert config["job"]["executor"] == "ray" and config["job"]["job_id"] == h.job_id
        assert h.job_id.startswith("ar-") and f"-{s.id}-" in h.job_id  # ar-<workspace>-<id>-<8 hex>
        assert f"ray job {h.job_id}" in (s.next or ""), s.next  # the summary names the executor and the job
        assert _ray_status(lab, s.id) == "SUCCEEDED"
        logs = RayExecutor(lab.config.ray).logs(h)
        assert f"autoresearch job: experiment {s.id}" in logs and f"job {h.job_id}" in logs, logs
        first_event = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])["t"]
        print(f"\nray: submit_job -> run started in the sandbox {first_event - h.submitted_at:.2f} s; "
              f"run_experiment -> first step {first_event - t_submit:.2f} s; recorded in {total:.2f} s")
    finally:
        lab.close()


def test_a_failing_ray_job_is_failed_with_its_log_tail(ray_head, toy_ws):
    ws = _ray_ws(toy_ws, ray_head["address"],
                 lambda _: "print('about to fail')\nraise SystemExit('boom: the run broke on purpose')\n")
    lab = Lab.open(ws)
    try:
        s = ex.run_experiment(lab, "fails on ray", poll_s=0.2)
        assert s.status == "failed", s
        assert "boom: the run broke on purpose" in s.error, s.error
    finally:
        lab.close()


def test_cancel_stops_the_ray_job(ray_head, toy_ws):
    ws = _ray_ws(toy_ws, ray_head["address"], lambda t: t.replace("SLEEP_PER_STEP = 0.0", "SLEEP_PER_STEP = 0.5"))
    lab = Lab.open(ws)
    try:
        exp_id = ex.submit_experiment(lab, "to be cancelled")
        assert wait_until(lambda: _ray_status(lab, exp_id) == "RUNNING"
                          and (lab.run_dir(exp_id) / "events.jsonl").exists(), timeout=60, interval=0.2)
        assert runs.request_cancel(lab, exp_id) == "cancelling"
        s = ex.wait_for(lab, exp_id, timeout_s=30, poll_s=0.2)
        assert s.status == "cancelled", s
        assert _ray_status(lab, exp_id) == "STOPPED"  # stop_job, not just the cancel file
    finally:
        lab.close()
