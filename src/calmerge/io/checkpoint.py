"""Open Hugging Face model directories (or hub ids) lazily, and validate them before any work.

Why not `safe_open`'s mmap for the tensor bytes: pages touched through an mmap stay mapped and
count toward the process's resident memory, so streaming a whole model through it grows RSS to
the model's size. Instead the safetensors header is parsed here (which also catches truncated
and corrupt files before any work) and each tensor is read with `os.preadv` into a fresh buffer:
resident memory stays bounded by the tensors in flight, and `preadv` releases the GIL so reads
overlap compute in a thread pool. The bytes read are exactly those `safe_open` would return.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmerge.dtypes import FLOAT_TAGS, dtype_name, dtype_tag, itemsize, torch_dtype
from calmerge.errors import CheckpointError

if TYPE_CHECKING:  # torch is imported on first tensor access: planning a merge never needs it
    import torch

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_MAX_HEADER = 100 * 1024 * 1024


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to (`model.layers.3.…` → 3), else None."""
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, byte range (absolute), dtype tag and shape."""

    file: Path
    start: int
    end: int
    tag: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.tag)


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], bytes]:
    """Parse and structurally check a safetensors file; return its tensors and raw header.

    Catches truncation (data shorter than the header promises), garbage headers and
    overlapping or out-of-range offsets, naming the file — before any tensor is read.
    """
    size = path.stat().st_size
    hint = "the file is truncated or corrupt; re-download or re-save it"
    if size < 8:
        raise CheckpointError(f"{path}: file too short to be safetensors ({size} bytes)", hint)
    with path.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n <= 0 or n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: header length {n} does not fit file size {size}", hint)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: safetensors header is not valid JSON", hint) from None
    header.pop("__metadata__", None)
    base = 8 + n
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, meta in header.items():
        try:
            begin, end = (int(x) for x in meta["data_offsets"])
            tag = meta["dtype"]
            width = itemsize(tag)
            shape = tuple(int(d) for d in meta["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: bad header entry for tensor '{name}'", hint) from None
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * width or begin < 0:
            raise CheckpointError(f"{path}: tensor '{name}' has inconsistent offsets", hint)
        data_end = max(data_end, end)
        tensors[name] = TensorInfo(path, base + begin, base + end, tag, shape)
    if base + data_end != size:
        raise CheckpointError(
            f"{path}: expected {base + data_end} bytes from its header, found {size}", hint
        )
    return tensors, raw


def pread_into(fd: int, offset: int, view: memoryview, file: Path) -> None:
    """Fill `view` from `offset` of an open file with preadv (GIL released while it copies)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise CheckpointError(f"{file}: unexpected end of file", "re-save it")
        got += n


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Read one tensor's bytes with preadv (GIL released) into a new CPU tensor."""
    import torch

    buf = torch.empty(info.nbytes, dtype=torch.uint8)
    if info.nbytes:
        fd = os.open(info.file, os.O_RDONLY)
        try:
            pread_into(fd, info.start, memoryview(buf.numpy()), info.file)
        finally:
            os.close(fd)
    return buf.view(info.dtype).reshape(info.shape)


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
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not readable JSON", "re-save the model") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object", "re-save the model")
    return data


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

    @property
    def num_layers(self) -> int:
        n = self.config.get("num_hidden_layers")
        if isinstance(n, int) and n > 0:
            return n
        found = {layer_index(t) for t in self.tensor_names} - {None}
        return max(found) + 1 if found else 0

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
    ref: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> Checkpoint:
    """Open and structurally validate a model directory or hub id (no tensor bytes read)."""
    path = resolve_ref(ref)
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


# ───────────────────────────── pair validation ─────────────────────────────


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
