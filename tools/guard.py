"""What agent runs must not see or touch, and the record of what they tried.

- The held-out split: `test_paths` names what every agent run's sandbox hides (the whole
  `heldout/` folder when the annotations live in one, else the file), plus the test evaluations'
  run dirs (`hidden_for_agent_runs`). Provenance leaves the same paths out of its fingerprint.
- A denied access that surfaces in a run's log (PermissionError / read-only file system on the
  test split, the harness, the data, the workspace's state) is classified here; the recorder
  stores it in the append-only `integrity_events` table and names it in the run's error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tools.datacache import cache_dir, tasks_root
from tools.lab import Lab, harness_dir
from tools.rundir import fold_dirs, read_tail

TEST_RUNS = "test_runs"
MAX_EVENTS_PER_RUN = 20
LOG_SCAN_BYTES = 256 * 1024
_DENIED = re.compile(r"\[Errno (1|13|30)\] ([A-Za-z ,-]{3,60}): '([^'\n]{1,1000})'")


# -- what agent runs must not see ------------------------------------------------------------
def test_paths(lab: Lab) -> list[Path]:
    """The held-out split as hidden from agent runs: its `heldout/` folder, else the file itself."""
    test = lab.test_annotations()
    if test is None:
        return []
    return [test.parent] if test.parent.name == "heldout" else [test]


def hidden_for_agent_runs(lab: Lab) -> list[Path]:
    """Added to every agent run's `hidden` list (tools/launch.py)."""
    test_runs = lab.state_dir / TEST_RUNS
    test_runs.mkdir(parents=True, exist_ok=True)  # hidden only if it exists: make it now
    return [*test_paths(lab), test_runs]


# -- denied accesses -----------------------------------------------------------------------
def under(path: str, root: Path | None) -> bool:
    if root is None:
        return False
    r = str(root)
    return path == r or path.startswith(r.rstrip(os.sep) + os.sep)


def classify(lab: Lab, path: str, code_dir: Path) -> str:
    p = os.path.normpath(path if os.path.isabs(path) else os.path.join(code_dir, path))
    test = lab.test_annotations()
    if any(under(p, t) for t in test_paths(lab)) or (test is not None and under(p, test)):
        return "test_split_access"
    if under(p, harness_dir()):
        return "harness_write"
    if under(p, lab.data_dir()):
        return "data_write"
    if under(p, cache_dir(lab)):
        return "cache_write"
    if under(p, tasks_root(lab)):
        return "task_access"
    if under(p, lab.root / ".git") or (under(p, lab.state_dir) and not under(p, code_dir.parent)):
        return "state_access"
    return "denied_access"


def denied_accesses(lab: Lab, run_dir: Path) -> list[dict]:
    """Denied file accesses reported in the run's logs (each process's stderr, then stdout; the last
    256 KB of each)."""
    found, seen = [], set()
    logs = [d / name for d in [Path(run_dir), *fold_dirs(run_dir)] for name in ("stderr.log", "stdout.log")]
    for log in logs:
        text = read_tail(log, LOG_SCAN_BYTES).decode(errors="replace")
        for m in _DENIED.finditer(text):
            errno_, what, path = m.groups()
            if path in seen:
                continue
            seen.add(path)
            found.append({"kind": classify(lab, path, Path(run_dir) / "code"), "path": path[:500],
                          "detail": f"[Errno {errno_}] {what}"})
            if len(found) >= MAX_EVENTS_PER_RUN:
                return found
    return found


def describe(events: list[dict]) -> str:
    """One line for a run's error: what it tried and that the sandbox refused it."""
    names = {"test_split_access": "read the held-out test split", "harness_write": "write the frozen harness",
             "data_write": "write the dataset", "cache_write": "write the shared data cache",
             "task_access": "write its task data or read another fold's (or a key)",
             "self_scored": "score itself in metrics.json",
             "state_access": "touch the workspace's git/database",
             "denied_access": "access a protected path"}
    parts = [f"tried to {names.get(e['kind'], e['kind'])} ({e['path']}: {e['detail']})" for e in events[:5]]
    return "integrity: " + "; ".join(parts) + " - denied by the sandbox and recorded"
