"""Product overhead per run: a toy run through the Python API, MCP and the CLI against the bare
`python train.py` (and train.py + score.py), interleaved, in one workspace; and where the time goes.

    python -m bench.run_overhead [--repeats 5] [--preset toy] [--paths bare,api,mcp,cli]
    python -m bench.run_overhead --smoke

Phases (from the store's timestamps and the run's own wall time): submit (snapshot, provenance,
row, search index, supervisor Popen), queued (supervisor interpreter start until it claims the
run), sandboxed processes (train.py and the scorer, as the sandbox measured them), the supervisor's
rest (export, scoring, recording), and the waiter noticing (poll). The tiny preset needs a dataset
(`--preset tiny` makes one with the workspace; minutes per run on CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, record, summary, table

sys.path.insert(0, str(ROOT))

from tools import experiments as ex  # noqa: E402
from tools.init import init_workspace  # noqa: E402
from tools.lab import Lab  # noqa: E402
from tools.provenance import provenance  # noqa: E402


def bare(ws: Path, with_scorer: bool, folds: int) -> float:
    """train.py (and the scorer) as plain subprocesses, in a copy of the code: the reference."""
    with tempfile.TemporaryDirectory() as tmp:
        code, run = Path(tmp) / "code", Path(tmp) / "run"
        code.mkdir()
        run.mkdir()
        for f in ("train.py", "score.py"):
            if (ws / f).exists():
                (code / f).write_bytes((ws / f).read_bytes())
        env = dict(os.environ, AR_RUN_DIR=str(run), AR_NUM_FOLDS=str(folds), AR_TIME_BUDGET_S="60",
                   OMP_NUM_THREADS="1")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "train.py"], cwd=code, env=env, check=True, capture_output=True)
        if with_scorer and (code / "score.py").exists():
            subprocess.run([sys.executable, "score.py"], cwd=code, env=dict(env, AR_OUTPUTS_DIR=str(run)),
                           capture_output=True)
        return time.perf_counter() - t0


def via_api(lab: Lab, i: int, poll_s: float) -> tuple[float, int]:
    t0 = time.perf_counter()
    s = ex.run_experiment(lab, f"overhead api {i}", poll_s=poll_s)
    return time.perf_counter() - t0, s.id


def via_mcp(ws: Path, i: int) -> tuple[float, int]:
    from mcp import Client

    from server import app

    async def go():
        app.configure(ws)
        async with Client(app.mcp) as c:
            t0 = time.perf_counter()
            r = await c.call_tool("run_experiment", {"description": f"overhead mcp {i}", "wait_s": 120})
            return time.perf_counter() - t0, r.structured_content["id"]
    return asyncio.run(go())


def via_cli(ws: Path, i: int) -> tuple[float, int]:
    exe = Path(sys.executable).with_name("autoresearch")
    t0 = time.perf_counter()
    p = subprocess.run([str(exe), "run", "-m", f"overhead cli {i}"], cwd=ws, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    lab = Lab.open(ws)
    try:
        exp_id = lab.store.list_experiments(limit=1, status=None, order_by="created", direction="minimize")[0]["id"]
    finally:
        lab.close()
    if p.returncode not in (0, 1):
        raise RuntimeError(p.stderr[-2000:])
    return dt, exp_id


def phases(lab: Lab, exp_id: int, t_call: float) -> dict:
    e = lab.store.get_experiment(exp_id)
    out = {"status": e["status"], "queued_s": (e["started_at"] or 0) - e["created_at"],
           "claimed_to_recorded_s": (e["finished_at"] or 0) - (e["started_at"] or 0),
           "sandboxed_s": e["duration_s"], "total_s": t_call}
    return out


def submit_parts(lab: Lab, repeats: int) -> dict:
    """The pieces of submit, timed alone (no run started)."""
    parts: dict[str, list[float]] = {"provenance()": [], "snapshot (git)": [], "supervisor Popen": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        commit = lab.workspace.snapshot("bench")
        parts["snapshot (git)"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        provenance(lab, commit)
        parts["provenance()"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-P", "-c", "pass"], stdin=subprocess.DEVNULL, start_new_session=True,
                             close_fds=True)
        parts["supervisor Popen"].append(time.perf_counter() - t0)
        p.wait()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-P", "-c", "import tools.supervisor"], cwd=ROOT, check=True)
    parts["supervisor interpreter + imports"] = [time.perf_counter() - t0]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-P", "-c", "import optuna"], cwd=ROOT, check=True)
    parts["import optuna (hpo.after_run in the supervisor)"] = [time.perf_counter() - t0]
    return {k: summary([x * 1000 for x in v]) for k, v in parts.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--paths", default="bare,bare+score,api,mcp,cli")
    ap.add_argument("--poll", type=float, default=0.5, help="the API path's poll interval (ex.wait_for default)")
    ap.add_argument("--smoke", action="store_true", help="one round, bare and api only")
    a = ap.parse_args(argv)
    if a.smoke:
        a.repeats, a.paths = 1, "bare,api"
    paths = a.paths.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="ar-overhead-"))
    ws = init_workspace(tmp / "lab", preset=a.preset, time_budget_s=60 if a.preset == "toy" else None)
    lab = Lab.open(ws)
    folds = lab.config.run_folds
    ex.run_experiment(lab, "warm-up (caches, first supervisor)")
    times: dict[str, list[float]] = {p: [] for p in paths}
    ph: dict[str, list[dict]] = {p: [] for p in paths if p not in ("bare", "bare+score")}
    for i in range(a.repeats):
        for p in paths:  # interleaved: load drift hits every path alike
            if p == "bare":
                times[p].append(bare(ws, False, folds))
                continue
            if p == "bare+score":
                times[p].append(bare(ws, True, folds))
                continue
            dt, exp_id = {"api": lambda: via_api(lab, i, a.poll), "mcp": lambda: via_mcp(ws, i),
                          "cli": lambda: via_cli(ws, i)}[p]()
            times[p].append(dt)
            ph[p].append(phases(lab, exp_id, dt))
    ref = statistics.median(times["bare"]) if times.get("bare") else None
    rows = []
    for p, v in times.items():
        med = statistics.median(v)
        extra = [None, None, None]
        if ph.get(p):
            extra = [statistics.median(x["queued_s"] for x in ph[p]),
                     statistics.median(x["claimed_to_recorded_s"] for x in ph[p]),
                     statistics.median((x["sandboxed_s"] or 0) for x in ph[p])]
        rows.append([p, med, min(v), max(v), med / ref if ref else None, (med - ref) if ref else None, *extra])
    print(table(f"\nrun overhead, preset {a.preset}, {folds} folds, median of {a.repeats} (s); x = / bare train.py",
                ["path", "median", "min", "max", "x", "+s", "queued", "claim->rec", "sandboxed"], rows))
    parts = submit_parts(lab, max(3, a.repeats))
    print(table("\nparts of the run path, timed alone (ms)", ["part", "p50", "max"],
                [[k, v["p50"], v["max"]] for k, v in parts.items()]))
    lab.close()
    record("run_overhead", vars(a), {"times_s": times, "phases": ph, "parts_ms": parts})
    subprocess.run(["rm", "-rf", str(tmp)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
