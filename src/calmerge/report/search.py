"""The report of a per-layer search: did layer-wise λ buy anything over one λ?

Figures: both frontiers on test in (ECE, accuracy) with every λ point and the parents (and in
(diversity, accuracy) when diversity is an objective); the coefficient profile — λ at every block — of each frontier candidate (two panels, attention and
MLP, for an `attn-mlp` space); the anchor estimates against the full-dev values of the
candidates scored both ways. Tables: the search frontier, the λ frontier, the budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from calmerge.analysis.pareto import point_label, value_of
from calmerge.analysis.search import Candidate, SearchVerdict, profile
from calmerge.report.content import ReportContent, Row, Table, format_metric
from calmerge.report.figures import PARENT_STYLE, _new_figure, save_png


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _genes(c: Candidate, genes: Sequence[str]) -> str:
    return " ".join(f"{g}={v:g}" for g, v in zip(genes, c.genome, strict=True))


def _label(name: str) -> str:
    from calmerge.eval.metrics import METRICS

    return METRICS.get(name).label


def _arrow(name: str) -> str:
    from calmerge.analysis.budget import higher_is_better

    return "↑" if higher_is_better(name) else "↓"


def search_sentences(v: SearchVerdict, study: dict[str, Any]) -> list[str]:
    """The verdict in words (report, CLI and model card alike)."""
    gap = v.gap
    div = v.diversity
    axes = "accuracy ↑, ECE ↓" + (f", {_label(div)} {_arrow(div)}" if div else "")
    over = "test items and test prompts" if div else "test items"
    ci = (f"95% CI {gap.lo:+.5f} to {gap.hi:+.5f}" if not math.isnan(gap.lo)
          else "no interval")
    n_lam = len(v.lam_points)
    bought = (
        "layer-wise coefficients bought a better frontier than one λ"
        if v.bought else
        "layer-wise coefficients bought nothing measurable over one λ at this budget"
    )
    out = [
        f"Test hypervolume ({axes}): search {v.hv_search:.5f} against {v.hv_lam:.5f}"
        f" for the scalar-λ sweep the same dev budget pays for ({n_lam} λ points): difference"
        f" {gap.value:+.5f} ({ci}, paired bootstrap over {over}) — {bought}.",
        f"Search {study['space']} ({len(v.genes)} genes, {study['algorithm'].upper()}):"
        f" {len(v.candidates)} candidates on {v.n_anchor} anchor items each"
        + (f" and {v.n_prompts[1]} anchor prompts" if div else "") + ","
        f" {sum(c.full for c in v.candidates)} promoted to all {v.n_dev} dev items"
        + (f" and {v.n_prompts[0]} dev prompts" if div else "") + ";"
        f" {v.spent:,} dev item-evaluations spent.",
    ]
    pick = v.pick

    def numbers(p: Any) -> str:
        extra = f", {_label(div)} {value_of(p, div, 'test'):.3f}" if div else ""
        return f"{_pct(value_of(p, 'acc', 'test'))} (ECE {value_of(p, 'ece', 'test'):.3f}{extra})"

    out.append(
        f"The most accurate candidate of the dev frontier scores {numbers(pick.point)} on test;"
        f" base {numbers(v.base)}, aligned {numbers(v.aligned)}."
    )
    if v.n_ranked >= 3:
        extra = f", {v.rank_div:.2f} ({_label(div)})" if div else ""
        out.append(
            f"The anchor estimates rank the {v.n_ranked} candidates scored both ways with"
            f" Spearman ρ = {v.rank_acc:.2f} (accuracy), {v.rank_ece:.2f} (ECE){extra} against"
            " their full-dev values."
        )
    if div:
        out.append(
            f"{_label(div)} is measured on each prompt's sampled generations; the"
            f" open-ended prompts were split into {v.n_prompts[0]} dev and {v.n_prompts[2]}"
            " test prompts, and candidates were chosen on the dev prompts alone."
        )
    out.append("Frontiers were chosen on dev; every number above is on test.")
    return out


def fronts_figure(v: SearchVerdict):
    """Both frontiers on test: accuracy against ECE (and against the diversity objective, a
    second panel); λ points light, parents marked. A 3-objective frontier is drawn as points:
    its members need not be ordered along either plane's axis."""
    xs = ["ece", v.diversity] if v.diversity else ["ece"]
    fig = _new_figure(6.0 * len(xs), 4.2)
    axes = fig.subplots(1, len(xs), squeeze=False)[0]
    style = "o" if v.diversity else "-o"
    for ax, xname in zip(axes, xs, strict=True):
        def xy(points, xname=xname):
            return ([value_of(p, xname, "test") for p in points],
                     [100 * value_of(p, "acc", "test") for p in points])

        tested = [p for p in v.lam_points if "test" in p.metrics]
        ax.plot(*xy(tested), ".", color="#bbbbbb", label="λ points")
        x, y = xy(sorted(v.lam_front, key=lambda p, xname=xname: value_of(p, xname, "test")))
        ax.plot(x, y, style, color="#1f77b4", ms=4, label="λ frontier")
        x, y = xy(sorted((c.point for c in v.front),
                         key=lambda p, xname=xname: value_of(p, xname, "test")))
        ax.plot(x, y, style, color=PARENT_STYLE["pick"][0], ms=5, label="search frontier")
        for name, p in (("base", v.base), ("aligned", v.aligned)):
            color, marker = PARENT_STYLE[name]
            ax.plot(*xy([p]), marker, color=color, ms=8, label=name)
        ax.set_xlabel(f"{'ECE' if xname == 'ece' else _label(xname)} (test)")
        ax.set_ylabel("accuracy % (test)")
        ax.grid(alpha=0.3)
    axes[0].set_title("search vs one λ at equal budget (chosen on dev)", fontsize=10)
    axes[0].legend(fontsize=8, frameon=False)
    return fig


def profiles_figure(v: SearchVerdict, study: dict[str, Any], n_layers: int):
    """λ at every block for each frontier candidate (`attn-mlp`: attention and MLP panels)."""
    from calmerge.merge.genome import parse_space

    space = parse_space(study["space"])
    k = space.k
    panels = [("all tensors", slice(0, k))] if space.kind == "blocks" else [
        ("attention", slice(0, k)), ("MLP", slice(k, 2 * k))]
    fig = _new_figure(4.4 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    layers = np.arange(n_layers)
    for ax, (title, sl) in zip(axes, panels, strict=True):
        for i, c in enumerate(v.front):
            lam = profile(c.genome[sl], n_layers)
            ax.plot(layers, lam, "-o", ms=3, lw=2.5 if i == 0 else 1,
                    label=f"acc {_pct(c.on('test', 'acc'))}, ECE {c.on('test', 'ece'):.3f}")
        ax.set_ylim(-0.05, max(1.05, max((max(c.genome) for c in v.front), default=1) + 0.05))
        ax.set_xlabel("layer")
        ax.set_ylabel("λ (0 = base, 1 = aligned)")
        ax.set_title(f"λ per layer: {title}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def ranking_figure(v: SearchVerdict):
    """Anchor estimate against full-dev value, accuracy and ECE, for every candidate scored
    both ways: how far the cheap first look can be trusted."""
    ranked = [c for c in v.candidates if c.full and "estimate" in c.point.metrics]
    panels = [("acc", v.rank_acc), ("ece", v.rank_ece)]
    if v.diversity:
        panels.append((v.diversity, v.rank_div))
    fig = _new_figure(4.0 * len(panels), 3.4)
    axes = fig.subplots(1, len(panels))
    for ax, (name, rho) in zip(axes, panels, strict=True):
        est = [c.on("estimate", name) for c in ranked]
        full = [c.on("dev", name) for c in ranked]
        ax.plot(est, full, "o", ms=4, alpha=0.7)
        lo, hi = min(est + full, default=0), max(est + full, default=1)
        ax.plot([lo, hi], [lo, hi], ":", color="#888888")
        ax.set_xlabel(f"{name} estimated on the anchors")
        ax.set_ylabel(f"{name} on all of dev")
        ax.set_title(f"{name}: Spearman ρ = {rho:.2f}", fontsize=10)
        ax.grid(alpha=0.3)
    return fig


def _metric_cells(p: Any, names: Sequence[str]) -> list[str]:
    return [format_metric(n, p.metrics[split].get(n)) for split in ("dev", "test") for n in names]


def _metric_columns(v: SearchVerdict) -> tuple[list[str], list[str]]:
    names = ["acc", "ece", *([v.diversity] if v.diversity else [])]
    short = {"acc": "acc", "ece": "ECE"}
    return names, [f"{split} {short.get(n) or _label(n)}" for split in ("dev", "test")
                   for n in names]


def _front_table(v: SearchVerdict) -> Table:
    names, cols = _metric_columns(v)
    rows = [Row([str(c.point_id), _genes(c, v.genes), *_metric_cells(c.point, names)],
                frozenset({"pick"}) if c is v.pick else frozenset({"front"}))
            for c in v.front]
    return Table(split="test", caption="The search frontier (chosen on dev), best dev accuracy"
                 " first; candidate ids for `export --pick candidate=ID`",
                 columns=["candidate", "genes", *cols], rows=rows)


def _lam_table(v: SearchVerdict) -> Table:
    names, cols = _metric_columns(v)
    rows = [Row([point_label(p), *_metric_cells(p, names)],
                frozenset({"base"}) if p.lam in (0.0, 1.0) else frozenset())
            for p in v.lam_front]
    return Table(split="test", caption=f"The scalar-λ frontier at the same budget ({len(v.lam_points)}"
                 " λ points, chosen on dev)", columns=["point", *cols], rows=rows)


def write_search_report(v: SearchVerdict, out_dir: Path, *, title: str, meta: dict[str, str],
                        study: dict[str, Any], n_layers: int):
    """Write report.html (self-contained), report.md and figures/*.png into `out_dir`."""
    from calmerge.report.html import _prepare, _unwritable, write_pages

    out_dir = _prepare(out_dir)
    figs_dir = out_dir / "figures"
    try:
        figures = {
            "fronts": save_png(fronts_figure(v), figs_dir / "fronts.png"),
            "profiles": save_png(profiles_figure(v, study, n_layers), figs_dir / "profiles.png"),
        }
        captions = {
            "fronts": "Accuracy against ECE"
                      + (f" and against {_label(v.diversity)}" if v.diversity else "")
                      + " on test: the search frontier and the scalar-λ frontier of the same"
                      " dev budget, both chosen on dev",
            "profiles": "λ at every layer for each candidate of the search frontier (the most"
                        " accurate drawn thick)",
        }
        if v.n_ranked >= 2:
            figures["ranking"] = save_png(ranking_figure(v), figs_dir / "ranking.png")
            captions["ranking"] = ("Cheap fitness: anchor estimates against full-dev values of"
                                   " the candidates scored both ways")
        rows = [(str(k), str(x)) for k, x in meta.items()]
        rows += [("space", study["space"]), ("algorithm", study["algorithm"]),
                 ("population", str(study["population"])),
                 ("budget", f"{v.spent:,} of {study['budget'] or 'default'} dev item-evaluations"),
                 ("anchors", f"{v.n_anchor} of {v.n_dev} dev items"
                  + (f"; {v.n_prompts[1]} of {v.n_prompts[0]} dev prompts" if v.diversity else "")),
                 ("hypervolume reference", f"accuracy {v.ref[0]:.4f}, ECE {v.ref[1]:.4f}"
                  + (f", {_label(v.diversity)} {v.ref[2]:.4f}" if v.diversity else ""))]
        content = ReportContent(
            title=title, meta=rows, sentences=search_sentences(v, study), superior=v.bought,
            tables=[_front_table(v), _lam_table(v)], captions=captions,
            legend="Green row: the most accurate frontier candidate; bold: the parents."
                   " Brackets are 95% bootstrap intervals.",
        )
        return write_pages(out_dir, content, figures)
    except OSError as exc:
        raise _unwritable(out_dir, exc) from None


def search_card(c: Candidate, v: SearchVerdict, study: dict[str, Any], *, run_id: int,
                run_name: str) -> str:
    """The measured section of an exported candidate's model card: its genes, the search's
    verdict, every metric it was measured on."""
    from calmerge.report.card import _card
    from calmerge.report.markdown import md_text

    head = (f"Per-layer candidate {c.point_id} ({md_text(_genes(c, v.genes))}) from search run"
            f" {run_id} ({md_text(run_name)}); its per-layer recipe is `mergekit_config.yml`.")
    return _card(c.point, head, search_sentences(v, study), ())
