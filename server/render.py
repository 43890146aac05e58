"""How the CLI shows things: tables, the live progress bar, run summaries and the results table."""

from __future__ import annotations

import sys
import time


def fmt(v, nd=4):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}"
    return str(v)


def print_table(headers: list[str], rows: list[list], out=sys.stdout) -> None:
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line, file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)), file=out)


class ProgressBar:
    """One live line: step, loss, elapsed and ETA against the time budget."""

    def __init__(self, budget_s: float, out=sys.stderr):
        self.budget, self.out, self.tty = budget_s, out, out.isatty()
        self.last_print = 0.0

    def __call__(self, s) -> None:
        elapsed = s.duration_s or 0.0
        frac = min(1.0, elapsed / self.budget) if self.budget else 0.0
        bar = "#" * int(frac * 24)
        eta = max(0.0, self.budget - elapsed)
        text = (f"[{bar:<24}] exp {s.id} {s.status:<9} step {fmt(s.step)}  loss {fmt(s.loss)}  "
                f"{elapsed:5.0f}s / {self.budget:.0f}s  eta {eta:4.0f}s")
        if self.tty:
            print("\r" + text, end="", file=self.out, flush=True)
        elif time.monotonic() - self.last_print >= 10:
            print(text, file=self.out, flush=True)
            self.last_print = time.monotonic()

    def done(self) -> None:
        if self.tty:
            print(file=self.out)


def print_summary(s) -> None:
    print(f"experiment {s.id}: {s.status}" + (f", verdict {s.verdict}" if s.verdict else ""))
    if s.objective is not None:
        std = f" +- {s.objective_std:.4g}" if s.objective_std else ""
        delta = f" (delta vs best {s.delta_vs_best:+.4g})" if s.delta_vs_best is not None else ""
        print(f"  objective {s.objective:.4g}{std}{delta}, {s.duration_s}s, sandbox {s.sandbox}")
    if s.verdict_reason:
        print(f"  {s.verdict_reason}")
    if s.error:
        print("  error: " + s.error.replace("\n", "\n  "))
    if s.next:
        print(f"  next: {s.next}")


def print_results(table) -> None:
    print(f"{table.total} experiments; objective {table.objective} ({table.direction}); best {fmt(table.best_id)}")
    print_table(["id", "status", "verdict", "objective", "std", "delta", "kept", "secs", "description"],
                [[r.id, r.status, r.verdict, r.objective, r.objective_std, r.delta, "*" if r.kept else "",
                  r.duration_s, r.description[:60]] for r in table.rows])


# -- commands ------------------------------------------------------------------------------
