"""Issue 21 through the product (real toy runs in the sandbox, the real supervisor, git and SQLite):
the budget is the workspace's, facts a verdict uses are the harness's, a lucky seed is never
progress, integrity events the harness observes bite, a trained run is always scored. Each attack
has a negative control that shows the test bites."""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import edit_train, set_toml, wait_until

from tools import experiments as ex
from tools import runs
from tools.errors import ToolError
from tools.verdict import stop_note

LONG = 240.0  # generous deadlines: the machine is slow and shared


_edit, _set_toml = edit_train, set_toml


def _run(lab, description, **kw):
    s = ex.run_experiment(lab, description, **kw)
    assert s.status == "succeeded", (s.status, s.error)
    return s


def _settled(lab, exp_id):
    return ex.wait_for(lab, exp_id, timeout_s=LONG)


# -- 1. the budget is the workspace's ------------------------------------------------------------
def test_a_budget_above_the_workspaces_is_refused_before_anything_exists(lab):
    assert lab.config.time_budget_s == 20
    before = lab.store.count_experiments()
    with pytest.raises(ToolError, match=r"time_budget_s=60 is above the workspace's time_budget_s=20.*Fix:"):
        ex.submit_experiment(lab, "6x the seconds", time_budget_s=60)
    with pytest.raises(ToolError, match=r"params\.TIME_BUDGET.*Fix:"):
        ex.submit_experiment(lab, "a budget through params", params={"TIME_BUDGET": 60.0})
    assert lab.store.count_experiments() == before and lab.workspace.ref("refs/autoresearch/exp/1") is None
    # control: the workspace's own budget runs, and every row shows the compute each side used
    base = _run(lab, "baseline", time_budget_s=20)
    row = ex.read_results(lab).rows[0]
    assert row.compute and "steps (claimed by the run)" in row.compute and "(measured by the harness)" in row.compute


def test_under_the_time_rule_a_run_on_another_budget_is_incomparable(lab):
    _set_toml(lab, 'budget_rule = "steps"', 'budget_rule = "time"')
    base = _run(lab, "baseline")
    _edit(lab, "LR = 0.1 ", "LR = 2.0 ")  # a real gain ...
    less = _run(lab, "LR 2.0 on 10 s", time_budget_s=10)  # ... on another budget: not compared
    assert less.verdict == "incomparable" and not less.kept and "compared at equal seconds only" in less.verdict_reason
    same = _run(lab, "LR 2.0 on the workspace's budget")  # control: the same change on the same budget
    assert same.verdict == "improved" and same.kept, same.verdict_reason
    assert "Compute: this run" in same.verdict_reason and f"best #{base.id}:" in same.verdict_reason


def test_a_step_budget_above_the_workspaces_is_refused(lab):
    assert lab.config.step_budget == 200 and lab.config.step_budget_constant == "STEPS"
    before = lab.store.count_experiments()
    _edit(lab, "STEPS = 200 ", "STEPS = 600 ")
    with pytest.raises(ToolError, match=r"STEPS = 600 is above the workspace's step_budget = 200.*Fix:"):
        ex.submit_experiment(lab, "3x the steps")
    _edit(lab, "STEPS = 600 ", "STEPS = 200 ")
    with pytest.raises(ToolError, match="step_budget = 200"):
        ex.submit_experiment(lab, "3x the steps through params", params={"STEPS": 600})
    assert lab.store.count_experiments() == before
    # controls: fewer steps run; and the refusal is the step rule's (off under the time rule)
    assert _run(lab, "fewer steps", params={"STEPS": 150}).id
    _set_toml(lab, 'budget_rule = "steps"', 'budget_rule = "time"')
    exp_id = ex.submit_experiment(lab, "more steps under the time rule", params={"STEPS": 600})
    assert _settled(lab, exp_id).status == "succeeded"


# -- 2. the truncation lie ----------------------------------------------------------------------
LIE = '''write_atomic("metrics.json", {"steps": STEPS * FOLDS, "max_steps": STEPS * FOLDS, "stopped_by": "steps",
                              "seed": SEED})  # the lie: it stopped by time
'''


def test_a_run_that_stopped_by_time_but_claims_its_steps_is_incomparable(lab):
    base = _run(lab, "baseline")
    _edit(lab, "SLEEP_PER_STEP = 0.0", "SLEEP_PER_STEP = 0.02")  # 600 steps x 20 ms > a 5 s budget
    text = (lab.root / "train.py").read_text()
    start = text.index('write_atomic("metrics.json"')
    end = text.index("print(f\"trained")
    (lab.root / "train.py").write_text(text[:start] + LIE + text[end:])
    lie = _run(lab, "stopped by time, claims steps", time_budget_s=5)
    row = lab.store.get_experiment(lie.id)
    assert (row["steps"], row["max_steps"], row["stopped_by"]) == (600, 600, "steps")  # what it claimed
    assert lie.verdict == "incomparable" and not lie.kept, lie.verdict_reason
    assert "claimed by the run" in lie.verdict_reason and "its whole time budget of 5 s" in lie.verdict_reason
    harness = json.loads(row["config_json"])["harness"]
    assert harness["budget_s"] == 5 and harness["run_seconds"] >= 5
    assert lab.store.best_experiment()["id"] == base.id
    # control: the claims alone pass the old check; only the harness's seconds contradict them
    facts = {"steps": 600, "max_steps": 600, "stopped_by": "steps"}
    assert stop_note(600, 600, "steps") is None
    assert runs.claims_contradiction(lab, facts, {"budget_s": 5.0, "run_seconds": None}) is None
    assert runs.claims_contradiction(lab, facts, {"budget_s": 5.0, "run_seconds": harness["run_seconds"]})


# -- 3. a lucky seed is never progress ------------------------------------------------------------
LUCKY_SEED = '''
if SEED == 4:  # one lucky seed: far better weights
    weights = [[float(v) * 3 for v in w_true] for _ in weights]
'''
OUTPUTS = "# ---------------------------------------------------------------------------- Outputs"


def _one_fold(lab):
    _set_toml(lab, "folds = 3", "folds = 1")  # one fold: a run has no noise estimate of its own


def test_seed_only_changes_join_the_seed_group_and_never_make_a_best(lab, monkeypatch):
    _one_fold(lab)
    _edit(lab, OUTPUTS, LUCKY_SEED + OUTPUTS)
    base = _run(lab, "baseline")
    tries = []
    for seed in (1, 2, 3, 4, 5):
        _edit(lab, f"SEED = {seed - 1} ", f"SEED = {seed} ")
        tries.append(_run(lab, f"try SEED {seed}"))
    lucky = next(t for t in tries if lab.store.get_experiment(t.id)["objective"] < base.objective)
    for t in tries:
        row = lab.store.get_experiment(t.id)
        assert row["rerun_of"] == base.id and row["rerun_kind"] == "seed" and not row["kept"]
        assert row["verdict"] is None and "seed rerun of the current best" in row["verdict_reason"]
    assert lab.store.best_experiment()["id"] == base.id
    assert ex.read_results(lab).rows[0].role == f"seed rerun of #{base.id}"  # labelled by its role
    # control: judged alone (no join), with no confirmation asked, the lucky seed is kept as best
    monkeypatch.setattr(runs, "_seed_group_of", lambda lab, key: None)
    _set_toml(lab, "confirm_seeds = 2", "confirm_seeds = 0")
    _edit(lab, "SEED = 5 ", "SEED = 4 ")
    alone = _run(lab, "SEED 4 judged alone")
    assert lab.store.get_experiment(alone.id)["rerun_of"] is None
    assert alone.objective == lucky.objective and alone.verdict == "improved" and alone.kept, alone.verdict_reason


# -- 4. improved? until its confirmation reruns land ------------------------------------------------
LUCKY_ZERO = '''
if SEED != 0:  # only seed 0 is any good
    weights = [[0.0] * 10 for _ in weights]
'''


def _noisy_baseline(lab):
    from tools import reruns
    base = _run(lab, "baseline")
    _, ids = reruns.submit_reruns(lab, base.id, 2)  # the best's noise, measured
    for i in ids:
        assert _settled(lab, i).status == "succeeded"
    return base


def _group_settled(lab, root_id, n):
    def done():
        rows = lab.store.seed_group(root_id)
        return len(rows) == n and all(r["status"] not in ("queued", "running") for r in rows)
    assert wait_until(done, timeout=LONG, interval=0.5), lab.store.seed_group(root_id)
    return lab.store.seed_group(root_id)


def test_a_single_unreplicated_gain_is_provisional_until_its_reruns_confirm_it(lab):
    _one_fold(lab)
    base = _noisy_baseline(lab)
    _edit(lab, "LR = 0.1 ", "LR = 2.0 ")
    gain = _run(lab, "LR 0.1 -> 2.0")
    assert gain.verdict == "improved?" and not gain.kept, gain.verdict_reason
    assert "Provisional" in gain.verdict_reason and lab.store.best_experiment()["id"] == base.id
    group = _group_settled(lab, gain.id, 3)  # the product queued 2 confirmation reruns itself
    assert [r["rerun_kind"] for r in group[1:]] == ["seed", "seed"]
    root = lab.store.get_experiment(gain.id)
    assert root["verdict"] == "improved" and "Confirmed by its seed group" in root["verdict_reason"]
    best = lab.store.best_experiment()
    assert best["id"] in [r["id"] for r in group[1:]] and best["rerun_of"] == gain.id


def test_a_lucky_single_run_is_dropped_when_its_reruns_do_not_confirm_it(lab):
    _one_fold(lab)
    base = _noisy_baseline(lab)
    _edit(lab, "LR = 0.1 ", "LR = 2.0 ")
    _edit(lab, OUTPUTS, LUCKY_ZERO + OUTPUTS)
    lucky = _run(lab, "LR 2.0 (lucky with seed 0)")
    assert lucky.verdict == "improved?" and not lucky.kept, lucky.verdict_reason
    _group_settled(lab, lucky.id, 3)
    root = lab.store.get_experiment(lucky.id)
    assert root["verdict"] in ("not_improved", "inconclusive") and "Not confirmed" in root["verdict_reason"]
    assert lab.store.best_experiment()["id"] == base.id and not any(r["kept"] for r in lab.store.seed_group(lucky.id))
    # control: with confirm_seeds = 0 the same lucky run is improved and kept at once
    _set_toml(lab, "confirm_seeds = 2", "confirm_seeds = 0")
    _edit(lab, "LR = 2.0 ", "LR = 2.0  ")  # another snapshot (a space): not a seed-only change
    again = _run(lab, "the same lucky run, no confirmation")
    assert again.verdict == "improved" and again.kept, again.verdict_reason


# -- 5. an integrity event the harness observes stops a keep ---------------------------------------
SELF_SCORE = '''
import atexit
def claim():
    json.dump({"objective": 0.0}, open(os.path.join(RUN_DIR, "metrics.json"), "w"))
atexit.register(claim)
'''


def test_an_integrity_event_stops_a_keep(lab):
    base = _run(lab, "baseline")
    _edit(lab, "LR = 0.1 ", "LR = 2.0 ")  # a real gain ...
    (lab.root / "train.py").write_text((lab.root / "train.py").read_text() + SELF_SCORE)
    hack = _run(lab, "LR 2.0, and a score of its own")  # ... with a self-reported score
    assert [e["kind"] for e in lab.store.integrity_events(hack.id)] == ["self_scored"]
    assert hack.verdict == "incomparable" and not hack.kept, hack.verdict_reason
    assert "integrity event observed by the harness" in hack.verdict_reason and "never kept" in hack.verdict_reason
    assert lab.store.best_experiment()["id"] == base.id
    # control: the same gain without the claim is kept
    text = (lab.root / "train.py").read_text()
    (lab.root / "train.py").write_text(text.replace(SELF_SCORE, ""))
    honest = _run(lab, "LR 2.0")
    assert honest.verdict == "improved" and honest.kept, honest.verdict_reason


def test_log_hints_are_labelled_as_hints_with_the_right_area(lab):
    from tools import guard
    data = lab.root / "data"
    assert guard.classify(lab, str(data / "x"), lab.root, "13") in ("data_access", "denied_access")
    assert guard.classify(lab, str(data / "x"), lab.root, "30") in ("data_write", "denied_access")
    if lab.data_dir() is not None:
        assert guard.classify(lab, str(lab.data_dir() / "x"), lab.root, "13") == "data_access"


# -- 6. a trained run is always scored ---------------------------------------------------------
SLOW_SCORER = "import time\ntime.sleep(float(__import__('os').environ.get('SLOW_SCORE_S', '6')))\n"


@pytest.mark.parametrize("protected", [True, False], ids=["recovered", "control-no-rescore"])
def test_a_run_whose_supervisor_died_before_its_scorer_answered_is_scored(lab, monkeypatch, protected):
    score = lab.root / "score.py"
    score.write_text(SLOW_SCORER + score.read_text())  # the scorer takes seconds: room to kill in between
    exp_id = ex.submit_experiment(lab, "killed between training and scoring")
    run_dir = lab.run_dir(exp_id)
    assert wait_until(lambda: (run_dir / "weights.json").exists() and lab.score_dir(exp_id).exists(),
                      timeout=LONG, interval=0.05)  # trained; the scorer started
    pid = lab.store.get_experiment(exp_id)["supervisor_pid"]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not runs.supervisor_alive(lab, pid), timeout=LONG)
    score.write_text(score.read_text().replace(SLOW_SCORER, ""))
    if not protected:
        monkeypatch.setattr(runs, "rescore", lambda lab, exp: None)
    s = ex.summary(lab, exp_id)  # a status call settles the orphan
    assert wait_until(lambda: ex.summary(lab, exp_id).status not in ("running", "queued"), timeout=LONG)
    s = ex.summary(lab, exp_id)
    if protected:
        assert s.status == "succeeded" and s.objective is not None, s.error
        assert s.verdict == "baseline"
    else:
        assert s.status == "interrupted" and "supervisor died" in s.error
