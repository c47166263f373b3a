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
from typing import TYPE_CHECKING, Any

from calmerge.dtypes import TAGS, itemsize, torch_dtype
from calmerge.errors import CheckpointError

if TYPE_CHECKING:
    import torch

#: The safetensors library's own limit (`MAX_HEADER_SIZE` in safetensors/src/tensor.rs).
_MAX_HEADER = 100_000_000
_HINT = "the file is truncated or corrupt; re-download or re-save it"


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


class _Refused(ValueError):
    """A header rule broken while parsing; becomes a CheckpointError naming the file."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a repeated key is refused (json.loads would keep the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"the header names '{key}' twice")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    """NaN/Infinity are not JSON: Python's parser accepts them, the library's does not."""
    raise _Refused(f"the header holds the non-JSON constant {name}")


def _uint(x: object) -> bool:
    """An unsigned 64-bit JSON integer, as the library's `usize` (bools and floats are not)."""
    return type(x) is int and 0 <= x < 2**64


def _parse_header(raw: bytes) -> dict[str, Any]:
    """The header as a JSON object, by the library's rules: strict UTF-8 (no BOM, no UTF-16
    guessing), no repeated keys, no NaN/Infinity; whitespace may pad it (the writer pads with
    spaces to a multiple of 8 bytes), nothing else may."""
    try:
        header = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants
        )
    except UnicodeDecodeError:
        raise _Refused("the header is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _Refused(f"the header is not valid JSON ({exc.msg} at byte {exc.pos})") from None
    if not isinstance(header, dict):
        raise _Refused(f"the header is a JSON {type(header).__name__}, not an object")
    return header


def _entry(name: str, meta: Any) -> tuple[int, int, str, tuple[int, ...]]:
    """(begin, end, tag, shape) of one header entry, each field checked for its JSON type."""
    if not isinstance(meta, dict):
        raise _Refused(f"tensor '{name}' is described by a {type(meta).__name__}, not an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in meta:
            raise _Refused(f"tensor '{name}' has no '{key}'")
    tag, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if not isinstance(tag, str) or tag not in TAGS:
        raise _Refused(f"tensor '{name}' has an unknown or unsupported dtype {tag!r}")
    if not isinstance(shape, list) or not all(_uint(d) for d in shape):
        raise _Refused(f"tensor '{name}' has shape {shape!r}: expected a list of integers >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_uint(x) for x in offsets):
        raise _Refused(f"tensor '{name}' has data_offsets {offsets!r}: expected [begin, end]")
    return offsets[0], offsets[1], tag, tuple(shape)


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], bytes]:
    """Parse and check a safetensors file exactly as strictly as the safetensors library
    (`Metadata::validate` in safetensors/src/tensor.rs); return its tensors and raw header.

    The rules: an 8-byte little-endian header length of at most 100,000,000 that fits the
    file; a UTF-8 JSON object header; `__metadata__`, when present, a str→str map (or null);
    every other key a tensor with a known dtype, a shape of integers ≥ 0 and two integer
    offsets; the tensors, sorted by offsets, contiguous from 0 with no gap or overlap, each
    exactly shape×itemsize bytes, the last ending at the end of the file. Stricter than the
    library only where it is silent: a repeated key is refused, not last-one-wins. Each
    violation is one CheckpointError naming the file (and the tensor) before a byte is read.
    """
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: file too short to be safetensors ({size} bytes)", _HINT)
    with path.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n <= 0 or n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: header length {n} does not fit file size {size}", _HINT)
        raw = fh.read(n)
    try:
        header = _parse_header(raw)
        meta = header.pop("__metadata__", None)
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
        ):
            raise _Refused("'__metadata__' is not a map of strings to strings")
        entries = sorted(
            ((*_entry(name, m), name) for name, m in header.items()), key=lambda e: e[:2]
        )
        start = 0
        for begin, end, tag, shape, name in entries:
            if begin != start or end < begin:
                what = "overlaps the tensor before it" if begin < start else "leaves a gap"
                if end < begin:
                    what = "ends before it begins"
                raise _Refused(f"tensor '{name}' has invalid offsets [{begin}, {end}]: {what}")
            numel = 1
            for d in shape:
                numel *= d
            if end - begin != numel * itemsize(tag):
                raise _Refused(
                    f"tensor '{name}' has inconsistent offsets: {end - begin} bytes for shape"
                    f" {list(shape)} of {tag}"
                )
            start = end
    except _Refused as exc:
        raise CheckpointError(f"{path}: {exc}", _HINT) from None
    base = 8 + n
    if base + start != size:
        raise CheckpointError(
            f"{path}: expected {base + start} bytes from its header, found {size}", _HINT
        )
    tensors = {
        name: TensorInfo(path, base + begin, base + end, tag, shape)
        for begin, end, tag, shape, name in entries
    }
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
