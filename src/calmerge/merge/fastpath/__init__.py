"""The fast path: kernels for the weighted-average merges (linear, soup) on raw safetensors bytes.

Why they exist: `calmerge merge` of a linear recipe is bound by memory traffic, and importing
torch alone costs seconds and ~225 MB of resident memory — more than the merge of a small model.
The kernels read raw little-endian fp32/bf16/fp16 bytes from reused buffers, release the GIL,
and give the same bits as torch's `methods._linear` (so as mergekit 0.1.5): inputs widened to
fp32, accumulated from +0 by fused multiply-adds, divided by the fp32 sum of the weights when
normalising, rounded through the compute dtype, narrowed with round-to-nearest-even.

Two implementations of that contract, both tested against torch bit for bit:

- `_fastlinear`, a C extension that setup.py builds wherever a compiler exists: one pass over an
  L1-resident tile with hardware FMA (AVX2 on x86, chosen at run time). It needs no numpy, so a
  merge imports neither numpy nor torch;
- `numpy_kernel.NumpyKernel`, the fallback when the extension is missing (no compiler at install
  time): the same results in ~20 numpy passes per block, several times slower.

Every kernel object offers `buffer(nbytes)`, `run(...)`, `convert(...)` and `finite(...)`; the
kernel road (`road.py`) holds one per worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from calmerge.merge.fastpath import _fastlinear
except ImportError:  # no C compiler at install time: NumpyKernel gives the same bits
    _fastlinear = None

_STATUS = ("ok", "nonfinite", "nan")


class NativeKernel:
    """The C kernel behind the common interface (stateless; buffers are plain bytearrays)."""

    native = True

    def __init__(self, size: int = 0) -> None:
        if _fastlinear is None:
            raise RuntimeError("calmerge.merge.fastpath._fastlinear is not built (no C compiler?)")

    @staticmethod
    def buffer(nbytes: int) -> memoryview:
        """A reusable byte buffer for raw tensor data (slices are views, not copies)."""
        return memoryview(bytearray(nbytes))

    def run(
        self,
        inputs: Sequence[Any],
        tags: Sequence[str],
        weights: Sequence[float],
        normalize: bool,
        compute_tag: str | None,
        out: Any,
        out_tag: str,
    ) -> str:
        """Merge one block: raw input bytes → raw output bytes. Returns 'ok', 'nonfinite' (an
        overflow to ±inf, written) or 'nan' (`out` incomplete: the caller recomputes)."""
        code = _fastlinear.linear(
            inputs, tags, [float(w) for w in weights], normalize, compute_tag or "F32", out,
            out_tag,
        )
        return _STATUS[code]

    def convert(self, src: Any, tag: str, out: Any, out_tag: str) -> bool:
        """Copy raw bytes of dtype `tag` to `out_tag`; False when the block holds NaN or Inf."""
        return _fastlinear.convert(src, tag, out, out_tag)

    def finite(self, src: Any, tag: str) -> bool:
        """Whether a block of raw bytes of dtype `tag` holds only finite values."""
        return _fastlinear.finite(src, tag)


def LinearKernel(size: int, native: bool | None = None) -> Any:
    """A kernel for blocks of ≤ `size` elements: the C one when built (`native=None`), or the one
    asked for (`native=True` fails if the extension is missing)."""
    if native or (native is None and _fastlinear is not None):
        return NativeKernel(size)
    from calmerge.merge.fastpath.numpy_kernel import NumpyKernel

    return NumpyKernel(size)
