"""The verdict: is the picked merge more accurate than *both* parents, and how much of the
calibration the alignment lost does it recover?

That is the paper's question. λ is chosen on one split (dev) and reported on another (test), so
the reported numbers carry no selection bias; the gain over the better parent carries a paired
bootstrap interval. Numbers only: the report's sentences about them are `report.sentences`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calmerge.analysis.pareto import (
    Point,
    default_objectives,
    parents,
    recovered_fraction,
    same_point,
    value_of,
)
from calmerge.analysis.pick import _nan_low, pick
from calmerge.errors import ConfigError
from calmerge.eval.metrics import Metric
from calmerge.splits import parse_split, split_key

# ─────────────────────────────────────── the verdict ─────────────────────────────────────────


def paired_gain_interval(
    pick_correct: np.ndarray,
    base_correct: np.ndarray,
    aligned_correct: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weights: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> Metric:
    """Accuracy of the pick minus that of the better parent, with a paired bootstrap interval.

    Why paired and why max inside the loop: all three models answered the same items, so
    resampling items (not models) cancels item difficulty and gives a much tighter, honest
    interval; and taking the better parent *within* each resample makes the interval answer
    "above both parents" rather than "above the parent that happened to win on the full data".
    Percentile interval; values are accuracy fractions (0.021 = 2.1 points).

    Per-item values may be scores rather than 0/1 (a task's own metric), with `weights` (an
    aggregate over tasks, a group of equal-weight tasks: accuracy is the weighted mean) and
    `strata` (the task of each item: every replicate resamples items within each task, so
    each task keeps its size, as the aggregate's own interval does).
    """
    return paired_gain_over(
        pick_correct, [base_correct, aligned_correct], n_boot=n_boot, seed=seed, level=level,
        weights=weights, strata=strata,
    )


def paired_gain_over(
    pick_correct: np.ndarray,
    rivals: Sequence[np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weights: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> Metric:
    """Accuracy of the pick minus that of the best of `rivals` (the best taken within each
    resample), with a paired bootstrap interval: `paired_gain_interval` for any number of
    rivals (every parent of a simplex sweep, the best point of every edge)."""
    arrs = [np.asarray(a, dtype=float).ravel() for a in (pick_correct, *rivals)]
    n = arrs[0].size
    if any(a.size != n for a in arrs):
        raise ValueError("per-item correctness arrays differ in length; items must be paired")
    if n == 0 or len(arrs) < 2:
        nan = float("nan")
        return Metric(nan, nan, nan)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float).ravel()
    stacked = np.stack(arrs)  # (1 + rivals, n)
    acc = stacked @ w / w.sum()
    value = acc[0] - acc[1:].max()
    if n_boot <= 0:  # no resamples asked for (--n-boot 0): a gain without an interval
        return Metric(float(value), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [
        np.flatnonzero(strata == s) for s in np.unique(strata)
    ]
    gains = np.empty(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = np.concatenate([g[rng.integers(0, g.size, size=(k, g.size))] for g in groups], axis=1)
        ww = w[idx]  # (k, n)
        acc = (stacked[:, idx] * ww).sum(axis=2) / ww.sum(axis=1)  # (1 + rivals, k)
        gains[start : start + k] = acc[0] - acc[1:].max(axis=0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(gains, [alpha, 1.0 - alpha])
    return Metric(float(value), float(lo), float(hi))


@dataclass(frozen=True)
class Verdict:
    """What the sweep found, in numbers: the pick, the parents, the paired gain over the better
    parent, the recovered share of the ECE rise, and the post-hoc baseline it is compared with.

    `acc`/`ece` hold the report split's values for "pick", "base" and "aligned"; `asked_split`
    is the split the pick was to be chosen on, `select_split` the one it was chosen on.
    """

    pick: Point
    rule: str
    asked_split: str
    select_split: str
    report_split: str
    chosen_on_report_split: bool
    base: Point
    aligned: Point
    best_parent: str
    gain: Metric
    recovered: float | None
    is_superior: bool
    has_items: bool
    objectives: tuple[str, ...]
    acc: dict[str, float]
    ece: dict[str, float]
    temperature_scaled: dict[str, Metric] | None = None

    @property
    def pick_is_parent(self) -> str | None:
        """'base' or 'aligned' when the pick is one of the parents, else None."""
        if same_point(self.pick, self.base):
            return "base"
        if same_point(self.pick, self.aligned):
            return "aligned"
        return None


def _splits(points: Sequence[Point]) -> set[str]:
    return {s for p in points for s in p.metrics}


def choose(
    points: Sequence[Point], *, select_split: str, report_split: str, rule: str,
    objectives: Sequence[str] | None,
) -> tuple[Point, str, tuple[str, ...], bool]:
    """(pick, the split it was chosen on, objectives, chosen on the report split?): the pick
    on the select split, or on the report split when there is no other (every verdict —
    λ sweep, simplex — chooses this one way)."""
    splits = _splits(points)
    if report_split not in splits:
        raise ConfigError(
            f"no point was evaluated on split '{report_split}'",
            f"splits present: {', '.join(sorted(splits)) or 'none'}",
        )
    chosen_on_report = select_split not in splits or select_split == report_split
    sel = report_split if chosen_on_report else select_split
    objs = tuple(objectives) if objectives else default_objectives(points, sel)
    return pick(points, rule, split=sel, objectives=objs), sel, objs, chosen_on_report


def verdict(
    points: Sequence[Point],
    *,
    select_split: str = "dev",
    report_split: str = "test",
    rule: str = "max-acc",
    objectives: Sequence[str] | None = None,
    temperature_scaled: dict[str, Metric] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Verdict:
    """Pick λ on `select_split`, test it on `report_split` against both parents.

    Pareto-superior means: the lower end of the paired-bootstrap 95% interval of
    (accuracy of the pick − accuracy of the better parent) on the report split is above zero.
    The recovered fraction of the alignment's ECE rise is reported alongside. When the select
    split is missing (no dev set) the pick is chosen on the report split, and the verdict says
    so (`chosen_on_report_split`), because its numbers are then optimistically biased.
    """
    chosen, sel, objs, chosen_on_report = choose(
        points, select_split=select_split, report_split=report_split, rule=rule,
        objectives=objectives,
    )
    base, aligned = parents(points)
    rs = report_split

    trio = (("pick", chosen), ("base", base), ("aligned", aligned))
    acc = {k: value_of(p, "acc", rs) for k, p in trio}
    ece = {k: value_of(p, "ece", rs) for k, p in trio}
    best_parent = "base" if _nan_low(acc["base"]) > _nan_low(acc["aligned"]) else "aligned"

    corr = [p.correct.get(rs) if p.correct else None for p in (chosen, base, aligned)]
    have_items = all(c is not None and len(c) > 0 for c in corr)
    if have_items:
        gain = paired_gain_interval(
            *corr, n_boot=n_boot, seed=seed,
            weights=(chosen.weights or {}).get(rs), strata=(chosen.strata or {}).get(rs),
        )
    else:
        nan = float("nan")
        gain = Metric(acc["pick"] - acc[best_parent], nan, nan)
    is_parent = same_point(chosen, base) or same_point(chosen, aligned)
    return Verdict(
        pick=chosen,
        rule=rule,
        asked_split=select_split,
        select_split=sel,
        report_split=rs,
        chosen_on_report_split=chosen_on_report,
        base=base,
        aligned=aligned,
        best_parent=best_parent,
        gain=gain,
        recovered=recovered_fraction(ece["base"], ece["aligned"], ece["pick"]),
        is_superior=bool(have_items and not is_parent and gain.lo > 0),
        has_items=have_items,
        objectives=objs,
        acc=acc,
        ece=ece,
        temperature_scaled=temperature_scaled,
    )


def task_names(points: Sequence[Point]) -> list[str]:
    """The tasks of a multi-task run, from its per-task splits ("test@mmlu"), sorted."""
    return sorted({t for s in _splits(points) if (t := parse_split(s)[1]) is not None})


def task_verdicts(
    points: Sequence[Point],
    *,
    rule: str = "max-acc",
    objectives: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Verdict]:
    """Each task's own verdict: λ picked on that task's dev (else its test) by the same rule,
    tested on its test split against both parents — "which λ would this task alone choose,
    and is it Pareto-superior there?". Empty for a single-task run."""
    out = {}
    for task in task_names(points):
        test = split_key("test", task)
        objs = tuple(objectives) if objectives else default_objectives(points, test)
        out[task] = verdict(
            points, select_split=split_key("dev", task), report_split=test, rule=rule,
            objectives=objs, n_boot=n_boot, seed=seed,
        )
    return out
