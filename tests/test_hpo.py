"""Issue 7: `suggest` - Optuna over the search space, learning from every run, no zombie trials.
Real toy runs, the real Optuna SQLite study in .autoresearch/optuna.db."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import wait_until
from tools import experiments as ex
from tools import hpo, runs
from tools.config import WorkspaceConfig
from tools.errors import ToolError
from tools.lab import Lab

optuna = pytest.importorskip("optuna")


def _study(lab):
    return optuna.load_study(study_name=hpo.study_name(lab), storage=hpo.storage_url(lab))


def _trials_by_experiment(lab) -> dict[int, object]:
    study = _study(lab)
    rows = lab.store.db.query("SELECT trial_number, experiment_id FROM hpo_trials WHERE trial_number IS NOT NULL "
                              "AND experiment_id IS NOT NULL")
    trials = study.get_trials(deepcopy=False)
    return {r["experiment_id"]: trials[r["trial_number"]] for r in rows}


def test_suggest_learns_from_agent_runs_and_every_outcome_is_told(lab):
    S = optuna.trial.TrialState
    base = ex.run_experiment(lab, "baseline")
    agent = ex.run_experiment(lab, "agent idea: LR 0.5", params={"LR": 0.5})
    crash = ex.run_experiment(lab, "agent idea: LR 1e9 diverges", params={"LR": 1e9})
    assert crash.status == "failed"

    r = hpo.suggest(lab, 2)
    assert r.sampler == "tpe" and len(r.suggestions) == 2 and r.storage.endswith(".autoresearch/optuna.db")
    # the agent's runs (and the baseline's constants from its snapshot) were learned: 2 complete, LR 1e9 is
    # outside the space, so that run has LR left out but is still a FAIL trial with the other values
    assert r.trials_complete == 2 and r.trials_running == 2
    assert r.best["experiment_id"] == agent.id and r.best["params"]["LR"] == 0.5
    t = _trials_by_experiment(lab)
    assert t[base.id].params == {"LR": 0.1, "STEPS": 200, "L2": 0.001} and t[base.id].state == S.COMPLETE
    assert t[base.id].value == pytest.approx(base.objective, rel=1e-5)  # results show 6 significant digits
    assert t[agent.id].user_attrs["source"] == "agent"
    assert t[crash.id].state == S.FAIL and "LR" not in t[crash.id].params
    for s in r.suggestions:
        space = lab.config.search_space
        assert set(s.params) == set(space) and 0.01 <= s.params["LR"] <= 3.0 and 50 <= s.params["STEPS"] <= 400
        assert "run_experiment(" in s.run and json.dumps(s.params) in s.run

    # run the first suggestion as an agent would (floats copied with fewer digits): linked and told
    first, second = r.suggestions
    copied = {k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in first.params.items()}
    done = ex.run_experiment(lab, f"suggest trial {first.trial}", params=copied)
    assert done.status == "succeeded"
    # told by the supervisor right after it records the run (a second later: Optuna opens the study)
    assert wait_until(lambda: _study(lab).get_trials(deepcopy=False)[first.trial].state == S.COMPLETE, timeout=30)
    assert _study(lab).get_trials(deepcopy=False)[first.trial].value == pytest.approx(done.objective, rel=1e-5)
    # the second one is cancelled while queued: told FAIL at once
    exp_id = ex.submit_experiment(lab, "suggest trial 2, cancelled", params=second.params | {"SLEEP_PER_STEP": 0.05})
    runs.request_cancel(lab, exp_id)
    assert ex.wait_for(lab, exp_id, timeout_s=60).status == "cancelled"
    r2 = hpo.suggest(lab, 1)
    trials = _study(lab).get_trials(deepcopy=False)
    assert trials[second.trial].state == S.FAIL
    assert r2.abandoned == [] and r2.trials_running == 1  # only the new suggestion is open
    assert [t.number for t in trials if t.state == S.RUNNING] == [r2.suggestions[0].trial]
    states = dict(lab.store.db.conn.execute("SELECT trial_number, state FROM hpo_trials WHERE trial_number IS NOT NULL"))
    assert states[first.trial] == "complete" and states[second.trial] == "fail"


def test_unused_suggestions_are_abandoned_and_in_flight_agent_runs_are_enqueued(lab):
    S = optuna.trial.TrialState
    ex.run_experiment(lab, "baseline")
    old = hpo.suggest(lab, 1).suggestions[0]
    slow = ex.submit_experiment(lab, "agent: slow run", params={"LR": 0.3, "SLEEP_PER_STEP": 0.01})
    r = hpo.suggest(lab, 1)
    assert r.abandoned == [old.trial]
    trials = _study(lab).get_trials(deepcopy=False)
    assert trials[old.trial].state == S.FAIL
    linked = _trials_by_experiment(lab)[slow]
    if lab.store.get_experiment(slow)["status"] in ("queued", "running"):
        assert linked.state == S.RUNNING  # enqueued + asked: the sampler's constant liar sees it
    assert linked.params["LR"] == 0.3 and linked.user_attrs["source"] == "agent"
    assert ex.wait_for(lab, slow, timeout_s=120).status == "succeeded"
    assert wait_until(lambda: _study(lab).get_trials(deepcopy=False)[linked.number].state == S.COMPLETE, timeout=30)
    assert {t.number for t in _study(lab).get_trials(deepcopy=False) if t.state == S.RUNNING} == {r.suggestions[0].trial}


def test_seed_reruns_and_reproductions_are_not_trials(lab):
    from tools import reproduce, reruns
    base = ex.run_experiment(lab, "baseline")
    hpo.suggest(lab, 1)
    _, ids = reruns.submit_reruns(lab, base.id, 1)
    rep = reproduce.submit_reproduction(lab, base.id)
    for i in [*ids, rep]:
        ex.wait_for(lab, i, timeout_s=120)
    linked = {r[0] for r in lab.store.db.conn.execute("SELECT experiment_id FROM hpo_trials WHERE experiment_id IS NOT NULL")}
    assert linked == {base.id}


def test_suggest_refuses_bad_input_naming_the_fix(lab, toy_ws):
    with pytest.raises(ToolError, match=r"n=0.*1 to 8"):
        hpo.suggest(lab, 0)
    with pytest.raises(ToolError, match=r"n=9"):
        hpo.suggest(lab, 9)
    toml = toy_ws / "autoresearch.toml"
    text = toml.read_text()
    toml.write_text(text[:text.index("# suggest() tunes")])
    bare = Lab.open(toy_ws)
    with pytest.raises(ToolError, match=r"search_space is empty.*Fix"):
        hpo.suggest(bare, 1)
    bare.close()
    toml.write_text(text.replace('[search_space.L2]\ntype = "float"\nlow = 1e-05', '[search_space.L2]\ntype = "float"\nlow = 0'))
    with pytest.raises(ToolError, match=r"search_space.L2.*log = true needs low > 0"):
        Lab.open(toy_ws)
    for bad, msg in [({"lr": {"type": "float", "low": 1, "high": 2}}, "UPPERCASE"),
                     ({"SEED": {"type": "int", "low": 0, "high": 9}}, "not SEED"),
                     ({"B": {"type": "categorical", "choices": []}}, "choices"),
                     ({"B": {"type": "int", "low": 1.5, "high": 4}}, "whole-number"),
                     ({"B": {"type": "float", "low": 2, "high": 1}}, "low < high")]:
        with pytest.raises(Exception, match=msg):
            WorkspaceConfig.model_validate({"search_space": bad})


def test_matching_and_space_typing():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    d = {"LR": FloatDistribution(1e-3, 1, log=True), "N": IntDistribution(1, 10), "B": CategoricalDistribution([32, 64])}
    assert hpo.in_space({"LR": 0.5, "N": 3.0, "B": 64, "OTHER": 1}, d) == {"LR": 0.5, "N": 3, "B": 64}
    assert hpo.in_space({"LR": 5.0, "N": 3.5, "B": 48}, d) == {}
    assert hpo.in_space({"LR": True, "N": True, "B": True}, d) == {}
    assert hpo.params_match({"LR": 0.0123456, "N": 3}, {"LR": 0.01235, "N": 3})
    assert not hpo.params_match({"LR": 0.0123456, "N": 3}, {"LR": 0.0124, "N": 3})
    assert not hpo.params_match({"LR": 0.01, "N": 3}, {"LR": 0.01, "N": 4})
    assert not hpo.params_match({"LR": 0.01}, {"LR": 0.01, "N": 4})


def test_the_server_process_never_imports_torch_for_suggest(toy_ws):
    """suggest (TPE) through the MCP face, in a fresh interpreter: optuna loads, torch does not."""
    code = ("import sys, anyio\nfrom mcp import Client\nfrom server import app\n"
            f"app.configure({str(toy_ws)!r})\n"
            "async def main():\n"
            "    async with Client(app.mcp) as c:\n"
            "        r = await c.call_tool('suggest', {'n': 2})\n"
            "        assert not r.is_error, r.content[0].text\n"
            "        assert len(r.structured_content['suggestions']) == 2\n"
            "anyio.run(main)\n"
            "assert 'optuna' in sys.modules\n"
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]
    lab = Lab.open(toy_ws)
    assert any(r["tool"] == "suggest" and r["outcome"] == "ok" for r in lab.store.audit_rows(10))
    lab.close()


def test_gp_sampler_runs_in_a_child(toy_ws):
    pytest.importorskip("scipy")
    toml = toy_ws / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('hpo_sampler = "tpe"', 'hpo_sampler = "gp"'))
    lab = Lab.open(toy_ws)
    try:
        ex.run_experiment(lab, "baseline")
        out = hpo.suggest(lab, 2)
        assert out.sampler == "gp" and len(out.suggestions) == 2
        assert out.trials_complete == 1
    finally:
        lab.close()
