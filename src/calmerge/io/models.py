"""Opening a model reference: a hub id or a directory, holding safetensors shards, pickled
weights, or a LoRA adapter over a base — each validated structurally before any work.

Why apart from `io.checkpoint`: the `Checkpoint` class is what everything else reads; deciding
*which* checkpoint a reference is (and, for an adapter, opening its base first) is this
module's one job, so `io.adapters` can build on `Checkpoint` without the two importing each
other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from calmerge.errors import CheckpointError
from calmerge.io.checkpoint import (
    BIN_INDEX,
    BIN_SINGLE,
    SAFE_INDEX,
    SAFE_SINGLE,
    Checkpoint,
    _load_json,
)
from calmerge.io.safetensors import TensorInfo, read_safetensors_header

if TYPE_CHECKING:
    import torch


def resolve_ref(ref: str | Path) -> Path:
    """A local model directory, or a hub id fetched through huggingface_hub's cache."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{ref}: is a file, expected a model directory", "pass the folder")
    text = str(ref)
    looks_like_hub = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub:
        raise CheckpointError(f"{ref}: no such model directory", "check the path")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            text,
            allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.md"],
        )
    except Exception as exc:  # any hub failure (offline, 404, auth) is the same user problem
        raise CheckpointError(
            f"{ref}: not a local directory and not fetchable from the Hugging Face hub"
            f" ({type(exc).__name__})",
            "check the path or id; online access is needed (unset HF_HUB_OFFLINE) for hub ids",
        ) from None
    return Path(local)


def _safetensors_files(path: Path) -> list[Path] | None:
    """Shard files named by the index (checked to exist), the single file, or None."""
    index = path / SAFE_INDEX
    if index.is_file():
        weight_map = _load_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map", "re-save the model")
        files = sorted(set(weight_map.values()))
        for f in files:
            if not (path / f).is_file():
                raise CheckpointError(
                    f"{path}: shard '{f}' listed in {SAFE_INDEX} is missing",
                    "the download is incomplete; fetch the missing shard",
                )
        return [path / f for f in files]
    if (path / SAFE_SINGLE).is_file():
        return [path / SAFE_SINGLE]
    return None


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) of pytorch_model.bin (or its shards)."""
    index = path / BIN_INDEX
    files = (
        sorted({path / f for f in _load_json(index).get("weight_map", {}).values()})
        if index.is_file()
        else [path / BIN_SINGLE]
    )
    import torch

    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{path}: shard '{f.name}' is missing", "fetch the missing shard")
        try:
            state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        except Exception as exc:  # torch raises many types for corrupt pickles
            raise CheckpointError(
                f"{f}: cannot be loaded ({type(exc).__name__})", "the file is corrupt"
            ) from None
    return state


def open_checkpoint(
    ref: str | Path,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    base: str | Path | None = None,
) -> Checkpoint:
    """Open and structurally validate a model directory or hub id (no tensor bytes read).

    A peft LoRA directory (`adapter_config.json`) opens as an `io.adapters.AdapterCheckpoint`
    over its base: `base` when the caller knows it (`--base`), else the adapter config's
    `base_model_name_or_path`. `base` is ignored for ordinary model directories.
    """
    path = resolve_ref(ref)
    if (path / "adapter_config.json").is_file():
        from calmerge.io.adapters import open_adapter

        def open_base(ref: str) -> Checkpoint:
            return open_checkpoint(
                ref, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
            )

        return open_adapter(path, open_base, base=base, allow_pickle=allow_pickle)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json", "is this a Hugging Face model folder?")
    config = _load_json(cfg_file)
    if config.get("auto_map") and not trust_remote_code:
        raise CheckpointError(
            f"{path}: the model needs custom code (config.json has auto_map)",
            "pass --trust-remote-code if you trust its source",
        )
    files = _safetensors_files(path)
    if files is not None:
        tensors: dict[str, TensorInfo] = {}
        headers = []
        for f in files:
            found, raw = read_safetensors_header(f)
            tensors.update(found)
            headers.append((f.name, f.stat().st_size, raw))
        index = path / SAFE_INDEX
        if index.is_file():
            listed = set(_load_json(index)["weight_map"])
            missing = sorted(listed - set(tensors))
            if missing:
                raise CheckpointError(
                    f"{path}: tensor '{missing[0]}' is in the index but in no shard",
                    "the checkpoint is corrupt; re-save it",
                )
        return Checkpoint(path, config, tensors, headers)
    if (path / BIN_SINGLE).is_file() or (path / BIN_INDEX).is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: weights are pickled (.bin), which can run arbitrary code",
                "convert to safetensors, or pass --allow-pickle if you trust the source",
            )
        state = _load_pickled(path)
        h = [(f.name, f.stat().st_size, b"") for f in sorted(path.glob("pytorch_model*.bin"))]
        return Checkpoint(path, config, {}, h, pickled=state)
    raise CheckpointError(f"{path}: no model weights (*.safetensors)", "is the download complete?")
