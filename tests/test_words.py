"""Issue 28: what the agent and the researcher read is right. One real toy workspace with one eval pool
(so a run alone measures no noise), seed groups, a provisional gain confirmed by the product's reruns,
a rerun of the old baseline after the best moved, and a run that logs NaN losses."""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import pytest
from mcp import Client

from server import app
from server.cli import build_parser
from server.render import plural, print_detail, sparkline, verdict_words
from tools import experiments as ex
from tools import history, reruns, search
from tools.init import init_workspace
from tools.lab import Lab
from tools.rundir import thin
from tools.store import MIGRATIONS

DEADLINE_S = 300


def _settled(lab: Lab) -> bool:
    rows = lab.store.list_experiments(limit=100, status=None, order_by="created", direction="minimize")
    return not any(r["status"] in ("queued", "running") for r in rows)


def _wait_settled(lab: Lab) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and not _settled(lab):
        time.sleep(0.2)
    assert _settled(lab), "runs still queued or running after the deadline"


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    ws = init_workspace(tmp_path_factory.mktemp("words") / "lab", preset="toy", time_budget_s=20)
    toml = ws / "autoresearch.toml"  # one eval pool: a run alone measures no spread
    toml.write_text(toml.read_text().replace("folds = 3 ", "folds = 1 ", 1))
    train = ws / "train.py"
    shipped = train.read_text()
    lab = Lab.open(ws)
    ids = {}
    try:
        ids["baseline"] = ex.run_experiment(lab, "baseline").id
        train.write_text(shipped.replace("LR = 0.1 ", "LR = 0.2 "))
        ids["unknown_noise"] = ex.run_experiment(lab, "LR 0.1 -> 0.2").id  # better, nothing measured the noise
        train.write_text(shipped)
        _, ids["baseline_reruns"] = reruns.submit_reruns(lab, ids["baseline"], 2)
        _wait_settled(lab)
        train.write_text(shipped.replace("LR = 0.1 ", "LR = 0.5 "))
        ids["lr"] = ex.run_experiment(lab, "LR 0.1 -> 0.5").id  # improved?, confirmed by the product's reruns
        deadline = time.monotonic() + DEADLINE_S  # the supervisor queues them just after recording it
        while time.monotonic() < deadline and len(lab.store.seed_group(ids["lr"])) < 1 + lab.config.confirm_seeds:
            time.sleep(0.2)
        _wait_settled(lab)
        _, (ids["late_rerun"],) = reruns.submit_reruns(lab, ids["baseline"], 1)  # the best is the LR group now
        _wait_settled(lab)
        train.write_text(shipped.replace("LR = 0.1 ", "LR = 0.5 ")
                         .replace("if step % 20 == 0 or step == STEPS - 1:", "if True:")
                         .replace('"loss": loss,', '"loss": float("nan") if 100 <= step_total <= 110 else loss,'))
        ids["nan"] = ex.run_experiment(lab, "log every step, NaN at steps 100-110").id
        _wait_settled(lab)
        train.write_text(shipped)
        yield lab, ids
    finally:
        lab.close()


def test_the_story_ran_as_planned(story):
    lab, ids = story
    best = lab.store.best_experiment()
    assert best["rerun_of"] == ids["lr"], dict(best)  # the LR change's confirmation rerun is the best
    assert lab.store.get_experiment(ids["lr"])["verdict"] == "improved"
    assert all(lab.store.get_experiment(i)["status"] == "succeeded" for i in ids.values() if isinstance(i, int))


# -- 2: a rerun's parent is the run it reruns ----------------------------------------------------
def test_a_seed_rerun_diffs_against_the_run_it_reruns_not_the_best(story):
    lab, ids = story
    rerun = ids["late_rerun"]
    row = lab.store.get_experiment(rerun)
    assert row["parent_id"] == ids["baseline"]
    diff = ex.show_experiment(lab, rerun).diff
    changed = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert changed and all(ln[1:].startswith("SEED = ") for ln in changed), diff
    # the confirmation reruns of the LR change diff against it: SEED alone
    for r in lab.store.seed_group(ids["lr"]):
        if r["id"] != ids["lr"]:
            assert r["parent_id"] == ids["lr"]
    # search: the LR change is a hit; no rerun of the baseline is (their diffs hold SEED alone)
    hits = {h.id for h in search.search_experiments(lab, "LR = 0.5").hits}
    assert ids["lr"] in hits
    assert not hits & {ids["baseline"], ids["late_rerun"], *ids["baseline_reruns"]}, hits


def test_a_seed_rerun_never_advises_a_revert(story):
    lab, ids = story
    for rid in (ids["late_rerun"], *ids["baseline_reruns"]):
        hint = ex.summary(lab, rid).next or ""
        assert "revert" not in hint and f"#{ids['baseline']}" in hint, hint
    assert lab.store.get_experiment(ids["late_rerun"])["verdict"] == "not_improved"  # the case that said revert


def test_a_migrated_store_reindexes_old_rerun_parents(story):
    """Rows recorded before the fix (a rerun whose parent is the best) are repaired by migration 6."""
    lab, ids = story
    with lab.store.transaction() as conn:
        conn.execute("UPDATE experiments SET parent_id = ? WHERE id = ?", (ids["lr"], ids["late_rerun"]))
        for statement in MIGRATIONS[5].strip().split(";"):
            if statement.strip():
                conn.execute(statement)
    assert lab.store.get_experiment(ids["late_rerun"])["parent_id"] == ids["baseline"]
    search.index_diffs(lab)
    assert ids["late_rerun"] not in {h.id for h in search.search_experiments(lab, "LR = 0.5").hits}


# -- 3: compare uses the noise the verdict used; config changes are configuration ----------------
def test_compare_uses_the_seed_group_noise_and_lists_only_config(story):
    lab, ids = story
    c = history.compare_experiments(lab, ids["baseline"], ids["lr"])
    assert "unknown" not in c.summary and "sigma" in c.summary and "seed group of" in c.summary, c.summary
    obj = next(m for m in c.metrics if m.name == "objective")
    assert obj.std_a and obj.std_b and obj.sigmas is not None
    keys = [ch.key for ch in c.config_changes]
    assert keys == ["provenance.constants.LR"], keys
    # negative control: two runs with no group and one pool each: the noise is unknown, and said so
    c = history.compare_experiments(lab, ids["unknown_noise"], ids["nan"])
    assert "the noise is unknown" in c.summary, c.summary


# -- 4: loss curves end where the run ended; NaN is a gap ------------------------------------------
def test_thinning_keeps_the_first_and_last_and_the_cap():
    for n in (1, 2, 49, 50, 51, 58, 300, 2001):
        rows = list(range(n))
        out = thin(rows, 50)
        assert len(out) == min(n, 50) and out[0] == 0 and out[-1] == n - 1 and out == sorted(set(out))


def test_the_loss_curve_ends_at_the_last_step_and_shows_nan_as_a_gap(story):
    lab, ids = story
    stored = {s["step"]: s["loss"] for s in lab.store.steps(ids["nan"])}
    assert len(stored) == 200 and all(stored[s] is None for s in range(100, 111))
    assert all(v is not None and v > 0 for s, v in stored.items() if not 100 <= s <= 110)
    curve = ex.show_experiment(lab, ids["nan"]).loss_curve
    assert len(curve) <= 50 and curve[0][0] == 1 and curve[-1][0] == 200, curve
    assert any(v is None for _, v in curve) and not any(v == 0 for _, v in curve), curve
    out = io.StringIO()
    print_detail(ex.show_experiment(lab, ids["nan"]), "objective", "succeeded", out=out)
    text = out.getvalue()
    assert "step 200:" in text, text
    assert " " in sparkline([1.0, None, 2.0, math.nan, 3.0]) and len(sparkline([1.0, None, 2.0])) == 3


# -- 5 (part): the noise is None where it was not measured -----------------------------------------
def test_objective_std_is_none_for_one_pool(story):
    lab, ids = story
    assert lab.store.get_experiment(ids["baseline"])["objective_std"] is None
    assert ex.summary(lab, ids["unknown_noise"]).objective_std is None


# -- 6: an inconclusive verdict with no noise measured says so -----------------------------------
def test_inconclusive_with_no_noise_says_noise_unknown(story):
    lab, ids = story
    s = ex.summary(lab, ids["unknown_noise"])
    assert s.verdict == "inconclusive", s
    words = verdict_words(s.verdict, s.kept, s.verdict_reason)
    assert "noise unknown" in words and "within the noise" not in words
    assert "within the noise" not in (s.next or "") and "no noise" in (s.next or ""), s.next
    # negative control: a measured margin is still "within the noise"
    assert verdict_words("inconclusive", False, "improved needs a gain > 2 sigma = 0.1 ...") == \
        "inconclusive (within the noise)"


# -- 5: MCP results sized for an agent's context ---------------------------------------------------
@pytest.fixture
def anyio_backend():
    return "asyncio"


def _decimals_ok(value, digits: int) -> bool:
    """A float shown with at most `digits` significant digits."""
    return value is None or float(f"{value:.{digits}g}") == value


@pytest.mark.anyio
async def test_mcp_results_are_lean_rounded_and_warn_once(story):
    lab, ids = story
    app.configure(lab.root)
    async with Client(app.mcp) as c:
        async def text(name, args):
            r = await c.call_tool(name, args)
            assert not r.is_error, r.content[0].text
            return r.content[0].text, r.structured_content

        first, s1 = await text("experiment_status", {"experiment_id": ids["lr"]})
        again, s2 = await text("experiment_status", {"experiment_id": ids["baseline"]})
        gaps = [w for w in s1.get("warnings") or [] if w.startswith("isolation gap")]
        if gaps:  # a backend with gaps: shown in the session's first result, never again
            assert not s2.get("warnings"), s2
        assert len(again) < 700, again
        assert _decimals_ok(s2["objective"], 6) and _decimals_ok(s2["delta_vs_best"], 4)
        assert s2["objective_std"] is None  # one pool: the noise is unknown, not 0.0

        shown, d = await text("show_experiment", {"experiment_id": ids["nan"]})
        # what the run changed and printed is its own size; everything else is small
        assert len(shown) - len(d["diff"]) - len(d["log_tail"]) < 2000, shown
        assert "executable" not in shown and "cgroups" not in shown and "isolation" not in shown
        assert all(_decimals_ok(v, 6) for v in d["metrics"].values())
        assert all(isinstance(s, int) and _decimals_ok(v, 4) for s, v in d["loss_curve"])
        full, f = await text("show_experiment", {"experiment_id": ids["nan"], "detail": "full"})
        assert "isolation" in full and "executable" in full  # the whole record, behind detail='full'
        assert f["objective"] == lab.store.get_experiment(ids["nan"])["objective"]  # full precision kept

        cmp, _ = await text("compare_experiments", {"a": ids["baseline"], "b": ids["lr"]})
        assert len(cmp) < 2500 and "cgroup" not in cmp, len(cmp)
        for name, args, bound in [("read_results", {}, 4500), ("best_trajectory", {}, 1200),
                                  ("search_experiments", {"query": "LR"}, 1500),
                                  ("rerun_experiment", {"experiment_id": ids["baseline"], "seeds": 1,
                                                        "wait_s": 60}, 2500)]:
            out, _ = await text(name, args)
            assert len(out) < bound, (name, len(out), out)


# -- 7: small words -------------------------------------------------------------------------------
def test_help_plurals_and_readme_speak_to_people():
    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions:
        texts += [sp.format_help() for sp in action.choices.values()]
    for text in texts:
        assert "server/" not in text and "tools/" not in text and ".py" not in text.replace("train.py", ""), text
    assert (plural(1, "experiment"), plural(0, "experiment"), plural(2, "experiment")) == \
        ("1 experiment", "0 experiments", "2 experiments")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "wait=true" not in readme and "wait=false" not in readme
