"""The `autoresearch` command line: init, demo, serve, run, results, show, revert, note, doctor, and (server/
cli_research.py) evaluate-test, rerun, reproduce, suggest, plot, export, integrity. Rendering: server/render.py."""

from __future__ import annotations

HELP = ("Run, judge and record ML experiments in a sandbox; the same research the MCP tools give an agent. "
        "Start with `autoresearch init DIR` (or `autoresearch demo`); `autoresearch COMMAND --help` for each command.")

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from sandbox import doctor_report

from server import app, cli_research
from server.cli_support import (UsageError, cancel_runs, experiment_id, follow, metric_info, open_lab,
                                parse_params)
from server.render import (Activity, ProgressBars, cli_text, num, print_detail, print_doctor, print_results,
                           print_summary, print_table, state_words)
from tools import clients, reruns, runs
from tools import experiments as ex
from tools.config import load_config
from tools.errors import ToolError
from tools.executors import usable_executors
from tools.init import TOY, available_presets, init_workspace
from tools.lab import Lab


def _lab(args):
    return open_lab(args)


def _init(root: Path, preset: str, **kw) -> Path:
    """init_workspace with a live line while it makes the data (minutes for the eCLIP presets)."""
    if preset == TOY:
        return init_workspace(root, preset=preset, **kw)
    act = Activity(f"preparing the data for preset {preset} (synthetic prints and their cache; the first time "
                   "takes a few minutes)")
    try:
        out = init_workspace(root, preset=preset, on_progress=act.line, calibrate=True, **kw)
    except BaseException:
        act.done()
        raise
    act.done("data ready")
    return out


def cmd_init(args) -> int:
    root = _init(Path(args.dir), args.preset, data=args.data, time_budget_s=args.time_budget,
                 client_names=args.client, force=args.force, synthetic=args.synthetic, adopt=args.adopt)
    print(f"workspace ready: {root}\n  next: cd {root} && claude   (or: autoresearch run -w {root} -m 'baseline')")
    return 0


def _state(lab: Lab, exp_id: int) -> str:
    row = lab.store.get_experiment(exp_id) or {"status": "?"}
    metrics = {m["name"]: m["value"] for m in lab.store.metrics(exp_id, aggregate_only=True)}
    return state_words(row, metrics)


def run_and_follow(lab: Lab, ids: list[int], what: str) -> dict:
    """Follow runs this command started; Ctrl-C cancels them and says so (exit 130)."""
    bars = ProgressBars()
    try:
        return follow(lab, ids, bars)
    except KeyboardInterrupt:
        bars.stop()
        print(f"\ninterrupted: cancelling {what} ...", file=sys.stderr, flush=True)
        states = cancel_runs(lab, ids)
        for i, st in states.items():
            print(f"experiment {i}: {st}" + ("" if st in ("cancelled", "succeeded", "failed") else
                                            f" (still ending: `autoresearch cancel {i}` again if it stays)"),
                  file=sys.stderr)
        print("(to leave a run going when you stop watching, start it with `autoresearch run --detach`)",
              file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        bars.stop()


def cmd_run(args) -> int:
    lab = _lab(args)
    params = parse_params(args.params)
    exp_id = ex.submit_experiment(lab, args.message, args.hypothesis, args.time_budget, params)
    if args.detach:
        print(f"experiment {exp_id} queued; it runs in the background.\n  follow: autoresearch watch {exp_id}\n"
              f"  cancel: autoresearch cancel {exp_id}")
        return 0
    s = run_and_follow(lab, [exp_id], f"experiment {exp_id}")[exp_id]
    print_summary(s, metric_info(lab)[0], _state(lab, exp_id))
    return 0 if s.status == "succeeded" else 1


def cmd_watch(args) -> int:
    lab = _lab(args)
    lab.experiment(args.id)
    bars = ProgressBars()
    try:
        s = follow(lab, [args.id], bars)[args.id]
    except KeyboardInterrupt:
        bars.stop()
        print(f"\nstopped watching; experiment {args.id} goes on. cancel it: autoresearch cancel {args.id}",
              file=sys.stderr)
        return 130
    finally:
        bars.stop()
    print_summary(s, metric_info(lab)[0], _state(lab, args.id))
    return 0 if s.status == "succeeded" else 1


def _baseline_reruns(lab: Lab, exp_id: int, wanted: int) -> list[int]:
    """The baseline's seed reruns, `wanted` in all: those the supervisor queued itself
    (`baseline_seeds`, right after the baseline) count, only the missing ones are added."""
    deadline = time.monotonic() + (5.0 if lab.config.baseline_seeds else 0.0)
    while True:
        existing = [m.id for m in reruns.group_members(lab, exp_id) if m.id != exp_id]
        if len(existing) >= min(wanted, lab.config.baseline_seeds) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    missing = max(0, wanted - len(existing))
    return existing[:wanted] + (reruns.submit_reruns(lab, exp_id, missing)[1] if missing else [])


def cmd_demo(args) -> int:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="autoresearch-demo-"))
    print(f"making a workspace in {root} (preset {args.preset}) ...", flush=True)
    _init(root, args.preset, time_budget_s=args.time_budget, force=args.dir is not None)
    lab = Lab.open(root)
    exp_id = ex.submit_experiment(lab, "baseline", "the template as shipped")
    s = run_and_follow(lab, [exp_id], "the baseline")[exp_id]
    metric, direction = metric_info(lab)
    print_summary(s, metric, _state(lab, exp_id))
    if args.repeats and s.status == "succeeded":  # measure the noise: seed reruns of the baseline
        ids = _baseline_reruns(lab, exp_id, args.repeats)
        print(f"measuring the noise: {len(ids)} seed reruns of the baseline ({', '.join(map(str, ids))})",
              file=sys.stderr)
        run_and_follow(lab, ids, "the seed reruns")
        g = reruns.group_summary(lab, exp_id, ids)
        name = metric.replace('_', ' ')
        print(f"baseline noise from {g.n} seeds: {name if name.startswith('mean') else 'mean ' + name} {num(g.mean)}, seed std "
              f"{num(g.seed_std, 3)}, fold std {num(g.fold_std, 3)}, std of the mean {num(g.std_of_mean, 3)}")
    print()
    table = ex.read_results(lab, 20)
    print_results(table, metric, direction, cli_research.states_of(lab, table))
    print(f"\nnext: cd {root} && claude")
    return 0 if s.status == "succeeded" else 1


def cmd_results(args) -> int:
    lab = _lab(args)
    table = ex.read_results(lab, args.limit, args.status, args.order_by, False)
    if args.json:
        print(table.model_dump_json(indent=1))
    else:
        metric, direction = metric_info(lab)
        print_results(table, metric, direction, cli_research.states_of(lab, table))
    return 0


def cmd_show(args) -> int:
    lab = _lab(args)
    d = ex.show_experiment(lab, args.id, detail="full")
    if args.json:
        print(d.model_dump_json(indent=1))
    else:
        print_detail(d, metric_info(lab)[0], _state(lab, args.id))
    return 0


def cmd_revert(args) -> int:
    if args.target != "best" and not args.target.strip().isdigit():
        raise UsageError(f"{args.target!r} is neither 'best' nor an experiment id. Fix: `autoresearch revert best` or "
                         "`autoresearch revert 3` (ids from `autoresearch results`).")
    target = "best" if args.target == "best" else experiment_id(args.target)
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
    lab = _lab(args)
    st = runs.request_cancel(lab, args.id)
    print({"cancelling": f"experiment {args.id}: cancelling (the run stops within seconds)",
           "cancelled": f"experiment {args.id}: cancelled"}.get(st, f"experiment {args.id} is already {st}"))
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
    address = None
    if (Path(args.workspace) / "autoresearch.toml").is_file():  # a workspace's [ray] address, when doctor runs in one
        try:
            address = load_config(Path(args.workspace)).ray.address
        except Exception:  # a broken toml is `run`'s to report, not doctor's
            pass
    report["executors"] = usable_executors(address)  # {name: None (usable) or why not}
    report.update(_workspace_integrity(Path(args.workspace)))
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print_doctor(report)
    return 0


def _workspace_integrity(root: Path) -> dict:
    """The protocol a workspace scores with (leaky or not) and what each configured client can deny."""
    if not (root / "autoresearch.toml").is_file():
        return {}
    try:
        cfg = load_config(root)
    except Exception:  # a broken toml is `run`'s to report
        return {}
    out = {"protocol": (f"{cfg.protocol}, k = {cfg.folds}: " + (cfg.leak_note or (
        "leak-free (train on the training split, score on disjoint validation pools; fresh secret orders per run)")))
        if cfg.scorer == "eclip" else "the workspace's own scorer (its command decides what it trains and scores on)"}
    present = {"claude": ".claude/settings.json", "codex": ".codex/config.toml", "cursor": ".cursor/mcp.json",
               "vscode": ".vscode/mcp.json", "gemini": ".gemini/settings.json"}
    configured = {name: clients.READ_DENIES[name] for name, rel in present.items() if (root / rel).is_file()}
    if configured:
        out["agent_read_denies"] = configured
    return out


def cmd_clients(args) -> int:
    lab = _lab(args)
    kw = dict(max_call_s=clients.call_timeout_s(lab.config.time_budget_s, lab.config.max_wait_s),
              editable=lab.config.editable)
    names = args.client or ["all"]
    chosen = list(clients.CLIENTS) if "all" in names else names
    if args.write:
        for rel in clients.write_client_configs(lab.root, names, overwrite=args.force, **kw):
            print(f"wrote {lab.root / rel}")
        for name in chosen:
            print(f"{name}: what the agent cannot read: {clients.READ_DENIES[name]}")
        return 0
    for rel, text in clients.render(lab.root, names, **kw).items():
        print(f"# ---- {rel} ----\n{text}")
    for name in chosen:
        print(f"# {name}: what the agent cannot read: {clients.READ_DENIES[name]}")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line with the fix (exit 2), not a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}. Fix: see `{self.prog} --help`.\n")


def _id(text: str) -> int:
    try:
        return experiment_id(text)
    except UsageError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an experiment id (a number from `autoresearch results`)") \
            from None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="autoresearch", description=HELP)
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
    sp.add_argument("--force", action="store_true", help="rewrite init's own files in an existing workspace")
    sp.add_argument("--adopt", action="store_true",
                    help="make a non-empty folder a workspace: none of its files is overwritten or committed")
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

    sp = ws(sub.add_parser("serve", help="run the MCP server on stdio (or --http: Streamable HTTP with a bearer token)"))
    sp.add_argument("--http", action="store_true", help="serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio; "
                                                         "every request needs the token in .autoresearch/http-token")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs the token "
                                                        "file to exist: run `autoresearch clients` first)")
    sp.add_argument("--port", type=int, default=app.HTTP_PORT, help=f"TCP port (default {app.HTTP_PORT})")
    sp.add_argument("--allowed-host", action="append", metavar="NAME",
                    help="a Host/Origin name clients use to reach this server (repeatable; DNS-rebinding checks)")
    sp.set_defaults(fn=app.serve_command)

    sp = ws(sub.add_parser("run", help="run one experiment with a live progress bar"))
    sp.add_argument("-m", "--message", required=True, help="description of the change")
    sp.add_argument("--hypothesis")
    sp.add_argument("--time-budget", type=float)
    sp.add_argument("--params", help='JSON overrides, e.g. \'{"LR": 1e-4}\'')
    sp.add_argument("--detach", action="store_true",
                    help="queue it and return (follow: autoresearch watch ID; cancel: autoresearch cancel ID); "
                         "without it, Ctrl-C cancels the run")
    sp.set_defaults(fn=cmd_run)

    sp = ws(sub.add_parser("watch", help="follow a queued or running experiment with a progress bar"))
    sp.add_argument("id", type=_id)
    sp.set_defaults(fn=cmd_watch)

    sp = ws(sub.add_parser("results", help="the results table"))
    sp.add_argument("--limit", type=int, default=20)
    sp.add_argument("--status")
    sp.add_argument("--order-by", default="created", choices=["created", "objective"])
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_results)

    sp = ws(sub.add_parser("show", help="one experiment in full: outcome, config, metrics, diff, log"))
    sp.add_argument("id", type=_id)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_show)

    sp = ws(sub.add_parser("revert", help="restore the editable files from a snapshot"))
    sp.add_argument("target", help="experiment id or 'best'")
    sp.set_defaults(fn=cmd_revert)

    sp = ws(sub.add_parser("note", help="write a note"))
    sp.add_argument("text")
    sp.add_argument("--experiment", type=_id)
    sp.add_argument("--tag", action="append")
    sp.set_defaults(fn=cmd_note)

    sp = ws(sub.add_parser("notes", help="read notes"))
    sp.add_argument("--limit", type=int, default=20)
    sp.add_argument("--tag")
    sp.add_argument("--query")
    sp.set_defaults(fn=cmd_notes)

    sp = ws(sub.add_parser("cancel", help="cancel a queued or running experiment"))
    sp.add_argument("id", type=_id)
    sp.set_defaults(fn=cmd_cancel)

    sp = ws(sub.add_parser("audit", help="every tool call, oldest first"))
    sp.add_argument("--limit", type=int, default=100)
    sp.set_defaults(fn=cmd_audit)

    sp = ws(sub.add_parser("doctor", help="sandbox backend, limits, GPU, executors: what is available and why"))
    sp.add_argument("--json", action="store_true", help="the full report as JSON (for scripts)")
    sp.set_defaults(fn=cmd_doctor)

    cli_research.add_commands(sub, ws, _id)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ToolError as exc:
        text = cli_text(str(exc)).replace("autoresearch COMMAND", f"autoresearch {args.command}")
        print(f"autoresearch {args.command}: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `autoresearch results | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
