"""Pareto analysis of a merge sweep: dominance, frontier, pick rules and the verdict.

Why this module is pure: the same finished points are analysed by the sweep (to decide where to
refine), by the report and by `calmerge export --pick`. Keeping every function a plain
computation over `Point`s (no store, no files, no globals besides two registries) means all
three see identical answers and tests can hand-work every case.

Objectives are metrics of the one metric registry (`calmerge.eval.metrics`): which names are
objectives, which way is better and which diversity metric is the default third objective are
read from each metric's spec, never listed here, so a metric cannot be measured under one name
and looked for under another.

The question the verdict answers is the paper's: is some merge θ(λ) more accurate than *both*
parents, and how much of the calibration the alignment lost does it recover? λ is chosen on one
split (dev) and reported on another (test), so the reported numbers carry no selection bias.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from calmerge.errors import ConfigError, did_you_mean
from calmerge.eval.metrics import GENERATION_SPLIT, METRICS, Metric, diversity_candidates

# (GENERATION_SPLIT and Metric stay importable from here: the points loader and sweep use them)

# ───────────────────────────────────────── data ──────────────────────────────────────────────


@dataclass(frozen=True)
class Point:
    """One finished sweep point: every metric on every split, as the store holds it."""

    family: str
    lam: float
    metrics: dict[str, dict[str, Metric]]
    reliability: dict[str, list[dict]]
    correct: dict[str, np.ndarray] | None = None


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
    that every point has, if any."""
    for spec in diversity_candidates():
        if points and all(metric_of(p, spec.name, split) is not None for p in points):
            return (*DEFAULT_OBJECTIVES, spec.name)
    return DEFAULT_OBJECTIVES


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


def _find_lam(points: Sequence[Point], family: str, lam: float) -> Point | None:
    for p in points:
        if p.family == family and abs(p.lam - lam) < 1e-9:
            return p
    return None


def same_point(a: Point, b: Point) -> bool:
    """Same sweep point (family and λ): points reloaded from the store are new objects."""
    return a.family == b.family and abs(a.lam - b.lam) < 1e-9


def parents(points: Sequence[Point], family: str = "linear") -> tuple[Point, Point]:
    """(base, aligned): the λ=0 and λ=1 points of `family` (for linear these are the models)."""
    base, aligned = _find_lam(points, family, 0.0), _find_lam(points, family, 1.0)
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


# ─────────────────────────────────────── pick rules ──────────────────────────────────────────

PickFn = Callable[[Sequence[Point], str, Sequence[str]], Point]
PICK_RULES: dict[str, PickFn] = {}


def pick_rule(name: str) -> Callable[[PickFn], PickFn]:
    """Register a pick rule: f(points, split, objectives) -> the chosen Point."""

    def register(fn: PickFn) -> PickFn:
        PICK_RULES[name] = fn
        return fn

    return register


def _need(points: Sequence[Point], name: str, split: str) -> None:
    if not any(metric_of(p, name, split) is not None for p in points):
        raise ConfigError(
            f"metric '{name}' was not measured on split '{split}'",
            "this pick rule needs it; choose another rule or split",
        )


def _tiebreak(p: Point) -> tuple:
    # Deterministic last resort: prefer the linear family, then the smaller λ (closer to base).
    return (p.family != "linear", p.family, p.lam)


@pick_rule("max-acc")
def _pick_max_acc(points: Sequence[Point], split: str, objectives: Sequence[str]) -> Point:
    """Highest accuracy on the frontier; among equal accuracy the better-calibrated one."""
    _need(points, "acc", split)
    objs = tuple(dict.fromkeys(("acc", *objectives)))
    front = pareto_front(points, objs, split)
    return min(
        front,
        key=lambda p: (
            -_nan_low(value_of(p, "acc", split)),
            _nan_high(value_of(p, "ece", split)),
            *_tiebreak(p),
        ),
    )


@pick_rule("min-ece")
def _pick_min_ece(points: Sequence[Point], split: str, objectives: Sequence[str]) -> Point:
    """Lowest ECE among points at least as accurate as the aligned model (no accuracy lost)."""
    _need(points, "acc", split)
    _need(points, "ece", split)
    _, aligned = parents(points)
    floor = value_of(aligned, "acc", split)
    ok = [p for p in points if value_of(p, "acc", split) >= floor - 1e-12]
    return min(
        ok,
        key=lambda p: (
            _nan_high(value_of(p, "ece", split)),
            -_nan_low(value_of(p, "acc", split)),
            *_tiebreak(p),
        ),
    )


@pick_rule("knee")
def _pick_knee(points: Sequence[Point], split: str, objectives: Sequence[str]) -> Point:
    """The frontier's knee; see `knee_point`."""
    front = pareto_front(points, objectives, split)
    return knee_point(front, objectives[:2], split)


def _nan_low(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def _nan_high(v: float) -> float:
    return math.inf if math.isnan(v) else v


def knee_point(front: Sequence[Point], objectives: Sequence[str], split: str) -> Point:
    """The knee of a frontier: the point farthest beyond the chord joining its two extremes.

    Definition (the "maximum distance to the extreme line" knee of Das 1999 / Deb & Gupta 2011,
    the one kneed-style tools use): take the first two objectives (accuracy and ECE by default —
    the trade-off the alignment tax is about), orient both so higher is better and min-max
    normalise each over the frontier to [0, 1]. The extremes are the frontier points best in the
    first and in the second objective; the knee is the point with the largest signed
    perpendicular distance from the line through them, on the side of the ideal point (1, 1).
    It is where giving up a little of one objective stops buying much of the other. If no point
    lies beyond the line (two-point or straight frontiers), the point closest to the ideal
    point in normalised space is taken. With a single objective it is simply the best point.
    """
    if not front:
        raise ConfigError("no points to pick from", "run the sweep first")
    objectives = tuple(objectives)
    check_objectives(objectives)
    vecs = np.array([oriented(p, objectives, split) for p in front], dtype=float)
    vecs[~np.isfinite(vecs)] = np.nan
    lo, hi = np.nanmin(vecs, axis=0), np.nanmax(vecs, axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    norm = np.nan_to_num((vecs - lo) / span, nan=0.0)
    order = sorted(range(len(front)), key=lambda i: _tiebreak(front[i]))
    if len(objectives) == 1:
        return front[max(order, key=lambda i: norm[i, 0])]
    x, y = norm[:, 0], norm[:, 1]
    a = max(order, key=lambda i: (x[i], y[i]))  # best in objective 1
    b = max(order, key=lambda i: (y[i], x[i]))  # best in objective 2
    d = np.array([x[b] - x[a], y[b] - y[a]])
    length = float(np.hypot(*d))
    if length > 0:
        normal = np.array([-d[1], d[0]]) / length
        if normal @ (np.array([1.0, 1.0]) - np.array([x[a], y[a]])) < 0:
            normal = -normal  # point the normal towards the ideal corner
        dist = (norm[:, :2] - np.array([x[a], y[a]])) @ normal
        best = max(order, key=lambda i: dist[i])
        if dist[best] > 1e-12:
            return front[best]
    gap = np.hypot(1.0 - x, 1.0 - y)
    return front[min(order, key=lambda i: gap[i])]


_LAMBDA_RULE = re.compile(r"^(?:(?P<family>[A-Za-z_][\w-]*):)?(?:lambda|λ|t)=(?P<lam>.+)$")


def _lambda_rule(rule: str) -> tuple[str | None, float] | None:
    """(family or None, λ) of `lambda=0.6` / `slerp:lambda=0.5`; None if the rule is not one."""
    m = _LAMBDA_RULE.match(rule.strip())
    if m is None:
        return None
    try:
        return m["family"], float(m["lam"])
    except ValueError:
        raise ConfigError(f"cannot read λ in pick rule '{rule}'", "write e.g. lambda=0.6") from None


def _rule_fn(rule: str) -> PickFn:
    fn = PICK_RULES.get(rule)
    if fn is None:
        options = [*PICK_RULES, "lambda=<x>"]
        raise ConfigError(
            f"unknown pick rule '{rule}'",
            did_you_mean(rule, PICK_RULES) or f"choose from {', '.join(options)}",
        )
    return fn


def check_rule(rule: str) -> str:
    """The rule if it is a registered pick rule or reads as `[family:]lambda=X`, else one line
    with "did you mean". Public so configs and `analyse` refuse a bad rule before any work
    (whether the λ was computed can only be known from the points)."""
    if _lambda_rule(rule) is None:
        _rule_fn(rule)
    return rule


def _pick_lambda(points: Sequence[Point], rule: str) -> Point | None:
    """`lambda=0.6` (linear family, else the only family) or `slerp:lambda=0.5`; None if no match."""
    parsed = _lambda_rule(rule)
    if parsed is None:
        return None
    named, lam = parsed
    families = sorted({p.family for p in points})
    family = named or ("linear" if "linear" in families or not families else families[0])
    if named is None and "linear" not in families and len(families) > 1:
        raise ConfigError(
            f"pick rule '{rule}' is ambiguous: families {', '.join(families)}",
            f"name the family, e.g. {families[0]}:lambda={lam:g}",
        )
    found = _find_lam(points, family, lam)
    if found is None:
        have = sorted(p.lam for p in points if p.family == family)
        raise ConfigError(
            f"no finished point with λ={lam:g} in family '{family}'",
            f"available: {', '.join(f'{x:g}' for x in have) or 'none'}",
        )
    return found


def pick(
    points: Sequence[Point],
    rule: str,
    *,
    split: str,
    objectives: Sequence[str] | None = None,
) -> Point:
    """Choose one point by a named rule (max-acc, min-ece, knee) or `lambda=X` on `split`."""
    if not points:
        raise ConfigError("no finished points to pick from", "run or resume the sweep first")
    by_lam = _pick_lambda(points, rule)
    if by_lam is not None:
        return by_lam
    fn = _rule_fn(rule)
    objs = tuple(objectives) if objectives else default_objectives(points, split)
    check_objectives(objs)
    return fn(points, split, objs)


# ─────────────────────────────────────── the verdict ─────────────────────────────────────────


def paired_gain_interval(
    pick_correct: np.ndarray,
    base_correct: np.ndarray,
    aligned_correct: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Metric:
    """Accuracy of the pick minus that of the better parent, with a paired bootstrap interval.

    Why paired and why max inside the loop: all three models answered the same items, so
    resampling items (not models) cancels item difficulty and gives a much tighter, honest
    interval; and taking the better parent *within* each resample makes the interval answer
    "above both parents" rather than "above the parent that happened to win on the full data".
    Percentile interval; values are accuracy fractions (0.021 = 2.1 points).
    """
    arrs = [
        np.asarray(a, dtype=float).ravel() for a in (pick_correct, base_correct, aligned_correct)
    ]
    n = arrs[0].size
    if any(a.size != n for a in arrs):
        raise ValueError("per-item correctness arrays differ in length; items must be paired")
    if n == 0:
        nan = float("nan")
        return Metric(nan, nan, nan)
    value = arrs[0].mean() - max(arrs[1].mean(), arrs[2].mean())
    rng = np.random.default_rng(seed)
    stacked = np.stack(arrs)  # (3, n)
    gains = np.empty(n_boot)
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(k, n))
        acc = stacked[:, idx].mean(axis=2)  # (3, k)
        gains[start : start + k] = acc[0] - np.maximum(acc[1], acc[2])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(gains, [alpha, 1.0 - alpha])
    return Metric(float(value), float(lo), float(hi))


@dataclass(frozen=True)
class Verdict:
    """What the sweep found, in numbers and in plain sentences (the report's first lines)."""

    pick: Point
    rule: str
    select_split: str
    report_split: str
    chosen_on_report_split: bool
    base: Point
    aligned: Point
    best_parent: str
    gain: Metric
    recovered: float | None
    is_superior: bool
    objectives: tuple[str, ...]
    sentences: list[str] = field(default_factory=list)
    temperature_sentence: str | None = None


def point_label(p: Point) -> str:
    """'λ=0.6' for the linear family, 'slerp λ=0.5' otherwise (how sentences name points)."""
    lam = f"λ={p.lam:g}"
    return lam if p.family == "linear" else f"{p.family} {lam}"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _splits(points: Sequence[Point]) -> set[str]:
    return {s for p in points for s in p.metrics}


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
    split is missing (no dev set) the pick is chosen on the report split and the sentences say
    so, because its numbers are then optimistically biased.
    """
    splits = _splits(points)
    if report_split not in splits:
        raise ConfigError(
            f"no point was evaluated on split '{report_split}'",
            f"splits present: {', '.join(sorted(splits)) or 'none'}",
        )
    chosen_on_report = select_split not in splits or select_split == report_split
    sel = report_split if chosen_on_report else select_split
    objs = tuple(objectives) if objectives else default_objectives(points, sel)
    chosen = pick(points, rule, split=sel, objectives=objs)
    base, aligned = parents(points)
    rs = report_split

    trio = (("pick", chosen), ("base", base), ("aligned", aligned))
    acc = {k: value_of(p, "acc", rs) for k, p in trio}
    ece = {k: value_of(p, "ece", rs) for k, p in trio}
    best_parent = "base" if _nan_low(acc["base"]) > _nan_low(acc["aligned"]) else "aligned"

    corr = [p.correct.get(rs) if p.correct else None for p in (chosen, base, aligned)]
    have_items = all(c is not None and len(c) > 0 for c in corr)
    if have_items:
        gain = paired_gain_interval(*corr, n_boot=n_boot, seed=seed)
    else:
        nan = float("nan")
        gain = Metric(acc["pick"] - acc[best_parent], nan, nan)
    is_parent = same_point(chosen, base) or same_point(chosen, aligned)
    superior = bool(have_items and not is_parent and gain.lo > 0)
    recovered = recovered_fraction(ece["base"], ece["aligned"], ece["pick"])

    label = point_label(chosen)
    ci = (
        f"95% CI {_pts(gain.lo)} to {_pts(gain.hi)}"
        if not math.isnan(gain.lo)
        else "no per-item results, so no interval"
    )
    rec = (
        f"{100 * recovered:.0f}% of the lost calibration recovered"
        if recovered is not None
        else "no calibration to recover (alignment did not raise ECE on "
        f"{rs}: base {ece['base']:.3f}, aligned {ece['aligned']:.3f})"
    )
    sentences: list[str] = []
    if superior:
        sentences.append(
            f"{label} is Pareto-superior: {_pts(gain.value)} points over the best parent "
            f"({best_parent}; {ci}), {rec}."
        )
    else:
        if is_parent:
            why = f"the pick ({rule} on {sel}) is the {'base' if same_point(chosen, base) else 'aligned'} model itself"
        elif not have_items:
            why = f"{label} is {_pts(gain.value)} points over the best parent ({best_parent}) but {ci}"
        else:
            why = (
                f"{label} ({rule} on {sel}) is {_pts(gain.value)} points against the best parent "
                f"({best_parent}) and the {ci} does not exclude zero"
            )
        sentences.append(f"No λ is Pareto-superior on {rs}: {why}; {rec}.")
    sentences.append(
        f"Alignment moved accuracy from {_pct(acc['base'])} (base) to {_pct(acc['aligned'])} "
        f"(aligned) and ECE from {ece['base']:.3f} to {ece['aligned']:.3f} on {rs}; "
        f"{label} has accuracy {_pct(acc['pick'])} and ECE {ece['pick']:.3f}."
    )
    if chosen_on_report:
        sentences.append(
            f"There is no separate '{select_split}' split, so {label} was chosen on {rs}, the same "
            "data it is reported on: these numbers are optimistic (selection bias)."
        )
    else:
        sentences.append(f"{label} was chosen by rule '{rule}' on {sel} and is reported on {rs}.")
    ts = _temperature_sentence(temperature_scaled, acc["pick"], ece["pick"], label, rs)
    if ts:
        sentences.append(ts)
    return Verdict(
        pick=chosen,
        rule=rule,
        select_split=sel,
        report_split=rs,
        chosen_on_report_split=chosen_on_report,
        base=base,
        aligned=aligned,
        best_parent=best_parent,
        gain=gain,
        recovered=recovered,
        is_superior=superior,
        objectives=objs,
        sentences=sentences,
        temperature_sentence=ts,
    )


def _temperature_sentence(
    ts: dict[str, Metric] | None, acc_pick: float, ece_pick: float, label: str, split: str
) -> str | None:
    """Compare the pick with the post-hoc baseline: the aligned model, temperature-scaled."""
    if not ts or "ece" not in ts:
        return None
    ts_ece = ts["ece"].value
    ts_acc = ts["acc"].value if "acc" in ts else float("nan")
    acc_txt = f" at accuracy {_pct(ts_acc)}" if not math.isnan(ts_acc) else ""
    head = (
        f"Temperature scaling of the aligned model (fitted on dev) reaches ECE {ts_ece:.3f}"
        f"{acc_txt} on {split}"
    )
    if ece_pick <= ts_ece:
        cal = f"{label} is better calibrated (ECE {ece_pick:.3f})"
    else:
        cal = f"{label} is less well calibrated (ECE {ece_pick:.3f})"
    if not math.isnan(ts_acc):
        diff = acc_pick - ts_acc
        if diff == 0:
            cal += " at equal accuracy"
        else:
            cal += f" and {abs(100 * diff):.1f} points {'more' if diff > 0 else 'less'} accurate"
    return f"{head}; {cal} — temperature scaling cannot change which answer is chosen."
