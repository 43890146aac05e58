"""What agent runs must not see or touch, and the record of what they tried.

- The held-out split: `test_paths` names what every agent run's sandbox hides (the whole
  `heldout/` folder when the annotations live in one, else the file), plus the test evaluations'
  run dirs (`hidden_for_agent_runs`). Provenance leaves the same paths out of its fingerprint.
- Integrity events are of two sources, both stored in the append-only `integrity_events` table:
  * observed by the harness itself (`observed_events`, plus `self_scored` from the recorder, which
    reads metrics.json): the connect() calls the sandbox's broker refused, the symlinks out of the
    run dir it removed, a score the run wrote for itself. These are facts and they bite: the run is
    never kept or best (tools/verdict.py), and its verdict says why.
  * hints scraped from the run's own log (`denied_accesses`: "[Errno 13] Permission denied: '...'"
    lines): the run controls its log (a caught or repr()-printed error leaves none), so they are
    stored as hints (detail starts with "log hint") and named in the error, never a verdict's reason.
- What no backend lets the harness observe: under bwrap a hidden path does not exist in the run's
  namespace (ENOENT inside the run) and a write to a read-only bind fails with EROFS inside the run,
  neither reported to the harness; under landlock a denied open fails with EACCES inside the run
  (the kernel's Landlock audit log is not read); under `none` nothing is isolated or observed. A
  file access the sandbox denied is therefore known only from the run's log, as a hint.
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


def classify(lab: Lab, path: str, code_dir: Path, errno_: str = "13") -> str:
    """The area a denied path lies in, and whether it was a write: only EROFS (errno 30) says so, or a
    denial on a path every run may read (the harness); anything else is an `_access` (read or write)."""
    p = os.path.normpath(path if os.path.isabs(path) else os.path.join(code_dir, path))
    test = lab.test_annotations()
    write = "write" if errno_ == "30" else "access"
    if any(under(p, t) for t in test_paths(lab)) or (test is not None and under(p, test)):
        return "test_split_access"
    if under(p, harness_dir()):
        return "harness_write"  # readable by every run: a denial there is a write
    if under(p, lab.data_dir()):
        return f"data_{write}"
    if under(p, cache_dir(lab)):
        return f"cache_{write}"
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
            found.append({"kind": classify(lab, path, Path(run_dir) / "code", errno_), "path": path[:500],
                          "detail": f"{LOG_HINT}: [Errno {errno_}] {what}"})
            if len(found) >= MAX_EVENTS_PER_RUN:
                return found
    return found


LOG_HINT = "log hint (the run's own output, not observed by the harness)"


def observed_events(result) -> list[dict]:
    """What the sandbox itself reported about one process (a SandboxResult): refused connect() calls
    (the landlock backend's broker) and symlinks out of the run dir it removed after the run."""
    out = []
    broker = (getattr(result, "isolation", None) or {}).get("connect_broker") or {}
    for what in list(broker.get("denied") or [])[:MAX_EVENTS_PER_RUN]:
        out.append({"kind": "connect_denied", "path": str(what)[:500],
                    "detail": "the sandbox refused a connect() to a socket outside the run dir"})
    for w in list(getattr(result, "warnings", None) or []):
        if str(w).startswith("removed symlink "):
            out.append({"kind": "run_dir_symlink", "path": str(w)[len("removed symlink "):][:500],
                        "detail": "the run left a symlink out of its run dir; the sandbox removed it"})
    return out[:MAX_EVENTS_PER_RUN]


def describe(events: list[dict], observed: bool = False) -> str:
    """One line for a run's error (log hints) or its verdict (events the harness observed)."""
    names = {"test_split_access": "read the held-out test split", "harness_write": "write the frozen harness",
             "data_write": "write the dataset", "data_access": "read or write the dataset (hidden from eCLIP runs)",
             "cache_write": "write the shared data cache", "cache_access": "read or write the shared data cache",
             "connect_denied": "connect to a socket outside its run dir",
             "run_dir_symlink": "leave a symlink out of its run dir",
             "task_access": "write its task data or read another fold's (or a key)",
             "self_scored": "score itself in metrics.json",
             "state_access": "touch the workspace's git/database",
             "denied_access": "access a protected path"}
    parts = [f"tried to {names.get(e['kind'], e['kind'])} ({e['path']}: {e['detail']})" for e in events[:5]]
    if observed:
        return "integrity event observed by the harness: " + "; ".join(parts)
    return "integrity: " + "; ".join(parts) + " - denied by the sandbox, seen in the run's log, recorded as a hint"
