"""What the warmed tensor cache saves a run: loading train+val uncached vs from the cache, side by
side in one process, at the image sizes an agent is likely to try.

    python -m bench.data_cache --data DIR [--sizes 48 96 128] [--repeats 3]

DIR is a prepared dataset (e.g. a workspace's data/synthetic-prints, or a Ukiyo-eVG tree). The
cache is built into a temporary folder (DIR is not written); each figure is the median of
--repeats loads. "uncached" is what a run pays when no cache exists for its IMAGE_SIZE (decode and
resize every image); "cached" is what it pays after tools/datacache.py warmed it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.data import load_pairs  # noqa: E402
from model.odvg import resolve_dataset  # noqa: E402
from bench.common import record  # noqa: E402


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 96, 128])
    ap.add_argument("--context-length", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    root = resolve_dataset(a.data).root
    quiet = lambda m: None  # noqa: E731
    print(f"dataset {root}, context {a.context_length}, median of {a.repeats}")
    print(f"{'px':>5} {'pairs':>7} {'uncached s':>11} {'cached s':>9} {'ratio':>7}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes:
            if any((root / ".cache").glob(f"*-{size}px-*")):
                print(f"{size:>5}  skipped: DATA/.cache already holds this size (its uncached load cannot be timed)")
                continue
            # cache_dir=None: nothing found (DATA/.cache lacks this size), nothing saved: the cold path
            uncached = timed(lambda: load_pairs(size, a.context_length, data_dir=root, cache_dir=None, log=quiet),
                             a.repeats)
            n = len(load_pairs(size, a.context_length, data_dir=root, cache_dir=tmp, log=quiet))  # builds it
            cached = timed(lambda: load_pairs(size, a.context_length, data_dir=root, cache_dir=tmp, log=quiet),
                           a.repeats)
            print(f"{size:>5} {n:>7} {uncached:>11.2f} {cached:>9.2f} {uncached / cached:>6.0f}x")
            rows.append({"px": size, "pairs": n, "uncached_s": uncached, "cached_s": cached})
    record("data_cache", vars(a), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
