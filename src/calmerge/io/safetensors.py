"""Safetensors files, read strictly and without mmap.

Why by hand and not `safe_open`: pages touched through an mmap stay mapped and count toward
the process's resident memory, so streaming a whole model through it grows RSS to the model's
size. The header is parsed here (which also catches truncated and corrupt files, bad offsets
and shapes before any work) and each tensor is read with `os.preadv` into a fresh buffer:
resident memory stays bounded by the tensors in flight, and `preadv` releases the GIL so reads
overlap compute in a thread pool. The bytes read are exactly those `safe_open` would return.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from calmerge.dtypes import itemsize, torch_dtype
from calmerge.errors import CheckpointError

if TYPE_CHECKING:
    import torch

_MAX_HEADER = 100 * 1024 * 1024


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
