"""The trusted scorer: every objective the store keeps is computed here, never by the agent's code.

Two kinds, set by `scorer` in autoresearch.toml:
- "eclip" (default): each fold's sandboxed process hands back embeddings of its unpaired eval
  pool; `score_eclip` checks them and computes the fixed protocol with the pairing it alone holds
  (model/scoring.py: numpy, frozen), then the mean and std over folds and the random baseline.
- a command, e.g. ["python", "score.py"]: the workspace's own frozen scorer, run in the sandbox
  after the run with the run's outputs read-only (tools/launch.py); it prints one JSON object on
  its last stdout line. `parse_command_score` reads that line with bounds.

What the run's own metrics.json says is kept as informational extras (`extras`): bounded, never
the objective. A run that wrote a score of its own is recorded as an integrity event.
"""

from __future__ import annotations

import math
from pathlib import Path

from model import scoring as scorer
from tools.rundir import RunFileError, loads_bounded, number, read_tail

# names that only the scorer may set; a run's metrics.json claiming one is an integrity event
SCORE_KEYS = {"objective", "protocol", "objective_std", "objective_name", "direction", "mean_rank", "mean_rank_std",
              "median_rank", "random_mean_rank", "n_val", "twin_acc", "folds", "score",
              *(f"{d}_{k}" for d in ("i2t", "t2i") for k in scorer.DIRECTION_KEYS)}
MAX_SCORE_LINE = 1 << 20


class ScoreError(ValueError):
    """The run's outputs cannot be scored; the message names the file and the fix."""


def score_eclip(run_dir: Path, keys: list[Path], protocol: str = "split") -> dict:
    """The protocol's flat block from each process's embeddings (run_dir/fold-k) and this run's key for
    it (keys[k]): every eval pool scored on its own, then the mean and std over pools."""
    pools = []
    for k, key in enumerate(keys):
        try:
            pools += scorer.score_fold(Path(run_dir) / f"fold-{k}", key)
        except scorer.ScoringError as exc:
            raise ScoreError(f"fold {k}: {exc}" if len(keys) > 1 else str(exc)) from None
    block = scorer.summarize(pools)
    block["protocol"] = protocol
    check_plausible(block, upper=block["random_mean_rank"] * 2 + 1)
    return block


def parse_command_score(stdout_path: Path, objective: str) -> dict:
    """The last JSON line the workspace scorer printed: a dict with a finite `objective`."""
    tail = read_tail(stdout_path, MAX_SCORE_LINE).decode(errors="replace").strip().splitlines()
    if not tail:
        raise ScoreError("the scorer printed nothing. Fix: it must print one JSON object with the objective "
                         "on its last stdout line")
    try:
        block = loads_bounded(tail[-1], "the scorer's last line")
    except RunFileError as exc:
        raise ScoreError(f"{exc}. Fix: print one JSON object on the last stdout line") from None
    if not isinstance(block, dict):
        raise ScoreError("the scorer's last line is not a JSON object")
    if number(block.get(objective)) is None:
        raise ScoreError(f"the scorer's result has no finite number {objective!r} (the objective named in "
                         "autoresearch.toml)")
    check_plausible(block)
    return block


def check_plausible(block: dict, upper: float | None = None) -> None:
    """Finite numbers only; stds are >= 0; the objective within [0, upper] when a range is known and
    never beyond 1e12 in size (a -1e308 'best' would stand forever)."""
    obj = number(block.get("objective"))
    if obj is None or abs(obj) > 1e12 or (upper is not None and not 0 <= obj <= upper):
        raise ScoreError(f"objective {block.get('objective')!r} is outside its range"
                         + (f" [0, {upper:g}]" if upper is not None else " (|x| <= 1e12)"))
    for key, value in block.items():
        if key.endswith("_std") and value is not None:
            v = number(value)
            if v is None or v < 0 or not math.isfinite(v):
                raise ScoreError(f"{key} = {value!r}: a spread must be a finite number >= 0")


def extras(metrics: dict | None) -> tuple[dict, list[str]]:
    """The run's own metrics.json without the keys only the scorer may set; and those keys."""
    if not metrics:
        return {}, []
    claimed = sorted(k for k in metrics if k in SCORE_KEYS)
    return {k: v for k, v in metrics.items() if k not in SCORE_KEYS}, claimed
