"""Write a merged checkpoint: streamed sharded safetensors, config, tokenizer, model card — atomically.

Why a streaming writer: every output tensor's dtype and shape are known before the merge
starts, so each shard's safetensors header can be written first and tensors then land at their
final byte offsets as soon as they are computed (`os.pwrite`, GIL released). Nothing holds the
merged model in memory. Everything goes into a hidden temporary directory beside the target
that is renamed into place only when complete, so an interrupted run never leaves a
half-written model under the requested name (and its leftovers are removed by the next run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmerge.dtypes import dtype_name, dtype_tag, itemsize, torch_dtype
from calmerge.errors import ConfigError, OutputError
from calmerge.io import outputs
from calmerge.io.checkpoint import SAFE_INDEX, SAFE_SINGLE, Checkpoint

if TYPE_CHECKING:
    import torch

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a byte count → bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"--max-shard-size '{text}': not a size", "use e.g. 5GB, 500MB, 2GiB")
    return int(float(match.group(1)) * _UNITS[unit])


# ───────────────────────────── streaming sharded safetensors ─────────────────────────────


@dataclass(frozen=True)
class TensorSpec:
    """One output tensor: name, safetensors dtype tag ('BF16') and shape."""

    name: str
    tag: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype(self.tag)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.tag)


def assign_shards(specs: Sequence[TensorSpec], max_shard_size: int) -> list[list[TensorSpec]]:
    """Greedy, in order: start a new shard when the next tensor would overflow this one."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def _header(shard: Sequence[TensorSpec]) -> tuple[bytes, dict[str, int]]:
    """The safetensors header (8-byte aligned, as safetensors pads it) and each tensor's offset."""
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offsets: dict[str, int] = {}
    pos = 0
    for spec in shard:
        meta[spec.name] = {
            "dtype": spec.tag,
            "shape": list(spec.shape),
            "data_offsets": [pos, pos + spec.nbytes],
        }
        offsets[spec.name] = pos
        pos += spec.nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    start = 8 + len(raw)
    return len(raw).to_bytes(8, "little") + raw, {k: v + start for k, v in offsets.items()}


class ShardedWriter:
    """Pre-sized safetensors shards; `write` puts one tensor at its final offset (thread-safe)."""

    def __init__(self, directory: Path, specs: Sequence[TensorSpec], max_shard_size: int) -> None:
        self.directory = directory
        self.specs = {s.name: s for s in specs}
        shards = assign_shards(specs, max_shard_size)
        n = len(shards)
        self.files: list[str] = [
            SAFE_SINGLE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)
        ]
        self._where: dict[str, tuple[int, int]] = {}
        self._fds: list[int] = []
        for fname, shard in zip(self.files, shards, strict=True):
            head, offsets = _header(shard)
            fd = os.open(directory / fname, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.pwrite(fd, head, 0)
            os.ftruncate(fd, len(head) + sum(s.nbytes for s in shard))
            for spec in shard:
                self._where[spec.name] = (fd, offsets[spec.name])
        self.weight_map = {
            s.name: f for f, shard in zip(self.files, shards, strict=True) for s in shard
        }
        self.total_size = sum(s.nbytes for s in specs)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        spec = self.specs[name]
        if dtype_tag(tensor.dtype) != spec.tag or tuple(tensor.shape) != spec.shape:
            raise RuntimeError(f"{name}: got {tensor.dtype}{tuple(tensor.shape)}, planned {spec}")
        import torch

        flat = tensor.detach().cpu().contiguous().reshape(-1)
        self.write_at(name, 0, memoryview(flat.view(torch.uint8).numpy()))

    def write_at(self, name: str, start: int, data: memoryview) -> None:
        """Write raw bytes at byte `start` of tensor `name` (os.pwrite: GIL released)."""
        fd, offset = self._where[name]
        if start + len(data) > self.specs[name].nbytes:
            raise RuntimeError(f"{name}: write past its planned {self.specs[name].nbytes} bytes")
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + start + done)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if len(self.files) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": self.weight_map}
            (self.directory / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n")


# ───────────────────────────── atomic output directory ─────────────────────────────


def check_output(out: Path, *, force: bool, needed_bytes: int = 0) -> None:
    """Refuse, before any work, outputs that cannot or must not be written.

    An existing non-empty directory is replaced only with `force` and only when calmerge wrote
    it (its `.calmerge-output` marker, `io.outputs`); leftovers of killed runs beside it are
    tidied first, so an output a killed `--force` run had set aside is back in place.
    """
    outputs.clean_leftovers(out.parent)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is a file", "choose a directory path for -o")
    if out.is_dir() and any(out.iterdir()):
        outputs.check_owned(out, "-o")
        if not force:
            raise OutputError(
                f"{out}: already exists and is not empty", "pass --force to replace it"
            )
    parent = out.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: cannot write into {probe}", "choose a writable location")
    free = shutil.disk_usage(probe).free
    if needed_bytes and free < needed_bytes * 1.05 + 10 * 2**20:
        raise OutputError(
            f"{out}: needs {needed_bytes / 1e9:.2f} GB, only {free / 1e9:.2f} GB free on the disk",
            "free some space or write elsewhere",
        )


def make_temp_dir(out: Path) -> Path:
    """A hidden sibling directory for the in-progress output (same filesystem: rename works),
    marked from the start as calmerge's (so a later `--force` may replace it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    outputs.clean_leftovers(out.parent)
    tmp = out.parent / f".{out.name}.calmerge-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    outputs.write_marker(tmp, "model")
    return tmp


def commit_dir(tmp: Path, out: Path) -> Path:
    """Move the finished temp dir to `out`, replacing an existing one only now (old set aside,
    new renamed in, old deleted: `io.outputs.replace_dir`)."""
    return outputs.replace_dir(tmp, out)


# ───────────────────────────── metadata: config, tokenizer, card ─────────────────────────────


def write_config(tmp: Path, source: Checkpoint, out_dtype: torch.dtype | str) -> None:
    """The reference model's config.json with its dtype field(s) set to the output dtype."""
    config = dict(source.config)
    keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
    for key in keys:
        config[key] = dtype_name(out_dtype)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    gen = source.file("generation_config.json")
    if gen.is_file():
        shutil.copyfile(gen, tmp / "generation_config.json")


def copy_tokenizer(tmp: Path, tokenizer_source: Checkpoint, chat_source: Checkpoint) -> None:
    """Tokenizer files from `tokenizer_source`; the chat template always from `chat_source`.

    Why: the aligned model's chat template is what the merged model was (partly) trained to
    follow; the base model often has none.
    """
    for fname in TOKENIZER_FILES:
        src = tokenizer_source.file(fname)
        if src.is_file():
            shutil.copyfile(src, tmp / fname)
    template = chat_source.chat_template
    if template is None:
        return
    for fname in CHAT_TEMPLATE_FILES:
        (tmp / fname).unlink(missing_ok=True)
        src = chat_source.file(fname)
        if src.is_file():
            shutil.copyfile(src, tmp / fname)
    tok_cfg = tmp / "tokenizer_config.json"
    copied = any((tmp / f).is_file() for f in CHAT_TEMPLATE_FILES)
    if tok_cfg.is_file():
        data = json.loads(tok_cfg.read_text())
        if not copied or "chat_template" in data:
            data["chat_template"] = template
            tok_cfg.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    elif not copied:
        (tmp / "chat_template.jinja").write_text(template)


def model_card(recipe: dict[str, Any], *, base: str | None, extra: str = "") -> str:
    """README.md: front matter for the hub (YAML-escaped), the recipe as YAML in a fence it
    cannot close, and optional extra Markdown (escaped by its maker)."""
    import yaml

    front = {"library_name": "transformers", "tags": ["merge", "calmerge"]}
    body = yaml.safe_dump(recipe, sort_keys=False).strip()
    # a fence longer than any backtick run in the recipe (paths are the user's): it cannot be
    # closed from inside, so the card's Markdown stays the recipe
    runs = [len(r) for r in re.findall(r"`+", body)]
    fence = "`" * max(3, max(runs, default=0) + 1)
    if base:
        front["base_model"] = base
    parts = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        "# Merged model",
        "",
        f"Made with [calmerge](https://github.com/calmerge/calmerge) using `{recipe['method']}`.",
        "",
        "## Recipe",
        "",
        fence + "yaml",
        body,
        fence,
        "",
    ]
    if extra.strip():
        parts += [extra.strip(), ""]
    return "\n".join(parts)
