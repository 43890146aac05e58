"""The template's training step against a plain open_clip loop with the same towers, side by side.

    python -m bench.step_ratio [--preset tiny] [--expert none] [--blocks 8] [--steps 10] [--profile]
    python -m bench.step_ratio --smoke

"template" executes model/template/train.py's own definitions (constants, ECLIP, compute_loss,
make_optimizer, ...) and its own training-loop statement over synthetic data, so the figure is the
file's, not a copy's. "plain" is the loop an open_clip user writes: `model(images, tokens)`,
open_clip's ClipLoss, AdamW over model.parameters(), clip_grad_norm_, the logit-scale clamp.
Variants of the template's optimizer (foreach / fused AdamW on CPU) show what a change would buy.
Blocks of --steps steps alternate between the loops (A B A B ...); figures are ms per step,
median over blocks, with the spread. --profile adds a torch.profiler table of the template's step
(aten::fill_ and the optimizer's share).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import math
import os
import statistics
import sys
import time

from bench.common import ROOT, record, summary, table

sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model.data import PairData, batch_indices, normalize_images  # noqa: E402
from model.presets import render_template  # noqa: E402

SKIP = {"RUN_DIR", "FOLD_SEED"}  # setup lines that need a task; made here instead


def template_namespace(preset: str, overrides: dict) -> tuple[dict, ast.While]:
    """Exec the template's imports, constants, classes and functions; return them and its loop."""
    src = render_template(preset)
    tree = ast.parse(src)
    keep, loop = [], None
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
            keep.append(node)
        elif isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id.isupper() and t.id not in SKIP
                                                  for t in node.targets):
            keep.append(node)
        elif isinstance(node, ast.While) and loop is None:
            loop = node
    if loop is None:
        raise RuntimeError("the template has no training loop (a `while` statement) any more")
    ns: dict = {"__name__": "template_bench"}
    # constants first, then the overrides, then the rest (CLIP_CFG reads the constants)
    consts = [n for n in keep if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)]
    rest = [n for n in keep if n not in consts]
    exec(compile(ast.Module(body=[n for n in rest if isinstance(n, (ast.Import, ast.ImportFrom))] + consts,
                            type_ignores=[]), "train.py", "exec"), ns)
    ns.update(overrides)
    exec(compile(ast.Module(body=[n for n in rest if not isinstance(n, (ast.Import, ast.ImportFrom))],
                            type_ignores=[]), "train.py", "exec"), ns)
    return ns, loop


def synthetic_data(n: int, size: int, ctx: int, boxes: int = 4, seed: int = 0) -> PairData:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(6, ctx - 1, (n,), generator=g)
    tokens = torch.zeros(n, ctx, dtype=torch.long)
    for i, L in enumerate(lens.tolist()):
        tokens[i, 0], tokens[i, 1:L] = 49406, torch.randint(1, 49000, (L - 1,), generator=g)
        tokens[i, L] = 49407
    xy = torch.rand(n, boxes, 2, generator=g) * 0.6
    wh = 0.1 + torch.rand(n, boxes, 2, generator=g) * 0.3
    phrase = torch.zeros(n, boxes, ctx, dtype=torch.int32)
    phrase[:, :, 0], phrase[:, :, 1:4], phrase[:, :, 4] = 49406, 320, 49407
    return PairData(images=torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), tokens=tokens,
                    boxes=torch.cat([xy, (xy + wh).clamp(max=1.0)], -1), box_valid=torch.rand(n, boxes, generator=g) > 0.3,
                    phrase_tokens=phrase, split=torch.zeros(n, dtype=torch.int8), twin=torch.full((n,), -1))


class _Events:
    def log(self, *a, **k):
        pass


class TemplateLoop:
    """The template's loop statement, run `steps` steps at a time in its own namespace."""

    def __init__(self, preset: str, expert: str, data: PairData, optimizer: dict | None = None,
                 device: str = "cpu", overrides: dict | None = None):
        ns, loop = template_namespace(preset, {"EXPERT_VARIANT": expert, **(overrides or {})})
        device = torch.device(device)
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if ns["AMP"] and device.type == "cuda"
               else torch.autocast("cpu", enabled=False))  # as the template sets it up
        ns.update(device=device, data=data, FOLD_SEED=0, events=_Events(), TIME_BUDGET=1e9, amp=amp)
        torch.manual_seed(0)
        ns["model"] = model = ns["ECLIP"](log=lambda *a: None).to(device)
        opt = ns["make_optimizer"](model)
        if optimizer:  # the same groups, another AdamW implementation
            drop = ("foreach", "fused")
            accepted = set(inspect.signature(torch.optim.AdamW).parameters) - set(drop)
            groups = [{k: v for k, v in g.items() if k not in drop} for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, **{k: v for k, v in opt.defaults.items() if k in accepted}, **optimizer)
        ns.update(opt=opt, rng=__import__("random").Random(0), gen=torch.Generator().manual_seed(0),
                  batches=batch_indices(torch.arange(len(data)), ns["BATCH_SIZE"], seed=0), t0=time.time(),
                  step=0, by_time=False, t10=0.0, expert_steps=0, stopped_by="steps", schedule_by="steps")
        model.train()
        self.ns = ns
        self.code = compile(ast.Module(body=[loop], type_ignores=[]), "train.py", "exec")

    def run(self, steps: int) -> None:
        """The loop runs while step < MAX_STEPS: `steps` steps from 0 (the LR schedule spans them)."""
        self.ns["step"], self.ns["MAX_STEPS"] = 0, steps
        exec(self.code, self.ns)


class PlainLoop:
    """What an open_clip user writes for the same towers."""

    def __init__(self, preset: str, data: PairData):
        import open_clip
        ns, _ = template_namespace(preset, {"EXPERT_VARIANT": "none"})
        torch.manual_seed(0)
        self.model = ns["ECLIP"](log=lambda *a: None).clip
        self.loss = open_clip.loss.ClipLoss()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=ns["LR"], betas=(ns["ADAM_BETA1"], ns["ADAM_BETA2"]),
                                     eps=ns["ADAM_EPS"], weight_decay=ns["WEIGHT_DECAY"])
        self.data, self.clip, self.scale_max = data, ns["GRAD_CLIP"], math.log(ns["LOGIT_SCALE_MAX"])
        self.batches = batch_indices(torch.arange(len(data)), ns["BATCH_SIZE"], seed=0)
        self.model.train()

    def run(self, steps: int) -> None:
        for _ in range(steps):
            rows = next(self.batches)
            images, tokens = normalize_images(self.data.images[rows]), self.data.tokens[rows]
            img, txt, scale = self.model(images, tokens)
            loss = self.loss(img, txt, scale)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.opt.step()
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, self.scale_max)
            loss.item()


def profile(loop, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile as prof
    loop.run(2)
    with prof(activities=[ProfilerActivity.CPU]) as p:
        loop.run(steps)
    events = p.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
    out = {e.key: {"self_pct": 100 * e.self_cpu_time_total / total, "calls_per_step": e.count / steps} for e in top}
    opt = [e for e in events if e.key.startswith("Optimizer.step")]
    if opt:
        out["Optimizer.step (total, incl. children)"] = {
            "self_pct": 100 * sum(e.cpu_time_total for e in opt) / total, "calls_per_step": 1.0}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--expert", default="none", help="the template's EXPERT_VARIANT (none = the same work as plain)")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="steps per block")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--variants", default="foreach,fused", help="template optimizer variants: foreach,fused")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="2 blocks of 2 steps, no variants")
    a = ap.parse_args(argv)
    if a.smoke:
        a.blocks, a.steps, a.variants = 2, 2, ""
    torch.set_num_threads(a.threads)
    ns, _ = template_namespace(a.preset, {})
    data = synthetic_data(max(512, 4 * ns["BATCH_SIZE"]), ns["IMAGE_SIZE"], ns["CONTEXT_LENGTH"])
    loops = {"plain open_clip": PlainLoop(a.preset, data), f"template (expert {a.expert})":
             TemplateLoop(a.preset, a.expert, data)}
    for v in filter(None, a.variants.split(",")):
        try:
            loop = TemplateLoop(a.preset, a.expert, data, {v: True})
            loop.run(1)
            loops[f"template, AdamW {v}=True"] = loop
        except (RuntimeError, TypeError, ValueError) as exc:
            print(f"variant {v}: not available here ({exc})", file=sys.stderr)
    if a.expert != "none":
        loops["template (expert none)"] = TemplateLoop(a.preset, "none", data)
    for loop in loops.values():
        loop.run(2)  # warm-up
    times = {k: [] for k in loops}
    for _ in range(a.blocks):
        for name, loop in loops.items():  # interleaved blocks
            t0 = time.perf_counter()
            loop.run(a.steps)
            times[name].append((time.perf_counter() - t0) * 1000 / a.steps)
    ref = statistics.median(times["plain open_clip"])
    rows = [[k, statistics.median(v), min(v), max(v), summary(v)["spread"], statistics.median(v) / ref]
            for k, v in times.items()]
    print(table(f"\ntraining step, preset {a.preset}, batch {ns['BATCH_SIZE']}, {ns['IMAGE_SIZE']} px, "
                f"{a.threads} thread(s); ms/step over {a.blocks} blocks of {a.steps}", 
                ["loop", "median", "min", "max", "spread", "x plain"], rows))
    results = {"ms_per_step": times, "ratio": {k: statistics.median(v) / ref for k, v in times.items()}}
    if a.profile:
        for name in (f"template (expert {a.expert})", "plain open_clip"):
            prof_out = profile(loops[name], max(3, a.steps))
            results[f"profile {name}"] = prof_out
            print(table(f"\nprofile: {name} (self CPU %, calls per step)", ["op", "%", "calls/step"],
                        [[k, v["self_pct"], v["calls_per_step"]] for k, v in prof_out.items()]))
    record("step_ratio", vars(a), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
