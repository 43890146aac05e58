"""The detached supervisor: `python -m tools.supervisor WORKSPACE`.

It takes one of the workspace's `concurrency` slots (a flock), then claims queued experiments in
id order and runs each to its end, so runs outlive the MCP server that submitted them. It exits
when the queue is empty; a run submitted meanwhile is caught by the re-check after the slot is
released (or by the supervisor its submitter started).

With `executor = "slurm"` one supervisor per workspace (a single slot) watches instead of running:
it submits each claimed run as its own sbatch job (up to [slurm] max_jobs in flight), asks SLURM
about them, scancels on request, and records each as it ends. It adopts jobs a dead supervisor
left in flight, and exits when nothing is queued or in flight; the jobs do not need it to run.
`executor = "ray"` is the same watcher over the Ray Jobs API ([ray] max_jobs, poll_s).
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tools.config import slot_count
from tools.errors import ToolError
from tools.lab import Lab
from tools.reruns import submit_reruns
from tools.verdict import PROVISIONAL
from tools.executors import executor_for, load_handle
from tools.runs import (record, recover, run_claimed, settle_job, submit_job, supervisor_alive,
                        supervisor_lock_path)


@contextmanager
def _slot(lab: Lab):
    """Yield a held slot lock file, or None when all slots are busy (slurm: the one watcher's slot)."""
    slots = lab.state_dir / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    for k in range(slot_count(lab.config) if lab.config.executor == "local" else 1):
        f = open(slots / f"slot-{k}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        try:
            yield k
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
        return
    yield None


def queue_baseline_seeds(lab: Lab, exp_id: int) -> None:
    """After the first baseline, its seed reruns (`baseline_seeds`): the noise every later verdict needs."""
    n = lab.config.baseline_seeds
    row = lab.store.get_experiment(exp_id)
    if not n or row is None or row["verdict"] != "baseline" or row["rerun_of"] is not None:
        return
    if len(lab.store.seed_group(exp_id)) > 1:
        return
    try:
        submit_reruns(lab, exp_id, n)
    except ToolError as exc:  # e.g. a snapshot without SEED: the verdicts then say the noise is unknown
        print(f"supervisor: no baseline seed reruns for #{exp_id}: {exc}", file=sys.stderr)


def queue_confirm_seeds(lab: Lab, exp_id: int) -> None:
    """After an `improved?` verdict (a gain with no noise of its own), its confirmation seed reruns
    (`confirm_seeds`): the group of them decides whether it becomes the best."""
    n = lab.config.confirm_seeds
    row = lab.store.get_experiment(exp_id)
    if not n or row is None or row["verdict"] != PROVISIONAL or row["rerun_of"] is not None:
        return
    if len(lab.store.seed_group(exp_id)) > 1:
        return
    try:
        submit_reruns(lab, exp_id, n)
    except ToolError as exc:  # a snapshot without SEED: it stays improved? and says so
        lab.store.update_experiment(exp_id, verdict_reason=(row["verdict_reason"] or "") +
                                    f" No confirmation reruns could be queued: {exc}")


def queue_reruns(lab: Lab, exp_id: int) -> None:
    """The reruns the product queues itself after a recorded run: baseline noise, confirmations."""
    queue_baseline_seeds(lab, exp_id)
    queue_confirm_seeds(lab, exp_id)


def watch_jobs(lab: Lab, pid: int, terminating: list) -> int:
    """The slurm supervisor's loop: submit, poll, cancel on request, record; SLURM does the scheduling."""
    executor = executor_for(lab)
    jobs_cfg = lab.config.jobs  # [slurm] or [ray]
    poll_s = jobs_cfg.poll_s
    while True:
        with _slot(lab) as slot:
            if slot is None:
                return 0
            cancelled: set[int] = set()
            while not terminating:
                for exp in _adopt(lab, pid):
                    handle = load_handle(lab, exp["id"])
                    if handle is None:  # claimed, not yet submitted: cannot be, while we live
                        continue
                    if exp["id"] not in cancelled and (lab.run_dir(exp["id"]) / "cancel").exists():
                        cancelled.add(exp["id"])
                        executor.cancel(handle)
                    status = executor.status(handle)
                    if status.final:
                        try:
                            settle_job(lab, exp, handle, status)
                        except Exception as exc:  # never leave it 'running' for every later supervisor to trip on
                            record(lab, exp["id"], status="failed",
                                   error=f"supervisor error recording {handle.executor} job {handle.job_id}: "
                                         f"{type(exc).__name__}: {exc}")
                        queue_reruns(lab, exp["id"])
                in_flight = len(lab.store.experiments_with_status("running"))
                while in_flight < jobs_cfg.max_jobs and not terminating:
                    exp = lab.store.claim_next_queued(pid)
                    if exp is None:
                        break
                    _submit(lab, exp)
                    in_flight += 1
                if not _mine(lab, pid) and not lab.store.count_experiments("queued"):
                    break
                _nap(lab, poll_s, room=in_flight < jobs_cfg.max_jobs)
        # the jobs live on without us: after a SIGTERM the next supervisor adopts them
        if terminating or not (lab.store.count_experiments("queued") or _mine(lab, pid)):
            return 0


def _nap(lab: Lab, seconds: float, room: bool) -> None:
    """Wait for the next poll of SLURM; a run submitted meanwhile (with room for it) ends the wait."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if room and lab.store.count_experiments("queued"):
            return


def _mine(lab: Lab, pid: int) -> list[dict]:
    return [e for e in lab.store.experiments_with_status("running") if e["supervisor_pid"] == pid]


def _adopt(lab: Lab, pid: int) -> list[dict]:
    """The jobs this supervisor watches: its own, and those a dead supervisor left in flight."""
    for exp in lab.store.experiments_with_status("running"):
        if exp["supervisor_pid"] != pid and not supervisor_alive(lab, exp["supervisor_pid"]) \
                and load_handle(lab, exp["id"]) is not None:
            lab.store.update_experiment(exp["id"], only_if_status=("running",), supervisor_pid=pid)
    return _mine(lab, pid)


def _submit(lab: Lab, exp: dict) -> None:
    try:
        submit_job(lab, exp)
    except Exception as exc:  # sbatch refused (a bad partition or account...): the run failed, and why
        record(lab, exp["id"], status="failed", error=f"not submitted to {lab.config.executor}: {exc}")
        print(f"supervisor: experiment {exp['id']} not submitted: {exc}", file=sys.stderr)


def main(argv: list[str]) -> int:
    lab = Lab.open(Path(argv[0]))
    pid = os.getpid()
    lock_path = supervisor_lock_path(lab, pid)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    life = open(lock_path, "w")
    fcntl.flock(life, fcntl.LOCK_EX)  # held for our whole life: recovery's liveness test

    # SIGTERM / SIGUSR1 only wake the wait loop; a run is cancelled through its cancel file.
    signal.signal(signal.SIGUSR1, lambda *_: None)
    terminating = []
    signal.signal(signal.SIGTERM, lambda *_: terminating.append(True))
    try:
        for settled in recover(lab, kick=False):  # runs orphaned by a supervisor that was killed
            queue_reruns(lab, settled)
        if lab.config.executor != "local":
            return watch_jobs(lab, pid, terminating)
        while True:
            with _slot(lab) as slot:
                if slot is None:
                    return 0
                while not terminating:
                    exp = lab.store.claim_next_queued(pid)
                    if exp is None:
                        break
                    cancel_file = lab.run_dir(exp["id"]) / "cancel"
                    run_claimed(lab, exp, should_cancel=lambda: bool(terminating) or cancel_file.exists(), slot=slot)
                    queue_reruns(lab, exp["id"])
            if terminating or not lab.store.count_experiments("queued"):
                return 0
    finally:
        lock_path.unlink(missing_ok=True)
        fcntl.flock(life, fcntl.LOCK_UN)
        life.close()
        lab.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
