"""The one table of dtypes: safetensors tags, names, sizes, torch dtypes; and device choice.

A leaf module (it imports nothing of calmerge's but the errors): headers, configs, the merge
kernels and the loaders all read dtypes from here, so no two of them can disagree and none has
to import another to learn a size. torch is imported only by the functions that return torch
objects, so planning a merge or parsing a header never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from calmerge.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    import torch

#: safetensors dtype tags → (torch dtype name, bytes per element).
TAGS: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
}
FLOAT_TAGS = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_NAME_TAGS = {name: tag for tag, (name, _) in TAGS.items()}

#: dtypes the merge kernels read and write (safetensors tags) → bytes per element.
KERNEL_TAGS = {tag: TAGS[tag][1] for tag in ("F32", "BF16", "F16")}

#: compute / output dtypes a merge accepts, by name → safetensors tag.
MERGE_DTYPES = {"float32": "F32", "float64": "F64", "bfloat16": "BF16", "float16": "F16"}
MergeDtype = Literal["float32", "float64", "bfloat16", "float16"]

#: dtypes a model is evaluated in; "auto" is the checkpoint's own (`auto_eval_dtype`).
EVAL_DTYPES = ("float32", "bfloat16", "float16")
EvalDtype = Literal["auto", "float32", "bfloat16", "float16"]

#: the evaluation dtype of a checkpoint stored in each float tag (lm-eval's and transformers'
#: `dtype="auto"`: the stored dtype; float64 and fp8 have no fast kernels to run in, so they are
#: evaluated in the nearest dtype that does)
AUTO_EVAL = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float32",
             "F8_E4M3": "bfloat16", "F8_E5M2": "bfloat16"}
Device = Literal["auto", "cpu", "cuda"]


def itemsize(tag: str) -> int:
    """Bytes per element of a safetensors tag."""
    return TAGS[tag][1]


def torch_dtype(tag: str) -> torch.dtype:
    """The torch dtype of a safetensors tag or a dtype name (imports torch)."""
    import torch

    return getattr(torch, TAGS[tag][0] if tag in TAGS else tag)


def dtype_tag(dtype: Any) -> str:
    """The safetensors tag of a torch dtype or dtype name ('bfloat16' → 'BF16')."""
    name = str(dtype).removeprefix("torch.")
    return _NAME_TAGS.get(name, name)


def dtype_name(dtype: Any) -> str:
    """'BF16', 'bfloat16' or torch.bfloat16 → 'bfloat16' (the name torch and config.json use)."""
    text = str(dtype).removeprefix("torch.")
    return TAGS[text][0] if text in TAGS else text


def merge_tag(name: Any, what: str = "dtype") -> str | None:
    """A merge's compute/output dtype ('bfloat16', torch.bfloat16, 'BF16', None) → its tag."""
    if name is None:
        return None
    key = str(name).removeprefix("torch.")
    if key in MERGE_DTYPES.values():
        return key
    if key not in MERGE_DTYPES:
        raise ConfigError(
            f"{what} '{name}' is not supported",
            did_you_mean(key, MERGE_DTYPES) or f"use {list(MERGE_DTYPES)}",
        )
    return MERGE_DTYPES[key]


def auto_eval_dtype(tag_counts: dict[str, int]) -> str:
    """`--dtype auto` for a checkpoint with `tag_counts` (parameters per safetensors tag): the
    evaluation dtype of the float tag holding the most parameters; float32 if none is float."""
    floats = {t: n for t, n in tag_counts.items() if t in AUTO_EVAL}
    if not floats:
        return "float32"
    return AUTO_EVAL[max(floats, key=lambda t: (floats[t], t))]


def eval_dtype(name: str) -> torch.dtype:
    """An evaluation dtype name → torch dtype; one line for anything else."""
    if name not in EVAL_DTYPES:
        raise ConfigError(f"--dtype '{name}': unknown", f"use one of {', '.join(EVAL_DTYPES)}")
    return torch_dtype(name)


def resolve_device(device: str = "auto") -> str:
    """'auto' → cuda when available, else cpu; 'cuda[:N]' without CUDA is a user error.

    'cpu' never imports torch (a merge on the CPU does not need it).
    """
    if device == "cpu":
        return device
    if device != "auto" and not (device == "cuda" or device.startswith("cuda:")):
        raise ConfigError(f"--device '{device}': unknown", "use auto, cpu or cuda")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available", "use --device cpu")
    return device
