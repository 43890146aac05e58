"""Toy experiment (preset `toy`): logistic regression on a fixed synthetic problem, numpy only.

A seconds-long stand-in for the eCLIP template, for smoke tests and trying the tools. It trains one
weight vector per fold and writes them to weights.json; the workspace's frozen scorer (score.py,
not editable) computes the validation loss from them, so this file never scores itself.
events.jsonl carries progress; metrics.json holds informational extras only. Tuned values reach
it written into the constants below (the product edits the snapshot, never the environment).
"""

import json
import os
import sys
import time

import numpy as np

# ---------------------------------------------------------------------------- Hyperparameters
LR = 0.1            # learning rate of plain gradient descent
STEPS = 200         # optimisation steps per fold
L2 = 1e-3           # weight decay
SEED = 0            # changes the initialisation and the data order, not the data
SLEEP_PER_STEP = 0.0  # seconds; lets tests make a run last

RUN_DIR = os.environ.get("AR_RUN_DIR", "run")
os.makedirs(RUN_DIR, exist_ok=True)
FOLDS = int(os.environ.get("AR_NUM_FOLDS", "3"))  # the workspace's fold protocol (autoresearch.toml `folds`)
TIME_BUDGET = float(os.environ.get("AR_TIME_BUDGET_S", "10"))  # seconds for all folds: a safety net

# ---------------------------------------------------------------------------- Data (fixed)
data_rng = np.random.default_rng(1234)
X = data_rng.normal(size=(600, 10))
w_true = data_rng.normal(size=10)
y = (X @ w_true + 0.8 * data_rng.normal(size=600) > 0).astype(float)
folds = np.array_split(np.arange(600), FOLDS) if FOLDS > 1 else [np.arange(480, 600)]  # 1: a fixed 80/20 split

# ---------------------------------------------------------------------------- Training loop
events = open(os.path.join(RUN_DIR, "events.jsonl"), "a")
t0 = time.time()
weights = []
step_total = 0
stopped_by = "steps"
for k, val_idx in enumerate(folds):
    train_idx = np.setdiff1d(np.arange(600), val_idx)
    rng = np.random.default_rng(SEED * 100 + k)
    w = rng.normal(scale=0.1, size=10)
    for step in range(STEPS):
        p = 1 / (1 + np.exp(-(X[train_idx] @ w)))
        loss = float(-np.mean(y[train_idx] * np.log(p + 1e-9) + (1 - y[train_idx]) * np.log(1 - p + 1e-9)))
        if not np.isfinite(loss):
            sys.exit(f"loss is {loss} at step {step}: diverged")
        w -= LR * (X[train_idx].T @ (p - y[train_idx]) / len(train_idx) + L2 * w)
        step_total += 1
        if step % 20 == 0 or step == STEPS - 1:
            events.write(json.dumps({"t": time.time(), "step": step_total, "loss": loss,
                                     "elapsed": time.time() - t0}) + "\n")
            events.flush()
        if SLEEP_PER_STEP:
            time.sleep(SLEEP_PER_STEP)
        if time.time() - t0 > TIME_BUDGET * (k + 1) / FOLDS:  # this fold's share is spent
            stopped_by = "time"
            break
    weights.append([float(v) for v in w])

# ---------------------------------------------------------------------------- Outputs
def write_atomic(name, obj):
    tmp = os.path.join(RUN_DIR, name + ".tmp")
    json.dump(obj, open(tmp, "w"), indent=1)
    os.replace(tmp, os.path.join(RUN_DIR, name))


write_atomic("weights.json", {"folds": weights})  # what the scorer evaluates
write_atomic("metrics.json", {"steps": step_total, "max_steps": STEPS * FOLDS, "stopped_by": stopped_by,
                              "train_loss": loss, "train_seconds": time.time() - t0, "seed": SEED,
                              "peak_memory_gb": 0.0})
print(f"trained {FOLDS} fold(s), {step_total} steps, last train loss {loss:.6f}")
