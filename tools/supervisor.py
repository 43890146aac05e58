"""The detached supervisor: `python -m tools.supervisor WORKSPACE`.

It takes one of the workspace's `concurrency` slots (a flock), then claims queued experiments in
id order and runs each to its end, so runs outlive the MCP server that submitted them. It exits
when the queue is empty; a run submitted meanwhile is caught by the re-check after the slot is
released (or by the supervisor its submitter started).
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from tools.config import slot_count
from tools.errors import ToolError
from tools.lab import Lab
from tools.reruns import submit_reruns
from tools.runs import recover, run_claimed, supervisor_lock_path


@contextmanager
def _slot(lab: Lab):
    """Yield a held slot lock file, or None when all slots are busy."""
    slots = lab.state_dir / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    for k in range(slot_count(lab.config)):
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
        recover(lab, kick=False)  # runs orphaned by a supervisor that was killed
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
                    queue_baseline_seeds(lab, exp["id"])
            if terminating or not lab.store.count_experiments("queued"):
                return 0
    finally:
        lock_path.unlink(missing_ok=True)
        fcntl.flock(life, fcntl.LOCK_UN)
        life.close()
        lab.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
