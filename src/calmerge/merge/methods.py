"""Merge methods: pure tensor functions in a decorator registry, numerically mergekit 0.1.x.

Each function receives one output tensor's inputs (already cast to the compute dtype by the
engine) and returns the merged tensor in that dtype; it does no I/O. The arithmetic follows
mergekit 0.1.5 operation for operation (same accumulation order, same promotion, same
sparsification and sign election), so the same inputs give bitwise the same output. Parameters
arrive resolved for this tensor (gradients and filters are resolved in `resolve_setting`).

Parameter scopes follow mergekit: `per_input` parameters have one value per input model
(including the base, e.g. linear's `weight`); `per_delta` ones one per non-base model (task
vectors' `weight`, `density`); `shared` ones are one value for the tensor (`t`, `lambda`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are touched: the registry stays light
    import torch

from calmerge.errors import ConfigError
from calmerge.registry import Registry

REQUIRED = object()  # marker: a parameter without default must be given


@dataclass(frozen=True)
class Group:
    """The inputs of one output tensor: tensors in model order and which one is the base."""

    tensors: tuple[torch.Tensor, ...]
    base_index: int | None = None
    name: str = ""

    @property
    def base(self) -> torch.Tensor:
        assert self.base_index is not None
        return self.tensors[self.base_index]

    @property
    def others(self) -> list[int]:
        return [i for i in range(len(self.tensors)) if i != self.base_index]


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: its function plus the contract the engine and configs check.

    min_models/max_models count the non-base models. `elementwise` methods may be evaluated
    on row blocks (same bits, better cache use); the others need the whole tensor at once.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    needs_base: bool
    min_models: int = 1
    max_models: int | None = None
    per_input: dict[str, Any] = field(default_factory=dict)
    per_delta: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    randomized: bool = False
    elementwise: bool = False
    reference: str = ""

    @property
    def parameters(self) -> list[str]:
        return [*self.per_input, *self.per_delta, *self.shared]

    def __call__(self, group: Group, generator: torch.Generator | None = None, **params: Any):
        if self.randomized:
            params["generator"] = generator
        return self.fn(group, **params)


METHODS: Registry[MergeMethod] = Registry("merge method")


def merge_method(name: str, **spec: Any) -> Callable[[Callable], Callable]:
    """Register `fn` under `name` with its contract (see `MergeMethod`)."""

    def deco(fn: Callable) -> Callable:
        METHODS.add(name, MergeMethod(name=name, fn=fn, **spec))
        return fn

    return deco


def get_method(name: str) -> MergeMethod:
    """The registered method, or a ConfigError suggesting the closest name."""
    return METHODS.get(name)


# ───────────────────────────── linear family ─────────────────────────────


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """mergekit's rule: float64 stays float64, everything else accumulates in float32."""
    import torch
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool):
    import torch
    first = tensors[0]
    dtype = _work_dtype(first)
    w = torch.tensor([float(x) for x in weights], dtype=dtype)
    result = torch.zeros_like(first, dtype=dtype)
    for tensor, coef in zip(tensors, w.unbind(0), strict=True):
        result.addcmul_(tensor, coef)
    if normalize:
        result.div_(w.sum())
    return result.to(first.dtype)


@merge_method(
    "linear",
    needs_base=False,
    per_input={"weight": REQUIRED},
    shared={"normalize": True},
    elementwise=True,
    reference="https://arxiv.org/abs/2203.05482",
)
def linear(group: Group, *, weight: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """Σ w_i θ_i (÷ Σ w_i when normalize): accumulated in fp32 (fp64 stays fp64), cast back.

    With inputs (base, aligned) and weights (1−λ, λ) this is θ_base + λ·Δ for any real λ.
    """
    return _linear(group.tensors, weight, normalize)


@merge_method(
    "soup",
    needs_base=False,
    min_models=2,
    per_input={"weight": 1.0},
    elementwise=True,
    reference="https://arxiv.org/abs/2310.11564",
)
def soup(group: Group, *, weight: Sequence[float]) -> torch.Tensor:
    """Weighted average of N models sharing a base (Personalized Soups): normalised linear.

    The base (if any) only anchors validation and vocabulary; it takes part only if listed as
    a model. Weights default to 1 (uniform soup). Equal to mergekit `linear` on the same models.
    """
    tensors = [group.tensors[i] for i in group.others]
    weights = [weight[i] for i in group.others]
    return _linear(tensors, weights, normalize=True)


# ───────────────────────────── slerp ─────────────────────────────

_CHUNK_ELEMENTS = 1024 * 1024  # mergekit's chunk: also fixes the fp summation order of norms


def slerp_tensors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8
) -> torch.Tensor:
    """Spherical interpolation of the whole tensor viewed as one vector (mergekit's slerp).

    Near-colinear or antipodal pairs (|cos| > dot_threshold) fall back to linear
    interpolation; norms below eps are treated as 1. Norms and the dot product are summed chunk
    by chunk exactly like mergekit so results agree bitwise.
    """
    import torch
    dtype = _work_dtype(v0)
    a = v0.reshape(1, -1)
    b = v1.reshape(1, -1)
    tt = torch.tensor([[float(t)]], dtype=dtype)
    if not a.shape[1]:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    chunk = _CHUNK_ELEMENTS
    starts = range(0, a.shape[1], chunk)
    norm_a = torch.linalg.vector_norm(
        torch.stack(
            [
                torch.linalg.vector_norm(a[:, s : s + chunk].to(dtype), dim=1, keepdim=True)
                for s in starts
            ]
        ),
        dim=0,
    )
    norm_b = torch.linalg.vector_norm(
        torch.stack(
            [
                torch.linalg.vector_norm(b[:, s : s + chunk].to(dtype), dim=1, keepdim=True)
                for s in starts
            ]
        ),
        dim=0,
    )
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dots = [
        ((a[:, s : s + chunk].to(dtype) / norm_a) * (b[:, s : s + chunk].to(dtype) / norm_b)).sum(
            dim=1, keepdim=True
        )
        for s in starts
    ]
    dot = torch.stack(dots).sum(dim=0).clamp(-1, 1)
    linear_mask = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear_mask, 0, dot))
    sin_theta = torch.sin(theta)
    coef_a = torch.where(linear_mask, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    coef_b = torch.where(linear_mask, tt, torch.sin(tt * theta) / sin_theta)
    result = torch.empty_like(a)
    for s in starts:
        x = a[:, s : s + chunk].to(dtype)
        y = b[:, s : s + chunk].to(dtype)
        result[:, s : s + chunk] = coef_a * x + coef_b * y
    return result.reshape(v0.shape)


@merge_method(
    "slerp",
    needs_base=True,
    min_models=1,
    max_models=1,
    shared={"t": REQUIRED},
    reference="https://en.wikipedia.org/wiki/Slerp",
)
def slerp(group: Group, *, t: float) -> torch.Tensor:
    """Slerp from the base (t=0) to the other model (t=1)."""
    (other,) = group.others
    return slerp_tensors(t, group.base, group.tensors[other])


# ───────────────────────────── task vectors: task_arithmetic, ties, dare ─────────────────────


def _rescaled(tensor: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7):
    """Apply a mask; with rescale, restore the delta's L1 norm (mergekit's RescaleNorm.l1)."""
    masked = tensor * mask
    if not rescale:
        return masked
    before, after = tensor.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def magnitude_prune(delta: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
    """Keep the `density` fraction of largest-|Δ| entries (TIES trim), at least one."""
    import torch
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    w = delta.abs().reshape(-1).float()
    mask[torch.argsort(w, descending=True)[:k]] = 1
    return _rescaled(delta, mask.reshape_as(delta), rescale)


def random_prune(
    delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """DARE: keep each entry with probability `density` (seeded generator)."""
    import torch
    if density >= 1:
        return delta
    work = torch.bfloat16 if delta.dtype == torch.bfloat16 else torch.float32
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=work), generator=generator)
    return _rescaled(delta.to(work), mask, rescale).to(delta.dtype)


def sign_consensus(deltas: torch.Tensor) -> torch.Tensor:
    """TIES sign election ('sum'): keep entries agreeing with the sign of the summed delta."""
    sign = deltas.sign().to(deltas.dtype)
    majority = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    return sign == majority


def task_vector_merge(
    group: Group,
    *,
    weight: Sequence[float | None],
    density: Sequence[float | None],
    normalize: bool,
    rescale: bool,
    lam: float,
    prune: str | None,
    consensus: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """mergekit's generalized task arithmetic: base + λ·(Σ w_i·prune(Δ_i)) [/ Σ w_i]."""
    import torch
    base = group.base
    idx = group.others
    if not idx:
        return base
    deltas = base.new_empty((len(idx), *base.shape))
    for row, i in enumerate(idx):
        delta = group.tensors[i] - base
        if prune == "magnitude":
            delta = magnitude_prune(delta, float(density[i]), rescale)
        elif prune == "random":
            delta = random_prune(delta, float(density[i]), rescale, generator)
        deltas[row] = delta
    weights = torch.tensor([float(weight[i]) for i in idx], dtype=deltas.dtype)
    while deltas.dim() > weights.dim():
        weights.unsqueeze_(-1)
    deltas.mul_(weights)
    if consensus:
        mask = sign_consensus(deltas)
        mixed = (deltas * mask).sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return (base + mixed).to(base.dtype)


def _task_method(
    name: str, *, prune: str | None, consensus: bool, normalize: bool, rescale: bool, reference: str
) -> None:
    """Register one member of the task-vector family with mergekit's defaults."""

    def fn(
        group: Group,
        *,
        weight,
        density=None,
        normalize=normalize,
        rescale=rescale,
        generator=None,
        **shared,
    ) -> torch.Tensor:
        density = density if density is not None else [1.0] * len(group.tensors)
        return task_vector_merge(
            group,
            weight=weight,
            density=density,
            normalize=normalize,
            rescale=rescale,
            lam=float(shared.get("lambda", 1.0)),
            prune=prune,
            consensus=consensus,
            generator=generator,
        )

    fn.__name__ = name
    fn.__doc__ = f"{name}: task vectors, prune={prune}, sign election={consensus} (mergekit)."
    merge_method(
        name,
        needs_base=True,
        per_delta={"weight": REQUIRED, "density": 1.0},
        shared={"normalize": normalize, "rescale": rescale, "lambda": 1.0},
        randomized=prune == "random",
        elementwise=prune is None and not consensus,
        reference=reference,
    )(fn)


_task_method(
    "task_arithmetic",
    prune=None,
    consensus=False,
    normalize=False,
    rescale=False,
    reference="https://arxiv.org/abs/2212.04089",
)
_task_method(
    "ties",
    prune="magnitude",
    consensus=True,
    normalize=True,
    rescale=False,
    reference="https://arxiv.org/abs/2306.01708",
)
_task_method(
    "dare_ties",
    prune="random",
    consensus=True,
    normalize=False,
    rescale=True,
    reference="https://arxiv.org/abs/2311.03099",
)
_task_method(
    "dare_linear",
    prune="random",
    consensus=False,
    normalize=False,
    rescale=True,
    reference="https://arxiv.org/abs/2311.03099",
)


# ───────────────────────────── parameters: scalars, gradients, filters ─────────────────────


def _as_number(value: Any, key: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(
                f"parameter '{key}': '{value}' is not a number", "use e.g. 0.5"
            ) from None
    return value


def resolve_setting(setting: Any, tensor_name: str, t: float, key: str = "") -> Any:
    """Evaluate a scalar, a gradient (list interpolated at layer position t) or filters.

    Mirrors mergekit's evaluate_setting: a list of numbers is piecewise-linear over t in [0,1];
    a list of {filter, value} picks the first whose filter is absent, '*', or a substring of the
    full tensor name (prefix included: `self_attn` also matches a vision tower's attention, as
    in mergekit, which filters on the prefixed name of each input's tensor). Returns None when no filter matches (the next, lower-precedence source wins).
    """
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, bool | int | float | str):
        return _as_number(setting, key)
    if isinstance(setting, list | tuple):
        if not setting:
            return None
        if all(isinstance(e, bool | int | float | str) for e in setting):
            values = [_as_number(e, key) for e in setting]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(values) - 1)
            i0 = int(scaled)
            i1 = min(len(values) - 1, i0 + 1)
            frac = scaled - i0
            return float((1 - frac) * values[i0] + frac * values[i1])
        for cond in setting:
            if not isinstance(cond, dict):  # a nested list, a null beside filters, …
                scalar = bool | int | float | str
                odd = next((e for e in setting if not isinstance(e, dict | scalar)), cond)
                raise ConfigError(
                    f"parameter '{key}': list entry {odd!r} is neither a number nor a "
                    "{filter, value} mapping",
                    "use a number, a list of numbers (a gradient), or a list of {filter, value}",
                )
            filt = cond.get("filter")
            if filt is None or filt == "*" or (tensor_name and filt in tensor_name):
                return resolve_setting(cond.get("value"), tensor_name, t, key)
        return None
    raise ConfigError(f"parameter '{key}': unsupported value {setting!r}", "see docs/merging.md")


def layer_position(layer: int | None, num_layers: int) -> float:
    """Gradient position t: block/(L−1) inside a tower of L blocks (1 when L = 1), 0 outside.

    mergekit's plan_slice. `layer` and `num_layers` are per tower (GPT-2's `h.N`, a vision
    tower over its own count): `io.layers.LayerMap.position` finds them from a checkpoint.
    """
    if layer is None:
        return 0.0
    return layer / (num_layers - 1) if num_layers > 1 else 1.0
