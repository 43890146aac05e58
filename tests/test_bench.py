"""bench/ stays runnable: the scale benchmark's DB builder and read tools on a small DB, the step
benchmark still finds the template's loop, result lines carry machine info. Nothing timed."""

from __future__ import annotations

import json
import random

import pytest

from bench import common, server_scale, step_ratio


def test_server_scale_builds_through_the_store_and_every_read_tool_answers(tmp_path, monkeypatch):
    lab, info = server_scale.build(tmp_path / "lab", 60, 12)
    try:
        assert lab.store.count_experiments() == 60 and not info["lazy_index"]
        assert lab.store.count_pending_search_diffs() == 0  # diffs indexed as on write
        assert lab.store.best_experiment()["kept"] == 1
        for name, fn in server_scale.read_ops(lab, 60, random.Random(0), plot=False).items():
            fn()  # every read tool runs on the bench DB
        assert server_scale.search.search_experiments(lab, "variant").total > 0
    finally:
        lab.close()


def test_results_line_has_machine_info(tmp_path):
    path = tmp_path / "r.jsonl"
    common.record("x", {"a": 1}, {"ok": True}, path=path)
    line = json.loads(path.read_text())
    assert line["bench"] == "x" and line["machine"]["cpus"] and "load" in line["machine"]
    assert common.summary([1.0, 2.0, 3.0])["p50"] == 2.0


@pytest.mark.slow
def test_step_ratio_runs_the_templates_own_loop():
    ns, loop = step_ratio.template_namespace("tiny", {"EXPERT_VARIANT": "none"})
    assert "compute_loss" in ns and "make_optimizer" in ns and loop is not None
    data = step_ratio.synthetic_data(128, ns["IMAGE_SIZE"], ns["CONTEXT_LENGTH"])
    t = step_ratio.TemplateLoop("tiny", "none", data)
    t.run(1)
    assert t.ns["step"] == 1 and t.ns["loss_f"] == t.ns["loss_f"]  # one real step, a finite loss
