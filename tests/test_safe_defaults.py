"""Issue 13: nothing of the user's is lost, bad params are refused before anything is made, the
defaults are safe (a memory cap per run). Real workspaces, real git, real SQLite, real runs."""

import subprocess
import tomllib

import pytest

from tools import experiments as ex
from tools.errors import ToolError
from tools.init import init_workspace
from tools.workspace import SAVED_REF


def _refs(lab) -> str:
    return lab.workspace.git("for-each-ref", "refs/autoresearch")


@pytest.mark.parametrize("params, words", [
    ({"LR": "fast"}, ["params.LR", "float", '{"LR": 0.1}']),
    ({"STEPS": 32.5}, ["params.STEPS", "int", '{"STEPS": 200}']),
    ({"NOT_A_CONSTANT": 1}, ["params.NOT_A_CONSTANT", "no top-level constant", "LR"]),
    ({"SEED": True}, ["params.SEED", "int"]),
])
def test_bad_params_are_refused_at_submit_and_make_nothing(lab, params, words):
    refs_before, rows_before = _refs(lab), lab.store.count_experiments()
    with pytest.raises(ToolError) as err:
        ex.submit_experiment(lab, "bad params", params=params)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert lab.store.count_experiments() == rows_before and _refs(lab) == refs_before


def test_revert_saves_unsaved_edits_and_says_how_to_restore_them(lab):
    base = ex.run_experiment(lab, "baseline")
    train = lab.root / "train.py"
    mine = train.read_text().replace("LR = 0.1 ", "LR = 0.7 ") + "# my unsaved idea\n"
    train.write_text(mine)
    r = ex.revert(lab, base.id)
    assert r.restored == ["train.py"] and r.saved_edits and "revert('saved')" in r.next
    assert "# my unsaved idea" not in train.read_text()
    assert lab.workspace.ref(SAVED_REF) == r.saved_edits
    back = ex.revert(lab, "saved")
    assert train.read_text() == mine and back.restored == ["train.py"]
    # nothing unsaved this time (the files equal the saved edits): no new save
    again = ex.revert(lab, base.id)
    assert again.saved_edits is None and lab.workspace.ref(SAVED_REF) == r.saved_edits


def test_init_refuses_a_non_empty_folder_and_adopts_without_overwriting(tmp_path):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "train.py").write_text("print('my own training script')\n")
    (mine / "notes.txt").write_text("private\n")
    with pytest.raises(ToolError, match="not empty .*--adopt"):
        init_workspace(mine, preset="toy")
    assert (mine / "train.py").read_text() == "print('my own training script')\n"
    lines = []
    init_workspace(mine, preset="toy", adopt=True, on_progress=lines.append)
    assert (mine / "train.py").read_text() == "print('my own training script')\n"  # never overwritten
    assert any("kept your train.py" in line for line in lines)
    assert (mine / "autoresearch.toml").is_file() and (mine / "score.py").is_file()
    tracked = subprocess.run(["git", "-C", str(mine), "ls-files"], capture_output=True, text=True).stdout.split()
    assert "notes.txt" not in tracked and "train.py" not in tracked and "autoresearch.toml" in tracked


def test_every_workspace_gets_a_memory_cap_per_run(toy_ws):
    cfg = tomllib.loads((toy_ws / "autoresearch.toml").read_text())
    assert cfg["memory_limit_gb"] >= 1.0
    import psutil
    assert cfg["memory_limit_gb"] <= psutil.virtual_memory().total / 2**30
