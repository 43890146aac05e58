"""The `autoresearch` command line: init, demo, serve, run, results, show, revert, note, doctor, and (server/
cli_research.py) evaluate-test, rerun, reproduce, suggest, plot, export, integrity. Rendering: server/render.py."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from sandbox import doctor_report

from server import app, cli_research
from server.render import ProgressBar, print_results, print_summary, print_table
from tools import clients, reruns, runs
from tools import experiments as ex
from tools.errors import ToolError
from tools.init import available_presets, init_workspace
from tools.lab import Lab


def _lab(args):
    return Lab.open(Path(args.workspace))


def cmd_init(args) -> int:
    root = init_workspace(Path(args.dir), preset=args.preset, data=args.data, time_budget_s=args.time_budget,
                          client_names=args.client, force=args.force, synthetic=args.synthetic)
    print(f"workspace ready: {root}\n  next: cd {root} && claude   (or: autoresearch run -w {root} -m 'baseline')")
    return 0


def cmd_run(args) -> int:
    lab = _lab(args)
    params = json.loads(args.params) if args.params else None
    exp_id = ex.submit_experiment(lab, args.message, args.hypothesis, args.time_budget, params)
    bar = ProgressBar(args.time_budget or lab.config.time_budget_s)
    s = ex.wait_for(lab, exp_id, on_progress=bar)
    bar.done()
    print_summary(s)
    return 0 if s.status == "succeeded" else 1


def cmd_demo(args) -> int:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="autoresearch-demo-"))
    print(f"making a workspace in {root} (preset {args.preset}) ...", flush=True)
    init_workspace(root, preset=args.preset, time_budget_s=args.time_budget, force=args.dir is not None)
    lab = Lab.open(root)
    bar = ProgressBar(lab.config.time_budget_s)
    exp_id = ex.submit_experiment(lab, "baseline", "the template as shipped")
    s = ex.wait_for(lab, exp_id, on_progress=bar)
    bar.done()
    print_summary(s)
    if args.repeats and s.status == "succeeded":  # measure the noise: seed reruns of the baseline
        _, ids = reruns.submit_reruns(lab, exp_id, args.repeats)
        for i in ids:
            ex.wait_for(lab, i, on_progress=bar)
        bar.done()
        g = reruns.group_summary(lab, exp_id, ids)
        print(f"baseline noise from {g.n} seeds: mean {g.mean:.4g}, seed std {g.seed_std or 0:.3g}, "
              f"fold std {g.fold_std or 0:.3g}, std of the mean {g.std_of_mean:.3g}")
    print()
    print_results(ex.read_results(lab, 20))
    print(f"\nnext: cd {root} && claude")
    return 0 if s.status == "succeeded" else 1


def cmd_results(args) -> int:
    table = ex.read_results(_lab(args), args.limit, args.status, args.order_by, False)
    if args.json:
        print(table.model_dump_json(indent=1))
    else:
        print_results(table)
    return 0


def cmd_show(args) -> int:
    print(ex.show_experiment(_lab(args), args.id).model_dump_json(indent=1))
    return 0


def cmd_revert(args) -> int:
    target = "best" if args.target == "best" else int(args.target)
    r = ex.revert(_lab(args), target)
    print(f"restored {', '.join(r.restored) or 'nothing (already equal)'} from experiment {r.experiment_id} "
          f"({r.snapshot_commit[:10]})")
    return 0


def cmd_note(args) -> int:
    n = ex.write_note(_lab(args), args.text, args.experiment, args.tag or [])
    print(f"note {n.id} saved")
    return 0


def cmd_notes(args) -> int:
    page = ex.read_notes(_lab(args), args.limit, args.tag, args.query)
    for n in page.notes:
        exp = f" exp {n.experiment_id}" if n.experiment_id else ""
        print(f"#{n.id} {n.created_at}{exp} {' '.join('#' + t for t in n.tags)}\n  {n.text}\n")
    print(f"({len(page.notes)} of {page.total})")
    return 0


def cmd_cancel(args) -> int:
    print(runs.request_cancel(_lab(args), args.id))
    return 0


def cmd_audit(args) -> int:
    lab = _lab(args)
    rows = lab.store.audit_rows(args.limit)
    print_table(["id", "time", "tool", "outcome", "ms", "arguments"],
                [[r["id"], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["t"])), r["tool"], r["outcome"],
                  round(r["duration_ms"] or 0, 1), r["arguments"][:80]] for r in reversed(rows)])
    return 0


def cmd_doctor(args) -> int:
    report = doctor_report()
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        elif isinstance(value, list):
            print(f"{key}:")
            for v in value:
                print(f"  - {v}")
        else:
            print(f"{key}: {value}")
    return 0


def cmd_clients(args) -> int:
    lab = _lab(args)
    kw = dict(max_call_s=clients.call_timeout_s(lab.config.time_budget_s), editable=lab.config.editable)
    names = args.client or ["all"]
    if args.write:
        for rel in clients.write_client_configs(lab.root, names, overwrite=args.force, **kw):
            print(f"wrote {lab.root / rel}")
        return 0
    for rel, text in clients.render(lab.root, names, **kw).items():
        print(f"# ---- {rel} ----\n{text}")
    return 0


def cmd_serve(args) -> int:
    app.serve(Path(args.workspace))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoresearch", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def ws(sp):
        sp.add_argument("-w", "--workspace", default=os.getcwd(), help="workspace folder (default: current)")
        return sp

    presets = available_presets()
    sp = sub.add_parser("init", help="make a workspace")
    sp.add_argument("dir", nargs="?", default=".")
    sp.add_argument("--preset", default="tiny" if "tiny" in presets else "toy", choices=presets)
    sp.add_argument("--data", help="dataset root (default: generate synthetic prints)")
    sp.add_argument("--time-budget", type=float, help="default training seconds per experiment")
    sp.add_argument("--client", action="append", choices=["codex", "cursor", "vscode", "gemini"],
                    help="also write this client's MCP config (repeatable)")
    sp.add_argument("--force", action="store_true")
    sp.add_argument("--synthetic", default="default", choices=["default", "small"],
                    help="size of the generated synthetic prints (small: for quick trials and tests)")
    sp.set_defaults(fn=cmd_init)

    sp = sub.add_parser("demo", help="make a workspace, run a baseline, print the results")
    sp.add_argument("dir", nargs="?")
    sp.add_argument("--preset", default="tiny" if "tiny" in presets else "toy", choices=presets)
    sp.add_argument("--time-budget", type=float)
    sp.add_argument("--repeats", type=int, default=0, metavar="N",
                    help="also rerun the baseline with N more seeds to measure the noise (N <= 10)")
    sp.set_defaults(fn=cmd_demo)

    sp = ws(sub.add_parser("clients", help="print (or --write) the MCP config of Claude Code, Codex, Cursor, "
                                           "VS Code, Gemini CLI for this workspace"))
    sp.add_argument("client", nargs="*", metavar="CLIENT",
                    help="claude, codex, cursor, vscode, gemini or all (default: all)")
    sp.add_argument("--write", action="store_true", help="write the files into the workspace")
    sp.add_argument("--force", action="store_true", help="with --write: replace files that differ")
    sp.set_defaults(fn=cmd_clients)

    sp = ws(sub.add_parser("serve", help="run the MCP server on stdio"))
    sp.set_defaults(fn=cmd_serve)

    sp = ws(sub.add_parser("run", help="run one experiment with a live progress bar"))
    sp.add_argument("-m", "--message", required=True, help="description of the change")
    sp.add_argument("--hypothesis")
    sp.add_argument("--time-budget", type=float)
    sp.add_argument("--params", help='JSON overrides, e.g. \'{"LR": 1e-4}\'')
    sp.set_defaults(fn=cmd_run)

    sp = ws(sub.add_parser("results", help="the results table"))
    sp.add_argument("--limit", type=int, default=20)
    sp.add_argument("--status")
    sp.add_argument("--order-by", default="created", choices=["created", "objective"])
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_results)

    sp = ws(sub.add_parser("show", help="one experiment in full (JSON)"))
    sp.add_argument("id", type=int)
    sp.set_defaults(fn=cmd_show)

    sp = ws(sub.add_parser("revert", help="restore the editable files from a snapshot"))
    sp.add_argument("target", help="experiment id or 'best'")
    sp.set_defaults(fn=cmd_revert)

    sp = ws(sub.add_parser("note", help="write a note"))
    sp.add_argument("text")
    sp.add_argument("--experiment", type=int)
    sp.add_argument("--tag", action="append")
    sp.set_defaults(fn=cmd_note)

    sp = ws(sub.add_parser("notes", help="read notes"))
    sp.add_argument("--limit", type=int, default=20)
    sp.add_argument("--tag")
    sp.add_argument("--query")
    sp.set_defaults(fn=cmd_notes)

    sp = ws(sub.add_parser("cancel", help="cancel a queued or running experiment"))
    sp.add_argument("id", type=int)
    sp.set_defaults(fn=cmd_cancel)

    sp = ws(sub.add_parser("audit", help="every tool call, oldest first"))
    sp.add_argument("--limit", type=int, default=100)
    sp.set_defaults(fn=cmd_audit)

    sp = sub.add_parser("doctor", help="sandbox backend, limits, GPU: what is available and why")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_doctor)

    cli_research.add_commands(sub, ws)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ToolError as exc:
        print(f"autoresearch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
