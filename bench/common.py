"""What every benchmark shares: machine info, robust statistics, tables, and the results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("AR_BENCH_RESULTS", ROOT / "bench" / "results.jsonl"))


def machine() -> dict:
    """Enough to tell two result lines' machines apart (and how busy this one was)."""
    info = {"host": platform.node(), "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "load": [round(x, 2) for x in os.getloadavg()]}
    try:
        info["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split()
        info["mem_gb"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        info["git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values: list[float]) -> dict:
    """p50/p95/max/min and the spread (IQR / median) of a list of timings."""
    if not values:
        return {"n": 0}
    med = statistics.median(values)
    return {"n": len(values), "p50": med, "p95": pct(values, 0.95), "min": min(values), "max": max(values),
            "spread": (pct(values, 0.75) - pct(values, 0.25)) / med if med else 0.0}


def timed(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def table(title: str, header: list[str], rows: list[list]) -> str:
    """A plain aligned table (numbers right-aligned)."""
    cells = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for r in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def _cell(c) -> str:
    if isinstance(c, float):
        if c != c:
            return "-"
        return f"{c:.3g}" if abs(c) < 100 else f"{c:.0f}"
    return "-" if c is None else str(c)


def record(bench: str, args: dict, results, path: Path | None = None) -> None:
    """Append one JSON line: the benchmark, its arguments, the machine and the figures."""
    path = Path(path or RESULTS)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"bench": bench, "t": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": args, "machine": machine(),
            "results": results}
    with open(path, "a") as f:
        f.write(json.dumps(line, default=str) + "\n")
    print(f"[{bench}: appended to {path}]", file=sys.stderr)
