"""The run lifecycle through tools/ with real supervisors, sandboxed children, git and SQLite."""

import json
import uuid

import pytest

from conftest import processes_with_marker, wait_until
from tools import experiments as ex
from tools import rundir, runs
from tools.errors import ToolError


def test_toy_run_is_recorded_with_metrics_and_snapshot(lab):
    s = ex.run_experiment(lab, "baseline", "the template as shipped")
    assert s.status == "succeeded", s.error
    assert s.verdict == "baseline" and s.kept
    assert s.objective is not None and s.objective_std is not None
    detail = ex.show_experiment(lab, s.id)
    assert detail.metrics["objective"] == pytest.approx(s.objective)
    assert len(detail.fold_metrics) == 3
    assert detail.loss_curve and detail.sandbox
    exp = lab.store.get_experiment(s.id)
    assert lab.workspace.ref(f"refs/autoresearch/exp/{s.id}") == exp["snapshot_commit"]
    assert lab.workspace.ref("refs/autoresearch/best") == exp["snapshot_commit"]
    assert lab.store.steps(s.id)


def test_better_and_worse_runs_get_verdicts_and_revert_restores(lab):
    base = ex.run_experiment(lab, "baseline")
    train = lab.root / "train.py"
    train.write_text(train.read_text().replace("LR = 0.1 ", "LR = 0.5 "))
    better = ex.run_experiment(lab, "LR 0.1 -> 0.5")
    assert better.verdict == "improved", better
    good_bytes = train.read_bytes()
    train.write_text(train.read_text().replace("LR = 0.5 ", "LR = 0.001 "))
    worse = ex.run_experiment(lab, "LR 0.5 -> 0.001")
    assert worse.verdict == "not_improved" and not worse.kept
    assert worse.delta_vs_best > 0 and worse.best_id == better.id
    r = ex.revert(lab, "best")
    assert r.experiment_id == better.id and r.restored == ["train.py"]
    assert train.read_bytes() == good_bytes
    assert ex.read_results(lab, order_by="objective").rows[0].id == better.id
    assert base.kept


def test_params_override_constants(lab):
    s = ex.run_experiment(lab, "lr via params", params={"LR": 0.5, "STEPS": 50})
    assert s.status == "succeeded"
    assert lab.store.get_experiment(s.id)["params_json"] == json.dumps({"LR": 0.5, "STEPS": 50})
    assert ex.show_experiment(lab, s.id).metrics["steps"] == 150


def test_crash_is_failed_with_log_tail(lab):
    (lab.root / "train.py").write_text("print('starting')\nraise RuntimeError('boom in train.py')\n")
    s = ex.run_experiment(lab, "broken")
    assert s.status == "failed"
    assert "boom in train.py" in s.error and "exit code 1" in s.error
    assert s.verdict is None and not s.kept


def test_over_budget_is_timeout_and_leaves_no_process(lab):
    marker = f"marker-{uuid.uuid4().hex}"
    (lab.root / "train.py").write_text(
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', '{marker}'], start_new_session=True)\n"
        "time.sleep(600)\n")
    toml = lab.root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("timeout_grace_s = 60", "timeout_grace_s = 1"))
    s = ex.run_experiment(lab, "sleeps forever", time_budget_s=5)
    assert s.status == "timeout", s
    assert wait_until(lambda: not processes_with_marker(marker), timeout=10)


def test_invalid_arguments_change_nothing(lab):
    before = lab.store.count_experiments()
    with pytest.raises(ToolError, match="description"):
        ex.submit_experiment(lab, "")
    with pytest.raises(ToolError, match="time_budget_s"):
        ex.submit_experiment(lab, "ok description", time_budget_s=-3)
    with pytest.raises(ToolError, match="params"):
        ex.submit_experiment(lab, "ok description", params={"lr; rm -rf /": 1})
    with pytest.raises(ToolError, match="max_time_budget_s"):
        ex.submit_experiment(lab, "ok description", time_budget_s=10_000)
    with pytest.raises(ToolError, match="order_by"):
        ex.read_results(lab, order_by="objective; DROP TABLE experiments")
    with pytest.raises(ToolError, match="limit"):
        ex.read_results(lab, limit=10_000)
    with pytest.raises(ToolError, match="does not exist"):
        ex.revert(lab, 999)
    with pytest.raises(ToolError, match="no experiment has been kept"):
        ex.revert(lab, "best")
    assert lab.store.count_experiments() == before
    assert lab.workspace.ref("refs/autoresearch/exp/1") is None


def test_notes_round_trip(lab):
    s = ex.run_experiment(lab, "baseline")
    n = ex.write_note(lab, "baseline done; next: try LR 0.5", s.id, ["baseline", "lr"])
    assert n.experiment_id == s.id and n.tags == ["baseline", "lr"]
    ex.write_note(lab, "unrelated idea")
    page = ex.read_notes(lab, tag="lr")
    assert page.total == 1 and page.notes[0].text.startswith("baseline done")
    assert ex.read_notes(lab, query="unrelated").total == 1
    with pytest.raises(ToolError, match="experiment_id"):
        ex.write_note(lab, "dangling", 12345)


def test_recover_records_finished_and_interrupts_dead_runs(lab):
    # A run whose supervisor vanished after the scorer ran, one that left nothing, and one whose
    # only result is the run's own claim (metrics.json): that one is not a result.
    done = lab.store.insert_experiment(description="finished while no server was up", status="running",
                                       time_budget_s=10, supervisor_pid=999_999_999)
    dead = lab.store.insert_experiment(description="died mid-run", status="running", time_budget_s=10,
                                       supervisor_pid=999_999_998)
    claim = lab.store.insert_experiment(description="claims a score", status="running", time_budget_s=10,
                                        supervisor_pid=999_999_997)
    lab.score_dir(done).mkdir(parents=True)
    (lab.score_dir(done) / "stdout.log").write_text(json.dumps({"objective": 0.5, "objective_std": 0.01}) + "\n")
    lab.run_dir(claim).mkdir(parents=True)
    (lab.run_dir(claim) / "metrics.json").write_text(json.dumps({"objective": 0.0, "objective_std": 0.0}))
    assert sorted(runs.recover(lab)) == [done, dead, claim]
    row = lab.store.get_experiment(claim)
    assert row["status"] == "interrupted" and row["objective"] is None  # the scorer was run again, and could not
    assert "supervisor died" in row["error"] and "could not score it" in row["error"]  # the real cause (issue 21)
    assert lab.store.get_experiment(done)["status"] == "succeeded"
    assert lab.store.get_experiment(done)["objective"] == 0.5
    row = lab.store.get_experiment(dead)
    assert row["status"] == "interrupted" and "supervisor died" in row["error"]
    assert runs.recover(lab) == []


def test_unisolated_backend_is_reported_loudly(lab):
    toml = lab.root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('sandbox = "auto"', 'sandbox = "none"'))
    s = ex.run_experiment(lab, "no isolation on purpose", params={"STEPS": 5})
    assert s.status == "succeeded" and s.sandbox == "none"
    assert s.warnings and any("NOT ISOLATED" in w for w in s.warnings)


def test_run_dir_symlinks_are_not_followed(lab, tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("HOST-SECRET-CONTENT\n")
    toml = lab.root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('sandbox = "auto"', 'sandbox = "none"'))  # the weakest case
    (lab.root / "train.py").write_text(
        "import os, sys\nrd = os.environ['AR_RUN_DIR']\n"
        "for name in ('stdout.log', 'stderr.log', 'metrics.json', 'events.jsonl'):\n"
        "    p = os.path.join(rd, name)\n"
        "    if os.path.lexists(p): os.unlink(p)\n"
        f"    os.symlink({str(secret)!r}, p)\n"
        "sys.exit(3)\n")
    s = ex.run_experiment(lab, "plants symlinks to a host file")
    assert s.status == "failed"
    assert "HOST-SECRET" not in (s.error or "")
    assert "HOST-SECRET" not in ex.show_experiment(lab, s.id).model_dump_json()
    # the reader itself refuses links (the sandbox also removes outside links after a run, but the
    # server reads logs while the run is still going)
    link = lab.run_dir(s.id) / "planted-link"
    link.symlink_to(secret)
    with pytest.raises(OSError):
        rundir.open_run_file(link)
    assert rundir.log_tail(lab.run_dir(s.id)) is not None
    (lab.run_dir(s.id) / "stderr.log").unlink(missing_ok=True)
    (lab.run_dir(s.id) / "stderr.log").symlink_to(secret)
    assert "HOST-SECRET" not in rundir.log_tail(lab.run_dir(s.id))


def test_params_are_baked_into_the_snapshot_so_revert_restores_them(lab):
    ex.run_experiment(lab, "baseline")
    s = ex.run_experiment(lab, "LR via params", params={"LR": 0.5})
    assert s.verdict == "improved"
    train = lab.root / "train.py"
    assert "LR = 0.1 " in train.read_text()  # the workspace file itself is not touched by a run
    ex.revert(lab, "best")
    assert "LR = 0.5 " in train.read_text()
    assert ex.run_experiment(lab, "best again, no params").objective == pytest.approx(s.objective)
