"""Where a run's processes execute: one interface, a backend per place (`executor` in autoresearch.toml).

    submit(job) -> handle · status(handle) -> JobStatus · cancel(handle) · logs(handle, tail)

with the states pending | running | succeeded | failed | cancelled | timeout | lost. We schedule
nothing ourselves: `local` is one sandboxed process on this machine (the supervisor's flock'd slots
decide how many at once, as before); `slurm` is a thin layer over sbatch/squeue/sacct/scontrol/
scancel, one job per experiment, and SLURM decides where and when it runs; `ray` (an optional
extra) is the same over the Ray Jobs API, and Ray decides. The payload of a SLURM or Ray
job is our own trusted entry point (`python -P -m tools.job WORKSPACE ID`), which launches the
same sandboxed processes and the same scorer on the node as the local supervisor does here.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from sandbox import SandboxPolicy

from tools.config import RayConfig, SlurmConfig
from tools.errors import ToolError
from tools.lab import Lab
from tools.launch import launch_sandboxed
from tools.rundir import log_tail

STATES = ("pending", "running", "succeeded", "failed", "cancelled", "timeout", "lost")
FINAL = frozenset(("succeeded", "failed", "cancelled", "timeout", "lost"))


@dataclass
class JobSpec:
    """One job: what runs, where it writes, what it may see from our environment, what it needs."""
    argv: list[str]
    run_dir: Path
    name: str
    env: dict[str, str] = field(default_factory=dict)   # the allowlist: nothing else of ours reaches the job
    gpus: int = 0
    cpus: int = 1
    mem_gb: float | None = None
    time_limit_s: float | None = None
    log_path: Path | None = None                          # the job's own stdout+stderr (slurm)
    cwd: Path | None = None                               # where the entry point starts (ray; slurm: log_path's folder)
    sandbox: SandboxPolicy | None = None                  # local: the policy of the one process this job is

    @classmethod
    def for_policy(cls, policy: SandboxPolicy, name: str) -> "JobSpec":
        lim = policy.limits
        return cls(argv=list(policy.argv), run_dir=Path(policy.run_dir), name=name, env=dict(policy.env),
                   gpus=len(policy.gpu) if isinstance(policy.gpu, (list, tuple)) else 0,
                   mem_gb=lim.memory_bytes / 2**30 if lim.memory_bytes else None,
                   time_limit_s=lim.wall_seconds, sandbox=policy)


@dataclass
class JobStatus:
    state: str                      # one of STATES
    exit_code: int | None = None
    reason: str = ""                # why, in words (the scheduler's reason, the sandbox's)
    native: str = ""                # the backend's own word: COMPLETED, CANCELLED by 0, exited ...
    result: object | None = None    # local: the SandboxResult

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass
class JobHandle:
    """What identifies a submitted job; a slurm handle is saved (jobs/<id>/handle.json) so that a
    later supervisor or server can ask SLURM about it."""
    executor: str
    job_id: str
    log_path: str | None = None
    submitted_at: float = 0.0
    time_limit_s: float | None = None
    proc: object | None = field(default=None, repr=False, compare=False)  # local only, never saved

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("proc")
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "JobHandle":
        d = json.loads(text)
        return cls(**{k: d[k] for k in ("executor", "job_id", "log_path", "submitted_at", "time_limit_s") if k in d})


class Executor(Protocol):
    name: str

    def submit(self, job: JobSpec) -> JobHandle: ...
    def status(self, handle: JobHandle) -> JobStatus: ...
    def cancel(self, handle: JobHandle) -> None: ...
    def logs(self, handle: JobHandle, tail: int = 40) -> str: ...


# -- local: one sandboxed process on this machine -------------------------------------------
class LocalExecutor:
    """The sandboxed process of a JobSpec's policy, started and polled here (today's behaviour)."""
    name = "local"

    def __init__(self, lab: Lab):
        self.lab = lab

    def submit(self, job: JobSpec) -> JobHandle:
        if job.sandbox is None:
            raise ValueError("a local job is one sandboxed process: JobSpec.sandbox is required")
        proc = launch_sandboxed(self.lab, job.sandbox)
        return JobHandle("local", str(getattr(proc, "pid", "") or ""), log_path=str(job.run_dir),
                         submitted_at=time.time(), time_limit_s=job.time_limit_s, proc=proc)

    def status(self, handle: JobHandle) -> JobStatus:
        proc = handle.proc
        if proc is None:  # the process belonged to a supervisor that is gone
            return JobStatus("lost", reason="its supervisor is gone")
        result = proc.poll()
        if result is None:
            return JobStatus("running")
        state = {"exited": "succeeded" if result.returncode == 0 else "failed", "timeout": "timeout",
                 "cancelled": "cancelled"}.get(result.status, "failed")
        return JobStatus(state, exit_code=result.returncode, reason=result.reason, native=result.status, result=result)

    def cancel(self, handle: JobHandle) -> None:
        if handle.proc is not None:
            handle.proc.cancel()

    def logs(self, handle: JobHandle, tail: int = 40) -> str:
        return log_tail(Path(handle.log_path), tail) if handle.log_path else ""


# -- slurm: sbatch / squeue / sacct / scontrol / scancel ------------------------------------
SLURM_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending", "RESV_DEL_HOLD": "pending",
    "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running", "STAGE_OUT": "running",
    "SIGNALING": "running", "RESIZING": "running", "STOPPED": "running",
    "COMPLETED": "succeeded",
    "FAILED": "failed", "OUT_OF_MEMORY": "failed", "SPECIAL_EXIT": "failed", "BOOT_FAIL": "failed",
    "CANCELLED": "cancelled",
    "TIMEOUT": "timeout", "DEADLINE": "timeout",
    "NODE_FAIL": "lost", "PREEMPTED": "lost", "REVOKED": "lost",
}
# what a job may see of the submitter's environment (sbatch --export); SLURM adds its own SLURM_*
ENV_ALLOWLIST = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SLURM_CONF")
SLURM_COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel")


def slurm_missing() -> list[str]:
    return [c for c in SLURM_COMMANDS if shutil.which(c) is None]


def usable_executors(ray_address: str | None = None) -> dict[str, str | None]:
    """{executor: None when usable here, else why not} (for `autoresearch doctor`; ray: a cluster
    answers at `ray_address`, a workspace's [ray] address, else the default)."""
    missing = slurm_missing()
    if missing:
        slurm = f"{', '.join(missing)} not found (SLURM's client commands; on a cluster, run on a login node)"
    else:
        probe = _run(["sinfo", "-h", "-o", "%P"]) if shutil.which("sinfo") else None
        slurm = None if probe is None or probe.returncode == 0 else \
            f"sinfo failed: {(probe.stderr or probe.stdout).strip()[-300:]} (is SLURM_CONF / the controller right?)"
    return {"local": None, "slurm": slurm, "ray": ray_unusable(ray_address)}


def time_limit_minutes(seconds: float) -> int:
    """sbatch --time in whole minutes, rounded up, at least 1."""
    return max(1, math.ceil(seconds / 60))


class SlurmExecutor:
    """A thin layer over the SLURM commands; SLURM does all the scheduling."""
    name = "slurm"

    def __init__(self, cfg: SlurmConfig, run=None):
        self.cfg = cfg
        self._run = run or _run

    def sbatch_args(self, job: JobSpec) -> list[str]:
        cfg = self.cfg
        args = ["sbatch", "--parsable", f"--job-name={job.name}", "--nodes=1", "--ntasks=1",
                f"--cpus-per-task={job.cpus}", "--export=" + ",".join(["NONE"] if not job.env else
                                                                   sorted(job.env)),
                "--open-mode=append"]
        if job.log_path is not None:
            args += [f"--output={job.log_path}", f"--chdir={job.log_path.parent}"]
        if job.gpus:
            args.append(f"--gres=gpu:{job.gpus}")
        if job.mem_gb:
            args.append(f"--mem={max(1, math.ceil(job.mem_gb * 1024))}M")
        if job.time_limit_s:
            args.append(f"--time={time_limit_minutes(job.time_limit_s)}")
            if cfg.signal_s and cfg.signal_s < job.time_limit_s:
                args.append(f"--signal=B:TERM@{cfg.signal_s}")  # B: the batch shell, which execs our entry point
        if cfg.partition:
            args.append(f"--partition={cfg.partition}")
        if cfg.account:
            args.append(f"--account={cfg.account}")
        return args + list(cfg.extra_args)

    def submit(self, job: JobSpec) -> JobHandle:
        if job.log_path is None:
            raise ValueError("a slurm job needs log_path (its folder holds the batch script)")
        script = job.log_path.parent / "job.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("#!/bin/sh\n# written by autoresearch (tools/executors.py); SLURM runs it on a node\n"
                          f"exec {shlex.join(job.argv)}\n")
        env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST}
        env.update(job.env)
        job.env = env
        proc = self._run([*self.sbatch_args(job), str(script)], env={**os.environ, **env})
        if proc.returncode != 0:
            raise ToolError(f"sbatch refused the job: {(proc.stderr or proc.stdout).strip()[-500:]}. Fix: check the "
                            "[slurm] table in autoresearch.toml (partition, account, gpus_per_run, extra_args)")
        job_id = proc.stdout.strip().split(";")[0]
        if not re.fullmatch(r"\d+(_\d+)?", job_id):
            raise ToolError(f"sbatch --parsable printed {proc.stdout.strip()[:200]!r}, not a job id")
        return JobHandle("slurm", job_id, log_path=str(job.log_path).replace("%j", job_id),
                         submitted_at=time.time(), time_limit_s=job.time_limit_s)

    def status(self, handle: JobHandle) -> JobStatus:
        jid = handle.job_id
        q = self._run(["squeue", "-h", "-j", jid, "-o", "%T|%r"])
        line = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else ""
        if line:
            word, _, reason = line.partition("|")
            state = SLURM_STATES.get(word.split()[0], "running")
            if state in ("pending", "running"):
                return JobStatus(state, reason="" if reason in ("None", "") else reason, native=word)
        # finished (or finishing): accounting first, then the controller's memory of it (MinJobAge)
        a = self._run(["sacct", "-n", "-P", "-X", "-j", jid, "-o", "State,ExitCode,Reason"])
        if a.returncode == 0 and a.stdout.strip():
            word, code, reason = (a.stdout.strip().splitlines()[0].split("|") + ["", ""])[:3]
            return _final(word, code, reason)
        c = self._run(["scontrol", "show", "job", "-o", jid])
        if c.returncode == 0 and "JobState=" in c.stdout:
            f = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", c.stdout))
            return _final(f.get("JobState", ""), f.get("ExitCode", ""), f.get("Reason", ""))
        unknown = "invalid job id"
        if (q.returncode != 0 and unknown not in q.stderr.lower()) or unknown not in (c.stderr + c.stdout).lower():
            # the controller did not answer (restarting, overloaded): not a verdict on the job; ask again later
            why = (c.stderr or q.stderr or "no answer").strip().splitlines()
            return JobStatus("running", reason=f"SLURM did not answer: {why[-1][:200] if why else ''}", native="UNKNOWN")
        why = (c.stderr or a.stderr or q.stderr or "").strip().splitlines()
        return JobStatus("lost", reason="unknown to squeue, sacct and scontrol"
                                        + (f" ({why[-1][:200]})" if why else ""), native="UNKNOWN")

    def cancel(self, handle: JobHandle) -> None:
        self._run(["scancel", handle.job_id])

    def logs(self, handle: JobHandle, tail: int = 40) -> str:
        if not handle.log_path:
            return ""
        try:
            with open(handle.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
                return "\n".join(f.read().decode(errors="replace").splitlines()[-tail:])
        except OSError:
            return ""


def _final(word: str, code: str, reason: str) -> JobStatus:
    base = word.split()[0] if word else ""
    state = SLURM_STATES.get(base, "failed" if base else "lost")
    exit_code = None
    if m := re.match(r"(\d+):(\d+)", code or ""):
        exit_code = int(m.group(1)) or (-int(m.group(2)) if int(m.group(2)) else 0)
    reason = "" if reason in ("None", "") else reason
    if state == "lost" and not reason:
        reason = f"SLURM ended it {base}"
    return JobStatus(state, exit_code=exit_code, reason=reason, native=word)


def _run(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: {exc}")


# -- ray: the Ray Jobs API (an optional extra) ---------------------------------------------
RAY_STATES = {"PENDING": "pending", "RUNNING": "running", "SUCCEEDED": "succeeded", "FAILED": "failed",
              "STOPPED": "cancelled"}
RAY_INSTALL = "pip install 'eclip-autoresearch[ray]'"


def ray_auth_headers() -> dict[str, str]:
    """The bearer token of a cluster started with token auth (Ray 2.52+: `ray start` enables it when a
    token exists): RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. Passed as a
    header, so this works whether or not RAY_AUTH_MODE=token is set in our environment."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
        try:
            with open(path) as f:
                token = f.read(4096).strip()
        except OSError:
            return {}
    return {"authorization": f"Bearer {token}"} if token else {}


def ray_client(address: str):
    """A JobSubmissionClient for `address` (ray is imported only here: it is an optional extra)."""
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:
        raise ToolError(f"executor = \"ray\" needs Ray's Jobs API, which is not installed ({exc}). Fix: "
                        f"{RAY_INSTALL}, or set executor = \"local\" in autoresearch.toml") from None
    try:
        return JobSubmissionClient(address, headers=ray_auth_headers() or None)
    except Exception as exc:  # ConnectionError, AuthenticationError, a bad address ...
        raise ToolError(f"no Ray cluster answered at [ray] address = {address!r}: {type(exc).__name__}: "
                        f"{str(exc)[:300]}. Fix: start one (`ray start --head`), or set [ray] address; with token "
                        "auth, RAY_AUTH_TOKEN or ~/.ray/auth_token") from None


def ray_unusable(address: str | None = None) -> str | None:
    """None when a Ray cluster answers at `address` (default: the [ray] default), else why not."""
    try:
        import ray  # noqa: F401
        import ray.job_submission  # noqa: F401
    except ImportError:
        return f"not installed ({RAY_INSTALL})"
    address = address or RayConfig().address
    try:
        ray_client(address).get_version()
    except ToolError as exc:
        return f"ray {ray.__version__} installed, but {str(exc).split('. Fix:')[0]} (start one: ray start --head)"
    except Exception as exc:
        return f"ray {ray.__version__} installed, but {address} did not answer: {type(exc).__name__}: {str(exc)[:200]}"
    return None


class RayExecutor:
    """A thin layer over the Ray Jobs API (submit_job / get_job_info / stop_job / get_job_logs); Ray
    does all the scheduling. Ray sets CUDA_VISIBLE_DEVICES for entrypoint_num_gpus. Ray has no time
    limit of its own: the entry point stops its run at AUTORESEARCH_JOB_TIME_LIMIT_S (tools/job.py)."""
    name = "ray"

    def __init__(self, cfg: RayConfig, client=None):
        self.cfg = cfg
        self._client_obj = client

    @property
    def client(self):
        if self._client_obj is None:
            self._client_obj = ray_client(self.cfg.address)
        return self._client_obj

    def entrypoint(self, job: JobSpec) -> str:
        cwd = job.cwd or (job.log_path.parent if job.log_path else job.run_dir)
        return f"cd {shlex.quote(str(cwd))} && exec {shlex.join(job.argv)}"

    def submit(self, job: JobSpec) -> JobHandle:
        env = dict(job.env)
        # unique across the cluster's life (a workspace made again restarts its ids)
        sid = f"{job.name}-{uuid.uuid4().hex[:8]}"
        env.update(AUTORESEARCH_EXECUTOR="ray", AUTORESEARCH_JOB_ID=sid, AUTORESEARCH_JOB_CPUS=str(max(1, int(job.cpus))))
        if job.time_limit_s:
            env["AUTORESEARCH_JOB_TIME_LIMIT_S"] = f"{job.time_limit_s:.0f}"
        job.env = env
        try:
            got = self.client.submit_job(entrypoint=self.entrypoint(job), submission_id=sid,
                                         entrypoint_num_gpus=job.gpus or None, entrypoint_num_cpus=job.cpus,
                                         runtime_env={"env_vars": env})
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"Ray refused the job: {type(exc).__name__}: {str(exc)[-500:]}. Fix: check the [ray] "
                            "table in autoresearch.toml (address, gpus_per_run, cpus_per_run) and `ray status`") from None
        return JobHandle("ray", str(got or sid), log_path=None, submitted_at=time.time(),
                         time_limit_s=job.time_limit_s)

    def status(self, handle: JobHandle) -> JobStatus:
        try:
            info = self.client.get_job_info(handle.job_id)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if "does not exist" in text or "404" in text:
                return JobStatus("lost", reason=f"unknown to the Ray cluster at {self.cfg.address} (restarted?)",
                                 native="UNKNOWN")
            # the head did not answer (restarting, unreachable): not a verdict on the job; ask again later
            return JobStatus("running", reason=f"Ray did not answer: {text[:200]}", native="UNKNOWN")
        word = str(getattr(info.status, "value", info.status))
        state = RAY_STATES.get(word, "running")
        lines = (info.message or "").strip().splitlines()  # FAILED: 'Job entrypoint command failed with exit code 3, ...'
        reason = lines[0][:300] if lines and state not in ("succeeded", "running") else ""
        return JobStatus(state, exit_code=info.driver_exit_code, reason=reason, native=word)

    def cancel(self, handle: JobHandle) -> None:
        try:
            self.client.stop_job(handle.job_id)  # SIGTERM to the entry point, SIGKILL a few seconds later
        except Exception as exc:  # gone already, or Ray unreachable: the cancel file still stops the run
            print(f"autoresearch: ray stop_job({handle.job_id}) failed: {exc}", file=sys.stderr)

    def logs(self, handle: JobHandle, tail: int = 40) -> str:
        try:
            text = self.client.get_job_logs(handle.job_id) or ""
        except Exception:
            return ""
        return "\n".join(text[-64 * 1024:].splitlines()[-tail:])


# -- the workspace's executor and its saved handles ----------------------------------------
def executor_for(lab: Lab) -> Executor:
    return executor_named(lab, lab.config.executor)


def executor_named(lab: Lab, name: str) -> Executor:
    """The executor a saved handle names (`executor` may have changed since it was submitted)."""
    if name == "slurm":
        return SlurmExecutor(lab.config.slurm)
    if name == "ray":
        return RayExecutor(lab.config.ray)
    return LocalExecutor(lab)


JOB_LABELS = {"slurm": "SLURM", "ray": "Ray", "local": "local"}


def jobs_dir(lab: Lab, exp_id: int) -> Path:
    """A job's own files (handle, batch script, scheduler log, the entry point's outcome): outside
    the run dir, so nothing the run writes can pose as them."""
    return lab.state_dir / "jobs" / str(exp_id)


def save_handle(lab: Lab, exp_id: int, handle: JobHandle) -> None:
    path = jobs_dir(lab, exp_id) / "handle.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(handle.to_json())
    os.replace(tmp, path)


def load_handle(lab: Lab, exp_id: int) -> JobHandle | None:
    path = jobs_dir(lab, exp_id) / "handle.json"
    try:
        return JobHandle.from_json(path.read_text()[:10_000])
    except (OSError, ValueError, TypeError, KeyError):
        return None
