"""A normal torch training child (DataLoader with 2 workers, a few steps, a saved file) runs under each backend."""

from __future__ import annotations

import json

import pytest

import sandbox_support as T
from sandbox.backends import available_backends
from sandbox.torch_smoke import TRAIN_SCRIPT

torch = pytest.importorskip("torch")
AV = available_backends()


@pytest.mark.parametrize("backend", [
    pytest.param(b, id=b, marks=() if AV[b]["available"] else pytest.mark.skip(reason=AV[b]["why"]))
    for b in ("bwrap", "landlock", "none")])
def test_torch_dataloader_training_runs(tmp_path, backend):
    tree = T.Tree.make(tmp_path / "t")
    run = T.run_hostile(tree, TRAIN_SCRIPT, backend, limits={"wall_seconds": 120.0, "memory_bytes": 4 << 30})
    assert run.result is not None, run.driver_stderr[-3000:]
    assert run.result["status"] == "exited" and run.result["returncode"] == 0, (run.result, run.stderr[-3000:])
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("SMOKE ")]
    assert line, run.stdout[-2000:] + run.stderr[-2000:]
    info = json.loads(line[-1][6:])
    assert info["ok"] and (tree.run_dir / "model.pt").stat().st_size > 0
    assert run.result["peak_memory_bytes"]
