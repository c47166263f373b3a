"""Load a causal LM and its tokenizer for evaluation, with one-line errors for user mistakes.

Remote code is refused unless the user opts in (it runs arbitrary Python from the checkpoint);
offline or missing checkpoints become a CheckpointError instead of a network traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calmerge.dtypes import eval_dtype, resolve_device
from calmerge.errors import CheckpointError


def load_tokenizer(source: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of `source` (a directory or an offline-cached hub id)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError/HF errors indistinctly
        raise _checkpoint_error(source, exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    source: str | Path,
    *,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """(model in eval mode on `device` in `dtype`, tokenizer) from a directory or hub id."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI draws its own progress; tqdm bars are noise
    torch_dtype = eval_dtype(dtype)
    dev = resolve_device(device)
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source), dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise _checkpoint_error(source, exc) from None
    model.to(dev).eval()
    return model, tokenizer


def _checkpoint_error(source: str | Path, exc: Exception) -> CheckpointError:
    """Map loader failures to one line: missing, offline, remote code, or unreadable."""
    text = str(exc).replace("\n", " ")
    if "trust_remote_code" in text:
        return CheckpointError(
            f"{source}: the checkpoint needs custom code", "pass --trust-remote-code if you trust it"
        )
    if not Path(str(source)).exists():
        return CheckpointError(
            f"{source}: no such model directory, and not in the offline Hugging Face cache",
            "check the path (no network downloads are made with HF_HUB_OFFLINE=1)",
        )
    return CheckpointError(f"{source}: cannot load model ({text[:200]})", "is it a HF checkpoint?")
