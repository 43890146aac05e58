"""Shared fixtures: real workspaces (git repo, SQLite file) in tmp dirs; real child processes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def toy_ws(tmp_path):
    """A fresh workspace on the seconds-long `toy` preset."""
    from tools.init import init_workspace
    return init_workspace(tmp_path / "lab", preset="toy", time_budget_s=20)


@pytest.fixture
def lab(toy_ws):
    from tools.lab import Lab
    lab = Lab.open(toy_ws)
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def eclip_lab(tmp_path_factory):
    """A `tiny` eCLIP workspace on the small synthetic prints, shared by one test module."""
    from tools.init import init_workspace
    from tools.lab import Lab
    ws = init_workspace(tmp_path_factory.mktemp("eclip") / "lab", preset="tiny", synthetic="small")
    lab = Lab.open(ws)
    yield lab
    lab.close()


def processes_with_marker(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if marker in cmd:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_until(pred, timeout=30.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def missing_external(why: str, fix: str) -> None:
    """A program from outside Python is missing: skip with the command that enables it, or fail
    under AUTORESEARCH_REQUIRE_EXTERNAL=1 (CI installs it, so its absence there is a failure)."""
    if os.environ.get("AUTORESEARCH_REQUIRE_EXTERNAL") == "1":
        pytest.fail(f"{why} (AUTORESEARCH_REQUIRE_EXTERNAL=1). Fix: {fix}")
    pytest.skip(f"{why}. Enable with: {fix}")


def edit_train(lab, old: str, new: str) -> None:
    """Replace `old` (which must be there) by `new` once in the workspace's train.py."""
    train = lab.root / "train.py"
    text = train.read_text()
    assert old in text, old
    train.write_text(text.replace(old, new, 1))


def set_toml(lab, old: str, new: str) -> None:
    """Replace `old` by `new` once in autoresearch.toml and reload the lab's config."""
    import tomllib
    toml = lab.root / "autoresearch.toml"
    text = toml.read_text()
    assert old in text, old
    toml.write_text(text.replace(old, new, 1))
    lab.config = type(lab.config).model_validate(tomllib.loads(toml.read_text()))
