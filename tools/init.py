"""`autoresearch init`: make a workspace (git repo, config, editable train.py, data, client configs)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from model.constants import parse_constants
from model.odvg import ODVGError, resolve_dataset  # torch-free
from model.presets import list_presets, preset_folds, render_template
from tools import clients
from tools.calibrate import calibrate as calibrate_workspace
from tools.lab import Lab
from tools.hpo import default_search_space, search_space_toml
from tools.config import CONFIG_NAME, STATE_DIR, render_config
from tools.errors import ToolError
from tools.program import default_program
from tools.workspace import Workspace

TEMPLATES = Path(__file__).parent / "templates"
TOY = "toy"
TOY_SCORER = "score.py"
DATA_DIR = "data/synthetic-prints"


def step_budget_of(train_py: str, constant: str) -> int | None:
    """The template's step budget per fold: the workspace's from then on (a run may not set more)."""
    value = parse_constants(train_py).get(constant)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def available_presets() -> list[str]:
    return [*(p["name"] for p in list_presets()), TOY]


def render_train_py(preset: str) -> str:
    if preset == TOY:
        return (TEMPLATES / "toy_train.py").read_text()
    try:
        return render_template(preset)
    except ValueError as exc:
        raise ToolError(f"--preset {preset!r}: {exc}") from None


def prepare_data(data_dir: Path, preset: str, synthetic: str = "default", cache_dir: Path | None = None,
                 on_line: Callable[[str], None] | None = None) -> None:
    """Generate the synthetic prints and their tensor cache, in a child (torch stays out of here).
    The cache goes to DATA/.cache, or to `cache_dir` (a read-only dataset). on_line gets each line
    the child logs (the CLI's progress)."""
    Path(data_dir).parent.mkdir(parents=True, exist_ok=True)
    extra = ["--cache-dir", str(cache_dir)] if cache_dir is not None else []
    proc = subprocess.Popen([sys.executable, "-P", "-m", "model.prepare", "--data", str(data_dir), "--preset", preset,
                             "--synthetic", synthetic, *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(Path(data_dir).parent))
    tail: list[str] = []
    try:
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if on_line is not None:
                on_line(line.rstrip("\n"))
    except BaseException:  # Ctrl-C: the child goes too
        proc.kill()
        raise
    finally:
        proc.stdout.close()
        proc.wait()
    if proc.returncode != 0:
        raise ToolError(f"preparing the dataset in {data_dir} failed:\n{''.join(tail)[-2000:]}")


def _writable(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def test_annotations_of(data_path: Path) -> Path | None:
    """Where the dataset keeps its held-out test annotations (hidden from every agent run)."""
    try:
        return resolve_dataset(data_path).test
    except ODVGError:
        return None


def init_workspace(root: Path, *, preset: str = "tiny", data: str | None = None, time_budget_s: float | None = None,
                   client_names: list[str] | None = None, force: bool = False, synthetic: str = "default",
                   on_progress: Callable[[str], None] | None = None, calibrate: bool = False,
                   adopt: bool = False) -> Path:
    """Make a workspace in `root`. A folder that already holds files is refused unless `adopt`
    (then no file of the user's is overwritten, and only the files init wrote are committed) or
    `force` (init's own files are rewritten)."""
    root = Path(root).resolve()
    if (root / CONFIG_NAME).exists() and not force:
        raise ToolError(f"{root} is already a workspace ({CONFIG_NAME} exists). Fix: pick another folder or --force.")
    theirs = sorted(p.name for p in root.iterdir() if p.name != ".git") if root.is_dir() else []
    if theirs and not (adopt or force):
        shown = ", ".join(theirs[:5]) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        raise ToolError(f"{root} is not empty ({shown}). Fix: pick an empty folder, or `autoresearch init {root} "
                        "--adopt` to make it a workspace without overwriting any of its files.")
    say = on_progress or (lambda line: None)
    written: list[str] = []

    def put(rel: str, text: str) -> None:
        path = root / rel
        if adopt and path.exists():
            say(f"kept your {rel} (init writes no file that exists)")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(rel)
    presets = available_presets()
    if preset not in presets:
        raise ToolError(f"--preset {preset!r} is unknown. Fix: use one of {', '.join(presets)}.")
    train_py = render_train_py(preset)
    root.mkdir(parents=True, exist_ok=True)
    Workspace.init_repo(root)

    test_annotations = None
    if preset != TOY:
        if data is None:
            data_path = root / DATA_DIR
            data = DATA_DIR
        else:
            data_path = Path(data).expanduser().resolve()
            if not data_path.is_dir():
                raise ToolError(f"--data {data!r} is not a folder. Fix: point it at a dataset root (see README).")
            data = str(data_path)
        # generates synthetic prints only where there is no dataset; a read-only dataset gets its
        # cache in the workspace (tools/datacache.py mounts it read-only into runs)
        cache = None if not data_path.exists() or _writable(data_path) else root / STATE_DIR / "cache"
        prepare_data(data_path, preset, synthetic, cache_dir=cache, on_line=on_progress)
        test = test_annotations_of(data_path)
        if test is not None and test.exists():
            test_annotations = str(test.relative_to(root)) if test.is_relative_to(root) else str(test)
    budget = time_budget_s or {TOY: 10, "tiny": 100, "replay": 120}.get(preset, 900)  # the templates' own TIME_BUDGET

    put("train.py", train_py)
    if preset == TOY:  # the toy's own frozen scorer: the harness never takes a score from train.py
        put(TOY_SCORER, (TEMPLATES / "toy_score.py").read_text())
    config = render_config(
        name=root.name, data=data or "", test_annotations=test_annotations, time_budget_s=budget,
        folds=3 if preset == TOY else preset_folds(preset), scorer=["python", TOY_SCORER] if preset == TOY else "eclip",
        baseline_seeds=0 if preset == TOY else 2,  # the toy's 3 folds give a noise estimate; seconds-long runs
        step_budget=step_budget_of(train_py, "STEPS" if preset == TOY else "MAX_STEPS"),
        step_budget_constant="STEPS" if preset == TOY else "MAX_STEPS",
        search_space_toml=search_space_toml(default_search_space(preset)))
    if not data:  # toy: no dataset
        config = config.replace('data = ""', '# data = "path/to/dataset"')
    put(CONFIG_NAME, config)
    put("AGENTS.md", default_program())
    put("CLAUDE.md", "@AGENTS.md\n")
    put(".gitignore", f"{STATE_DIR}/\ndata/\n__pycache__/\nrun/\n")
    names = ["claude", *(client_names or [])]
    if adopt:
        for rel, text in clients.render(root, names, max_call_s=clients.call_timeout_s(budget), http=False).items():
            put(rel, text)
        clients.ensure_token(root)
    else:
        clients.write_client_configs(root, names, max_call_s=clients.call_timeout_s(budget))
    ws = Workspace(root, ["train.py"])
    if adopt:  # only what init wrote: the user's own files are theirs to commit
        ws.git("add", "-f", "--", *[w for w in written if (root / w).exists()])
        ws.git("commit", "-q", "-m", f"autoresearch workspace ({preset} preset), adopted", check=False)
    elif ws.head() is None:
        ws.commit_all(f"autoresearch workspace ({preset} preset)")
    if calibrate and preset != TOY and time_budget_s is None:  # measure this machine: a budget the steps fit in
        lab = Lab.open(root)
        try:
            if calibrate_workspace(lab, on_line=on_progress or print) is not None:
                ws.git("commit", "-q", "-m", "calibrated time budget and threads for this machine", "--",
                       CONFIG_NAME, check=False)
        finally:
            lab.close()
    return root
