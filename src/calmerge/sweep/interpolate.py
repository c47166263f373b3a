"""θ(λ) on one live model, rewritten in place from the parents for every sweep point.

Why in place: writing each merge to disk and reloading it (the mergekit + lm-eval pipeline)
costs a full checkpoint write and read per point. Here the model is loaded once; for each point
every parameter is recomputed from the two parents, tensor by tensor, straight into the
parameter's storage. Parents are read from their safetensors files, so the resident memory is
one model plus a couple of tensors.

Why no arithmetic of its own: a point is the family's `MergeConfig` (`merge.families`, validated by `merge.engine.pair_config`), planned
against the live parameters' dtype and computed by the merge engine's per-tensor function
(`merge.stream.merge_one`). `calmerge merge`/`export` of the same point runs the same config
through the same function, so the sweep and the export cannot drift apart.
"""

from __future__ import annotations

import torch

from calmerge.dtypes import dtype_name
from calmerge.errors import CheckpointError
from calmerge.io.checkpoint import Checkpoint
from calmerge.merge.engine import pair_config
from calmerge.merge.plan import plan_merge
from calmerge.merge.stream import merge_one


class LiveInterpolator:
    """Rewrites the parameters of `model` to a family's θ(λ) between two checkpoints, in place.

    `density` and `seed` are the sweep's settings for the task-vector families (pruning and
    DARE's masks); `compute_dtype` is the merge's compute dtype (fp32, as `calmerge merge`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        base: Checkpoint,
        aligned: Checkpoint,
        *,
        density: float = 1.0,
        seed: int = 0,
        compute_dtype: str = "float32",
    ) -> None:
        self.model = model
        self.base = base
        self.aligned = aligned
        self.density = density
        self.seed = seed
        self.compute_dtype = compute_dtype
        self._params = self._map_parameters()
        dtypes = {p.dtype for _, p in self._params}
        self._out_dtype = dtype_name(next(iter(dtypes))) if len(dtypes) == 1 else None

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
    def apply(self, family: str, lam: float) -> None:
        """Set every parameter to the weights `calmerge merge` writes for (family, λ)."""
        config = pair_config(
            self.base.path, self.aligned.path, lam, method=family, density=self.density,
            seed=self.seed, compute_dtype=self.compute_dtype, out_dtype=self._out_dtype,
        )
        plan = plan_merge(config, opened=[self.base, self.aligned])
        jobs = {job.spec.name: job for job in plan.jobs}
        for name, param in self._params:
            job = jobs[name]
            tensors = [ckpt.get(name) for ckpt in plan.inputs]
            in_place = (
                param.device.type == "cpu"
                and param.dtype == job.spec.dtype
                and tuple(param.shape) == job.spec.shape
            )
            target = param.data if in_place else None
            merged = merge_one(plan, job, tensors, out=target)
            if merged is not target:  # another device or dtype, or a copied non-float tensor
                param.copy_(merged.to(device=param.device, dtype=param.dtype))
            del tensors, merged, target
