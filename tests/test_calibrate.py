"""init measures the machine: the time budget it writes fits the step budget with 2x headroom, and
the thread count is the faster one measured (real sandboxed runs of the template)."""

import tomllib

import pytest

from model.constants import parse_constants
from tools.calibrate import HEADROOM
from tools.init import init_workspace


@pytest.mark.slow
def test_init_writes_a_measured_budget_and_thread_count(tmp_path):
    lines = []
    ws = init_workspace(tmp_path / "lab", preset="tiny", synthetic="small", calibrate=True, on_progress=lines.append)
    text = "\n".join(lines)
    assert "calibrated:" in text, text[-2000:]
    cfg = tomllib.loads((ws / "autoresearch.toml").read_text())
    steps = parse_constants((ws / "train.py").read_text())["MAX_STEPS"]
    per_step = min(float(line.split(": ")[1].split(" s/step")[0]) for line in lines if "s/step" in line and "thread" in line
                   and "calibrated" not in line)
    assert cfg["time_budget_s"] >= HEADROOM * per_step * steps * cfg["folds"] - 1
    assert isinstance(cfg["threads"], int) and cfg["threads"] >= 1
    log = __import__("subprocess").run(["git", "-C", str(ws), "log", "--oneline"], capture_output=True, text=True)
    assert "calibrated time budget" in log.stdout  # committed: the workspace's config is tracked
