"""Where a sweep point sits: λ between two models, or a weight vector over several.

A pair sweep's point is one number, λ. A simplex sweep (`sweep.simplex`) over N ≥ 3
checkpoints has a weight per model — every model's weight for the linear family (Σ = 1),
every non-base model's task-vector coefficient for the task-vector families (Σ free). Both are
a `Coord`; this leaf module is the one place that says how weights are rounded, written into
the store and printed, so the store, the runner, the analysis and the report agree on which
point is which.

Weights are kept as `((name, value), …)` in the order the models were given: hashable (points
are dictionary keys), ordered (a table's columns follow the user's order), and self-describing
(a stored point names its models, so a result row can be read without the run's config).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

#: a simplex point: (model name, weight) in the order the models were given
Weights = tuple[tuple[str, float], ...]
#: a point of either kind: λ (pair sweep) or weights (simplex sweep)
Coord = float | Weights

#: decimals a coordinate is stored with (as λ): 0.1 + 0.2 and 0.3 are the same point
DECIMALS = 6


def round_lam(lam: float) -> float:
    """λ as stored: rounded so 0.1+0.2 and 0.3 are the same point."""
    return round(float(lam), DECIMALS)


def weights_of(pairs: Iterable[tuple[str, float]]) -> Weights:
    """Canonical weights: each value rounded like λ (−0.0 made 0.0), the order kept."""
    return tuple((str(name), round_lam(value) + 0.0) for name, value in pairs)


def weights_text(weights: Weights) -> str:
    """The store's text for a weight vector: a compact JSON object in the models' order."""
    return json.dumps(dict(weights), separators=(",", ":"))


def parse_weights_text(text: str | None) -> Weights | None:
    """The stored text back as weights; None for a pair sweep's point (empty text)."""
    if not text:
        return None
    return weights_of(json.loads(text).items())


def weight_label(value: float) -> str:
    """A weight as printed in labels: `.25`, `1`, `-.1` (the leading zero only costs width)."""
    text = f"{value:g}"
    return text.replace("0.", ".", 1) if text.startswith(("0.", "-0.")) else text


def weights_label(weights: Weights) -> str:
    """`base .2 · sft .3 · dpo .5`: a simplex point as tables and figures name it."""
    return " · ".join(f"{name} {weight_label(v)}" for name, v in weights)


def coord_label(coord: Coord) -> str:
    """`λ=0.3` for a pair point, the weights' label for a simplex point."""
    if isinstance(coord, tuple):
        return weights_label(coord)
    return f"λ={coord:g}"
