"""θ(λ) on one live model, rewritten in place from the parents for every sweep point.

Why in place: writing each merge to disk and reloading it (the mergekit + lm-eval pipeline)
costs a full checkpoint write and read per point. Here the model is loaded once; for each point
every parameter is recomputed from the two parents, tensor by tensor, straight into the
parameter's storage, on the parameter's own device. Where the parents live between points
(held in memory when they fit, else streamed) is `sweep.parents`' choice; parameters accelerate
offloaded are rewritten through `sweep.offload`.

Why no arithmetic of its own: a point is the family's `MergeConfig` (`merge.families`,
validated by `merge.engine.pair_config`), planned against the live parameters' dtype and
computed by the merge engine's per-tensor function (`merge.stream.merge_one`). `calmerge
merge`/`export` of the same point runs the same config through the same function, so the sweep
and the export cannot drift apart.

Why transformers' renaming: the plan is keyed by checkpoint names, the live model by the names
transformers gives parameters after its load-time key conversion (`conversion_mapping`;
Gemma-3 4B–27B: `language_model.model.…` on disk, `model.language_model.…` live). Each live
parameter is paired with its tensor by running that same conversion on the checkpoint's names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from calmerge.dtypes import dtype_name
from calmerge.errors import CheckpointError
from calmerge.io.checkpoint import Checkpoint
from calmerge.merge.engine import pair_config, simplex_config
from calmerge.merge.plan import plan_merge
from calmerge.merge.stream import merge_one
from calmerge.sweep.offload import OffloadScratch, offloaded_loaders
from calmerge.sweep.parents import ParentSource, choose_placement

if TYPE_CHECKING:
    from calmerge.config import MergeConfig
    from calmerge.coords import Weights


class LiveInterpolator:
    """Rewrites the parameters of `model` to a family's θ(λ) between two checkpoints, in place.

    `density` and `seed` are the sweep's settings for the task-vector families (pruning and
    DARE's masks); `compute_dtype` is the merge's compute dtype (fp32, as `calmerge merge`).
    `parents` says where the parent tensors live between points (`sweep.parents`: auto,
    resident, streamed); `free` overrides the measured free memory per device (tests).

    Devices: each parameter is merged on its own device (a GPU's arithmetic for a model on the
    GPU, each GPU's for a model dispatched over several). Randomized families (DARE) are merged
    on the CPU wherever the model is, so their masks come from the same generator as
    `calmerge merge`'s. Parameters accelerate offloaded (`--device-map` with too little device
    memory) are merged on the CPU into scratch files of ours (`sweep.offload`), never into the
    checkpoint files the dispatch reads them from.
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
        parents: str = "auto",
        free: dict[str, int] | None = None,
        others: Sequence[Checkpoint] = (),
    ) -> None:
        self.model = model
        self.base = base
        self.aligned = aligned
        #: every checkpoint a point may mix: the pair, then a simplex sweep's other models
        self.held = [base, aligned, *others]
        self.density = density
        self.seed = seed
        self.compute_dtype = compute_dtype
        self._params = self._map_parameters()
        dtypes = {p.dtype for _, p in self._params}
        self._out_dtype = dtype_name(next(iter(dtypes))) if len(dtypes) == 1 else None
        self._scratch = OffloadScratch(model) if offloaded_loaders(model) else None
        live = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        # checkpoint name -> writable CPU view of an offloaded parameter (by name: accelerate's
        # hooks swap the Parameter objects of offloaded modules at every forward)
        self._views = {}
        if self._scratch is not None:
            for name, param in self._params:
                if param.device.type == "meta":
                    self._views[name] = self._scratch.view(live[id(param)])
        order = [(name, self._device(param)) for name, param in self._params]
        need: dict[str, int] = {}
        for name, device in order:
            need[device] = need.get(device, 0) + sum(c.nbytes(name) for c in self.held)
        self.placement = choose_placement(
            parents, need, offloaded=self._scratch is not None, free=free
        )
        self._source = ParentSource(self.held, order, self.placement)

    @staticmethod
    def _device(param: torch.nn.Parameter) -> str:
        """Where a parameter is merged: its own device, the CPU for an offloaded one."""
        return "cpu" if param.device.type == "meta" else str(param.device)

    def close(self) -> None:
        """Remove the scratch copies of offloaded parameters (the model cannot run after)."""
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None

    def _map_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Pair every live parameter (tied weights once) with its checkpoint tensor's name.

        The names differ where transformers renames keys on load (Gemma-3 and other multimodal
        `…ForConditionalGeneration` layouts, a base-model prefix added or dropped): the pairing
        is transformers' own load-time renaming (`checkpoint_names`), never a table of ours.
        Plan jobs are keyed by checkpoint names, so `apply` looks each parameter up by its pair.
        """
        names = self.aligned.tensor_names
        to_ckpt = checkpoint_names(self.model, names)
        tied_targets = set(getattr(self.model, "all_tied_weights_keys", None) or {})
        aliases: dict[int, list[str]] = {}
        params: dict[int, torch.nn.Parameter] = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(param), []).append(name)
            params[id(param)] = param
        pairs = []
        for key, live_names in aliases.items():
            # a tied weight is stored once, under the tie's source (embed_tokens, not lm_head)
            ordered = sorted(live_names, key=lambda n: n in tied_targets)
            found = next((to_ckpt[n] for n in ordered if to_ckpt.get(n)), None)
            if found is None:
                raise _unpaired(self.model, self.aligned, ordered, to_ckpt)
            pairs.append((found, params[key]))
        return pairs

    def apply(self, family: str, lam: float) -> None:
        """Set every parameter to the weights `calmerge merge` writes for (family, λ)."""
        self.apply_config(pair_config(
            self.base.path, self.aligned.path, lam, method=family, density=self.density,
            seed=self.seed, compute_dtype=self.compute_dtype, out_dtype=self._out_dtype,
        ))

    def apply_weights(self, family: str, paths: Sequence[str], weights: Weights) -> None:
        """Set every parameter to the weights `calmerge merge` writes for a simplex point
        (`paths`: the models in the weights' order, all among the held checkpoints)."""
        self.apply_config(simplex_config(
            paths, weights, method=family, compute_dtype=self.compute_dtype,
            out_dtype=self._out_dtype,
        ))

    @torch.no_grad()
    def apply_config(self, config: MergeConfig) -> None:
        """Set every parameter to what `calmerge merge` writes for `config` (whose models are
        all among the held checkpoints): planned against the live dtype, merged per tensor by
        the engine's own function."""
        plan = plan_merge(config, opened=self.held)
        jobs = {job.spec.name: job for job in plan.jobs}
        held = self.held
        indices = [next(i for i, c in enumerate(held) if c is ckpt) for ckpt in plan.inputs]
        stream = self._source.tensors(indices)
        # the source serves the parameters in this same order (it was built from it)
        for (name, param), (_, device, tensors) in zip(self._params, stream, strict=True):
            job = jobs[name]
            compute = "cpu" if plan.method.randomized else device  # DARE: merge's generator
            view = self._views.get(name)
            target = view if view is not None else param.data
            in_place = (
                target.device == torch.device(compute)
                and target.dtype == job.spec.dtype
                and tuple(target.shape) == job.spec.shape
            )
            out = target if in_place else None
            merged = merge_one(plan, job, tensors, device=compute, out=out)
            if merged is not out:  # another device or dtype, or a copied non-float tensor
                target.copy_(merged.to(device=target.device, dtype=target.dtype))
            del tensors, merged, out


def _conversions(model: torch.nn.Module) -> tuple[list[Any], list[Any]] | None:
    """(renamings, converters) transformers applies to checkpoint keys when loading `model`.

    `get_model_conversion_mapping` is what `from_pretrained` itself calls (transformers ≥ 5),
    and what `save_pretrained` reverses; None on older transformers, whose renaming is the
    class's `_checkpoint_conversion_mapping` (regex → replacement).
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:
        return None
    rules = get_model_conversion_mapping(model)
    return (
        [r for r in rules if isinstance(r, WeightRenaming)],
        [r for r in rules if isinstance(r, WeightConverter)],
    )


def checkpoint_names(model: torch.nn.Module, names: list[str]) -> dict[str, str | None]:
    """{live state-dict key: the checkpoint tensor it is loaded from} for checkpoint `names`.

    The renaming step of transformers' loader (`core_model_loading.
    convert_and_load_state_dict_in_model`), run on names only: every renaming rule, at most one
    converter, the base-model prefix added or stripped against the model's own keys, and the
    loader's retry of an unrenamed key the model has. A key a `WeightConverter` builds from
    several tensors (fused or split experts, qkv) maps to None: it has no one tensor to merge.
    """
    live = dict.fromkeys(model.state_dict(keep_vars=True), True)
    prefix = getattr(model, "base_model_prefix", "") or None
    out: dict[str, str | None] = {}
    conv = _conversions(model)
    if conv is None:
        mapping = getattr(model, "_checkpoint_conversion_mapping", None) or {}
        for ckpt in names:
            key = ckpt
            for pattern, repl in mapping.items():
                key, n = re.subn(pattern, repl, key)
                if n:
                    break
            if key not in live and prefix:
                if key.startswith(prefix + ".") and key[len(prefix) + 1 :] in live:
                    key = key[len(prefix) + 1 :]
                elif f"{prefix}.{key}" in live:
                    key = f"{prefix}.{key}"
            out.setdefault(key, ckpt)
        return out
    from transformers.core_model_loading import rename_source_key

    renamings, converters = conv
    for ckpt in names:
        key, converted = rename_source_key(ckpt, renamings, converters, prefix, live)
        if key not in live and ckpt in live:
            key, converted = rename_source_key(ckpt, [], [], prefix, live)
        if converted is not None:
            out[key] = None
        else:
            out.setdefault(key, ckpt)
    return out


def _unpaired(
    model: torch.nn.Module, ckpt: Checkpoint, live_names: list[str], to_ckpt: dict[str, str | None]
) -> CheckpointError:
    """One line: the live name, the name transformers would save it under, what was tried."""
    kind = type(model).__name__
    name = live_names[0]
    # a WeightConverter builds it from several checkpoint tensors (a one-to-many one names
    # only its first target, so any converted key makes this the likely story)
    if any(n in to_ckpt for n in live_names) or None in to_ckpt.values():
        return CheckpointError(
            f"{ckpt.path}: parameter '{name}' of {kind} is built by transformers from several"
            " checkpoint tensors (a WeightConverter), so the sweep cannot merge it in place",
            "merge with `calmerge merge` and evaluate the merged folder with `calmerge eval`",
        )
    expected = _saved_name(model, name)
    return CheckpointError(
        f"{ckpt.path}: parameter '{name}' of the loaded {kind} has no tensor in the checkpoint"
        f" (expected '{expected}'; tried transformers' load-time renaming of all"
        f" {len(ckpt.tensor_names)} checkpoint names and the tied-weight aliases)",
        "the checkpoint lacks weights its config asks for; compare its keys with the model's",
    )


def _saved_name(model: torch.nn.Module, name: str) -> str:
    """The name `save_pretrained` writes a live key under (`core_model_loading.
    revert_weight_conversion`'s choice of rules: those the load used, else the model's mapping
    without the legacy and prefix-change rules), or the key itself on older transformers."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            PrefixChange,
            WeightConverter,
            rename_source_key,
        )
    except ImportError:
        return name
    rules = getattr(model, "_weight_conversions", None)
    if rules is None:
        rules = get_model_conversion_mapping(model, add_legacy=False)
        rules = [r for r in rules if not isinstance(r, PrefixChange)]
    reverse = [r.reverse_transform() for r in rules[::-1]]
    converters = [r for r in reverse if isinstance(r, WeightConverter)]
    renamings = [r for r in reverse if not isinstance(r, WeightConverter)]
    return rename_source_key(name, renamings, converters, reverse=True)[0]
