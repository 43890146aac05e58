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


def test_each_fold_sees_only_its_own_task(eclip_lab, tmp_path):
    """With 3 folds, fold 1's process reads its task folder only: the dataset, the tensor cache, the
    other folds and every key are hidden."""
    lab = eclip_lab
    root = datacache.tasks_root(lab)
    build = root / "val-64px-tok48-k3-test"
    for k in range(3):
        (build / f"fold-{k}" / "task").mkdir(parents=True, exist_ok=True)
        (build / f"fold-{k}" / "key.npz").write_bytes(b"x")
    exp = {"id": 1, "time_budget_s": 30}
    policy = sandbox_policy(lab, exp, tmp_path / "fold-1", lab.root / "train.py", task_dir=build / "fold-1" / "task",
                            fold=1, budget_s=10)
    hidden = {str(h) for h in policy.hidden}
    datacache.cache_dir(lab).mkdir(parents=True, exist_ok=True)
    policy = sandbox_policy(lab, exp, tmp_path / "fold-1", lab.root / "train.py", task_dir=build / "fold-1" / "task",
                            fold=1, budget_s=10)
    hidden = {str(h) for h in policy.hidden}
    for path in (lab.data_dir(), datacache.cache_dir(lab), build / "fold-0", build / "fold-2",
                 build / "fold-1" / "key.npz"):
        assert str(path) in hidden, path
    assert str(build / "fold-1" / "task") in {str(p) for p in policy.read_only}
    assert policy.env["AR_TASK_DIR"] == str(build / "fold-1" / "task") and "AR_DATA_DIR" not in policy.env
    assert policy.env["AR_TIME_BUDGET_S"] == "10" and policy.env["AR_FOLD"] == "1"


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
    assert "scoring: fold 0:" in r.error and all(w in r.error for w in words), r.error
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
    detail = ex.show_experiment(lab, r.id)
    random_mr = detail.metrics["random_mean_rank"]
    assert 0.8 * random_mr < r.objective < 1.2 * random_mr, (r.objective, random_mr)
    assert json.loads(json.dumps(detail.config))["run"]["objective_name"] == "mean_rank"
