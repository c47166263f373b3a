"""The verdict of a sweep over N ≥ 3 checkpoints: the pick against every parent and every edge.

A λ sweep asks "is the pick more accurate than both parents?". Over a simplex two questions
follow: is the pick more accurate than *every* parent (Pareto-superior, the same test with
the best of N parents taken inside each bootstrap resample), and is it better than the best
point of every edge — each edge being a plain λ sweep between two models (or, for task
vectors, one task vector's own λ). The second says whether mixing three or more models bought
anything over a scalar λ. Each edge's best point is chosen on the select split by the same
rule as the pick, so the comparison carries no selection bias for either side; all numbers are
on the report split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calmerge.analysis.pareto import Point, same_point, value_of
from calmerge.analysis.pick import pick
from calmerge.analysis.verdict import choose, paired_gain_over
from calmerge.coords import Weights
from calmerge.errors import ConfigError
from calmerge.eval.metrics import Metric
from calmerge.merge.families import get_family
from calmerge.sweep.simplex import Geometry

#: pick rules that choose an edge's best point from that edge's points alone
EDGE_RULES = ("max-acc", "knee")


@dataclass(frozen=True)
class Standing:
    """One comparison point on the report split: a parent or an edge's best point."""

    name: str  # the model's name, or "a–b" for an edge
    point: Point
    acc: float
    ece: float


@dataclass(frozen=True)
class SimplexVerdict:
    """The pick of a simplex sweep against its parents and its edges (report-split numbers).

    `gain`: pick − best parent (paired bootstrap, the best parent taken per resample);
    `edge_gain`: pick − best edge point, likewise over every edge's own pick. `interior`:
    the pick mixes more models than any edge does.
    """

    pick: Point
    rule: str
    edge_rule: str  # how each edge's best point was chosen (the rule, or max-acc)
    select_split: str
    report_split: str
    chosen_on_report_split: bool
    objectives: tuple[str, ...]
    names: tuple[str, ...]
    parents: list[Standing]
    best_parent: str
    gain: Metric
    edges: list[Standing]
    best_edge: Standing | None
    edge_gain: Metric
    interior: bool
    is_superior: bool
    beats_edges: bool
    has_items: bool
    recovered: float | None
    acc: float
    ece: float

    @property
    def pick_is_parent(self) -> str | None:
        return next((s.name for s in self.parents if same_point(s.point, self.pick)), None)


def geometry_of(family: str, names: Sequence[str], upper: float = 1.0) -> Geometry:
    """The simplex (linear) or box (task vectors) of `family` over the models `names`."""
    from calmerge.sweep.simplex import UNIT

    return Geometry(tuple(names), get_family(family).task_vectors, round(upper * UNIT))


def _correct(p: Point, split: str) -> np.ndarray | None:
    c = (p.correct or {}).get(split)
    return c if c is not None and len(c) else None


def simplex_verdict(
    points: Sequence[Point],
    names: Sequence[str],
    *,
    select_split: str = "dev",
    report_split: str = "test",
    rule: str = "max-acc",
    objectives: Sequence[str] | None = None,
    upper: float = 1.0,
    n_boot: int = 1000,
    seed: int = 0,
) -> SimplexVerdict:
    """Pick on `select_split` among all points; compare on `report_split` with every parent
    (the vertices of the pick's family) and with the best point of every edge.

    The recovered share of calibration is taken between the first model (the base) and the
    last (the most aligned stage, the run's `aligned`), as in a λ sweep.
    """
    from calmerge.analysis.pareto import recovered_fraction

    chosen, sel, objs, chosen_on_report = choose(
        points, select_split=select_split, report_split=report_split, rule=rule,
        objectives=objectives,
    )
    family = chosen.family
    geo = geometry_of(family, names, upper)
    mine = [p for p in points if p.family == family and p.mix is not None]
    units = {p.coord: geo.units(p.mix) for p in mine}
    rs = report_split

    def standing(name: str, p: Point) -> Standing:
        return Standing(name, p, value_of(p, "acc", rs), value_of(p, "ece", rs))

    parents = []
    for name, u in geo.vertices().items():
        found = next((p for p in mine if units[p.coord] == u), None)
        if found is None:
            raise ConfigError(
                f"the sweep has no point of model '{name}' itself in family '{family}'",
                "every parent is a grid point; resume the sweep to compute it",
            )
        parents.append(standing(name, found))
    best_parent = max(parents, key=lambda s: -np.inf if np.isnan(s.acc) else s.acc)

    # each edge's best point is picked by the same rule where the rule means something on an
    # edge alone (max-acc, knee); min-ece's floor is the last model's accuracy, which an edge
    # without it lacks, and an explicit point (weights=…) names no edge point: those take the
    # edge's most accurate point
    edge_rule = rule if rule in EDGE_RULES else "max-acc"
    edges = []
    vertex = {name: u for name, u in geo.vertices().items()}
    for a, b in geo.edges():
        on = [p for p in mine if geo.edge_of(units[p.coord]) == (a, b)
              or units[p.coord] in (vertex.get(a), vertex.get(b))]
        if len(on) >= 2:
            edges.append(standing(f"{a}–{b}", pick(on, edge_rule, split=sel, objectives=objs)))
    best_edge = max(edges, key=lambda s: -np.inf if np.isnan(s.acc) else s.acc, default=None)

    u = units.get(chosen.coord)
    interior = u is not None and geo.edge_of(u) is None and geo.vertex_of(u) is None
    mine_c = _correct(chosen, rs)
    extra = {"weights": (chosen.weights or {}).get(rs), "strata": (chosen.strata or {}).get(rs)}
    rival_c = [_correct(s.point, rs) for s in parents]
    edge_c = [_correct(s.point, rs) for s in edges]
    has_items = mine_c is not None and all(c is not None for c in rival_c + edge_c)
    nan = float("nan")
    acc, ece = value_of(chosen, "acc", rs), value_of(chosen, "ece", rs)
    if has_items:
        gain = paired_gain_over(mine_c, rival_c, n_boot=n_boot, seed=seed, **extra)
        edge_gain = (
            paired_gain_over(mine_c, edge_c, n_boot=n_boot, seed=seed, **extra)
            if edges else Metric(nan, nan, nan)
        )
    else:
        gain = Metric(acc - best_parent.acc, nan, nan)
        edge_gain = Metric(acc - best_edge.acc if best_edge else nan, nan, nan)
    is_parent = any(same_point(chosen, s.point) for s in parents)
    return SimplexVerdict(
        pick=chosen, rule=rule, edge_rule=edge_rule, select_split=sel, report_split=rs,
        chosen_on_report_split=chosen_on_report, objectives=objs, names=tuple(names),
        parents=parents, best_parent=best_parent.name, gain=gain, edges=edges,
        best_edge=best_edge, edge_gain=edge_gain, interior=interior,
        is_superior=bool(has_items and not is_parent and gain.lo > 0),
        beats_edges=bool(has_items and interior and edges and edge_gain.lo > 0),
        has_items=has_items,
        recovered=recovered_fraction(parents[0].ece, parents[-1].ece, ece)
        if len(parents) >= 2 else None,
        acc=acc, ece=ece,
    )


def frontier_weights(points: Sequence[Point], objectives: Sequence[str], split: str) -> list[Weights]:
    """The weights of the points on the Pareto frontier on `split` (report tables mark them)."""
    from calmerge.analysis.pareto import pareto_front

    return [p.mix for p in pareto_front(points, objectives, split) if p.mix is not None]
