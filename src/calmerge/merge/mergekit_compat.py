"""Read a mergekit YAML (0.1.x schema) into our `MergeConfig`.

The schema is validated with the same strictness as ours (unknown key → one line with the
closest key), and the parts calmerge does not implement (slices, modules, tokenizer surgery)
are refused by name rather than silently ignored. Dtype semantics stay mergekit's: without
`dtype` the merge computes in the inputs' own dtype, and without `out_dtype` it writes `dtype`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calmerge.config import Frozen, MergeConfig, load_yaml, validate
from calmerge.dtypes import MergeDtype
from calmerge.errors import ConfigError


class MergekitModel(Frozen):
    model: str
    parameters: dict[str, Any] | None = None


class MergekitConfig(Frozen):
    """mergekit's MergeConfiguration, minus nothing: unsupported keys are refused later."""

    merge_method: str
    base_model: str | None = None
    models: list[MergekitModel] | None = None
    slices: list[Any] | None = None
    modules: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    dtype: MergeDtype | None = None
    out_dtype: MergeDtype | None = None
    tokenizer_source: str | None = None
    tokenizer: dict[str, Any] | None = None
    chat_template: str | None = None


_UNSUPPORTED = {
    "slices": "layer slicing (frankenmerges) is not supported; use 'models:'",
    "modules": "multi-module configs are not supported; use 'models:'",
    "tokenizer": "tokenizer surgery is not supported; use 'tokenizer_source: base' or a model",
    "chat_template": "calmerge always writes the aligned (first non-base) model's chat template",
}


def load_merge_config(path: Path) -> MergeConfig:
    """Read our merge YAML, or a mergekit YAML (recognised by its `merge_method` key)."""
    data = load_yaml(path)
    if "merge_method" in data:
        return from_mergekit(data, str(path))
    return validate(MergeConfig, data, str(path))


def from_mergekit(data: dict[str, Any], source: str) -> MergeConfig:
    """Validate `data` as mergekit YAML and convert it; one-line ConfigError on problems."""
    mk: MergekitConfig = validate(MergekitConfig, data, source)
    for key, why in _UNSUPPORTED.items():
        if getattr(mk, key) is not None:
            raise ConfigError(f"{source}: '{key}' is not supported", why)
    if not mk.models:
        raise ConfigError(f"{source}: 'models' is required", "list the input models")
    if mk.tokenizer_source == "union":
        raise ConfigError(
            f"{source}: 'tokenizer_source: union' is not supported",
            "use 'base' or a model path",
        )
    tok = mk.tokenizer_source
    if tok == "base":
        tok = mk.base_model
    converted = {
        "method": mk.merge_method,
        "base": mk.base_model,
        "models": [{"model": m.model, "parameters": m.parameters or {}} for m in mk.models],
        "parameters": mk.parameters or {},
        "compute_dtype": mk.dtype,
        "out_dtype": mk.out_dtype or mk.dtype,
        "tokenizer_source": tok,
    }
    return validate(MergeConfig, converted, source)


#: the file a merge writes its recipe to in mergekit's schema (the name mergekit itself uses)
MERGEKIT_FILE = "mergekit_config.yml"


def to_mergekit(config: MergeConfig) -> dict[str, Any]:
    """Our MergeConfig in mergekit's schema — what `from_mergekit` reads back to the same
    config, and what `mergekit-yaml` runs to reproduce the merge (same method names and
    parameters; `dtype` is the compute dtype, as in mergekit). The randomized methods (DARE)
    draw their masks from calmerge's seeded generator, which mergekit does not reproduce."""
    out: dict[str, Any] = {"merge_method": config.method}
    if config.base:
        out["base_model"] = config.base
    out["models"] = [
        {"model": m.model, **({"parameters": dict(m.parameters)} if m.parameters else {})}
        for m in config.models
    ]
    if config.parameters:
        out["parameters"] = dict(config.parameters)
    if config.compute_dtype:
        out["dtype"] = config.compute_dtype
    if config.out_dtype:
        out["out_dtype"] = config.out_dtype
    if config.tokenizer_source:
        out["tokenizer_source"] = config.tokenizer_source
    return out
