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

from calmerge.coords import Weights
from calmerge.errors import ConfigError
from calmerge.registry import Registry

#: builder(base, aligned, λ, density) -> (models, method parameters) of the MergeConfig
Builder = Callable[[str, str, float, float], tuple[list[dict[str, Any]], dict[str, Any]]]
#: simplex builder(paths, weights) -> (models, method parameters): the merge of N ≥ 3 models
#: at one weight vector (`coords.Weights`; the paths in the weights' order)
SimplexBuilder = Callable[[list[str], "Weights"], tuple[list[dict[str, Any]], dict[str, Any]]]


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
    #: how the family merges N ≥ 3 models at a weight vector (None: not a simplex family).
    #: `task_vectors`: the first model is the origin and the weights are the others'
    #: coefficients (λ_i ≥ 0, Σ free); otherwise every model has a weight and they sum to 1
    simplex: SimplexBuilder | None = None
    task_vectors: bool = False


FAMILIES: Registry[Family] = Registry("merge family")


def family(name: str, method: str | None = None, **spec: Any) -> Callable[[Builder], Builder]:
    """Register `builder` as the λ-family `name` (running merge method `method`, default name)."""

    def deco(fn: Builder) -> Builder:
        FAMILIES.add(name, Family(name, method or name, fn, doc=(fn.__doc__ or "").strip(),
                                  **spec))
        return fn

    return deco


def _simplex_linear(paths: list[str], weights: Weights):
    """Σ w_i θ_i over every model, Σ w_i = 1 (mergekit's linear, normalised as it is by
    default, so a vector that sums to 1 is used as given)."""
    return [
        {"model": path, "parameters": {"weight": w}}
        for path, (_, w) in zip(paths, weights, strict=True)
    ], {}


def _simplex_task_arithmetic(paths: list[str], weights: Weights):
    """θ_base + Σ λ_i (θ_i − θ_base): every non-base model a task vector with weight λ_i
    (the Personalized-Soups mix); the base is the config's `base`, the first path."""
    return [
        {"model": path, "parameters": {"weight": w}}
        for path, (_, w) in zip(paths[1:], weights, strict=True)
    ], {}


@family("linear", extrapolates=True, simplex=_simplex_linear)
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
    # TIES/DARE prune and renormalise task vectors per tensor, so a weight vector over several
    # models has no single meaning to sweep; task arithmetic is the plain soup
    _soup = {"simplex": _simplex_task_arithmetic, "task_vectors": True}
    family(_name, uses_density=True, uses_seed=_seeded,
           **(_soup if _name == "task_arithmetic" else {}))(_task_vector)


def simplex_families() -> list[str]:
    """The families a simplex sweep can run (those with a simplex form)."""
    return [n for n in FAMILIES.names() if FAMILIES.get(n).simplex is not None]


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


def simplex_settings(
    name: str, base: str | Path, paths: list[str | Path], weights: Weights
) -> dict[str, Any]:
    """The MergeConfig fields of family `name` at a simplex point over `paths` (in the
    weights' order; `base` is the first, the origin of task-vector families)."""
    fam = get_family(name)
    if fam.simplex is None:
        raise ConfigError(
            f"family '{name}' has no simplex form",
            f"a sweep over several models runs one of: {', '.join(simplex_families())}",
        )
    for model, w in weights:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise ConfigError(f"weight '{w}' of {model} is not a finite number", "use e.g. 0.3")
    models, params = fam.simplex([str(p) for p in paths], weights)
    return {"method": fam.method, "base": str(base), "seed": 0, "models": models,
            "parameters": params}
