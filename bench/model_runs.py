"""Run the train.py template for a few presets/overrides, one after another, and print a table.

    python bench/model_runs.py --data DIR [--out OUT] NAME=PRESET[:JSON] ...

e.g.
    python -m model.prepare --data /tmp/ed/default
    python bench/model_runs.py --data /tmp/ed/default tiny=tiny 'none=tiny:{"EXPERT_VARIANT":"none"}' replay=replay

Each run gets its own AR_RUN_DIR under OUT (default /tmp/model_runs); the wall time includes
interpreter start, imports, data load and eval.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.presets import render_template  # noqa: E402


def run_one(name: str, spec: str, data: str, out: Path) -> dict:
    preset, _, js = spec.partition(":")
    rd = out / name
    rd.mkdir(parents=True, exist_ok=True)
    for f in ("events.jsonl", "metrics.json"):
        (rd / f).unlink(missing_ok=True)
    (rd / "train.py").write_text(render_template(preset))
    env = dict(os.environ, AR_RUN_DIR=str(rd), AR_DATA_DIR=data, PYTHONPATH=str(ROOT))
    if js:
        (rd / "params.json").write_text(js)
        env["AR_PARAMS"] = str(rd / "params.json")
    t = time.time()
    p = subprocess.run([sys.executable, str(rd / "train.py")], env=env, cwd=rd, capture_output=True, text=True)
    wall = time.time() - t
    (rd / "log.txt").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        return {"name": name, "error": p.stderr.strip().splitlines()[-1:] , "wall": wall}
    m = json.loads((rd / "metrics.json").read_text())
    m["wall"] = wall
    m["name"] = name
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="/tmp/model_runs")
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    out = Path(a.out)
    rows = []
    for r in a.runs:
        name, _, spec = r.partition("=")
        m = run_one(name, spec, a.data, out)
        rows.append(m)
        if "error" in m:
            print(f"{name:14s} FAILED {m['error']}", flush=True)
            continue
        print(f"{name:14s} MR {m['mean_rank']:7.2f} ({100 * m['mean_rank'] / m['random_mean_rank']:5.1f}% of "
              f"{m['random_mean_rank']:.1f}) +-{m['mean_rank_std']:.2f}  R@1 i2t {m['i2t_r1']:.3f} t2i {m['t2i_r1']:.3f}"
              f"  twin {m.get('twin_acc', float('nan')):.3f}  steps {m['steps']} ({m['stopped_by']})"
              f"  train {m['train_seconds']:.0f}s wall {m['wall']:.0f}s", flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
