"""Issue 12 through the product (real toy runs in the sandbox, real git and SQLite): runs that did not
train their budget are never compared, an unreplicated gain is not progress, and a best whose seed
group falls inside the noise stops being best."""

import json

from conftest import edit_train, set_toml
from tools import experiments as ex
from tools import plots, reproduce, reruns
from tools.history import best_trajectory


_edit, _set_toml = edit_train, set_toml


def test_a_run_stopped_by_time_is_incomparable_and_says_so_everywhere(lab):
    base = ex.run_experiment(lab, "baseline")
    assert base.verdict == "baseline"
    _edit(lab, "SLEEP_PER_STEP = 0.0", "SLEEP_PER_STEP = 0.02")  # 600 steps x 20 ms > a 5 s budget
    cut = ex.run_experiment(lab, "slow steps", time_budget_s=5)
    assert cut.status == "succeeded" and cut.verdict == "incomparable" and not cut.kept, cut.verdict_reason
    assert cut.stopped and cut.stopped.startswith("stopped by time at step ") and cut.stopped.endswith("/600 (claimed by the run)")
    assert "not compared" in cut.verdict_reason and "Fix:" in cut.verdict_reason
    row = next(r for r in ex.read_results(lab).rows if r.id == cut.id)
    assert row.stopped == cut.stopped and row.verdict == "incomparable"
    assert ex.show_experiment(lab, cut.id).stopped == cut.stopped
    assert lab.store.best_experiment()["id"] == base.id
    tsv = plots.results_tsv(lab).splitlines()
    cols = next(line.split("\t") for line in tsv if line.endswith(f"[{cut.stopped.removesuffix(' (claimed by the run)')}]"))
    assert cols[1] == "" and cols[3] == "discard"  # no number: it is not a comparable result
    # reproduce names how far each got first
    again = reproduce.report(lab, base.id, cut.id)
    assert list(again.provenance_differences)[:2] == ["steps", "stopped_by"] and "trained differently" in again.next


def test_a_single_unreplicated_gain_is_inconclusive(lab):
    _set_toml(lab, "folds = 3", "folds = 1")  # one fold, one seed: no noise estimate at all
    base = ex.run_experiment(lab, "baseline")
    assert base.verdict == "baseline" and not base.objective_std
    _edit(lab, "LR = 0.1 ", "LR = 2.0 ")
    gain = ex.run_experiment(lab, "LR 0.1 -> 2.0")
    assert gain.objective < base.objective  # better, but the noise is unknown
    assert gain.verdict == "inconclusive" and not gain.kept
    assert f"rerun_experiment({base.id}, seeds=2)" in gain.verdict_reason
    assert lab.store.best_experiment()["id"] == base.id


LUCKY = '''
if SEED != 0:  # only seed 0 is any good: a lucky single run
    weights = [[0.0] * 10 for _ in weights]
'''


def test_a_best_whose_seed_group_falls_inside_the_noise_loses_best_status(lab):
    base = ex.run_experiment(lab, "baseline")
    _edit(lab, "LR = 0.1 ", "LR = 2.0 ")
    _edit(lab, "# ---------------------------------------------------------------------------- Outputs",
          LUCKY + "# ---------------------------------------------------------------------------- Outputs")
    lucky = ex.run_experiment(lab, "LR 2.0 (lucky with seed 0)")
    assert lucky.verdict == "improved" and lucky.kept, lucky.verdict_reason
    assert lab.workspace.ref("refs/autoresearch/best") == lab.store.get_experiment(lucky.id)["snapshot_commit"]
    before = [p.id for p in best_trajectory(lab).points]
    assert before == [base.id, lucky.id]

    root, ids = reruns.submit_reruns(lab, lucky.id, 2)
    for i in ids:
        ex.wait_for(lab, i, timeout_s=120)
    g = reruns.group_summary(lab, root, ids)
    assert g.n == 3 and g.mean > base.objective
    best = lab.store.best_experiment()
    assert best["id"] == base.id, "the lucky run must stop being best"
    assert lab.workspace.ref("refs/autoresearch/best") == lab.store.get_experiment(base.id)["snapshot_commit"]
    changes = lab.store.best_changes()
    assert changes and changes[0]["experiment_id"] == lucky.id and changes[0]["action"] == "demoted"
    assert f"#{base.id}" in changes[0]["reason"]
    assert "demoted" in lab.store.get_experiment(lucky.id)["verdict_reason"]
    # the best-so-far trajectory never moves the wrong way
    objs = [p.objective for p in best_trajectory(lab).points]
    assert [p.id for p in best_trajectory(lab).points] == [base.id]
    assert all(b <= a for a, b in zip(objs, objs[1:]))
    # a rerun row says what its delta is measured against
    assert any("measured against" in (lab.store.get_experiment(i)["verdict_reason"] or "") or
               "delta = group mean" in (lab.store.get_experiment(i)["verdict_reason"] or "") for i in ids)
    assert json.loads(lab.store.get_experiment(ids[0])["params_json"])["SEED"] in (1, 2)


def test_export_of_a_failed_run_has_no_objective(lab):
    (lab.root / "train.py").write_text("raise SystemExit('boom')\n")
    bad = ex.run_experiment(lab, "crash")
    assert bad.status == "failed"
    row = plots.results_tsv(lab).splitlines()[-1].split("\t")
    assert row[1] == "" and row[3] == "crash" and row[4].endswith("[failed]")
