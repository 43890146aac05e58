"""Route the escape suite's probe through the product: a real workspace, `run_experiment`, the
detached supervisor and `tools.runs.sandbox_policy` (the single place that decides what a run may
touch). The driver process plays the MCP server: it holds the planted secret and HOME, which the
supervisor it starts inherits, exactly as in production."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sandbox_support as T

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from tools import experiments as ex
from tools.lab import Lab
lab = Lab.open(Path(sys.argv[2]))
s = ex.run_experiment(lab, "hostile probe", "every escape attempt must fail")
exp = lab.store.get_experiment(s.id)
sandbox = json.loads(exp["config_json"]).get("sandbox", {})
status = "exited" if s.status in ("succeeded", "failed") else s.status
print(json.dumps({"experiment": s.id}), flush=True)
print(json.dumps({"status": status, "returncode": exp["returncode"], "backend": exp["sandbox_backend"],
                  "network": sandbox.get("network"), "warnings": sandbox.get("warnings", []),
                  "isolation": sandbox.get("isolation", {}), "product_status": s.status}), flush=True)
"""


def prepare_workspace(tree: T.Tree, backend: str) -> None:
    """Turn the probe's tree into a real workspace: git repo (keeping the planted .git/config),
    autoresearch.toml forcing `backend`, the data dir, the harness as an extra read-only path, and
    the real SQLite store holding a planted note (so reading the hidden DB would show the marker)."""
    from tools.config import render_config
    from tools.store import Store

    ws = tree.ws
    subprocess.run(["git", "init", "-q", str(ws)], check=True, capture_output=True)
    # a workspace scorer: the probe is a plain script, run once in the sandbox like any workspace's command
    toml = render_config(name="escape", data=str(tree.data), test_annotations=None, time_budget_s=60,
                         scorer=["python", "score.py"])
    toml = toml.replace('sandbox = "auto"', f'sandbox = "{backend}"').replace("timeout_grace_s = 60",
                                                                              "timeout_grace_s = 30")
    toml += f'read_only = [{json.dumps(str(tree.harness))}]\n'
    (ws / "autoresearch.toml").write_text(toml)
    (ws / ".gitignore").write_text(".autoresearch/\n")
    (ws / "train.py").write_text("placeholder\n")
    (ws / "score.py").write_text("import json\nprint(json.dumps({'objective': 1.0}))\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "-C", str(ws), "add", "-A"], check=True, env=env)
    subprocess.run(["git", "-C", str(ws), "commit", "-qm", "init"], check=True, env=env)
    tree.db.unlink(missing_ok=True)
    tree.db = ws / ".autoresearch" / "experiments.db"
    store = Store(tree.db)
    store.insert_note(f"planted {T.DB_MARKER}", None, [])
    store.close()


def run_hostile_via_product(tree: T.Tree, script_text: str, env: dict) -> T.HostileRun:
    # The product passes no per-run environment of the caller's choosing: the probe's parameters
    # travel inside train.py itself.
    prefix = f"import os\nos.environ.update({json.dumps(env)})\n"
    (tree.ws / "train.py").write_text(prefix + script_text)
    driver_env = T.driver_env(tree)
    p = subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT), str(tree.ws)], env=driver_env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    result = json.loads(lines[-1]) if len(lines) >= 2 else None
    run = T.HostileRun(tree, result, p.returncode, err)
    run.stdout = T._read(tree.run_dir / "stdout.log")
    run.stderr = T._read(tree.run_dir / "stderr.log")
    for ln in reversed(run.stdout.splitlines()):
        if ln.startswith("REPORT "):
            run.report = json.loads(ln[7:])
            break
    return run
