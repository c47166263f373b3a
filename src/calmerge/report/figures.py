"""The report's figures: metrics vs λ, accuracy-vs-ECE with the frontier, reliability diagrams.

Why `matplotlib.figure.Figure` + the Agg canvas and never `pyplot`: pyplot keeps global figure
state and picks a GUI backend; the report runs in servers, tests and notebooks alike, so each
figure is a standalone object that is drawn, saved and dropped.

Labels, percent scaling, direction and which diversity metrics are drawn come from the metric
registry (`calmerge.eval.metrics`): a figure can only draw a metric under the name it was
measured and stored under.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from calmerge.analysis.pareto import Point, metric_of, pareto_front, point_label
from calmerge.analysis.verdict import Verdict, task_names
from calmerge.eval.metrics import (
    GENERATION_SPLIT,
    METRICS,
    Metric,
    axis_label_of,
    diversity_candidates,
    label_of,
    scale_of,
)
from calmerge.io.atomic import atomic_write_bytes
from calmerge.splits import split_key

#: the metrics drawn against λ, one PNG each (diversity gets one PNG with a panel per metric)
LAMBDA_METRICS: tuple[str, ...] = tuple(METRICS.check(m) for m in ("acc", "ece", "brier", "nll"))
#: how many diversity metrics the diversity figure shows, in `diversity_rank` order
DIVERSITY_PANELS = 3
#: family colours; red, green and dark grey are kept for the aligned, pick and base markers
COLORS = ("#1f77b4", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")
PARENT_STYLE = {"base": ("#444444", "s"), "aligned": ("#d62728", "D"), "pick": ("#2ca02c", "*")}


def split_with(points: Sequence[Point], metric: str, preferred: str) -> str | None:
    """The split to draw `metric` from: the preferred one, else the generation split."""
    for split in (preferred, GENERATION_SPLIT):
        if any(split in p.metrics and metric in p.metrics[split] for p in points):
            return split
    return None


def families(points: Sequence[Point]) -> list[str]:
    """Families in a stable order, linear first (it is the method the report is about)."""
    return sorted({p.family for p in points}, key=lambda f: (f != "linear", f))


def _series(points: Sequence[Point], family: str, metric: str, split: str) -> np.ndarray:
    """(λ, value, lo, hi) rows of one family sorted by λ, unmeasured points dropped."""
    rows = []
    for p in points:
        m = p.metrics.get(split, {}).get(metric) if p.family == family else None
        if m is not None and not math.isnan(m.value):
            rows.append((p.lam, m.value, m.lo, m.hi))
    rows.sort()
    return np.array(rows, dtype=float).reshape(-1, 4)


def _draw_vs_lambda(
    ax, points: Sequence[Point], metric: str, split: str, verdict: Verdict | None
) -> None:
    k = scale_of(metric)
    for i, fam in enumerate(families(points)):
        s = _series(points, fam, metric, split)
        if not len(s):
            continue
        color = COLORS[i % len(COLORS)]
        ax.plot(s[:, 0], k * s[:, 1], "-o", ms=3.5, lw=1.6, color=color, label=fam)
        band = np.isfinite(s[:, 2]) & np.isfinite(s[:, 3])
        if band.any():
            ax.fill_between(
                s[band, 0], k * s[band, 2], k * s[band, 3], color=color, alpha=0.18, lw=0
            )
    if verdict is not None:
        for key, p in (
            ("base", verdict.base),
            ("aligned", verdict.aligned),
            ("pick", verdict.pick),
        ):
            m = metric_of(p, metric, split)
            if m is None or math.isnan(m.value):
                continue
            color, marker = PARENT_STYLE[key]
            size = 15 if key == "pick" else 7
            ax.plot([p.lam], [k * m.value], marker, color=color, ms=size, zorder=5, mec="white")
        ax.axvline(verdict.pick.lam, color=PARENT_STYLE["pick"][0], lw=1, ls=":", zorder=1)
    ax.axvspan(1.0, max(1.0, *(p.lam for p in points)), color="#000000", alpha=0.04, lw=0)
    ax.set_xlabel("λ  (0 = base, 1 = aligned)")
    ax.set_ylabel(axis_label_of(metric))
    ax.grid(alpha=0.3)


def _better(metric: str) -> str:
    """'; higher is better' from the metric's direction ('' for a name the registry lacks)."""
    if metric not in METRICS:
        return ""
    return f"; {'higher' if METRICS.get(metric).higher_is_better else 'lower'} is better"


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def metric_vs_lambda(
    points: Sequence[Point], metric: str, split: str, verdict: Verdict | None = None
) -> Figure:
    """One metric against λ, a line and a 95% band per family; parents and pick marked."""
    fig = _new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    _draw_vs_lambda(ax, points, metric, split, verdict)
    ax.set_title(f"{label_of(metric)} vs λ ({split}){_better(metric)}", fontsize=10)
    if len(families(points)) > 1:
        ax.legend(fontsize=8, frameon=False)
    return fig


def diversity_vs_lambda(
    points: Sequence[Point], metrics: Sequence[str], split: str, verdict: Verdict | None = None
) -> Figure:
    """Every measured diversity metric against λ, one panel each (they have different scales)."""
    n = len(metrics)
    fig = _new_figure(min(4.2 * n, 12.6), 3.4)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        s = split_with(points, metric, split) or split
        _draw_vs_lambda(ax, points, metric, s, verdict)
        ax.set_title(f"{label_of(metric)}{_better(metric)}", fontsize=10)
    return fig


def diversity_panels(points: Sequence[Point], split: str) -> list[str]:
    """The diversity metrics the diversity figure shows: the measured ones, most preferred as
    an objective first (`diversity_rank`), at most DIVERSITY_PANELS."""
    measured = [
        s.name for s in diversity_candidates() if split_with(points, s.name, split) is not None
    ]
    return measured[:DIVERSITY_PANELS]


def acc_vs_ece(
    points: Sequence[Point],
    split: str,
    verdict: Verdict | None = None,
    temperature_scaled: dict[str, Metric] | None = None,
) -> Figure:
    """Accuracy against ECE for every point, the acc/ECE frontier as a staircase, parents marked.

    The frontier drawn is the two-objective one on the plotted split, so what the eye sees as
    'up and to the left' is exactly what is drawn as non-dominated.
    """
    fig = _new_figure(6.4, 4.6)
    ax = fig.add_subplot()
    usable = [
        p
        for p in points
        if metric_of(p, "acc", split) is not None and metric_of(p, "ece", split) is not None
    ]
    for i, fam in enumerate(families(usable)):
        fp = [p for p in usable if p.family == fam]
        x = [metric_of(p, "ece", split).value for p in fp]
        y = [100 * metric_of(p, "acc", split).value for p in fp]
        ax.scatter(x, y, s=22, color=COLORS[i % len(COLORS)], label=fam, zorder=3, alpha=0.85)
        for p, xi, yi in zip(fp, x, y, strict=True):
            ax.annotate(
                f"{p.lam:g}",
                (xi, yi),
                fontsize=6.5,
                xytext=(3, 3),
                color="#555555",
                textcoords="offset points",
            )
    front = sorted(
        pareto_front(usable, ("acc", "ece"), split), key=lambda p: metric_of(p, "ece", split).value
    )
    if front:
        fx = [metric_of(p, "ece", split).value for p in front]
        fy = [100 * metric_of(p, "acc", split).value for p in front]
        ax.step(fx, fy, where="post", color="#111111", lw=1.2, ls="--", label="frontier", zorder=2)
    if verdict is not None:
        for key, p in (
            ("base", verdict.base),
            ("aligned", verdict.aligned),
            ("pick", verdict.pick),
        ):
            a, e = metric_of(p, "acc", split), metric_of(p, "ece", split)
            if a is None or e is None:
                continue
            color, marker = PARENT_STYLE[key]
            text = key if key != "pick" else f"pick ({point_label(p)})"
            ax.plot(
                [e.value],
                [100 * a.value],
                marker,
                color=color,
                mec="white",
                zorder=6,
                ms=16 if key == "pick" else 9,
                label=text,
            )
    if temperature_scaled and "ece" in temperature_scaled and "acc" in temperature_scaled:
        ax.plot(
            [temperature_scaled["ece"].value],
            [100 * temperature_scaled["acc"].value],
            "P",
            color="#ff7f0e",
            ms=10,
            mec="white",
            zorder=6,
            label="aligned + temp. scaling",
        )
    ax.set_xlabel(axis_label_of("ece"))
    ax.set_ylabel(axis_label_of("acc"))
    ax.set_title(f"accuracy vs calibration ({split}); better is up and left", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, frameon=False, loc="best")
    return fig


def _draw_reliability(ax, bins: Sequence[dict], title: str) -> None:
    """One reliability diagram on `ax`: accuracy per confidence bin, its gap to the diagonal,
    and the share of items per bin."""
    bins = [b for b in bins if b.get("count", 0) > 0]
    ax.plot([0, 1], [0, 1], color="#888888", lw=1, ls="--")
    if bins:
        lo = np.array([b["lo"] for b in bins], dtype=float)
        hi = np.array([b["hi"] for b in bins], dtype=float)
        acc = np.array([b["accuracy"] for b in bins], dtype=float)
        conf = np.array([b["confidence"] for b in bins], dtype=float)
        count = np.array([b["count"] for b in bins], dtype=float)
        ax.bar(lo, acc, width=hi - lo, align="edge", color="#1f77b4", alpha=0.75,
               edgecolor="white", label="accuracy")
        ax.bar(lo, conf - acc, bottom=acc, width=hi - lo, align="edge", color="#d62728",
               alpha=0.25, edgecolor="none", label="gap")
        ax.bar(lo, 0.12 * count / count.max(), width=hi - lo, align="edge", color="#333333",
               alpha=0.35, label="share of items")
    else:
        ax.text(0.5, 0.5, "no per-item results", ha="center", va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_aspect("equal")


def reliability(named: Sequence[tuple[str, Point]], split: str) -> Figure:
    """Reliability diagrams side by side: accuracy per confidence bin against the diagonal."""
    fig = _new_figure(3.3 * len(named), 3.5)
    axes = fig.subplots(1, len(named), squeeze=False, sharey=True)[0]
    for ax, (name, p) in zip(axes, named, strict=True):
        e = metric_of(p, "ece", split)
        ece = f", ECE {e.value:.3f}" if e is not None and not math.isnan(e.value) else ""
        _draw_reliability(ax, p.reliability.get(split, []), f"{name} ({point_label(p)}){ece}")
    axes[0].set_ylabel("accuracy")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, frameon=False, loc="upper left")
    return fig


def reliability_one(bins: Sequence[dict], title: str) -> Figure:
    """The reliability diagram of one evaluated model (`calmerge eval`)."""
    fig = _new_figure(3.8, 3.9)
    ax = fig.subplots()
    _draw_reliability(ax, bins, title)
    ax.set_ylabel("accuracy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Render a figure to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


#: figure key -> caption (also the order the report shows them in)
def acc_by_task(points: Sequence[Point], tasks: Sequence[str], verdict: Verdict) -> Figure:
    """Accuracy against λ for every task of a multi-task run (the first family, linear when
    swept), the aggregate drawn thick and dark; the aggregate's pick marked."""
    family = families(points)[0]
    fig = _new_figure(6.4, 3.8)
    ax = fig.add_subplot()
    k = scale_of("acc")
    for i, task in enumerate(tasks):
        s = _series(points, family, "acc", split_key(verdict.report_split, task))
        if len(s):
            ax.plot(s[:, 0], k * s[:, 1], "-o", ms=3, lw=1.3, color=COLORS[i % len(COLORS)],
                    label=task)
    s = _series(points, family, "acc", verdict.report_split)
    if len(s):
        ax.plot(s[:, 0], k * s[:, 1], "-", lw=2.6, color="#222222", label="aggregate")
    ax.axvline(verdict.pick.lam, color=PARENT_STYLE["pick"][0], lw=1, ls=":", zorder=1)
    ax.axvspan(1.0, max(1.0, *(p.lam for p in points)), color="#000000", alpha=0.04, lw=0)
    ax.set_xlabel("λ  (0 = base, 1 = aligned)")
    ax.set_ylabel(axis_label_of("acc"))
    ax.set_title(f"Accuracy vs λ per task ({verdict.report_split}, {family})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncol=2 if len(tasks) > 6 else 1)
    return fig


CAPTIONS: dict[str, str] = {
    "acc_by_task": "Accuracy against λ for every task; thick: the aggregate over tasks.",
    "acc_vs_ece": "Accuracy against ECE for every point; dashed: their accuracy/ECE Pareto frontier.",
    **{m: f"{label_of(m)[:1].upper()}{label_of(m)[1:]} against λ, with 95% bootstrap bands."
       for m in LAMBDA_METRICS},
    "diversity": "Diversity against λ, one panel per metric (the preferred objective first).",
    "reliability": "Reliability diagrams of the base, the aligned model and the pick.",
}


def make_figures(
    points: Sequence[Point],
    verdict: Verdict,
    fig_dir: Path,
    temperature_scaled: dict[str, Metric] | None = None,
) -> dict[str, Path]:
    """Draw and save every figure the data supports; returns key -> PNG path (CAPTIONS order)."""
    split = verdict.report_split
    figs: dict[str, Figure] = {}
    if split_with(points, "acc", split) == split and split_with(points, "ece", split) == split:
        figs["acc_vs_ece"] = acc_vs_ece(points, split, verdict, temperature_scaled)
    for metric in LAMBDA_METRICS:
        s = split_with(points, metric, split)
        if s is not None:
            figs[metric] = metric_vs_lambda(points, metric, s, verdict)
    div = diversity_panels(points, split)
    if div:
        figs["diversity"] = diversity_vs_lambda(points, div, split, verdict)
    tasks = task_names(points)
    if tasks:
        figs["acc_by_task"] = acc_by_task(points, tasks, verdict)
    figs["reliability"] = reliability(
        [("base", verdict.base), ("aligned", verdict.aligned), ("pick", verdict.pick)], split
    )
    return {key: save_png(fig, fig_dir / f"{key}.png") for key, fig in figs.items()}
