"""The eCLIP research harness (frozen) and the editable `train.py` template.

Importing `model` is light (no torch): the server finds the template and presets through it.
The torch code lives in submodules, which the template imports:

    model.synthprints  synthetic prints in the Ukiyo-eVG ODVG layout (numpy + Pillow)
    model.odvg         ODVG JSONL records and dataset layouts (manifest or Ukiyo-eVG tree)
    model.data         tensors, the content-keyed cache, folds, batches          (torch)
    model.heatmaps     box heatmaps and patch coverage                           (torch)
    model.eclip        open_clip towers, CLIP loss, the three expert variants    (torch)
    model.eval         the fixed retrieval protocol                              (torch)
    model.runtime      the child-run contract: env, params, events, metrics      (torch)
    model.presets      presets and `render_template` (torch-free)
    model.prepare      `python -m model.prepare --data DIR`: dataset + cache, outside the sandbox
"""
from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parent
TEMPLATE_PATH = HARNESS_DIR / "template" / "train.py"

__all__ = ["HARNESS_DIR", "TEMPLATE_PATH"]
