"""ODVG JSONL records (the Ukiyo-eVG format) and dataset layouts. Torch-free.

One JSON object per line:
    {"filename": "x.jpg", "width": W, "height": H,
     "grounding": {"caption": "...", "regions": [{"bbox": [x1, y1, x2, y2], "phrase": "..."}, ...]}}

Accepted variations (seen in ODVG files): `file_name` for `filename`; a region's `bbox` may be a
list of boxes for one phrase; extra keys (`tokens_positive`, `twin`, ...) are kept or ignored.
Rules (as the seed's prepare.py): records without a caption or without regions are skipped;
boxes are clipped to the image and degenerate ones (zero width or height) dropped. Anything
malformed raises `ODVGError` naming the file, the line and the problem.

Layouts (`resolve_dataset`):
  * a manifest `DIR/dataset.json` {"name", "train", "val", "test", "images"} with paths relative
    to DIR (written by the synthetic generator, or by `write_manifest`);
  * otherwise the seed's Ukiyo-eVG tree:
        DIR/annotations/Ukiyo-eVG/refined/ukiyoe_vg_{train,val}_pgt_odvg.jsonl
        DIR/annotations/Ukiyo-eVG/ukiyoe_vg_test_annotated.jsonl
        DIR/images/
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

UKIYOE_TRAIN = "annotations/Ukiyo-eVG/refined/ukiyoe_vg_train_pgt_odvg.jsonl"
UKIYOE_VAL = "annotations/Ukiyo-eVG/refined/ukiyoe_vg_val_pgt_odvg.jsonl"
UKIYOE_TEST = "annotations/Ukiyo-eVG/ukiyoe_vg_test_annotated.jsonl"
MANIFEST = "dataset.json"


class ODVGError(ValueError):
    """A malformed annotation file or dataset folder; the message names the file and line."""


@dataclass
class Record:
    filename: str
    width: int
    height: int
    caption: str
    boxes: list = field(default_factory=list)    # [[x1, y1, x2, y2], ...] in original pixels
    phrases: list = field(default_factory=list)  # one phrase per box (repeated for multi-box phrases)
    twin: str | None = None                      # filename of the twin record (synthetic data)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_record(obj, where: str) -> Record | None:
    """Validate one decoded JSON line; None for a record the seed skips (no caption/regions)."""
    if not isinstance(obj, dict):
        raise ODVGError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    name = obj.get("filename", obj.get("file_name"))
    if not isinstance(name, str) or not name:
        raise ODVGError(f"{where}: missing or empty 'filename'")
    w, h = obj.get("width"), obj.get("height")
    if not (_num(w) and _num(h) and w > 0 and h > 0):
        raise ODVGError(f"{where}: 'width' and 'height' must be positive numbers, got {w!r} and {h!r}")
    g = obj.get("grounding")
    if g is None:
        return None
    if not isinstance(g, dict):
        raise ODVGError(f"{where}: 'grounding' must be an object")
    cap = g.get("caption")
    regions = g.get("regions")
    if cap is None or regions is None:
        return None
    if not isinstance(cap, str):
        raise ODVGError(f"{where}: 'grounding.caption' must be a string")
    if not isinstance(regions, list):
        raise ODVGError(f"{where}: 'grounding.regions' must be a list")
    if not cap.strip() or not regions:
        return None
    rec = Record(name, int(w), int(h), cap.strip(), twin=obj.get("twin"))
    for i, r in enumerate(regions):
        if not isinstance(r, dict):
            raise ODVGError(f"{where}: region {i} must be an object")
        phrase = r.get("phrase", "")
        if not isinstance(phrase, str):
            raise ODVGError(f"{where}: region {i}: 'phrase' must be a string")
        bb = r.get("bbox")
        boxes = bb if isinstance(bb, list) and bb and isinstance(bb[0], list) else [bb]
        for b in boxes:
            if not (isinstance(b, list) and len(b) == 4 and all(_num(v) for v in b)):
                raise ODVGError(f"{where}: region {i}: 'bbox' must be [x1, y1, x2, y2] numbers, got {b!r}")
            x1, y1 = max(0.0, float(b[0])), max(0.0, float(b[1]))
            x2, y2 = min(float(w), float(b[2])), min(float(h), float(b[3]))
            if x2 > x1 and y2 > y1:
                rec.boxes.append([x1, y1, x2, y2])
                rec.phrases.append(phrase.strip() or cap.strip())
    return rec


def read_odvg(path: str | os.PathLike) -> list[Record]:
    """Read an ODVG JSONL file; raises ODVGError('<file>:<line>: ...') on a malformed line."""
    path = Path(path)
    if not path.is_file():
        raise ODVGError(f"{path}: annotation file not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ODVGError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            rec = parse_record(obj, where)
            if rec is not None:
                out.append(rec)
    return out


@dataclass
class DatasetLayout:
    root: Path
    name: str
    train: Path
    val: Path
    test: Path | None          # may be absent (hidden from sandboxed runs)
    images: Path
    kind: str                  # "manifest" | "ukiyoe"
    test_images: Path | None = None  # where the test split's images live, when apart (else `images`)

    def images_of(self, split: str) -> Path:
        return self.test_images if split == "test" and self.test_images is not None else self.images

    def as_manifest(self) -> dict:
        def rel(p):
            return None if p is None else os.path.relpath(p, self.root)
        m = {"name": self.name, "format": "odvg", "train": rel(self.train), "val": rel(self.val),
             "test": rel(self.test), "images": rel(self.images)}
        if self.test_images is not None:
            m["test_images"] = rel(self.test_images)
        return m


def resolve_dataset(root: str | os.PathLike) -> DatasetLayout:
    """Find the annotation files and image folder of a dataset root (manifest or Ukiyo-eVG tree)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ODVGError(f"{root}: dataset folder not found")
    mpath = root / MANIFEST
    if mpath.is_file():
        try:
            m = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ODVGError(f"{mpath}:{e.lineno}: not valid JSON ({e.msg})") from None
        missing = [k for k in ("train", "val", "images") if not isinstance(m.get(k), str)]
        if missing:
            raise ODVGError(f"{mpath}: missing key(s) {missing} (need train, val, images; test optional)")
        test, test_images = m.get("test"), m.get("test_images")
        return DatasetLayout(root, str(m.get("name", root.name)), root / m["train"], root / m["val"],
                             (root / test) if isinstance(test, str) else None, root / m["images"], "manifest",
                             (root / test_images) if isinstance(test_images, str) else None)
    if (root / UKIYOE_TRAIN).is_file():
        return DatasetLayout(root, "ukiyo-evg", root / UKIYOE_TRAIN, root / UKIYOE_VAL,
                             root / UKIYOE_TEST, root / "images", "ukiyoe")
    raise ODVGError(
        f"{root}: not a dataset: expected {MANIFEST} (keys train, val, test, images) or the Ukiyo-eVG "
        f"tree ({UKIYOE_TRAIN}, {UKIYOE_VAL}, images/). Run `python -m model.prepare --data {root}` "
        "to generate a synthetic dataset there.")


def write_manifest(root: str | os.PathLike, *, images: str | None = None, name: str | None = None) -> Path:
    """Write DIR/dataset.json for a Ukiyo-eVG tree (so tools can find, and hide, the test file)."""
    lay = resolve_dataset(root)
    m = lay.as_manifest()
    if images:
        m["images"] = images
    if name:
        m["name"] = name
    out = lay.root / MANIFEST
    out.write_text(json.dumps(m, indent=2) + "\n")
    return out
