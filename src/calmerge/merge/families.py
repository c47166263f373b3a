"""λ-families: the one definition of "the merge at λ between a base and an aligned model".

A family turns (base, aligned, λ) into the fields of an ordinary `MergeConfig` of a registered
merge method (`merge.engine.pair_config` validates them). Everything that computes θ(λ) reads
that config: `calmerge merge --lam`, `calmerge export` of a sweep point, and the sweep's live
interpolator, which plans the same config against the live model's dtype and runs the engine's
own per-tensor function on it (`merge.stream.merge_one`).
So "a sweep point equals its export bit for bit" holds because both are one code path, not two
copies of θ_B + λ·prune(Δ) kept in step by hand.

Adding a family is one builder function and one registration. The module imports no config
or engine code, so `config.py` can validate family names against it before any work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calmerge.errors import ConfigError
from calmerge.registry import Registry

#: builder(base, aligned, λ, density) -> (models, method parameters) of the MergeConfig
Builder = Callable[[str, str, float, float], tuple[list[dict[str, Any]], dict[str, Any]]]


@dataclass(frozen=True)
class Family:
    """A λ-family: which merge method it runs and how λ enters its config.

    `extrapolates`: whether λ outside [0, 1] is meaningful (the sweep adds its extrapolation
    points only to such families). `uses_density`/`uses_seed`: whether the sweep's `density`
    and `seed` change its weights (so they are passed on, and recorded, only where they do).
    """

    name: str
    method: str
    build: Builder
    extrapolates: bool = False
    uses_density: bool = False
    uses_seed: bool = False
    doc: str = ""


FAMILIES: Registry[Family] = Registry("merge family")


def family(name: str, method: str | None = None, **spec: Any) -> Callable[[Builder], Builder]:
    """Register `builder` as the λ-family `name` (running merge method `method`, default name)."""

    def deco(fn: Builder) -> Builder:
        FAMILIES.add(name, Family(name, method or name, fn, doc=(fn.__doc__ or "").strip(),
                                  **spec))
        return fn

    return deco


@family("linear", extrapolates=True)
def _linear(base: str, aligned: str, lam: float, density: float):
    """θ_base + λ·(θ_aligned − θ_base): mergekit's linear with weights (1−λ, λ), any real λ."""
    return [
        {"model": base, "parameters": {"weight": 1.0 - lam}},
        {"model": aligned, "parameters": {"weight": lam}},
    ], {}


@family("slerp")
def _slerp(base: str, aligned: str, lam: float, density: float):
    """Spherical interpolation with t = λ from the base (λ=0) to the aligned model (λ=1)."""
    return [{"model": aligned}], {"t": lam}


def _task_vector(base: str, aligned: str, lam: float, density: float):
    """One task vector Δ = aligned − base with weight 1, pruned to `density`, scaled by λ:
    θ_base + λ·prune(Δ) (a weight of λ would cancel under TIES' normalisation)."""
    return [{"model": aligned, "parameters": {"weight": 1.0, "density": density}}], {"lambda": lam}


for _name, _seeded in (
    ("task_arithmetic", False), ("ties", False), ("dare_ties", True), ("dare_linear", True)
):
    family(_name, uses_density=True, uses_seed=_seeded)(_task_vector)


def get_family(name: str) -> Family:
    """The registered family, or one line with the closest name."""
    return FAMILIES.get(name)


def family_settings(
    name: str,
    base: str | Path,
    aligned: str | Path,
    lam: float,
    *,
    density: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """The MergeConfig fields (method, base, models, parameters, seed) of family `name` at λ.

    `density` prunes the task vector of the TIES/DARE families; `seed` seeds DARE's masks (per
    tensor name, so the weights do not depend on order or threads).
    """
    fam = get_family(name)
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam):
        raise ConfigError(f"λ '{lam}' is not a finite number", "use e.g. --lam 0.6")
    models, params = fam.build(str(base), str(aligned), float(lam), float(density))
    return {
        "method": fam.method,
        "base": str(base),
        "seed": int(seed) if fam.uses_seed else 0,
        "models": models,
        "parameters": params,
    }
