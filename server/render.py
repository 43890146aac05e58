"""How the CLI shows things: numbers, tables, the live progress bars (rich), run summaries, the
results table, and the human forms of show / reproduce / compare / search / trajectory / doctor.

Every message a tool wrote for an agent passes through cli_support.cli_text (commands, not MCP calls).
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

from tools.verdict import noise_unknown, shown_truncated


VERDICT_WORDS = {
    "baseline": "baseline",
    "improved": "improved",
    "not_improved": "not improved",
    "inconclusive": "inconclusive (within the noise)",
    "improved?": "improved? (provisional: awaiting its seed reruns)",
    "incomparable": "incomparable (not compared: see the reason)",
}


# -- MCP wording -> commands ----------------------------------------------------------------
_ARG = r"\{?[\w' ]+\}?"
_RULES: list[tuple[str, str]] = [
    (r"poll experiment_status\((%s)(?:, wait_s=\d+)?\)" % _ARG, r"follow it with `autoresearch watch \1`"),
    (r"experiment_status\((%s)(?:, wait_s=\d+)?\)" % _ARG, r"`autoresearch watch \1`"),
    (r"cancel_experiment\((%s)\)" % _ARG, r"`autoresearch cancel \1`"),
    (r"show_experiment\((%s)\)" % _ARG, r"`autoresearch show \1`"),
    (r"rerun_experiment\((%s), seeds=(\d+)\)" % _ARG, r"`autoresearch rerun \1 --seeds \2`"),
    (r"rerun_experiment\((%s)\)" % _ARG, r"`autoresearch rerun \1`"),
    (r"rerun_experiment", r"`autoresearch rerun ID`"),
    (r"reproduce\((%s)\)" % _ARG, r"`autoresearch reproduce \1`"),
    (r"compare_experiments\((\w+), (\w+)\)", r"`autoresearch compare \1 \2`"),
    (r"search_experiments\(\\?\"([^\"\\]*)\\?\"\)", r"`autoresearch search \"\1\"`"),
    (r"search_experiments", r"`autoresearch search TEXT`"),
    (r"run_experiment\(params=\.\.\.\)", r"`autoresearch run -m '...' --params '{...}'`"),
    (r"run_experiment\([^)]*\)", r"`autoresearch run -m '...'`"),
    (r"run_experiment", r"`autoresearch run`"),
    (r"revert\('best'\)", r"`autoresearch revert best`"),
    (r"revert\((\d+|\w+)\)", r"`autoresearch revert \1`"),
    (r"write_note\([^)]*\)", r"`autoresearch note '...' --experiment ID`"),
    (r"write_note", r"`autoresearch note '...'`"),
    (r"read_results", r"`autoresearch results`"),
    (r"read_notes", r"`autoresearch notes`"),
    (r"best_trajectory", r"`autoresearch trajectory`"),
    (r"evaluate_test", r"`autoresearch evaluate-test ID`"),
    (r"suggest_hyperparameters|suggest\(\w*\)", r"`autoresearch suggest`"),
    (r"plot_progress", r"`autoresearch plot`"),
    (r"\(see the tool's schema\)", r"(see `autoresearch COMMAND --help`)"),
    (r"\bexperiment_id=(\d+)", r"experiment \1"),
    (r"\bpass a valid params\b", r"pass valid --params"),
    (r"\binvalid params=", r"invalid --params "),
    (r"\binvalid description=", r"invalid -m/--message "),
    (r"\bpass a valid description\b", r"pass a -m/--message of 3 to 2000 characters"),
    (r"\binvalid time_budget_s=", r"invalid --time-budget "),
    (r"\bpass a valid time_budget_s\b", r"pass a --time-budget from 5 seconds"),
    (r"\btarget='best'", r"`revert best`"),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]


def cli_text(text: str | None, exp_id: int | None = None) -> str | None:
    """A tool's message in the words of the command line (MCP tool calls become commands); with
    exp_id, the commands' ID placeholder is that experiment."""
    if not text:
        return text
    for pattern, repl in _COMPILED:
        text = pattern.sub(repl, text)
    if exp_id is not None:
        text = re.sub(r"(`autoresearch (?:rerun|show|reproduce|watch|cancel|revert)) ID", rf"\1 {exp_id}", text)
    return text



def metric_label(name: str, direction: str) -> str:
    """'mean rank (lower is better)'."""
    return f"{name.replace('_', ' ')} ({'lower' if direction == 'minimize' else 'higher'} is better)"


# -- numbers --------------------------------------------------------------------------------
def num(v, sig: int = 4) -> str:
    """A number for people: 4 significant digits, no exponent for ordinary sizes, '-' for none."""
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    if mag >= 6 or mag < -4:
        return re.sub(r"\.?0+e", "e", f"{v:.{sig - 1}e}")
    decimals = max(0, sig - 1 - mag)
    text = f"{v:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def secs(v) -> str:
    """Seconds: 0.5, 12.3, 340."""
    return "-" if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def signed(v, sig: int = 4) -> str:
    return "-" if v is None else ("+" if v >= 0 else "") + num(v, sig)


def fmt(v, nd=4):
    return num(v, nd) if isinstance(v, (int, float)) and not isinstance(v, bool) else ("-" if v is None else str(v))


def duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def print_table(headers: list[str], rows: list[list], out=None) -> None:
    out = out or sys.stdout
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


# -- what a run is, in words ----------------------------------------------------------------
def stop_info(row: dict, metrics: dict | None = None) -> tuple[str | None, int | None, int | None]:
    """(stopped_by, steps, step budget) from a run's record (run facts and its aggregate metrics)."""
    run = json.loads(row.get("config_json") or "{}").get("run") or {}
    stopped = row.get("stopped_by") or (run.get("stopped_by") if isinstance(run, dict) else None)
    metrics = metrics or {}
    steps = row.get("steps") if row.get("steps") is not None else metrics.get("steps")
    budget = row.get("max_steps") if row.get("max_steps") is not None else metrics.get("max_steps")
    return (stopped if isinstance(stopped, str) else None, None if steps is None else int(steps),
            None if budget is None else int(budget))


def state_words(row: dict, metrics: dict | None = None) -> str:
    """'succeeded', 'truncated: stopped by time at step 12/300', 'failed', ..."""
    status = row["status"]
    stopped, steps, budget = stop_info(row, metrics)
    if status == "succeeded" and shown_truncated(row.get("verdict"), stopped, steps, budget):
        at = f" at step {steps}/{budget}" if steps is not None and budget else ""
        return f"truncated: stopped by time{at}"
    return status


def plural(n: int, word: str) -> str:
    """'1 experiment', '2 experiments'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def verdict_words(verdict: str | None, kept: bool = False, reason: str | None = None) -> str:
    """The verdict as people read it; an inconclusive one says whether the noise was measured (its reason
    tells; without it, the bare word)."""
    if not verdict:
        return "-"
    words = VERDICT_WORDS.get(verdict, verdict.replace("_", " "))
    if verdict == "inconclusive":
        words = ("inconclusive (noise unknown: no spread measured)" if noise_unknown(reason)
                 else words if reason else "inconclusive")
    return words + (", kept as best" if kept and verdict in ("improved", "baseline") else "")


# -- live progress --------------------------------------------------------------------------
@dataclass
class RunView:
    """One poll of a run, as the progress bar needs it (server/cli.py fills it)."""
    id: int
    status: str
    started_at: float | None = None       # wall clock, from the store
    step: int | None = None               # across folds
    steps_total: int | None = None
    loss: float | None = None
    fold: int | None = None
    folds: int | None = None
    budget_s: float | None = None
    phase: str | None = None              # e.g. building the data cache


class ProgressBars:
    """Live bars, one per run: step/total, loss, elapsed and ETA. Elapsed is measured here from the
    run's start (never from a fold's own clock), so it never goes back; rich redraws the lines in
    place. Without a terminal: one plain line per run every `every_s` and at each change of state."""

    def __init__(self, out=None, every_s: float = 10.0):
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.every_s = every_s
        self.tasks: dict[int, int] = {}
        self.elapsed: dict[int, float] = {}
        self.last_line: dict[int, tuple[float, str]] = {}
        self.progress = None
        if self.tty:
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                                     TextColumn("{task.fields[steps]}"), TextColumn("{task.fields[loss]}"),
                                     TextColumn("{task.fields[times]}"),
                                     console=Console(file=self.out, force_terminal=True, highlight=False),
                                     refresh_per_second=4, transient=False)
            self.progress.start()

    def __call__(self, v: RunView) -> None:
        self.update(v)

    def _fields(self, v: RunView) -> tuple[str, dict, float | None]:
        now = time.time()
        el = 0.0 if v.started_at is None or v.status == "queued" else max(0.0, now - v.started_at)
        el = max(el, self.elapsed.get(v.id, 0.0))  # never goes back
        self.elapsed[v.id] = el
        desc = f"exp {v.id} {v.status}"
        if v.folds and v.folds > 1 and v.fold is not None:
            desc += f" fold {v.fold + 1}/{v.folds}"
        if v.phase:
            desc += f" ({v.phase})"
        steps = "step -" if v.step is None else f"step {v.step}/{v.steps_total}" if v.steps_total else f"step {v.step}"
        eta = None
        frac = None
        if v.steps_total and v.step:
            frac = min(1.0, v.step / v.steps_total)
            eta = el * (1 - frac) / frac if frac > 0 else None
        if v.budget_s and v.status == "running":
            left = max(0.0, v.budget_s - el)
            eta = left if eta is None else min(eta, left)
            if frac is None:
                frac = min(1.0, el / v.budget_s)
        times = f"{duration(el)} elapsed" + (f", eta {duration(eta)}" if eta is not None else "")
        fields = {"steps": steps, "loss": f"loss {num(v.loss)}", "times": times}
        return desc, fields, frac

    def update(self, v: RunView) -> None:
        desc, fields, frac = self._fields(v)
        if self.progress is not None:
            if v.id not in self.tasks:
                self.tasks[v.id] = self.progress.add_task(desc, total=1000, **fields)
            done = self.progress.tasks[self._index(v.id)].completed
            self.progress.update(self.tasks[v.id], description=desc, completed=max(done, (frac or 0) * 1000),
                                 **fields)
            return
        line = f"{desc}  {fields['steps']}  {fields['loss']}  {fields['times']}"
        last_t, last_state = self.last_line.get(v.id, (0.0, ""))
        state = desc
        if state != last_state or time.monotonic() - last_t >= self.every_s:
            print(line, file=self.out, flush=True)
            self.last_line[v.id] = (time.monotonic(), state)

    def _index(self, exp_id: int) -> int:
        tid = self.tasks[exp_id]
        return next(i for i, t in enumerate(self.progress.tasks) if t.id == tid)

    def finish(self, exp_id: int, status: str) -> None:
        """Mark a run's bar as ended (its last line stays on screen)."""
        if self.progress is not None and exp_id in self.tasks:
            t = self.progress.tasks[self._index(exp_id)]
            completed = 1000 if status == "succeeded" else t.completed
            took = f"{duration(self.elapsed.get(exp_id))} elapsed" if exp_id in self.elapsed else ""
            self.progress.update(self.tasks[exp_id], description=f"exp {exp_id} {status}", completed=completed,
                                 times=took)
        elif self.progress is None and exp_id in self.last_line:
            print(f"exp {exp_id} {status}", file=self.out, flush=True)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class Activity:
    """A spinner with a phase line, a bar when the phase counts (i/n), and the elapsed time, for
    work that is not a run (init's data generation and cache). Plain lines without a terminal."""

    def __init__(self, title: str, out=None):
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.t0 = time.monotonic()
        self.title = title
        self.progress = None
        if self.tty:
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=24),
                                     TextColumn("{task.fields[detail]}"), TextColumn("{task.elapsed:>4.0f}s"),
                                     console=Console(file=self.out, force_terminal=True, highlight=False),
                                     refresh_per_second=4, transient=True)
            self.progress.start()
            self.task = self.progress.add_task(title, total=None, detail="")
        else:
            print(f"{title} ...", file=self.out, flush=True)

    def line(self, text: str) -> None:
        """One line of the work's own output: 'data: decoded 120/400 images (3 s)' moves the bar."""
        text = text.strip()
        if not text:
            return
        if self.progress is None:
            print(f"  {text}", file=self.out, flush=True)
            return
        m = re.search(r"(\d+)/(\d+)", text)
        kw = {"completed": int(m.group(1)), "total": int(m.group(2))} if m and int(m.group(2)) > 0 else {}
        self.progress.update(self.task, detail=text[:70], **kw)

    def done(self, text: str | None = None) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if text:
            print(f"{text} ({time.monotonic() - self.t0:.0f}s)", file=self.out, flush=True)


# -- summaries and tables -------------------------------------------------------------------
def print_summary(s, metric: str = "objective", state: str | None = None, out=None) -> None:
    out = out or sys.stdout
    head = f"experiment {s.id}: {state or s.status}"
    if s.verdict:
        head += f", verdict {verdict_words(s.verdict, s.kept, s.verdict_reason)}"
    print(head, file=out)
    if s.objective is not None:
        std = f" ± {num(s.objective_std, 3)}" if s.objective_std else ""
        delta = f" ({signed(s.delta_vs_best)} vs best #{s.best_id})" if s.delta_vs_best is not None and s.best_id \
            else ""
        took = f", {secs(s.duration_s)} s" if s.duration_s is not None else ""
        print(f"  {metric.replace('_', ' ')} {num(s.objective)}{std}{delta}{took}, sandbox {s.sandbox}", file=out)
    if s.verdict_reason:
        print(f"  {cli_text(s.verdict_reason, s.id)}", file=out)
    for w in s.warnings or []:
        print(f"  warning: {w}", file=out)
    if s.error:
        print("  error: " + cli_text(s.error, s.id).replace("\n", "\n  "), file=out)
    if s.next:
        print(f"  next: {cli_text(s.next, s.id)}", file=out)


def print_results(table, metric: str, direction: str, states: dict[int, str] | None = None, out=None) -> None:
    out = out or sys.stdout
    states = states or {}
    best = f"; best #{table.best_id}" if table.best_id else "; no best yet"
    shown = f" (latest {len(table.rows)})" if len(table.rows) < table.total else ""
    print(f"{plural(table.total, 'experiment')}{shown}; {metric_label(metric, direction)}{best}", file=out)
    name = metric.replace("_", " ")
    print_table(["id", "status", "verdict", name, "±", "vs best", "best", "secs", "description"],
                [[r.id, states.get(r.id, r.status), verdict_words(r.verdict), num(r.objective), num(r.objective_std or None, 2),
                  signed(r.delta), "*" if r.kept else "", secs(r.duration_s), r.description[:60]]
                 for r in table.rows], out=out)


def print_detail(d, metric: str, state: str, out=None) -> None:
    """`show ID` for people: the outcome, config, metrics, loss curve, diff and log tail."""
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"experiment {d.id}: {d.description}")
    p(f"  status   {state}" + (f"; verdict {verdict_words(d.verdict, d.kept, d.verdict_reason)}" if d.verdict else ""))
    if d.verdict_reason:
        p(f"  why      {cli_text(d.verdict_reason, d.id)}")
    if d.hypothesis:
        p(f"  hypothesis {d.hypothesis}")
    if d.objective is not None:
        std = f" ± {num(d.objective_std, 3)}" if d.objective_std else ""
        delta = f" ({signed(d.delta)} vs the best it was judged against)" if d.delta is not None else ""
        p(f"  {metric.replace('_', ' ')}  {num(d.objective)}{std}{delta}")
    p(f"  snapshot {(d.snapshot_commit or '-')[:10]}" + (f", parent #{d.parent_id}" if d.parent_id else "")
      + f", {secs(d.duration_s)} s, sandbox {d.sandbox or '-'}"
      + (f", peak memory {num(d.peak_memory_gb, 3)} GB" if d.peak_memory_gb else ""))
    consts = d.config.get("constants") or (d.config.get("provenance") or {}).get("constants") or {}
    params = d.config.get("params") or {}
    if consts:
        p("  constants " + ", ".join(f"{k}={v}" + ("*" if k in params else "") for k, v in consts.items())
          + ("   (* set by --params)" if params else ""))
    if d.metrics:
        skip = {"objective", "objective_std"}
        items = [(k, v) for k, v in d.metrics.items() if k not in skip and not k.endswith("_std")]
        p("  metrics  " + ", ".join(f"{k} {num(v)}" + (f" ± {num(d.metrics[k + '_std'], 2)}"
                                                        if k + "_std" in d.metrics else "") for k, v in items[:24]))
    if d.fold_metrics:
        p(f"  folds    {len(d.fold_metrics)}: " + "; ".join(
            ", ".join(f"{k} {num(v)}" for k, v in list(f.items())[:3]) for f in d.fold_metrics[:6]))
    if d.loss_curve:
        p(f"  loss     {sparkline([c[1] for c in d.loss_curve])}  step {int(d.loss_curve[0][0])}: "
          f"{num(d.loss_curve[0][1])} -> step {int(d.loss_curve[-1][0])}: {num(d.loss_curve[-1][1])}")
    if d.error:
        p("  error    " + cli_text(d.error).replace("\n", "\n           "))
    p("\ncode diff against its parent:")
    p("  " + (d.diff.strip() or "(no change)").replace("\n", "\n  "))
    if d.log_tail:
        p("\nlog tail:")
        p("  " + d.log_tail.replace("\n", "\n  "))


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """A bar per value; a missing or non-finite value (a NaN loss) is a gap, never the lowest bar."""
    vals = [v if v is not None and math.isfinite(v) else None for v in values]
    finite = [v for v in vals if v is not None]
    if not finite:
        return ""
    if len(vals) > width:
        vals = [vals[round(i * (len(vals) - 1) / (width - 1))] for i in range(width)]
    lo, hi = min(finite), max(finite)
    span = hi - lo or 1.0
    return "".join(" " if v is None else SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))] for v in vals)


def print_reproduce(r, metric: str, out=None) -> None:
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    words = {"identical": "identical (bit for bit)", "within_noise": "within the noise",
             "outside_noise": "OUTSIDE the noise", "failed": "the reproduction failed", "running": "still running"}
    p(f"reproduction #{r.reproduction_id} of experiment #{r.original_id}: {words.get(r.verdict, r.verdict)}")
    name = metric.replace("_", " ")
    p(f"  {name}: original {num(r.objective_original)}, reproduced {num(r.objective_reproduced)}"
      + (f", difference {signed(r.difference)}" if r.difference is not None else "")
      + (f" (noise {num(r.noise, 3)})" if r.noise is not None else ""))
    if r.metric_differences:
        p(f"  metrics that differ ({len(r.metric_differences)}):")
        for k, (a, b) in list(r.metric_differences.items())[:12]:
            p(f"    {k}: {num(a)} -> {num(b)}")
    if r.provenance_differences:
        p(f"  what it ran with differs ({len(r.provenance_differences)}):")
        for k, (a, b) in list(r.provenance_differences.items())[:12]:
            p(f"    {k}: {a} -> {b}")
    if r.next:
        p(f"  next: {cli_text(r.next)}")


def print_compare(c, metric: str, out=None) -> None:
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    for side, b in (("A", c.a), ("B", c.b)):
        p(f"{side}: #{b.id} {b.status} {verdict_words(b.verdict, b.kept)}  {num(b.objective)}"
          + (f" ± {num(b.objective_std, 2)}" if b.objective_std else "") + f"  {b.description}")
    summary = c.summary.replace("objective", metric.replace("_", " "), 1)
    p(f"\n{summary}")
    noise = ("sandbox.isolation.", "provenance.commit")  # per-run paths and ids: always differ, say nothing
    changes = [ch for ch in c.config_changes if not ch.key.startswith(noise) and (ch.a, ch.b) not in (("{}", None),
                                                                                                   (None, "{}"))]
    if changes:
        p(f"\nconfig changes ({len(changes)}):")
        for ch in changes[:20]:
            p(f"  {ch.key}: {ch.a} -> {ch.b}")
    if c.metrics:
        p("")
        print_table(["metric", "A", "B", "B - A", "sigmas"],
                    [[m.name, num(m.a), num(m.b), signed(m.delta), "-" if m.sigmas is None else f"{m.sigmas:+.2f}"]
                     for m in c.metrics[:20]], out=out)
    p("\ncode diff A -> B:")
    p("  " + (c.code_diff.strip() or "(no change)").replace("\n", "\n  "))


def print_search(page, out=None) -> None:
    out = out or sys.stdout
    mode = "" if page.mode == "all terms" else " (no run has all the words: showing any)"
    print(f"{plural(page.total, 'experiment')} match{'es' if page.total == 1 else ''}{mode}", file=out)
    for h in page.hits:
        print(f"#{h.id} {h.status} {verdict_words(h.verdict, h.kept)} {num(h.objective)}  {h.description}", file=out)
        print(f"    in {', '.join(h.matched_in) or '-'}: {h.snippet}", file=out)


def print_trajectory(t, metric: str, direction: str, out=None) -> None:
    out = out or sys.stdout
    print(f"best so far, {metric_label(metric, direction)}: {t.points_total} improvements over "
          f"{plural(t.experiments, 'experiment')} ({t.succeeded} succeeded)", file=out)
    print_table(["id", metric.replace("_", " "), "±", "gain", "description"],
                [[pt.id, num(pt.objective), num(pt.objective_std, 2), signed(pt.gain), pt.description]
                 for pt in t.points], out=out)


def print_doctor(report: dict, out=None) -> None:
    out = out or sys.stdout
    p = lambda *a: print(*a, file=out)  # noqa: E731
    iso = "isolated" if report.get("isolated") else "NOT ISOLATED"
    p(f"sandbox: {report.get('backend')} ({iso})" + (f"  [{report['backend_source']}]"
                                                      if report.get("backend_source") else ""))
    if report.get("warning"):
        p(f"  warning: {report['warning']}")
    for g in report.get("gaps") or []:
        p(f"  gap: {g}")
    if report.get("better_backends_unavailable"):
        p("  better backends unavailable: " + "; ".join(map(str, report["better_backends_unavailable"])))
    p("backends:")
    for name, b in (report.get("backends") or {}).items():
        mark = "yes" if b.get("available") else "no "
        extra = f" ({b['version']})" if b.get("version") else ""
        p(f"  {mark} {name}{extra}: {b.get('why', '')}" + (f"; {b['note']}" if b.get("note") else ""))
    limits = report.get("limits") or {}
    if limits:
        p("limits:")
        for k, v in limits.items():
            if isinstance(v, dict):
                v = ", ".join(f"{a}: {b}" for a, b in v.items()) or "none"
            elif isinstance(v, list):
                v = ", ".join(map(str, v)) or "none"
            p(f"  {k.replace('_', ' ')}: {v}")
    p(f"gpu device nodes: {', '.join(report.get('gpu_nodes') or []) or 'none'}")
    if report.get("executors"):
        p("executors:")
        for name, why in report["executors"].items():
            p(f"  {'no ' if why else 'yes'} {name}" + (f": {' '.join(str(why).split())}" if why else ""))
    if report.get("agent_read_denies"):
        p("agent read denies (per client config in this workspace):")
        for name, what in report["agent_read_denies"].items():
            p(f"  {name}: {what}")
    for k, v in report.items():
        if k not in {"backend", "backend_source", "gaps", "isolated", "warning", "better_backends_unavailable",
                     "backends", "limits", "gpu_nodes", "executors", "agent_read_denies"} and v is not None:
            p(f"{k.replace('_', ' ')}: {v if not isinstance(v, (dict, list)) else json.dumps(v, default=str)}")
