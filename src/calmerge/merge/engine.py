"""The merge's public entry points: run a config, or θ(λ) between two models, into a directory.

Why so thin: the work lives in one module per job — `plan` validates everything and resolves
every parameter before a byte is written, `stream` moves tensors (torch path), `fastpath` the
kernel road for linear/soup merges without torch. This module adds what a finished model needs
around the tensors: output checks, the atomic temporary directory, config, tokenizer and model
card.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmerge.config import MergeConfig
from calmerge.coords import Weights
from calmerge.dtypes import dtype_name, merge_tag, resolve_device
from calmerge.errors import OutputError
from calmerge.io import export, outputs
from calmerge.io.models import open_tokenizer_source
from calmerge.merge.families import family_settings, simplex_settings
from calmerge.merge.mergekit_compat import MERGEKIT_FILE, load_merge_config, to_mergekit
from calmerge.merge.plan import MergePlan, _same_model, input_refs, plan_merge
from calmerge.merge.stream import execute

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MergeResult:
    path: Path
    seconds: float
    bytes_read: int
    bytes_written: int
    warnings: list[str]


def recipe(plan: MergePlan) -> dict[str, Any]:
    """The merge as a config dict (for the model card)."""
    data = plan.config.model_dump(mode="json", exclude_defaults=False)
    data["compute_dtype"] = dtype_name(plan.compute_tag) if plan.compute_tag else "input dtype"
    data["out_dtype"] = dtype_name(plan.out_tag)
    return data


def run_merge(
    config: MergeConfig | str | Path,
    out: str | Path,
    *,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    compute_dtype: str | torch.dtype | None = None,
    out_dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    model_card_extra: str = "",
    extra_files: dict[str, bytes] | None = None,
    quiet: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> MergeResult:
    """Validate, then merge `config` into the directory `out` (atomically). See docs/merging.md."""
    start = time.perf_counter()
    given = None if isinstance(config, MergeConfig) else Path(config)
    if given is not None:
        config = load_merge_config(given)
    out = Path(out).expanduser()
    inputs = [("merge config", given), ("tokenizer_source", config.tokenizer_source)]
    for ref in input_refs(config):
        role = "base model" if config.base and _same_model(ref, config.base) else "input model"
        inputs += outputs.model_inputs(role, ref, config.base)
    outputs.check_not_input(out, inputs, "-o")
    shard_bytes = export.parse_size(max_shard_size)
    device = resolve_device(device)
    export.check_output(out, force=force)
    plan = plan_merge(
        config,
        compute_dtype=compute_dtype,
        out_dtype=out_dtype,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    for w in plan.warnings:
        if on_warning:
            on_warning(w)
    export.check_output(out, force=force, needed_bytes=plan.out_bytes)
    ref = plan.reference
    tok = ref
    if config.tokenizer_source:  # before any work: only its tokenizer files, never its weights
        tok = next(
            (
                c
                for c, m in zip(plan.inputs, input_refs(config), strict=True)
                if _same_model(m, config.tokenizer_source)
            ),
            None,
        ) or open_tokenizer_source(config.tokenizer_source)
    tmp = export.make_temp_dir(out)
    try:
        execute(plan, tmp, max_shard_size=shard_bytes, device=device, quiet=quiet)
        export.write_config(tmp, ref, dtype_name(plan.out_tag))
        export.copy_tokenizer(tmp, tok, ref)
        card = export.model_card(recipe(plan), base=config.base, extra=model_card_extra)
        (tmp / "README.md").write_text(card)
        import yaml

        written = config.model_copy(update={"out_dtype": dtype_name(plan.out_tag)})
        (tmp / MERGEKIT_FILE).write_text(
            "# the recipe in mergekit's schema: `mergekit-yaml " + MERGEKIT_FILE + " OUT`\n"
            + yaml.safe_dump(to_mergekit(written), sort_keys=False)
        )
        for rel, data in (extra_files or {}).items():  # e.g. figures the model card shows
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        export.commit_dir(tmp, out)
    except OSError as exc:  # full disk, quota, file-size limit, I/O error while writing
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(
            f"{out}: writing failed ({exc.strerror or exc}); nothing was written",
            "free disk space or choose another output directory",
        ) from None
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(
        out, time.perf_counter() - start, plan.in_bytes, plan.out_bytes, plan.warnings
    )


def pair_config(
    base: str | Path,
    aligned: str | Path,
    lam: float,
    *,
    method: str = "linear",
    density: float = 1.0,
    seed: int = 0,
    compute_dtype: str | torch.dtype | None = "float32",
    out_dtype: str | torch.dtype | None = None,
) -> MergeConfig:
    """The merge of λ-family `method` at λ between two models, as a validated MergeConfig.

    The family registry (`merge.families`) says how λ enters the method's config; the sweep's
    live interpolator plans this same config, so a sweep point and its export are one code path.
    """
    cd, od = merge_tag(compute_dtype), merge_tag(out_dtype)
    return MergeConfig(
        **family_settings(method, base, aligned, lam, density=density, seed=seed),
        compute_dtype=dtype_name(cd) if cd else None,
        out_dtype=dtype_name(od) if od else None,
    )


def simplex_config(
    paths: Sequence[str | Path],
    weights: Weights,
    *,
    method: str = "linear",
    compute_dtype: str | torch.dtype | None = "float32",
    out_dtype: str | torch.dtype | None = None,
) -> MergeConfig:
    """The merge of family `method` at a simplex point over N models (`paths` in the weights'
    order, the first the base), as a validated MergeConfig: what a simplex sweep's live model
    holds at that point and what `calmerge export` writes for it."""
    cd, od = merge_tag(compute_dtype), merge_tag(out_dtype)
    return MergeConfig(
        **simplex_settings(method, paths[0], list(paths), weights),
        compute_dtype=dtype_name(cd) if cd else None,
        out_dtype=dtype_name(od) if od else None,
    )


def merge_simplex(
    paths: Sequence[str | Path],
    weights: Weights,
    out: str | Path,
    *,
    method: str = "linear",
    compute_dtype: str | torch.dtype | None = "float32",
    out_dtype: str | torch.dtype | None = None,
    **write: Any,
) -> Path:
    """The merge of family `method` at a simplex point written to `out` (`write`: `run_merge`'s
    output options: force, max_shard_size, model_card_extra, extra_files, …); returns the path."""
    config = simplex_config(
        paths, weights, method=method, compute_dtype=compute_dtype, out_dtype=out_dtype
    )
    return run_merge(config, out, **{"quiet": True, **write}).path


def merge_pair(
    base: str | Path,
    aligned: str | Path,
    lam: float,
    out: str | Path,
    *,
    method: str = "linear",
    density: float = 1.0,
    seed: int = 0,
    compute_dtype: str | torch.dtype | None = "float32",
    out_dtype: str | torch.dtype | None = None,
    force: bool = False,
    model_card_extra: str = "",
    extra_files: dict[str, bytes] | None = None,
    max_shard_size: str | int = "5GB",
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    quiet: bool = True,
    on_warning: Callable[[str], None] | None = None,
) -> Path:
    """The merge of family `method` at λ (linear: θ_base + λ(θ_aligned − θ_base), any real λ)
    written to `out`; returns the path."""
    config = pair_config(
        base, aligned, lam, method=method, density=density, seed=seed,
        compute_dtype=compute_dtype, out_dtype=out_dtype,
    )
    return run_merge(
        config,
        out,
        force=force,
        max_shard_size=max_shard_size,
        model_card_extra=model_card_extra,
        extra_files=extra_files,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        quiet=quiet,
        on_warning=on_warning,
    ).path
