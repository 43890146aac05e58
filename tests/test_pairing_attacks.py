"""Issue 20: nothing an agent writes can learn the eval pairing. Each attack is an attacker's
train.py run through the product path (real workspace, supervisor, sandbox, trusted scorer), on a
3-fold/3-pool tiny workspace, and each has a negative control that shows the test bites.

The attacks do no training: they read their task with numpy, so each run takes seconds.
- the cross-fold publisher, channel 1 (files): every process publishes its training pairs (content
  hashes) in its run folder and reads whatever other folds and runs published. Under the seed's
  leaky kfold-pooled protocol fold j's training pairs are the other folds' eval pools, so any
  readable neighbour is a perfect answer key. The workspace is masked for every run, under bwrap
  and landlock, under /tmp and outside /tmp and $HOME. Control: sandbox "none", and a human grant
  of the runs folder, both let the same script score far better than random.
- the publisher, channel 2 (the agent): a run prints its training pairs, the "agent" pastes them
  into a constant. Under the default split protocol no scored pair is in any training set: random.
  Control: the same two runs under kfold-pooled score far better than random (and are labelled leaky).
- the oracle: a probe that reads one row's true caption position off i2t_mean_rank. Every run gets
  fresh secret orders, so three identical probes read three unrelated answers. Control: the same
  probe on two deals with one fixed order reads the same answer twice.
- the reach probe: a run tries every secret of the workspace (other runs, the DB, optuna.db, the
  HTTP token, the config, supervisor.log, builds, keys, the data). Control: sandbox "none" reads them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

from model.constants import parse_constants
from model.tasks import build_tasks, deal_task, fresh_rng
from model.scoring import score_fold
from sandbox import available_backends
from tools import datacache
from tools import experiments as ex
from tools.clients import ensure_token
from tools.init import init_workspace
from tools.lab import Lab

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

HEADER = '''IMAGE_SIZE = @IMAGE_SIZE@
CONTEXT_LENGTH = @CONTEXT_LENGTH@
KNOWN = {}                       # pairs the agent pasted in: image hash -> caption hash
import glob, hashlib, json, os
from pathlib import Path
import numpy as np
task, out = os.environ["AR_TASK_DIR"], Path(os.environ["AR_RUN_DIR"])
def h(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
ti = np.load(task + "/train_images.npy", mmap_mode="r")
tt = np.load(task + "/train_tokens.npy")
ei = np.load(task + "/eval_images.npy", mmap_mode="r")
et = np.load(task + "/eval_tokens.npy")
'''

PUBLISHER = HEADER + '''
mine = {h(ti[i]): h(tt[i]) for i in range(len(tt))}
(out / "published.json").write_text(json.dumps(mine))
print("PAIRS " + json.dumps(mine), flush=True)          # channel 2: the agent reads the log
known, found = dict(KNOWN), []
ws = out.parents[3]                                       # <ws>/.autoresearch/runs/<id>/fold-<k>
for p in glob.glob(str(ws / ".autoresearch" / "runs" / "*" / "fold-*" / "published.json")):
    if Path(p) != out / "published.json":
        try:
            known.update(json.loads(Path(p).read_text()))
            found.append(p)
        except OSError:
            pass
rng = np.random.default_rng(0)
vec = {}
def v(key):
    return vec.setdefault(key, rng.normal(size=64))
txt = np.stack([v(h(et[j])) for j in range(len(et))])
img = np.stack([v(known[h(ei[i])]) if h(ei[i]) in known else rng.normal(size=64) for i in range(len(ei))])
matched = sum(h(ei[i]) in known for i in range(len(ei)))
(out / "attack.json").write_text(json.dumps({"found": found, "matched": matched, "n": len(ei)}))
np.save(out / "image_embeddings.npy", img.astype(np.float32))
np.save(out / "text_embeddings.npy", txt.astype(np.float32))
'''

# The oracle's probe: image row 0 is the only image that is not tied; captions lie on a quarter
# circle by their row, so row 0's rank inside its pool counts the pool's captions before its match.
PROBE_EMBEDDINGS = '''
def probe_embeddings(n):
    img = np.zeros((n, 3), np.float32)
    img[:, 2] = 1.0
    img[0] = (1.0, 0.0, 0.0)
    theta = np.arange(n) / n * (np.pi / 2)
    txt = np.stack([np.cos(theta), np.sin(theta), np.zeros(n)], 1).astype(np.float32)
    return img, txt
'''
ORACLE = HEADER + PROBE_EMBEDDINGS + '''
img, txt = probe_embeddings(len(et))
np.save(out / "image_embeddings.npy", img)
np.save(out / "text_embeddings.npy", txt)
'''

REACH = HEADER + '''
ws = out.parents[3]
me = out.parent.name
def reach(rel):
    p = ws / rel
    try:
        if p.is_dir():
            return "listed: " + " ".join(sorted(os.listdir(p)))
        with open(p, "rb") as f:
            f.read(1)
        return "read"
    except OSError as e:
        return type(e).__name__
targets = ["autoresearch.toml", "train.py", ".git/config", ".autoresearch/experiments.db",
           ".autoresearch/optuna.db", ".autoresearch/supervisor.log", ".autoresearch/http-token",
           ".autoresearch/tasks", ".autoresearch/keys", f".autoresearch/keys/{me}/fold-0.npz",
           ".autoresearch/runs", ".autoresearch/runs/1/fold-0/stdout.log", "data"]
(out / "reach.json").write_text(json.dumps({t: reach(t) for t in targets}))
rng = np.random.default_rng(0)
np.save(out / "image_embeddings.npy", rng.normal(size=(len(ei), 8)).astype(np.float32))
np.save(out / "text_embeddings.npy", rng.normal(size=(len(et), 8)).astype(np.float32))
'''


def _outside_root() -> Path | None:
    """A folder outside /tmp, /var/tmp, /run and $HOME (bwrap makes those private: a workspace there is
    hidden by accident), or None."""
    homes = {os.path.realpath(os.path.expanduser("~"))}
    private = ["/tmp", "/var/tmp", "/run", *homes]
    for cand in (Path("/var/lib/autoresearch-tests"), ROOT / ".test-workspaces"):
        try:
            cand.mkdir(parents=True, exist_ok=True)
            probe = Path(tempfile.mkdtemp(dir=cand))
            probe.rmdir()
        except OSError:
            continue
        real = os.path.realpath(cand)
        if not any(real == p or real.startswith(p.rstrip("/") + "/") for p in private):
            return cand
    return None


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One synthetic small dataset (512 train / 128 val pairs) shared by every workspace here."""
    ws = init_workspace(tmp_path_factory.mktemp("pairing") / "seed", preset="tiny", synthetic="small")
    return ws / "data" / "synthetic-prints"


@pytest.fixture(scope="module")
def make_lab(dataset, tmp_path_factory):
    made: list[tuple[Lab, Path]] = []

    def make(*, where: str = "tmp", protocol: str = "split", sandbox: str = "bwrap", read_only=()) -> Lab:
        if sandbox in ("bwrap", "landlock") and not available_backends()[sandbox]["available"]:
            pytest.skip(f"sandbox backend {sandbox} is not available here: {available_backends()[sandbox]['why']}")
        if where == "outside":
            base = _outside_root()
            if base is None:
                pytest.skip("no writable folder outside /tmp and $HOME for the workspace")
            root = base / f"ws-{uuid.uuid4().hex[:8]}"
        else:
            root = tmp_path_factory.mktemp("pairing") / "lab"
        ws = init_workspace(root, preset="tiny", data=str(dataset))
        toml = ws / "autoresearch.toml"
        text = toml.read_text()
        text = re.sub(r"(?m)^folds = \d+", "folds = 3", text)
        text = re.sub(r'(?m)^protocol = "[^"]*"', f'protocol = "{protocol}"', text)
        text = re.sub(r'(?m)^sandbox = "[^"]*"', f'sandbox = "{sandbox}"', text)
        text = re.sub(r"(?m)^baseline_seeds = \d+", "baseline_seeds = 0", text)
        if read_only:  # a top-level key: before the first [table]
            text = text.replace("\nnetwork = false", "\nread_only = [" + ", ".join(f'"{p}"' for p in read_only)
                                + "]\nnetwork = false", 1)
        toml.write_text(text)
        ensure_token(ws)
        lab = Lab.open(ws)
        assert (lab.config.folds, lab.config.protocol, lab.config.sandbox) == (3, protocol, sandbox)
        made.append((lab, root))
        return lab

    yield make
    for lab, root in made:
        lab.close()
        shutil.rmtree(root, ignore_errors=True)


SIZES: dict[Path, dict] = {}


def _run(lab: Lab, script: str, what: str, **known):
    consts = SIZES.setdefault(lab.root, parse_constants((lab.root / "train.py").read_text()))
    body = script.replace("@IMAGE_SIZE@", str(consts["IMAGE_SIZE"])).replace("@CONTEXT_LENGTH@",
                                                                              str(consts["CONTEXT_LENGTH"]))
    if known:
        body = body.replace("KNOWN = {}", f"KNOWN = {json.dumps(known['pairs'])}", 1)
    (lab.root / "train.py").write_text(body)
    r = ex.wait_for(lab, ex.submit_experiment(lab, what), timeout_s=900)
    assert r.status == "succeeded", (r.status, r.error)
    return r, ex.show_experiment(lab, r.id)


def _random(detail) -> float:
    return detail.metrics["random_mean_rank"]


def _attack(lab: Lab, exp_id: int) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(lab.run_dir(exp_id).glob("fold-*/attack.json"))]


def _assert_no_secrets_left(lab: Lab) -> None:
    """A recorded run leaves no key and no deal behind."""
    assert not any(datacache.keys_root(lab).glob("*/*.npz"))
    assert not (datacache.tasks_root(lab) / "live").exists() or not any((datacache.tasks_root(lab) / "live").iterdir())


# ---------------------------------------------------------------------------------------------
# Channel 1 and the reach probe, on both backends, under /tmp and outside it

@pytest.mark.parametrize("where", ["tmp", "outside"])
@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_a_run_reaches_no_other_fold_no_other_run_and_no_secret(make_lab, backend, where):
    lab = make_lab(where=where, protocol="kfold-pooled", sandbox=backend)
    first, _ = _run(lab, PUBLISHER, "publish the training pairs")
    second, detail = _run(lab, PUBLISHER, "read what the others published")
    for report in _attack(lab, first.id) + _attack(lab, second.id):
        assert report["found"] == [], report["found"]           # no other fold, no other run
    assert second.objective > 0.8 * _random(detail), (second.objective, _random(detail))
    assert "LEAKY" in (second.verdict_reason or "") + (detail.verdict_reason or "")
    reach, _ = _run(lab, REACH, "reach for the workspace's secrets")
    got = json.loads((lab.run_dir(reach.id) / "fold-0" / "reach.json").read_text())
    # a listing shows only the way to the run's own grants (its run folder, its own deal)
    own = {".autoresearch/runs": f"listed: {reach.id}", ".autoresearch/tasks": "listed: live"}
    opened = {t: r for t, r in got.items() if (r == "read" or r.startswith("listed")) and own.get(t) != r}
    assert opened == {}, opened
    _assert_no_secrets_left(lab)


def test_negative_control_without_isolation_the_publisher_wins_and_the_probe_reaches_everything(make_lab):
    lab = make_lab(where="outside", protocol="kfold-pooled", sandbox="none")
    _run(lab, PUBLISHER, "publish the training pairs")
    second, detail = _run(lab, PUBLISHER, "read what the others published")
    assert all(r["found"] for r in _attack(lab, second.id))
    assert second.objective < 0.2 * _random(detail), (second.objective, _random(detail))
    reach, _ = _run(lab, REACH, "reach for the workspace's secrets")
    got = json.loads((lab.run_dir(reach.id) / "fold-0" / "reach.json").read_text())
    for t in ("autoresearch.toml", "train.py", ".autoresearch/experiments.db", ".autoresearch/supervisor.log",
              ".autoresearch/http-token", ".autoresearch/tasks", f".autoresearch/keys/{reach.id}/fold-0.npz",
              ".autoresearch/runs/1/fold-0/stdout.log"):
        assert got[t] == "read" or got[t].startswith("listed: "), (t, got[t])
    assert got[".autoresearch/runs"] != f"listed: {reach.id}"              # every other run is there too


def test_negative_control_a_human_grant_of_the_runs_folder_opens_channel_1(make_lab):
    """The mask is what closes the channel: a human who grants the runs folder read-only opens it."""
    lab = make_lab(protocol="kfold-pooled", sandbox="bwrap", read_only=[".autoresearch/runs"])
    _run(lab, PUBLISHER, "publish the training pairs")
    second, detail = _run(lab, PUBLISHER, "read what the others published")
    assert all(r["found"] for r in _attack(lab, second.id))
    assert second.objective < 0.2 * _random(detail), (second.objective, _random(detail))


# ---------------------------------------------------------------------------------------------
# Channel 2: through the agent

def _printed_pairs(lab: Lab, exp_id: int) -> dict:
    pairs = {}
    for log in lab.run_dir(exp_id).glob("fold-*/stdout.log"):
        for line in log.read_text().splitlines():
            if line.startswith("PAIRS "):
                pairs.update(json.loads(line[6:]))
    assert pairs
    return pairs


@pytest.mark.parametrize("protocol", ["split", "kfold-pooled"])
def test_pairs_pasted_by_the_agent_are_worthless_under_the_split_protocol(make_lab, protocol):
    lab = make_lab(protocol=protocol, sandbox="bwrap")
    first, _ = _run(lab, PUBLISHER, "print the training pairs")
    pasted, detail = _run(lab, PUBLISHER, "the agent pasted them in", pairs=_printed_pairs(lab, first.id))
    rnd = _random(detail)
    if protocol == "split":   # no scored pair is in any training set: nothing to paste
        assert all(r["matched"] == 0 for r in _attack(lab, pasted.id))
        assert pasted.objective > 0.8 * rnd, (pasted.objective, rnd)
        assert "LEAKY" not in (detail.verdict_reason or "")
    else:                     # negative control: the seed's protocol hands every eval pair out
        assert all(r["matched"] == r["n"] for r in _attack(lab, pasted.id))
        assert pasted.objective < 0.05 * rnd, (pasted.objective, rnd)
        assert "LEAKY" in (detail.verdict_reason or "")


# ---------------------------------------------------------------------------------------------
# The oracle: the score of one run says nothing about the next run's row order

def _decode(fold_metrics: list[dict]) -> tuple[int, float]:
    """(the pool holding image row 0, the rank of its match there) from the per-pool i2t mean ranks."""
    for m in fold_metrics:
        n = m["n_val"]
        k = n * m["i2t_mean_rank"] - (n - 1) ** 2 / 2
        if abs(k - (n - 1) / 2) > 1e-6:   # only row 0's pool moves off the all-tied value
            return int(m["pool"]), round(k, 3)
    return -1, -1.0


def test_the_same_probe_reads_unrelated_answers_in_every_run(make_lab):
    lab = make_lab(protocol="split", sandbox="bwrap")
    answers = []
    for i in range(3):
        _, detail = _run(lab, ORACLE, f"probe {i}")
        assert len(detail.fold_metrics) == 3                      # three pools, scored apart
        answers.append(_decode(detail.fold_metrics))
    assert len(set(answers)) > 1, answers                          # fresh orders: no stable answer
    _assert_no_secrets_left(lab)


def test_negative_control_with_one_fixed_order_the_probe_is_an_oracle(dataset, tmp_path):
    """Switch the protection off in the test: two deals with the same order give the same answer."""
    build = tmp_path / "build"
    build_tasks(str(dataset), None, image_size=64, context_length=48, num_folds=3, out_dir=build, log=lambda *a: None)
    scope: dict = {"np": np}
    exec(PROBE_EMBEDDINGS, scope)
    answers = []
    for i, seed in enumerate((7, 7, None)):
        task, key, run = tmp_path / f"task{i}", tmp_path / f"key{i}.npz", tmp_path / f"run{i}"
        deal_task(build, 0, task, key, rng=np.random.default_rng(seed) if seed is not None else fresh_rng())
        n = len(np.load(task / "eval_tokens.npy"))
        img, txt = scope["probe_embeddings"](n)
        run.mkdir()
        np.save(run / "image_embeddings.npy", img)
        np.save(run / "text_embeddings.npy", txt)
        answers.append(_decode(score_fold(run, key)))
    assert answers[0] == answers[1] and answers[0][0] >= 0          # a fixed order: a stable, readable answer
    assert answers[2] != answers[0]                                 # a fresh one: not that answer
