"""Load a causal LM and its tokenizer for evaluation, with one-line errors for user mistakes.

Remote code is refused unless the user opts in (it runs arbitrary Python from the checkpoint);
offline or missing checkpoints become a CheckpointError instead of a network traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calmerge.dtypes import auto_eval_dtype, eval_dtype, resolve_device
from calmerge.errors import CheckpointError
from calmerge.io.text import utf8_text

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
    _check_text_files(source)
    try:
        tok = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError/HF errors indistinctly
        raise _checkpoint_error(source, exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_dtype(
    dtype: str,
    source: str | Path,
    *,
    base: str | Path | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> str:
    """`dtype`, or for "auto" the dtype `source`'s weights are stored in (bf16 for the paper's
    checkpoints; an adapter's is its base's), read from the safetensors headers."""
    if dtype != "auto":
        eval_dtype(dtype)  # one line for an unknown name
        return dtype
    from calmerge.io.models import open_checkpoint

    return checkpoint_dtype(open_checkpoint(
        source, base=base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    ))


def checkpoint_dtype(ckpt: Any) -> str:
    """`--dtype auto` of an open checkpoint: the dtype its weights are stored in (an adapter's
    are its base's, the architecture a sweep's live model runs)."""
    return auto_eval_dtype(getattr(ckpt, "base", ckpt).tag_counts)


def input_device(model: Any) -> Any:
    """Where a model's inputs go: its device, or for an accelerate-dispatched model the
    execution device of its first module (`model.device` is `meta` when that is offloaded)."""
    import torch

    dmap = getattr(model, "hf_device_map", None)
    if dmap:
        for dev in dmap.values():
            if dev not in ("cpu", "disk", "meta"):
                return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
        return torch.device("cpu")
    return model.device


def load_model(
    source: str | Path,
    *,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    base: str | Path | None = None,
    merge_adapter: bool = True,
    allow_pickle: bool = False,
    tokenizer: Any = None,
    device_map: str | dict | None = None,
    max_memory: dict[Any, str] | None = None,
) -> tuple[Any, Any]:
    """(model in eval mode on `device` in `dtype`, tokenizer) from a directory or hub id.

    `tokenizer`: the one the caller already loaded from `source` (to build prompts before the
    model loads); it is returned instead of loading the tokenizer a second time. `dtype`
    "auto": the checkpoint's own (`resolve_dtype`).

    `device_map` ("auto", "balanced", "sequential" or a {module: device} dict) dispatches the
    model with accelerate over the GPUs, then the CPU, then disk (`max_memory` caps each), for
    checkpoints that do not fit one device; `device` is then not used. Disk-offloaded weights
    are read by accelerate from the checkpoint's own files (a sweep rewrites them through
    `sweep.offload`, never in those files).

    A LoRA adapter directory loads its base (`base`, else the adapter config's) and then peft's
    `merge_and_unload()`: a plain transformers model with the merged weights, equal to the
    dense merged checkpoint. `merge_adapter=False` stops at the base (the sweep rewrites every
    weight anyway). Pickled weights (.bin, which transformers unpickles) load only with
    `allow_pickle`; without it transformers is told `use_safetensors=True`.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI draws its own progress; tqdm bars are noise
    dtype = resolve_dtype(
        dtype, source, base=base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    torch_dtype = eval_dtype(dtype)
    dev = resolve_device(device) if device_map is None else None
    adapter = _adapter_dir(source)
    weights: str | Path = source
    if adapter is not None:
        from calmerge.io.models import open_checkpoint

        # validated (peft type, DoRA, modules vs base) before transformers or peft run
        ckpt = open_checkpoint(
            adapter, base=base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
        )
        weights = ckpt.base.path  # type: ignore[attr-defined]
    if not allow_pickle:
        _refuse_pickle_only(weights)
    _check_config(weights)
    if tokenizer is None:
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code, base=base)
    dispatch: dict[str, Any] = {}
    if device_map is not None:
        dispatch = {"device_map": device_map, "max_memory": max_memory,
                    "offload_folder": _offload_folder()}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(weights),
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            **({} if allow_pickle else {"use_safetensors": True}),
            **dispatch,
        )
    except Exception as exc:
        raise _checkpoint_error(weights, exc) from None
    if adapter is not None and merge_adapter:
        model = _merge_adapter(model, adapter)
    if dev is not None:
        model.to(dev)
    model.eval()
    return model, tokenizer


def _offload_folder() -> str:
    """A scratch folder for weights accelerate offloads that are not in safetensors files
    (removed when the process ends)."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="calmerge-dispatch-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _refuse_pickle_only(source: str | Path) -> None:
    """A local folder whose only weights are pickles (.bin) is refused in one line, as
    `io.models.open_checkpoint` refuses it, rather than left to a transformers error."""
    path = Path(str(source)).expanduser()
    if path.is_dir() and not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
        raise CheckpointError(
            f"{path}: weights are pickled (.bin), which can run arbitrary code",
            "convert to safetensors, or pass --allow-pickle if you trust the source",
        )


def _check_config(weights: str | Path) -> None:
    """Before transformers builds a model from a local config.json: its sizes must fit the
    weight files beside it (bytes ×8 bounds the parameters they hold), so a config saying
    vocab 10⁹ is one line, not an allocation of terabytes. Hub ids are left to transformers."""
    import json

    from calmerge.io.checkpoint import check_config_sizes

    path = Path(str(weights)).expanduser()
    config_path = path / "config.json"
    if not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise CheckpointError(f"{config_path}: not readable JSON", "re-save the model") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object", "re-save the model")
    weight_files = [*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.pt")]
    if weight_files:
        check_config_sizes(config_path, config, 8 * sum(f.stat().st_size for f in weight_files))


def _check_text_files(source: str | Path) -> None:
    """The tokenizer's JSON and template files decode, checked before transformers reads them,
    so a bad one is named (transformers' own error names neither file nor line)."""
    import json

    path = Path(str(source)).expanduser()
    for name in ("tokenizer_config.json", "chat_template.json", "chat_template.jinja"):
        f = path / name
        if not f.is_file():
            continue
        text = utf8_text(f, f.read_bytes(), CheckpointError, "re-save the file as UTF-8")
        if name.endswith(".json"):
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                raise CheckpointError(
                    f"{f}:{exc.lineno}: not valid JSON ({exc.msg})", "re-save the tokenizer"
                ) from None
            except RecursionError:
                raise CheckpointError(f"{f}: JSON nested too deeply", "re-save the tokenizer") from None


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
