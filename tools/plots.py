"""Progress plot (PNG) and the karpathy/autoresearch-compatible results.tsv.

matplotlib (Agg) is imported inside the functions: the MCP server starts without loading it.
"""

from __future__ import annotations

import io
import json
import math
import os

from tools.errors import ToolError
from tools.lab import Lab
from tools.verdict import shown_truncated, stop_note

MAX_PLOT_EXPERIMENTS = 1000


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ToolError("plotting needs matplotlib. Fix: pip install matplotlib.") from None
    return plt, MaxNLocator


def _run_facts(r: dict) -> dict:
    run = json.loads(r.get("config_json") or "{}").get("run") or {}
    return run if isinstance(run, dict) else {}


def objective_label(lab: Lab, rows: list[dict]) -> tuple[str, str]:
    """(the objective's name as the scorer gives it, e.g. 'mean rank', direction)."""
    for r in reversed(rows):
        name = _run_facts(r).get("objective_name")
        if r["status"] == "succeeded" and isinstance(name, str) and 0 < len(name) <= 60:
            d = _run_facts(r).get("direction")
            return name.replace("_", " "), d if d in ("minimize", "maximize") else lab.config.direction
    return lab.config.objective.replace("_", " "), lab.config.direction


def is_truncated(r: dict) -> bool:
    """Stopped by its time cap before its step budget (issue 12: not comparable with the others)."""
    return shown_truncated(r.get("verdict"), r.get("stopped_by") or _run_facts(r).get("stopped_by"), r.get("steps"),
                           r.get("max_steps"))


def _random_baseline(lab: Lab, rows: list[dict]) -> float | None:
    for r in reversed(rows):
        if r["status"] == "succeeded":
            for m in lab.store.metrics(r["id"], aggregate_only=True):
                if m["name"] == "random_mean_rank":
                    return m["value"]
            return None
    return None


def _y_range(values: list[float]) -> tuple[float, float]:
    """Data range, padded, at least 10% of the values' size wide: a 0.8% change must not look like a cliff."""
    lo, hi = min(values), max(values)
    size = max(abs(lo), abs(hi)) or 1.0
    span = max(hi - lo, 0.10 * size)
    mid = (lo + hi) / 2
    lo, hi = mid - span / 2, mid + span / 2
    pad = 0.08 * span
    return lo - pad, hi + pad


STRIP = {"failed": ("x", "#d62728"), "timeout": ("v", "#d62728"), "interrupted": ("v", "#9467bd"),
         "cancelled": ("s", "#999999"), "truncated": ("D", "#ff7f0e")}


def progress_png(lab: Lab, limit: int = 500) -> bytes:
    """The objective per experiment (its real name on the y axis), the best so far as a step line
    (kept runs; group means where measured), the band the next run must clear (best ± noise_sigma x
    the best's std), the random baseline; failed, cancelled and truncated runs in a strip below,
    apart from the data. Integer experiment ticks; a y range that does not magnify small changes."""
    if not 1 <= limit <= MAX_PLOT_EXPERIMENTS:
        raise ToolError(f"invalid limit={limit}. Fix: plot 1 to {MAX_PLOT_EXPERIMENTS} experiments.")
    plt, MaxNLocator = _pyplot()
    cfg = lab.config
    rows = lab.store.finished_experiments(limit)
    name, direction = objective_label(lab, rows)
    ok = [r for r in rows if r["status"] == "succeeded" and r["objective"] is not None and not is_truncated(r)]
    apart = [r for r in rows if r not in ok]
    fig = plt.figure(figsize=(9, 5), dpi=110)
    grid = fig.add_gridspec(2, 1, height_ratios=[12, 1], hspace=0.08)
    ax = fig.add_subplot(grid[0])
    strip = fig.add_subplot(grid[1], sharex=ax)
    try:
        main = [r for r in ok if not r["rerun_of"]]
        reruns = [r for r in ok if r["rerun_of"]]
        ax.scatter([r["id"] for r in main], [r["objective"] for r in main], s=22, c="#7a7a7a", label="experiment",
                   zorder=3)
        if reruns:
            ax.scatter([r["id"] for r in reruns], [r["objective"] for r in reruns], s=16, marker="D", c="#9db4e8",
                       label="seed rerun / reproduction", zorder=3)
        values = [r["objective"] for r in ok]
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
            ax.plot(xs, ys, color="#1f5fbf", lw=2, drawstyle="steps-post", label="best so far", zorder=4)
            ax.fill_between(xs, lo, hi, color="#1f5fbf", alpha=0.13, lw=0, step="post",
                            label=f"noise band (best ± {cfg.noise_sigma:g} σ)", zorder=1)
            ax.scatter([r["id"] for r in kept], [r["objective"] for r in kept], s=46, c="#1f5fbf",
                       edgecolors="white", linewidths=0.8, zorder=5, label="kept as best")
            values += ys + lo + hi
        random = _random_baseline(lab, rows)
        if values:
            y0, y1 = _y_range(values)
            if random is not None:
                if y0 - (y1 - y0) <= random <= y1 + (y1 - y0):  # near enough to draw without squashing the data
                    y0, y1 = min(y0, random - 0.05 * (y1 - y0)), max(y1, random + 0.05 * (y1 - y0))
                    ax.axhline(random, color="#b42318", ls="--", lw=1.2, label=f"random baseline ({random:.4g})",
                               zorder=2)
                else:
                    ax.plot([], [], color="#b42318", ls="--", lw=1.2,
                            label=f"random baseline {random:.4g} (off the scale)")
            ax.set_ylim(y0, y1)
        for kind, (marker, color) in STRIP.items():
            sel = [r for r in apart if (("truncated" if r["status"] == "succeeded" else r["status"]) == kind)]
            if sel:
                strip.scatter([r["id"] for r in sel], [0] * len(sel), marker=marker, c=color, s=28,
                              label=f"{kind} ({len(sel)})", clip_on=False)
        if not apart:
            strip.text(0.5, 0.5, "none failed, cancelled or truncated", transform=strip.transAxes, ha="center",
                       va="center", fontsize=8, color="#777777")
        strip.set_yticks([])
        strip.set_ylim(-1, 1)
        strip.set_ylabel("not\nscored", rotation=0, ha="right", va="center", fontsize=8, color="#555555")
        for side in ("top", "right", "left"):
            strip.spines[side].set_visible(False)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        plt.setp(ax.get_xticklabels(), visible=False)
        strip.set_xlabel("experiment")
        if rows:
            ax.set_xlim(min(r["id"] for r in rows) - 0.7, max(r["id"] for r in rows) + 0.7)
        better = "lower" if direction == "minimize" else "higher"
        ax.set_ylabel(f"{name} ({better} is better)")
        ax.set_title(f"{cfg.name}: {len(ok)} scored of {len(rows)} finished experiments", loc="left", fontsize=11)
        ax.grid(alpha=0.25)
        handles, labels = ax.get_legend_handles_labels()
        h2, l2 = strip.get_legend_handles_labels()
        if rows:
            fig.legend(handles + h2, labels + l2, loc="center left", bbox_to_anchor=(0.80, 0.5), fontsize=8,
                       frameon=False)
            fig.subplots_adjust(left=0.09, right=0.79, top=0.92, bottom=0.10)
        else:
            ax.text(0.5, 0.5, "no finished experiments yet", ha="center", va="center", transform=ax.transAxes)
            fig.subplots_adjust(left=0.09, right=0.97, top=0.92, bottom=0.10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def loss_curves_png(lab: Lab) -> bytes:
    """The training loss per step of the best run and of the latest finished runs that recorded one."""
    plt, MaxNLocator = _pyplot()
    rows = lab.store.finished_experiments(200)
    best = lab.store.best_experiment()
    curves = {}
    for r in ([best] if best else []) + list(reversed(rows)):
        if r["id"] not in curves and len(curves) < 4:
            # a NaN/inf loss (stored as None) is drawn as a gap (nan breaks the line), never as 0
            pts = [(s["step"], math.nan if s["loss"] is None else s["loss"]) for s in lab.store.steps(r["id"])]
            if any(not math.isnan(v) for _, v in pts):
                curves[r["id"]] = (r, pts)
    fig, ax = plt.subplots(figsize=(9, 4.6), dpi=110)
    try:
        colors = ["#1f5fbf", "#ff7f0e", "#7a7a7a", "#b0b0b0"]
        drawn = 0
        for (r, pts), color in zip(curves.values(), colors):
            role = "best" if best and r["id"] == best["id"] else "latest" if drawn == (1 if best else 0) else "earlier"
            state = "truncated" if r["status"] == "succeeded" and is_truncated(r) else r["status"]
            obj = f", {r['objective']:.4g}" if r["objective"] is not None else ""
            ax.plot([s for s, _ in pts], [v for _, v in pts], color=color, lw=2 if role == "best" else 1.3,
                    label=f"#{r['id']} {role} ({state}{obj}): {(r['description'] or '')[:60]}")
            drawn += 1
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("step" + (" (folds one after the other)" if lab.config.run_folds > 1 else ""))
        ax.set_ylabel("training loss")
        ax.set_title(f"{lab.config.name}: loss curves of the best and the latest runs", loc="left", fontsize=11)
        ax.grid(alpha=0.25)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if drawn:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False, ncol=1)
            fig.subplots_adjust(left=0.08, right=0.97, top=0.92, bottom=0.17 + 0.035 * drawn)
        else:
            ax.text(0.5, 0.5, "no loss curve recorded yet", ha="center", va="center", transform=ax.transAxes)
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
        truncated = not crash and r["verdict"] == "incomparable"
        status = "crash" if crash else "discard" if truncated or not r["kept"] else "keep"
        # no number for a run without a trusted, comparable result (0.0 would read as a perfect score)
        objective = "" if crash or truncated else f"{r['objective']:.6f}"
        memory = 0.0 if crash or r["peak_memory_gb"] is None else r["peak_memory_gb"]
        desc = " ".join((r["description"] or "").split())
        if r["status"] != "succeeded":
            desc = f"{desc} [{r['status']}]"
        elif truncated:
            desc = f"{desc} [{stop_note(r['steps'], r['max_steps'], r['stopped_by']) or 'incomparable'}]"
        lines.append("\t".join([(r["snapshot_commit"] or "-")[:7], objective, f"{memory:.1f}", status, desc]))
    return "\n".join(lines) + "\n"


def write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
