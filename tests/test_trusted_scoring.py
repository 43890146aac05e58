"""Issue 11 through the product path (real workspace, supervisor, sandbox): the harness scores every
run; what train.py claims is never the objective; no pairing of the eval pool is readable."""

import json

import pytest

from tools import datacache
from tools import experiments as ex
from tools.launch import sandbox_policy


CLAIM = '''
import atexit, json, os
def claim():  # a perfect score, written at exit over whatever the run wrote
    json.dump({"objective": 0.0, "mean_rank": 0.0, "val_loss": 0.0},
              open(os.path.join(os.environ["AR_RUN_DIR"], "metrics.json"), "w"))
atexit.register(claim)
'''


def test_a_perfect_objective_in_metrics_json_is_ignored_and_recorded(lab):
    honest = ex.run_experiment(lab, "baseline")
    assert honest.status == "succeeded" and honest.objective > 0.1
    train = lab.root / "train.py"
    train.write_text(train.read_text() + CLAIM)
    hack = ex.run_experiment(lab, "the same run, claiming a perfect score")
    assert hack.status == "succeeded", hack.error
    assert hack.objective == honest.objective  # the scorer's number, bit for bit
    events = lab.store.integrity_events(hack.id)
    assert [e["kind"] for e in events] == ["self_scored"] and "objective" in events[0]["detail"]
    shown = ex.show_experiment(lab, hack.id)
    assert shown.metrics["objective"] == honest.objective and shown.metrics["val_loss"] == honest.objective


def test_a_process_sees_only_its_own_deal(eclip_lab, tmp_path):
    """A process's policy grants its own task folder of this run only; the workspace and its state are
    masked (shown empty), so builds, other runs' deals, every key, the DB and the data are out of sight."""
    lab = eclip_lab
    run_dir = lab.run_dir(1)
    (run_dir / "fold-0").mkdir(parents=True, exist_ok=True)
    live = datacache.tasks_root(lab) / "live" / "1" / "fold-0"
    live.mkdir(parents=True, exist_ok=True)
    exp = {"id": 1, "time_budget_s": 30}
    policy = sandbox_policy(lab, exp, run_dir / "fold-0", run_dir / "code", task_dir=live, fold=0, budget_s=10)
    assert lab.root in policy.masked and lab.state_dir in policy.masked
    grants = [policy.run_dir, *policy.read_only]
    for secret in (datacache.tasks_root(lab), datacache.keys_root(lab), lab.store.path, lab.data_dir(),
                   datacache.cache_dir(lab), run_dir, lab.root / "train.py", lab.state_dir / "optuna.db"):
        assert not any(g == secret or g in secret.parents for g in grants), secret
    assert live in policy.read_only and run_dir / "code" in policy.read_only
    assert policy.env["AR_TASK_DIR"] == str(live) and "AR_DATA_DIR" not in policy.env
    assert policy.env["AR_TIME_BUDGET_S"] == "10" and policy.env["AR_FOLD"] == "0"


def _embeddings_train_py(body: str) -> str:
    return ("IMAGE_SIZE = 64\nCONTEXT_LENGTH = 48\nimport os\nimport numpy as np\nfrom model import runtime\n"
            "task = runtime.load_task(IMAGE_SIZE, CONTEXT_LENGTH)\nn = len(task.eval_images)\n"
            "out = os.environ['AR_RUN_DIR']\n" + body)


@pytest.mark.parametrize("body, words", [
    ("np.save(os.path.join(out, 'image_embeddings.npy'), np.ones((n - 1, 8), np.float32))\n"
     "np.save(os.path.join(out, 'text_embeddings.npy'), np.ones((n, 8), np.float32))\n", ["image_embeddings.npy", "rows"]),
    ("x = np.ones((n, 8), np.float32); x[3, 2] = np.nan\n"
     "np.save(os.path.join(out, 'image_embeddings.npy'), x)\n"
     "np.save(os.path.join(out, 'text_embeddings.npy'), np.ones((n, 8), np.float32))\n", ["image_embeddings.npy", "finite"]),
    ("np.save(os.path.join(out, 'image_embeddings.npy'), np.ones((n, 9000), np.float32))\n"
     "np.save(os.path.join(out, 'text_embeddings.npy'), np.ones((n, 9000), np.float32))\n", ["image_embeddings.npy", "8192"]),
    ("", ["image_embeddings.npy"]),
])
def test_malformed_embeddings_fail_the_run_with_a_clear_error(eclip_lab, body, words):
    lab = eclip_lab
    train = lab.root / "train.py"
    original = train.read_bytes()
    train.write_text(_embeddings_train_py(body))
    try:
        r = ex.run_experiment(lab, "hand back bad embeddings")
    finally:
        train.write_bytes(original)
    assert r.status == "failed" and r.objective is None
    assert "scoring: " in r.error and all(w in r.error for w in words), r.error
    assert "Fix:" in r.error


def test_random_embeddings_score_like_chance(eclip_lab):
    """Without a pairing, the best an agent's code can do without learning is chance."""
    lab = eclip_lab
    train = lab.root / "train.py"
    original = train.read_bytes()
    train.write_text(_embeddings_train_py(
        "rng = np.random.default_rng(0)\n"
        "runtime.save_embeddings(rng.normal(size=(n, 16)), rng.normal(size=(n, 16)))\n"))
    try:
        r = ex.run_experiment(lab, "random embeddings")
    finally:
        train.write_bytes(original)
    assert r.status == "succeeded", r.error
    detail = ex.show_experiment(lab, r.id, detail="full")
    random_mr = detail.metrics["random_mean_rank"]
    assert 0.8 * random_mr < r.objective < 1.2 * random_mr, (r.objective, random_mr)
    assert json.loads(json.dumps(detail.config))["run"]["objective_name"] == "mean_rank"


def test_a_syntax_error_in_train_py_is_named_not_blamed_on_the_sizes(eclip_lab):
    """Issue 28: both sizes set, a syntax error below them: the run's error names the SyntaxError and its
    line, never 'must set IMAGE_SIZE and CONTEXT_LENGTH' (the negative control: a missing size says so)."""
    lab = eclip_lab
    train = lab.root / "train.py"
    original = train.read_bytes()
    try:
        train.write_text("IMAGE_SIZE = 64\nCONTEXT_LENGTH = 48\n\ndef broken(:\n    pass\n")
        r = ex.run_experiment(lab, "a typo")
        assert r.status == "failed" and r.objective is None
        assert "SyntaxError" in r.error and "line 4" in r.error, r.error
        assert "must set" not in r.error, r.error
        train.write_text("IMAGE_SIZE = 64\n")
        control = ex.run_experiment(lab, "no CONTEXT_LENGTH")
        assert control.status == "failed" and "CONTEXT_LENGTH" in control.error and "SyntaxError" not in control.error
    finally:
        train.write_bytes(original)
