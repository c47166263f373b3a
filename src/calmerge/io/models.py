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


_HUB_PATTERNS = ["*.json", "*.jinja", "*.model", "*.txt", "*.md"]


def resolve_ref(ref: str | Path, *, weights: bool = True) -> Path:
    """A local model directory, or a hub id fetched through huggingface_hub's cache (its
    safetensors weights too unless `weights=False`; pickles never)."""
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
            allow_patterns=[*_HUB_PATTERNS, "*.safetensors"] if weights else _HUB_PATTERNS,
        )
    except Exception as exc:  # any hub failure (offline, 404, auth) is the same user problem
        raise CheckpointError(
            f"{ref}: not a local directory and not fetchable from the Hugging Face hub"
            f" ({type(exc).__name__})",
            "check the path or id; online access is needed (unset HF_HUB_OFFLINE) for hub ids",
        ) from None
    return Path(local)


def _roots(path: Path) -> list[Path]:
    """Where the files of model directory `path` may live once symlinks are resolved: the
    directory itself, and for a Hugging Face cache snapshot (`…/snapshots/<rev>/`, whose
    files are symlinks into `…/blobs/`) that repository's blob store."""
    root = path.resolve()
    roots = [root]
    if root.parent.name == "snapshots":
        roots.append(root.parent.parent / "blobs")
    return roots


def _inside(path: Path, name: object, listed_in: str) -> Path:
    """`path / name` for a file a model's own file names (an index's shard), refused with one
    line unless it stays inside the model directory — no absolute path, no `..`, no symlink
    resolving elsewhere — so nothing outside it is opened because a file inside said so."""
    hint = "the index is corrupt or hostile; re-download the model"
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{path}: {listed_in} names a shard {name!r}", hint)
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise CheckpointError(
            f"{path}: {listed_in} names shard '{name}', outside the model directory", hint
        )
    target = path / rel
    real = target.resolve()
    if not any(real == r or real.is_relative_to(r) for r in _roots(path)):
        raise CheckpointError(
            f"{path}: shard '{name}' is a symlink to {real}, outside the model directory",
            "copy the file into the model directory instead of linking it",
        )
    return target


def _weight_map(path: Path, index: Path) -> dict[str, str]:
    """The index's tensor → shard map, every key and value a string."""
    weight_map = _load_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: no weight_map", "re-save the model")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(
                f"{index}: tensor '{name}' maps to {shard!r}, not a file name", "re-save the model"
            )
    return weight_map


def _safetensors_files(path: Path) -> list[Path] | None:
    """Shard files named by the index (checked to exist inside the directory), the single
    file, or None."""
    index = path / SAFE_INDEX
    if index.is_file():
        files = sorted(set(_weight_map(path, index).values()))
        found = [_inside(path, f, SAFE_INDEX) for f in files]
        for f, target in zip(files, found, strict=True):
            if not target.is_file():
                raise CheckpointError(
                    f"{path}: shard '{f}' listed in {SAFE_INDEX} is missing",
                    "the download is incomplete; fetch the missing shard",
                )
        return found
    if (path / SAFE_SINGLE).is_file():
        return [_inside(path, SAFE_SINGLE, "the directory")]
    return None


def _check_index(path: Path, weight_map: dict[str, str], shards: dict[Path, set[str]]) -> None:
    """Every tensor where the index says, and only there: a shard holding a tensor the index
    puts elsewhere (or nowhere), or lacking one it is said to hold, is a corrupt checkpoint —
    transformers would load one copy and silently skip the other."""
    hint = "the checkpoint is corrupt; re-save it"
    for shard, names in shards.items():
        rel = shard.relative_to(path).as_posix()
        for name in sorted(names):
            listed = weight_map.get(name)
            if listed is None:
                raise CheckpointError(
                    f"{path}: tensor '{name}' is in shard '{rel}' but not in {SAFE_INDEX}", hint
                )
            if Path(listed).as_posix() != rel:
                raise CheckpointError(
                    f"{path}: tensor '{name}' is in shard '{rel}', but {SAFE_INDEX} puts it in"
                    f" '{listed}'",
                    hint,
                )
    for name, listed in sorted(weight_map.items()):
        if name not in shards[path / listed]:
            raise CheckpointError(
                f"{path}: {SAFE_INDEX} puts tensor '{name}' in shard '{listed}', which lacks it",
                hint,
            )


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    """torch.load(weights_only=True) of pytorch_model.bin (or its shards)."""
    index = path / BIN_INDEX
    files = (
        sorted({_inside(path, f, BIN_INDEX) for f in _weight_map(path, index).values()})
        if index.is_file()
        else [_inside(path, BIN_SINGLE, "the directory")]
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
        shards: dict[Path, set[str]] = {}
        for f in files:
            found, raw = read_safetensors_header(f)
            tensors.update(found)
            shards[f] = set(found)
            headers.append((f.name, f.stat().st_size, raw))
        index = path / SAFE_INDEX
        if index.is_file():
            _check_index(path, _weight_map(path, index), shards)
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


def open_tokenizer_source(ref: str | Path) -> Checkpoint:
    """A model whose tokenizer files are wanted and nothing else (a merge's
    `tokenizer_source`): no weights are opened, so a folder holding only pickled weights needs
    no --allow-pickle and nothing in it is unpickled."""
    from calmerge.io.export import TOKENIZER_FILES

    path = resolve_ref(ref, weights=False)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{path}: tokenizer_source has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, …)",
            "point tokenizer_source at a folder with the tokenizer, or drop it",
        )
    return Checkpoint(path, {}, {}, [])
