"""Choosing one sweep point: registered pick rules (max-acc, min-ece, knee) and `lambda=X`.

A rule is a function of the finished points, the split it chooses on and the objectives, in
the `PICK_RULES` registry; adding one is a function and a decorator. `check_rule` lets configs
refuse an unknown rule before any point is computed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from calmerge.analysis.pareto import (
    Point,
    check_objectives,
    default_objectives,
    find_lam,
    metric_of,
    oriented,
    parents,
    pareto_front,
    value_of,
)
from calmerge.errors import ConfigError, did_you_mean
from calmerge.registry import Registry

# ─────────────────────────────────────── pick rules ──────────────────────────────────────────

PickFn = Callable[[Sequence[Point], str, Sequence[str]], Point]
PICK_RULES: Registry[PickFn] = Registry("pick rule")


def pick_rule(name: str) -> Callable[[PickFn], PickFn]:
    """Register a pick rule: f(points, split, objectives) -> the chosen Point."""
    return PICK_RULES.register(name)


def _need(points: Sequence[Point], name: str, split: str) -> None:
    if not any(metric_of(p, name, split) is not None for p in points):
        raise ConfigError(
            f"metric '{name}' was not measured on split '{split}'",
            "this pick rule needs it; choose another rule or split",
        )


def _tiebreak(p: Point) -> tuple:
    # Deterministic last resort: prefer the linear family, then the smaller λ (closer to base).
    # (a simplex point: then its weights, in the models' order)
    return (p.family != "linear", p.family, p.lam, p.mix or ())


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


#: `candidate=12`: a searched candidate by its store id (`calmerge export` of a search run)
CANDIDATE_RULE = re.compile(r"^candidate=(?P<id>\d+)$")

_WEIGHTS_RULE = re.compile(r"^(?:(?P<family>[A-Za-z_][\w-]*):)?weights=(?P<weights>.+)$")


def _weights_rule(rule: str) -> tuple[str | None, list[tuple[str, float]]] | None:
    """(family or None, [(model, weight), …]) of `weights=base:0.2,sft:0.3,dpo:0.5`; None if
    the rule is not one (a simplex point, named by its weights)."""
    m = _WEIGHTS_RULE.match(rule.strip())
    if m is None:
        return None
    out = []
    for part in m["weights"].split(","):
        name, sep, value = part.strip().partition(":")
        try:
            if not sep or not name.strip():
                raise ValueError
            out.append((name.strip(), float(value)))
        except ValueError:
            raise ConfigError(
                f"cannot read '{part.strip()}' in pick rule '{rule}'",
                "write MODEL:WEIGHT pairs, e.g. weights=base:0.2,sft:0.3,dpo:0.5",
            ) from None
    return m["family"], out


def _pick_weights(points: Sequence[Point], rule: str) -> Point | None:
    """`weights=base:0.2,sft:0.3,dpo:0.5` (linear family, else the only one): the finished
    simplex point with exactly these weights; one line naming what does not fit otherwise."""
    import math

    from calmerge.coords import weights_label, weights_of
    from calmerge.merge.families import get_family

    parsed = _weights_rule(rule)
    if parsed is None:
        return None
    named, given = parsed
    simplex = [p for p in points if p.mix is not None]
    if not simplex:
        raise ConfigError(
            f"pick rule '{rule}' names weights, but this run is a λ sweep",
            "pick a λ point with lambda=X (or max-acc, min-ece, knee)",
        )
    families = sorted({p.family for p in simplex})
    family = named or ("linear" if "linear" in families else families[0])
    if named is None and "linear" not in families and len(families) > 1:
        raise ConfigError(f"pick rule '{rule}' is ambiguous: families {', '.join(families)}",
                          f"name the family, e.g. {families[0]}:{rule}")
    mine = [p for p in simplex if p.family == family]
    if not mine:
        raise ConfigError(f"no finished point in family '{family}'",
                          f"families of this run: {', '.join(families)}")
    models = [n for n, _ in mine[0].mix]
    names = [n for n, _ in given]
    for name in names:
        if name not in models or names.count(name) > 1:
            why = "is given twice" if name in models else "is not a model of this run"
            raise ConfigError(f"pick rule '{rule}': '{name}' {why}",
                              f"the {family} weights are of: {', '.join(models)}")
    missing = [n for n in models if n not in names]
    if missing:
        raise ConfigError(f"pick rule '{rule}' gives no weight for {', '.join(missing)}",
                          f"give a weight for each of: {', '.join(models)}")
    if any(not math.isfinite(w) for _, w in given):
        raise ConfigError(f"pick rule '{rule}': weights must be finite numbers", "e.g. 0.3")
    total = sum(w for _, w in given)
    if not get_family(family).task_vectors and abs(total - 1) > 1e-6:
        raise ConfigError(
            f"pick rule '{rule}': the weights sum to {total:g}; a {family} point's weights"
            " sum to 1",
            "adjust them so they sum to 1 (e.g. base:0.2,sft:0.3,dpo:0.5)",
        )
    want = weights_of((n, dict(given)[n]) for n in models)
    found = next((p for p in mine if p.mix == want), None)
    if found is None:
        raise ConfigError(
            f"no finished {family} point with weights {weights_label(want)}",
            f"{len(mine)} finished; e.g. {weights_label(mine[0].mix)} (see `calmerge results`)",
        )
    return found


def _rule_fn(rule: str) -> PickFn:
    if rule not in PICK_RULES:
        options = [*PICK_RULES, "lambda=<x>", "weights=<model:w,…>", "candidate=<id>"]
        raise ConfigError(
            f"unknown pick rule '{rule}'",
            did_you_mean(rule, PICK_RULES) or f"choose from {', '.join(options)}",
        )
    return PICK_RULES.get(rule)


def check_rule(rule: str) -> str:
    """The rule if it is a registered pick rule or reads as `[family:]lambda=X`, else one line
    with "did you mean". Public so configs and `analyse` refuse a bad rule before any work
    (whether the λ was computed can only be known from the points)."""
    if _lambda_rule(rule) is None and _weights_rule(rule) is None and \
            CANDIDATE_RULE.match(rule.strip()) is None:
        _rule_fn(rule)
    return rule


def _pick_lambda(points: Sequence[Point], rule: str) -> Point | None:
    """`lambda=0.6` (linear family, else the only family) or `slerp:lambda=0.5`; None if no match."""
    parsed = _lambda_rule(rule)
    if parsed is None:
        return None
    named, lam = parsed
    points = [p for p in points if p.mix is None]
    if not points:
        raise ConfigError(
            f"pick rule '{rule}' names λ, but this run sweeps several models",
            "pick a point by its weights, e.g. weights=base:0.2,sft:0.3,dpo:0.5",
        )
    families = sorted({p.family for p in points})
    family = named or ("linear" if "linear" in families or not families else families[0])
    if named is None and "linear" not in families and len(families) > 1:
        raise ConfigError(
            f"pick rule '{rule}' is ambiguous: families {', '.join(families)}",
            f"name the family, e.g. {families[0]}:lambda={lam:g}",
        )
    found = find_lam(points, family, lam)
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
    by_weights = _pick_weights(points, rule)
    if by_weights is not None:
        return by_weights
    if CANDIDATE_RULE.match(rule.strip()):
        raise ConfigError(
            f"pick rule '{rule}' names a searched candidate, but this run is not a search",
            "pick by max-acc, min-ece, knee, lambda=X or weights=…",
        )
    fn = _rule_fn(rule)
    objs = tuple(objectives) if objectives else default_objectives(points, split)
    check_objectives(objs)
    return fn(points, split, objs)


