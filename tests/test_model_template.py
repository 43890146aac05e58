"""The train.py template as a real subprocess: the metrics.json/events.jsonl contract, AR_PARAMS,
determinism, the expert variants, the test split, NaN fast-fail. Runs start in parallel (2 at a
time) with a micro model on a tiny generated dataset."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.presets import render_template
from model.synthprints import SynthConfig, write_dataset

ROOT = Path(__file__).resolve().parents[1]
MICRO = {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "VISION_WIDTH": 32, "VISION_LAYERS": 1, "VISION_HEAD_WIDTH": 16,
         "TEXT_WIDTH": 32, "TEXT_LAYERS": 1, "TEXT_HEADS": 2, "EMBED_DIM": 16, "BATCH_SIZE": 8,
         "MAX_STEPS": 3, "WARMUP_STEPS": 1, "EVAL_BATCH_SIZE": 16}
DIRECTION = ["mean_rank", "median_rank", "r1", "r5", "r10"]
FOLD_KEYS = {"mean_rank", "n_val", "random_mean_rank"} | {f"{d}_{k}" for d in ("i2t", "t2i") for k in DIRECTION}
TOP_KEYS = FOLD_KEYS | {"objective", "objective_name", "direction", "mean_rank_std", "folds", "peak_memory_gb",
                        "steps", "train_seconds", "twin_acc", "seed", "data_fingerprint", "device",
                        "expert_variant", "preset", "params", "torch_version", "open_clip_version"}

RUNS = {
    "base": {"EXPERT_PROB": 1.0},
    "again": {"EXPERT_PROB": 1.0},
    "tokens": {"EXPERT_VARIANT": "tokens", "EXPERT_PROB": 1.0, "NUM_FOLDS": 2, "MAX_STEPS": 2},
    "pixel": {"EXPERT_VARIANT": "pixel", "EXPERT_PROB": 1.0, "MAX_STEPS": 8},
    "pixel_lr2": {"EXPERT_VARIANT": "pixel", "EXPERT_PROB": 1.0, "MAX_STEPS": 8, "EXPERT_LR_MULT": 2.0},
    "test": {"SAVE_CHECKPOINT": True},
    "nan": {"LR": 1e20, "GRAD_CLIP": 0.0, "MAX_STEPS": 20},
    "unknown": {"NOT_A_PARAM": 1},
    "timed": {"MAX_STEPS": 100000, "EXPERT_VARIANT": "none"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tmpl")
    data = write_dataset(base / "data", SynthConfig(n_train=48, n_val=32, n_test=16, image_size=32))
    ws = base / "ws"
    ws.mkdir()
    (ws / "train.py").write_text(render_template("tiny"))
    procs, out = {}, {}
    pending = list(RUNS.items())
    while pending or procs:
        while pending and len(procs) < 2:
            name, params = pending.pop(0)
            rd = base / "runs" / name
            rd.mkdir(parents=True)
            (rd / "params.json").write_text(json.dumps({**MICRO, **params}))
            env = {k: v for k, v in os.environ.items() if not k.startswith("AR_")}
            env.update(AR_RUN_DIR=str(rd), AR_DATA_DIR=str(data), AR_PARAMS=str(rd / "params.json"),
                       PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
            if name == "timed":
                env["AR_TIME_BUDGET_S"] = "4"
            if name == "test":
                env.update(AR_EVAL_SPLIT="test", AR_TEST_ANNOTATIONS=str(data / "heldout" / "test.jsonl"),
                           AR_TIME_BUDGET_S="30")
            procs[name] = (subprocess.Popen([sys.executable, "train.py"], cwd=ws, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True), rd)
        time.sleep(0.1)
        for name in [n for n, (p, _) in procs.items() if p.poll() is not None]:
            p, rd = procs.pop(name)
            so, se = p.communicate()
            out[name] = {"rc": p.returncode, "stdout": so, "stderr": se, "dir": rd}
    return out


def _metrics(r, name="metrics.json"):
    assert r["rc"] == 0, r["stderr"][-2000:]
    return json.loads((r["dir"] / name).read_text())


def _finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            _finite_numbers(v)
    elif isinstance(obj, float):
        assert math.isfinite(obj)


def test_metrics_contract(runs):
    m = _metrics(runs["base"])
    assert TOP_KEYS <= set(m), TOP_KEYS - set(m)
    assert m["objective"] == m["mean_rank"] and m["objective_name"] == "mean_rank" and m["direction"] == "minimize"
    assert m["n_val"] == 32 and m["random_mean_rank"] == 15.5 and m["mean_rank_std"] == 0.0
    assert len(m["folds"]) == 1 and FOLD_KEYS <= set(m["folds"][0])
    assert m["steps"] == 3 and m["preset"] == "tiny" and m["expert_variant"] == "seed" and m["seed"] == 0
    assert m["expert_steps"] == 3
    assert m["params"]["MAX_STEPS"] == 3 and m["params"]["IMAGE_SIZE"] == 32
    assert 0 <= m["twin_acc"] <= 1 and m["peak_memory_gb"] > 0
    for k in ("objective", "mean_rank", "i2t_r1", "train_seconds", "peak_memory_gb"):
        assert isinstance(m[k], float)
    assert isinstance(m["n_val"], int) and isinstance(m["steps"], int)
    _finite_numbers(m)
    assert "training FROM SCRATCH" in runs["base"]["stdout"] and "mean_rank:" in runs["base"]["stdout"]
    assert not (runs["base"]["dir"] / "model.pt").exists()


def test_events_jsonl(runs):
    lines = [json.loads(x) for x in (runs["base"]["dir"] / "events.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 1 and lines[-1]["step"] == 3
    for e in lines:
        assert {"t", "step", "loss", "elapsed"} <= set(e)
        assert isinstance(e["step"], int) and math.isfinite(e["loss"]) and e["elapsed"] >= 0


def test_same_seed_same_objective(runs):
    a, b = _metrics(runs["base"]), _metrics(runs["again"])
    assert a["objective"] == b["objective"] and a["folds"][0]["i2t_r5"] == b["folds"][0]["i2t_r5"]
    assert a["data_fingerprint"] == b["data_fingerprint"]


@pytest.mark.parametrize("variant", ["tokens", "pixel"])
def test_expert_variants_train(runs, variant):
    m = _metrics(runs[variant])
    assert m["expert_variant"] == variant and m["expert_steps"] > 0


def test_expert_lr_multiplier_changes_training_and_only_from_the_second_step(runs):
    """EXPERT_LR_MULT scales the expert module's LR (the original eCLIP used 2x): the same seed gives
    the same first loss (events.jsonl logs the first and the last step at least), then they part."""
    def losses(name):
        _metrics(runs[name])
        rows = [json.loads(line) for line in (runs[name]["dir"] / "events.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r.get("loss") is not None]
    one, two = losses("pixel"), losses("pixel_lr2")
    assert len(one) >= 2 and len(two) >= 2
    assert one[0] == two[0] and one[-1] != two[-1]


def test_k_folds(runs):
    m = _metrics(runs["tokens"])
    assert len(m["folds"]) == 2 and m["steps"] == 4 and [f["steps"] for f in m["folds"]] == [2, 2]
    assert sum(f["n_val"] for f in m["folds"]) == 80          # pooled train + val
    assert m["mean_rank_std"] == pytest.approx(abs(m["folds"][0]["mean_rank"] - m["folds"][1]["mean_rank"]) / 2)


def test_test_split_writes_test_metrics(runs):
    r = runs["test"]
    m = _metrics(r, "test_metrics.json")
    assert not (r["dir"] / "metrics.json").exists()
    assert m["n_val"] == 16 and m["eval_split"] == "test" and (r["dir"] / "model.pt").exists()


def test_nan_loss_fails_fast(runs):
    r = runs["nan"]
    assert r["rc"] != 0 and "FAIL: loss is" in r["stderr"]
    assert not (r["dir"] / "metrics.json").exists()


def test_params_errors_are_clear(runs, tmp_path):
    r = runs["unknown"]
    assert r["rc"] == 2 and "FAIL: AR_PARAMS: unknown parameter(s) ['NOT_A_PARAM']" in r["stderr"]
    assert "MAX_STEPS" in r["stderr"] and "Traceback" not in r["stderr"]
    from model.runtime import ParamsError, load_params
    ns = {"MAX_STEPS": 10, "LR": 1e-3, "NAME": "x", "FLAG": False, "OPT": None, "lower": 1}
    p = tmp_path / "p.json"
    for bad, msg in [({"MAX_STEPS": "ten"}, "MAX_STEPS must be int"), ({"MAX_STEPS": 2.5}, "MAX_STEPS must be int"),
                     ({"FLAG": 1}, "FLAG must be bool"), ({"LR": True}, "LR must be float"),
                     ({"lower": 2}, "unknown"), ([1], "JSON object")]:
        p.write_text(json.dumps(bad))
        with pytest.raises(ParamsError, match=msg):
            load_params(dict(ns), str(p))
    p.write_text('{"LR": 1, "OPT": "a", "NAME": "y"}')
    ns2 = dict(ns)
    assert load_params(ns2, str(p)) == {"LR": 1.0, "OPT": "a", "NAME": "y"} and isinstance(ns2["LR"], float)
    p.write_text("{bad")
    with pytest.raises(ParamsError, match="not valid JSON"):
        load_params(dict(ns), str(p))


def test_time_budget_stops_and_anneals_by_time(runs):
    m = _metrics(runs["timed"])
    assert m["stopped_by"] == "time" and m["schedule_by"] == "time"
    assert 10 < m["steps"] < 100000 and 4.0 <= m["train_seconds"] < 25
    assert m["params"]["TIME_BUDGET"] == 4.0                  # AR_TIME_BUDGET_S overrides the constant
    b = _metrics(runs["base"])
    assert b["stopped_by"] == "steps" and b["schedule_by"] == "steps"
