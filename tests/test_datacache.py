"""The tensor cache a run asks for is built before it by trusted code, and read-only inside it.
Real init (synthetic prints), real sandboxed runs of the eCLIP template."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import datacache, experiments as ex
from tools.init import init_workspace
from tools.lab import Lab

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


@pytest.fixture(scope="module")
def eclip_lab(tmp_path_factory):
    ws = init_workspace(tmp_path_factory.mktemp("cache") / "lab", preset="tiny", synthetic="small")
    lab = Lab.open(ws)
    yield lab
    lab.close()


SMOKE = {"MAX_STEPS": 2, "EVAL_BATCH_SIZE": 64}


def test_a_run_finds_the_cache_for_its_image_size_built_before_it_started(eclip_lab):
    lab = eclip_lab
    hints = []
    r1 = ex.run_experiment(lab, "48 px", params={**SMOKE, "IMAGE_SIZE": 48}, poll_s=0.1,
                           on_progress=lambda s: hints.append(s.next or ""))
    assert r1.status == "succeeded", r1.error
    # while the cache is built (a child importing torch: >= 1 s), polls say so
    assert any(h.startswith("building the data cache (48 px") for h in hints), hints[:5]
    status = (lab.run_dir(r1.id) / "cache.status").read_text()
    assert status.startswith("built (48 px"), status
    assert any(datacache.cache_dir(lab).glob("*-48px-v*.npz"))
    log = (lab.run_dir(r1.id) / "stdout.log").read_text() + (lab.run_dir(r1.id) / "stderr.log").read_text()
    assert "at 48px" in log and "decoded" not in log and "cached" not in log  # loaded, not built, in the run
    assert lab.store.get_experiment(r1.id)["config_json"].count("built (48 px") == 1

    r2 = ex.run_experiment(lab, "48 px again", params={**SMOKE, "IMAGE_SIZE": 48})
    assert r2.status == "succeeded", r2.error
    assert (lab.run_dir(r2.id) / "cache.status").read_text().startswith("warm (48 px")


def test_runs_cannot_write_the_cache(eclip_lab):
    from sandbox import choose_backend
    if choose_backend() == "none":
        pytest.skip("needs an isolating sandbox backend (bwrap or landlock)")
    lab = eclip_lab
    train = lab.root / "train.py"
    original = train.read_bytes()
    target = "IMAGE_SIZE = 64\nCONTEXT_LENGTH = 48\nimport os\n" \
             "open(os.path.join(os.environ['AR_CACHE_DIR'], 'poisoned.npz'), 'w').write('x')\n"
    train.write_text(target)
    try:
        r = ex.run_experiment(lab, "poison the cache")
    finally:
        train.write_bytes(original)
    assert not (datacache.cache_dir(lab) / "poisoned.npz").exists()
    assert r.status == "failed" and "write the shared data cache" in r.error


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
    """The synthetic prints keep the whole test split (annotations and images) in heldout/, which
    the sandbox hides from agent runs."""
    from sandbox import choose_backend
    lab = eclip_lab
    data = lab.data_dir()
    assert any((data / "heldout" / "images").glob("test_*")) and not any((data / "images").glob("test_*"))
    train = lab.root / "train.py"
    original = train.read_bytes()
    train.write_text("import os, json\nd = os.environ['AR_DATA_DIR']\n"
                     "seen = sorted(n for n in os.listdir(os.path.join(d, 'images')) if n.startswith('test'))\n"
                     "try:\n    held = os.listdir(os.path.join(d, 'heldout'))\nexcept OSError as e:\n    held = str(type(e).__name__)\n"
                     "print('TEST-IMAGES-SEEN', len(seen), 'HELDOUT', held)\n"
                     "json.dump({'objective': 1.0}, open(os.path.join(os.environ['AR_RUN_DIR'], 'metrics.json'), 'w'))\n")
    try:
        r = ex.run_experiment(lab, "look for the test split")
    finally:
        train.write_bytes(original)
    assert r.status == "succeeded", r.error
    out = (lab.run_dir(r.id) / "stdout.log").read_text()
    assert "TEST-IMAGES-SEEN 0 " in out
    if choose_backend() != "none":
        assert "HELDOUT []" in out or "HELDOUT FileNotFoundError" in out or "HELDOUT PermissionError" in out, out


def test_the_human_test_evaluation_reads_the_held_out_images(eclip_lab):
    """evaluate_test opens heldout/ (annotations and images) for that one run of the real template."""
    from tools import testeval
    lab = eclip_lab
    r = ex.run_experiment(lab, "smoke for the test look", params=SMOKE)
    assert r.status == "succeeded", r.error
    ev = testeval.evaluate_test(lab, r.id)
    assert ev.status == "succeeded", ev.error
    assert ev.metrics["n_val"] == 128 and ev.metrics["random_mean_rank"] == 63.5  # the 128 test prints
