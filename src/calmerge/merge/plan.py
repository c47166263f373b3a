"""Plan a merge: open and validate every input and resolve every tensor's parameters.

Why a separate phase: every user mistake (bad method, missing or non-finite parameter,
incompatible checkpoints, a dtype the merge does not support) is found here, before a byte is
written; `stream.execute` then only moves tensors. Planning never imports torch, so a linear
merge on the kernel road runs without it.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmerge.config import MergeConfig
from calmerge.dtypes import FLOAT_TAGS, dtype_name, merge_tag, torch_dtype
from calmerge.errors import CalmergeError, ConfigError, OutputError, did_you_mean
from calmerge.io import export
from calmerge.io.checkpoint import Checkpoint
from calmerge.io.models import open_checkpoint
from calmerge.io.validate import validate_pair
from calmerge.merge.methods import (
    REQUIRED,
    MergeMethod,
    get_method,
    resolve_setting,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Job:
    """One output tensor: its spec, resolved parameters, and rows merged vs copied."""

    spec: export.TensorSpec
    params: dict[str, Any]
    merge: bool
    common_rows: int | None = None


@dataclass
class MergePlan:
    """Everything `execute` needs, all validated."""

    config: MergeConfig
    method: MergeMethod
    inputs: list[Checkpoint]
    base_index: int | None
    ref_index: int
    compute_tag: str | None
    out_tag: str
    jobs: list[Job]
    warnings: list[str] = field(default_factory=list)

    @property
    def reference(self) -> Checkpoint:
        return self.inputs[self.ref_index]

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return None if self.compute_tag is None else torch_dtype(self.compute_tag)

    @property
    def out_dtype(self) -> torch.dtype:
        return torch_dtype(self.out_tag)

    @property
    def out_bytes(self) -> int:
        return sum(j.spec.nbytes for j in self.jobs)

    @property
    def in_bytes(self) -> int:
        return sum(c.nbytes(j.spec.name) for j in self.jobs for c in self.inputs)


# ───────────────────────────── parameters ─────────────────────────────


def _same_model(a: str, b: str) -> bool:
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def input_refs(config: MergeConfig) -> list[str]:
    """The models the merge opens, in plan order: the listed ones, then the base if unlisted."""
    refs = [m.model for m in config.models]
    if config.base and not any(_same_model(m, config.base) for m in refs):
        refs.append(config.base)
    return refs


def _check_param_keys(method: MergeMethod, settings: dict[str, Any], where: str) -> None:
    for key in settings:
        if key not in method.parameters:
            raise ConfigError(
                f"{where}: unknown parameter '{key}' for method '{method.name}'",
                did_you_mean(key, method.parameters) or f"allowed: {method.parameters}",
            )


def _nonfinite_value(setting: Any) -> float | None:
    """The first NaN/Inf in a setting (scalar, numeric string, gradient list, filter list)."""
    if isinstance(setting, dict):
        setting = setting.get("value")
    if isinstance(setting, list | tuple):
        return next((v for v in map(_nonfinite_value, setting) if v is not None), None)
    if isinstance(setting, bool) or not isinstance(setting, int | float | str):
        return None
    try:
        value = float(setting)  # "nan", "inf", "1e400" strings resolve to non-finite floats
    except (ValueError, OverflowError):
        return None
    return None if math.isfinite(value) else value


def check_finite_params(settings: dict[str, Any], who: str) -> None:
    """Refuse NaN/Inf anywhere in a parameter table (gradients and filter values included).

    A NaN weight or t would write a model of NaNs and report success: found here, before any
    checkpoint is opened or output made, it is one line naming the parameter and the model.
    """
    for key, setting in settings.items():
        bad = _nonfinite_value(setting)
        if bad is not None:
            raise ConfigError(f"parameter '{key}' of {who} is {bad}", "use a finite number")


def _has_gradient(setting: Any) -> bool:
    """Whether a setting depends on the layer position (a list of 2+ values, maybe filtered)."""
    if isinstance(setting, Mapping):
        return _has_gradient(setting.get("value"))
    if isinstance(setting, list | tuple):
        if all(isinstance(e, bool | int | float | str) for e in setting):
            return len(setting) > 1
        return any(_has_gradient(e) for e in setting)
    return False


def _resolve(
    key: str, default: Any, sources: list[dict[str, Any]], name: str, t: float, who: str
) -> Any:
    """First source (highest precedence first) giving a value for `key`, else the default."""
    for src in sources:
        if key in src:
            value = resolve_setting(src[key], name, t, key)
            if value is not None:
                check_finite_params({key: value}, f"{who} (tensor '{name}')")
                return value
    if default is REQUIRED:
        raise ConfigError(
            f"parameter '{key}' is required for {who} (tensor '{name}')",
            "set it under the model's 'parameters:' or the top-level 'parameters:'",
        )
    return default


def _tensor_params(
    plan_method: MergeMethod,
    cfg: MergeConfig,
    models: list[str],
    base_index: int | None,
    per_model: list[dict[str, Any]],
    name: str,
    t: float,
) -> dict[str, Any]:
    """Resolve every parameter of `plan_method` for one tensor (mergekit precedence)."""
    top = dict(cfg.parameters)
    params: dict[str, Any] = {}
    for key, default in plan_method.per_input.items():
        params[key] = [
            _resolve(key, default, [per_model[i], top], name, t, models[i])
            for i in range(len(models))
        ]
    for key, default in plan_method.per_delta.items():
        params[key] = [
            None
            if i == base_index
            else _resolve(key, default, [per_model[i], top], name, t, models[i])
            for i in range(len(models))
        ]
    for key, default in plan_method.shared.items():
        params[key] = _resolve(key, default, [top], name, t, "the merge")
    return params


def _validate_inputs(inputs: list[Checkpoint], base_index: int | None) -> list[str]:
    """Pairwise validation against the anchor (base, else the first model)."""
    anchor_i = base_index if base_index is not None else 0
    warnings: list[str] = []
    for i, ckpt in enumerate(inputs):
        if i != anchor_i:
            for w in validate_pair(inputs[anchor_i], ckpt).warnings:
                if w not in warnings:
                    warnings.append(w)
    return warnings


def _check_weight_sum(
    method: MergeMethod, params: dict[str, Any], base_index: int | None, name: str
) -> None:
    """Refuse weights that sum to zero where the method divides by their sum (linear with
    normalize, soup): every merged value would be ±Inf or NaN."""
    if method.name not in ("linear", "soup") or not params.get("normalize", True):
        return
    weights = params["weight"]
    used = [w for i, w in enumerate(weights) if method.name == "linear" or i != base_index]
    if not all(isinstance(w, int | float) for w in used):
        return
    total = 0.0
    for w in used:  # the method sums its weights in float32 (mergekit's arithmetic)
        total = _f32(total + _f32(float(w)))
    if total == 0:
        raise ConfigError(
            f"the {method.name} weights of tensor '{name}' sum to 0 in float32, and the merge"
            " divides by their sum (normalize)",
            "give weights with a non-zero sum or `normalize: false`; with --lam keep |λ| below"
            " ~1e7, where 1−λ and λ cancel in float32",
        )


def _f32(x: float) -> float:
    """x rounded to float32 (without importing numpy or torch)."""
    return struct.unpack("f", struct.pack("f", x))[0] if math.isfinite(x) else x


def _check_rows(inputs: list[Checkpoint], ref: Checkpoint, name: str, shape: tuple) -> None:
    """Refuse an input with more rows than the reference (the first non-base model, whose
    vocabulary, tokenizer and chat template the output gets): its added tokens would be dropped.

    `--lam` and YAMLs that list the aligned model as the reference keep the added rows (rows
    past the base vocabulary come from the reference); mergekit refuses any such YAML.
    """
    for ckpt in inputs:
        if ckpt is not ref and ckpt.shape(name)[0] > shape[0]:
            raise ConfigError(
                f"{ckpt.path}: '{name}' has {ckpt.shape(name)[0]} rows, more than the reference"
                f" model {ref.path} ({shape[0]}); the merge would drop its added vocabulary",
                "list the model with the larger vocabulary first among the non-base models (the"
                " output takes its tokenizer and chat template), or use `calmerge merge --base B"
                " --aligned A --lam X`",
            )


def _file_order(ckpt: Checkpoint, name: str) -> tuple[str, int]:
    """Read tensors in on-disk order (sequential IO); pickled checkpoints keep their order."""
    try:
        info = ckpt.info(name)
    except CalmergeError:
        return ("", ckpt.tensor_names.index(name))
    return (str(info.file), info.start)


def tensor_seed(seed: int, name: str) -> int:
    """Per-tensor seed: randomized methods give the same bits regardless of order or threads."""
    return (seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (2**63)


# ───────────────────────────── the plan ─────────────────────────────


def plan_merge(
    config: MergeConfig,
    *,
    compute_dtype: str | torch.dtype | None = None,
    out_dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    opened: Sequence[Checkpoint] = (),
) -> MergePlan:
    """Open and validate all inputs and resolve every tensor's parameters; no output yet.

    `opened`: checkpoints already open (the sweep's parents); a model whose reference is one of
    their paths reuses it instead of opening (and, for pickles, loading) it again per point.
    """
    method = get_method(config.method)
    _check_param_keys(method, config.parameters, "parameters")
    check_finite_params(config.parameters, "the merge (top-level 'parameters:')")
    for m in config.models:
        _check_param_keys(method, m.parameters, f"parameters of {m.model}")
        check_finite_params(m.parameters, f"model {m.model}")
    models = [m.model for m in config.models]
    per_model = [dict(m.parameters) for m in config.models]
    base_index = None
    if config.base is not None:
        found = [i for i, m in enumerate(models) if _same_model(m, config.base)]
        if found:
            base_index = found[0]
        else:
            models.append(config.base)
            per_model.append({})
            base_index = len(models) - 1
    elif method.needs_base:
        raise ConfigError(f"method '{method.name}' needs a base model", "set 'base:'")
    n_others = len(models) - (base_index is not None)
    if n_others < method.min_models or (method.max_models and n_others > method.max_models):
        want = (
            method.min_models
            if method.max_models == method.min_models
            else (f"at least {method.min_models}")
        )
        raise ConfigError(
            f"method '{method.name}' takes {want} non-base model(s), got {n_others}",
            "adjust 'models:'",
        )
    known = {str(c.path): c for c in opened}
    inputs = [
        known.get(m)
        or open_checkpoint(
            m, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, base=config.base
        )
        for m in models
    ]
    warnings = _validate_inputs(inputs, base_index)
    ref_index = next(i for i in range(len(models)) if i != base_index) if n_others else 0
    ref = inputs[ref_index]
    cd = (
        merge_tag(compute_dtype, "--compute-dtype")
        if compute_dtype is not None
        else merge_tag(config.compute_dtype)
    )
    od = merge_tag(out_dtype, "--out-dtype") or merge_tag(config.out_dtype) or ref.main_tag
    # t per tensor: its block within its own tower (GPT-2's `h.N`, a vision tower over the
    # vision block count), as mergekit's plan_slice numbers it; see `io.layers`
    layers = ref.layer_map
    settings = [config.parameters, *per_model]
    if any(_has_gradient(v) for s in settings for v in s.values()):
        warnings.extend(f"layer gradients: {note}" for note in layers.notes)
    jobs = []
    for name in sorted(ref.tensor_names, key=lambda n: _file_order(ref, n)):
        shape = ref.shape(name)
        is_float = ref.tag(name) in FLOAT_TAGS
        rows = min(c.shape(name)[0] for c in inputs) if shape else None
        common = rows if shape and rows != shape[0] else None
        if shape:
            _check_rows(inputs, ref, name, shape)
        t = layers.position(name)
        params = _tensor_params(method, config, models, base_index, per_model, name, t)
        if is_float:
            _check_weight_sum(method, params, base_index, name)
        jobs.append(
            Job(
                spec=export.TensorSpec(name, od if is_float else ref.tag(name), shape),
                params=params,
                merge=is_float,
                common_rows=common,
            )
        )
    return MergePlan(config, method, inputs, base_index, ref_index, cd, od, jobs, warnings)


def overflow_error(plan: MergePlan, job: Job) -> OutputError:
    """The one error for a merged tensor that would hold Inf/NaN although its inputs are
    finite (torch path and kernel road alike): refused, never written."""
    compute = dtype_name(plan.compute_tag) if plan.compute_tag else "the input dtype"
    return OutputError(
        f"merged tensor '{job.spec.name}' would hold Inf/NaN: the {plan.method.name} merge"
        f" overflows ({compute} arithmetic, {dtype_name(job.spec.tag)} output); nothing was"
        " written",
        "use a smaller λ or weights, or a wider --out-dtype such as float32",
    )
