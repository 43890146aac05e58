"""The eCLIP research harness (frozen) and the editable `train.py` template.

Importing `model` is light (no torch): the server finds the template and presets through it.
The torch code lives in submodules, which the template imports:

    model.synthprints  synthetic prints in the Ukiyo-eVG ODVG layout (numpy + Pillow)
    model.odvg         ODVG JSONL records and dataset layouts (manifest or Ukiyo-eVG tree)
    model.data         tensors, the content-keyed cache, folds, batches          (torch)
    model.heatmaps     box heatmaps and patch coverage                           (torch)
    model.eclip        open_clip towers, encoders, the three expert variants     (torch)
    model.constants    the `NAME = literal` parser / rewriter (torch-free)
    model.presets      presets, `render_template`, `preset_folds` (torch-free)
    model.tasks        per-fold task folders + keys, `python -m model.tasks build` (torch when building;
                       outside the sandbox)
    model.scoring      the trusted scorer: checks embeddings, the fixed protocol (numpy only)
    model.eval         the protocol's old name (re-exports model.scoring)
    model.runtime      the child-run contract: load_task, save_embeddings, events  (torch)
    model.prepare      `python -m model.prepare --data DIR`: dataset + cache, outside the sandbox
"""
from pathlib import Path

HARNESS_DIR = Path(__file__).resolve().parent
TEMPLATE_PATH = HARNESS_DIR / "template" / "train.py"

__all__ = ["HARNESS_DIR", "TEMPLATE_PATH"]
