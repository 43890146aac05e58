"""Prepare a dataset folder for sandboxed runs (run by `autoresearch init`, outside the sandbox).

    python -m model.prepare --data DIR [--preset tiny] [--synthetic small|default] [--manifest]
                            [--cache-dir C] [--image-size N] [--context-length L] [--no-generate]

1. If DIR holds no dataset (no dataset.json, no Ukiyo-eVG tree), generate the synthetic prints
   there (DIR must then be empty or absent).
2. For the Ukiyo-eVG tree, `--manifest` writes DIR/dataset.json (so tools know where the test
   annotations are, to hide them).
3. Build the read-only tensor cache DIR/.cache/<fingerprint>-<size>px-v1.npz and the token
   cache for the preset's IMAGE_SIZE and CONTEXT_LENGTH (train + val only: the cache never
   holds the test annotations). With `--cache-dir C` the cache goes to C instead (a read-only
   data folder); `python -m model.tasks build --cache-dir C` then reads it when it builds the
   per-fold task folders (sandboxed runs read only those, never the data folder or the cache).
   `--image-size` / `--context-length` override the preset's (a cache for what a run asks for);
   `--no-generate` refuses to generate synthetic prints where there is no dataset.
Prints one JSON line at the end: {"data_dir", "name", "fingerprint", "cache": [...], "n_pairs"}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .odvg import ODVGError, resolve_dataset, write_manifest
from .presets import CACHE_SIZE_BOUNDS, get_preset
from .synthprints import SynthConfig, write_dataset

SYNTH = {
    "default": SynthConfig(),
    "small": SynthConfig(n_train=512, n_val=128, n_test=128),
}


def has_dataset(root: Path) -> bool:
    try:
        resolve_dataset(root)
        return True
    except ODVGError:
        return False


def prepare(data_dir, preset: str = "tiny", synthetic: str = "default", manifest: bool = False, cache_dir=None,
            log=print, image_size: int | None = None, context_length: int | None = None,
            generate: bool = True) -> dict:
    root = Path(data_dir).expanduser()
    if not has_dataset(root):
        if not generate:
            raise ODVGError(f"{root}: no dataset there (and --no-generate)")
        if synthetic not in SYNTH:
            raise ValueError(f"--synthetic must be one of {sorted(SYNTH)}, got {synthetic!r}")
        t0 = time.time()
        log(f"prepare: no dataset in {root}; generating synthetic prints ({synthetic})")
        write_dataset(root, SYNTH[synthetic], quiet=False)
        log(f"prepare: generated in {time.time() - t0:.1f} s")
    lay = resolve_dataset(root)
    if manifest and lay.kind != "manifest":
        log(f"prepare: wrote {write_manifest(root)}")
    p = get_preset(preset)
    from .data import load_pairs  # import-graph: heavy (torch, only when building)
    cdir = Path(cache_dir).expanduser() if cache_dir else lay.root / ".cache"
    data = load_pairs(image_size or p["IMAGE_SIZE"], context_length or p["CONTEXT_LENGTH"], data_dir=lay.root,
                      cache_dir=cdir, log=log)
    return {"data_dir": str(lay.root), "name": lay.name, "fingerprint": data.fingerprint,
            "cache": sorted(str(c) for c in cdir.glob("*.npz")), "n_pairs": len(data),
            "test": str(lay.test) if lay.test else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset folder (created with synthetic prints if empty)")
    ap.add_argument("--preset", default="tiny", help="preset whose IMAGE_SIZE/CONTEXT_LENGTH the cache is for")
    ap.add_argument("--synthetic", default="default", help="size of a generated dataset: default | small")
    ap.add_argument("--manifest", action="store_true", help="write dataset.json for a Ukiyo-eVG tree")
    ap.add_argument("--cache-dir", default=None,
                    help="build the cache here instead of DATA/.cache (for a read-only data folder; "
                         "runs then need AR_CACHE_DIR set to it)")
    for name, (lo, hi) in CACHE_SIZE_BOUNDS.items():
        ap.add_argument("--" + name.lower().replace("_", "-"), type=int, default=None,
                        help=f"override the preset's {name} ({lo}..{hi})")
    ap.add_argument("--no-generate", action="store_true", help="fail instead of generating synthetic prints")
    a = ap.parse_args(argv)
    for name, (lo, hi) in CACHE_SIZE_BOUNDS.items():
        value = getattr(a, name.lower())
        if value is not None and not lo <= value <= hi:
            ap.error(f"--{name.lower().replace('_', '-')} {value}: must be within {lo}..{hi}")
    try:
        info = prepare(a.data, a.preset, a.synthetic, a.manifest, a.cache_dir,
                       log=lambda m: print(m, file=sys.stderr, flush=True), image_size=a.image_size,
                       context_length=a.context_length, generate=not a.no_generate)
    except (ODVGError, ValueError, FileExistsError) as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
