"""Pareto analysis of a merge sweep: points, objectives, dominance, the frontier, the parents.

Why this module is pure: the same finished points are analysed by the sweep (to decide where to
refine), by the report and by `calmerge export --pick`. Keeping every function a plain
computation over `Point`s (no store, no files, no globals) means all three see identical
answers and tests can hand-work every case. Choosing one point is `analysis.pick`; judging it
against the parents is `analysis.verdict`.

Objectives are metrics of the one metric registry (`calmerge.eval.metrics`): which names are
objectives, which way is better and which diversity metric is the default third objective are
read from each metric's spec, never listed here, so a metric cannot be measured under one name
and looked for under another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calmerge.coords import Coord, Weights, coord_label
from calmerge.errors import ConfigError
from calmerge.eval.metrics import GENERATION_SPLIT, METRICS, Metric, diversity_candidates

__all__ = ["GENERATION_SPLIT", "Metric", "Point"]  # Metric, GENERATION_SPLIT: re-exported

# ───────────────────────────────────────── data ──────────────────────────────────────────────


@dataclass(frozen=True)
class Point:
    """One finished sweep point: every metric on every split, as the store holds it."""

    family: str
    lam: float
    metrics: dict[str, dict[str, Metric]]
    reliability: dict[str, list[dict]]
    #: per split, each item's contribution to accuracy (0/1 correctness, or a task's own
    #: per-item score); `weights` (None: equal) and `strata` (the task of each item; None: one
    #: task) say how they make the split's accuracy and how the paired bootstrap resamples them
    correct: dict[str, np.ndarray] | None = None
    weights: dict[str, np.ndarray] | None = None
    strata: dict[str, np.ndarray] | None = None
    #: a simplex sweep's point: each model's weight (`coords.Weights`); None for a λ point
    mix: Weights | None = None

    @property
    def coord(self) -> Coord:
        """Where the point sits: its weights (simplex sweep), else λ."""
        return self.mix if self.mix is not None else self.lam


# ─────────────────────────────────────── objectives ──────────────────────────────────────────

#: accuracy ↑ and calibration ↓: the trade-off the alignment tax is about
DEFAULT_OBJECTIVES: tuple[str, ...] = tuple(METRICS.check(m) for m in ("acc", "ece"))


def metric_of(point: Point, name: str, split: str) -> Metric | None:
    """The point's `name` on `split`, falling back to the generation split for diversity."""
    for s in (split, GENERATION_SPLIT):
        m = point.metrics.get(s, {}).get(name)
        if m is not None:
            return m
    return None


def value_of(point: Point, name: str, split: str) -> float:
    """The metric's value, or nan when it was not measured."""
    m = metric_of(point, name, split)
    return float("nan") if m is None else float(m.value)


def default_objectives(points: Sequence[Point], split: str) -> tuple[str, ...]:
    """acc ↑ and ece ↓, plus the most preferred diversity metric (lowest `diversity_rank`)
    that every point has, if any. ECE is left out where no point has it (a task scored by its
    own metric, such as truthfulqa_mc2, defines no top-label calibration)."""
    base = tuple(
        m for m in DEFAULT_OBJECTIVES
        if m == "acc" or any(metric_of(p, m, split) is not None for p in points)
    )
    for spec in diversity_candidates():
        if points and all(metric_of(p, spec.name, split) is not None for p in points):
            return (*base, spec.name)
    return base


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """The objectives if each is a registered metric, else one line with "did you mean".

    Public so configs are checked when they are built, before any point is computed.
    """
    if not objectives:
        raise ConfigError("no objectives given", "use e.g. acc,ece")
    return tuple(METRICS.check(name) for name in objectives)


def oriented(point: Point, objectives: Sequence[str], split: str) -> np.ndarray:
    """Objective vector with every entry 'higher is better'; unmeasured (nan) is the worst.

    Why -inf for nan: a point that lacks a measurement must never dominate one that has it, and
    two points that both lack it tie on that objective.
    """
    out = np.empty(len(objectives))
    for i, name in enumerate(objectives):
        v = value_of(point, name, split)
        if math.isnan(v):
            out[i] = -math.inf
        else:
            out[i] = v if METRICS.get(name).higher_is_better else -v
    return out


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """a dominates b: at least as good everywhere and strictly better somewhere (ties don't)."""
    return bool(np.all(a >= b) and np.any(a > b))


def pareto_front(points: Sequence[Point], objectives: Sequence[str], split: str) -> list[Point]:
    """The non-dominated points on `split`, in input order.

    Points with identical objective vectors do not dominate each other, so all copies of a
    non-dominated vector stay on the frontier. O(n²) comparisons: a sweep has tens of points.
    """
    check_objectives(objectives)
    vecs = [oriented(p, objectives, split) for p in points]
    return [
        p
        for i, p in enumerate(points)
        if not any(dominates(vecs[j], vecs[i]) for j in range(len(points)) if j != i)
    ]


# ───────────────────────────────────────── parents ───────────────────────────────────────────


def find_lam(points: Sequence[Point], family: str, lam: float) -> Point | None:
    """The λ point (family, λ); a simplex point (which has weights, not λ) never matches."""
    for p in points:
        if p.family == family and p.mix is None and abs(p.lam - lam) < 1e-9:
            return p
    return None


def same_point(a: Point, b: Point) -> bool:
    """Same sweep point (family and λ or weights): points reloaded from the store are new
    objects."""
    return a.family == b.family and abs(a.lam - b.lam) < 1e-9 and a.mix == b.mix


def _vertex(points: Sequence[Point], family: str, last: bool) -> Point | None:
    """A simplex sweep's first (base) or last (most aligned) model itself: its one-hot point
    (the base of a task-vector family: every coefficient zero)."""
    from calmerge.merge.families import get_family

    task_vectors = get_family(family).task_vectors
    for p in points:
        if p.family != family or p.mix is None:
            continue
        values = [v for _, v in p.mix]
        if last:
            want = [0.0] * (len(values) - 1) + [1.0]
        else:
            want = [0.0] * len(values) if task_vectors else [1.0] + [0.0] * (len(values) - 1)
        if values == want:
            return p
    return None


def parents(points: Sequence[Point], family: str = "linear") -> tuple[Point, Point]:
    """(base, aligned): the λ=0 and λ=1 points of `family` (for linear these are the models);
    in a sweep over several models, the first and the last model themselves (of `family`, else
    of the first family swept)."""
    if points and all(p.mix is not None for p in points):
        fams = [f for f in dict.fromkeys(p.family for p in points)]
        fam = family if family in fams else fams[0]
        base, aligned = _vertex(points, fam, False), _vertex(points, fam, True)
        if base is None or aligned is None:
            raise ConfigError(
                f"the sweep has no point of its first or last model itself in family '{fam}'",
                "every parent is a grid point; resume the sweep to compute it",
            )
        return base, aligned
    base, aligned = find_lam(points, family, 0.0), find_lam(points, family, 1.0)
    missing = [n for n, p in (("λ=0 (base)", base), ("λ=1 (aligned)", aligned)) if p is None]
    if missing:
        raise ConfigError(
            f"the sweep has no {' and no '.join(missing)} point in family '{family}'",
            "include 0 and 1 in the grid: the parents are what every merge is compared with",
        )
    assert base is not None and aligned is not None
    return base, aligned


def recovered_fraction(ece_base: float, ece_aligned: float, ece_lam: float) -> float | None:
    """(ECE_aligned − ECE_λ)/(ECE_aligned − ECE_base): share of the alignment's ECE rise undone.

    1 means the merge is as calibrated as the base, 0 as miscalibrated as the aligned model,
    >1 better than the base. None when the alignment did not raise ECE (nothing was lost, so a
    fraction of it is meaningless) or when any value is unknown.
    """
    vals = (ece_base, ece_aligned, ece_lam)
    if any(v is None or math.isnan(v) for v in vals):
        return None
    rise = ece_aligned - ece_base
    if rise <= 0:
        return None
    return (ece_aligned - ece_lam) / rise


def point_label(p: Point) -> str:
    """'λ=0.6' for the linear family, 'slerp λ=0.5' otherwise (how sentences name points); a
    simplex point by its weights ('base .2 · sft .3 · dpo .5')."""
    lam = coord_label(p.coord)
    return lam if p.family == "linear" else f"{p.family} {lam}"
