"""Issue 17: the executor interface without a cluster: the sbatch line, SLURM's words mapped to our
states (squeue, sacct, the scontrol fallback), how a SLURM ending is recorded, the [slurm] table."""

import json
import subprocess
import time

import pytest

from tools import runs
from tools.config import SlurmConfig, load_config
from tools.errors import ToolError
from tools.executors import (FINAL, STATES, JobHandle, JobSpec, SlurmExecutor, jobs_dir, load_handle, save_handle,
                             time_limit_minutes)
from tools.job import allocated_gpus
from tools.lab import Lab


class FakeSlurm:
    """Answers the SLURM commands from a table {command name: (returncode, stdout, stderr)}."""

    def __init__(self, **answers):
        self.answers = answers
        self.calls = []

    def __call__(self, argv, env=None):
        self.calls.append(argv)
        rc, out, err = self.answers.get(argv[0], (1, "", f"{argv[0]}: not answered"))
        return subprocess.CompletedProcess(argv, rc, out, err)


def _job(tmp_path, **kw):
    return JobSpec(argv=["/venv/bin/python", "-P", "-m", "tools.job", "/ws", "7"], run_dir=tmp_path / "run",
                   name="ar-ws-7", env={"PYTHONUNBUFFERED": "1"}, log_path=tmp_path / "jobs" / "slurm-%j.log", **kw)


def test_states_are_the_issue_s():
    assert STATES == ("pending", "running", "succeeded", "failed", "cancelled", "timeout", "lost")
    assert FINAL == set(STATES) - {"pending", "running"}


def test_the_sbatch_line(tmp_path):
    cfg = SlurmConfig(partition="gpu", account="proj", signal_s=45, extra_args=["--qos=short"])
    args = SlurmExecutor(cfg).sbatch_args(_job(tmp_path, gpus=2, cpus=4, mem_gb=3.5, time_limit_s=125))
    assert args[:2] == ["sbatch", "--parsable"]
    for flag in ("--job-name=ar-ws-7", "--cpus-per-task=4", "--gres=gpu:2", "--mem=3584M", "--time=3",
                 "--signal=B:TERM@45", "--partition=gpu", "--account=proj", f"--output={tmp_path}/jobs/slurm-%j.log",
                 f"--chdir={tmp_path}/jobs", "--export=PYTHONUNBUFFERED"):
        assert flag in args, (flag, args)
    assert args[-1] == "--qos=short"
    bare = SlurmExecutor(SlurmConfig()).sbatch_args(_job(tmp_path))
    assert not [a for a in bare if a.startswith(("--gres", "--partition", "--account", "--time", "--mem"))]
    assert [time_limit_minutes(s) for s in (1, 60, 61, 3600)] == [1, 1, 2, 60]


def test_submit_writes_the_script_and_passes_only_the_allowlist(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "do-not-pass")
    fake = FakeSlurm(sbatch=(0, "4242;cluster\n", ""))
    handle = SlurmExecutor(SlurmConfig(), run=fake).submit(_job(tmp_path, time_limit_s=90))
    assert handle.executor == "slurm" and handle.job_id == "4242"
    assert handle.log_path == str(tmp_path / "jobs" / "slurm-4242.log")
    script = (tmp_path / "jobs" / "job.sh").read_text()
    assert "exec /venv/bin/python -P -m tools.job /ws 7" in script
    export = next(a for a in fake.calls[0] if a.startswith("--export="))
    assert "SECRET_TOKEN" not in export and "PATH" in export and "PYTHONUNBUFFERED" in export
    refused = FakeSlurm(sbatch=(1, "", "sbatch: error: invalid partition specified: nope"))
    with pytest.raises(ToolError, match="invalid partition"):
        SlurmExecutor(SlurmConfig(), run=refused).submit(_job(tmp_path))


@pytest.mark.parametrize("answers, state, exit_code", [
    ({"squeue": (0, "PENDING|Resources\n", "")}, "pending", None),
    ({"squeue": (0, "RUNNING|None\n", "")}, "running", None),
    ({"squeue": (0, "COMPLETING|None\n", "")}, "running", None),
    ({"squeue": (0, "", ""), "sacct": (0, "COMPLETED|0:0|None\n", "")}, "succeeded", 0),
    ({"squeue": (0, "", ""), "sacct": (0, "FAILED|3:0|NonZeroExitCode\n", "")}, "failed", 3),
    ({"squeue": (0, "", ""), "sacct": (0, "CANCELLED by 0|0:15|None\n", "")}, "cancelled", -15),
    ({"squeue": (0, "", ""), "sacct": (0, "TIMEOUT|0:0|TimeLimit\n", "")}, "timeout", 0),
    ({"squeue": (0, "", ""), "sacct": (0, "NODE_FAIL|0:0|None\n", "")}, "lost", 0),
    ({"squeue": (0, "", ""), "sacct": (0, "OUT_OF_MEMORY|0:9|None\n", "")}, "failed", -9),
    # accounting off: sacct exits 1, the controller still remembers the job (MinJobAge)
    ({"squeue": (0, "", ""), "sacct": (1, "", "Slurm accounting storage is disabled"),
      "scontrol": (0, "JobId=9 JobName=x JobState=TIMEOUT Reason=TimeLimit ExitCode=0:0 RunTime=00:01:15\n", "")},
     "timeout", 0),
    ({"squeue": (0, "", ""), "sacct": (1, "", "Slurm accounting storage is disabled"),
      "scontrol": (0, "JobId=9 JobState=COMPLETED Reason=None ExitCode=0:0\n", "")}, "succeeded", 0),
    ({"squeue": (1, "", "slurm_load_jobs error: Invalid job id specified"),
      "sacct": (1, "", "Slurm accounting storage is disabled"),
      "scontrol": (1, "", "slurm_load_jobs error: Invalid job id specified")}, "lost", None),
    # the controller does not answer: no verdict on the job (never 'lost' for a hiccup)
    ({"squeue": (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"),
      "sacct": (1, "", "Slurm accounting storage is disabled"),
      "scontrol": (1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)")},
     "running", None),
])
def test_slurm_words_map_to_our_states(answers, state, exit_code):
    st = SlurmExecutor(SlurmConfig(), run=FakeSlurm(**answers)).status(JobHandle("slurm", "9"))
    assert (st.state, st.exit_code) == (state, exit_code), st
    if st.state == "lost" and st.native == "UNKNOWN":
        assert "unknown to squeue, sacct and scontrol" in st.reason and "Invalid job id" in st.reason


def test_handles_survive_a_restart_and_nothing_a_run_writes_poses_as_one(lab):
    h = JobHandle("slurm", "77", log_path="/x/slurm-77.log", submitted_at=1.0, time_limit_s=120.0, proc=object())
    save_handle(lab, 5, h)
    back = load_handle(lab, 5)
    assert (back.executor, back.job_id, back.log_path, back.time_limit_s, back.proc) == ("slurm", "77", h.log_path,
                                                                                          120.0, None)
    assert not jobs_dir(lab, 5).is_relative_to(lab.run_dir(5))
    (jobs_dir(lab, 6)).mkdir(parents=True)
    (jobs_dir(lab, 6) / "handle.json").write_text("{not json")
    assert load_handle(lab, 6) is None and load_handle(lab, 999) is None


def test_doctor_can_say_which_executors_are_usable(monkeypatch):
    from tools import executors
    monkeypatch.setattr(executors.shutil, "which", lambda name: None)
    got = executors.usable_executors()
    assert got["local"] is None and "sbatch" in got["slurm"] and "not found" in got["slurm"]


def test_the_job_sees_the_gpus_slurm_allocated():
    assert allocated_gpus({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}) == [2, 3]
    assert allocated_gpus({"CUDA_VISIBLE_DEVICES": "1"}) == [1]
    assert allocated_gpus({}) is None and allocated_gpus({"CUDA_VISIBLE_DEVICES": "GPU-uuid"}) is None


def test_the_slurm_table(toy_ws):
    toml = toy_ws / "autoresearch.toml"
    text = toml.read_text()
    assert 'executor = "local"' in text and "# [slurm]" in text  # init writes it commented out
    assert load_config(toy_ws).executor == "local"
    toml.write_text(text.replace('executor = "local"', 'executor = "slurm"')
                    + '\n[slurm]\npartition = "gpu"\ngpus_per_run = 2\nmax_jobs = 3\nextra_args = ["--qos=x"]\n')
    cfg = load_config(toy_ws)
    assert (cfg.executor, cfg.slurm.partition, cfg.slurm.gpus_per_run, cfg.slurm.max_jobs) == ("slurm", "gpu", 2, 3)
    toml.write_text(toml.read_text() + "partitoin = \"x\"\n")
    with pytest.raises(ToolError, match="slurm.partitoin"):
        load_config(toy_ws)


def test_the_job_spec_of_a_run(toy_ws):
    toml = toy_ws / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('executor = "local"', 'executor = "slurm"')
                    + "\n[slurm]\ncpus_per_run = 3\nmem_gb = 2\ntime_margin_s = 30\n")
    lab = Lab.open(toy_ws)
    try:
        cfg = lab.config
        exp = {"id": 4, "time_budget_s": 20.0}
        spec = runs.job_spec(lab, exp)
        assert spec.argv[1:] == ["-P", "-m", "tools.job", str(lab.root), "4"]
        assert (spec.gpus, spec.cpus, spec.mem_gb) == (1, 3, 2)
        # the toy has its own scorer: budget + grace, then the scorer's limit + grace, then the margin
        assert spec.time_limit_s == 20 + cfg.timeout_grace_s + cfg.scorer_timeout_s + cfg.timeout_grace_s + 30
        assert spec.log_path.parent == jobs_dir(lab, 4)
    finally:
        lab.close()


def _running_row(lab, handle_id="55"):
    exp_id = lab.store.insert_experiment(status="running", description="a job", time_budget_s=5.0,
                                         config_json="{}", params_json="{}", started_at=time.time(),
                                         run_dir_of=lambda i: str(lab.run_dir(i)))
    lab.run_dir(exp_id).mkdir(parents=True, exist_ok=True)
    handle = JobHandle("slurm", handle_id, log_path=str(jobs_dir(lab, exp_id) / f"slurm-{handle_id}.log"),
                       time_limit_s=60.0)
    save_handle(lab, exp_id, handle)
    return lab.store.get_experiment(exp_id), handle


@pytest.mark.parametrize("status, cancel_file, outcome, want, words", [
    (("cancelled", "CANCELLED by 0"), False, None, "interrupted", "cancelled outside autoresearch"),
    (("cancelled", "CANCELLED by 0"), True, None, "cancelled", "cancelled on request"),
    (("timeout", "TIMEOUT"), False, None, "timeout", "reached its SLURM time limit (60 s"),
    (("lost", "UNKNOWN"), False, None, "interrupted", "SLURM job 55 was lost (why) and left no result"),
    (("failed", "FAILED"), False, None, "failed", "before its entry point wrote a result"),
    (("succeeded", "COMPLETED"), False, "failed", "failed", "the run: exit code 1"),
    (("lost", "UNKNOWN"), False, "timeout", "timeout", "stopped by SLURM's signal"),
])
def test_how_a_slurm_ending_is_recorded(lab, status, cancel_file, outcome, want, words):
    from tools.executors import JobStatus
    exp, handle = _running_row(lab)
    if cancel_file:
        (lab.run_dir(exp["id"]) / "cancel").touch()
    if outcome:
        error = {"failed": "the run: exit code 1", "timeout": "stopped by SLURM's signal ahead of its limit"}[outcome]
        runs.write_outcome(lab, exp["id"], runs.Outcome(status=outcome, error=error))
    Path = type(lab.root)
    Path(handle.log_path).write_text("autoresearch job: experiment 1 on node7\nTraceback: boom\n")
    runs.settle_job(lab, exp, handle, JobStatus(status[0], native=status[1], reason="why" if status[0] == "lost" else ""))
    row = lab.store.get_experiment(exp["id"])
    assert row["status"] == want and words in row["error"], row["error"]
    if want == "failed" and not outcome:
        assert "Traceback: boom" in row["error"]  # the job log's tail
    assert json.loads(row["config_json"]) is not None
