"""The data a run trains and is scored on is built before it by trusted code (per-fold task
folders, the tensor cache behind them); a run sees only its own fold's task, read-only.
Real init (synthetic prints), real sandboxed runs of the eCLIP template."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import datacache, experiments as ex

ROOT = Path(__file__).resolve().parents[1]


def test_requested_sizes_reads_only_literal_constants(tmp_path):
    f = tmp_path / "train.py"
    f.write_text("IMAGE_SIZE = 48\nCONTEXT_LENGTH: int = 32\n")
    assert datacache.requested_sizes(f) == (48, 32)
    f.write_text("IMAGE_SIZE = 48\nCONTEXT_LENGTH = 32\nIMAGE_SIZE = int('64')\n")  # computed later: unknown
    assert datacache.requested_sizes(f) is None
    f.write_text("IMAGE_SIZE = 48\nCONTEXT_LENGTH = 32\nIMAGE_SIZE += 16\n")
    assert datacache.requested_sizes(f) is None
    f.write_text("IMAGE_SIZE = 10**6\nCONTEXT_LENGTH = 32\n")  # out of bounds
    assert datacache.requested_sizes(f) is None
    f.write_text("IMAGE_SIZE = True\nCONTEXT_LENGTH = 32\n")  # a bool is not a size
    assert datacache.requested_sizes(f) is None
    f.write_text("def broken(:\n")
    assert datacache.requested_sizes(f) is None


SMOKE = {"MAX_STEPS": 2, "EVAL_BATCH_SIZE": 64}


def test_a_run_finds_its_task_build_made_before_it_started(eclip_lab):
    lab = eclip_lab
    hints = []
    r1 = ex.run_experiment(lab, "48 px", params={**SMOKE, "IMAGE_SIZE": 48}, poll_s=0.1,
                           on_progress=lambda s: hints.append(s.next or ""))
    assert r1.status == "succeeded", r1.error
    # while the tasks are built (a child importing torch: >= 1 s), polls say so
    assert any(h.startswith("building the tasks (48 px") for h in hints), hints[:5]
    status = (lab.run_dir(r1.id) / "cache.status").read_text()
    assert status.startswith("built (48 px"), status
    builds = list(datacache.tasks_root(lab).glob("val-48px-tok48-split1-*"))
    assert len(builds) == 1 and (builds[0] / "fold-0" / "pool" / "eval_pool.npy").is_file()
    assert not datacache.dealt_keys(lab, str(r1.id))   # the run's key lived only while it was in flight
    assert any(datacache.cache_dir(lab).glob("*-48px-v*.npz"))  # the tensor cache behind the build
    log = (lab.run_dir(r1.id) / "fold-0" / "stdout.log").read_text()
    assert "building a one-fold task" not in log  # the run loaded its task, it did not make one
    assert lab.store.get_experiment(r1.id)["config_json"].count("built (48 px") == 1

    r2 = ex.run_experiment(lab, "48 px again", params={**SMOKE, "IMAGE_SIZE": 48})
    assert r2.status == "succeeded", r2.error
    assert (lab.run_dir(r2.id) / "cache.status").read_text().startswith("ready (48 px")


def test_runs_cannot_write_their_task_nor_read_the_data_the_cache_or_the_keys(eclip_lab):
    from sandbox import choose_backend
    if choose_backend() == "none":
        pytest.skip("needs an isolating sandbox backend (bwrap or landlock)")
    lab = eclip_lab
    train = lab.root / "train.py"
    original = train.read_bytes()
    build = next(datacache.tasks_root(lab).glob("val-64px-tok48-split1-*"), None)
    probe = ("IMAGE_SIZE = 64\nCONTEXT_LENGTH = 48\nimport os, glob\n"
             f"for p in [{str(lab.data_dir() / 'train.jsonl')!r}, {str(datacache.cache_dir(lab))!r}, "
             f"{str(datacache.keys_root(lab))!r} + '/*/fold-0.npz']:\n"
             "    hits = glob.glob(p) or [p]\n"
             "    try:\n        open(hits[0], 'rb').read(1) if not os.path.isdir(hits[0]) else os.listdir(hits[0])\n"
             "        print('READ', p)\n    except OSError as e:\n        print('DENIED', p, type(e).__name__)\n"
             "open(os.path.join(os.environ['AR_TASK_DIR'], 'poisoned.npy'), 'w').write('x')\n")
    train.write_text(probe)
    try:
        r = ex.run_experiment(lab, "poison the task, peek at the pairing")
    finally:
        train.write_bytes(original)
    out = (lab.run_dir(r.id) / "fold-0" / "stdout.log").read_text()
    assert "READ" not in out and out.count("DENIED") == 3, out
    assert build is None or not list(build.rglob("poisoned.npy"))
    assert r.status == "failed" and "integrity:" in r.error


def test_init_on_a_read_only_dataset_puts_the_cache_in_the_workspace(eclip_lab, tmp_path):
    """A dataset folder init cannot write (a shared read-only mount): its cache goes to the workspace."""
    data = tmp_path / "dataset"
    shutil.copytree(eclip_lab.data_dir(), data, ignore=shutil.ignore_patterns(".cache"))
    argv = [sys.executable, "-m", "server.cli", "init", str(tmp_path / "lab"), "--preset", "tiny", "--data", str(data)]
    if os.geteuid() == 0:  # root ignores mode bits: make the folder a read-only mount instead
        if shutil.which("bwrap") is None:
            pytest.skip("as root this needs bwrap for a read-only bind mount")
        argv = ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(data), str(data), *argv]
    else:
        for d in (data, *[p for p in data.rglob("*") if p.is_dir()]):
            d.chmod(0o555)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    finally:
        for d in (data, *[p for p in data.rglob("*") if p.is_dir()]):
            d.chmod(0o755)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (data / ".cache").exists()
    assert any((tmp_path / "lab" / ".autoresearch" / "cache").glob("*-64px-v*.npz"))


def test_agent_runs_see_neither_test_annotations_nor_test_images(eclip_lab):
    """Agent runs see no dataset at all (their fold's task folder only): no test image, no heldout/."""
    from sandbox import choose_backend
    lab = eclip_lab
    data = lab.data_dir()
    assert any((data / "heldout" / "images").glob("test_*")) and not any((data / "images").glob("test_*"))
    train = lab.root / "train.py"
    original = train.read_bytes()
    train.write_text("IMAGE_SIZE = 64\nCONTEXT_LENGTH = 48\nimport os\n"
                     f"d = {str(data)!r}\n"
                     "for sub in ('images', 'heldout'):\n"
                     "    try:\n        seen = os.listdir(os.path.join(d, sub))\n    except OSError as e:\n"
                     "        seen = type(e).__name__\n    print('SEEN', sub, seen if isinstance(seen, str) else len(seen))\n"
                     "print('TASK', sorted(os.listdir(os.environ['AR_TASK_DIR'])))\n")
    try:
        r = ex.run_experiment(lab, "look for the test split")
    finally:
        train.write_bytes(original)
    out = (lab.run_dir(r.id) / "fold-0" / "stdout.log").read_text()
    assert "eval_images.npy" in out and "key.npz" not in out, out
    if choose_backend() != "none":
        for sub in ("images", "heldout"):
            assert f"SEEN {sub} 0" in out or f"SEEN {sub} PermissionError" in out or \
                f"SEEN {sub} FileNotFoundError" in out, out


def test_the_human_test_evaluation_reads_the_held_out_images(eclip_lab):
    """evaluate_test opens heldout/ (annotations and images) for that one run of the real template."""
    from tools import testeval
    lab = eclip_lab
    r = ex.run_experiment(lab, "smoke for the test look", params=SMOKE)
    assert r.status == "succeeded", r.error
    ev = testeval.evaluate_test(lab, r.id)
    assert ev.status == "succeeded", ev.error
    assert ev.metrics["n_val"] == 128 and ev.metrics["random_mean_rank"] == 63.5  # the 128 test prints
