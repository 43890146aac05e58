"""CLI commands for research integrity, search and looking back: evaluate-test, rerun, reproduce,
suggest, plot, export, integrity, compare, search, trajectory, dashboard. `server.cli.build_parser`
calls `add_commands`. Each command but the dashboard is audited as `cli:<name>`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from server import dashboard
from server.cli_support import UsageError, cancel_runs, follow, metric_info, open_lab
from server.render import (ProgressBars, cli_text, num, print_compare, print_reproduce, print_search, print_table,
                           plural, print_trajectory, state_words, verdict_words)
from tools import history, hpo, plots, reproduce, reruns, search, testeval
from tools.errors import ToolError


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
    return open_lab(args)


def states_of(lab, table) -> dict[int, str]:
    """Each row's state in words (truncated runs say where they stopped)."""
    out = {}
    for r in table.rows:
        row = lab.store.get_experiment(r.id) or {"status": r.status}
        metrics = {m["name"]: m["value"] for m in lab.store.metrics(r.id, aggregate_only=True)}
        out[r.id] = state_words(row, metrics)
    return out


def group_line(g, metric: str) -> str:
    name = metric.replace("_", " ")
    text = (f"seed group of experiment {g.experiment_id}: {g.n} runs, mean {name} {num(g.mean)}, "
            f"seed std {num(g.seed_std, 3)}, fold std {num(g.fold_std, 3)}, std of the mean {num(g.std_of_mean, 3)}")
    if g.verdict:
        text += f"\n  verdict {verdict_words(g.verdict, reason=g.verdict_reason)}: {cli_text(g.verdict_reason)}"
    if g.next:
        text += f"\n  next: {cli_text(g.next)}"
    return text


def _follow_started(lab, ids: list[int], what: str) -> None:
    """Follow runs this command queued with bars; Ctrl-C cancels them (exit 130)."""
    bars = ProgressBars()
    try:
        follow(lab, ids, bars)
    except KeyboardInterrupt:
        bars.stop()
        print(f"\ninterrupted: cancelling {what} ...", file=sys.stderr, flush=True)
        for i, st in cancel_runs(lab, ids).items():
            print(f"experiment {i}: {st}", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        bars.stop()


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
        std = f" ± {num(r.objective_std, 3)}" if r.objective_std is not None else ""
        print(f"test evaluation {r.id} of experiment {r.experiment_id} ({r.snapshot_commit[:10]}): {r.status}")
        if r.objective is not None:
            # the one number a human came for: shown in full (6 significant digits), not rounded like tables
            print(f"  test {metric_info(lab)[0].replace('_', ' ')}: {r.objective:.6g}{std}  "
                  f"({num(r.duration_s, 3)} s, sandbox {r.sandbox})")
        for k, v in list(r.metrics.items())[:20]:
            print(f"  {k}: {num(v)}")
        if r.error:
            print("  error: " + cli_text(r.error).replace("\n", "\n  "))
    return 0 if r.status == "succeeded" else 1


def cmd_rerun(args) -> int:
    lab = _lab(args)
    root, ids = _audited(lab, "rerun", {"experiment_id": args.id, "seeds": args.seeds},
                         lambda: reruns.submit_reruns(lab, args.id, args.seeds))
    print(f"queued {len(ids)} seed reruns of experiment {root}: {', '.join(map(str, ids))}", file=sys.stderr)
    _follow_started(lab, ids, "the seed reruns")
    g = reruns.group_summary(lab, root, ids)
    print(g.model_dump_json(indent=1) if args.json else group_line(g, metric_info(lab)[0]))
    return 0


def cmd_reproduce(args) -> int:
    lab = _lab(args)
    new_id = _audited(lab, "reproduce", {"experiment_id": args.id},
                      lambda: reproduce.submit_reproduction(lab, args.id))
    print(f"reproducing experiment {args.id} as experiment {new_id} (same snapshot, same seed)", file=sys.stderr)
    _follow_started(lab, [new_id], f"the reproduction (experiment {new_id})")
    r = reproduce.report(lab, args.id, new_id)
    if args.json:
        print(r.model_dump_json(indent=1))
    else:
        print_reproduce(r, metric_info(lab)[0])
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
        if getattr(r, "next", None):
            print(f"  next: {cli_text(r.next)}")
    return 0


def cmd_plot(args) -> int:
    lab = _lab(args)
    png = _audited(lab, "plot", {"limit": args.limit}, lambda: plots.progress_png(lab, args.limit))
    out = args.output or str(lab.root / "progress.png")
    plots.write_atomic(out, png)
    print(f"wrote {out} ({len(png) // 1024} KiB)")
    if args.curves:
        png = plots.loss_curves_png(lab)
        out = str(Path(out).with_name(Path(out).stem + "-loss.png"))
        plots.write_atomic(out, png)
        print(f"wrote {out} ({len(png) // 1024} KiB)")
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
    print(f"wrote {out} ({plural(text.count(chr(10)) - 1, 'experiment')})")
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


def cmd_compare(args) -> int:
    lab = _lab(args)
    c = _audited(lab, "compare", {"a": args.a, "b": args.b}, lambda: history.compare_experiments(lab, args.a, args.b))
    if args.json:
        print(c.model_dump_json(indent=1))
    else:
        print_compare(c, metric_info(lab)[0])
    return 0


def cmd_search(args) -> int:
    lab = _lab(args)
    text = " ".join(args.text)
    page = _audited(lab, "search", {"query": text, "status": args.status, "limit": args.limit},
                    lambda: search.search_experiments(lab, text, args.status, None, args.limit))
    if args.json:
        print(page.model_dump_json(indent=1))
    else:
        print_search(page)
    return 0


def cmd_trajectory(args) -> int:
    lab = _lab(args)
    t = _audited(lab, "trajectory", {"limit": args.limit}, lambda: history.best_trajectory(lab, args.limit))
    if args.json:
        print(t.model_dump_json(indent=1))
    else:
        print_trajectory(t, *metric_info(lab))
    return 0


def cmd_dashboard(args) -> int:
    lab = _lab(args)
    token = dashboard.load_token(args.token_file) if args.token_file else None
    if not dashboard.is_loopback(args.host) and token is None:
        raise UsageError(f"--host {args.host} is reachable from other machines, so the dashboard needs a bearer "
                         "token. Fix: add --token-file FILE (the HTTP MCP server's token file, mode 0600), or keep "
                         "the default --host 127.0.0.1.")
    server = dashboard.make_server(lab, args.host, args.port, token=token)
    host, port = server.server_address[:2]
    print(f"dashboard of {lab.root}: http://{host}:{port}/  (read-only; Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\ndashboard stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def add_commands(sub, ws, exp_id=int) -> None:
    sp = ws(sub.add_parser("evaluate-test", help="evaluate one experiment ONCE on the held-out test split (humans)"))
    sp.add_argument("id", type=exp_id, help="experiment id (e.g. the best)")
    sp.add_argument("--again", action="store_true", help="evaluate even though it was evaluated before")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_evaluate_test)

    sp = ws(sub.add_parser("rerun", help="rerun an experiment's snapshot with new seeds (noise estimate)"))
    sp.add_argument("id", type=exp_id)
    sp.add_argument("--seeds", type=int, default=2)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_rerun)

    sp = ws(sub.add_parser("reproduce", help="rerun an experiment exactly (same seed) and report the difference"))
    sp.add_argument("id", type=exp_id)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_reproduce)

    sp = ws(sub.add_parser("suggest", help="propose hyperparameters with Optuna over the search_space"))
    sp.add_argument("-n", type=int, default=1)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_suggest)

    sp = ws(sub.add_parser("plot", help="write the progress plot (PNG)"))
    sp.add_argument("-o", "--output", help="file (default: WORKSPACE/progress.png)")
    sp.add_argument("--limit", type=int, default=500)
    sp.add_argument("--curves", action="store_true", help="also write the loss curves of the best and latest runs "
                                                          "(FILE-loss.png)")
    sp.set_defaults(fn=cmd_plot)

    sp = ws(sub.add_parser("export", help="write results.tsv (karpathy/autoresearch format)"))
    sp.add_argument("--format", default="tsv", help="tsv")
    sp.add_argument("-o", "--output", help="file, or - for stdout (default: WORKSPACE/results.tsv)")
    sp.set_defaults(fn=cmd_export)

    sp = ws(sub.add_parser("integrity", help="denied accesses recorded from runs, and the test evaluations"))
    sp.add_argument("--limit", type=int, default=100)
    sp.set_defaults(fn=cmd_integrity)

    sp = ws(sub.add_parser("compare", help="what separates two experiments: config, code diff, metrics with noise"))
    sp.add_argument("a", type=exp_id, help="the reference, e.g. the best")
    sp.add_argument("b", type=exp_id)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_compare)

    sp = ws(sub.add_parser("search", help="full-text search of descriptions, hypotheses, notes and code changes"))
    sp.add_argument("text", nargs="+", help="words, e.g. warmup lr ('warm*' matches a prefix)")
    sp.add_argument("--status")
    sp.add_argument("--limit", type=int, default=10)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_search)

    sp = ws(sub.add_parser("trajectory", help="the best-so-far trajectory: each run that became the best"))
    sp.add_argument("--limit", type=int, default=30)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_trajectory)

    sp = ws(sub.add_parser("dashboard", help="a read-only web page of the workspace, live while runs go"))
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sp.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    sp.add_argument("--token-file", help="bearer token file (needed when --host is not loopback)")
    sp.set_defaults(fn=cmd_dashboard)
