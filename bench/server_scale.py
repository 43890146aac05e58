"""The server at scale: read-tool latency over a DB of N experiments (N/10 notes), made through the
Store API in a real toy workspace (git snapshots, ~5 KB config_json per row, as runs write them).

    python -m bench.server_scale [--sizes 1000 10000 100000] [--repeats 20] [--compare DIR]
    python -m bench.server_scale --smoke

Each size gets a fresh workspace; every read tool is called --repeats times, round-robin (one call
of each per round, so load drift hits all alike); p50/p95/max in ms. `suggest` is measured at the
sizes in --suggest-sizes: the study is first brought up to date once (what telling each run as it
finishes amounts to), then `suggest(1)` is timed warm (in this process) and cold (a fresh process).

--compare DIR runs the same measurements with the code of another checkout (e.g. `git worktree add
/tmp/before <rev>`), interleaved size by size (before, after, before, ...) in child processes, and
prints before/after ratios. Code without the write-time search index pays its lazy indexing on the
first searches (shown as `search first call`), then is measured once the index is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, record, summary, table, timed

CODE = Path(os.environ.get("AR_BENCH_CODE") or ROOT).resolve()  # whose tools/ are measured
sys.path.insert(0, str(CODE))

from model.constants import rewrite_constants  # noqa: E402
from tools import experiments as ex  # noqa: E402
from tools import history, hpo, search  # noqa: E402
from tools.init import init_workspace  # noqa: E402
from tools.lab import Lab  # noqa: E402
from tools.provenance import environment  # noqa: E402

WORDS = ["warmup", "cosine", "dropout", "mixup", "temperature", "clamp", "projection", "pooling", "heatmap",
         "expert", "batch", "augmentation", "schedule", "weight decay", "label smoothing", "hard negatives",
         "lr", "ema", "grad clip", "patch size", "attention", "residual", "layer norm", "random crop"]
QUERIES = ["cosine", "weight decay", "warm*", "label smoothing dropout", "0.25", "zebra mixup", "expert heatmap",
           "lr"]
STATUSES = ["succeeded"] * 85 + ["failed"] * 8 + ["timeout"] * 3 + ["cancelled"] * 2 + ["interrupted"] * 2


# -- the database ------------------------------------------------------------------------------
def build(root: Path, n: int, n_notes: int, seed: int = 0) -> tuple[Lab, dict]:
    """A toy workspace holding n experiments and n_notes notes; returns (lab, build timings)."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    init_workspace(root, preset="toy", time_budget_s=20)
    lab = Lab.open(root)
    base = (root / "train.py").read_text()
    k_snap = max(1, min(n, 100))
    snaps, diffs = [], []
    base_commit = lab.workspace.snapshot("bench base")
    for j in range(k_snap):
        values = {"LR": round(0.02 + 0.03 * j, 4), "STEPS": 50 + 3 * j, "L2": round(1e-4 * (1 + j % 7), 6)}
        text = rewrite_constants(base, values)
        commit = lab.workspace.snapshot(f"snap {j}", contents={"train.py": text.encode()})
        snaps.append((commit, values))
        diffs.append(search.changed_lines(lab.workspace.diff(base_commit, commit)))
    t_snap = time.perf_counter() - t0

    cfg = lab.config.model_dump(mode="json")
    env = environment()
    pad = "x" * 1400
    rows, metrics, best_obj, kept_ids, last_kept = [], [], 1.0, [], None
    now = time.time() - n * 60
    for i in range(1, n + 1):
        commit, values = snaps[i % k_snap]
        status = STATUSES[rng.randrange(len(STATUSES))] if i > 1 else "succeeded"
        w1, w2, w3 = rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS)
        obj = std = verdict = None
        kept = 0
        stopped = "steps"
        if status == "succeeded":
            obj = round(0.3 + 0.2 * rng.random() + 0.1 * (1 - i / n), 5)
            std = round(0.005 + 0.01 * rng.random(), 5)
            if i == 1 or (obj < best_obj - 0.02 and rng.random() < 0.3):
                kept, verdict, best_obj = 1, ("baseline" if i == 1 else "improved"), obj
            else:
                verdict = rng.choice(["not_improved", "not_improved", "inconclusive", "incomparable"])
                stopped = "time" if verdict == "incomparable" else "steps"
        config = {"command": ["python", "train.py"], "time_budget_s": 20.0, "workspace": cfg,
                  "provenance": {"commit": commit, "main_file": "train.py",
                                 "constants": {**values, "SEED": 0, "SLEEP_PER_STEP": 0.0}, "seed": 0,
                                 "data_fingerprint": None, "environment": env, "cuda_visible_devices": None,
                                 "threads_per_run": 1},
                  "run": {"steps": values["STEPS"] * 3, "max_steps": values["STEPS"] * 3, "stopped_by": stopped,
                          "objective_name": "val_loss", "direction": "minimize"},
                  "sandbox": {"backend": "bwrap", "network": False, "warnings": [], "gaps": [],
                              "isolation": {"note": pad}, "limits": {"wall_seconds": 50}}}
        t = now + i * 60
        rows.append((i, t, t + 1, t + 30, status, verdict, kept,
                     f"try {w1} with {w2} variant {i}", f"{w3} should help: lr {values['LR']} at step {i}",
                     commit, last_kept, json.dumps(config), json.dumps({}), obj, std,
                     None if obj is None else round(obj - best_obj, 5), 29.0, 0.1, 20.0,
                     str(lab.run_dir(i)), "bwrap", 0 if status == "succeeded" else 1, None,
                     None if status == "succeeded" else f"{status}: exit code 1", None,
                     values["STEPS"] * 3, values["STEPS"] * 3, stopped))
        if kept:
            kept_ids.append(i)
            last_kept = i
        if obj is not None:
            metrics += [(i, None, "val_loss", obj), (i, None, "objective", obj), (i, None, "val_loss_std", std)]
            metrics += [(i, f, "val_loss", obj + 0.01 * (f - 1)) for f in range(3)]
    cols = ("id, created_at, started_at, finished_at, status, verdict, kept, description, hypothesis, "
            "snapshot_commit, parent_id, config_json, params_json, objective, objective_std, delta, duration_s, "
            "peak_memory_gb, time_budget_s, run_dir, sandbox_backend, returncode, supervisor_pid, error, "
            "verdict_reason, steps, max_steps, stopped_by")
    marks = ", ".join("?" for _ in cols.split(","))
    t1 = time.perf_counter()
    for start in range(0, len(rows), 5000):
        with lab.store.transaction() as conn:
            conn.executemany(f"INSERT INTO experiments ({cols}) VALUES ({marks})", rows[start:start + 5000])
    for start in range(0, len(metrics), 50000):
        with lab.store.transaction() as conn:
            conn.executemany("INSERT INTO metrics (experiment_id, fold, name, value) VALUES (?, ?, ?, ?)",
                             metrics[start:start + 50000])
    t_rows = time.perf_counter() - t1
    notes = []
    for j in range(n_notes):
        exp_id = rng.randrange(1, n + 1) if rng.random() < 0.8 else None
        notes.append((now + j, exp_id, json.dumps([rng.choice(["lr", "data", "idea", "bug"])]),
                      f"{rng.choice(WORDS)} then {rng.choice(WORDS)}: " + "observations about the run " * 8))
    t1 = time.perf_counter()
    for start in range(0, len(notes), 5000):
        with lab.store.transaction() as conn:
            conn.executemany("INSERT INTO notes (created_at, experiment_id, tags, text) VALUES (?, ?, ?, ?)",
                             notes[start:start + 5000])
    t_notes = time.perf_counter() - t1
    # the diffs, as runs.submit indexes them (one git diff per snapshot here, shared by its runs)
    t1 = time.perf_counter()
    lazy = not hasattr(lab.store, "set_search_diffs")
    if not lazy:
        ids = [r[0] for r in lab.store.db.conn.execute("SELECT experiment_id FROM search_pending")]
        for start in range(0, len(ids), 5000):
            lab.store.set_search_diffs([(i, diffs[i % k_snap]) for i in ids[start:start + 5000]])
    t_diffs = time.perf_counter() - t1
    return lab, {"snapshots_s": t_snap, "rows_s": t_rows, "notes_s": t_notes, "diffs_s": t_diffs, "lazy_index": lazy,
                 "kept": len(kept_ids), "snapshot_diffs": diffs}


def fill_lazy_index(lab: Lab, diffs: list[str]) -> None:
    """Code that indexes inside searches: write its index rows directly (what its searches end up with)."""
    k = len(diffs)
    notes: dict[int, list] = {}
    for eid, nid, text in lab.store.db.conn.execute(
            "SELECT experiment_id, id, text FROM notes WHERE experiment_id IS NOT NULL ORDER BY id"):
        notes.setdefault(eid, []).append((nid, text))
    rows = []
    for eid, desc, hyp in lab.store.db.conn.execute("SELECT id, description, hypothesis FROM experiments"):
        ns = notes.get(eid, [])
        rows.append((eid, desc, hyp or "", "\n".join(t for _, t in ns), diffs[eid % k], ns[-1][0] if ns else 0))
        if len(rows) == 5000:
            lab.store.replace_search_rows(rows)
            rows = []
    if rows:
        lab.store.replace_search_rows(rows)


# -- the measurements --------------------------------------------------------------------------
def read_ops(lab: Lab, n: int, rng: random.Random, plot: bool) -> dict:
    ids = lambda: rng.randrange(1, n + 1)  # noqa: E731
    qs = iter(QUERIES * 1000)
    ops = {
        "read_results created": lambda: ex.read_results(lab, 20, None, "created"),
        "read_results objective": lambda: ex.read_results(lab, 20, None, "objective"),
        "read_results created succeeded": lambda: ex.read_results(lab, 20, "succeeded", "created"),
        "read_results objective succeeded": lambda: ex.read_results(lab, 20, "succeeded", "objective"),
        "read_results objective +metrics": lambda: ex.read_results(lab, 20, None, "objective", True),
        "best_experiment": lambda: lab.store.best_experiment(),
        "experiment_status": lambda: ex.summary(lab, ids()),
        "show_experiment": lambda: ex.show_experiment(lab, ids()),
        "compare_experiments": lambda: history.compare_experiments(lab, ids(), ids()),
        "best_trajectory": lambda: history.best_trajectory(lab, 30),
        "leaderboard": lambda: history.leaderboard(lab, 10),
        "resume_brief": lambda: history.resume_brief(lab),
        "read_notes": lambda: ex.read_notes(lab, 20),
        "read_notes tag": lambda: ex.read_notes(lab, 20, tag="lr"),
        "read_notes query": lambda: ex.read_notes(lab, 20, query="cosine"),
        "search_experiments": lambda: search.search_experiments(lab, next(qs), limit=10),
    }
    if plot:
        from tools import plots
        ops["plot_progress"] = lambda: plots.progress_png(lab, 500)
    return ops


def measure_reads(lab: Lab, n: int, repeats: int, plot: bool) -> dict:
    rng = random.Random(1)
    ops = read_ops(lab, n, rng, plot)
    for fn in ops.values():  # warm the page cache and imports once
        fn()
    times: dict[str, list[float]] = {k: [] for k in ops}
    for r in range(repeats):
        for name, fn in ops.items():
            if name == "plot_progress" and r >= max(3, repeats // 4):
                continue
            times[name].append(timed(fn)[0] * 1000)
    return {k: summary(v) for k, v in times.items()}


def measure_suggest(lab: Lab, repeats: int) -> dict:
    """Bring the study up to date (timed as the backfill), then suggest(1) warm, then cold in a fresh process."""
    out = {}
    t, _ = timed(hpo.suggest, lab, 1)
    out["first suggest (backfills the study)"] = summary([t * 1000])
    warm = [timed(hpo.suggest, lab, 1)[0] * 1000 for _ in range(repeats)]
    out["suggest warm"] = summary(warm)
    cold = []
    for _ in range(2):
        p = subprocess.run([sys.executable, "-m", "bench.server_scale", "--suggest-once", str(lab.root)],
                           capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, AR_BENCH_CODE=str(CODE)))
        if p.returncode == 0:
            cold.append(json.loads(p.stdout.strip().splitlines()[-1])["ms"])
        else:
            print(p.stderr[-2000:], file=sys.stderr)
    out["suggest cold (fresh process, optuna imported)"] = summary(cold)
    return out


def suggest_once(root: str) -> int:
    import optuna  # noqa: F401 - imported before the clock starts: the server imports it once
    lab = Lab.open(root)
    t, _ = timed(hpo.suggest, lab, 1)
    print(json.dumps({"ms": t * 1000}))
    return 0


def run_size(n: int, repeats: int, suggest: bool, plot: bool, keep: str | None) -> dict:
    tmp = tempfile.mkdtemp(prefix=f"ar-scale-{n}-", dir=keep)
    lab, info = build(Path(tmp) / "lab", n, max(1, n // 10))
    diffs = info.pop("snapshot_diffs")
    res: dict = {"n": n, "notes": max(1, n // 10), "build": info, "ops": {}}
    if info["lazy_index"]:  # the searches index: measure the first calls, then complete the index
        res["ops"]["search first call (indexes inside)"] = summary([timed(search.search_experiments, lab,
                                                                          "cosine")[0] * 1000])
        fill_lazy_index(lab, diffs)
        search.search_experiments(lab, "cosine")
    res["ops"].update(measure_reads(lab, n, repeats, plot))
    if suggest:
        res["ops"].update(measure_suggest(lab, max(3, repeats // 4)))
    res["db_mb"] = round(sum(f.stat().st_size for f in lab.state_dir.glob("experiments.db*")) / 2**20, 1)
    lab.close()
    if keep is None:
        subprocess.run(["rm", "-rf", tmp])
    return res


# -- the report --------------------------------------------------------------------------------
def print_tables(results: list[dict], compare: bool) -> None:
    by = {}
    for r in results:
        by.setdefault(r["code"], {})[r["n"]] = r
    codes = list(by)
    sizes = sorted({r["n"] for r in results})
    ops = []
    for r in results:
        ops += [o for o in r["ops"] if o not in ops]
    for code in codes:
        rows = []
        for op in ops:
            row = [op]
            for n in sizes:
                s = by[code].get(n, {}).get("ops", {}).get(op)
                row += [s["p50"], s["p95"], s["max"]] if s and s.get("n") else [None, None, None]
            rows.append(row)
        header = ["ms"] + [f"{h}@{n:g}" for n in sizes for h in ("p50", "p95", "max")]
        print("\n" + table(f"read tools, {code} (ms; p50/p95/max of the calls)", header, rows))
        for n in sizes:
            b = by[code].get(n)
            if b:
                print(f"  build n={n}: rows {b['build']['rows_s']:.1f} s (with triggers: search index on write), "
                      f"notes {b['build']['notes_s']:.1f} s, diffs {b['build']['diffs_s']:.1f} s, db {b['db_mb']} MB")
    if compare and len(codes) == 2:
        a, b = codes
        rows = []
        for op in ops:
            row = [op]
            for n in sizes:
                sa = by[a].get(n, {}).get("ops", {}).get(op)
                sb = by[b].get(n, {}).get("ops", {}).get(op)
                ok = sa and sb and sa.get("n") and sb.get("n")
                row += [sa["p50"] if sa and sa.get("n") else None, sb["p50"] if sb and sb.get("n") else None,
                        (sa["p50"] / sb["p50"]) if ok and sb["p50"] else None]
            rows.append(row)
        header = ["p50 ms"] + [f"{h}@{n:g}" for n in sizes for h in (a[:6], b[:6], "x")]
        print("\n" + table(f"before/after: p50 ms, and before/after ({a} / {b}; >1 = faster now)", header, rows))


def child(args) -> int:
    res = run_size(args.size, args.repeats, args.size in args.suggest_sizes, args.size in args.plot_sizes, args.keep)
    res["code"] = args.label
    print("RESULT " + json.dumps(res))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--suggest-sizes", type=int, nargs="*", default=[1000, 10000])
    ap.add_argument("--plot-sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--compare", metavar="DIR", help="another checkout to measure side by side (before/after)")
    ap.add_argument("--before-suggest-sizes", type=int, nargs="*", default=[],
                    help="sizes at which --compare's code is asked to suggest (its first call reads every "
                         "snapshot: ~0.3 s an experiment)")
    ap.add_argument("--keep", help="make the workspaces under this folder and keep them")
    ap.add_argument("--smoke", action="store_true", help="seconds: 300 experiments, 3 repeats")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--label", default="now", help=argparse.SUPPRESS)
    ap.add_argument("--suggest-once", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.suggest_once:
        return suggest_once(args.suggest_once)
    if args.child:
        return child(args)
    if args.smoke:
        args.sizes, args.repeats, args.suggest_sizes, args.plot_sizes = [300], 3, [300], []
    runs = [("now", ROOT, args.suggest_sizes)]
    if args.compare:
        runs.insert(0, ("before", Path(args.compare).resolve(), args.before_suggest_sizes))
    results = []
    for n in args.sizes:
        for label, code, ssizes in runs:  # interleaved: before and after at one size, then the next size
            cmd = [sys.executable, "-m", "bench.server_scale", "--child", "--size", str(n), "--label", label,
                   "--repeats", str(args.repeats), "--suggest-sizes", *map(str, ssizes),
                   "--plot-sizes", *map(str, args.plot_sizes)] + (["--keep", args.keep] if args.keep else [])
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, AR_BENCH_CODE=str(code)))
            line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("RESULT ")), None)
            if p.returncode != 0 or line is None:
                print(f"{label} n={n} FAILED:\n{p.stderr[-3000:]}", file=sys.stderr)
                continue
            results.append(json.loads(line[7:]))
            print(f"[{label} n={n}: {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    print_tables(results, bool(args.compare))
    record("server_scale", {k: v for k, v in vars(args).items() if k not in ("child", "size", "label")}, results)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
