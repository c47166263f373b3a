"""The numpy implementation of the weighted-average kernels (used when `_fastlinear`, the C
extension, was not built). Same contract and same bits; see `fastpath/__init__.py`.

Why they exist: `calmerge merge` of a linear recipe is bound by memory traffic, and importing
torch alone costs seconds and ~225 MB of resident memory — more than the merge of a small model.
These kernels need only numpy, work on raw safetensors bytes in reused buffers, and release the
GIL in every ufunc, so the engine can run them in a few threads without torch at all.

Bitwise parity with `methods._linear` (and so with mergekit 0.1.5) rests on three facts, each
tested in tests/unit/test_merge_kernels.py:

- widening bf16/fp16 to fp32 is exact; narrowing fp32 → bf16 is round-to-nearest-even on the bit
  pattern (what torch does for finite values), fp32 → fp16 is numpy's IEEE cast (also RNE);
- torch's CPU `addcmul_` is a *fused* multiply-add (one rounding per element and step). numpy
  has no fma, so each step is computed in float64, where x·w of two fp32 numbers is exact and
  x·w + r is exact unless the magnitudes are far apart. Rounding that sum to fp32 can differ from
  the fused result only when it lands exactly on an fp32 rounding midpoint (or in the fp32
  subnormal range); those few elements are redone with an exact TwoSum and round-to-odd;
- the normalising division is an IEEE fp32 division in both.

NaN never reaches the rounding code from finite inputs except by overflow (inf − inf); the
kernel reports it and the engine recomputes that tensor with torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from calmerge.dtypes import KERNEL_TAGS

_SIGNIFICAND = {"F32": 24, "BF16": 8, "F16": 11}  # bits, implicit one included
_SMALLEST_NORMAL_BITS = 0x00800000  # fp32 2^-126

_MID_MASK = np.uint64((1 << 29) - 1)  # f64 mantissa bits below fp32 precision
_MID = np.uint64(1 << 28)  # ... that make an exact fp32 rounding midpoint
_TINY = np.float32(2.0**-124)  # at or below: near the fp32 subnormal range (midpoints differ)


def widen(src: np.ndarray, tag: str, out: np.ndarray) -> None:
    """Raw little-endian bytes of dtype `tag` → fp32 in `out` (exact)."""
    if tag == "BF16":
        np.left_shift(src.view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)
    elif tag == "F16":
        np.copyto(out, src.view(np.float16))
    else:
        np.copyto(out, src.view(np.float32))


def _bf16_rounded_bits(bits: np.ndarray, scratch: np.ndarray) -> None:
    """fp32 bit patterns + 0x7FFF + their lowest kept bit into `scratch`: the high half is then
    the bf16 value rounded to nearest even (torch's rule for finite values)."""
    np.right_shift(bits, 16, out=scratch)
    np.bitwise_and(scratch, 1, out=scratch)
    np.add(scratch, 0x7FFF, out=scratch)
    np.add(scratch, bits, out=scratch)


def narrow(values: np.ndarray, tag: str, out: np.ndarray, scratch: np.ndarray) -> None:
    """fp32 `values` → raw bytes of dtype `tag` in `out`, rounding to nearest even.

    `scratch` is a uint32 buffer of the same length (bf16 rounding works on bit patterns:
    bits + 0x7FFF + lowest kept bit, then the high half — torch's rule for finite values).
    """
    if tag == "BF16":
        _bf16_rounded_bits(values.view(np.uint32), scratch)
        np.right_shift(scratch, 16, out=scratch)
        np.copyto(out.view(np.uint16), scratch, casting="unsafe")
    elif tag == "F16":
        np.copyto(out.view(np.float16), values, casting="same_kind")
    else:
        np.copyto(out.view(np.float32), values)


def round_through(values: np.ndarray, tag: str, scratch: np.ndarray) -> None:
    """Round fp32 `values` in place to the nearest `tag` value (a cast there and back)."""
    if tag == "BF16":
        bits = values.view(np.uint32)
        _bf16_rounded_bits(bits, scratch)
        np.bitwise_and(scratch, np.uint32(0xFFFF0000), out=bits)
    elif tag == "F16":
        np.copyto(values, values.astype(np.float16))


def significant_bits(weight: np.float32) -> int:
    """Bits in the significand of a normal fp32 number, trailing zeros dropped (0 for zero).

    When these plus the input's significand bits fit in 24, x·w is exact in fp32 (barring
    underflow), so fma(x, w, r) equals the plain fp32 x·w + r: two cheap passes instead of the
    float64 emulation. λ = 0.5, 0.25, 0.75, … hit this for bf16 and fp16 models.
    """
    bits = int(np.array(weight, np.float32).view(np.uint32))
    if bits & 0x7FFFFFFF == 0:
        return 0
    if bits & 0x7F800000 == 0:  # subnormal weight: never treated as exact
        return 99
    mantissa = (bits & 0x7FFFFF) | 0x800000
    return 24 - ((mantissa & -mantissa).bit_length() - 1)


def fp32_sum(values: Sequence[float]) -> np.float32:
    """Σ values in fp32, left to right from 0 (torch's `w.sum()` for a handful of weights)."""
    total = np.float32(0)
    for v in values:
        total = np.float32(total + np.float32(v))
    return total


class NumpyKernel:
    """Σ w_i·x_i (÷ Σ w_i), fp32 accumulation by fused multiply-adds, for blocks of ≤ `size`.

    One instance per worker thread: it owns its scratch buffers and reuses them for every block,
    so memory stays at a few block-sized arrays however large the tensors are.
    """

    native = False

    def __init__(self, size: int) -> None:
        self.acc = np.empty(size, np.float32)
        self.x = np.empty(size, np.float32)
        self.u32 = np.empty(size, np.uint32)
        self.prod = np.empty(size, np.float64)
        self.total = np.empty(size, np.float64)
        self.low = np.empty(size, np.uint64)
        self.flag = np.empty(size, np.bool_)
        self.flag2 = np.empty(size, np.bool_)

    def _exact_products(self, acc: np.ndarray, x: np.ndarray, weight: np.float32) -> bool:
        """acc += x·weight in fp32 when every product is exact; False (acc untouched) if not.

        A product can lose bits only by leaving the normal range; those blocks are refused
        (tiny products) or caught by the caller's finiteness check (overflow).
        """
        np.multiply(x, weight, out=x)
        low = self.u32[: len(x)]
        np.bitwise_and(x.view(np.uint32), np.uint32(0x7FFFFFFF), out=low)
        np.subtract(low, np.uint32(1), out=low)  # zero wraps to the top: not "tiny"
        if weight != 0 and low.min() < _SMALLEST_NORMAL_BITS:
            return False
        np.add(acc, x, out=acc)
        return True

    def _fma(self, acc: np.ndarray, x: np.ndarray, weight: np.float32, n: int) -> np.ndarray:
        """fma(x, weight, acc) elementwise (one rounding) via float64; written over `x`."""
        prod, total, low = self.prod[:n], self.total[:n], self.low[:n]
        mid, tiny, mag = self.flag[:n], self.flag2[:n], self.u32[:n].view(np.float32)
        np.multiply(x, np.float64(weight), out=prod)  # exact: 24 × 24 bits < 53
        np.add(prod, acc, out=total)
        np.bitwise_and(total.view(np.uint64), _MID_MASK, out=low)
        np.equal(low, _MID, out=mid)
        np.copyto(x, total, casting="same_kind")
        np.abs(x, out=mag)
        np.less_equal(mag, _TINY, out=tiny)
        if mid.any() or tiny.any():
            idx = np.flatnonzero(mid | tiny)
            x[idx] = _round_to_odd_sum(prod[idx], acc[idx].astype(np.float64), total[idx])
        return x

    @np.errstate(over="ignore", invalid="ignore")  # overflow is reported, not warned
    def run(
        self,
        inputs: Sequence[np.ndarray],
        tags: Sequence[str],
        weights: Sequence[float],
        normalize: bool,
        compute_tag: str | None,
        out: np.ndarray,
        out_tag: str,
    ) -> str:
        """Merge one block: raw input bytes → raw output bytes. Returns 'ok', 'nonfinite', 'nan'.

        `compute_tag` (None = fp32) mirrors the torch path: inputs are first cast to the compute
        dtype, the method accumulates in fp32 and casts its result back to the compute dtype,
        which is then cast to the output dtype.
        """
        n = len(inputs[0]) // KERNEL_TAGS[tags[0]]
        w32 = [np.float32(w) for w in weights]
        short = all(
            significant_bits(w) + min(_SIGNIFICAND[t], _SIGNIFICAND.get(compute_tag or "F32", 24))
            <= 24
            for w, t in zip(w32, tags, strict=True)
        )
        if short:  # exact products: fp32 adds; redo with fma on tiny products or overflow
            acc = self._accumulate(inputs, tags, w32, compute_tag, n, exact=True)
            if acc is None or not np.isfinite(acc, out=self.flag[:n]).all():
                acc = self._accumulate(inputs, tags, w32, compute_tag, n, exact=False)
        else:
            acc = self._accumulate(inputs, tags, w32, compute_tag, n, exact=False)
        u32 = self.u32[:n]
        if normalize:
            np.divide(acc, fp32_sum(w32), out=acc)
        status = "ok"
        finite = self.flag[:n]
        if not np.isfinite(acc, out=finite).all():
            status = "nan" if np.isnan(acc).any() else "nonfinite"
        if compute_tag not in (None, "F32"):
            round_through(acc, compute_tag, u32)
        if status != "nan":
            narrow(acc, out_tag, out, u32)
        return status

    def _accumulate(
        self,
        inputs: Sequence[np.ndarray],
        tags: Sequence[str],
        w32: Sequence[np.float32],
        compute_tag: str | None,
        n: int,
        *,
        exact: bool,
    ) -> np.ndarray | None:
        """Σ fma(x_i, w_i, ·) from +0 in fp32 (torch's addcmul_ chain); None if not exact."""
        acc, x, u32 = self.acc[:n], self.x[:n], self.u32[:n]
        acc.fill(0)
        for i, (src, tag, w) in enumerate(zip(inputs, tags, w32, strict=True)):
            widen(src, tag, x)
            if compute_tag not in (None, "F32", tag):
                round_through(x, compute_tag, u32)
            if exact:
                if not self._exact_products(acc, x, w):
                    return None
            elif i == 0:  # fma(x, w, +0): exact product + 0 in f64 (an exact zero turns +0,
                prod = self.prod[:n]  # an underflowing negative product stays −0), one rounding
                np.multiply(x, np.float64(w), out=prod)
                np.add(prod, 0.0, out=prod)
                np.copyto(acc, prod, casting="same_kind")
            else:
                acc, x = self._fma(acc, x, w, n), acc
        return acc

    @staticmethod
    def buffer(nbytes: int) -> np.ndarray:
        """A reusable byte buffer for raw tensor data."""
        return np.empty(nbytes, np.uint8)

    def convert(self, src: np.ndarray, tag: str, out: np.ndarray, out_tag: str) -> bool:
        """Copy raw bytes of dtype `tag` to `out_tag` (rows past the shared vocabulary).

        Returns False when the block holds NaN or Inf.
        """
        n = len(src) // KERNEL_TAGS[tag]
        x = self.x[:n]
        widen(src, tag, x)
        with np.errstate(over="ignore"):
            narrow(x, out_tag, out, self.u32[:n])
        return bool(np.isfinite(x, out=self.flag[:n]).all())

    def finite(self, src: np.ndarray, tag: str) -> bool:
        """Whether a block of raw bytes of dtype `tag` holds only finite values."""
        n = len(src) // KERNEL_TAGS[tag]
        x = self.x[:n]
        widen(src, tag, x)
        return bool(np.isfinite(x, out=self.flag[:n]).all())


def _round_to_odd_sum(prod: np.ndarray, acc: np.ndarray, total: np.ndarray) -> np.ndarray:
    """fp32(prod + acc) correctly rounded, given total = f64(prod + acc) (few elements).

    TwoSum gives the exact error of the f64 addition; where it is inexact the f64 result is moved
    to its odd neighbour towards the exact sum (round-to-odd), after which one rounding to fp32
    equals a single rounding of the exact sum (53 ≥ 24 + 2 bits).
    """
    back = total - prod
    err = (prod - (total - back)) + (acc - back)
    even = (total.view(np.uint64) & np.uint64(1)) == 0
    fix = (err != 0) & even
    if fix.any():
        total = total.copy()
        total[fix] = np.nextafter(total[fix], np.where(err[fix] > 0, np.inf, -np.inf))
    return total.astype(np.float32)
