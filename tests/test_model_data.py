"""model/: synthetic prints, the ODVG loader, heatmaps, patch coverage, cache, folds."""
import json
import math

import numpy as np
import pytest
import torch

from model.data import batch_indices, load_pairs, make_folds
from model.heatmaps import box_heatmaps, patch_coverage
from model.odvg import ODVGError, read_odvg, resolve_dataset, write_manifest
from model.synthprints import SynthConfig, generate_split, write_dataset, write_ukiyoe_tree

SMALL = SynthConfig(n_train=24, n_val=12, n_test=8, image_size=32)


# ---------------------------------------------------------------------------------- heatmaps

def _reference_heatmap(boxes, size, floor=0.02):
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            px, py = (x + 0.5) / size, (y + 0.5) / size
            v = 0.0
            for x1, y1, x2, y2 in boxes:
                sx, sy = max((x2 - x1) / 2, floor), max((y2 - y1) / 2, floor)
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                v = max(v, math.exp(-0.5 * ((px - cx) / sx) ** 2 - 0.5 * ((py - cy) / sy) ** 2))
            out[y, x] = v
    return out


def test_heatmap_matches_gaussian_per_box_union_by_max():
    boxes = [[0.1, 0.2, 0.5, 0.4], [0.6, 0.6, 0.605, 0.9], [0.0, 0.0, 0.0, 0.0]]  # 2nd: sigma floor; 3rd invalid
    valid = torch.tensor([[True, True, False]])
    hm = box_heatmaps(torch.tensor([boxes]), valid, 16)[0].numpy()
    ref = _reference_heatmap(boxes[:2], 16)
    assert np.allclose(hm, ref, atol=1e-5)
    assert hm.max() <= 1.0 and hm.min() >= 0.0
    # peak at the centre of the first box is ~1
    assert _reference_heatmap([boxes[0]], 16).max() > 0.9


def test_heatmap_without_boxes_is_zero():
    hm = box_heatmaps(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool), 8)
    assert hm.shape == (2, 8, 8) and hm.abs().sum() == 0


def test_patch_coverage_exact():
    # grid 4: patch edges at 0, .25, .5, .75, 1
    boxes = torch.tensor([[[0.25, 0.25, 0.75, 0.625], [0.0, 0.0, 0.125, 0.25]]])
    cov = patch_coverage(boxes, torch.tensor([[True, True]]), 4)[0]
    expect = torch.zeros(4, 4)
    expect[1, 1:3] = 1.0          # fully covered rows .25-.5
    expect[2, 1:3] = 0.5          # half of rows .5-.75
    expect[0, 0] = 0.5            # second box: half of patch (0,0)
    assert torch.allclose(cov, expect, atol=1e-6)
    # brute force by supersampling for a random box
    b = torch.tensor([[[0.13, 0.31, 0.77, 0.58]]])
    cov = patch_coverage(b, torch.tensor([[True]]), 4)[0]
    s = 400
    c = (torch.arange(s) + 0.5) / s
    inside = ((c[None, :] >= 0.13) & (c[None, :] < 0.77) & (c[:, None] >= 0.31) & (c[:, None] < 0.58)).float()
    ref = inside.reshape(4, s // 4, 4, s // 4).mean((1, 3))
    assert torch.allclose(cov, ref, atol=0.01)


# ---------------------------------------------------------------------------------- generator

def test_generator_is_deterministic_and_subsets_regenerate():
    a = list(generate_split(SMALL, "train"))
    b = list(generate_split(SMALL, "train"))
    assert all(x[0] == y[0] and np.array_equal(x[1], y[1]) and x[2] == y[2] for x, y in zip(a, b))
    part = list(generate_split(SMALL, "train", 5, 9))
    assert [p[0] for p in part] == [x[0] for x in a[5:9]]
    assert all(np.array_equal(p[1], x[1]) for p, x in zip(part, a[5:9]))
    other = list(generate_split(SynthConfig(n_train=24, n_val=12, n_test=8, image_size=32, seed=1), "train"))
    assert any(x[2] != y[2] for x, y in zip(a, other))
    assert SMALL.fingerprint() == SynthConfig(n_train=24, n_val=12, n_test=8, image_size=32).fingerprint()


def test_records_follow_the_schema_and_knobs():
    recs = [r for _, _, r in generate_split(SynthConfig(n_train=200, n_val=2, n_test=2, image_size=32), "train")]
    n_regions = [len(r["grounding"]["regions"]) for r in recs]
    assert 1 <= min(n_regions) and max(n_regions) <= 5
    for r in recs:
        assert r["width"] == r["height"] == 32
        for reg in r["grounding"]["regions"]:
            x1, y1, x2, y2 = reg["bbox"]
            assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32
            assert reg["phrase"] in r["grounding"]["caption"]
    # mention < 1: some objects are drawn but not named (fewer regions than objects, on average)
    assert np.mean(n_regions) < 3.5 * 0.9


def test_twins_differ_only_in_where_things_are():
    items = list(generate_split(SynthConfig(n_train=40, n_val=2, n_test=2, image_size=32), "train"))
    strip = ("in the upper left", "at the top", "in the upper right", "on the left", "in the center",
             "on the right", "in the lower left", "at the bottom", "in the lower right")
    for j in range(0, 40, 2):
        (na, ia, a), (nb, ib, b) = items[j], items[j + 1]
        assert a["twin"] == nb and b["twin"] == na
        ca, cb = a["grounding"]["caption"], b["grounding"]["caption"]
        assert ca != cb

        def what(c):
            for s in strip:
                c = c.replace(" " + s, "")
            return c
        assert what(ca) == what(cb)          # same objects, colours, sizes, order
        assert not np.array_equal(ia, ib)


# ---------------------------------------------------------------------------------- ODVG loader

def _write(tmp_path, lines, name="a.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_loader_rules_and_variants(tmp_path):
    good = {"filename": "x.jpg", "width": 100, "height": 50,
            "grounding": {"caption": "a cat", "regions": [{"bbox": [10, 5, 60, 40], "phrase": "cat"},
                                                          {"bbox": [5, 5, 5, 30], "phrase": "degenerate"},
                                                          {"bbox": [[0, 0, 200, 80], [1, 1, 2, 2]], "phrase": "two"}]}}
    no_regions = {"file_name": "y.jpg", "width": 10, "height": 10, "grounding": {"caption": "c", "regions": []}}
    no_caption = {"filename": "z.jpg", "width": 10, "height": 10, "grounding": {"regions": [{"bbox": [1, 1, 2, 2]}]}}
    alias = {"file_name": "w.jpg", "width": 10, "height": 10,
             "grounding": {"caption": "w", "regions": [{"bbox": [1, 1, 5, 5], "phrase": "w"}]}}
    recs = read_odvg(_write(tmp_path, [json.dumps(o) for o in (good, no_regions, no_caption, alias)] + [""]))
    assert [r.filename for r in recs] == ["x.jpg", "w.jpg"]
    r = recs[0]
    assert r.boxes == [[10, 5, 60, 40], [0, 0, 100, 50], [1, 1, 2, 2]]   # degenerate dropped, clipped to image
    assert r.phrases == ["cat", "two", "two"]


@pytest.mark.parametrize("line, msg", [
    ('{"filename": "a.jpg", "width": 10', "not valid JSON"),
    ('{"width": 10, "height": 10, "grounding": {}}', "filename"),
    ('{"filename": "a.jpg", "width": 0, "height": 10, "grounding": {}}', "width"),
    ('{"filename": "a.jpg", "width": 9, "height": 9, "grounding": {"caption": "c", "regions": [{"bbox": [1, 2]}]}}',
     "bbox"),
    ('[1, 2]', "JSON object"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, msg):
    ok = json.dumps({"filename": "a.jpg", "width": 9, "height": 9,
                     "grounding": {"caption": "c", "regions": [{"bbox": [1, 1, 3, 3], "phrase": "p"}]}})
    p = _write(tmp_path, [ok, ok, line])
    with pytest.raises(ODVGError) as e:
        read_odvg(p)
    assert f"{p}:3:" in str(e.value) and msg in str(e.value)


def test_ukiyoe_tree_loads_like_the_seed_layout(tmp_path):
    root = write_ukiyoe_tree(tmp_path / "ukiyo", SMALL)
    lay = resolve_dataset(root)
    assert lay.kind == "ukiyoe" and lay.test.name == "ukiyoe_vg_test_annotated.jsonl"
    data = load_pairs(32, 32, data_dir=root, log=lambda *a: None)
    assert len(data) == 36 and data.images.shape == (36, 3, 32, 32) and data.images.dtype == torch.uint8
    assert not data.has_twins
    assert (data.box_valid.sum(1) >= 1).all()
    assert 0.0 <= float(data.boxes.min()) and float(data.boxes.max()) <= 1.0
    test = load_pairs(32, 32, data_dir=root, split="test", log=lambda *a: None)
    assert len(test) == 8
    m = json.loads(write_manifest(root).read_text())
    assert m["test"] == "annotations/Ukiyo-eVG/ukiyoe_vg_test_annotated.jsonl" and m["images"] == "images"
    assert resolve_dataset(root).kind == "manifest"


def test_missing_dataset_and_missing_images_are_clear(tmp_path):
    with pytest.raises(ODVGError, match="not a dataset"):
        resolve_dataset(tmp_path)
    root = write_dataset(tmp_path / "d", SMALL)
    (root / "images" / "val_000003.png").unlink()
    with pytest.raises(ODVGError, match="missing"):
        load_pairs(32, 32, data_dir=root, log=lambda *a: None)


# ---------------------------------------------------------------------------------- cache, folds

def test_cache_goes_to_cache_dir_never_into_the_data_dir(tmp_path):
    root = write_dataset(tmp_path / "d", SMALL)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    cache = tmp_path / "cache"
    a = load_pairs(32, 32, data_dir=root, cache_dir=cache, log=lambda *a: None)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    files = sorted(p.name for p in cache.glob("*.npz"))
    assert len(files) == 2 and files[0].startswith(a.fingerprint)
    b = load_pairs(32, 32, data_dir=root, cache_dir=cache, log=lambda *a: None)   # from the cache
    assert torch.equal(a.images, b.images) and torch.equal(a.tokens, b.tokens) and torch.equal(a.twin, b.twin)
    assert a.has_twins and (a.twin[a.twin] == torch.arange(len(a))).all()
    # train/val/test layout: test annotations live apart, in heldout/
    lay = resolve_dataset(root)
    assert lay.test == root / "heldout" / "test.jsonl" and lay.test.is_file()


def test_folds(tmp_path):
    root = write_dataset(tmp_path / "d", SMALL)
    data = load_pairs(32, 32, data_dir=root, log=lambda *a: None)
    (tr, va), = make_folds(data, 1)
    assert len(tr) == 24 and len(va) == 12 and (data.split[va] == 1).all()
    folds = make_folds(data, 3)
    allv = torch.cat([v for _, v in folds]).sort().values
    assert torch.equal(allv, torch.arange(36))
    for t, v in folds:
        assert len(set(t.tolist()) & set(v.tolist())) == 0
        assert set(data.twin[v].tolist()) <= set(v.tolist())      # twins stay together
    again = make_folds(data, 3)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(folds, again))
    b1 = next(batch_indices(tr, 8, seed=3))
    assert torch.equal(b1, next(batch_indices(tr, 8, seed=3))) and len(set(b1.tolist())) == 8


def test_prepare_generates_a_dataset_and_its_cache(tmp_path):
    from model.prepare import main
    root = tmp_path / "new"
    assert main(["--data", str(root), "--synthetic", "small"]) == 0
    lay = resolve_dataset(root)
    assert lay.kind == "manifest" and lay.test == root / "heldout" / "test.jsonl"
    m = json.loads((root / "dataset.json").read_text())
    assert {"name", "train", "val", "test", "images"} <= set(m)
    caches = sorted(p.name for p in (root / ".cache").glob("*.npz"))
    assert len(caches) == 2 and any("-64px-" in c for c in caches) and any("-tok48-" in c for c in caches)
    # a run then reads the cache read-only and writes nothing into the data folder
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    data = load_pairs(64, 48, data_dir=root, log=lambda *a: None)
    assert len(data) == 640 and sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert main(["--data", str(root), "--preset", "nope"]) == 2
