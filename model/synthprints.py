"""Synthetic prints: a deterministic procedural stand-in for Ukiyo-eVG (numpy + Pillow, no torch).

Each image is a small "woodblock print": beige paper with wood grain, and 2..MAX_OBJ objects
(wave, mountain, sun, boat, house, tree, bird, cloud) in 8 colours and 2 sizes, each in its own
cell of a 3x3 grid. Every *mentioned* object gives one phrase ("a small red boat in the upper
left") and one pixel box; the caption joins the phrases. The output is the Ukiyo-eVG ODVG layout:

    DIR/images/<split>_<idx>.png            train and val images
    DIR/train.jsonl, DIR/val.jsonl          one ODVG record per line
    DIR/heldout/test.jsonl                  test annotations and (heldout/images/) test images,
                                            apart so a sandbox hides the whole test split
    DIR/dataset.json                        manifest {name, train, val, test, images, test_images, ...}

Difficulty knobs (SynthConfig): `max_obj` (more objects), `mention` (< 1: some objects are
drawn but not mentioned, so they are distractors), `twins` (records 2j and 2j+1 share objects,
colours, sizes, mention set and phrase order, and differ only in where things are, so only
grounding tells them apart; `twin_acc` measures that). The defaults are the "harder" setting
that leaves headroom (see model-open-clip.md section 5).

Determinism: record `idx` of split `s` is drawn from `np.random.default_rng([seed, s, idx // 2])`
(a twin pair shares one generator), so any subset regenerates bit-identically.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .odvg import UKIYOE_TEST, UKIYOE_TRAIN, UKIYOE_VAL

GENERATOR_VERSION = 1

SHAPES = ("wave", "mountain", "sun", "boat", "house", "tree", "bird", "cloud")
COLOURS = {
    "red": (196, 48, 43),
    "blue": (38, 76, 150),
    "green": (62, 128, 70),
    "black": (34, 30, 28),
    "yellow": (222, 182, 52),
    "purple": (112, 62, 128),
    "orange": (224, 120, 40),
    "gray": (128, 126, 120),
}
SIZES = {"small": 0.58, "large": 0.92}  # object box side as a fraction of its grid cell
WHERE = (
    "in the upper left", "at the top", "in the upper right",
    "on the left", "in the center", "on the right",
    "in the lower left", "at the bottom", "in the lower right",
)
SPLITS = {"train": 0, "val": 1, "test": 2}
INK = (40, 34, 30)


@dataclass(frozen=True)
class SynthConfig:
    """Everything that decides the generated data (its fingerprint is a hash of these fields)."""
    n_train: int = 10_000
    n_val: int = 1_000          # the default val pool (1 fold = this split) is >= 1000
    n_test: int = 1_000
    image_size: int = 64        # stored PNG side; rendered at 2x then downscaled
    min_obj: int = 2
    max_obj: int = 5
    mention: float = 0.7        # probability that an object is named in the caption (>= 1 always)
    twins: bool = True
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.min_obj <= self.max_obj <= len(SHAPES):
            raise ValueError(f"need 1 <= min_obj <= max_obj <= {len(SHAPES)}, got {self.min_obj}..{self.max_obj}")
        if not 0.0 < self.mention <= 1.0:
            raise ValueError(f"mention must be in (0, 1], got {self.mention}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if self.twins and any(n % 2 for n in (self.n_train, self.n_val, self.n_test)):
            raise ValueError("with twins=True every split size must be even")

    def fingerprint(self) -> str:
        blob = json.dumps({"v": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# Scene sampling (pure numpy, no pixels)

def _sample_objects(rng: np.random.Generator, cfg: SynthConfig):
    n = int(rng.integers(cfg.min_obj, cfg.max_obj + 1))
    shapes = rng.choice(len(SHAPES), size=n, replace=False)
    colours = rng.integers(0, len(COLOURS), size=n)
    sizes = rng.integers(0, len(SIZES), size=n)
    mentioned = rng.random(n) < cfg.mention
    if not mentioned.any():
        mentioned[int(rng.integers(n))] = True
    order = rng.permutation(n)  # phrase order in the caption
    return [dict(shape=SHAPES[s], colour=list(COLOURS)[c], size=list(SIZES)[z], mentioned=bool(m))
            for s, c, z, m in zip(shapes, colours, sizes, mentioned)], order


def _sample_layout(rng: np.random.Generator, n: int):
    cells = rng.choice(9, size=n, replace=False)
    jitter = rng.random((n, 2))
    return cells, jitter


def sample_scene_pair(cfg: SynthConfig, split: str, pair: int):
    """One scene (twins=False) or a twin pair of scenes; returns a list of 1 or 2 scene dicts."""
    rng = np.random.default_rng([cfg.seed, SPLITS[split], pair])
    objects, order = _sample_objects(rng, cfg)
    n = len(objects)
    scenes = []
    cells, jitter = _sample_layout(rng, n)
    scenes.append(dict(objects=objects, order=order, cells=cells, jitter=jitter))
    if cfg.twins:
        ment = np.array([o["mentioned"] for o in objects])
        for _ in range(100):  # a twin must move at least one mentioned object
            cells2, jitter2 = _sample_layout(rng, n)
            if (cells2[ment] != cells[ment]).any():
                break
        scenes.append(dict(objects=objects, order=order, cells=cells2, jitter=jitter2))
    # paper/grain parameters differ per image
    for s in scenes:
        s["paper"] = rng.integers(0, 2**31 - 1)
    return scenes


# ----------------------------------------------------------------------------------------------
# Rendering

def _paper(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tint = np.array([236, 222, 190], np.float32) + rng.normal(0, 6, 3)
    freq, wob, ph = rng.uniform(18, 34), rng.uniform(0.5, 2.0), rng.uniform(0, 6.28)
    grain = np.sin(2 * np.pi * (freq * y + wob * np.sin(2 * np.pi * (1.5 * x) + ph) * 0.15))
    img = tint[None, None, :] + (6.0 * grain)[..., None] + rng.normal(0, 4, (size, size, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw(d: ImageDraw.ImageDraw, shape: str, box, colour, lw: int):
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if shape == "sun":
        d.ellipse(box, fill=colour, outline=INK, width=lw)
    elif shape == "mountain":
        d.polygon([(x1, y2), (cx, y1), (x2, y2)], fill=colour, outline=INK, width=lw)
        d.polygon([(cx - w * 0.14, y1 + h * 0.28), (cx, y1), (cx + w * 0.14, y1 + h * 0.28)], fill=(245, 245, 240))
    elif shape == "wave":
        n = 24
        xs = np.linspace(x1, x2, n)
        top = cy - h * 0.25 * np.sin(np.linspace(0, 3 * np.pi, n)) - h * 0.1
        pts = list(zip(xs, top)) + [(x2, y2), (x1, y2)]
        d.polygon(pts, fill=colour, outline=INK, width=lw)
        for k in range(3):
            fx = x1 + w * (0.2 + 0.3 * k)
            d.ellipse((fx - w * 0.06, cy - h * 0.05, fx + w * 0.06, cy + h * 0.07), fill=(245, 245, 240))
    elif shape == "boat":
        d.polygon([(x1, cy + h * 0.15), (x2, cy + h * 0.15), (x2 - w * 0.2, y2), (x1 + w * 0.2, y2)],
                  fill=colour, outline=INK, width=lw)
        d.line([(cx, y1), (cx, cy + h * 0.15)], fill=INK, width=lw)
        d.polygon([(cx, y1), (cx, cy + h * 0.05), (x2 - w * 0.1, cy + h * 0.05)], fill=colour, outline=INK)
    elif shape == "house":
        d.rectangle((x1 + w * 0.12, cy, x2 - w * 0.12, y2), fill=colour, outline=INK, width=lw)
        d.polygon([(x1, cy), (cx, y1), (x2, cy)], fill=INK)
    elif shape == "tree":
        d.rectangle((cx - w * 0.09, cy + h * 0.1, cx + w * 0.09, y2), fill=(92, 60, 36))
        d.ellipse((x1, y1, x2, cy + h * 0.25), fill=colour, outline=INK, width=lw)
    elif shape == "bird":
        t = max(lw * 2, int(h * 0.16))
        d.line([(x1, y1 + h * 0.2), (cx, cy + h * 0.2), (x2, y1 + h * 0.2)], fill=colour, width=t, joint="curve")
        d.ellipse((cx - w * 0.12, cy, cx + w * 0.12, cy + h * 0.35), fill=colour, outline=INK, width=lw)
    elif shape == "cloud":
        d.ellipse((x1, cy - h * 0.15, cx, y2 - h * 0.1), fill=colour, outline=INK, width=lw)
        d.ellipse((cx - w * 0.1, y1 + h * 0.1, x2, y2 - h * 0.2), fill=colour, outline=INK, width=lw)
        d.ellipse((x1 + w * 0.2, y1 + h * 0.25, x2 - w * 0.15, y2), fill=colour, outline=INK, width=lw)
    else:  # pragma: no cover
        raise ValueError(shape)


def render_scene(scene: dict, size: int):
    """Render a scene; returns (uint8 HxWx3 image, record dict in ODVG form without filename)."""
    big = 2 * size
    rng = np.random.default_rng(int(scene["paper"]))
    canvas = Image.fromarray(_paper(big, rng))
    d = ImageDraw.Draw(canvas)
    cell = big / 3.0
    lw = max(1, big // 64)
    boxes = []
    for o, c, j in zip(scene["objects"], scene["cells"], scene["jitter"]):
        side = SIZES[o["size"]] * cell
        r, q = divmod(int(c), 3)
        x1 = q * cell + j[0] * (cell - side)
        y1 = r * cell + j[1] * (cell - side)
        box = (x1, y1, x1 + side, y1 + side)
        _draw(d, o["shape"], box, COLOURS[o["colour"]], lw)
        boxes.append([round(v / 2.0, 2) for v in box])  # back to the stored resolution
    img = canvas.resize((size, size), Image.BILINEAR)
    regions = []
    for k in scene["order"]:
        o = scene["objects"][k]
        if not o["mentioned"]:
            continue
        phrase = f"a {o['size']} {o['colour']} {o['shape']} {WHERE[int(scene['cells'][k])]}"
        regions.append({"bbox": boxes[k], "phrase": phrase})
    phrases = [r["phrase"] for r in regions]
    caption = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    rec = {"width": size, "height": size, "grounding": {"caption": caption, "regions": regions}}
    return np.asarray(img), rec


def generate_split(cfg: SynthConfig, split: str, start: int = 0, stop: int | None = None):
    """Yield (filename, uint8 image, ODVG record) for records start..stop of a split."""
    n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
    stop = n if stop is None else min(stop, n)
    per = 2 if cfg.twins else 1
    for pair in range(start // per, (stop + per - 1) // per):
        scenes = sample_scene_pair(cfg, split, pair)
        for k, scene in enumerate(scenes):
            idx = pair * per + k
            if idx < start or idx >= stop:
                continue
            img, rec = render_scene(scene, cfg.image_size)
            name = f"{split}_{idx:06d}.png"
            rec = {"filename": name, **rec}
            if cfg.twins:
                rec["twin"] = f"{split}_{pair * per + (1 - k):06d}.png"
            yield name, img, rec


# ----------------------------------------------------------------------------------------------
# Writing the ODVG tree

def write_dataset(root: str | os.PathLike, cfg: SynthConfig = SynthConfig(), *, quiet: bool = True) -> Path:
    """Write a synthetic dataset in the ODVG layout under `root` (created; must be empty or absent).

    Written into a temporary sibling folder and renamed into place, so a half-written dataset is
    never mistaken for a complete one.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"refusing to write a synthetic dataset into non-empty {root}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "heldout" / "images").mkdir(parents=True)
        paths = {"train": "train.jsonl", "val": "val.jsonl", "test": "heldout/test.jsonl"}
        for split, rel in paths.items():
            image_dir = tmp / ("heldout/images" if split == "test" else "images")
            with open(tmp / rel, "w") as f:
                for name, img, rec in generate_split(cfg, split):
                    Image.fromarray(img).save(image_dir / name, compress_level=1)
                    f.write(json.dumps(rec) + "\n")
            if not quiet:
                print(f"synthprints: wrote {split} ({rel})", flush=True)
        manifest = {
            "name": f"synthetic-prints-{cfg.fingerprint()}",
            "format": "odvg",
            "train": paths["train"], "val": paths["val"], "test": paths["test"], "images": "images",
            "test_images": "heldout/images",
            "synthetic": {"generator_version": GENERATOR_VERSION, **dataclasses.asdict(cfg)},
        }
        (tmp / "dataset.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def write_ukiyoe_tree(root: str | os.PathLike, cfg: SynthConfig = SynthConfig(), *, jpeg: bool = True) -> Path:
    """Write synthetic prints in the *seed's* Ukiyo-eVG layout (no manifest), for loader tests:

        root/images/<name>.jpg
        root/annotations/Ukiyo-eVG/refined/ukiyoe_vg_{train,val}_pgt_odvg.jsonl
        root/annotations/Ukiyo-eVG/ukiyoe_vg_test_annotated.jsonl

    Records get the real data's extras (`tokens_positive`, a list of boxes for one phrase) and
    no `twin` key, so the loader is exercised on the real schema's variations.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, rel in (("train", UKIYOE_TRAIN), ("val", UKIYOE_VAL), ("test", UKIYOE_TEST)):
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w") as f:
            for name, img, rec in generate_split(cfg, split):
                if jpeg:
                    name = name[:-4] + ".jpg"
                    Image.fromarray(img).save(root / "images" / name, quality=92)
                else:
                    Image.fromarray(img).save(root / "images" / name)
                g = rec["grounding"]
                cap = g["caption"]
                regions = []
                for i, r in enumerate(g["regions"]):
                    s = cap.find(r["phrase"])
                    reg = {"bbox": r["bbox"], "phrase": r["phrase"], "tokens_positive": [[s, s + len(r["phrase"])]]}
                    if i == 0:
                        reg["bbox"] = [r["bbox"]]  # one phrase, a list of boxes (as ODVG allows)
                    regions.append(reg)
                out_rec = {"filename": name, "height": rec["height"], "width": rec["width"],
                           "grounding": {"caption": cap, "regions": regions}}
                f.write(json.dumps(out_rec) + "\n")
    return root


def default_cache_root() -> Path:
    """Per-user cache folder (XDG_CACHE_HOME or ~/.cache) / eclip-autoresearch."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "eclip-autoresearch"


def ensure_dataset(cfg: SynthConfig = SynthConfig(), root: str | os.PathLike | None = None, *, quiet: bool = False) -> Path:
    """Return the folder holding the synthetic dataset for `cfg`, generating it if missing.

    Default location: <user cache>/synthetic-<fingerprint>. Safe against concurrent callers
    (each writes a private temp folder; the first rename wins).
    """
    root = Path(root) if root else default_cache_root() / f"synthetic-{cfg.fingerprint()}"
    if (root / "dataset.json").exists():
        return root
    if not quiet:
        print(f"synthprints: generating the synthetic dataset in {root} (one time, ~20 s)", flush=True)
    try:
        write_dataset(root, cfg, quiet=quiet)
    except (FileExistsError, OSError):
        if not (root / "dataset.json").exists():
            raise
    return root


if __name__ == "__main__":  # python -m model.synthprints OUT_DIR [n_train n_val n_test]
    import sys
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: python -m model.synthprints OUT_DIR [N_TRAIN N_VAL N_TEST]")
    kw = {}
    if len(args) >= 4:
        kw = dict(n_train=int(args[1]), n_val=int(args[2]), n_test=int(args[3]))
    print(write_dataset(args[0], SynthConfig(**kw), quiet=False))
