"""model/scoring.py: the trusted scorer reads untrusted embeddings safely, un-permutes them with the
fold's key and computes the protocol's metrics (numpy only: the supervisor imports it without torch)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.scoring import IMAGE_FILE, TEXT_FILE, ScoringError, retrieval_metrics, score_fold, summarize

ROOT = Path(__file__).resolve().parents[1]
N, D = 12, 5


def _one(fold) -> dict:
    """The metrics of a one-pool key (score_fold returns one dict per pool)."""
    pools = score_fold(fold["run"], fold["key"])
    assert [p["pool"] for p in pools] == [0]
    return {k: v for k, v in pools[0].items() if k != "pool"}


def test_import_without_torch():
    code = ("import sys, model.scoring; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


@pytest.fixture
def fold(tmp_path):
    """A key for a pool of N pairs with two twin pairs, the pool's embeddings, and a run folder."""
    rng = np.random.default_rng(0)
    a, b = rng.permutation(N), rng.permutation(N)
    twin = np.full(N, -1)
    twin[[0, 1, 4, 7]] = [1, 0, 7, 4]
    key = tmp_path / "key.npz"
    np.savez(key, image_pool=a, text_pool=b, twin=twin, pool_rows=np.arange(N))
    img = rng.normal(size=(N, D)).astype(np.float32)
    txt = (img + 0.8 * rng.normal(size=(N, D))).astype(np.float32)
    run = tmp_path / "run"
    run.mkdir()
    return {"key": key, "a": a, "b": b, "twin": twin, "img": img, "txt": txt, "run": run}


def _write(fold, img=None, txt=None):
    np.save(fold["run"] / IMAGE_FILE, fold["img"][fold["a"]] if img is None else img)
    np.save(fold["run"] / TEXT_FILE, fold["txt"][fold["b"]] if txt is None else txt)


def test_score_fold_unpermutes_with_the_key(fold):
    _write(fold)
    got = _one(fold)
    assert got == retrieval_metrics(fold["img"], fold["txt"], fold["twin"])
    assert got["n_val"] == N and got["random_mean_rank"] == (N - 1) / 2 and 0 <= got["twin_acc"] <= 1
    assert got["mean_rank"] < (N - 1) / 2                   # correlated pairs rank better than chance
    # the same embeddings in the unshuffled order score like noise: the order is what pairs them
    _write(fold, img=fold["img"], txt=fold["txt"])
    assert _one(fold)["mean_rank"] != got["mean_rank"]
    # float16 / float64 / Fortran order are accepted (read as float32)
    _write(fold, img=np.asfortranarray(fold["img"][fold["a"]].astype(np.float64)),
           txt=fold["txt"][fold["b"]].astype(np.float16))
    m = _one(fold)
    assert m["n_val"] == N and abs(m["mean_rank"] - got["mean_rank"]) <= 1.0


def _npy_header(dtype: str, shape, pad: int = 0) -> bytes:
    h = repr({"descr": dtype, "fortran_order": False, "shape": shape}) + " " * pad
    h = h.ljust((len(h) + 11) // 64 * 64 + 53) + "\n"
    return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h.encode()


@pytest.mark.parametrize("case, msg", [
    ("rows", f"{IMAGE_FILE}: {N - 1} rows, the eval pool has {N}. Fix: embed every row"),
    ("width", "widths 5 and 4 differ"),
    ("nan", f"{IMAGE_FILE}: 1 row(s) with NaN or inf (first: row 3"),
    ("inf", f"{TEXT_FILE}: 2 row(s) with NaN or inf"),
    ("zero_dim", "embedding width 0, must be 1 to 8192"),
    ("wide", "embedding width 9000"),
    ("three_d", "expected 2-D"),
    ("int", "dtype int64 is not allowed"),
    ("object", "dtype object is not allowed"),
    ("huge_header", "not a readable .npy file"),
    ("huge_file", "bytes, more than any"),
    ("trailing", "data bytes, the header promises"),
    ("truncated", "data bytes, the header promises"),
    ("not_npy", "not a readable .npy file"),
    ("symlink", f"{IMAGE_FILE}: a symbolic link"),
    ("missing", f"{TEXT_FILE}: missing"),
    ("fifo", "not a regular file"),
])
def test_malformed_embeddings_fail_clearly(fold, case, msg):
    rng = np.random.default_rng(1)
    img, txt = fold["img"][fold["a"]], fold["txt"][fold["b"]]
    ipath, tpath = fold["run"] / IMAGE_FILE, fold["run"] / TEXT_FILE
    _write(fold)
    if case == "rows":
        np.save(ipath, img[:-1])
    elif case == "width":
        np.save(tpath, txt[:, :4])
    elif case == "nan":
        img = img.copy()
        img[3, 1] = np.nan
        np.save(ipath, img)
    elif case == "inf":
        txt = txt.copy()
        txt[[2, 5], 0] = np.inf
        np.save(tpath, txt)
    elif case == "zero_dim":
        np.save(ipath, np.zeros((N, 0), np.float32))
    elif case == "wide":
        np.save(ipath, np.zeros((N, 9000), np.float16))
    elif case == "three_d":
        np.save(ipath, img[:, :, None])
    elif case == "int":
        np.save(ipath, rng.integers(0, 9, size=(N, D)))
    elif case == "object":
        arr = np.empty((N, D), dtype=object)
        arr[:] = 1.0
        np.save(ipath, arr, allow_pickle=True)
    elif case == "huge_header":
        ipath.write_bytes(_npy_header("<f4", (N, D), pad=60000) + img.tobytes())
    elif case == "huge_file":
        with open(ipath, "wb") as f:
            f.write(_npy_header("<f4", (N, D)))
            f.truncate(N * 8192 * 8 + 10 ** 6)          # sparse: claims far more than any pool needs
    elif case == "trailing":
        ipath.write_bytes(ipath.read_bytes() + b"\0" * 16)
    elif case == "truncated":
        ipath.write_bytes(ipath.read_bytes()[:-8])
    elif case == "not_npy":
        ipath.write_bytes(b"objective = 0.0\n")
    elif case == "symlink":
        real = fold["run"].parent / "elsewhere.npy"
        np.save(real, img)
        ipath.unlink()
        ipath.symlink_to(real)
    elif case == "missing":
        tpath.unlink()
    elif case == "fifo":
        ipath.unlink()
        os.mkfifo(ipath)
    with pytest.raises(ScoringError) as e:
        _one(fold)
    assert msg in str(e.value), str(e.value)
    assert "Fix:" in str(e.value)


def test_collapsed_and_perfect(fold):
    _write(fold, img=np.ones((N, D), np.float32), txt=np.ones((N, D), np.float32))
    m = _one(fold)
    assert m["mean_rank"] == (N - 1) / 2 and m["twin_acc"] == 0.5
    eye = np.eye(N, dtype=np.float32)
    _write(fold, img=eye[fold["a"]], txt=eye[fold["b"]])
    m = _one(fold)
    assert m["mean_rank"] == 0 and m["i2t_r1"] == 1 and m["t2i_r1"] == 1 and m["twin_acc"] == 1
    s = summarize([m, m])
    assert s["objective"] == 0 and s["mean_rank_std"] == 0 and len(s["folds"]) == 2


def test_chunked_ranks_equal_the_full_matrix(monkeypatch):
    """Large pools are ranked in row chunks; the result must not depend on the chunk size."""
    import model.scoring as sc
    rng = np.random.default_rng(3)
    img = rng.normal(size=(50, 3)).astype(np.float32)
    txt = np.round(img + rng.normal(size=(50, 3)), 1).astype(np.float32)
    full = sc.retrieval_metrics(img, txt)
    calls = []
    real = sc._ranks_chunked
    monkeypatch.setattr(sc, "_ranks_chunked", lambda q, c, chunk: calls.append(chunk) or real(q, c, 7))
    assert sc.retrieval_metrics(img, txt) == full and calls
