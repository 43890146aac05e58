"""A Lab is one open workspace: its config, its store and its git repo, plus where things live."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.config import CONFIG_NAME, STATE_DIR, WorkspaceConfig, load_config
from tools.errors import ToolError
from tools.store import Store
from tools.workspace import Workspace


@dataclass
class Lab:
    root: Path
    config: WorkspaceConfig
    store: Store
    workspace: Workspace

    @classmethod
    def open(cls, root: Path | str) -> "Lab":
        root = Path(root).resolve()
        if not (root / CONFIG_NAME).exists():
            raise ToolError(f"{root} is not a workspace (no {CONFIG_NAME}). Fix: `autoresearch init {root}`.")
        config = load_config(root)
        store = Store(root / STATE_DIR / "experiments.db")
        return cls(root=root, config=config, store=store, workspace=Workspace(root, config.editable))

    def close(self) -> None:
        self.store.close()

    def experiment(self, exp_id: int, field: str = "experiment_id") -> dict:
        """The experiment row, or a refusal naming the field and the fix."""
        exp = self.store.get_experiment(exp_id)
        if exp is None:
            raise ToolError(f"{field}={exp_id} does not exist. Fix: pick an id from read_results.")
        return exp

    def succeeded_experiment(self, exp_id: int, purpose: str) -> dict:
        """A succeeded experiment with a snapshot (what reruns, reproductions and test runs need)."""
        exp = self.experiment(exp_id)
        if exp["status"] != "succeeded" or not exp["snapshot_commit"]:
            raise ToolError(f"experiment {exp_id} is {exp['status']}: only a succeeded experiment can be {purpose}. "
                            "Fix: pick a succeeded one (e.g. the best).")
        return exp

    def code_snapshot(self, exp: dict) -> str | None:
        """The snapshot a run stands for: its own, or for a seed rerun the original's (the same code,
        which keeps its own SEED), so a kept group's best ref and revert('best') bring back the code."""
        if exp.get("rerun_kind") == "seed" and exp.get("rerun_of"):
            root = self.store.get_experiment(exp["rerun_of"])
            if root is not None and root["snapshot_commit"]:
                return root["snapshot_commit"]
        return exp.get("snapshot_commit")

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def run_dir(self, experiment_id: int) -> Path:
        return self.state_dir / "runs" / str(experiment_id)

    def score_dir(self, experiment_id: int) -> Path:
        """Where the workspace scorer of a run writes (outside the run dir: the run cannot write it)."""
        return self.state_dir / "scores" / str(experiment_id)

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def data_dir(self) -> Path | None:
        if not self.config.data:
            return None
        p = Path(self.config.data)
        return p if p.is_absolute() else (self.root / p)

    def test_annotations(self) -> Path | None:
        if not self.config.test_annotations:
            return None
        p = Path(self.config.test_annotations)
        return p if p.is_absolute() else (self.root / p)

    def command_argv(self) -> list[str]:
        """The experiment argv; 'python' is this installation's interpreter (it has torch)."""
        return _with_interpreter(self.config.command)

    def scorer_argv(self) -> list[str]:
        """The workspace scorer's argv: 'python' is this interpreter, workspace files are absolute."""
        argv = _with_interpreter(self.config.scorer)
        return [a if i == 0 or not (self.root / a).is_file() else str(self.root / a) for i, a in enumerate(argv)]


def _with_interpreter(argv: list[str]) -> list[str]:
    """A copy of argv whose leading 'python'/'python3' is this installation's interpreter."""
    argv = list(argv)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def harness_dir() -> Path | None:
    """Where the frozen `model` harness lives, found without importing it (no torch here)."""
    spec = importlib.util.find_spec("model")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve()
