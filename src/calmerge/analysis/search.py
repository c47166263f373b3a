"""The verdict of a per-layer search, from the store alone: did layer-wise coefficients buy
anything over one λ at the same evaluation budget?

Both frontiers are chosen on dev — the search's among its fully scored candidates, the
scalar-λ sweep's among the λ grid the same dev budget pays for — and compared on test by
hypervolume in (accuracy ↑, ECE ↓), with a paired bootstrap interval over the test items
(`analysis.budget.hypervolume_gap`). The reference point is the worst accuracy and the worst
ECE any point of either frontier or either parent has on test: the hypervolume then measures
how far each frontier pushes past what the worst of them reaches, in the same units for both.
How well the cheap anchor estimates ranked candidates is reported as the Spearman correlation
of estimate and full-dev value over the candidates scored both ways.

With a diversity objective the hypervolume is 3-D (accuracy ↑, ECE ↓, diversity in its own
direction) over the test items and the test prompts, the bootstrap resampling both (prompts
independently of items), and the reference point takes the worst diversity too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calmerge.analysis.pareto import Point, pareto_front, value_of
from calmerge.eval.metrics import Metric, diversity_of


@dataclass(frozen=True)
class Candidate:
    """A stored candidate: its point, genome, store id and what was measured of it."""

    point: Point
    genome: tuple[float, ...]
    point_id: int

    @property
    def full(self) -> bool:
        return "dev" in self.point.metrics

    def on(self, split: str, name: str) -> float:
        return value_of(self.point, name, split)


@dataclass(frozen=True)
class SearchVerdict:
    genes: tuple[str, ...]
    candidates: list[Candidate]
    front: list[Candidate]  # chosen on dev, scored on test
    lam_front: list[Point]  # the scalar-λ baseline's dev frontier, on test
    lam_points: list[Point]
    base: Point
    aligned: Point
    pick: Candidate
    ref: tuple[float, float]
    hv_search: float
    hv_lam: float
    gap: Metric  # HV(search) − HV(λ) on test, paired bootstrap
    bought: bool  # the gap's interval lies above zero
    spent: int
    n_dev: int
    n_anchor: int
    rank_acc: float  # Spearman of anchor estimate vs full dev over the candidates scored both
    rank_ece: float
    n_ranked: int
    objectives: tuple[str, ...]
    diversity: str | None = None  # the diversity objective, if any
    rank_div: float = float("nan")
    n_prompts: tuple[int, int, int] = (0, 0, 0)  # dev, anchor, test prompts


def _rows(preds_by_point: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray]:
    correct = np.array([[p.value for p in ps] for ps in preds_by_point], dtype=float)
    conf = np.array([[p.confidence for p in ps] for ps in preds_by_point], dtype=float)
    return correct, conf


def search_verdict(
    candidates: Sequence[Candidate],
    lam_points: Sequence[Point],
    *,
    genes: Sequence[str],
    test_predictions: dict[int, Sequence],  # id(point) -> its test predictions
    test_prompts: dict[int, np.ndarray] | None = None,  # id(point) -> per test prompt values
    n_prompts: tuple[int, int, int] = (0, 0, 0),
    objectives: Sequence[str] = ("acc", "ece"),
    n_dev: int,
    n_anchor: int,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
) -> SearchVerdict:
    """Judge a finished search (see the module docstring); `lam_points` hold λ=0 and λ=1."""
    from calmerge.analysis.budget import higher_is_better, hypervolume, hypervolume_gap, spearman
    from calmerge.analysis.pareto import find_lam

    objs = tuple(objectives)
    div = diversity_of(objs)
    full = [c for c in candidates if c.full]
    front_pts = pareto_front([c.point for c in full], objs, "dev")
    front = [c for c in full if any(c.point is p for p in front_pts) and "test" in c.point.metrics]
    front.sort(key=lambda c: (-c.on("dev", "acc"), c.on("dev", "ece"), c.genome))
    lam_front = [p for p in pareto_front(list(lam_points), objs, "dev") if "test" in p.metrics]
    lam_front.sort(key=lambda p: p.lam)
    base, aligned = find_lam(lam_points, "linear", 0.0), find_lam(lam_points, "linear", 1.0)
    assert base is not None and aligned is not None
    everyone = [c.point for c in front] + lam_front + [base, aligned]
    names = ("acc", "ece", div) if div else ("acc", "ece")
    higher = tuple(higher_is_better(n) for n in names)
    ref = tuple(_worst([value_of(p, n, "test") for p in everyone], h)
                for n, h in zip(names, higher, strict=True))

    def hv(points: Sequence[Point]) -> float:
        return hypervolume(np.array([[value_of(p, n, "test") for n in names] for p in points]),
                           ref, higher)

    a = _rows([test_predictions[id(c.point)] for c in front])
    b = _rows([test_predictions[id(p)] for p in lam_front])
    prompts = {}
    if div:
        assert test_prompts is not None
        prompts = dict(a_prompts=np.array([test_prompts[id(c.point)] for c in front]),
                       b_prompts=np.array([test_prompts[id(p)] for p in lam_front]),
                       prompts_higher=higher[2])
    gap = hypervolume_gap(*a, *b, ref=ref, n_bins=n_bins, n_boot=n_boot, seed=seed, **prompts)
    ranked = [c for c in full if "estimate" in c.point.metrics]
    pick = front[0]
    promoted = sum(1 for c in candidates if c.full)
    return SearchVerdict(
        genes=tuple(genes), candidates=list(candidates), front=front, lam_front=lam_front,
        lam_points=list(lam_points), base=base, aligned=aligned, pick=pick, ref=ref,
        hv_search=hv([c.point for c in front]), hv_lam=hv(lam_front), gap=gap,
        bought=bool(gap.lo > 0),
        spent=2 * n_dev + len(candidates) * n_anchor + promoted * n_dev,
        n_dev=n_dev, n_anchor=n_anchor,
        rank_acc=spearman([c.on("estimate", "acc") for c in ranked],
                          [c.on("dev", "acc") for c in ranked]),
        rank_ece=spearman([c.on("estimate", "ece") for c in ranked],
                          [c.on("dev", "ece") for c in ranked]),
        n_ranked=len(ranked), objectives=objs, diversity=div,
        rank_div=spearman([c.on("estimate", div) for c in ranked],
                          [c.on("dev", div) for c in ranked]) if div else float("nan"),
        n_prompts=n_prompts,
    )


def _worst(values: Sequence[float], higher: bool) -> float:
    """The reference coordinate: just past the worst value (by 0.1% of the spread, at least
    1e-3 of the value's scale), so every frontier point adds volume."""
    v = np.asarray(values, dtype=float)
    pad = max(1e-3 * (np.nanmax(v) - np.nanmin(v)), 1e-3 * max(1.0, float(np.nanmax(np.abs(v)))))
    return float(np.nanmin(v) - pad) if higher else float(np.nanmax(v) + pad)


def profile(genome: Sequence[float], n_layers: int) -> np.ndarray:
    """λ at every block of a gradient of K anchors, as mergekit interpolates it: block i at
    t = i/(L−1), anchors evenly spaced on [0, 1] (one anchor: a constant)."""
    g = np.asarray(genome, dtype=float)
    if g.size == 1:
        return np.full(n_layers, g[0])
    t = np.linspace(0.0, 1.0, n_layers) if n_layers > 1 else np.array([1.0])
    return np.interp(t, np.linspace(0.0, 1.0, g.size), g)
