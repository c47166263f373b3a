"""Open Hugging Face model directories (or hub ids) lazily: config, shards, index, tokenizer
files, chat template, fingerprint; tensors are read on demand through `io.safetensors`.

Why lazy: a merge or a sweep needs one tensor at a time, and planning needs only names, shapes
and dtypes, which the headers give without reading a byte of weights. Pair checks are
`io.validate`.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmerge.dtypes import FLOAT_TAGS, dtype_tag, torch_dtype
from calmerge.errors import CheckpointError
from calmerge.io.layers import LayerMap, layer_slot
from calmerge.io.safetensors import TensorInfo, read_tensor

if TYPE_CHECKING:  # torch is imported on first tensor access: planning a merge never needs it
    import torch

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


def layer_index(name: str) -> int | None:
    """The block a tensor belongs to within its tower (`model.layers.3.…`, `transformer.h.3.…`
    → 3), else None: the naming rule of `io.layers`, without a checkpoint's exceptions (use
    `Checkpoint.layer_map` for those and for the tower's block count)."""
    slot = layer_slot(name)
    return slot.index if slot else None


def _sample_bytes(path: Path, size: int, blocks: int = 16, block: int = 4096) -> bytes:
    """Evenly spaced blocks of a file (the whole file when small)."""
    with path.open("rb") as fh:
        if size <= blocks * block:
            return fh.read()
        out = []
        for i in range(blocks):
            fh.seek((size - block) * i // (blocks - 1))
            out.append(fh.read(block))
        return b"".join(out)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{path}: not readable JSON", "re-save the model") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object", "re-save the model")
    return data


def _size(config: dict[str, Any], *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def check_config_sizes(path: Path, config: dict[str, Any], capacity: int) -> None:
    """Refuse a config.json whose sizes the weights cannot hold, before anything is built from it.

    transformers allocates a model from config.json alone, so `vocab_size: 1e9` or
    `hidden_size: 1e6` beside small weights would ask for terabytes. Two lower bounds on a
    causal LM's parameters, every family has them: the embedding (vocab × hidden) and one
    norm per block (layers × hidden). `capacity` is an upper bound on what the weights hold
    (elements ×8 or bytes ×8: even 1-bit packing is covered, so no real checkpoint trips it).
    """
    sub = config.get("text_config")
    text = sub if isinstance(sub, dict) else config
    hidden = _size(text, "hidden_size", "n_embd", "d_model")
    for what, n in (
        ("vocab_size", _size(text, "vocab_size")),
        ("num_hidden_layers", _size(text, "num_hidden_layers", "n_layer", "num_layers")),
    ):
        if n and hidden and n * hidden > capacity:
            raise CheckpointError(
                f"{path}: {what} × hidden size = {n:,} × {hidden:,} parameters, more than the "
                f"weights beside it can hold",
                "config.json does not describe these weights; re-save the model",
            )


class Checkpoint:
    """A model directory opened lazily: config and tensor metadata now, bytes on `get`."""

    def __init__(
        self,
        path: Path,
        config: dict[str, Any],
        tensors: dict[str, TensorInfo],
        headers: list[tuple[str, int, bytes]],
        pickled: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.path = path
        self.config = config
        self._tensors = tensors
        self._headers = headers
        self._pickled = pickled
        if tensors or pickled:
            check_config_sizes(path / "config.json", config, 8 * self.num_params)

    # -- metadata -------------------------------------------------------------------------
    @property
    def tensor_names(self) -> list[str]:
        return list(self._tensors) if self._pickled is None else list(self._pickled)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor '{name}'", "check the name") from None

    def shape(self, name: str) -> tuple[int, ...]:
        if self._pickled is not None:
            return tuple(self._pickled[name].shape)
        return self.info(name).shape

    def dtype(self, name: str) -> torch.dtype:
        if self._pickled is not None:
            return self._pickled[name].dtype
        return self.info(name).dtype

    def tag(self, name: str) -> str:
        """The tensor's safetensors dtype tag ('BF16'); no torch needed for safetensors."""
        if self._pickled is not None:
            return dtype_tag(self._pickled[name].dtype)
        return self.info(name).tag

    @property
    def is_safetensors(self) -> bool:
        return self._pickled is None

    def numel(self, name: str) -> int:
        n = 1
        for d in self.shape(name):
            n *= d
        return n

    def nbytes(self, name: str) -> int:
        if self._pickled is not None:
            return self.numel(name) * self.dtype(name).itemsize
        return self.info(name).nbytes

    @cached_property
    def tag_counts(self) -> dict[str, int]:
        """Parameter count per dtype tag (more than one floating tag = a mixed checkpoint)."""
        counts: dict[str, int] = {}
        for name in self.tensor_names:
            tag = self.tag(name)
            counts[tag] = counts.get(tag, 0) + self.numel(name)
        return counts

    @property
    def dtypes(self) -> dict[torch.dtype, int]:
        """Parameter count per torch dtype."""
        return {torch_dtype(tag): n for tag, n in self.tag_counts.items()}

    @property
    def main_tag(self) -> str:
        """The floating dtype tag holding most parameters (what the model 'is')."""
        floats = {t: n for t, n in self.tag_counts.items() if t in FLOAT_TAGS}
        pool = floats or self.tag_counts
        return max(pool, key=lambda t: pool[t])

    @property
    def main_dtype(self) -> torch.dtype:
        return torch_dtype(self.main_tag)

    @property
    def num_params(self) -> int:
        return sum(self.tag_counts.values())

    @cached_property
    def layer_map(self) -> LayerMap:
        """Each tensor's tower, block and gradient position, numbered as mergekit numbers them."""
        return LayerMap.build(self.tensor_names, self.config)

    @property
    def num_layers(self) -> int:
        """Blocks of the language model (GPT-2's `h.N`, a multimodal model's text tower)."""
        main = self.layer_map.main_tower
        if main is not None:
            return self.layer_map.num_layers(main)
        n = self.config.get("num_hidden_layers")
        return n if isinstance(n, int) and n > 0 else 0

    @property
    def text_config(self) -> dict[str, Any]:
        """The language model's config: a multimodal config's `text_config`, else the config.

        Gemma-3 4B–27B, LLaVA and the other `…ForConditionalGeneration` layouts keep the text
        model's sizes (vocab, hidden, positions) there, not at the top level.
        """
        sub = self.config.get("text_config")
        return sub if isinstance(sub, dict) else self.config

    def text_setting(self, key: str) -> Any:
        """A text-model setting: the top-level value, else the `text_config` one, else None."""
        value = self.config.get(key)
        return value if value is not None else self.text_config.get(key)

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    @property
    def shard_files(self) -> list[Path]:
        return sorted({info.file for info in self._tensors.values()})

    def file(self, name: str) -> Path:
        """A side file of the model (tokenizer, generation config) by name; an adapter's
        virtual checkpoint answers with the adapter's file, else its base's."""
        return self.path / name

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    @cached_property
    def chat_template(self) -> str | None:
        """The chat template from chat_template.jinja / .json or tokenizer_config.json."""
        jinja = self.path / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        for fname in ("chat_template.json", "tokenizer_config.json"):
            f = self.path / fname
            if f.is_file():
                value = _load_json(f).get("chat_template")
                if value:
                    return value if isinstance(value, str) else json.dumps(value)
        return None

    # -- data -----------------------------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        """The tensor's values (a fresh CPU tensor; never a view into a shared buffer)."""
        if self._pickled is not None:
            if name not in self._pickled:
                raise CheckpointError(f"{self.path}: no tensor '{name}'", "check the name")
            return self._pickled[name]
        return read_tensor(self.info(name))

    def fingerprint(self) -> str:
        """sha256 over config, headers, file sizes and sampled weight bytes: cheap (<1 MB read).

        Headers alone are identical for every fine-tune of one architecture, so 16 evenly
        spaced 4 KiB blocks of each weight file are hashed too: any real retraining changes them.
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.config, sort_keys=True).encode())
        for fname, size, raw in self._headers:
            h.update(f"{fname}:{size}:".encode())
            h.update(raw)
            h.update(_sample_bytes(self.path / fname, size))
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.tensor_names)} tensors)"
