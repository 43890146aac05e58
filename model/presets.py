"""Presets of the editable template (torch-free: the server imports this without torch).

A preset is a set of values for the UPPERCASE constants at the top of `model/template/train.py`.
`render_template(name)` returns the template text with those lines rewritten (the value changes,
the comment stays unless the preset gives its own), ready to be copied into a workspace as
`train.py`.

  tiny    CPU: 64 px, a 4-layer ViT and a 2-layer text transformer of width 128, one fold (the
          original train/val split), 300 steps of 64 pairs, the `seed` expert variant at p = 0.3;
          a whole experiment in about 100 s on 2 idle cores.
  seed    GPU: the seed's final configuration on open_clip: ViT-S/16 at 224 + a 12-layer
          384-wide text transformer (open_clip ViT-S-16, ~62 M parameters), projection 512,
          LR 2e-4, warm-up 160, 800 steps of 64, the `seed` expert variant at p = 0.8, 3 eval pools (the
          leak-free split protocol; the seed itself used 3 leaky pooled folds).
          Set PRETRAINED / PRETRAINED_VISUAL / PRETRAINED_TEXT to local weights to compare with
          the seed (its towers were pretrained); without them the log says it trains from scratch.
  replay  CPU: the seed's *starting* hyperparameters on the tiny towers: LR 3e-4, batch 48,
          400 steps, projection 128, the `seed` expert variant at p = 0.3, and the seed's own
          logit-scale settings (LOGIT_SCALE_INIT 1/0.07, LOGIT_SCALE_MAX 2.0).

The protocol and its k (eval pools, or folds under the leaky kfold-pooled protocol) are the
workspace's (autoresearch.toml), not train.py constants, so the agent cannot change the split;
`preset_folds(name)` is a preset's suggested k for `init`.
"""
from __future__ import annotations

from pathlib import Path

from .constants import parse_constants, rewrite_constants

TEMPLATE_PATH = Path(__file__).resolve().parent / "template" / "train.py"
BLOCK_END = "TIME_BUDGET = runtime.time_budget(TIME_BUDGET)"  # the constants block ends at this line
# the sizes a tensor cache may be built for (model.prepare, tools/datacache.py)
CACHE_SIZE_BOUNDS = {"IMAGE_SIZE": (16, 2048), "CONTEXT_LENGTH": (4, 1024)}

_TINY = {
    "PRESET": "tiny",
    "IMAGE_SIZE": 64,
    "PATCH_SIZE": 8,
    "VISION_WIDTH": 128,
    "VISION_LAYERS": 4,
    "VISION_HEAD_WIDTH": 64,
    "TEXT_WIDTH": 128,
    "TEXT_LAYERS": 2,
    "TEXT_HEADS": 4,
    "CONTEXT_LENGTH": 48,
    "EMBED_DIM": 128,
    "BATCH_SIZE": 64,
    "LR": 1e-3,
    "WEIGHT_DECAY": 0.1,
    "WARMUP_STEPS": 30,
    "MAX_STEPS": 300,
    "TIME_BUDGET": 100.0,
    "LOGIT_SCALE_INIT": 30.0,
    "LOGIT_SCALE_MAX": 100.0,
    "EXPERT_VARIANT": "seed",
    "EXPERT_PROB": 0.3,
    "EXPERT_WEIGHT": 0.1,
    "MIXUP_ALPHA": 0.3,
}

# k of the protocol a workspace on the preset gets (eval pools of the split protocol) (autoresearch.toml; not a train.py constant)
FOLDS = {"tiny": 1, "seed": 3, "replay": 1}

PRESETS: dict[str, dict] = {
    "tiny": dict(_TINY),
    "seed": {
        **_TINY,
        "PRESET": "seed",
        "IMAGE_SIZE": 224,
        "PATCH_SIZE": 16,
        "VISION_WIDTH": 384,
        "VISION_LAYERS": 12,
        "VISION_HEAD_WIDTH": 64,
        "TEXT_WIDTH": 384,
        "TEXT_LAYERS": 12,
        "TEXT_HEADS": 6,
        "CONTEXT_LENGTH": 77,
        "EMBED_DIM": 512,
        "BATCH_SIZE": 64,
        "LR": 2e-4,
        "WARMUP_STEPS": 160,
        "MAX_STEPS": 800,
        "TIME_BUDGET": 1200.0,
        "LOGIT_SCALE_INIT": 14.285714285714285,
        "EXPERT_VARIANT": "seed",
        "EXPERT_PROB": 0.8,
        "EXPERT_WEIGHT": 0.1,
    },
    "replay": {
        **_TINY,
        "PRESET": "replay",
        "BATCH_SIZE": 48,
        "LR": 3e-4,
        "WARMUP_STEPS": 40,
        "MAX_STEPS": 400,
        "TIME_BUDGET": 120.0,
        "LOGIT_SCALE_INIT": 14.285714285714285,
        "LOGIT_SCALE_MAX": 2.0,
        "EXPERT_VARIANT": "seed",
        "EXPERT_PROB": 0.3,
        "EXPERT_WEIGHT": 0.1,
    },
}

DESCRIPTIONS = {
    "tiny": "CPU: 64 px, small towers (ViT 4 layers, text 2), 1 fold, 300 steps of 64, seed expert p=0.3; "
            "a full experiment in ~100 s on 2 cores",
    "seed": "GPU: ViT-S/16 at 224 + 12-layer text, proj 512, 800 steps of 64, seed expert p=0.8, 3 eval pools",
    "replay": "CPU: the seed's starting hyperparameters (lr 3e-4, batch 48, 400 steps, proj 128, "
              "expert p=0.3) and its logit-scale settings",
}

# comments that replace the template's own on a constant's line
COMMENTS = {
    "seed": {
        "LOGIT_SCALE_INIT": "# initial logit scale (CLIP: 1/0.07, as the seed)",
    },
    "replay": {
        "LOGIT_SCALE_INIT": "# initial logit scale (CLIP: 1/0.07; the seed's value)",
    },
}


def list_presets() -> list[dict]:
    """[{name, description}] for every preset, in a stable order."""
    return [{"name": n, "description": DESCRIPTIONS[n]} for n in PRESETS]


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def preset_folds(name: str) -> int:
    """The number of folds a workspace on preset `name` uses (ValueError for an unknown preset)."""
    get_preset(name)
    return FOLDS[name]


def render_template(preset: str) -> str:
    """The train.py text with the constants block set for `preset` (ValueError for an unknown one)."""
    values = get_preset(preset)
    full = TEMPLATE_PATH.read_text()
    end = full.find(BLOCK_END)
    if end < 0:
        raise RuntimeError(f"template: no `{BLOCK_END}` line after the constants block")
    return rewrite_constants(full[:end], values, COMMENTS.get(preset, {})) + full[end:]


def template_constants(text: str, *, drop_reassigned: bool = False) -> dict:
    """model.constants.parse_constants (kept under this name for its callers)."""
    return parse_constants(text, drop_reassigned=drop_reassigned)
