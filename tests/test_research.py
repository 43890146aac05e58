"""Querying the past through the MCP face (in process): search, compare, trajectory, leaderboard,
experiment resources, the resume prompt. Real toy runs, real git snapshots, real SQLite FTS5."""

from __future__ import annotations

import json
import math
import statistics
import time

import pytest

from mcp import Client
from mcp.shared.exceptions import MCPError

from server import app
from tools import experiments as ex
from tools.init import init_workspace
from tools.lab import Lab

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def history_ws(tmp_path_factory):
    """Four real toy runs: baseline, an improvement (LR), a params-only rerun, a crash; two notes."""
    ws = init_workspace(tmp_path_factory.mktemp("hist") / "lab", preset="toy", time_budget_s=20)
    toml = ws / "autoresearch.toml"  # the runs below try more steps: a human raised the step budget
    toml.write_text(toml.read_text().replace("step_budget = 200 ", "step_budget = 400 ", 1))
    lab = Lab.open(ws)
    train = ws / "train.py"
    try:
        s1 = ex.run_experiment(lab, "baseline", "the template as shipped")
        train.write_text(train.read_text().replace("LR = 0.1 ", "LR = 0.5 "))
        s2 = ex.run_experiment(lab, "LR 0.1 -> 0.5", "gradient descent is too slow at 0.1")
        s3 = ex.run_experiment(lab, "more steps", None, params={"STEPS": 300})
        good = train.read_text()
        train.write_text(good + "\nNOT_VALID_PYTHON (\n")
        s4 = ex.run_experiment(lab, "typo in the summary block")
        train.write_text(good)
        ex.write_note(lab, "raising the learning rate helped; no warmup needed", s2.id, ["lr"])
        ex.write_note(lab, "general idea: try label smoothing next", None, ["idea"])
        assert [s.status for s in (s1, s2, s3, s4)] == ["succeeded", "succeeded", "succeeded", "failed"]
        assert (s1.verdict, s2.verdict) == ("baseline", "improved")
    finally:
        lab.close()
    return ws


@pytest.fixture
async def client(history_ws):
    app.configure(history_ws)
    async with Client(app.mcp) as c:
        yield c


def data(result):
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def search(c, query, **kw):
    return data(await c.call_tool("search_experiments", {"query": query, **kw}))


# -- search --------------------------------------------------------------------------------
async def test_search_covers_descriptions_hypotheses_notes_and_diffs(client):
    page = await search(client, "0.5")
    assert [h["id"] for h in page["hits"]] == [2] and page["mode"] == "all terms"
    assert set(page["hits"][0]["matched_in"]) == {"description", "diff"}
    assert "[0.5]" in page["hits"][0]["snippet"] or "[0]" in page["hits"][0]["snippet"]
    assert (await search(client, "too slow"))["hits"][0]["matched_in"] == ["hypothesis"]
    assert (await search(client, "warmup"))["hits"][0]["matched_in"] == ["notes"]
    hits = (await search(client, "NOT_VALID_PYTHON"))["hits"]
    assert [(h["id"], h["matched_in"], h["status"]) for h in hits] == [(4, ["diff"], "failed")]
    # only changed lines are indexed: the context line 'L2 = 1e-3' next to the LR change is not
    assert (await search(client, "L2"))["total"] == 0
    # filters and the any-term fallback
    assert [h["id"] for h in (await search(client, "lr", verdict="improved"))["hits"]] == [2]
    assert (await search(client, "lr", status="failed"))["total"] == 0
    page = await search(client, "zebra lr")
    assert page["mode"] == "any term" and [h["id"] for h in page["hits"]] == [2]
    # prefix
    assert [h["id"] for h in (await search(client, "warm*"))["hits"]] == [2]


async def test_search_reindexes_an_experiment_when_a_note_arrives(client):
    """The index is kept on write (issue 16): the note is searchable as soon as write_note returns,
    and a search never indexes (nothing is pending: every run's diff was indexed at submit)."""
    assert (await search(client, "plateau"))["total"] == 0
    data(await client.call_tool("write_note", {"text": "loss plateau after 200 steps", "experiment_id": 3}))
    page = await search(client, "plateau")
    assert [h["id"] for h in page["hits"]] == [3] and page["hits"][0]["matched_in"] == ["notes"]
    assert page["not_indexed"] == 0 and "indexed_now" not in page
    data(await client.call_tool("write_note", {"text": "a second plateau, at 400", "experiment_id": 3}))
    assert (await search(client, "400 plateau"))["hits"][0]["id"] == 3  # both notes stay indexed


@pytest.mark.parametrize("query", ["lr OR", "NEAR(lr 0.5)", "description:lr", "^lr", "lr AND", "(lr",
                                   "'); DROP TABLE experiments; --", "lr* *", '"lr" "0.5"', "- lr", "+lr",
                                   "{description}: lr", "lr NOT", "rate\"*"])
async def test_search_text_is_never_fts_syntax(client, query):
    r = await client.call_tool("search_experiments", {"query": query})
    assert not r.is_error, r.content[0].text
    assert data(await client.call_tool("read_results", {}))["total"] == 4


async def test_search_refuses_bad_input_naming_the_field(client):
    for args, field in [({"query": "***"}, "query"), ({"query": '"'}, "query"), ({"query": "( ) :"}, "query"), ({"query": ""}, "query"), ({"query": "x" * 201}, "query"),
                        ({"query": "lr", "limit": 0}, "limit"), ({"query": "lr", "limit": 51}, "limit"),
                        ({"query": "lr", "status": "done"}, "status"), ({"query": "lr", "verdict": "great"}, "verdict")]:
        r = await client.call_tool("search_experiments", args)
        assert r.is_error and field in r.content[0].text, (args, r.content[0].text)
    r = await client.call_tool("search_experiments", {"query": "***"})
    assert "Fix:" in r.content[0].text


# -- compare -------------------------------------------------------------------------------
async def test_compare_gives_config_code_and_metric_deltas_with_noise(client, history_ws):
    cmp = data(await client.call_tool("compare_experiments", {"a": 1, "b": 2}))
    assert cmp["summary"].startswith("2 is better than 1") and "sigma" in cmp["summary"]
    assert "-LR = 0.1" in cmp["code_diff"] and "+LR = 0.5" in cmp["code_diff"]
    keys = [c["key"] for c in cmp["config_changes"]]
    assert not [k for k in keys if k.startswith(("params.", "time_budget_s", "command", "workspace."))], keys
    obj = cmp["metrics"][0]
    assert obj["name"] == "objective"
    assert obj["std_a"] == pytest.approx(cmp["a"]["objective_std"], rel=1e-5)
    assert obj["delta"] == pytest.approx(cmp["b"]["objective"] - cmp["a"]["objective"], rel=1e-5)
    assert obj["sigmas"] == pytest.approx(obj["delta"] / math.hypot(obj["std_a"], obj["std_b"]), abs=0.01)
    names = [m["name"] for m in cmp["metrics"]]
    assert "val_loss" in names and "val_loss_std" not in names  # the _std is shown as the noise of its base

    # a metric without a *_std: its noise is the fold spread
    lab = Lab.open(history_ws)
    try:
        folds = [m["value"] for m in lab.store.metrics(1) if m["fold"] is not None and m["name"] == "val_loss"]
    finally:
        lab.close()
    assert len(folds) == 3
    assert next(m for m in cmp["metrics"] if m["name"] == "val_loss")["std_a"] == \
        pytest.approx(statistics.pstdev(folds), rel=1e-3)  # spreads are shown to 4 significant digits

    cmp = data(await client.call_tool("compare_experiments", {"a": 2, "b": 3}))
    assert {"key": "params.STEPS", "a": None, "b": "300"} in cmp["config_changes"]
    # params are written into the snapshot's constants, so the code diff shows them too
    assert "-STEPS = 200" in cmp["code_diff"] and "+STEPS = 300" in cmp["code_diff"]
    cmp = data(await client.call_tool("compare_experiments", {"a": 2, "b": 4}))
    assert cmp["summary"].startswith("not comparable") and "NOT_VALID_PYTHON" in cmp["code_diff"]
    assert len(json.dumps(cmp)) < 12_000


async def test_compare_refuses_bad_ids(client):
    for args, needle in [({"a": 1, "b": 1}, "two different"), ({"a": 1, "b": 999}, "b=999 does not exist"),
                         ({"a": 0, "b": 1}, "a"), ({"a": "one", "b": 2}, "a")]:
        r = await client.call_tool("compare_experiments", args)
        assert r.is_error and needle in r.content[0].text, (args, r.content[0].text)


# -- trajectory, leaderboard ---------------------------------------------------------------
async def test_best_trajectory_lists_each_new_best(client):
    t = data(await client.call_tool("best_trajectory", {}))
    assert [p["id"] for p in t["points"]] == [1, 2] and t["points_total"] == 2
    assert t["points"][0]["gain"] is None
    assert t["points"][1]["gain"] == pytest.approx(t["points"][0]["objective"] - t["points"][1]["objective"], rel=1e-5)
    assert (t["experiments"], t["succeeded"]) == (4, 3)
    assert [p["id"] for p in data(await client.call_tool("best_trajectory", {"limit": 1}))["points"]] == [2]


async def test_leaderboard_resource(client):
    board = json.loads((await client.read_resource("leaderboard://top")).contents[0].text)
    assert board["best_id"] == 2 and board["succeeded"] == 3
    objs = [r["objective"] for r in board["top"]]
    assert objs == sorted(objs) and all(r["status"] == "succeeded" for r in board["top"])
    assert [p["id"] for p in board["trajectory"]] == [1, 2]


# -- experiment resources ------------------------------------------------------------------
async def test_experiment_resource_template_rejects_traversal_and_bad_ids(client):
    templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
    assert "experiments://{experiment_id}" in templates
    detail = json.loads((await client.read_resource("experiments://2")).contents[0].text)
    assert detail["id"] == 2 and detail["verdict"] == "improved"
    for uri in ["experiments://..%2F..%2Fetc%2Fpasswd", "experiments://..", "experiments://%2Fetc%2Fpasswd",
                "experiments://1%00", "experiments://1/../../x", "experiments://..%2F1"]:
        with pytest.raises(MCPError):
            await client.read_resource(uri)
    for uri, needle in [("experiments://abc", "positive integer"), ("experiments://²", "positive integer"),
                        ("experiments://-1", "positive integer"), ("experiments://99999999999", "positive integer"),
                        ("experiments://0", "start at 1"), ("experiments://999", "999 does not exist")]:
        with pytest.raises(MCPError) as err:
            await client.read_resource(uri)
        assert needle in str(err.value) and "Fix" in str(err.value), (uri, str(err.value))


# -- resume --------------------------------------------------------------------------------
async def test_resume_prompt_rebuilds_context(client, history_ws):
    text = (await client.get_prompt("resume")).messages[0].content.text
    assert "Best: #2" in text and "LR 0.1 -> 0.5" in text
    assert "no warmup needed" in text and "label smoothing" in text
    assert "#1" in text and "-> #2" in text  # the trajectory
    assert "equal the best snapshot" in text and "In flight" not in text
    assert "search_experiments" in text and len(text) < 7000
    train = history_ws / "train.py"
    good = train.read_text()
    try:
        train.write_text(good.replace("STEPS = 200 ", "STEPS = 250 "))
        text = (await client.get_prompt("resume")).messages[0].content.text
        assert "differ from the best snapshot: train.py (+1 -1)" in text and "revert('best')" in text
    finally:
        train.write_text(good)


async def test_resume_stays_bounded_with_many_long_notes(toy_ws):
    lab = Lab.open(toy_ws)
    for i in range(40):
        ex.write_note(lab, f"note {i}: " + "long reasoning " * 300)
    lab.close()
    app.configure(toy_ws)
    async with Client(app.mcp) as c:
        text = (await c.get_prompt("resume")).messages[0].content.text
    assert "No experiments yet" in text and len(text) <= 7000 and "## Next" in text


# -- shape ---------------------------------------------------------------------------------
async def test_research_tools_are_read_only_small_and_audited(client, history_ws):
    tools = {t.name: t for t in (await client.list_tools()).tools}
    for name in ("search_experiments", "compare_experiments", "best_trajectory"):
        assert tools[name].annotations.read_only_hint is True, name
        assert tools[name].annotations.open_world_hint is False, name
        assert len(tools[name].description) < 300, name
    page = await search(client, "lr", limit=50)
    assert len(json.dumps(page)) < 8000
    lab = Lab.open(history_ws)
    try:
        assert any(r["tool"] == "search_experiments" for r in lab.store.audit_rows(50))
    finally:
        lab.close()


async def test_search_latency_over_many_experiments(toy_ws):
    """2000 experiments with notes (text only) plus 100 with real snapshots (git diffs): index and query times."""
    lab = Lab.open(toy_ws)
    words = ["warmup", "cosine", "dropout", "mixup", "temperature", "clamp", "projection", "pooling", "heatmap",
             "expert", "batch", "augmentation", "schedule", "weight decay", "label smoothing", "hard negatives"]
    with lab.store.transaction() as conn:
        for i in range(2000):
            w1, w2 = words[i % len(words)], words[(i * 7) % len(words)]
            exp_id = conn.execute("INSERT INTO experiments (created_at, status, description, hypothesis) "
                                  "VALUES (?, 'succeeded', ?, ?)", (time.time(), f"try {w1} variant {i}",
                                                                    f"{w2} should help at step {i}")).lastrowid
            conn.execute("INSERT INTO notes (created_at, experiment_id, text) VALUES (?, ?, ?)",
                         (time.time(), exp_id, f"{w1} then {w2}: " + "observations " * 20))
    train = toy_ws / "train.py"
    base = train.read_text()
    for i in range(100):
        train.write_text(base.replace("LR = 0.1 ", f"LR = 0.{i + 200} "))
        commit = lab.workspace.snapshot(f"snap {i}")
        lab.store.insert_experiment(status="succeeded", description=f"sweep point {i}", snapshot_commit=commit)
    train.write_text(base)

    from tools.search import index_diffs, search_experiments
    # text and notes are indexed by the inserts themselves (triggers); a search before any diff is indexed
    # finds them and indexes nothing
    page = search_experiments(lab, "cosine")
    assert page.total > 100 and page.not_indexed == 100  # cosine is in many descriptions and hypotheses
    assert search_experiments(lab, "0.250").total == 0 and lab.store.count_pending_search_diffs() == 100
    t0 = time.perf_counter()
    rounds = 0
    while index_diffs(lab):  # what runs.submit does on write, 20 at a time
        rounds += 1
    index_s = time.perf_counter() - t0
    assert search_experiments(lab, "cosine").not_indexed == 0
    times = []
    for q in ["cosine", "weight decay", "warm*", "label smoothing dropout", "0.250", "zebra mixup"]:
        t = time.perf_counter()
        p = search_experiments(lab, q, limit=10)
        times.append((time.perf_counter() - t) * 1000)
        assert len(p.hits) <= 10
    assert search_experiments(lab, "0.250").hits[0].description == "sweep point 50"
    lab.close()
    p50 = statistics.median(times)
    print(f"\nFTS over 2100 experiments: 100 diffs indexed in {index_s:.2f} s ({rounds} writes); "
          f"query p50 {p50:.1f} ms, max {max(times):.1f} ms (bench/server_scale.py measures it at 100k)")
