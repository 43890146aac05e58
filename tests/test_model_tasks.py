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
from model.tasks import TASK_FILES, TaskError, build_tasks, deal_task, main, read_manifest

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


def _deal(out, fold, where):
    """A run's deal of process `fold`: (task folder, key as a dict)."""
    task, key = where / f"task-{fold}", where / f"key-{fold}.npz"
    deal_task(out, fold, task, key)
    with np.load(key) as z:
        return task, {n: z[n] for n in z.files}


def test_split_protocol_keeps_every_pool_out_of_every_training_set(tmp_path, data_dir, pairs):
    """The default: one process trains on the training split; the validation pairs are cut into k
    disjoint pools (twins together). No pair of any pool is in the training files."""
    out = tmp_path / "t"
    meta = _build(data_dir, out, num_folds=3)
    assert read_manifest(out) == meta and meta["protocol"] == "split"
    assert meta["num_folds"] == 1 and meta["num_pools"] == 3                     # one training process
    tr = np.nonzero(pairs.split.numpy() == 0)[0]
    va = np.nonzero(pairs.split.numpy() == 1)[0]
    assert meta["n_train"] == [len(tr)] and meta["n_eval"] == [len(va)] and sum(meta["pool_sizes"]) == len(va)
    assert max(meta["pool_sizes"]) - min(meta["pool_sizes"]) <= 2
    assert sorted(p.name for p in out.iterdir()) == ["fold-0", "tasks.json"]
    task, key = _deal(out, 0, tmp_path)
    assert sorted(p.name for p in task.iterdir()) == sorted(TASK_FILES)          # no key, no pools
    a = {n[:-4]: np.load(task / n, allow_pickle=False) for n in TASK_FILES if n.endswith(".npy")}
    assert np.array_equal(a["train_images"], pairs.images[tr].numpy())
    assert not set(_rows_of(a["train_images"], pairs.images)) & set(va.tolist())
    assert set(_rows_of(a["eval_images"], pairs.images)) == set(va.tolist())
    # the key: canonical rows grouped by pool; twins never straddle two pools
    assert sorted(np.unique(key["pool"]).tolist()) == [0, 1, 2]
    t = key["twin"]
    assert (t >= 0).any() and all(key["pool"][c] == key["pool"][t[c]] for c in np.nonzero(t >= 0)[0])
    info = json.loads((task / "task.json").read_text())
    assert info["num_folds"] == 1 and info["num_pools"] == 3 and info["protocol"] == "split"
    assert "pool" not in json.dumps(info).replace("num_pools", "")


@pytest.mark.parametrize("k", [1, 3])
def test_kfold_pooled_layout_and_no_pairing_in_the_task(tmp_path, data_dir, pairs, k):
    out = tmp_path / "t"
    meta = _build(data_dir, out, num_folds=k, protocol="kfold-pooled")
    assert read_manifest(out) == meta == json.loads((out / "tasks.json").read_text())
    assert meta["num_folds"] == k and meta["split"] == "val" and meta["data_fingerprint"] == pairs.fingerprint
    folds = make_folds(pairs, k)
    assert meta["n_eval"] == [len(va) for _, va in folds] and meta["n_train"] == [len(tr) for tr, _ in folds]
    assert sorted(p.name for p in out.iterdir()) == sorted(["tasks.json"] + [f"fold-{i}" for i in range(k)])
    for f, (tr, va) in enumerate(folds):
        assert (out / f"fold-{f}" / "pool").stat().st_mode & 0o077 == 0               # the paired set: private
        t, key = _deal(out, f, tmp_path)
        assert sorted(p.name for p in t.iterdir()) == sorted(TASK_FILES)              # no key, nothing else
        assert (tmp_path / f"key-{f}.npz").stat().st_mode & 0o077 == 0
        info = json.loads((t / "task.json").read_text())
        assert info == {"format": 2, "fold": f, "num_folds": k, "num_pools": k, "protocol": "kfold-pooled",
                        "split": "val", "n_train": len(tr), "n_eval": len(va), "image_size": 32,
                        "context_length": 24, "data_fingerprint": pairs.fingerprint}
        a = {n[:-4]: np.load(t / n, allow_pickle=False) for n in TASK_FILES if n.endswith(".npy")}
        assert a["train_images"].dtype == np.uint8 and a["train_images"].shape == (len(tr), 3, 32, 32)
        assert a["eval_images"].dtype == np.uint8 and a["eval_images"].shape == (len(va), 3, 32, 32)
        assert a["eval_tokens"].shape == (len(va), 24)
        assert np.array_equal(a["train_images"], pairs.images[tr].numpy())
        assert np.array_equal(a["train_tokens"], pairs.tokens[tr].numpy())
        assert np.array_equal(a["train_box_valid"], pairs.box_valid[tr].numpy())
        assert np.array_equal(a["train_twin"], pairs.twin_within(tr).numpy())
        assert set(_rows_of(a["eval_images"], pairs.images)) == set(va.tolist())
        assert not set(_rows_of(a["train_images"], pairs.images)) & set(va.tolist())
        # the eval orders: secret, not canonical, not each other's; the key undoes them
        ia, tb = key["image_pool"], key["text_pool"]
        assert not np.array_equal(ia, np.arange(len(va))) and not np.array_equal(ia, tb)
        canon = np.load(out / f"fold-{f}" / "pool" / "eval_images.npy")
        assert np.array_equal(a["eval_images"], canon[ia])
        assert np.array_equal(a["eval_tokens"], np.load(out / f"fold-{f}" / "pool" / "eval_tokens.npy")[tb])
        assert set(key["pool"].tolist()) == {f}
        assert (ia == tb).mean() < 0.5
        # the leak this protocol has, and the split protocol has not: fold f trains on the others' pools
        if k > 1:
            other = folds[(f + 1) % k][1]
            assert set(other.tolist()) <= set(_rows_of(a["train_images"], pairs.images))


def test_every_deal_draws_fresh_orders_and_the_build_is_idempotent(tmp_path, data_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    _build(data_dir, a)
    _, k1 = _deal(a, 0, tmp_path / "d1")
    _, k2 = _deal(a, 0, tmp_path / "d2")
    assert not np.array_equal(k1["image_pool"], k2["image_pool"])     # os.urandom, per run
    assert not np.array_equal(k1["text_pool"], k2["text_pool"])
    assert np.array_equal(k1["twin"], k2["twin"]) and np.array_equal(k1["pool"], k2["pool"])  # same pools
    before = (a / "tasks.json").stat().st_mtime_ns
    assert _build(data_dir, a) == read_manifest(a)                     # complete: nothing rebuilt
    assert (a / "tasks.json").stat().st_mtime_ns == before
    with pytest.raises(TaskError, match="different task build"):
        _build(data_dir, a, num_folds=2)
    with pytest.raises(TaskError, match="different task build"):
        _build(data_dir, a, protocol="kfold-pooled")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    _build(data_dir, b)
    (b / "tasks.json").unlink()                                        # an incomplete leftover is replaced
    _build(data_dir, b)
    assert read_manifest(b) is not None


def test_test_split_is_one_task_on_all_of_train_val(tmp_path, data_dir, pairs):
    out = tmp_path / "t"
    meta = _build(data_dir, out, split="test", num_folds=3,
                  test_annotations=str(data_dir / "heldout" / "test.jsonl"))
    assert meta["num_folds"] == 1 and meta["num_pools"] == 1 and meta["n_train"] == [len(pairs)]
    assert meta["n_eval"] == [12]
    test = load_pairs(32, 24, data_dir=data_dir, split="test", log=quiet)
    t, key = _deal(out, 0, tmp_path)
    assert np.array_equal(np.load(t / "train_images.npy"), pairs.images.numpy())
    ev = np.load(t / "eval_images.npy")
    assert set(_rows_of(ev, test.images)) == set(range(12))
    assert json.loads((t / "task.json").read_text())["split"] == "test"


def test_cli_errors_are_one_line(tmp_path, data_dir, capsys):
    base = ["build", "--data", str(data_dir), "--context-length", "24", "--out", str(tmp_path / "o")]
    assert main(base + ["--image-size", "8"]) == 2
    assert capsys.readouterr().err.strip() == "error: image_size 8 is out of range (16 to 2048)"
    assert main(base + ["--image-size", "32", "--folds", "0"]) == 2
    assert "error: folds 0 is out of range" in capsys.readouterr().err
    assert main(base + ["--image-size", "32", "--folds", "15"]) == 2      # 20 val pairs cannot make 15 pools of 2
    assert "every pool >= 2" in capsys.readouterr().err
    assert main(["build", "--data", str(tmp_path / "nope"), "--image-size", "32", "--context-length", "24",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "dataset folder not found" in err[-1]
    assert not (tmp_path / "o").exists()
    p = subprocess.run([sys.executable, "-m", "model.tasks", "build", *base[1:], "--image-size", "32", "--folds", "2",
                        "--protocol", "kfold-pooled"], cwd=ROOT, capture_output=True, text=True)
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
    _build(data_dir, out, num_folds=3, protocol="kfold-pooled")
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
    deal_task(out, 1, tmp_path / "task", tmp_path / "key.npz")
    monkeypatch.setenv("AR_TASK_DIR", str(tmp_path / "task"))
    monkeypatch.setenv("AR_RUN_DIR", str(run))
    task = runtime.load_task(32, 24)
    assert task.fold == 1 and len(task.train) == len(tr) and torch.equal(task.train.images, pairs.images[tr])
    with torch.no_grad():
        img = torch.cat([M.encode_image(normalize_images(task.eval_images[s:s + 16]))
                         for s in range(0, len(va), 16)])
        txt = torch.cat([M.encode_text(task.eval_tokens[s:s + 16]) for s in range(0, len(va), 16)])
    assert runtime.save_embeddings(img, txt) is None       # the product scores, not the child
    [new] = score_fold(run, tmp_path / "key.npz")
    assert new.pop("pool") == 1 and set(new) == set(old)
    for k, v in old.items():
        assert new[k] == pytest.approx(v, abs=1e-6), k
    # the check bites: the same files under a key that ignores the secret orders score differently
    k = dict(np.load(tmp_path / "key.npz"))
    np.savez(tmp_path / "wrong.npz", **{**k, "image_pool": np.arange(len(va)), "text_pool": np.arange(len(va))})
    [wrong] = score_fold(run, tmp_path / "wrong.npz")
    assert any(abs(wrong[k] - new[k]) > 1e-6 for k in new)
