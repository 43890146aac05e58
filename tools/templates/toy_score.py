"""The toy workspace's frozen scorer: the validation loss of the weights train.py handed back.

A workspace with its own metric declares a scorer like this one in autoresearch.toml
(`scorer = ["python", "score.py"]`); it is not in `editable`, the agent's permissions deny editing
it, and the product runs it in the sandbox after the run, with the run's outputs read-only:

  AR_OUTPUTS_DIR   the run's folder (what train.py wrote: here weights.json)
  AR_NUM_FOLDS     the workspace's fold protocol
  AR_EVAL_SPLIT    val (the folds) | test (the held-out rows, only for `autoresearch evaluate-test`)

It prints one JSON object on its last stdout line: objective, objective_std and any metrics
(numbers), with `folds` for per-fold numbers. Anything else is a failed run with the reason.
"""

import json
import os
import sys

import numpy as np

MAX_BYTES = 1 << 20


def fail(msg):
    print(f"score: {msg}", file=sys.stderr)
    sys.exit(2)


folds_k = int(os.environ.get("AR_NUM_FOLDS", "3"))
path = os.path.join(os.environ["AR_OUTPUTS_DIR"], "weights.json")
try:
    with open(path, "rb") as f:
        raw = f.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        fail("weights.json is larger than 1 MiB")
    weights = json.loads(raw)["folds"]
    weights = np.asarray(weights, dtype=float)
except (OSError, ValueError, KeyError, TypeError) as exc:
    fail(f"weights.json missing or malformed ({exc}). Fix: train.py writes {{\"folds\": [[10 numbers] per fold]}}")
if weights.shape != (folds_k, 10) or not np.isfinite(weights).all():
    fail(f"weights.json holds {weights.shape}, expected ({folds_k}, 10) finite numbers (one weight vector per fold)")

# the fixed problem (the same generator as train.py's) and the fold protocol
data_rng = np.random.default_rng(1234)
X = data_rng.normal(size=(600, 10))
w_true = data_rng.normal(size=10)
y = (X @ w_true + 0.8 * data_rng.normal(size=600) > 0).astype(float)


def loss(w, rows, X=X, y=y):
    p = 1 / (1 + np.exp(-(X[rows] @ w)))
    return float(-np.mean(y[rows] * np.log(p + 1e-9) + (1 - y[rows]) * np.log(1 - p + 1e-9)))


if os.environ.get("AR_EVAL_SPLIT") == "test":  # fresh rows of the same problem, never seen in training
    test_rng = np.random.default_rng(98765)
    Xt = test_rng.normal(size=(400, 10))
    yt = (Xt @ w_true + 0.8 * test_rng.normal(size=400) > 0).astype(float)
    fold_losses = [loss(w, np.arange(400), Xt, yt) for w in weights]
else:
    splits = np.array_split(np.arange(600), folds_k) if folds_k > 1 else [np.arange(480, 600)]  # as train.py
    fold_losses = [loss(w, rows) for w, rows in zip(weights, splits)]
mean, std = float(np.mean(fold_losses)), float(np.std(fold_losses))
print(json.dumps({"objective": mean, "objective_std": std, "objective_name": "val_loss", "direction": "minimize",
                  "val_loss": mean, "val_loss_std": std, "folds": [{"val_loss": v} for v in fold_losses]}))
