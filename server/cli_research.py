"""CLI commands for research integrity and search: evaluate-test, rerun, reproduce, suggest, plot,
export, integrity. `server.cli.build_parser` calls `add_commands`. Each command is audited as
`cli:<name>`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from server.render import print_table
from tools import experiments as ex
from tools import hpo, plots, reproduce, reruns, testeval
from tools.errors import ToolError
from tools.lab import Lab


def _audited(lab, name: str, arguments: dict, fn):
    t0 = time.perf_counter()
    try:
        out = fn()
    except ToolError as exc:
        lab.store.audit(f"cli:{name}", arguments, "error", str(exc), (time.perf_counter() - t0) * 1000)
        raise
    detail = out.model_dump_json()[:500] if hasattr(out, "model_dump_json") else str(out)[:500]
    lab.store.audit(f"cli:{name}", arguments, "ok", detail, (time.perf_counter() - t0) * 1000)
    return out


def _lab(args):
    return Lab.open(Path(args.workspace))


def cmd_evaluate_test(args) -> int:
    lab = _lab(args)
    print(f"evaluating experiment {args.id} once on the held-out test split (sandboxed) ...", file=sys.stderr)
    cancel = []
    try:
        r = _audited(lab, "evaluate-test", {"experiment_id": args.id, "again": args.again},
                     lambda: testeval.evaluate_test(lab, args.id, requested_by="cli", again=args.again,
                                                     should_cancel=lambda: bool(cancel)))
    except KeyboardInterrupt:
        cancel.append(True)
        raise
    if args.json:
        print(r.model_dump_json(indent=1))
    else:
        std = f" +- {r.objective_std:.4g}" if r.objective_std is not None else ""
        print(f"test evaluation {r.id} of experiment {r.experiment_id} ({r.snapshot_commit[:10]}): {r.status}")
        if r.objective is not None:
            print(f"  test {lab.config.objective}: {r.objective:.6g}{std}  ({r.duration_s}s, sandbox {r.sandbox})")
        for k, v in list(r.metrics.items())[:20]:
            print(f"  {k}: {v:.6g}")
        if r.error:
            print("  error: " + r.error.replace("\n", "\n  "))
    return 0 if r.status == "succeeded" else 1


def cmd_rerun(args) -> int:
    lab = _lab(args)
    root, ids = _audited(lab, "rerun", {"experiment_id": args.id, "seeds": args.seeds},
                         lambda: reruns.submit_reruns(lab, args.id, args.seeds))
    print(f"queued seed reruns {ids} of experiment {root}", file=sys.stderr)
    for i in ids:
        ex.wait_for(lab, i)
    g = reruns.group_summary(lab, root, ids)
    print(g.model_dump_json(indent=1) if args.json else
          f"group of experiment {root}: n={g.n} mean={g.mean} seed_std={g.seed_std} fold_std={g.fold_std} "
          f"std_of_mean={g.std_of_mean}\n  verdict {g.verdict}: {g.verdict_reason}")
    return 0


def cmd_reproduce(args) -> int:
    lab = _lab(args)
    new_id = _audited(lab, "reproduce", {"experiment_id": args.id},
                      lambda: reproduce.submit_reproduction(lab, args.id))
    ex.wait_for(lab, new_id)
    r = reproduce.report(lab, args.id, new_id)
    print(r.model_dump_json(indent=1))
    return 0 if r.verdict in ("identical", "within_noise") else 1


def cmd_suggest(args) -> int:
    lab = _lab(args)
    r = _audited(lab, "suggest", {"n": args.n}, lambda: hpo.suggest(lab, args.n))
    if args.json:
        print(r.model_dump_json(indent=1))
    else:
        print(f"study {r.study} ({r.sampler}): {r.trials_complete} complete, {r.trials_failed} failed; {r.storage}")
        for s in r.suggestions:
            print(f"  trial {s.trial}: autoresearch run -m 'suggest trial {s.trial}' --params '{json.dumps(s.params)}'")
    return 0


def cmd_plot(args) -> int:
    lab = _lab(args)
    png = _audited(lab, "plot", {"limit": args.limit}, lambda: plots.progress_png(lab, args.limit))
    out = args.output or str(lab.root / "progress.png")
    plots.write_atomic(out, png)
    print(f"wrote {out} ({len(png)} bytes)")
    return 0


def cmd_export(args) -> int:
    lab = _lab(args)
    if args.format != "tsv":
        raise ToolError(f"--format {args.format!r} is not supported. Fix: use --format tsv.")
    text = _audited(lab, "export", {"format": args.format}, lambda: plots.results_tsv(lab))
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    out = args.output or str(lab.root / "results.tsv")
    plots.write_atomic(out, text.encode())
    print(f"wrote {out} ({text.count(chr(10)) - 1} experiments)")
    return 0


def cmd_integrity(args) -> int:
    lab = _lab(args)
    rows = lab.store.integrity_events(limit=args.limit)
    print(f"integrity events (denied accesses seen in run logs): {len(rows)}")
    print_table(["id", "time", "experiment", "kind", "path", "detail"],
                [[r["id"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["t"])), r["experiment_id"], r["kind"],
                  (r["path"] or "")[:60], r["detail"]] for r in reversed(rows)])
    tests = lab.store.test_evaluations(limit=args.limit)
    print(f"\ntest evaluations: {len(tests)}")
    print_table(["id", "time", "experiment", "by", "status", "objective", "commit"],
                [[r["id"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at"])), r["experiment_id"],
                  r["requested_by"], r["status"], r["objective"], r["snapshot_commit"][:10]] for r in reversed(tests)])
    return 0


def add_commands(sub, ws) -> None:
    sp = ws(sub.add_parser("evaluate-test", help="evaluate one experiment ONCE on the held-out test split (humans)"))
    sp.add_argument("id", type=int, help="experiment id (e.g. the best)")
    sp.add_argument("--again", action="store_true", help="evaluate even though it was evaluated before")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_evaluate_test)

    sp = ws(sub.add_parser("rerun", help="rerun an experiment's snapshot with new seeds (noise estimate)"))
    sp.add_argument("id", type=int)
    sp.add_argument("--seeds", type=int, default=2)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_rerun)

    sp = ws(sub.add_parser("reproduce", help="rerun an experiment exactly (same seed) and report the difference"))
    sp.add_argument("id", type=int)
    sp.set_defaults(fn=cmd_reproduce)

    sp = ws(sub.add_parser("suggest", help="propose hyperparameters with Optuna over the search_space"))
    sp.add_argument("-n", type=int, default=1)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_suggest)

    sp = ws(sub.add_parser("plot", help="write the progress plot (PNG)"))
    sp.add_argument("-o", "--output", help="file (default: WORKSPACE/progress.png)")
    sp.add_argument("--limit", type=int, default=500)
    sp.set_defaults(fn=cmd_plot)

    sp = ws(sub.add_parser("export", help="write results.tsv (karpathy/autoresearch format)"))
    sp.add_argument("--format", default="tsv", help="tsv")
    sp.add_argument("-o", "--output", help="file, or - for stdout (default: WORKSPACE/results.tsv)")
    sp.set_defaults(fn=cmd_export)

    sp = ws(sub.add_parser("integrity", help="denied accesses recorded from runs, and the test evaluations"))
    sp.add_argument("--limit", type=int, default=100)
    sp.set_defaults(fn=cmd_integrity)
