"""model/presets.py and the light `model` package (no torch import)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_model_and_presets_without_torch():
    code = ("import sys, model, model.presets, model.odvg, model.synthprints; "
            "t = model.presets.render_template('seed'); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert model.TEMPLATE_PATH.is_file(); print('ok')")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


def test_presets_render_their_constants():
    from model.presets import PRESETS, TEMPLATE_PATH, list_presets, render_template, template_constants
    assert [p["name"] for p in list_presets()] == ["tiny", "seed", "replay"]
    assert render_template("tiny") == TEMPLATE_PATH.read_text()
    for name, values in PRESETS.items():
        text = render_template(name)
        ast.parse(text)
        consts = template_constants(text)
        for k, v in values.items():
            assert consts[k] == v and type(consts[k]) is type(v), (name, k)
    replay = template_constants(render_template("replay"))
    assert (replay["LR"], replay["BATCH_SIZE"], replay["MAX_STEPS"], replay["EMBED_DIM"], replay["EXPERT_PROB"],
            replay["LOGIT_SCALE_MAX"]) == (3e-4, 48, 400, 128, 0.3, 2.0)
    line = next(x for x in render_template("replay").splitlines() if x.startswith("LOGIT_SCALE_MAX"))
    assert "KNOWN BUG" in line
    seed = PRESETS["seed"]
    assert (seed["IMAGE_SIZE"], seed["PATCH_SIZE"], seed["VISION_WIDTH"], seed["MAX_STEPS"], seed["BATCH_SIZE"],
            seed["NUM_FOLDS"]) == (224, 16, 384, 800, 64, 3)
    assert PRESETS["tiny"]["NUM_FOLDS"] == 1


def test_unknown_preset_names_the_valid_ones():
    from model.presets import render_template
    with pytest.raises(ValueError, match="tiny, seed, replay"):
        render_template("huge")
