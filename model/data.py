"""Data for experiments (frozen harness): ODVG records -> uint8 tensors, a content-keyed cache, folds.

Where the data comes from (`resolve_data_dir`): the `data_dir` argument, else `$AR_DATA_DIR`, else
the default synthetic-prints dataset in the user cache (generated on first use).

The tensor cache is an uncompressed `.npz` keyed by a content fingerprint:
    <fingerprint>-<size>px-v<CACHE_VERSION>.npz   images (uint8 NHWC), boxes, phrases, ...
    <fingerprint>-tok<context_length>-v<CACHE_VERSION>.npz   caption and phrase tokens
It is looked up, read-only, in `DATA_DIR/.cache/` (written by `python -m model.prepare`, outside
the sandbox) and then in `$AR_CACHE_DIR`; a miss is built in memory and saved to `$AR_CACHE_DIR`
when that is set and writable. Runs never write into the data folder.

The fingerprint hashes the train and val annotation files' bytes and the name and byte size of
every image they reference (not the pixels: hashing a real image folder each run is too slow).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .odvg import DatasetLayout, ODVGError, Record, read_odvg, resolve_dataset
from .synthprints import SynthConfig, ensure_dataset
from .pools import make_pools

CACHE_VERSION = 1
FOLD_SEED = 42          # the seed's fold shuffle seed; fixed so every run sees the same folds
MAX_BOXES = 32          # boxes kept per record (the first ones in file order)
MEAN = (0.48145466, 0.4578275, 0.40821073)   # open_clip's OPENAI_DATASET_MEAN
STD = (0.26862954, 0.26130258, 0.27577711)   # open_clip's OPENAI_DATASET_STD
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


# ----------------------------------------------------------------------------------------------
# Locating the data

def resolve_data_dir(data_dir: str | os.PathLike | None = None, log=print) -> tuple[Path, bool]:
    """(dataset root, whether it is the default synthetic dataset in the user's own cache)."""
    if data_dir is None:
        data_dir = os.environ.get("AR_DATA_DIR") or None
    if data_dir is None:
        root = ensure_dataset(SynthConfig(), quiet=False)
        log(f"data: AR_DATA_DIR not set, using the default synthetic dataset {root}")
        return root, True
    return Path(data_dir).expanduser(), False


def read_split(layout: DatasetLayout, split: str, path: str | os.PathLike | None = None) -> list[Record]:
    p = Path(path) if path else getattr(layout, split)
    if p is None:
        raise ODVGError(f"{layout.root}: no '{split}' annotation file (hidden, or missing in dataset.json)")
    return read_odvg(p)


def fingerprint(record_files: list[Path], records: list[Record], images: Path) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for f in record_files:
        h.update(Path(f).read_bytes())
    for r in records:
        try:
            size = (images / r.filename).stat().st_size
        except OSError:
            size = -1
        h.update(f"{r.filename}\0{size}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Building arrays

def load_image(path: Path, size: int) -> np.ndarray:
    """Decode, convert to RGB and squash-resize (bilinear) to size x size; uint8 HxWx3."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def build_arrays(records: list[Record], images: Path, size: int, split_codes: list[int], log=print) -> dict:
    """Decode every image and normalise boxes by each record's own width/height (before resizing)."""
    n = len(records)
    m = max([min(len(r.boxes), MAX_BOXES) for r in records] + [1])
    out = {
        "images": np.zeros((n, size, size, 3), np.uint8),
        "boxes": np.zeros((n, m, 4), np.float32),
        "n_boxes": np.zeros(n, np.int64),
        "phrases": np.full((n, m), "", dtype=object),
        "captions": np.array([r.caption for r in records], dtype=str),
        "filenames": np.array([r.filename for r in records], dtype=str),
        "twins": np.array([r.twin or "" for r in records], dtype=str),
        "split": np.asarray(split_codes, np.int8),
    }
    missing = []
    t0 = time.time()
    for i, r in enumerate(records):
        p = images / r.filename
        try:
            out["images"][i] = load_image(p, size)
        except FileNotFoundError:
            missing.append(r.filename)
            continue
        except OSError as e:
            raise ODVGError(f"{p}: cannot read image ({e})") from None
        k = min(len(r.boxes), MAX_BOXES)
        if k:
            b = np.asarray(r.boxes[:k], np.float32)
            out["boxes"][i, :k] = b / np.array([r.width, r.height, r.width, r.height], np.float32)
            out["phrases"][i, :k] = r.phrases[:k]
        out["n_boxes"][i] = k
        if log and i and i % 2000 == 0:
            log(f"data: decoded {i}/{n} images ({time.time() - t0:.0f} s)")
    if missing:
        raise ODVGError(f"{images}: {len(missing)} image(s) referenced by the annotations are missing, "
                        f"e.g. {missing[:3]}")
    out["phrases"] = out["phrases"].astype(str)
    return out


def tokenize_arrays(captions: np.ndarray, phrases: np.ndarray, context_length: int) -> dict:
    """SimpleTokenizer (the vocab ships with open_clip): int32 caption [N, L] and phrase [N, M, L] tokens."""
    from open_clip.tokenizer import SimpleTokenizer
    tok = SimpleTokenizer(context_length=context_length)
    cap = tok([str(c) for c in captions]).numpy().astype(np.int32)
    flat = [str(p) for p in phrases.reshape(-1)]
    uniq = sorted(set(flat))
    table = dict(zip(uniq, tok(uniq).numpy().astype(np.int32))) if uniq else {}
    zero = np.zeros(context_length, np.int32)
    phr = np.stack([table[p] if p else zero for p in flat]) if flat else np.zeros((0, context_length), np.int32)
    return {"tokens": cap, "phrase_tokens": phr.reshape(*phrases.shape, context_length)}


# ----------------------------------------------------------------------------------------------
# The cache

def _cache_dirs(layout: DatasetLayout, cache_dir) -> list[Path]:
    dirs = [layout.root / ".cache"]
    if cache_dir:
        dirs.append(Path(cache_dir))
    return dirs


def _load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _save_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cached(name: str, dirs: list[Path], build, *, write_dir: Path | None, log=print) -> dict:
    """Find `name` in `dirs` (read-only), else build it and try to save it in `write_dir`."""
    for d in dirs:
        p = d / name
        if p.is_file():
            try:
                return _load_npz(p)
            except (OSError, ValueError) as e:
                log(f"data: ignoring unreadable cache {p} ({e})")
    arrays = build()
    if write_dir is not None:
        try:
            _save_npz(Path(write_dir) / name, arrays)
            log(f"data: cached {name} in {write_dir}")
        except OSError as e:
            log(f"data: could not write the cache in {write_dir} ({e}); continuing without it")
    return arrays


# ----------------------------------------------------------------------------------------------
# Tensors for a run

@dataclass
class PairData:
    """Image-caption pairs as tensors (CPU). Index them with LongTensors of row numbers."""
    images: torch.Tensor          # uint8 [N, 3, S, S]
    tokens: torch.Tensor          # long [N, L] caption tokens
    boxes: torch.Tensor           # float32 [N, M, 4] in [0, 1] (x1, y1, x2, y2)
    box_valid: torch.Tensor       # bool [N, M]
    phrase_tokens: torch.Tensor   # int32 [N, M, L] (one phrase per box)
    split: torch.Tensor           # int8 [N]: 0 train, 1 val, 2 test
    twin: torch.Tensor            # long [N]: row of the twin record, or -1
    captions: list = field(repr=False, default_factory=list)
    filenames: list = field(repr=False, default_factory=list)
    fingerprint: str = ""
    name: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_twins(self) -> bool:
        return bool((self.twin >= 0).any())

    def twin_within(self, idx: torch.Tensor) -> torch.Tensor:
        """For each row of the pool `idx`, the position of its twin inside the pool, or -1."""
        pos = torch.full((len(self),), -1, dtype=torch.long)
        pos[idx] = torch.arange(len(idx))
        t = self.twin[idx]
        return torch.where(t >= 0, pos[t.clamp_min(0)], torch.full_like(t, -1))


def _to_pairdata(arr: dict, tok: dict, fp: str, name: str) -> PairData:
    rows = {f: i for i, f in enumerate(arr["filenames"].tolist())}
    twin = torch.tensor([rows.get(t, -1) if t else -1 for t in arr["twins"].tolist()], dtype=torch.long)
    m = arr["boxes"].shape[1]
    valid = torch.arange(m)[None, :] < torch.from_numpy(arr["n_boxes"])[:, None]
    return PairData(
        images=torch.from_numpy(arr["images"]).permute(0, 3, 1, 2).contiguous(),
        tokens=torch.from_numpy(tok["tokens"]).long(),
        boxes=torch.from_numpy(arr["boxes"]),
        box_valid=valid,
        phrase_tokens=torch.from_numpy(tok["phrase_tokens"]),
        split=torch.from_numpy(arr["split"]),
        twin=twin,
        captions=arr["captions"].tolist(),
        filenames=arr["filenames"].tolist(),
        fingerprint=fp,
        name=name,
    )


def _writable_cache_dir(cache_dir) -> Path | None:
    if not cache_dir:
        return None
    p = Path(cache_dir)
    try:  # probe with a real file: access() does not see a read-only bind mount or Landlock rules
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError:
        return None
    return p


def load_pairs(image_size: int, context_length: int, *, data_dir=None, cache_dir=None, split: str = "trainval",
               annotations: str | os.PathLike | None = None, log=print) -> PairData:
    """Load `trainval` (pooled train + val, with the split column) or `test` as tensors.

    `annotations` overrides the test file (AR_TEST_ANNOTATIONS). Uses the cache when present.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("AR_CACHE_DIR") or None
    root, own = resolve_data_dir(data_dir, log=log)
    layout = resolve_dataset(root)
    if own and not cache_dir:
        cache_dir = layout.root / ".cache"  # our own generated data: keep its cache next to it
    if split == "trainval":
        files = [layout.train, layout.val]
        parts = [read_odvg(layout.train), read_odvg(layout.val)]
        codes = [0] * len(parts[0]) + [1] * len(parts[1])
    elif split == "test":
        f = Path(annotations) if annotations else layout.test
        if f is None:
            raise ODVGError(f"{layout.root}: no test annotations (set AR_TEST_ANNOTATIONS)")
        files, parts = [f], [read_odvg(f)]
        codes = [2] * len(parts[0])
    else:
        raise ValueError(f"split must be 'trainval' or 'test', got {split!r}")
    records = [r for p in parts for r in p]
    if not records:
        raise ODVGError(f"{files}: no usable records (each needs a caption and regions)")
    images = layout.images_of(split)
    fp = fingerprint(files, records, images)
    dirs = _cache_dirs(layout, cache_dir) if split == "trainval" else ([Path(cache_dir)] if cache_dir else [])
    wdir = _writable_cache_dir(cache_dir)
    t0 = time.time()
    arr = cached(f"{fp}-{image_size}px-v{CACHE_VERSION}.npz", dirs,
                 lambda: build_arrays(records, images, image_size, codes, log=log), write_dir=wdir, log=log)
    tok = cached(f"{fp}-tok{context_length}-v{CACHE_VERSION}.npz", dirs,
                 lambda: tokenize_arrays(arr["captions"], arr["phrases"], context_length), write_dir=wdir, log=log)
    data = _to_pairdata(arr, tok, fp, layout.name)
    log(f"data: {layout.name} {split}: {len(data)} pairs at {image_size}px, fingerprint {fp} "
        f"({time.time() - t0:.1f} s)")
    return data


def prepare_cache(data_dir, image_size: int, context_length: int, log=print) -> list[Path]:
    """Build the train+val cache inside DATA_DIR/.cache (run outside the sandbox by `init`)."""
    layout = resolve_dataset(data_dir)
    cdir = layout.root / ".cache"
    load_pairs(image_size, context_length, data_dir=layout.root, cache_dir=cdir, log=log)
    return sorted(cdir.glob("*.npz"))


# ----------------------------------------------------------------------------------------------
# Folds, batches, preprocessing

def make_folds(data: PairData, k: int, seed: int = FOLD_SEED) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train_rows, val_rows) per fold. k = 1: the original train/val split. k > 1: pooled train+val
    shuffled with `seed` and cut into k folds; twin pairs always stay in the same fold."""
    if k < 1:
        raise ValueError(f"NUM_FOLDS must be >= 1, got {k}")
    if k == 1:
        tr = torch.nonzero(data.split == 0).flatten()
        va = torch.nonzero(data.split == 1).flatten()
        if len(va) == 0:
            raise ValueError("the dataset has no val records for the 1-fold split")
        return [(tr, va)]
    fold = make_pools(data.twin.numpy(), np.arange(len(data)), k, seed)  # twin groups dealt round-robin
    out = []
    for f in range(k):
        va = torch.from_numpy(np.nonzero(fold == f)[0])
        tr = torch.from_numpy(np.nonzero(fold != f)[0])
        out.append((tr, va))
    return out


def batch_indices(rows: torch.Tensor, batch_size: int, seed: int):
    """Endless stream of batches of `rows`: a fresh seeded permutation per epoch, last partial batch dropped."""
    if len(rows) < batch_size:
        raise ValueError(f"BATCH_SIZE {batch_size} is larger than the training set ({len(rows)} pairs)")
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = rows[torch.randperm(len(rows), generator=g)]
        for s in range(0, len(perm) - batch_size + 1, batch_size):
            yield perm[s:s + batch_size]


_MEAN_STD = {}


def normalize_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float32, scaled to [0, 1] and normalised with open_clip's mean/std."""
    key = x.device
    if key not in _MEAN_STD:
        _MEAN_STD[key] = (torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1),
                          torch.tensor(STD, device=x.device).view(1, 3, 1, 1))
    mean, std = _MEAN_STD[key]
    return (x.float() / 255.0 - mean) / std
