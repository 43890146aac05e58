"""The train.py template as a real subprocess, one fold per process: it reads its task from
AR_TASK_DIR, writes the eval pool's embeddings (scored here by model.scoring), the informational
metrics.json and events.jsonl; determinism, the expert variants, the test split, the time budget,
NaN fast-fail, a standalone run. Runs start 2 at a time with a micro model on a tiny dataset."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model.constants import rewrite_constants
from model.presets import render_template
from model.scoring import IMAGE_FILE, TEXT_FILE, score_fold
from model.synthprints import SynthConfig, write_dataset
from model.tasks import build_tasks, deal_task

ROOT = Path(__file__).resolve().parents[1]
MICRO = {"IMAGE_SIZE": 32, "PATCH_SIZE": 8, "VISION_WIDTH": 32, "VISION_LAYERS": 1, "VISION_HEAD_WIDTH": 16,
         "TEXT_WIDTH": 32, "TEXT_LAYERS": 1, "TEXT_HEADS": 2, "EMBED_DIM": 16, "BATCH_SIZE": 8,
         "MAX_STEPS": 3, "WARMUP_STEPS": 1, "EVAL_BATCH_SIZE": 16}
INFO_KEYS = {"fold", "num_folds", "split", "steps", "max_steps", "stopped_by", "schedule_by", "train_seconds",
             "loss", "logit_scale", "expert_variant", "expert_steps", "peak_memory_gb", "device", "seed",
             "fold_seed", "preset", "data_fingerprint", "embed_seconds", "total_seconds", "torch_version",
             "open_clip_version"}

# name: (task, constants, extra env); task = (tasks folder, fold) or None for a standalone run
RUNS = {
    "base": (("k1", 0), {"EXPERT_PROB": 1.0}, {}),
    "again": (("k1", 0), {"EXPERT_PROB": 1.0}, {}),
    "tokens": (("k2", 1), {"EXPERT_VARIANT": "tokens", "EXPERT_PROB": 1.0, "MAX_STEPS": 2}, {}),
    "pixel": (("k1", 0), {"EXPERT_VARIANT": "pixel", "EXPERT_PROB": 1.0, "MAX_STEPS": 8}, {}),
    "pixel_lr2": (("k1", 0), {"EXPERT_VARIANT": "pixel", "EXPERT_PROB": 1.0, "MAX_STEPS": 8, "EXPERT_LR_MULT": 2.0}, {}),
    "test": (("test", 0), {"SAVE_CHECKPOINT": True, "LOGIT_SCALE_MAX": 2.0}, {"AR_TIME_BUDGET_S": "30"}),
    "nan": (("k1", 0), {"LR": 1e20, "GRAD_CLIP": 0.0, "MAX_STEPS": 20}, {}),
    "timed": (("k1", 0), {"MAX_STEPS": 100000, "EXPERT_VARIANT": "none"}, {"AR_TIME_BUDGET_S": "4"}),
    "mismatch": (("k1", 0), {"IMAGE_SIZE": 16}, {}),
    "standalone": (None, {}, {}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tmpl")
    data = write_dataset(base / "data", SynthConfig(n_train=48, n_val=32, n_test=16, image_size=32))
    tasks = {}
    for name, k, split in (("k1", 1, "val"), ("k2", 2, "val"), ("test", 1, "test")):
        tasks[name] = base / "tasks" / name
        build_tasks(data, None, image_size=32, context_length=48, num_folds=k, split=split, out_dir=tasks[name],
                    protocol="kfold-pooled" if k > 1 else "split",
                    test_annotations=data / "heldout" / "test.jsonl", log=lambda *a: None)
    procs, out = {}, {}
    pending = list(RUNS.items())
    while pending or procs:
        while pending and len(procs) < 2:
            name, (task, consts, extra) = pending.pop(0)
            rd = base / "runs" / name
            rd.mkdir(parents=True)
            ws = base / "ws" / name
            ws.mkdir(parents=True)
            (ws / "train.py").write_text(rewrite_constants(render_template("tiny"), {**MICRO, **consts}))
            env = {k: v for k, v in os.environ.items() if not k.startswith("AR_")}
            env.update(AR_RUN_DIR=str(rd), PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
            key = None
            if task:  # this run's own deal: fresh orders and its key
                key = base / "deals" / name / "key.npz"
                deal_task(tasks[task[0]], task[1], base / "deals" / name / "task", key)
                env["AR_TASK_DIR"] = str(base / "deals" / name / "task")
            else:
                env["AR_DATA_DIR"] = str(data)
            procs[name] = (subprocess.Popen([sys.executable, "train.py"], cwd=ws, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True), rd, key)
        time.sleep(0.1)
        for name in [n for n, (p, _, _) in procs.items() if p.poll() is not None]:
            p, rd, key = procs.pop(name)
            so, se = p.communicate()
            out[name] = {"rc": p.returncode, "stdout": so, "stderr": se, "dir": rd, "key": key}
    return out


def _score(run_dir, key) -> dict:
    """The one pool's metrics (these tasks have one pool per process)."""
    [m] = score_fold(run_dir, key)
    return m


def _metrics(r):
    assert r["rc"] == 0, r["stderr"][-2000:]
    return json.loads((r["dir"] / "metrics.json").read_text())


def _finite_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            _finite_numbers(v)
    elif isinstance(obj, float):
        assert math.isfinite(obj)


def test_one_fold_writes_embeddings_the_scorer_reads(runs):
    r = runs["base"]
    m = _metrics(r)
    assert set(m) == INFO_KEYS, set(m) ^ INFO_KEYS
    assert not {"objective", "mean_rank", "params"} & set(m)              # the score is the supervisor's
    assert m["steps"] == 3 and m["max_steps"] == 3 and m["fold"] == 0 and m["num_folds"] == 1
    assert m["split"] == "val" and m["preset"] == "tiny" and m["expert_variant"] == "seed" and m["seed"] == 0
    assert m["expert_steps"] == 3 and m["peak_memory_gb"] > 0 and m["fold_seed"] == 0
    assert m["stopped_by"] == "steps" and m["schedule_by"] == "steps"
    for k in ("loss", "train_seconds", "peak_memory_gb", "logit_scale"):
        assert isinstance(m[k], float)
    _finite_numbers(m)
    img, txt = np.load(r["dir"] / IMAGE_FILE), np.load(r["dir"] / TEXT_FILE)
    assert img.dtype == txt.dtype == np.float32 and img.shape == txt.shape == (32, 16)
    s = _score(r["dir"], r["key"])
    assert s["n_val"] == 32 and s["random_mean_rank"] == 15.5 and 0 <= s["twin_acc"] <= 1
    assert "training FROM SCRATCH" in r["stdout"] and "fold:             1 of 1" in r["stdout"]
    assert "local" not in r["stdout"] and not (r["dir"] / "model.pt").exists()
    assert sorted(p.name for p in r["dir"].iterdir()) == sorted(["events.jsonl", "metrics.json", IMAGE_FILE, TEXT_FILE])


def test_events_jsonl(runs):
    lines = [json.loads(x) for x in (runs["base"]["dir"] / "events.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 1 and lines[-1]["step"] == 3
    for e in lines:
        assert {"t", "step", "loss", "elapsed"} <= set(e)
        assert isinstance(e["step"], int) and math.isfinite(e["loss"]) and e["elapsed"] >= 0


def test_same_seed_same_embeddings(runs):
    """Two runs of one seed on two deals (fresh orders each): row for row of the canonical pool, the
    same embeddings, bit for bit."""
    a, b = runs["base"], runs["again"]
    _metrics(a), _metrics(b)
    for f, order in ((IMAGE_FILE, "image_pool"), (TEXT_FILE, "text_pool")):
        canon = []
        for r in (a, b):
            x, perm = np.load(r["dir"] / f), np.load(r["key"])[order]
            c = np.empty_like(x)
            c[perm] = x
            canon.append(c)
        assert canon[0].tobytes() == canon[1].tobytes()
    assert not np.array_equal(np.load(a["key"])["image_pool"], np.load(b["key"])["image_pool"])


@pytest.mark.parametrize("variant", ["tokens", "pixel"])
def test_expert_variants_train(runs, variant):
    m = _metrics(runs[variant])
    assert m["expert_variant"] == variant and m["expert_steps"] > 0
    assert _score(runs[variant]["dir"], runs[variant]["key"])["n_val"] > 0


def test_second_fold_of_two(runs):
    m = _metrics(runs["tokens"])
    assert (m["fold"], m["num_folds"], m["steps"], m["fold_seed"]) == (1, 2, 2, 1000)   # SEED + FOLD_SEED_OFFSET * 1
    assert _score(runs["tokens"]["dir"], runs["tokens"]["key"])["n_val"] == 40       # half of train + val


def test_expert_lr_multiplier_changes_training_and_only_from_the_second_step(runs):
    """EXPERT_LR_MULT scales the expert module's LR (the original eCLIP used 2x): the same seed gives
    the same first loss (events.jsonl logs the first and the last step at least), then they part."""
    def losses(name):
        _metrics(runs[name])
        rows = [json.loads(line) for line in (runs[name]["dir"] / "events.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows]
    one, two = losses("pixel"), losses("pixel_lr2")
    assert len(one) >= 2 and len(two) >= 2
    assert one[0] == two[0] and one[-1] != two[-1]


def test_test_split_task_and_the_logit_scale_cap(runs):
    r = runs["test"]
    m = _metrics(r)
    assert m["split"] == "test" and (r["dir"] / "model.pt").exists()
    assert _score(r["dir"], r["key"])["n_val"] == 16
    # LOGIT_SCALE_MAX 2: the clamp in train.py caps the scale from the first step (init 30)
    assert 1.9 < m["logit_scale"] <= 2.0 + 1e-6 and _metrics(runs["base"])["logit_scale"] > 25


def test_nan_loss_fails_fast(runs):
    r = runs["nan"]
    assert r["rc"] == 1 and "FAIL: loss is" in r["stderr"]
    assert not (r["dir"] / "metrics.json").exists() and not (r["dir"] / IMAGE_FILE).exists()


def test_a_task_for_other_sizes_is_refused(runs):
    r = runs["mismatch"]
    assert r["rc"] == 2 and "built for image_size 32, this script asks for 16" in r["stderr"]
    assert "Traceback" not in r["stderr"]


def test_time_budget_stops_and_anneals_by_time(runs):
    m = _metrics(runs["timed"])
    assert m["stopped_by"] == "time" and m["schedule_by"] == "time"
    assert 10 < m["steps"] < 100000 and 4.0 <= m["train_seconds"] < 25


def test_standalone_builds_its_own_task_and_prints_a_local_score(runs):
    r = runs["standalone"]
    m = _metrics(r)
    assert m["num_folds"] == 1 and m["split"] == "val"
    assert "AR_TASK_DIR not set" in r["stdout"] and "local mean_rank:" in r["stdout"]
    assert np.load(r["dir"] / IMAGE_FILE).shape == (32, 16)
    assert "eclip-task-" in r["stdout"]
    tmp = r["stdout"].split("building a one-fold task in ")[1].split()[0]
    assert not Path(tmp).exists()                          # the temp task (and its key) is gone
