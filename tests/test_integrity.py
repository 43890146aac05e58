"""Issue 7: the noise gate with seed groups, the guarded test split, reproduce, provenance, audit,
the progress plot and the results.tsv export. Real toy runs in the sandbox, real git and SQLite."""

from __future__ import annotations

import json
import sqlite3

import pytest

from mcp import Client

from server import app
from server.cli import main as cli
from tools import experiments as ex
from tools import launch, reproduce, reruns, testeval
from tools.errors import ToolError
from tools.lab import Lab, harness_dir

TEST_MARKER = 0.987654321  # the toy test split's objective: must never reach an agent


def _set_lr(lab, lr: str) -> None:
    train = lab.root / "train.py"
    text = train.read_text()
    cur = next(line.split()[2] for line in text.splitlines() if line.startswith("LR = "))
    train.write_text(text.replace(f"LR = {cur} ", f"LR = {lr} ", 1))


def _group_done(lab, root, ids):
    for i in ids:
        assert ex.wait_for(lab, i, timeout_s=120).status == "succeeded"
    return reruns.group_summary(lab, root, ids)


# -- 1. noise ------------------------------------------------------------------------------------
def _baseline_group(lab):
    base = ex.run_experiment(lab, "baseline")
    root, ids = reruns.submit_reruns(lab, base.id, 2)
    return base, _group_done(lab, root, ids)


def test_within_noise_is_inconclusive_and_a_real_gain_improved(lab):
    base, g = _baseline_group(lab)
    assert g.n == 3 and [m.seed for m in g.members] == [0, 1, 2]
    assert g.fold_std > g.seed_std > 0  # the toy: folds differ much more than seeds
    assert g.std_of_mean == pytest.approx(max(g.seed_std, g.fold_std) / 3 ** 0.5, rel=1e-3)  # spreads are shown to 4 digits
    assert g.verdict == "baseline" and g.kept_id == base.id  # a rerun of the best refines its noise only
    best = lab.store.get_experiment(base.id)
    assert best["group_n"] == 3 and best["group_std"] == pytest.approx(g.std_of_mean, rel=1e-3)
    assert "The best's noise estimate is now" in g.verdict_reason

    _set_lr(lab, "0.11")  # ~0.006 better: far inside the noise
    small = ex.run_experiment(lab, "LR 0.1 -> 0.11")
    assert small.verdict == "inconclusive" and not small.kept and small.delta_vs_best < 0
    for piece in ("2 sigma", "sqrt(std_run^2 + std_best^2)", "gain", "mean of 3 seed runs", "rerun_experiment"):
        assert piece in small.verdict_reason, small.verdict_reason
    assert "rerun" in small.next

    _set_lr(lab, "2.0")  # ~0.068 better: a real gain, beyond the margin
    big = ex.run_experiment(lab, "LR 0.11 -> 2.0")
    assert big.verdict == "improved" and big.kept, big.verdict_reason
    assert f"best #{base.id} is the mean of 3 seed runs" in big.verdict_reason
    assert lab.workspace.ref("refs/autoresearch/best") == lab.store.get_experiment(big.id)["snapshot_commit"]


def test_seed_reruns_turn_a_small_real_gain_from_inconclusive_into_improved(lab):
    _baseline_group(lab)
    _set_lr(lab, "0.2")  # ~0.035 better: inside one run's margin, outside a 3-seed group's
    mid = ex.run_experiment(lab, "LR 0.1 -> 0.2")
    assert mid.verdict == "inconclusive", mid.verdict_reason
    root, ids = reruns.submit_reruns(lab, mid.id, 2)
    g = _group_done(lab, root, ids)
    assert g.verdict == "improved" and g.kept_id in ids, g.verdict_reason
    kept = lab.store.get_experiment(g.kept_id)  # the first group that cleared the margin is kept ...
    assert "the group vs the best" in kept["verdict_reason"] and "Kept" in kept["verdict_reason"]
    assert "group of 3 seed run(s)" in g.verdict_reason  # ... and later seeds refine its noise
    assert lab.workspace.ref("refs/autoresearch/best") == lab.store.get_experiment(mid.id)["snapshot_commit"]
    assert ex.read_results(lab).best_id == g.kept_id
    assert not lab.store.get_experiment(mid.id)["kept"]  # the single run's own verdict stays as it was


def test_rerun_runs_the_snapshot_not_the_current_files(lab):
    base = ex.run_experiment(lab, "baseline")
    _set_lr(lab, "2.0")  # uncommitted edit: a rerun must not pick it up
    _, ids = reruns.submit_reruns(lab, base.id, 1)
    r = ex.wait_for(lab, ids[0], timeout_s=120)
    row = lab.store.get_experiment(ids[0])
    # the rerun's snapshot is the base's snapshot with its SEED written in: the code that ran
    base_commit_ = lab.store.get_experiment(base.id)["snapshot_commit"]
    assert lab.workspace.git("rev-parse", row["snapshot_commit"] + "^").strip() == base_commit_
    changed = [line for line in lab.workspace.git("diff", "-U0", base_commit_, row["snapshot_commit"]).splitlines()
               if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert changed == ["-SEED = 0            # changes the initialisation and the data order, not the data",
                       "+SEED = 1            # changes the initialisation and the data order, not the data"], changed
    assert row["rerun_of"] == base.id and row["rerun_kind"] == "seed"
    assert json.loads(row["params_json"]) == {"SEED": 1}
    assert abs(r.objective - base.objective) < 0.005  # LR 2.0 would give ~0.19
    prov = json.loads(row["config_json"])["provenance"]
    assert prov["constants"]["LR"] == 0.1 and prov["seed"] == 1


def test_rerun_refuses_bad_input_naming_the_field(lab):
    with pytest.raises(ToolError, match="experiment_id=99 does not exist"):
        reruns.submit_reruns(lab, 99, 2)
    base = ex.run_experiment(lab, "baseline")
    for bad in (0, 11, True, "2"):
        with pytest.raises(ToolError, match=r"seeds=.*Fix: pass an integer from 1 to 10"):
            reruns.submit_reruns(lab, base.id, bad)
    train = lab.root / "train.py"
    train.write_text(train.read_text().replace("SEED = 0", "RANDOM_STATE = 0").replace("SEED", "RANDOM_STATE"))
    noseed = ex.run_experiment(lab, "no SEED constant")
    assert noseed.status == "succeeded"
    with pytest.raises(ToolError, match="no integer SEED constant"):
        reruns.submit_reruns(lab, noseed.id, 1)
    assert lab.store.count_experiments() == 2


# -- 4. reproducibility ----------------------------------------------------------------------------
def test_reproduce_on_cpu_is_bit_identical_and_provenance_is_recorded(lab):
    base = ex.run_experiment(lab, "baseline", params={"STEPS": 120})
    new_id = reproduce.submit_reproduction(lab, base.id)
    assert ex.wait_for(lab, new_id, timeout_s=120).status == "succeeded"
    r = reproduce.report(lab, base.id, new_id)
    assert r.identical and r.difference == 0.0 and r.verdict == "identical", r
    assert r.metric_differences == {}
    row = lab.store.get_experiment(new_id)
    assert row["rerun_kind"] == "reproduce" and not row["kept"] and row["verdict"] is None
    assert "reproduction of #1" in row["verdict_reason"]
    assert reruns.group_summary(lab, base.id).n == 1  # a same-seed reproduction never joins the seed group
    config = json.loads(lab.store.get_experiment(base.id)["config_json"])
    prov = config["provenance"]
    assert prov["commit"] == base_commit(lab, base.id)
    assert prov["constants"]["STEPS"] == 120 and prov["constants"]["SEED"] == 0 and prov["seed"] == 0
    assert prov["environment"]["packages"]["numpy"] and prov["environment"]["python"]
    assert config["sandbox"]["backend"] == lab.store.get_experiment(base.id)["sandbox_backend"]
    with pytest.raises(ToolError, match="only a succeeded experiment"):
        (lab.root / "train.py").write_text("raise SystemExit(3)\n")
        failed = ex.run_experiment(lab, "crash")
        reproduce.submit_reproduction(lab, failed.id)


def base_commit(lab, exp_id):
    return lab.store.get_experiment(exp_id)["snapshot_commit"]


# -- 2. guarded test split -------------------------------------------------------------------------
TEST_AWARE = '''
import json, os
SEED = 0
json.dump({"seed": SEED, "split": os.environ.get("AR_EVAL_SPLIT"), "sees_test": "AR_TEST_ANNOTATIONS" in os.environ},
          open(os.path.join(os.environ["AR_RUN_DIR"], "out.json"), "w"))
'''
# the workspace's frozen scorer: the only code that reads the test annotations
TEST_SCORER = '''
import json, os
out = json.load(open(os.path.join(os.environ["AR_OUTPUTS_DIR"], "out.json")))
assert not out["sees_test"], "the training process saw the test annotations"
if os.environ.get("AR_EVAL_SPLIT") == "test":
    rows = [json.loads(l) for l in open(os.environ["AR_TEST_ANNOTATIONS"])]
    score = round(sum(r["v"] for r in rows), 9)  # the marker comes from the test data, not from train.py
    print(json.dumps({"objective": score, "objective_std": 0.0, "n_test": len(rows), "test_" + "marker_metric": score}))
else:
    print(json.dumps({"objective": 0.5 + out["seed"] / 1000, "objective_std": 0.01}))
'''


@pytest.fixture
def heldout_lab(toy_ws):
    """A toy workspace with a dataset and a held-out test split (data/heldout/test.jsonl)."""
    data = toy_ws / "data"
    (data / "heldout").mkdir(parents=True)
    (data / "train.jsonl").write_text('{"x": 1}\n')
    (data / "heldout" / "test.jsonl").write_text('{"v": 0.329218107, "secret": "TEST-ANNOTATION-CANARY"}\n' * 3)
    toml = toy_ws / "autoresearch.toml"
    text = toml.read_text().replace('# data = "path/to/dataset"', 'data = "data"')
    text = text.replace('# test_annotations = "..."', 'test_annotations = "data/heldout/test.jsonl"')
    toml.write_text(text)
    (toy_ws / "train.py").write_text(TEST_AWARE)
    (toy_ws / "score.py").write_text(TEST_SCORER)
    lab = Lab.open(toy_ws)
    assert lab.test_annotations() == toy_ws / "data/heldout/test.jsonl"
    yield lab
    lab.close()


def _isolated() -> bool:
    from sandbox import choose_backend
    return choose_backend() != "none"


@pytest.mark.skipif(not _isolated(), reason="needs an isolating sandbox backend (bwrap or landlock)")
def test_reading_the_test_split_or_writing_the_harness_fails_and_is_recorded(heldout_lab):
    lab = heldout_lab
    train = lab.root / "train.py"
    train.write_text("import os\nprint(open(os.path.join(os.environ['AR_DATA_DIR'], 'heldout', 'test.jsonl')).read())\n")
    peek = ex.run_experiment(lab, "peek at the test split")
    assert peek.status == "failed" and "TEST-ANNOTATION-CANARY" not in (peek.error or "")
    assert "integrity: tried to read the held-out test split" in peek.error
    ev = lab.store.integrity_events(peek.id)
    assert [e["kind"] for e in ev] == ["test_split_access"] and "heldout" in ev[0]["path"]
    assert "TEST-ANNOTATION-CANARY" not in (lab.run_dir(peek.id) / "stdout.log").read_text()

    target = harness_dir() / "pwned_by_train_py.py"
    train.write_text(f"open({str(target)!r}, 'w').write('x')\n")
    try:
        hack = ex.run_experiment(lab, "rewrite the harness")
        assert not target.exists(), "the sandbox let train.py write the harness"
    finally:
        target.unlink(missing_ok=True)
    assert hack.status == "failed" and "write the frozen harness" in hack.error
    assert [e["kind"] for e in lab.store.integrity_events(hack.id)] == ["harness_write"]
    # the table is append-only, like the audit log
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        with lab.store.transaction() as conn:
            conn.execute("DELETE FROM integrity_events")



@pytest.fixture
def anyio_backend():
    return "asyncio"


def _texts(result) -> str:
    out = [getattr(c, "text", "") or "" for c in result.content]
    if result.structured_content is not None:
        out.append(json.dumps(result.structured_content))
    return "\n".join(out)


@pytest.mark.anyio
async def test_evaluate_test_is_human_only_recorded_apart_and_never_returned(heldout_lab, capsys):
    lab = heldout_lab
    base = ex.run_experiment(lab, "baseline")
    assert base.status == "succeeded"
    ws = str(lab.root)
    assert cli(["evaluate-test", str(base.id), "-w", ws]) == 0
    assert f"{TEST_MARKER:.6g}" in capsys.readouterr().out  # the human sees it
    rows = lab.store.test_evaluations()
    assert len(rows) == 1 and rows[0]["status"] == "succeeded" and rows[0]["objective"] == TEST_MARKER
    assert rows[0]["requested_by"] == "cli" and rows[0]["snapshot_commit"] == base_commit(lab, base.id)
    assert json.loads(rows[0]["metrics_json"])["n_test"] == 3
    assert lab.store.db.conn.execute("SELECT count(*) FROM metrics WHERE value = ?", [TEST_MARKER]).fetchone()[0] == 0
    assert cli(["evaluate-test", str(base.id), "-w", ws]) == 2  # one look only, unless --again
    assert "already evaluated on test" in capsys.readouterr().err
    assert any(r["tool"] == "cli:evaluate-test" for r in lab.store.audit_rows(50))

    marker = str(TEST_MARKER)[:8]
    app.configure(lab.root)
    async with Client(app.mcp) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "evaluate_test" not in names and {"rerun_experiment", "suggest", "reproduce", "plot_progress"} <= names
        seen = []
        for name, args in [("read_results", {"include_metrics": True}), ("show_experiment", {"experiment_id": base.id}),
                           ("experiment_status", {"experiment_id": base.id}), ("read_notes", {}),
                           ("rerun_experiment", {"experiment_id": base.id, "seeds": 1}),
                           ("reproduce", {"experiment_id": base.id})]:
            res = await c.call_tool(name, args)
            assert not res.is_error, _texts(res)
            seen.append(_texts(res))
        for uri in (f"experiments://{base.id}", "notes://recent"):
            seen.append(str(await c.read_resource(uri)))
        refused = await c.call_tool("evaluate_test", {"experiment_id": base.id})
        assert refused.is_error and "allow_test_eval" in _texts(refused)
        blob = "\n".join(seen)
        assert marker not in blob and "test_marker_metric" not in blob and "TEST-ANNOTATION-CANARY" not in blob
    audit = [r["tool"] for r in lab.store.audit_rows(100)]
    for tool in ("rerun_experiment", "reproduce", "evaluate_test"):
        assert tool in audit, audit

    # a human may enable the tool; then it is listed and records like the CLI
    toml = lab.root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace("allow_test_eval = false", "allow_test_eval = true"))
    app.configure(lab.root)
    async with Client(app.mcp) as c:
        assert "evaluate_test" in {t.name for t in (await c.list_tools()).tools}
        again = await c.call_tool("evaluate_test", {"experiment_id": base.id})
        assert again.is_error and "already evaluated" in _texts(again)
    app.state.lab.close()
    app.state.lab = None


def test_agent_runs_cannot_see_test_runs_or_the_heldout_folder(heldout_lab):
    lab = heldout_lab
    exp = {"id": 1, "time_budget_s": 10, "params_json": "{}"}
    policy = launch.sandbox_policy(lab, exp, lab.run_dir(1), lab.run_dir(1) / "code")
    hidden = {str(h) for h in policy.hidden}
    assert str(lab.root / "data" / "heldout") in hidden          # under the granted data folder: hidden
    assert lab.state_dir in policy.masked                          # test runs: under the masked state dir,
    assert not any(g == lab.state_dir / "test_runs" or g in (lab.state_dir / "test_runs").parents  # not granted
                   for g in [policy.run_dir, *policy.read_only] if g != lab.state_dir)
    assert policy.env["AR_EVAL_SPLIT"] == "val" and "AR_TEST_ANNOTATIONS" not in policy.env


def test_evaluate_test_refusals_name_the_fix(lab):
    with pytest.raises(ToolError, match="experiment_id=5 does not exist"):
        testeval.evaluate_test(lab, 5)
    base = ex.run_experiment(lab, "baseline")
    with pytest.raises(ToolError, match="test_annotations in autoresearch.toml is unset|`test_annotations`"):
        testeval.evaluate_test(lab, base.id)


# -- 6. plot and export ----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_plot_progress_is_a_png_and_export_is_results_tsv(lab, tmp_path):
    ex.run_experiment(lab, "baseline")
    _set_lr(lab, "2.0")
    ex.run_experiment(lab, "LR 2.0")
    _set_lr(lab, "0.02")
    ex.run_experiment(lab, "LR 0.02\twith a tab")
    (lab.root / "train.py").write_text("raise SystemExit('boom')\n")
    ex.run_experiment(lab, "crash")
    app.configure(lab.root)
    async with Client(app.mcp) as c:
        res = await c.call_tool("plot_progress", {"limit": 50})
        assert not res.is_error
        img = res.content[0]
        assert img.type == "image" and img.mime_type == "image/png"
        import base64
        png = base64.b64decode(img.data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(png) < 300_000
        bad = await c.call_tool("plot_progress", {"limit": 0})
        assert bad.is_error
    app.state.lab.close()
    app.state.lab = None

    out = tmp_path / "p.png"
    assert cli(["plot", "-w", str(lab.root), "-o", str(out)]) == 0 and out.read_bytes()[:4] == b"\x89PNG"
    assert cli(["export", "--format", "tsv", "-w", str(lab.root)]) == 0
    lines = (lab.root / "results.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["commit", "objective", "memory_gb", "status", "description"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[3] for r in rows] == ["keep", "keep", "discard", "crash"]
    assert all(len(r) == 5 and len(r[0]) == 7 for r in rows)
    assert rows[3][1] == "" and rows[2][4] == "LR 0.02 with a tab"  # a crash has no objective (0 would be perfect)
    assert cli(["export", "--format", "csv", "-w", str(lab.root)]) == 2
    audit = [r["tool"] for r in lab.store.audit_rows(50)]
    assert "plot_progress" in audit and "cli:plot" in audit and "cli:export" in audit


def test_demo_measures_the_baseline_noise_with_repeats(tmp_path, capsys):
    root = tmp_path / "demo"
    assert cli(["demo", str(root), "--preset", "toy", "--repeats", "2"]) == 0
    assert "baseline noise from 3 seeds" in capsys.readouterr().out
    lab = Lab.open(root)
    try:
        row = lab.store.get_experiment(1)
        assert row["kept"] and row["group_n"] == 3 and row["group_std"] > 0
        assert reruns.group_summary(lab, 1).next.startswith("the best's noise is measured")
    finally:
        lab.close()
