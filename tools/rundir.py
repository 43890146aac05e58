"""Reading what a run left in its run dir. The child wrote these files, so nothing here trusts them.

Every reader opens without following symlinks (a planted link could point at a host file this
unsandboxed process may read), reads a bounded number of bytes from a regular file only, parses
JSON with bounded size, depth and number length, and keeps finite numbers only. A reader never
raises on garbage: it returns nothing, or a problem string the recorder turns into a clear error.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 64 * 1024
MAX_STORED_STEPS = 2000
EVENTS_TAIL_BYTES = 8 * 1024          # progress: the last lines only
STEPS_TAIL_BYTES = 4 * 2**20          # the loss curve: the last 4 MiB of events.jsonl at most
MAX_EVENT_LINE = 4096                 # a longer events.jsonl line is skipped
MAX_METRICS_BYTES = 1 * 2**20
MAX_JSON_DEPTH = 16
MAX_INT_DIGITS = 30
CACHE_STATUS = "cache.status"
MAX_CACHE_STATUS = 500


class RunFileError(ValueError):
    """A run file that is missing, not a regular file, too big or not the JSON it should be."""


def open_run_file(path: Path):
    """Open a file of a run dir for reading: no symlink, regular files only (not a FIFO or a dir)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def read_tail(path: Path, max_bytes: int) -> bytes:
    """The last max_bytes of a run file (b"" when it cannot be read)."""
    try:
        with open_run_file(path) as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read(max_bytes)
    except OSError:
        return b""


# -- bounded JSON ----------------------------------------------------------------------------
def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _depth(obj) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_JSON_DEPTH:
            return d
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def _none_constant(name: str):
    return None


def loads_bounded(data: bytes | str, what: str, *, non_finite_as_none: bool = False):
    """json.loads with the limits above; RunFileError names `what` and the problem. NaN/Infinity are
    refused, or read as None with non_finite_as_none (a progress line whose loss diverged: a gap)."""
    try:
        obj = json.loads(data, parse_int=_bounded_int,
                         parse_constant=_none_constant if non_finite_as_none else _no_constant)
    except RecursionError:
        raise RunFileError(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{what} is not valid JSON ({str(exc)[:200]})") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise RunFileError(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return obj


def read_json_file(path: Path, max_bytes: int, what: str | None = None):
    """Parse a whole run file of at most max_bytes (RunFileError otherwise)."""
    what = what or Path(path).name
    try:
        with open_run_file(path) as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise RunFileError(f"{what} was not written") from None
    except OSError as exc:
        raise RunFileError(f"{what} cannot be read ({exc})") from None
    if len(data) > max_bytes:
        raise RunFileError(f"{what} is larger than {max_bytes} bytes")
    return loads_bounded(data, what)


def number(value) -> float | None:
    """A finite float, or None (bools, strings, huge or non-finite values are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def integer(value) -> int | None:
    v = number(value)
    return int(v) if v is not None and abs(v) < 2**53 else None


# -- progress and the loss curve (events.jsonl) ------------------------------------------------
@dataclass
class Progress:
    step: int | None = None
    loss: float | None = None
    elapsed: float | None = None
    fold: int | None = None


def _events(data: bytes):
    for line in data.splitlines():
        if not line or len(line) > MAX_EVENT_LINE:
            continue
        try:
            ev = loads_bounded(line, "events.jsonl line", non_finite_as_none=True)  # NaN loss: kept, as a gap
        except RunFileError:
            continue
        if isinstance(ev, dict):
            yield ev


def fold_dirs(run_dir: Path) -> list[Path]:
    """The per-fold folders of an eCLIP run (fold-0, fold-1, ...), in fold order; [] for other runs."""
    out = []
    k = 0
    while (d := Path(run_dir) / f"fold-{k}").is_dir() and not d.is_symlink():
        out.append(d)
        k += 1
    return out


def latest_progress(run_dir: Path) -> Progress:
    """The last progress line of the latest process's events.jsonl, read from the file's end."""
    folds = fold_dirs(run_dir)
    where = folds[-1] if folds else Path(run_dir)
    data = read_tail(where / "events.jsonl", EVENTS_TAIL_BYTES)
    last = Progress(fold=len(folds) - 1 if folds else None)
    for ev in _events(data):
        if (step := integer(ev.get("step"))) is not None:
            last = Progress(step=step, loss=number(ev.get("loss")), elapsed=number(ev.get("elapsed")),
                            fold=len(folds) - 1 if folds else integer(ev.get("fold")))
    return last


def thin(rows: list, cap: int) -> list:
    """At most `cap` rows, evenly spaced, the first and the last always kept (a curve ends where the run did)."""
    n = len(rows)
    if n <= cap:
        return list(rows)
    if cap < 2:
        return [rows[-1]][:cap]
    return [rows[round(i * (n - 1) / (cap - 1))] for i in range(cap)]


def read_all_steps(run_dir: Path) -> list[tuple[int, float | None, float | None]]:
    """The loss curve of a run: its folds one after the other (steps offset by the folds before)."""
    folds = fold_dirs(run_dir)
    if not folds:
        return read_steps(run_dir)
    rows, offset = [], 0
    for d in folds:
        part = read_steps(d)
        rows += [(offset + step, t, loss) for step, t, loss in part]
        offset += max((step for step, _, _ in part), default=0)
    return thin(rows, MAX_STORED_STEPS)


def read_steps(run_dir: Path) -> list[tuple[int, float | None, float | None]]:
    """Per-step loss from the end of events.jsonl, evenly thinned to a bounded count."""
    rows = [(step, number(ev.get("t")), number(ev.get("loss")))
            for ev in _events(read_tail(Path(run_dir) / "events.jsonl", STEPS_TAIL_BYTES))
            if (step := integer(ev.get("step"))) is not None]
    return thin(rows, MAX_STORED_STEPS)


# -- logs and small status files ----------------------------------------------------------------
def log_tail(run_dir: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of stderr (tracebacks live there), else of stdout, of the latest process
    (the last fold's folder of an eCLIP run)."""
    for where in [*reversed(fold_dirs(run_dir)), Path(run_dir)]:
        for name in ("stderr.log", "stdout.log"):
            text = read_tail(where / name, LOG_TAIL_BYTES).decode(errors="replace")
            if text.strip():
                return "\n".join(text.rstrip().splitlines()[-lines:])
    return ""


def read_cache_status(run_dir: Path) -> str | None:
    """The line the supervisor left about the data cache (the child can write there: bounded)."""
    try:
        with open_run_file(Path(run_dir) / CACHE_STATUS) as f:
            return f.read(MAX_CACHE_STATUS).decode(errors="replace")
    except OSError:
        return None


def write_cache_status(run_dir: Path, text: str) -> None:
    """Written by the supervisor; O_NOFOLLOW so a link planted in the run dir is not followed."""
    fd = os.open(Path(run_dir) / CACHE_STATUS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text[:MAX_CACHE_STATUS])


# -- metrics.json ---------------------------------------------------------------------------------
MAX_METRICS = 200          # aggregate numbers kept from one metrics.json
MAX_FOLDS = 100
MAX_FOLD_METRICS = 100
MAX_NAME = 100
MAX_TEXT_FACTS = 30        # non-numeric facts (device, versions, stopped_by ...) kept for provenance
MAX_TEXT_VALUE = 200


def read_metrics(run_dir: Path) -> tuple[dict | None, str | None]:
    """metrics.json as a dict, or (None, the problem)."""
    try:
        data = read_json_file(Path(run_dir) / "metrics.json", MAX_METRICS_BYTES)
    except RunFileError as exc:
        return None, str(exc)
    if not isinstance(data, dict):
        return None, "metrics.json is not a JSON object"
    return data, None


def metric_rows(metrics: dict) -> list[tuple[int | None, str, float]]:
    """(fold or None, name, value) for the finite numbers of a metrics dict, bounded in count and length."""
    rows: list[tuple[int | None, str, float]] = []
    for name, value in list(metrics.items())[:10 * MAX_METRICS]:
        if (v := number(value)) is not None and len(rows) < MAX_METRICS:
            rows.append((None, str(name)[:MAX_NAME], v))
    folds = metrics.get("folds")
    if isinstance(folds, list):
        for i, fold in enumerate(folds[:MAX_FOLDS]):
            if isinstance(fold, dict):
                rows += [(i, str(k)[:MAX_NAME], v) for k, val in list(fold.items())[:MAX_FOLD_METRICS]
                         if (v := number(val)) is not None]
    return rows


def text_facts(metrics: dict) -> dict:
    """The short non-numeric facts of a metrics dict (device, stopped_by, versions), bounded."""
    out = {}
    for k, v in metrics.items():
        if len(out) >= MAX_TEXT_FACTS:
            break
        if k == "folds" or number(v) is not None or isinstance(v, (dict, list)):
            continue
        if v is None or isinstance(v, bool):
            out[str(k)[:MAX_NAME]] = v
        elif isinstance(v, str):
            out[str(k)[:MAX_NAME]] = v[:MAX_TEXT_VALUE]
    return out
