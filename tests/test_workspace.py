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


def test_apply_constants_rewrites_single_top_level_lines():
    from tools.workspace import apply_constants
    text = "LR = 1e-3   # peak\nSTEPS=10\nX = 1\nX = 2\n    LR = 5\nNAME = 'a'\n"
    out, left = apply_constants(text, {"LR": 0.5, "STEPS": 20, "X": 3, "MISSING": 1, "NAME": "b"})
    assert "LR = 0.5   # peak\n" in out and "STEPS = 20\n" in out and "NAME = 'b'\n" in out
    assert "    LR = 5" in out  # indented lines are not top-level constants
    assert left == {"X": 3, "MISSING": 1}  # ambiguous or absent: left to AR_PARAMS
