"""
eCLIP experiment: train CLIP towers (open_clip) with an eCLIP expert path on grounded
image-caption pairs, for ONE fold of the protocol, then embed that fold's eval pool.

This is the file you edit. The harness in `model/` (data, heatmaps, building blocks, the task
loader) is frozen, and the score is not computed here: the supervisor ranks the embeddings this
script saves against the pairing it keeps to itself (mean rank of the true match, both
directions, lower is better; the random baseline (N-1)/2). The eval set reaches this script as
images and captions in two independent shuffled orders, fresh for every run, so the pairing
cannot be looked up. The protocol is the workspace's, not this file's: by default one process
trains on the training split and is scored on disjoint pools of the validation pairs.

Run:  python train.py   (without AR_TASK_DIR it builds a one-fold task from the default
      dataset and prints a local score: a convenience, not a recorded result)
Env (set by the supervisor): AR_TASK_DIR (this fold's task), AR_RUN_DIR (outputs),
AR_TIME_BUDGET_S (this fold's training seconds; overrides TIME_BUDGET). See model/runtime.py.
"""
import math
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from model import runtime
from model.data import batch_indices, normalize_images
from model.eclip import (ClipConfig, PixelExpert, SeedHeatmapProcessor, build_clip, encode_image, encode_text,
                         pixel_expert_schedule, sample_region, token_pool)
from model.heatmaps import box_heatmaps, patch_coverage

_t_start = time.time()

# ---------------------------------------------------------------------------------------------
# Hyperparameters (edit these directly)
# ---------------------------------------------------------------------------------------------
PRESET = "tiny"              # the preset this file was rendered from (informational)
SEED = 0                     # seeds python, numpy, torch: same seed + same code -> same embeddings (CPU)
FOLD_SEED_OFFSET = 1000      # fold k trains with seed SEED + FOLD_SEED_OFFSET * k

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
ADAM_BETA1 = 0.9             # AdamW beta1
ADAM_BETA2 = 0.98            # AdamW beta2 (CLIP: 0.98; torch's default 0.999)
ADAM_EPS = 1e-6              # AdamW epsilon (CLIP: 1e-6)
WARMUP_STEPS = 30            # linear warm-up, then cosine decay to 0 at MAX_STEPS
MAX_STEPS = 300              # step budget of this fold (the run's main budget: keeps it deterministic)
TIME_BUDGET = 100.0          # training seconds of this fold; a safety net (AR_TIME_BUDGET_S overrides)
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
SEED_EXPERT_HEADS = 4        # seed: attention heads of the heatmap processor (its width is EMBED_DIM)
PIXEL_EXPERT_DIM = 256       # pixel: width of the AlphaMask encoder
PIXEL_EXPERT_HEADS = 8       # pixel: its attention heads
COLD_START_RECON_WEIGHT = 0.3  # pixel: first 10 % of steps, loss = (1 - w) * CLIP + w * reconstruction

# output
EVAL_BATCH_SIZE = 256        # batch size for embedding the eval pool
SAVE_CHECKPOINT = False      # write RUN_DIR/model.pt

TIME_BUDGET = runtime.time_budget(TIME_BUDGET)

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
            self.expert = SeedHeatmapProcessor(EMBED_DIM, PATCH_SIZE, heads=SEED_EXPERT_HEADS)
        elif EXPERT_VARIANT == "pixel":
            self.expert = PixelExpert(PATCH_SIZE, dim=PIXEL_EXPERT_DIM, heads=PIXEL_EXPERT_HEADS)
        elif EXPERT_VARIANT in ("tokens", "none"):
            self.expert = None
        else:
            raise ValueError(f"EXPERT_VARIANT must be seed, pixel, tokens or none; got {EXPERT_VARIANT!r}")

    def encode_image(self, images):
        return encode_image(self.clip, images)

    def encode_text(self, tokens):
        return encode_text(self.clip, tokens)


def clip_loss(img, txt, scale):
    """CLIP's contrastive loss: cosine similarities times the logit scale, then cross-entropy
    with the matching pair as the target, images -> captions and captions -> images, averaged."""
    img = F.normalize(img, dim=-1)
    txt = F.normalize(txt, dim=-1)
    logits = scale * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


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
        return (1 - COLD_START_RECON_WEIGHT) * clip_loss(img, txt, scale) + COLD_START_RECON_WEIGHT * recon
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
    fused = {"fused": True} if device.type == "cuda" else {}   # one kernel for all parameters on a GPU
    return torch.optim.AdamW(list(groups.values()), lr=LR, betas=(ADAM_BETA1, ADAM_BETA2), eps=ADAM_EPS, **fused)


def lr_at(step, time_frac=None):
    """Linear warm-up, then cosine to 0 at MAX_STEPS; with `time_frac` (share of the time budget
    used), cosine to 0 at whichever budget runs out first."""
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
# Setup: device, this fold's task (training pairs + the unpaired eval pool)
# ---------------------------------------------------------------------------------------------
RUN_DIR = runtime.run_dir()
device = runtime.pick_device()
task = runtime.load_task(IMAGE_SIZE, CONTEXT_LENGTH)
data = task.train
FOLD_SEED = SEED + FOLD_SEED_OFFSET * task.fold
runtime.seed_everything(FOLD_SEED)
amp = torch.autocast("cuda", dtype=torch.bfloat16) if (AMP and device.type == "cuda") else torch.autocast("cpu", enabled=False)
print(f"preset {PRESET} | device {runtime.device_name(device)} | expert {EXPERT_VARIANT} | fold {task.fold + 1}/"
      f"{task.num_folds} ({task.split}): {len(data)} training pairs, eval pool {len(task.eval_tokens)} "
      f"| budget {MAX_STEPS} steps, {TIME_BUDGET:.0f} s training", flush=True)


def to_device(rows):
    return {
        "images": normalize_images(data.images[rows].to(device, non_blocking=True)),
        "tokens": data.tokens[rows].to(device),
        "boxes": data.boxes[rows].to(device),
        "box_valid": data.box_valid[rows].to(device),
        "phrase_tokens": data.phrase_tokens[rows].to(device),
    }


# ---------------------------------------------------------------------------------------------
# Training loop
# ---------------------------------------------------------------------------------------------
events = runtime.EventLog(RUN_DIR)
model = ECLIP().to(device)
opt = make_optimizer(model)
rng = random.Random(FOLD_SEED)                       # expert-step coin flips
gen = torch.Generator().manual_seed(FOLD_SEED)       # region choice
batches = batch_indices(torch.arange(len(data)), BATCH_SIZE, seed=FOLD_SEED)
with torch.no_grad():
    model.clip.logit_scale.clamp_(0, math.log(LOGIT_SCALE_MAX))
model.train()
t0 = time.time()
step, by_time, t10, expert_steps, stopped_by, schedule_by = 0, False, 0.0, 0, "steps", "steps"
while step < MAX_STEPS:
    batch = to_device(next(batches))
    elapsed = time.time() - t0
    # too slow to reach MAX_STEPS within the time budget (judged from the speed after step 10)?
    # then anneal by time from here on, so a cut-short run still ends at LR 0 (not reproducible)
    if step == 10:
        t10 = elapsed
    if step > 10 and not by_time:
        by_time = t10 + (elapsed - t10) / (step - 10) * (MAX_STEPS - 10) > TIME_BUDGET
        schedule_by = "time" if by_time else schedule_by
    for g in opt.param_groups:
        g["lr"] = lr_at(step, elapsed / TIME_BUDGET if by_time else None) * g["lr_mult"]
    use_expert = rng.random() < expert_prob_at(step)
    expert_steps += use_expert
    with amp:
        loss = compute_loss(model, batch, step, use_expert, gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if GRAD_CLIP > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    opt.step()
    with torch.no_grad():  # as open_clip's training loop: clamp the learnt scale right after the step
        model.clip.logit_scale.clamp_(0, math.log(LOGIT_SCALE_MAX))
    loss_f = loss.item()
    if not math.isfinite(loss_f):
        events.log(step + 1, 0.0 if math.isnan(loss_f) else loss_f, force=True)
        runtime.fail(f"loss is {loss_f} at step {step} (LR={LR}); stopping")
    step += 1
    events.log(step, loss_f, force=(step == 1))
    if time.time() - t0 >= TIME_BUDGET:
        stopped_by = "time"
        break
train_seconds = time.time() - t0
events.log(step, loss_f, force=True)
events.close()
if SAVE_CHECKPOINT:
    torch.save({"state_dict": model.state_dict()}, RUN_DIR / "model.pt")

# ---------------------------------------------------------------------------------------------
# Embed the eval pool (rows in the task's order) and hand the embeddings to the supervisor
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def embed(encode, inputs, prep=None):
    """encode() over inputs in batches of EVAL_BATCH_SIZE -> float32 CPU [len(inputs), EMBED_DIM], row r
    for row r. Batches follow the rows' content, not the run's secret order, so a row always shares its
    batch with the same rows and a rerun's embeddings are bit-identical."""
    order, out = runtime.content_order(inputs), None
    for s in range(0, len(inputs), EVAL_BATCH_SIZE):
        rows = order[s:s + EVAL_BATCH_SIZE]
        x = inputs[rows].to(device)
        y = encode(prep(x) if prep else x).float().cpu()
        out = y.new_empty(len(inputs), y.shape[1]) if out is None else out
        out[rows] = y
    return out


model.eval()  # float32 (no autocast): bf16 similarities would tie
t_eval = time.time()
image_emb = embed(model.encode_image, task.eval_images, prep=normalize_images)
text_emb = embed(model.encode_text, task.eval_tokens)
local = runtime.save_embeddings(image_emb, text_emb)   # the supervisor scores these

# ---------------------------------------------------------------------------------------------
# metrics.json: informational facts of this fold's run (the score is the supervisor's)
# ---------------------------------------------------------------------------------------------
metrics = dict(
    fold=task.fold,
    num_folds=task.num_folds,
    split=task.split,
    steps=step,
    max_steps=MAX_STEPS,
    stopped_by=stopped_by,
    schedule_by=schedule_by,
    train_seconds=round(train_seconds, 3),
    embed_seconds=round(time.time() - t_eval, 3),
    loss=loss_f,
    logit_scale=model.clip.logit_scale.exp().item(),
    expert_variant=EXPERT_VARIANT,
    expert_steps=expert_steps,
    peak_memory_gb=round(runtime.peak_memory_gb(device), 4),
    device=runtime.device_name(device),
    seed=SEED,
    fold_seed=FOLD_SEED,
    preset=PRESET,
    data_fingerprint=data.fingerprint,
    total_seconds=round(time.time() - _t_start, 3),
    **runtime.versions(),
)
runtime.write_json_atomic(RUN_DIR / "metrics.json", metrics)

print("---")
print(f"fold:             {task.fold + 1} of {task.num_folds} ({task.split}), eval pool {len(task.eval_tokens)}")
print(f"steps:            {step} of {MAX_STEPS} (stopped by {stopped_by}; LR schedule by {schedule_by})")
print(f"loss:             {loss_f:.4f} (logit scale {metrics['logit_scale']:.2f})")
print(f"train_seconds:    {train_seconds:.1f}")
print(f"total_seconds:    {metrics['total_seconds']:.1f}")
print(f"peak_memory_gb:   {metrics['peak_memory_gb']:.3f}")
if local:
    print(f"local mean_rank:  {local['mean_rank']:.3f} (random {local['random_mean_rank']:.1f}; standalone only)")
print(f"wrote embeddings of {len(image_emb)} images and captions to {RUN_DIR}")
