"""
eCLIP experiment: train CLIP towers (open_clip) with an eCLIP expert path on grounded
image-caption pairs, then score image<->caption retrieval with the frozen protocol.

This is the file you edit. The harness in `model/` (data, heatmaps, eval, building blocks) is
frozen: the evaluation cannot be changed from here, and the objective is `mean_rank` (lower is
better; the random baseline (N-1)/2 is printed beside it).

Run:  python train.py
Env (all optional): AR_RUN_DIR, AR_DATA_DIR, AR_CACHE_DIR, AR_PARAMS (JSON overrides of the
constants below), AR_TIME_BUDGET_S (overrides TIME_BUDGET), AR_EVAL_SPLIT (val | test),
AR_TEST_ANNOTATIONS. See model/runtime.py for the contract.
"""
import math
import os
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from model import runtime
from model.data import batch_indices, load_pairs, make_folds, normalize_images
from model.eclip import (ClipConfig, PixelExpert, SeedHeatmapProcessor, build_clip, clamp_logit_scale_,
                         clip_loss, encode_image, encode_text, pixel_expert_schedule, sample_region, token_pool)
from model.eval import evaluate, summarize
from model.heatmaps import box_heatmaps, patch_coverage

_t_start = time.time()

# ---------------------------------------------------------------------------------------------
# Hyperparameters (edit these directly; $AR_PARAMS may override any of them)
# ---------------------------------------------------------------------------------------------
PRESET = "tiny"              # the preset this file was rendered from (informational)
SEED = 0                     # seeds python, numpy, torch: same seed + same code -> same metrics (CPU)
NUM_FOLDS = 1                # k folds over pooled train+val; 1 = the original train/val split

# model: open_clip towers
IMAGE_SIZE = 64              # input side in pixels (images are squashed, not cropped)
PATCH_SIZE = 8               # ViT patch side; the patch grid is IMAGE_SIZE // PATCH_SIZE
VISION_WIDTH = 128           # ViT width
VISION_LAYERS = 4            # ViT blocks
VISION_HEAD_WIDTH = 64       # ViT heads = VISION_WIDTH // VISION_HEAD_WIDTH
TEXT_WIDTH = 128             # text transformer width
TEXT_LAYERS = 2              # text transformer blocks
TEXT_HEADS = 4               # text attention heads
CONTEXT_LENGTH = 48          # text tokens incl. start/end; longer captions are truncated
EMBED_DIM = 128              # shared embedding (projection) size
PRETRAINED = ""              # local open_clip state dict for the whole model ("" = train from scratch)
PRETRAINED_VISUAL = ""       # local state dict for the image tower only (non-strict)
PRETRAINED_TEXT = ""         # local state dict for the text tower only (non-strict)

# optimisation
BATCH_SIZE = 64              # pairs per step
LR = 1e-3                    # peak AdamW learning rate
WEIGHT_DECAY = 0.1           # AdamW weight decay (not on gains, biases, embeddings, logit scale)
WARMUP_STEPS = 30            # linear warm-up, then cosine decay to 0 at MAX_STEPS
MAX_STEPS = 300              # step budget per fold (the run's main budget: keeps it deterministic)
TIME_BUDGET = 100.0          # training seconds for all folds together; a safety net (AR_TIME_BUDGET_S overrides)
GRAD_CLIP = 1.0              # max gradient norm (0 = off)
LOGIT_SCALE_INIT = 30.0      # initial logit scale (CLIP: 1/0.07 = 14.3; 30 learns faster in a short run)
LOGIT_SCALE_MAX = 100.0      # the scale is clamped to <= this after every step (open_clip: 100)
AMP = True                   # bfloat16 autocast on CUDA (ignored on CPU)

# eCLIP expert path
EXPERT_VARIANT = "seed"      # "seed" | "pixel" | "tokens" | "none" (see compute_loss)
EXPERT_PROB = 0.3            # chance that a step adds expert pairs (pixel: the schedule's peak)
EXPERT_WEIGHT = 0.1          # weight of the expert loss (seed, tokens)
MIXUP_ALPHA = 0.3            # Beta(a, a) mixup of image and expert (seed: embeddings; pixel: pixels)
EXPERT_LR_MULT = 1.0         # the expert module's LR as a multiple of LR (original eCLIP: 2.0; the seed: 1.0)

# output
EVAL_BATCH_SIZE = 256        # batch size for embedding the eval pool
SAVE_CHECKPOINT = False      # write RUN_DIR/model.pt (last fold's weights)

runtime.apply_params(globals())
TIME_BUDGET = runtime.time_budget(TIME_BUDGET)
PARAMS = runtime.json_safe(runtime.hyperparameters(globals()))

# ---------------------------------------------------------------------------------------------
# Model: open_clip CLIP towers + the expert module of EXPERT_VARIANT
# ---------------------------------------------------------------------------------------------
CLIP_CFG = ClipConfig(
    embed_dim=EMBED_DIM, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, vision_width=VISION_WIDTH,
    vision_layers=VISION_LAYERS, vision_head_width=VISION_HEAD_WIDTH, context_length=CONTEXT_LENGTH,
    text_width=TEXT_WIDTH, text_heads=TEXT_HEADS, text_layers=TEXT_LAYERS,
    init_logit_scale=math.log(LOGIT_SCALE_INIT),
)


class ECLIP(nn.Module):
    def __init__(self, log=print):
        super().__init__()
        self.clip = build_clip(CLIP_CFG, PRETRAINED, PRETRAINED_VISUAL, PRETRAINED_TEXT, log=log)
        if EXPERT_VARIANT == "seed":
            self.expert = SeedHeatmapProcessor(EMBED_DIM, PATCH_SIZE)
        elif EXPERT_VARIANT == "pixel":
            self.expert = PixelExpert(PATCH_SIZE)
        elif EXPERT_VARIANT in ("tokens", "none"):
            self.expert = None
        else:
            raise ValueError(f"EXPERT_VARIANT must be seed, pixel, tokens or none; got {EXPERT_VARIANT!r}")

    def encode_image(self, images):
        return encode_image(self.clip, images)

    def encode_text(self, tokens):
        return encode_text(self.clip, tokens)


def compute_loss(model, batch, step, use_expert, gen):
    """One contrastive loss over the batch, plus the expert pairs of EXPERT_VARIANT on expert steps."""
    images, tokens = batch["images"], batch["tokens"]
    scale = model.clip.logit_scale.exp()
    want_tokens = use_expert and EXPERT_VARIANT == "tokens"
    out = encode_image(model.clip, images, with_tokens=want_tokens)
    img, patch_tokens = out if want_tokens else (out, None)
    txt = encode_text(model.clip, tokens)

    if EXPERT_VARIANT == "pixel" and step < 0.1 * MAX_STEPS:
        # original eCLIP cold start: reconstruct the image through the expert with an all-ones heatmap
        ones = torch.ones_like(images[:, 0])
        recon = F.mse_loss(model.expert(images, ones), images)
        return 0.7 * clip_loss(img, txt, scale) + 0.3 * recon
    if not use_expert:
        return clip_loss(img, txt, scale)

    # one random region (box + phrase) per pair; rows without boxes fall back to the caption
    region = sample_region(batch["box_valid"], gen)
    rows = torch.arange(images.shape[0], device=images.device)
    has_box = batch["box_valid"][rows, region]
    phrase = torch.where(has_box[:, None], batch["phrase_tokens"][rows, region].long(), tokens)

    if EXPERT_VARIANT == "tokens":
        # heatmap-weighted pooling of the ViT patch tokens, paired with the region's phrase
        one_box = F.one_hot(region, batch["boxes"].shape[1]).bool() & batch["box_valid"]
        weights = patch_coverage(batch["boxes"], one_box, IMAGE_SIZE // PATCH_SIZE).flatten(1)
        expert_img = token_pool(model.clip, patch_tokens, weights)
        loss_exp = clip_loss(expert_img, encode_text(model.clip, phrase), scale)
        return clip_loss(img, txt, scale) + EXPERT_WEIGHT * loss_exp

    heat = box_heatmaps(batch["boxes"], batch["box_valid"], IMAGE_SIZE)  # all regions, max-union
    lam = torch.distributions.Beta(MIXUP_ALPHA, MIXUP_ALPHA).sample((images.shape[0], 1)).to(images.device)
    if EXPERT_VARIANT == "seed":
        # the seed: embedding-space processor, mixup with the image embedding, weighted aux loss
        masked = F.normalize(model.expert(images, heat), dim=-1)
        mixed = F.normalize(lam * F.normalize(img, dim=-1) + (1 - lam) * masked, dim=-1)
        loss_exp = 0.5 * (clip_loss(mixed, encode_text(model.clip, phrase), scale) + clip_loss(masked, txt, scale))
        return clip_loss(img, txt, scale) + EXPERT_WEIGHT * loss_exp

    # pixel (original eCLIP): expert image, pixel mixup, same backbone, extra pairs in one loss
    expert_image = model.expert(images, heat)
    lam = lam[:, :, None, None]
    img_e = encode_image(model.clip, lam * images + (1 - lam) * expert_image)
    return clip_loss(torch.cat([img, img_e]), torch.cat([txt, txt]), scale)


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------------
def make_optimizer(model):
    """AdamW; no weight decay on gains, biases, embeddings and the logit scale; the expert module
    at EXPERT_LR_MULT x the schedule's LR (each group's `lr_mult`)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "logit_scale" in name or "embedding" in name or name.endswith(".bias")
        mult = EXPERT_LR_MULT if name.startswith("expert.") else 1.0
        key = (0.0 if exclude else WEIGHT_DECAY, mult)
        groups.setdefault(key, {"params": [], "weight_decay": key[0], "lr_mult": mult})["params"].append(p)
    return torch.optim.AdamW(list(groups.values()), lr=LR, betas=(0.9, 0.98), eps=1e-6)


def lr_at(step, time_frac=None):
    """Linear warm-up, then cosine to 0 at MAX_STEPS; with `time_frac` (share of the fold's time
    budget used), cosine to 0 at whichever budget runs out first."""
    if step < WARMUP_STEPS:
        return LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, MAX_STEPS - WARMUP_STEPS)
    if time_frac is not None:
        progress = max(progress, time_frac)
    return LR * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def expert_prob_at(step):
    if EXPERT_VARIANT == "none":
        return 0.0
    if EXPERT_VARIANT == "pixel":
        return pixel_expert_schedule(step, MAX_STEPS, peak=EXPERT_PROB)
    return EXPERT_PROB


# ---------------------------------------------------------------------------------------------
# Setup: device, data, folds
# ---------------------------------------------------------------------------------------------
RUN_DIR = runtime.run_dir()
EVAL_SPLIT = runtime.eval_split()
device = runtime.pick_device()
runtime.seed_everything(SEED)
amp = torch.autocast("cuda", dtype=torch.bfloat16) if (AMP and device.type == "cuda") else torch.autocast("cpu", enabled=False)
print(f"preset {PRESET} | device {runtime.device_name(device)} | expert {EXPERT_VARIANT} | split {EVAL_SPLIT} "
      f"| budget {MAX_STEPS} steps/fold, {TIME_BUDGET:.0f} s training", flush=True)

data = load_pairs(IMAGE_SIZE, CONTEXT_LENGTH)
if EVAL_SPLIT == "test":
    # the human-only test command: train once on all of train+val, evaluate once on the test annotations
    test = load_pairs(IMAGE_SIZE, CONTEXT_LENGTH, split="test", annotations=os.environ.get("AR_TEST_ANNOTATIONS"))
    plan = [(torch.arange(len(data)), test, torch.arange(len(test)))]
    n_budget_folds = max(1, NUM_FOLDS)   # same per-fold time share as a val run
else:
    plan = [(tr, data, va) for tr, va in make_folds(data, NUM_FOLDS)]
    n_budget_folds = len(plan)
fold_budget = TIME_BUDGET / n_budget_folds


def to_device(rows):
    return {
        "images": normalize_images(data.images[rows].to(device, non_blocking=True)),
        "tokens": data.tokens[rows].to(device),
        "boxes": data.boxes[rows].to(device),
        "box_valid": data.box_valid[rows].to(device),
        "phrase_tokens": data.phrase_tokens[rows].to(device),
    }


# ---------------------------------------------------------------------------------------------
# Training loop (one model per fold), then the frozen evaluation
# ---------------------------------------------------------------------------------------------
events = runtime.EventLog(RUN_DIR)
fold_metrics, total_steps, train_seconds, stopped_by, expert_steps, schedule_by = [], 0, 0.0, "steps", 0, "steps"
for fold, (train_rows, eval_data, eval_rows) in enumerate(plan):
    runtime.seed_everything(SEED + 1000 * fold)
    model = ECLIP(log=print if fold == 0 else (lambda *_: None)).to(device)
    clamp_logit_scale_(model.clip, LOGIT_SCALE_MAX)
    opt = make_optimizer(model)
    rng = random.Random(SEED + 1000 * fold)                       # expert-step coin flips
    gen = torch.Generator().manual_seed(SEED + 1000 * fold)       # region choice
    batches = batch_indices(train_rows, BATCH_SIZE, seed=SEED + 1000 * fold)
    model.train()
    t0 = time.time()
    step, by_time, t10 = 0, False, 0.0
    while step < MAX_STEPS:
        batch = to_device(next(batches))
        elapsed = time.time() - t0
        # too slow to reach MAX_STEPS within the time budget (judged from the speed after step 10)?
        # then anneal by time from here on, so a cut-short run still ends at LR 0 (not reproducible)
        if step == 10:
            t10 = elapsed
        if step > 10 and not by_time:
            by_time = t10 + (elapsed - t10) / (step - 10) * (MAX_STEPS - 10) > fold_budget
            schedule_by = "time" if by_time else schedule_by
        for g in opt.param_groups:
            g["lr"] = lr_at(step, elapsed / fold_budget if by_time else None) * g["lr_mult"]
        use_expert = rng.random() < expert_prob_at(step)
        expert_steps += use_expert
        with amp:
            loss = compute_loss(model, batch, step, use_expert, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        clamp_logit_scale_(model.clip, LOGIT_SCALE_MAX)
        loss_f = loss.item()
        if not math.isfinite(loss_f):
            events.log(total_steps + step + 1, 0.0 if math.isnan(loss_f) else loss_f, force=True, fold=fold)
            runtime.fail(f"loss is {loss_f} at fold {fold} step {step} (LR={LR}); stopping")
        step += 1
        events.log(total_steps + step, loss_f, force=(step == 1), fold=fold)
        if time.time() - t0 >= fold_budget:
            stopped_by = "time"
            break
    fold_seconds = time.time() - t0
    train_seconds += fold_seconds
    total_steps += step
    events.log(total_steps, loss_f, force=True, fold=fold)

    model.eval()  # evaluation runs in float32 (no autocast): bf16 similarities would tie
    m = evaluate(model.encode_image, model.encode_text, eval_data, eval_rows, device, EVAL_BATCH_SIZE)
    m["steps"], m["train_seconds"] = step, round(fold_seconds, 3)
    fold_metrics.append(m)
    print(f"fold {fold}: {step} steps in {fold_seconds:.1f} s, loss {loss_f:.4f}, mean_rank {m['mean_rank']:.2f} "
          f"of random {m['random_mean_rank']:.1f}, logit scale {model.clip.logit_scale.exp().item():.2f}", flush=True)
events.close()

if SAVE_CHECKPOINT:
    torch.save({"state_dict": model.state_dict(), "params": PARAMS}, RUN_DIR / "model.pt")

# ---------------------------------------------------------------------------------------------
# Summary: metrics.json (or test_metrics.json) and a readable block
# ---------------------------------------------------------------------------------------------
metrics = summarize(fold_metrics)
metrics.update(
    peak_memory_gb=round(runtime.peak_memory_gb(device), 4),
    steps=total_steps,
    train_seconds=round(train_seconds, 3),
    seed=SEED,
    data_fingerprint=data.fingerprint,
    device=runtime.device_name(device),
    expert_variant=EXPERT_VARIANT,
    expert_steps=expert_steps,
    preset=PRESET,
    eval_split=EVAL_SPLIT,
    stopped_by=stopped_by,
    schedule_by=schedule_by,
    total_seconds=round(time.time() - _t_start, 3),
    params=PARAMS,
    **runtime.versions(),
)
out = RUN_DIR / ("test_metrics.json" if EVAL_SPLIT == "test" else "metrics.json")
runtime.write_json_atomic(out, metrics)

print("---")
print(f"mean_rank:        {metrics['mean_rank']:.3f} +- {metrics['mean_rank_std']:.3f} "
      f"(random {metrics['random_mean_rank']:.1f}, n_val {metrics['n_val']}, {len(fold_metrics)} fold(s))")
print(f"i2t R@1/5/10:     {metrics['i2t_r1']:.3f} / {metrics['i2t_r5']:.3f} / {metrics['i2t_r10']:.3f}")
print(f"t2i R@1/5/10:     {metrics['t2i_r1']:.3f} / {metrics['t2i_r5']:.3f} / {metrics['t2i_r10']:.3f}")
if "twin_acc" in metrics:
    print(f"twin_acc:         {metrics['twin_acc']:.3f} (chance 0.5)")
print(f"steps:            {total_steps} (stopped by {stopped_by}; LR schedule by {schedule_by})")
print(f"train_seconds:    {train_seconds:.1f}")
print(f"total_seconds:    {metrics['total_seconds']:.1f}")
print(f"peak_memory_gb:   {metrics['peak_memory_gb']:.3f}")
print(f"wrote {out}")
