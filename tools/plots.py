"""Progress plot (PNG) and the karpathy/autoresearch-compatible results.tsv.

matplotlib (Agg) is imported inside the function: the server starts without it.
"""

from __future__ import annotations

import io
import os

from tools.errors import ToolError
from tools.lab import Lab

MAX_PLOT_EXPERIMENTS = 1000


def progress_png(lab: Lab, limit: int = 500) -> bytes:
    """Objective per experiment; the kept runs as a step line (the best so far, group means where
    measured); the band the next run must clear: best +- noise_sigma * the best's std."""
    if not 1 <= limit <= MAX_PLOT_EXPERIMENTS:
        raise ToolError(f"invalid limit={limit}. Fix: plot 1 to {MAX_PLOT_EXPERIMENTS} experiments.")
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ToolError("plotting needs matplotlib. Fix: pip install 'eclip-autoresearch[plot]'.") from None
    cfg = lab.config
    rows = lab.store.finished_experiments(limit)
    ok = [r for r in rows if r["status"] == "succeeded" and r["objective"] is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        main = [r for r in ok if not r["rerun_of"]]
        reruns = [r for r in ok if r["rerun_of"]]
        ax.scatter([r["id"] for r in main], [r["objective"] for r in main], s=18, c="#888888", label="experiment",
                   zorder=2)
        if reruns:
            ax.scatter([r["id"] for r in reruns], [r["objective"] for r in reruns], s=12, marker="D", c="#b0b0ff",
                       label="seed rerun / reproduction", zorder=2)
        kept = [r for r in ok if r["kept"]]
        if kept:
            last_id = rows[-1]["id"]
            xs, ys, lo, hi = [], [], [], []
            for i, r in enumerate(kept):
                value = r["group_objective"] if r["group_objective"] is not None else r["objective"]
                std = r["group_std"] if r["group_std"] is not None else (r["objective_std"] or 0.0)
                end = kept[i + 1]["id"] if i + 1 < len(kept) else last_id
                xs += [r["id"], end]
                ys += [value, value]
                lo += [value - cfg.noise_sigma * std] * 2
                hi += [value + cfg.noise_sigma * std] * 2
            ax.plot(xs, ys, color="#1f77b4", lw=2, label="best (kept runs)", zorder=3)
            ax.fill_between(xs, lo, hi, color="#1f77b4", alpha=0.15, lw=0,
                            label=f"noise band: best +- {cfg.noise_sigma:g} sigma", zorder=1)
            ax.scatter([r["id"] for r in kept], [r["objective"] for r in kept], s=36, c="#1f77b4", zorder=4)
        failed = [r for r in rows if r["status"] != "succeeded"]
        if failed:
            y = min((r["objective"] for r in ok), default=0.0) if cfg.direction == "maximize" else \
                max((r["objective"] for r in ok), default=1.0)
            ax.scatter([r["id"] for r in failed], [y] * len(failed), marker="x", c="#d62728", s=30,
                       label="failed / timeout / cancelled", zorder=2)
        ax.set_xlabel("experiment id")
        ax.set_ylabel(f"{cfg.objective} ({'lower' if cfg.direction == 'minimize' else 'higher'} is better)")
        ax.set_title(f"{cfg.name}: {len(ok)} succeeded of {len(rows)} finished experiments")
        ax.grid(alpha=0.3)
        if rows:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no finished experiments yet", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def results_tsv(lab: Lab) -> str:
    """commit, objective, memory_gb, status (keep|discard|crash), description - tab-separated, with a
    header, one row per finished experiment in id order (karpathy/autoresearch's results.tsv)."""
    header = ["commit", lab.config.objective, "memory_gb", "status", "description"]
    lines = ["\t".join(header)]
    for r in lab.store.finished_experiments():
        crash = r["status"] != "succeeded" or r["objective"] is None
        status = "crash" if crash else "keep" if r["kept"] else "discard"
        objective = 0.0 if crash else r["objective"]
        memory = 0.0 if crash or r["peak_memory_gb"] is None else r["peak_memory_gb"]
        desc = " ".join((r["description"] or "").split())
        if r["status"] != "succeeded":
            desc = f"{desc} [{r['status']}]"
        lines.append("\t".join([(r["snapshot_commit"] or "-")[:7], f"{objective:.6f}", f"{memory:.1f}", status, desc]))
    return "\n".join(lines) + "\n"


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
