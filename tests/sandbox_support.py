"""Test support: a workspace-like tree and a *separate supervisor process* that calls sandbox.launch.

`run_hostile(script_text, backend, **policy_overrides)` is the single entry the escape suite uses.
It mirrors the product: a detached supervisor (plain Python, its own environment holding a planted
SECRET_API_KEY and a HOME with a planted ~/.ssh/id_rsa) launches `python train.py` from a code
snapshot inside the run dir, with a read-only dataset and harness and a hidden workspace .git.
To route the suite through the product's run path later, replace `HostileRun.launch` only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET_MARKER = "sk-PLANTED-" + uuid.uuid4().hex[:12]
KEY_MARKER = "PLANTED-SSH-KEY-" + uuid.uuid4().hex[:12]
GIT_MARKER = "PLANTED-GIT-" + uuid.uuid4().hex[:12]
DB_MARKER = "PLANTED-DB-" + uuid.uuid4().hex[:12]
SUPERVISOR_PID = "__SUPERVISOR_PID__"  # an env value the driver replaces with its own pid

DRIVER = r"""
import json, sys, os
sys.path.insert(0, sys.argv[1])
import warnings; warnings.simplefilter("ignore")
from pathlib import Path
from sandbox import Limits, SandboxPolicy, launch
spec = json.loads(sys.argv[2])
spec["env"] = {k: (str(os.getpid()) if v == "__SUPERVISOR_PID__" else v) for k, v in spec["env"].items()}
pol = SandboxPolicy(argv=spec["argv"], cwd=Path(spec["cwd"]), run_dir=Path(spec["run_dir"]),
                    read_only=[Path(p) for p in spec["read_only"]], hidden=[Path(p) for p in spec["hidden"]],
                    env=spec["env"], network=spec["network"], limits=Limits(**spec["limits"]),
                    gpu=spec["gpu"], min_backend=spec["min_backend"])
proc = launch(pol, backend=spec["backend"])
print(json.dumps({"started": proc.pid, "backend": proc.backend}), flush=True)
res = proc.wait()
print(json.dumps(res.to_dict()), flush=True)
"""


@dataclass
class Tree:
    base: Path
    home: Path
    ws: Path
    git: Path
    db: Path
    data: Path
    harness: Path
    run_dir: Path
    code: Path

    @classmethod
    def make(cls, base: Path) -> "Tree":
        base.mkdir(parents=True, exist_ok=True)
        home, ws, data, harness = base / "home", base / "ws", base / "data", base / "harness"
        run_dir = ws / ".autoresearch" / "runs" / "1"
        code = run_dir / "code"
        git = ws / ".git"
        db = ws / ".autoresearch" / "db.sqlite"
        for d in (home / ".ssh", git / "hooks", data, harness, code):
            d.mkdir(parents=True, exist_ok=True)
        (home / ".ssh" / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_MARKER}\n")
        (git / "config").write_text(f"[core]\n\t# {GIT_MARKER}\n")
        db.write_text(DB_MARKER)
        (data / "train.jsonl").write_text('{"filename": "a.png"}\n')
        (harness / "eval.py").write_text("# frozen harness\n")
        for d in (base, home, ws, data, harness, run_dir.parent, run_dir, code):
            os.chmod(d, 0o755)
        return cls(base, home, ws, git, db, data, harness, run_dir, code)


@dataclass
class HostileRun:
    tree: Tree
    result: dict | None
    driver_rc: int | None
    driver_stderr: str
    stdout: str = ""
    stderr: str = ""
    report: dict = field(default_factory=dict)

    @property
    def status(self) -> str | None:
        return self.result["status"] if self.result else None


def spec_for(tree: Tree, script_text: str, backend: str | None, args=(), **over) -> dict:
    (tree.code / "train.py").write_text(script_text)
    limits = {"wall_seconds": 60.0, "kill_grace_seconds": 0.5}
    limits.update(over.pop("limits", {}))
    spec = {
        "argv": [os.path.normpath(sys.executable), "train.py", *args],
        "cwd": str(tree.code), "run_dir": str(tree.run_dir),
        "read_only": [str(tree.code), str(tree.data), str(tree.harness)],
        "hidden": [str(tree.git), str(tree.db)],
        "env": {"AR_RUN_DIR": str(tree.run_dir)}, "network": False, "limits": limits, "gpu": False,
        "min_backend": "none", "backend": backend,
    }
    env = over.pop("env", {})
    spec["env"].update(env)
    spec.update(over)
    return spec


def driver_env(tree: Tree) -> dict:
    env = dict(os.environ)
    env.update({"SECRET_API_KEY": SECRET_MARKER, "HOME": str(tree.home), "PYTHONWARNINGS": "ignore"})
    return env


def start_driver(tree: Tree, spec: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT), json.dumps(spec)], env=driver_env(tree),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_hostile(tree: Tree, script_text: str, backend: str | None, args=(), timeout: float | None = None,
                **policy_overrides) -> HostileRun:
    spec = spec_for(tree, script_text, backend, args, **policy_overrides)
    if timeout is None:
        timeout = (spec["limits"].get("wall_seconds") or 120) + 60
    p = start_driver(tree, spec)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    result = json.loads(lines[-1]) if len(lines) >= 2 else None
    run = HostileRun(tree, result, p.returncode, err)
    run.stdout = _read(tree.run_dir / "stdout.log")
    run.stderr = _read(tree.run_dir / "stderr.log")
    for ln in reversed(run.stdout.splitlines()):
        if ln.startswith("REPORT "):
            run.report = json.loads(ln[7:])
            break
    return run


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def processes_with(marker: str) -> list[int]:
    """PIDs whose command line contains marker (scans /proc; no psutil needed)."""
    out = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(name))
        except OSError:
            pass
    return out


def wait_gone(marker: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_marked(marker: str) -> None:
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
