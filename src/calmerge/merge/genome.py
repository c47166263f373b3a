"""Search spaces: how a short vector of coefficients (a genome) becomes a per-layer merge.

One global λ treats every layer alike. A genome holds K *anchor* values of λ spread over the
depth, which the merge interpolates to every block exactly as mergekit interpolates a gradient
(`weight: [v0, …, vK-1]` evaluated at the block's position t = i/(L−1), embeddings and the head
at t = 0; `merge.plan` does it, tested bit for bit against mergekit). So a candidate *is* an
ordinary mergekit config: θ = (1 − λ(t))·θ_base + λ(t)·θ_aligned, written with `linear` and
complementary gradients, and `calmerge export` of it writes the YAML mergekit reproduces.

Spaces (registry `SPACES`, the name's argument is K):
- `blocks:K` — one gradient of K anchors for every tensor (genes b0 … bK-1);
- `attn-mlp:K` — one gradient for the attention tensors (names with `attn`), one for the MLP
  (`mlp`), and one value for everything else (embeddings, norms, head): genes a0 …, m0 …,
  rest. Filters are substrings of the tensor name, first match wins, as in mergekit.

No torch, no numpy: configs validate spaces before any work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from calmerge.errors import ConfigError
from calmerge.registry import Registry

#: decimals a gene is rounded to before it is used: a candidate is a store key, and the same
#: genome must name the same candidate on every run (a resumed search replays the algorithm)
GENE_DECIMALS = 4


@dataclass(frozen=True)
class Space:
    """A registered space at one K: its gene names and how genes become λ settings."""

    kind: str
    k: int
    genes: tuple[str, ...]
    #: genome -> the aligned model's `weight` setting (a scalar, a gradient list, or filters)
    setting: Callable[[Sequence[float]], Any]
    doc: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.k}"


#: kind -> builder(K) -> Space
SPACES: Registry[Callable[[int], Space]] = Registry("search space")


def _gradient(values: Sequence[float]) -> Any:
    """One value as a scalar (a 1-anchor gradient is a constant), several as a gradient."""
    vals = [float(v) for v in values]
    return vals[0] if len(vals) == 1 else vals


@SPACES.register("blocks")
def _blocks(k: int) -> Space:
    """K anchors of λ across depth, the same for every tensor of a block."""
    return Space("blocks", k, tuple(f"b{i}" for i in range(k)), _gradient,
                 doc="one λ gradient of K anchors for every tensor")


@SPACES.register("attn-mlp")
def _attn_mlp(k: int) -> Space:
    """K anchors for attention, K for the MLP, one value for the rest."""

    def setting(g: Sequence[float]) -> Any:
        return [
            {"filter": "attn", "value": _gradient(g[:k])},
            {"filter": "mlp", "value": _gradient(g[k : 2 * k])},
            {"value": float(g[2 * k])},
        ]

    genes = (*(f"a{i}" for i in range(k)), *(f"m{i}" for i in range(k)), "rest")
    return Space("attn-mlp", k, genes, setting,
                 doc="λ gradients of K anchors for attention and for the MLP, one λ for the rest")


_SPEC = re.compile(r"^(?P<kind>[a-z][a-z-]*):(?P<k>\d+)$")


def parse_space(spec: str) -> Space:
    """`blocks:8` → its Space; one line for a malformed or unknown one."""
    m = _SPEC.match(str(spec).strip())
    if m is None:
        raise ConfigError(
            f"search space '{spec}' is not KIND:K",
            f"e.g. blocks:8 or attn-mlp:4 (kinds: {', '.join(SPACES.names())})",
        )
    k = int(m["k"])
    if not 1 <= k <= 128:
        raise ConfigError(f"search space '{spec}': K={k}", "use 1 to 128 anchors")
    return SPACES.get(m["kind"])(k)


def check_layers(space: Space, n_layers: int, where: str) -> None:
    """A gradient of more anchors than the model has blocks would place anchors between
    blocks that no tensor sits at: refused, naming both counts."""
    if space.k > n_layers:
        raise ConfigError(
            f"search space {space.name}: {space.k} anchors but {where} has {n_layers} layers",
            f"use at most {n_layers} anchors (e.g. {space.kind}:{min(n_layers, 4)})",
        )


def round_genome(genome: Sequence[float], lower: float = 0.0, upper: float = 1.0) -> tuple:
    """Genes clipped to the bounds and rounded to GENE_DECIMALS: the candidate's identity."""
    return tuple(round(min(max(float(g), lower), upper), GENE_DECIMALS) + 0.0 for g in genome)


def candidate_settings(space: Space, base: str, aligned: str, genome: Sequence[float]) -> dict:
    """The MergeConfig fields of a candidate: `linear` over (base, aligned) with the aligned
    model's weight λ(t) from the genome and the base's 1 − λ(t) (same filters, same anchors),
    so every tensor is (1 − λ)·θ_base + λ·θ_aligned at its own λ."""
    if len(genome) != len(space.genes):
        raise ConfigError(
            f"a {space.name} genome has {len(space.genes)} genes, not {len(genome)}",
            f"genes: {', '.join(space.genes)}",
        )
    lam = space.setting(genome)
    return {
        "method": "linear",
        "base": str(base),
        "seed": 0,
        "models": [
            {"model": str(base), "parameters": {"weight": complement(lam)}},
            {"model": str(aligned), "parameters": {"weight": lam}},
        ],
        "parameters": {},
    }


def complement(setting: Any) -> Any:
    """1 − λ for a scalar, a gradient list or a filter list, keeping its structure (and its
    rounding: 1 − 0.3 is written as 0.7, so the YAML reads as the user would write it)."""
    if isinstance(setting, dict):
        return {**setting, "value": complement(setting["value"])}
    if isinstance(setting, list):
        return [complement(s) for s in setting]
    return round(1.0 - float(setting), GENE_DECIMALS + 2) + 0.0
