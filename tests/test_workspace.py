import pytest
import subprocess

from tools.workspace import BEST_REF, Workspace


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


def test_snapshot_leaves_branch_and_index_alone(toy_ws):
    ws = Workspace(toy_ws, ["train.py"])
    head_before = ws.head()
    (toy_ws / "train.py").write_text((toy_ws / "train.py").read_text() + "\n# change A\n")
    (toy_ws / "notes.txt").write_text("untracked scratch")
    commit = ws.snapshot("experiment 1")
    ws.set_experiment_ref(1, commit)
    assert ws.head() == head_before  # the user's branch did not move
    assert _git(toy_ws, "diff", "--cached", "--name-only") == ""  # nor their staging area
    assert ws.ref("refs/autoresearch/exp/1") == commit
    assert ws.read_snapshot_file(commit, "train.py").endswith(b"# change A\n")
    assert ws.read_snapshot_file(commit, "notes.txt") is None  # only editable files are captured
    assert "+# change A" in ws.diff(None, commit)


def test_restore_makes_bytes_equal_and_touches_nothing_else(toy_ws):
    ws = Workspace(toy_ws, ["train.py"])
    original = (toy_ws / "train.py").read_bytes()
    first = ws.snapshot("one")
    (toy_ws / "train.py").write_bytes(original + b"LR = 99\n")
    (toy_ws / "other.txt").write_text("keep me")
    ws.snapshot("two")
    assert ws.restore(first) == ["train.py"]
    assert (toy_ws / "train.py").read_bytes() == original
    assert (toy_ws / "other.txt").read_text() == "keep me"
    assert ws.restore(first) == []  # idempotent
    ws.advance_best(first)
    assert ws.ref(BEST_REF) == first


def test_rewrite_constants_rewrites_single_top_level_lines():
    from model.constants import ConstantError, rewrite_constants
    text = "LR = 1e-3   # peak\nSTEPS=10\nX = 1\nX = 2\n    LR = 5\nNAME = 'a'\n"
    out = rewrite_constants(text, {"LR": 0.5, "STEPS": 20, "NAME": "b"})
    assert "LR = 0.5    # peak\n" in out  # the comment keeps its column and "STEPS = 20\n" in out and 'NAME = "b"\n' in out
    assert "    LR = 5" in out  # indented lines are not top-level constants
    for ambiguous_or_absent in ({"X": 3}, {"MISSING": 1}):  # never silently left to the environment
        with pytest.raises(ConstantError, match=next(iter(ambiguous_or_absent))):
            rewrite_constants(text, ambiguous_or_absent)


def test_params_are_checked_against_the_constants_before_anything_is_made():
    from tools.errors import ToolError
    from tools.params import bake
    text = "LR = 1e-3\nBATCH_SIZE = 64\nAMP = True\nNAME = 'a'\n"
    assert "LR = 0.0001" in bake(text, {"LR": 1e-4}, "train.py")
    assert "LR = 2.0" in bake(text, {"LR": 2}, "train.py")  # an int is a fine float
    for params, words in [({"LR": "fast"}, ["LR", "float", '{"LR": 0.001}']),
                          ({"BATCH_SIZE": 32.5}, ["BATCH_SIZE", "int", '{"BATCH_SIZE": 64}']),
                          ({"AMP": 1}, ["AMP", "bool"]), ({"LR": float("nan")}, ["LR", "finite"]),
                          ({"NOT_THERE": 1}, ["NOT_THERE", "no top-level constant", "BATCH_SIZE"])]:
        with pytest.raises(ToolError) as err:
            bake(text, params, "train.py")
        assert all(w in str(err.value) for w in words), (params, str(err.value))
