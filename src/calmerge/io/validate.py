"""Pair checks: is the aligned model a fine-tune of the base, and are the weights finite?

Run before any work, so a mismatch (architecture, tensor names, shapes, tied embeddings) ends
as one line naming the tensor instead of a crash or, worse, a merge of unrelated weights.
Allowed with a warning: a larger aligned vocabulary (chat fine-tunes add special tokens) and
differing or mixed dtypes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from calmerge.dtypes import FLOAT_TAGS, dtype_name
from calmerge.errors import CheckpointError
from calmerge.io.checkpoint import Checkpoint

if TYPE_CHECKING:
    import torch


@dataclass
class PairReport:
    """What validation found that is allowed but worth telling the user."""

    warnings: list[str] = field(default_factory=list)
    vocab_base: int | None = None
    vocab_aligned: int | None = None
    vocab_tensors: list[str] = field(default_factory=list)
    n_tensors: int = 0
    n_params: int = 0

    @property
    def vocab_extended(self) -> bool:
        return bool(self.vocab_tensors)


def _first(items: Iterable[str]) -> str:
    items = sorted(items)
    more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
    return f"'{items[0]}'{more}"


def _mixed_dtype_warning(ckpt: Checkpoint) -> str | None:
    floats = sorted(dtype_name(t) for t in ckpt.tag_counts if t in FLOAT_TAGS)
    if len(floats) > 1:
        return f"{ckpt.path}: mixed floating dtypes {floats}; merging computes in one dtype"
    return None


def _is_vocab_growth(name: str, sb: tuple, sa: tuple, aligned: Checkpoint) -> bool:
    """Only a 2-D embedding/head whose rows grew is a vocabulary extension."""
    vocab_like = "embed" in name or "lm_head" in name or sa[0] == aligned.config.get("vocab_size")
    return len(sb) == len(sa) == 2 and sb[1] == sa[1] and sb[0] < sa[0] and vocab_like


def validate_pair(base: Checkpoint, aligned: Checkpoint) -> PairReport:
    """Check that `aligned` descends from `base`'s architecture; raise on real mismatch.

    Allowed with a warning: the aligned vocabulary is larger (rows past the base vocab come from
    the aligned model), the dtypes differ or are mixed.
    """
    report = PairReport(n_tensors=len(aligned.tensor_names), n_params=aligned.num_params)
    hint = "the aligned model must be a fine-tune of the base (same architecture)"
    if base.model_type != aligned.model_type or base.architectures != aligned.architectures:
        raise CheckpointError(
            f"architecture mismatch: base {base.model_type} {base.architectures} vs aligned"
            f" {aligned.model_type} {aligned.architectures}",
            hint,
        )
    names_b, names_a = set(base.tensor_names), set(aligned.tensor_names)
    if names_b != names_a:
        head = {"lm_head.weight"}
        if (names_b ^ names_a) <= head and base.tied_embeddings != aligned.tied_embeddings:
            tied = "base" if base.tied_embeddings else "aligned"
            raise CheckpointError(
                f"tied vs untied embeddings: the {tied} model ties lm_head to embed_tokens,"
                " the other has its own lm_head.weight",
                "both models need the same tie_word_embeddings",
            )
        if names_b - names_a:
            raise CheckpointError(
                f"{aligned.path}: missing tensor {_first(names_b - names_a)} (present in base)",
                hint,
            )
        raise CheckpointError(
            f"{aligned.path}: extra tensor {_first(names_a - names_b)} (not in base)", hint
        )
    for name in aligned.tensor_names:
        sb, sa = base.shape(name), aligned.shape(name)
        if sb == sa:
            continue
        if _is_vocab_growth(name, sb, sa, aligned):
            report.vocab_tensors.append(name)
            continue
        raise CheckpointError(f"shape mismatch for '{name}': base {sb} vs aligned {sa}", hint)
    if report.vocab_tensors:
        report.vocab_base = base.shape(report.vocab_tensors[0])[0]
        report.vocab_aligned = aligned.shape(report.vocab_tensors[0])[0]
        report.warnings.append(
            f"aligned vocabulary is larger ({report.vocab_base} → {report.vocab_aligned} rows in"
            f" {len(report.vocab_tensors)} tensors): rows past the base vocab are taken from the"
            " aligned model unchanged"
        )
    if base.main_tag != aligned.main_tag:
        b, a = dtype_name(base.main_tag), dtype_name(aligned.main_tag)
        report.warnings.append(
            f"dtypes differ: base torch.{b} vs aligned torch.{a}; computing in"
            " the compute dtype and writing the aligned dtype unless told otherwise"
        )
    for ckpt in (base, aligned):
        warning = _mixed_dtype_warning(ckpt)
        if warning:
            report.warnings.append(warning)
    return report


def nonfinite_error(ckpt: Checkpoint, name: str) -> CheckpointError:
    """The one error for NaN/Inf in an input tensor (torch path and kernel road alike)."""
    return CheckpointError(
        f"{ckpt.path}: tensor '{name}' contains NaN or Inf",
        "the checkpoint is damaged; nothing was written",
    )


def check_finite(ckpt: Checkpoint, name: str, tensor: torch.Tensor) -> None:
    """Raise naming the tensor when it holds NaN or Inf (checked while streaming)."""
    if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
        raise nonfinite_error(ckpt, name)
