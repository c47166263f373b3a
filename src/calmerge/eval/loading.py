"""Load a causal LM and its tokenizer for evaluation, with one-line errors for user mistakes.

Remote code is refused unless the user opts in (it runs arbitrary Python from the checkpoint);
offline or missing checkpoints become a CheckpointError instead of a network traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calmerge.dtypes import eval_dtype, resolve_device
from calmerge.errors import CheckpointError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _adapter_dir(source: str | Path) -> Path | None:
    """`source` as a peft adapter directory, else None (models and hub ids load as they are)."""
    path = Path(str(source)).expanduser()
    return path if (path / "adapter_config.json").is_file() else None


def load_tokenizer(
    source: str | Path, *, trust_remote_code: bool = False, base: str | Path | None = None
) -> Any:
    """The tokenizer of `source` (a directory or an offline-cached hub id).

    A LoRA adapter directory: its own tokenizer files when it has them (trainers save them
    beside the adapter), else its base's (`base`, else the adapter config's base).
    """
    from transformers import AutoTokenizer

    adapter = _adapter_dir(source)
    if adapter is not None and not any((adapter / f).is_file() for f in _TOKENIZER_FILES):
        from calmerge.io.adapters import adapter_base_ref

        source = adapter_base_ref(adapter, base)
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
    base: str | Path | None = None,
    merge_adapter: bool = True,
) -> tuple[Any, Any]:
    """(model in eval mode on `device` in `dtype`, tokenizer) from a directory or hub id.

    A LoRA adapter directory loads its base (`base`, else the adapter config's) and then peft's
    `merge_and_unload()`: a plain transformers model with the merged weights, equal to the
    dense merged checkpoint. `merge_adapter=False` stops at the base (the sweep rewrites every
    weight anyway).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI draws its own progress; tqdm bars are noise
    torch_dtype = eval_dtype(dtype)
    dev = resolve_device(device)
    adapter = _adapter_dir(source)
    weights: str | Path = source
    if adapter is not None:
        from calmerge.io.models import open_checkpoint

        # validated (peft type, DoRA, modules vs base) before transformers or peft run
        ckpt = open_checkpoint(
            adapter, base=base, allow_pickle=True, trust_remote_code=trust_remote_code
        )
        weights = ckpt.base.path  # type: ignore[attr-defined]
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code, base=base)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(weights), dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise _checkpoint_error(weights, exc) from None
    if adapter is not None and merge_adapter:
        model = _merge_adapter(model, adapter)
    model.to(dev).eval()
    return model, tokenizer


def _merge_adapter(model: Any, adapter: Path) -> Any:
    """peft's own merge of the adapter into `model` (a plain transformers model again)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise CheckpointError(
            f"{adapter}: loading a LoRA adapter for evaluation needs peft",
            "pip install 'calmerge[peft]'",
        ) from None
    try:
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except Exception as exc:  # peft raises ValueError/KeyError/RuntimeError on bad adapters
        raise _checkpoint_error(adapter, exc) from None


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
