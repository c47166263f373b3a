"""The points of a sweep over N ≥ 3 checkpoints: the simplex grid, edges, vertices, refinement.

Two geometries, one per kind of family (`merge.families.Family.task_vectors`):

- **simplex** (linear): every model has a weight, all ≥ 0, Σ = 1. The vertices are the models
  themselves, an edge is the λ sweep between two of them, and with `extrapolate` an edge goes on
  past its ends (weights t and 1−t, t > 1: task amplification along that edge).
- **box** (task arithmetic, the Personalized-Soups setting): the first model is the origin and
  each other one a task vector with a coefficient λ_i ∈ [0, max] (Σ free). The vertices are the
  base (all zero) and each model (its coefficient 1), an edge is one task vector's own λ sweep.

Why integer units: a point is a dictionary key and a store row, and 0.1 + 0.2 must be the same
point as 0.3. Every coordinate is handled as an integer count of 10⁻⁶ (the store's rounding),
so a grid point sums to exactly 1 and a midpoint snapped to the refinement resolution still
does; floats appear only when a point leaves this module.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from calmerge.coords import DECIMALS, Weights, weights_of
from calmerge.errors import ConfigError

UNIT = 10**DECIMALS  # one weight of 1.0 in integer units

Units = tuple[int, ...]


def units_of(x: float, what: str = "step") -> int:
    """A weight or step in integer units; refused if finer than the store's 10⁻⁶."""
    u = round(float(x) * UNIT)
    if abs(u - float(x) * UNIT) > 1e-6 * UNIT * 1e-3:
        raise ConfigError(f"{what} {x:g} is finer than 1e-6", "use a coarser value, e.g. 0.1")
    return u


@dataclass(frozen=True)
class Geometry:
    """Where a simplex sweep's points live: model names, the kind, and the box's upper end."""

    names: tuple[str, ...]
    task_vectors: bool
    upper: int = UNIT  # box: the largest coefficient, in units

    @property
    def axes(self) -> tuple[str, ...]:
        """The names that carry a coordinate: every model, or every non-base model."""
        return self.names[1:] if self.task_vectors else self.names

    def weights(self, u: Units) -> Weights:
        return weights_of(zip(self.axes, (x / UNIT for x in u), strict=True))

    def units(self, w: Weights) -> Units:
        return tuple(round(v * UNIT) for _, v in w)

    def inside(self, u: Units) -> bool:
        """On the simplex (≥ 0, Σ = 1) or in the box (0 ≤ λ_i ≤ upper)."""
        if self.task_vectors:
            return all(0 <= x <= self.upper for x in u)
        return all(x >= 0 for x in u) and sum(u) == UNIT

    def vertices(self) -> dict[str, Units]:
        """Each parent's own point, by name: a one-hot weight (the base: all zero for a box)."""
        n = len(self.axes)
        out: dict[str, Units] = {}
        if self.task_vectors:
            out[self.names[0]] = (0,) * n
        for i, name in enumerate(self.axes):
            if self.task_vectors and self.upper < UNIT:
                continue  # the box does not reach this model itself
            out[name] = tuple(UNIT if j == i else 0 for j in range(n))
        return out

    def edges(self) -> list[tuple[str, str]]:
        """The scalar sweeps inside this space, as (from, to): every pair of models (simplex),
        or the base to each model (box)."""
        if self.task_vectors:
            return [(self.names[0], name) for name in self.axes]
        return list(itertools.combinations(self.names, 2))

    def edge_of(self, u: Units) -> tuple[str, str] | None:
        """The edge a point lies on (a vertex lies on several: None), else None (interior)."""
        nonzero = [i for i, x in enumerate(u) if x != 0]
        if self.task_vectors:
            return (self.names[0], self.axes[nonzero[0]]) if len(nonzero) == 1 else None
        if len(nonzero) == 2:
            i, j = nonzero
            return (self.axes[i], self.axes[j])
        return None

    def vertex_of(self, u: Units) -> str | None:
        return next((name for name, v in self.vertices().items() if v == u), None)


def check_step(step: float, task_vectors: bool, upper: float = 1.0) -> int:
    """The step in units, if it lays a lattice on the space: it divides 1 (simplex) or the
    box's largest coefficient, so the parents themselves are grid points."""
    s = units_of(step)
    if s <= 0:
        raise ConfigError(f"simplex step {step:g} must be positive", "use e.g. --simplex-step 0.1")
    if task_vectors and round(upper * UNIT) % s:
        raise ConfigError(
            f"simplex step {step:g} does not divide the largest coefficient {upper:g}",
            "choose a step that divides it, e.g. 0.1 or 0.25",
        )
    if not task_vectors and UNIT % s:
        raise ConfigError(
            f"simplex step {step:g} does not divide 1", "choose e.g. 0.1, 0.2, 0.25 or 0.5"
        )
    return s


def grid(geo: Geometry, step: float, extrapolate: Sequence[float] = ()) -> list[Units]:
    """Every lattice point at `step` spacing (simplex: all compositions of 1; box: every
    coefficient 0, step, …, upper), plus the extrapolation points along each edge."""
    s = check_step(step, geo.task_vectors, geo.upper / UNIT)
    n = len(geo.axes)
    if geo.task_vectors:
        values = range(0, geo.upper + 1, s)
        points = [tuple(p) for p in itertools.product(values, repeat=n)]
    else:
        k = UNIT // s
        points = [tuple(x * s for x in c) for c in _compositions(k, n)]
    for t in extrapolate:
        points += edge_extrapolation(geo, units_of(t, "extrapolation point"))
    return list(dict.fromkeys(points))


def grid_size(n_axes: int, step: float, task_vectors: bool, upper: float = 1.0) -> int:
    """How many grid points `grid` makes, counted without building them (for refusing a grid
    of millions before any work)."""
    from math import comb

    k = max(1, round(1 / step)) if step > 0 else 0
    if task_vectors:
        return (round(upper / step) + 1) ** n_axes if step > 0 else 0
    return comb(k + n_axes - 1, n_axes - 1)


def _compositions(k: int, n: int) -> list[tuple[int, ...]]:
    """All n-tuples of non-negative integers summing to k, in lexicographic order."""
    if n == 1:
        return [(k,)]
    return [(i, *rest) for i in range(k, -1, -1) for rest in _compositions(k - i, n - 1)]


def edge_extrapolation(geo: Geometry, t: int) -> list[Units]:
    """Points past the ends of every edge at weight t > 1 on the far end (simplex: t on one
    model, 1 − t on the other; box: coefficient t on one task vector)."""
    n = len(geo.axes)
    out = []
    if geo.task_vectors:
        for i in range(n):
            out.append(tuple(t if j == i else 0 for j in range(n)))
        return out
    for i, j in itertools.permutations(range(n), 2):
        out.append(tuple(t if m == j else (UNIT - t if m == i else 0) for m in range(n)))
    return out


def refine(
    geo: Geometry,
    done: Sequence[Units],
    on_front: Sequence[bool],
    *,
    resolution: float,
    limit: int,
) -> list[Units]:
    """New points between frontier points and their nearest finished neighbours.

    The λ sweep halves the intervals next to a frontier point; here a frontier point's nearest
    finished points (by the largest coordinate difference) are its neighbours, and the midpoint
    towards each — snapped to the `resolution` lattice, and only while the two are more than
    2·resolution apart — is where a better trade-off may hide. Midpoints of points of a convex
    set stay in it, and the snapping keeps a simplex point's sum at exactly 1, so refinement
    never leaves the space. At most `limit` points, those of better frontier points' first.
    """
    r = units_of(resolution, "resolution")
    seen = set(done)
    out: list[Units] = []
    for f, front in zip(done, on_front, strict=True):
        if not front:
            continue
        dist = {q: max(abs(a - b) for a, b in zip(f, q, strict=True)) for q in done if q != f}
        if not dist:
            continue
        nearest = min(dist.values())
        if nearest <= 2 * r:
            continue
        for q, d in dist.items():
            if d != nearest:
                continue
            mid = snap(tuple((a + b) / 2 for a, b in zip(f, q, strict=True)), r, geo)
            if mid not in seen and geo.inside(mid):
                seen.add(mid)
                out.append(mid)
    return out[:limit]


def snap(x: Sequence[float], r: int, geo: Geometry) -> Units:
    """The nearest point of the r-unit lattice; on the simplex by largest remainder, so the
    snapped coordinates still sum to exactly 1."""
    if geo.task_vectors or UNIT % r:
        return tuple(round(v / r) * r for v in x)
    q = [v / r for v in x]
    base = [int(v // 1) for v in q]
    short = UNIT // r - sum(base)
    order = sorted(range(len(q)), key=lambda i: (-(q[i] - base[i]), i))
    for i in order[:short]:
        base[i] += 1
    return tuple(b * r for b in base)
