"""model/tasks.py: per-fold task folders that carry no pairing, their keys, the CLI; and the new
route (tasks -> embeddings -> score_fold) scoring the same trained weights exactly like the old
in-process evaluation did."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.data import load_pairs, make_folds, normalize_images
from model.synthprints import SynthConfig, write_dataset
from model.tasks import TASK_FILES, TaskError, build_tasks, key_path, main, read_manifest, task_dir

ROOT = Path(__file__).resolve().parents[1]
SMALL = SynthConfig(n_train=40, n_val=20, n_test=12, image_size=32)
quiet = lambda *a: None  # noqa: E731


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("tasks") / "data", SMALL)


@pytest.fixture(scope="module")
def pairs(data_dir):
    return load_pairs(32, 24, data_dir=data_dir, log=quiet)


def _build(data_dir, out, **kw):
    args = dict(image_size=32, context_length=24, num_folds=1, split="val", test_annotations=None, out_dir=out,
                log=quiet)
    args.update(kw)
    return build_tasks(data_dir, None, **args)


def _rows_of(images: np.ndarray, pool: torch.Tensor) -> list[int]:
    """Row of each image in `pool` (synthetic images are all distinct), -1 if absent."""
    index = {pool[i].numpy().tobytes(): i for i in range(len(pool))}
    return [index.get(im.tobytes(), -1) for im in images]


@pytest.mark.parametrize("k", [1, 3])
def test_layout_and_no_pairing_in_the_task(tmp_path, data_dir, pairs, k):
    out = tmp_path / "t"
    meta = _build(data_dir, out, num_folds=k)
    assert read_manifest(out) == meta == json.loads((out / "tasks.json").read_text())
    assert meta["num_folds"] == k and meta["split"] == "val" and meta["data_fingerprint"] == pairs.fingerprint
    folds = make_folds(pairs, k)
    assert meta["n_eval"] == [len(va) for _, va in folds] and meta["n_train"] == [len(tr) for tr, _ in folds]
    assert sorted(p.name for p in out.iterdir()) == sorted(["tasks.json"] + [f"fold-{i}" for i in range(k)])
    for f, (tr, va) in enumerate(folds):
        t = task_dir(out, f)
        assert sorted(p.name for p in t.iterdir()) == sorted(TASK_FILES)      # no key, nothing else
        assert sorted(p.name for p in t.parent.iterdir()) == ["key.npz", "task"]
        assert (key_path(out, f).stat().st_mode & 0o077) == 0
        info = json.loads((t / "task.json").read_text())
        assert info == {"format": 1, "fold": f, "num_folds": k, "split": "val", "n_train": len(tr),
                        "n_eval": len(va), "image_size": 32, "context_length": 24,
                        "data_fingerprint": pairs.fingerprint}
        a = {n[:-4]: np.load(t / n, allow_pickle=False) for n in TASK_FILES if n.endswith(".npy")}
        assert a["train_images"].dtype == np.uint8 and a["train_images"].shape == (len(tr), 3, 32, 32)
        assert a["eval_images"].dtype == np.uint8 and a["eval_images"].shape == (len(va), 3, 32, 32)
        assert a["eval_tokens"].shape == (len(va), 24)
        # the training pairs are exactly the fold's, with their boxes and phrases; none of the pool
        assert np.array_equal(a["train_images"], pairs.images[tr].numpy())
        assert np.array_equal(a["train_tokens"], pairs.tokens[tr].numpy())
        assert np.array_equal(a["train_box_valid"], pairs.box_valid[tr].numpy())
        assert np.array_equal(a["train_twin"], pairs.twin_within(tr).numpy())
        assert set(_rows_of(a["eval_images"], pairs.images)) == set(va.tolist())
        assert not set(_rows_of(a["train_images"], pairs.images)) & set(va.tolist())
        # the eval pool's orders: secret, not the pool's, not each other's; the key undoes them
        key = np.load(key_path(out, f))
        ia, tb = key["image_pool"], key["text_pool"]
        assert not np.array_equal(ia, np.arange(len(va))) and not np.array_equal(ia, tb)
        assert np.array_equal(a["eval_images"], pairs.images[va[ia]].numpy())
        assert np.array_equal(a["eval_tokens"], pairs.tokens[va[tb]].numpy())
        assert np.array_equal(key["twin"], pairs.twin_within(va).numpy()) and (key["twin"] >= 0).any()
        # row r of images and row r of captions are (almost never) a pair
        assert (ia == tb).mean() < 0.5


def test_orders_are_secret_and_the_build_is_idempotent(tmp_path, data_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    _build(data_dir, a)
    _build(data_dir, b)
    ka, kb = np.load(key_path(a, 0)), np.load(key_path(b, 0))
    assert not np.array_equal(ka["image_pool"], kb["image_pool"])     # os.urandom, not a fixed seed
    before = key_path(a, 0).stat().st_mtime_ns
    assert _build(data_dir, a) == read_manifest(a)                     # complete: nothing rebuilt
    assert key_path(a, 0).stat().st_mtime_ns == before
    with pytest.raises(TaskError, match="different task build"):
        _build(data_dir, a, num_folds=2)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    # an incomplete leftover (no tasks.json) is replaced
    (b / "tasks.json").unlink()
    _build(data_dir, b)
    assert read_manifest(b) is not None


def test_test_split_is_one_task_on_all_of_train_val(tmp_path, data_dir, pairs):
    out = tmp_path / "t"
    meta = _build(data_dir, out, split="test", num_folds=3,
                  test_annotations=str(data_dir / "heldout" / "test.jsonl"))
    assert meta["num_folds"] == 1 and meta["n_train"] == [len(pairs)] and meta["n_eval"] == [12]
    test = load_pairs(32, 24, data_dir=data_dir, split="test", log=quiet)
    t = task_dir(out, 0)
    assert np.array_equal(np.load(t / "train_images.npy"), pairs.images.numpy())
    ev = np.load(t / "eval_images.npy")
    key = np.load(key_path(out, 0))
    assert np.array_equal(ev, test.images[key["image_pool"]].numpy())
    assert json.loads((t / "task.json").read_text())["split"] == "test"


def test_cli_errors_are_one_line(tmp_path, data_dir, capsys):
    base = ["build", "--data", str(data_dir), "--context-length", "24", "--out", str(tmp_path / "o")]
    assert main(base + ["--image-size", "8"]) == 2
    assert capsys.readouterr().err.strip() == "error: image_size 8 is out of range (16 to 2048)"
    assert main(base + ["--image-size", "32", "--folds", "0"]) == 2
    assert "error: folds 0 is out of range" in capsys.readouterr().err
    assert main(["build", "--data", str(tmp_path / "nope"), "--image-size", "32", "--context-length", "24",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "dataset folder not found" in err[-1]
    assert not (tmp_path / "o").exists()
    p = subprocess.run([sys.executable, "-m", "model.tasks", "build", *base[1:], "--image-size", "32", "--folds", "2"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    line = json.loads(p.stdout)
    assert line["num_folds"] == 2 and line["out"] == str(tmp_path / "o") and read_manifest(tmp_path / "o")


# ---------------------------------------------------------------------------------------------
# The new route scores exactly like the old in-process evaluation

def _old_evaluate(model, data, idx):
    """model.eval.evaluate as it was before the scorer moved out (torch, true pairs in order)."""
    with torch.no_grad():
        img = torch.cat([model.encode_image(normalize_images(data.images[idx[s:s + 16]])) for s in range(0, len(idx), 16)])
        txt = torch.cat([model.encode_text(data.tokens[idx[s:s + 16]]) for s in range(0, len(idx), 16)])
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    sim = img @ txt.T

    def ranks(s):
        true = s[torch.arange(len(s)), torch.arange(len(s))][:, None]
        return ((s > true).sum(1).double() + 0.5 * ((s == true).sum(1).double() - 1.0)).numpy()
    out = {"n_val": len(idx), "random_mean_rank": (len(idx) - 1) / 2.0}
    for d, r in (("i2t", ranks(sim)), ("t2i", ranks(sim.T.contiguous()))):
        out.update({f"{d}_mean_rank": r.mean(), f"{d}_median_rank": float(np.median(r)), f"{d}_r1": (r < 1).mean(),
                    f"{d}_r5": (r < 5).mean(), f"{d}_r10": (r < 10).mean()})
    out["mean_rank"] = (out["i2t_mean_rank"] + out["t2i_mean_rank"]) / 2
    twin = data.twin_within(idx)
    rows = torch.nonzero(twin >= 0).flatten()
    own, other = sim[rows, rows], sim[rows, twin[rows]]
    out["twin_acc"] = float(((own > other).double() + 0.5 * (own == other).double()).mean())
    return out


def test_scorer_equals_the_old_in_process_figure(tmp_path, data_dir, pairs, monkeypatch):
    from model import runtime
    from model.eclip import ClipConfig, build_clip, encode_image, encode_text
    from model.scoring import score_fold

    out = tmp_path / "t"
    _build(data_dir, out, num_folds=3)
    torch.manual_seed(0)
    clip = build_clip(ClipConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1,
                                 vision_head_width=16, context_length=24, text_width=32, text_heads=2, text_layers=1),
                      log=quiet)
    opt = torch.optim.AdamW(clip.parameters(), lr=3e-3)
    tr, va = make_folds(pairs, 3)[1]
    for s in range(5):                                   # a few steps of CLIP training on fold 1
        rows = tr[s * 8:(s + 1) * 8]
        img = F.normalize(encode_image(clip, normalize_images(pairs.images[rows])), dim=-1)
        txt = F.normalize(encode_text(clip, pairs.tokens[rows]), dim=-1)
        logits = clip.logit_scale.exp() * img @ txt.T
        labels = torch.arange(len(rows))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    clip.eval()

    class M:
        encode_image = staticmethod(lambda x: encode_image(clip, x))
        encode_text = staticmethod(lambda t: encode_text(clip, t))
    old = _old_evaluate(M, pairs, va)

    run = tmp_path / "run"
    monkeypatch.setenv("AR_TASK_DIR", str(task_dir(out, 1)))
    monkeypatch.setenv("AR_RUN_DIR", str(run))
    task = runtime.load_task(32, 24)
    assert task.fold == 1 and len(task.train) == len(tr) and torch.equal(task.train.images, pairs.images[tr])
    with torch.no_grad():
        img = torch.cat([M.encode_image(normalize_images(task.eval_images[s:s + 16]))
                         for s in range(0, len(va), 16)])
        txt = torch.cat([M.encode_text(task.eval_tokens[s:s + 16]) for s in range(0, len(va), 16)])
    assert runtime.save_embeddings(img, txt) is None       # the product scores, not the child
    new = score_fold(run, key_path(out, 1))
    assert set(new) == set(old)
    for k, v in old.items():
        assert new[k] == pytest.approx(v, abs=1e-6), k
    # the check bites: the same files under a key that ignores the secret orders score differently
    k = dict(np.load(key_path(out, 1)))
    np.savez(tmp_path / "wrong.npz", **{**k, "image_pool": np.arange(len(va)), "text_pool": np.arange(len(va))})
    wrong = score_fold(run, tmp_path / "wrong.npz")
    assert any(abs(wrong[k] - new[k]) > 1e-6 for k in new)
