"""Run the train.py template for a few presets/overrides, one after another, scored as the product
scores them, and print a table.

    python -m bench.model_runs --data DIR [--out OUT] [--folds K] NAME=PRESET[:JSON] ...

e.g.
    python -m model.prepare --data /tmp/ed/default
    python -m bench.model_runs --data /tmp/ed/default tiny=tiny 'none=tiny:{"EXPERT_VARIANT":"none"}' replay=replay

The overrides are written into the rendered template's constants (model.constants.rewrite_constants,
as tools/params.py does for a run's params); the template reads nothing else. Each fold runs as its
own process on its task folder (model.tasks, built once per image size under OUT/tasks), and the
embeddings are scored by the harness (tools.scoring.score_eclip over model.scoring). Not sandboxed:
this measures the model, not the product (bench.run_overhead measures that). The wall time includes
interpreter start, imports, data load and eval, summed over folds.
"""
from __future__ import annotations

import argparse
import json
import shutil
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, record

sys.path.insert(0, str(ROOT))

from model.constants import rewrite_constants  # noqa: E402
from model.presets import preset_folds, render_template, template_constants  # noqa: E402
from model.tasks import build_tasks, deal_task, processes  # noqa: E402
from tools.scoring import ScoreError, score_eclip  # noqa: E402


def run_one(name: str, spec: str, data: str, out: Path, folds: int | None) -> dict:
    preset, _, js = spec.partition(":")
    text = render_template(preset)
    if js:
        text = rewrite_constants(text, json.loads(js))
    consts = template_constants(text)
    k = folds or preset_folds(preset)
    tasks = out / "tasks" / f"{consts['IMAGE_SIZE']}px-{consts['CONTEXT_LENGTH']}-{k}"
    build_tasks(data, None, image_size=consts["IMAGE_SIZE"], context_length=consts["CONTEXT_LENGTH"], num_folds=k,
                out_dir=tasks, log=lambda *a: None)  # the leak-free split protocol: one process, k pools
    procs = processes("split", k)
    rd = out / name
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "train.py").write_text(text)
    wall, logs = 0.0, []
    keys = []
    for f in range(procs):
        deal = rd / "deal" / f"fold-{f}"
        shutil.rmtree(deal, ignore_errors=True)
        deal_task(tasks, f, deal / "task", deal / "key.npz")
        keys.append(deal / "key.npz")
        fd = rd / f"fold-{f}"
        fd.mkdir(exist_ok=True)
        for stale in ("events.jsonl", "metrics.json"):
            (fd / stale).unlink(missing_ok=True)
        env = dict(os.environ, AR_RUN_DIR=str(fd), AR_TASK_DIR=str(deal / "task"),
                   PYTHONPATH=str(ROOT))
        t = time.time()
        p = subprocess.run([sys.executable, str(rd / "train.py")], env=env, cwd=rd, capture_output=True, text=True)
        wall += time.time() - t
        logs.append(p.stdout + p.stderr)
        if p.returncode != 0:
            (rd / "log.txt").write_text("\n".join(logs))
            return {"name": name, "error": p.stderr.strip().splitlines()[-1:], "wall": wall}
    (rd / "log.txt").write_text("\n".join(logs))
    try:
        m = score_eclip(rd, keys)
    except ScoreError as exc:
        return {"name": name, "error": [str(exc)], "wall": wall}
    facts = [json.loads((rd / f"fold-{f}" / "metrics.json").read_text()) for f in range(procs)]
    m.update(name=name, wall=wall, steps=sum(x.get("steps", 0) for x in facts),
             stopped_by="time" if any(x.get("stopped_by") == "time" for x in facts) else "steps",
             train_seconds=sum(x.get("train_seconds", 0) for x in facts))
    return m


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="/tmp/model_runs")
    ap.add_argument("--folds", type=int, help="folds per run (default: the preset's)")
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args(argv)
    out = Path(a.out)
    rows = []
    for r in a.runs:
        name, _, spec = r.partition("=")
        m = run_one(name, spec, a.data, out, a.folds)
        rows.append(m)
        if "error" in m:
            print(f"{name:14s} FAILED {m['error']}", flush=True)
            continue
        print(f"{name:14s} MR {m['mean_rank']:7.2f} ({100 * m['mean_rank'] / m['random_mean_rank']:5.1f}% of "
              f"{m['random_mean_rank']:.1f}) +-{m.get('mean_rank_std', float('nan')):.2f}  "
              f"R@1 i2t {m.get('i2t_r1', float('nan')):.3f} t2i {m.get('t2i_r1', float('nan')):.3f}  "
              f"steps {m['steps']} ({m['stopped_by']})  train {m['train_seconds']:.0f}s wall {m['wall']:.0f}s", flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    record("model_runs", vars(a), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
