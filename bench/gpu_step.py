"""Helpers of bench/gpu.sh: the template's step on the device (FLOPs, time, memory), and the report.

    python -m bench.gpu_step step [--preset seed] [--device cuda] [--set NAME=VALUE ...] [--compile]
    python -m bench.gpu_step report OUT

`step` runs the template's own loop (bench.step_ratio.TemplateLoop) over synthetic data already in
host memory, so it is the step alone (no data load, no eval): FLOPs of one step by
torch.utils.flop_counter (forward + backward), ms per step after warm-up (synchronised), peak memory.
`report` reads what gpu.sh left in OUT (per fold: wall, metrics.json; nvidia-smi samples; the step
JSON; the score) and prints the table: wall per experiment, steps/s, images/s, MFU against the
chip's bf16 dense peak, GPU busy fraction, peak memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.common import ROOT, record, table

sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.step_ratio import TemplateLoop, synthetic_data, template_namespace  # noqa: E402

# dense bf16 tensor-core peaks (no sparsity), FLOP/s; PEAK_TFLOPS overrides
PEAKS = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
         "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12, "RTX 4090": 165e12}


def peak_flops(name: str) -> float | None:
    import os
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"]) * 1e12
    for key, v in PEAKS.items():  # longest names first would matter only for H100 variants: listed first
        if key in name:
            return v
    return None


def parse_set(items: list[str]) -> dict:
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k] = json.loads(v)
    return out


def cmd_step(a) -> int:
    over = parse_set(a.set)
    ns, _ = template_namespace(a.preset, over)
    data = synthetic_data(max(4 * ns["BATCH_SIZE"], 256), ns["IMAGE_SIZE"], ns["CONTEXT_LENGTH"])
    if a.device == "cuda":
        data.images = data.images.pin_memory()
    loop = TemplateLoop(a.preset, ns["EXPERT_VARIANT"], data, device=a.device, overrides=over)
    if a.compile:
        loop.ns["model"].clip = torch.compile(loop.ns["model"].clip)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    loop.run(a.warmup)
    sync()
    warm_s = time.perf_counter() - t0
    from torch.utils.flop_counter import FlopCounterMode
    fc = FlopCounterMode(display=False)
    with fc:  # over a few steps: expert steps (a coin flip each) cost more than plain ones
        loop.run(a.flop_steps)
    flops = fc.get_total_flops() / a.flop_steps
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(a.blocks):
        t0 = time.perf_counter()
        loop.run(a.steps)
        sync()
        times.append((time.perf_counter() - t0) * 1000 / a.steps)
    out = {"preset": a.preset, "device": a.device, "device_name": torch.cuda.get_device_name() if a.device == "cuda"
           else "cpu", "batch": ns["BATCH_SIZE"], "image_size": ns["IMAGE_SIZE"], "expert": ns["EXPERT_VARIANT"],
           "compile": a.compile, "flops_per_step": flops, "ms_per_step": statistics.median(times),
           "ms_per_step_blocks": times, "warmup_s": warm_s,
           "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else None}
    peak = peak_flops(out["device_name"])
    out["mfu"] = flops / (out["ms_per_step"] / 1000) / peak if peak else None
    print(json.dumps(out))
    return 0


def _smi(path: Path) -> list[tuple[float, float, float]]:
    """(t, util %, memory MiB) samples of `nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used`."""
    from datetime import datetime
    rows = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            continue
        try:
            t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((t, float(parts[1].split()[0]), float(parts[2].split()[0])))
        except ValueError:
            continue
    return rows


def cmd_report(a) -> int:
    out = Path(a.out)
    step = json.loads((out / "step.json").read_text()) if (out / "step.json").exists() else {}
    folds = sorted(out.glob("run/fold-*"))
    rows, steps_total, train_total, walls = [], 0, 0.0, []
    batch = step.get("batch") or 64
    for fd in folds:
        m = json.loads((fd / "metrics.json").read_text()) if (fd / "metrics.json").exists() else {}
        wall = float((fd / "wall_s").read_text()) if (fd / "wall_s").exists() else float("nan")
        walls.append(wall)
        st, ts = m.get("steps", 0), m.get("train_seconds") or float("nan")
        steps_total += st
        train_total += ts
        rows.append([fd.name, wall, ts, m.get("embed_seconds"), st, st / ts if ts else None,
                     st * batch / ts if ts else None, m.get("peak_memory_gb")])
    print(table("\nper fold (seconds; the fold process's wall includes imports, data load, eval)",
                ["fold", "wall", "train", "embed", "steps", "steps/s", "images/s", "peak GB"], rows))
    smi = _smi(out / "smi.csv")
    busy_all = statistics.mean(u for _, u, _ in smi) / 100 if smi else None
    active = [s for s in smi if s[1] > 0]
    busy_active = None
    if active:
        t_lo, t_hi = active[0][0], active[-1][0]
        window = [u for t, u, _ in smi if t_lo <= t <= t_hi]
        busy_active = statistics.mean(window) / 100
    peak = peak_flops(step.get("device_name", ""))
    sps = steps_total / train_total if train_total else None
    mfu_run = step.get("flops_per_step", 0) * sps / peak if (peak and sps) else None
    score = json.loads((out / "score.json").read_text()) if (out / "score.json").exists() else {}
    summary = {
        "device": step.get("device_name"), "experiment_wall_s": sum(walls), "folds": len(folds),
        "steps_per_s": sps, "images_per_s": sps * batch if sps else None,
        "flops_per_step": step.get("flops_per_step"), "peak_bf16_flops": peak,
        "mfu_in_runs": mfu_run, "step_alone_ms": step.get("ms_per_step"), "mfu_step_alone": step.get("mfu"),
        "gpu_busy_whole_run": busy_all, "gpu_busy_active_window": busy_active,
        "peak_memory_gb_torch": max((r[7] or 0) for r in rows) if rows else None,
        "peak_memory_mib_smi": max((m for _, _, m in smi), default=None),
        "mean_rank": score.get("mean_rank"), "random_mean_rank": score.get("random_mean_rank"),
    }
    print(table(f"\nexperiment ({len(folds)} process(es), sequential)", ["figure", "value"], [[k, v] for k, v in summary.items()]))
    goal = summary["experiment_wall_s"] <= 60 and (busy_active or 0) >= 0.9
    print(f"\ngoal (H100/H200): experiment <= 60 s and GPU busy >= 90%: {'met' if goal else 'NOT met'}"
          + ("" if step.get("device") == "cuda" else " (CPU smoke: not a GPU measurement)"))
    record("gpu", {"out": str(out)}, {"summary": summary, "folds": rows, "step": step})
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("step")
    s.add_argument("--preset", default="seed")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--set", nargs="*", default=[], help="template constants, NAME=JSON")
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument("--blocks", type=int, default=5)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--flop-steps", type=int, default=5)
    s.add_argument("--compile", action="store_true")
    r = sub.add_parser("report")
    r.add_argument("out")
    a = ap.parse_args(argv)
    return cmd_step(a) if a.cmd == "step" else cmd_report(a)


if __name__ == "__main__":
    sys.exit(main())
