"""The report of a sweep over N ≥ 3 checkpoints: heat maps over the simplex, tables, verdict.

Figures (report split colours; frontier and pick chosen on the select split, as the verdict):
- N = 3, linear: a ternary heat map per metric (accuracy, ECE, a diversity metric), the
  models at the corners;
- N = 3, task vectors: the same over the (λ_1, λ_2) square, the base at the origin;
- N > 3: projections — each metric against each model's weight — since a simplex of more than
  two dimensions has no faithful flat picture;
- always: accuracy against ECE for every point, the frontier and the parents marked.

The page is the λ report's template and renderers (`report.html`, `report.markdown`) fed with
this content, so both formats say the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.tri import Triangulation

from calmerge.analysis.pareto import Point, metric_of, pareto_front, point_label, same_point
from calmerge.analysis.simplex import SimplexVerdict, geometry_of
from calmerge.coords import weight_label
from calmerge.eval.metrics import GENERATION_SPLIT, label_of, scale_of
from calmerge.report.content import ReportContent, Row, Table, format_metric, metric_columns
from calmerge.report.figures import PARENT_STYLE, _new_figure, diversity_panels, save_png
from calmerge.report.sentences import simplex_sentences

#: the corners of the ternary plot: first model bottom left, second bottom right, third on top
CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])


def heat_metrics(points: Sequence[Point], split: str) -> list[str]:
    """Accuracy, ECE (when measured) and the first diversity metric: the three trade-offs."""
    out = [m for m in ("acc", "ece") if any(metric_of(p, m, split) for p in points)]
    return out + diversity_panels(points, split)[:1]


def _value(p: Point, metric: str, split: str) -> float:
    m = metric_of(p, metric, split)
    return float("nan") if m is None else scale_of(metric) * m.value


def _xy(points: Sequence[Point], task_vectors: bool) -> np.ndarray:
    """Plot coordinates: barycentric → the ternary triangle, or the two coefficients."""
    w = np.array([[v for _, v in p.mix] for p in points], dtype=float)
    return w if task_vectors else w @ CORNERS


def heat_map(
    points: Sequence[Point],
    names: Sequence[str],
    metric: str,
    split: str,
    verdict: SimplexVerdict,
    front: Sequence[Point],
    *,
    upper: float = 1.0,
):
    """One metric over a 3-model family's space: colour interpolated between the evaluated
    points (Delaunay triangles, Gouraud shading), every point dotted, frontier ringed, pick
    starred. Points outside the space (edge extrapolation) are left out of the colour."""
    family = points[0].family
    geo = geometry_of(family, names, upper)
    inside = [p for p in points if geo.inside(geo.units(p.mix))]
    fig = _new_figure(4.6, 4.2)
    ax = fig.add_subplot()
    xy = _xy(inside, geo.task_vectors)
    z = np.array([_value(p, metric, split) for p in inside])
    ok = np.isfinite(z)
    if ok.sum() >= 3:
        tri = Triangulation(xy[ok, 0], xy[ok, 1])
        shade = ax.tripcolor(tri, z[ok], shading="gouraud", cmap="viridis")
        fig.colorbar(shade, ax=ax, shrink=0.8, label=label_of(metric))
    ax.plot(xy[:, 0], xy[:, 1], ".", color="white", ms=3, alpha=0.8)
    inside_ids = {id(p) for p in inside}
    ringed = [p for p in front if id(p) in inside_ids]
    fxy = _xy(ringed, geo.task_vectors) if ringed else np.zeros((0, 2))
    if len(fxy):
        ax.plot(fxy[:, 0], fxy[:, 1], "o", mfc="none", mec="black", ms=8, mew=1.2,
                label="frontier (chosen on " + verdict.select_split + ")")
    if any(same_point(verdict.pick, p) for p in inside):
        pxy = _xy([verdict.pick], geo.task_vectors)[0]
        color, marker = PARENT_STYLE["pick"]
        ax.plot(*pxy, marker, color=color, ms=15, mec="white", zorder=5, label="pick")
    if geo.task_vectors:
        ax.set_xlabel(f"λ {names[1]} (task vector)")
        ax.set_ylabel(f"λ {names[2]} (task vector)")
        ax.annotate(names[0], (0, 0), textcoords="offset points", xytext=(4, 4), fontsize=9)
    else:
        for (x, y), name, off in zip(CORNERS, names, ((-4, -14), (-4, -14), (-6, 6)),
                                     strict=True):
            ax.annotate(name, (x, y), textcoords="offset points", xytext=off, fontsize=9,
                        fontweight="bold")
        ax.plot(*np.vstack([CORNERS, CORNERS[:1]]).T, color="#444444", lw=0.8)
        ax.set_aspect("equal")
        ax.axis("off")
    ax.set_title(f"{label_of(metric)} ({split}), {family}", fontsize=10)
    if len(fxy):
        ax.legend(fontsize=7, frameon=False, loc="upper right")
    return fig


def projections(
    points: Sequence[Point], names: Sequence[str], metrics: Sequence[str], split: str,
    verdict: SimplexVerdict, front: Sequence[Point],
):
    """Each metric (rows) against each model's weight (columns): the frontier points ringed,
    the pick starred — how a metric moves as one model's share grows, whatever the others."""
    axes_names = [n for n, _ in points[0].mix]
    fig = _new_figure(min(2.6 * len(axes_names), 13.0), 2.3 * len(metrics) + 0.4)
    grid = fig.subplots(len(metrics), len(axes_names), squeeze=False, sharey="row")
    front_ids = {id(p) for p in front}
    for r, metric in enumerate(metrics):
        for c, name in enumerate(axes_names):
            ax = grid[r][c]
            x = np.array([dict(p.mix)[name] for p in points])
            y = np.array([_value(p, metric, split) for p in points])
            ax.plot(x, y, ".", color="#1f77b4", alpha=0.5, ms=4)
            f = [i for i, p in enumerate(points) if id(p) in front_ids]
            ax.plot(x[f], y[f], "o", mfc="none", mec="black", ms=6)
            k = next((i for i, p in enumerate(points) if same_point(p, verdict.pick)), None)
            if k is not None:
                ax.plot(x[k], y[k], PARENT_STYLE["pick"][1], color=PARENT_STYLE["pick"][0], ms=12,
                        mec="white")
            if r == len(metrics) - 1:
                ax.set_xlabel(f"weight of {name}")
            if c == 0:
                ax.set_ylabel(label_of(metric))
            ax.grid(alpha=0.3)
    return fig


def acc_ece_scatter(points: Sequence[Point], split: str, verdict: SimplexVerdict):
    """Accuracy against ECE for every point; parents named, frontier ringed, pick starred."""
    fig = _new_figure(5.6, 4.0)
    ax = fig.add_subplot()
    x = np.array([_value(p, "ece", split) for p in points])
    y = np.array([_value(p, "acc", split) for p in points])
    ax.plot(x, y, ".", color="#1f77b4", alpha=0.6, label="points")
    for s in verdict.parents:
        ax.plot(_value(s.point, "ece", split), _value(s.point, "acc", split), "s",
                color="#444444", ms=6)
        ax.annotate(s.name, (_value(s.point, "ece", split), _value(s.point, "acc", split)),
                    textcoords="offset points", xytext=(5, 3), fontsize=8)
    color, marker = PARENT_STYLE["pick"]
    ax.plot(_value(verdict.pick, "ece", split), _value(verdict.pick, "acc", split), marker,
            color=color, ms=14, mec="white", label="pick")
    ax.set_xlabel(label_of("ece"))
    ax.set_ylabel(label_of("acc"))
    ax.set_title(f"accuracy vs ECE, every point ({split})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


#: caption of each simplex figure kind (keys are `<kind>_<family>[_<metric>]`)
CAPTIONS = {
    "heat": "{metric} over the {family} space on {split}: colour between the evaluated points"
            " (white dots); frontier ringed and pick starred as chosen on {select}",
    "proj": "{family}: each metric on {split} against each model's weight",
    "scatter": "Accuracy against ECE for every point on {split}; the parents named",
}


def make_simplex_figures(
    points: Sequence[Point], names: Sequence[str], verdict: SimplexVerdict, out: Path,
    *, upper: float = 1.0,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Every figure as PNG under `out`, with its caption: {key: path}, {key: caption}."""
    rs, sel = verdict.report_split, verdict.select_split
    figs: dict[str, Path] = {}
    caps: dict[str, str] = {}
    metrics = heat_metrics(points, rs)
    for family in sorted({p.family for p in points}, key=lambda f: (f != "linear", f)):
        mine = [p for p in points if p.family == family and p.mix is not None]
        front = pareto_front(mine, verdict.objectives, sel) if sel in mine[0].metrics else []
        if len(names) == 3:
            for metric in metrics:
                key = f"heat_{family}_{metric}"
                fig = heat_map(mine, names, metric, rs, verdict, front, upper=upper)
                figs[key] = save_png(fig, out / f"{key}.png")
                caps[key] = CAPTIONS["heat"].format(
                    metric=label_of(metric), family=family, split=rs, select=sel
                )
        else:
            key = f"proj_{family}"
            fig = projections(mine, names, metrics, rs, verdict, front)
            figs[key] = save_png(fig, out / f"{key}.png")
            caps[key] = CAPTIONS["proj"].format(family=family, split=rs)
    if all(m in metrics for m in ("acc", "ece")):
        figs["scatter"] = save_png(acc_ece_scatter(points, rs, verdict), out / "scatter.png")
        caps["scatter"] = CAPTIONS["scatter"].format(split=rs)
    return figs, caps


def standings_table(v: SimplexVerdict) -> Table:
    """The pick against every parent and every edge's best point, on the report split."""
    rows = [Row([f"pick ({v.rule} on {v.select_split})", point_label(v.pick),
                 f"{100 * v.acc:.1f}%", _ece(v.ece)], frozenset({"pick"}))]
    rows += [Row(["parent", s.name, f"{100 * s.acc:.1f}%", _ece(s.ece)], frozenset({"base"}))
             for s in v.parents]
    rows += [Row([f"best of edge {s.name}", point_label(s.point), f"{100 * s.acc:.1f}%",
                  _ece(s.ece)], frozenset({"front"}) if s is v.best_edge else frozenset())
             for s in v.edges]
    return Table(split=v.report_split, caption=(
        f"The pick, every parent and each edge's best point (chosen on {v.select_split} by the"
        f" same rule) on {v.report_split}"), columns=["role", "point", "accuracy", "ECE"],
        rows=rows)


def _ece(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.3f}"


def points_table(
    points: Sequence[Point], names: Sequence[str], split: str, v: SimplexVerdict,
    *, only_front: bool = False,
) -> Table:
    """Every point (or the frontier) on `split`: family, one weight column per model, role,
    then every metric measured there."""
    metrics = metric_columns(points, split)
    front_ids = {id(p) for p in pareto_front(points, v.objectives, v.select_split)} \
        if all(v.select_split in p.metrics for p in points) else set()
    rows = []
    for p in sorted(points, key=lambda q: (q.family != "linear", q.family, q.mix or ())):
        if only_front and id(p) not in front_ids:
            continue
        w = dict(p.mix or ())
        tags = set()
        if same_point(p, v.pick):
            tags.add("pick")
        if any(same_point(p, s.point) for s in v.parents):
            tags.add("base")
        if id(p) in front_ids:
            tags.add("front")
        role = ", ".join({"pick": "pick", "base": "parent", "front": "frontier"}[t]
                         for t in ("pick", "base", "front") if t in tags)
        cells = [p.family] + [weight_label(w[n]) if n in w else "" for n in names] + [role]
        cells += [format_metric(m, p.metrics.get(split, {}).get(m)) for m in metrics]
        rows.append(Row(cells, frozenset(tags)))
    what = "The frontier" if only_front else "All points"
    caption = (f"{what} (chosen on {v.select_split}) on {split}; weights per model (a task-vector"
               " family has none for the base)")
    if split == GENERATION_SPLIT:
        caption = "Diversity of sampled generations at every point"
    columns = ["family", *names, "role", *(label_of(m) for m in metrics)]
    return Table(split=split, caption=caption, columns=columns, rows=rows)


def build_simplex_content(
    points: Sequence[Point], names: Sequence[str], v: SimplexVerdict, *, title: str,
    meta: dict[str, str],
) -> ReportContent:
    """Everything the simplex report shows, as plain strings (each renderer escapes)."""
    rows = [(str(k), str(x)) for k, x in meta.items()]
    rows += [("models", " · ".join(names)), ("pick rule", f"{v.rule} (chosen on {v.select_split})"),
             ("reported on", v.report_split), ("points", str(len(points)))]
    tables = [standings_table(v),
              points_table(points, names, v.report_split, v, only_front=True),
              points_table(points, names, v.report_split, v)]
    splits = {s for p in points for s in p.metrics}
    if v.select_split != v.report_split and v.select_split in splits:
        tables.append(points_table(points, names, v.select_split, v))
    if GENERATION_SPLIT in splits:
        tables.append(points_table(points, names, GENERATION_SPLIT, v))
    legend = (f"Green row: the pick; bold: the parents (each model itself); blue: on the Pareto"
              f" frontier (on {v.select_split}). Brackets are 95% bootstrap intervals.")
    return ReportContent(title=title, meta=rows, sentences=simplex_sentences(v),
                         superior=v.is_superior, tables=tables, legend=legend)


def write_simplex_report(
    points: Sequence[Point], names: Sequence[str], verdict: SimplexVerdict, out_dir: Path, *,
    title: str, meta: dict[str, str], upper: float = 1.0,
):
    """Write report.html (self-contained), report.md and figures/*.png into `out_dir`."""
    from calmerge.report.html import _prepare, _unwritable, write_pages

    out_dir = _prepare(out_dir)
    try:
        figures, captions = make_simplex_figures(
            points, names, verdict, out_dir / "figures", upper=upper
        )
        content = build_simplex_content(points, names, verdict, title=title, meta=meta)
        content = ReportContent(**{**content.__dict__, "captions": captions})
        return write_pages(out_dir, content, figures)
    except OSError as exc:
        raise _unwritable(out_dir, exc) from None
