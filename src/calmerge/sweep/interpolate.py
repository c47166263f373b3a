"""θ(λ) on one live model, rewritten in place from the parents for every sweep point.

Why in place: writing each merge to disk and reloading it (the mergekit + lm-eval pipeline)
costs a full checkpoint write and read per point. Here the model is loaded once; for each point
every parameter is recomputed from the two parents, tensor by tensor, straight into the
parameter's storage. Parents are read from their mmap'd safetensors files, so the resident
memory is one model plus a couple of tensors.

The arithmetic is the merge engine's: compute in `compute_dtype` (fp32 by default), cast to the
live parameter's dtype, so a sweep point's weights equal `calmerge merge` at the same λ.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from calmerge.errors import CheckpointError
from calmerge.io.checkpoint import Checkpoint

TensorFn = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


def pad_vocab_rows(base: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
    """Give `base` the aligned vocabulary size: rows past the base vocab come from aligned.

    Aligned models often add chat special tokens; those rows have no base counterpart, so every
    merge keeps the aligned model's rows for them (the user is told when the pair is validated).
    """
    if base.shape == aligned.shape:
        return base
    if base.dim() >= 1 and base.shape[1:] == aligned.shape[1:] and base.shape[0] < aligned.shape[0]:
        return torch.cat([base, aligned[base.shape[0] :].to(base.dtype)], dim=0)
    raise CheckpointError(
        f"shape mismatch: base {tuple(base.shape)} vs aligned {tuple(aligned.shape)}",
        "the two models must share an architecture",
    )


def linear_fn(lam: float) -> TensorFn:
    """θ_base + λ·(θ_aligned − θ_base) for any real λ, as the merge engine computes it.

    The engine's `linear` (mergekit's definition: Σ w_i·θ_i with weights (1−λ, λ), divided by
    their sum) is used rather than `torch.lerp`, because the two round differently and a sweep
    point must be bit for bit the checkpoint `calmerge merge`/`export` writes for that λ.
    """
    from calmerge.merge.methods import Group, get_method

    method = get_method("linear")
    weights = [1.0 - float(lam), float(lam)]

    def fn(name: str, base: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        return method(Group((base, aligned), name=name), weight=weights)

    return fn


class LiveInterpolator:
    """Rewrites the parameters of `model` to θ(λ) between two checkpoints, in place."""

    def __init__(
        self,
        model: torch.nn.Module,
        base: Checkpoint,
        aligned: Checkpoint,
        *,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model = model
        self.base = base
        self.aligned = aligned
        self.compute_dtype = compute_dtype
        self._params = self._map_parameters()

    def _map_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Pair every (deduplicated, so tied weights once) live parameter with a checkpoint name."""
        names = set(self.aligned.tensor_names)
        pairs = []
        for name, param in self.model.named_parameters():
            if name not in names:
                raise CheckpointError(
                    f"{self.aligned.path}: parameter '{name}' of the loaded model is not in the"
                    " checkpoint",
                    "the checkpoint and its config disagree; re-save it with save_pretrained",
                )
            pairs.append((name, param))
        return pairs

    @torch.no_grad()
    def apply(self, fn: TensorFn) -> None:
        """Set every parameter to fn(name, base, aligned), computed in `compute_dtype`."""
        for name, param in self._params:
            aligned = self.aligned.get(name).to(self.compute_dtype)
            base = self.base.get(name).to(self.compute_dtype)
            base = pad_vocab_rows(base, aligned)
            merged = fn(name, base, aligned)
            param.copy_(merged.to(device=param.device, dtype=param.dtype))
            del base, aligned, merged

    def set_lambda(self, lam: float) -> None:
        """Linear interpolation θ(λ)."""
        self.apply(linear_fn(lam))


PAIR_FAMILIES: tuple[str, ...] = ("slerp", "ties", "dare_ties", "dare_linear")


def pair_fn(family: str, lam: float, *, density: float = 0.5, seed: int = 0) -> TensorFn:
    """A registered merge method as a λ-family between two models.

    slerp walks the sphere from base (λ=0) to aligned (λ=1). The task-vector methods use the one
    delta Δ = aligned − base with weight 1, TIES/DARE pruned to `density`, scaled by λ — so
    λ plays the same role as in linear: θ_base + λ·prune(Δ). DARE's random mask is seeded per
    tensor name, so a point's weights are reproducible and equal `calmerge merge`'s.
    """
    from calmerge.merge.engine import tensor_seed
    from calmerge.merge.methods import Group, get_method

    if family not in PAIR_FAMILIES:
        get_method(family)  # unknown names get the registry's "did you mean"
        raise ValueError(f"{family} is not a two-model family")
    method = get_method(family)

    def fn(name: str, base: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        group = Group((base, aligned), base_index=0, name=name)
        if family == "slerp":
            return method(group, t=float(lam))
        gen = torch.Generator().manual_seed(tensor_seed(seed, name))
        return method(group, gen, weight=[1.0, 1.0], density=[1.0, density], **{"lambda": lam})

    return fn
