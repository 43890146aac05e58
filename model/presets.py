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
          LR 2e-4, warm-up 160, 800 steps of 64, the `seed` expert variant at p = 0.8, 3 folds.
          Set PRETRAINED / PRETRAINED_VISUAL / PRETRAINED_TEXT to local weights to compare with
          the seed (its towers were pretrained); without them the log says it trains from scratch.
  replay  CPU: the seed's *starting* hyperparameters on the tiny towers: LR 3e-4, batch 48,
          400 steps, projection 128, the `seed` expert variant at p = 0.3, and its logit-scale cap
          of 2: the known bug (see the comment it renders), for checking that an agent finds it.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

TEMPLATE_PATH = Path(__file__).resolve().parent / "template" / "train.py"
BLOCK_END = "runtime.apply_params(globals())"  # the constants block ends at this line
# the sizes a tensor cache may be built for (model.prepare, tools/datacache.py)
CACHE_SIZE_BOUNDS = {"IMAGE_SIZE": (16, 2048), "CONTEXT_LENGTH": (4, 1024)}

_TINY = {
    "PRESET": "tiny",
    "NUM_FOLDS": 1,
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

PRESETS: dict[str, dict] = {
    "tiny": dict(_TINY),
    "seed": {
        **_TINY,
        "PRESET": "seed",
        "NUM_FOLDS": 3,
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
    "seed": "GPU: ViT-S/16 at 224 + 12-layer text, proj 512, 800 steps of 64, seed expert p=0.8, 3 folds",
    "replay": "CPU: the seed's starting hyperparameters (lr 3e-4, batch 48, 400 steps, proj 128, "
              "expert p=0.3) with its logit-scale cap of 2 (the known bug)",
}

# comments that replace the template's own on a constant's line
COMMENTS = {
    "seed": {
        "LOGIT_SCALE_INIT": "# initial logit scale (CLIP: 1/0.07, as the seed)",
    },
    "replay": {
        "LOGIT_SCALE_MAX": "# KNOWN BUG kept from the seed: caps the logit scale at 2 (open_clip: 100)",
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


def _literal(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        r = repr(v)
        return r if ("e" in r or "." in r or "inf" in r or "nan" in r) else r + ".0"
    return repr(v)


def render_template(preset: str) -> str:
    """The train.py text with the constants block set for `preset` (ValueError for an unknown one)."""
    values = get_preset(preset)
    comments = COMMENTS.get(preset, {})
    full = TEMPLATE_PATH.read_text()
    end = full.find(BLOCK_END)
    if end < 0:
        raise RuntimeError(f"template: no `{BLOCK_END}` line after the constants block")
    text, rest = full[:end], full[end:]
    for name, value in values.items():
        pat = re.compile(rf"^{name}[ \t]*=[ \t]*(?P<val>[^#\n]*?)(?P<pad>[ \t]*)(?P<comment>#[^\n]*)?$", re.M)
        hits = pat.findall(text)
        if len(hits) != 1:
            raise RuntimeError(f"template: expected one line `{name} = ...`, found {len(hits)}")

        def sub(m, name=name, value=value):
            old = m.group("val").strip()
            try:
                same = type(ast.literal_eval(old)) is type(value) and ast.literal_eval(old) == value
            except (ValueError, SyntaxError):
                same = False
            code = f"{name} = {old if same else _literal(value)}"
            comment = comments.get(name) or m.group("comment")
            if not comment:
                return code
            col = m.start("comment") - m.start()
            return (code.ljust(col) if len(code) < col else code + "  ") + comment

        text = pat.sub(sub, text, count=1)
    return text + rest


def template_constants(text: str, *, drop_reassigned: bool = False) -> dict:
    """Parse the top-level `NAME = literal` lines of a template text (for tests and tools; no exec).
    A later non-literal assignment (`NAME = f(NAME)`, `NAME += 1`) keeps the declared literal, or
    with `drop_reassigned` leaves the name out: its value at run time is unknown without running it."""
    out = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            if drop_reassigned:
                out.pop(node.target.id, None)
            continue
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id.isupper():
            try:
                out[target.id] = ast.literal_eval(value)
            except ValueError:
                if drop_reassigned:
                    out.pop(target.id, None)
    return out
