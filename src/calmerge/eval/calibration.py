"""Calibration and accuracy metrics: pure numpy functions, no I/O, no globals.

Conventions (all computed in float64):
- `confidences` is the top-label probability, `correct` a 0/1 array of whether the top label
  was right; `probs` is n×C (rows sum to 1; padded choices carry 0) and `labels` the gold index.
- Equal-width ECE uses bins [0, 0.1), …, [0.9, 1.0] (the last bin closed), weighted by count,
  like torchmetrics' `multiclass_calibration_error(norm="l1")` for confidences below 1.
- Equal-mass ECE splits the sorted confidences into `n_bins` groups of (nearly) equal size.
- Smooth ECE is Błasiok & Nakkiran's smECE with a reflected Gaussian kernel and its
  self-consistent bandwidth — the algorithm of `relplot.smECE`, with FFT convolution.

This module holds only the point metrics; their replicate-batched bootstrap forms are
`eval.bootstrap`, temperature scaling `eval.temperature`. Which of them are metrics (direction, label, batched form) is
declared once in `calmerge.eval.metrics`, whose `compute_metrics` turns a `ScoreResult` into
every registered choice metric with paired bootstrap 95% intervals. It imports nothing of
calmerge's, so the registry can import it without a cycle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: per-item arrays of one scored split: correct, correct_norm, confidence, probs, answer
View = dict[str, np.ndarray]

# ───────────────────────────── pure metrics ─────────────────────────────


def _as_float(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def equal_width_bins(confidences: Any, n_bins: int = 10) -> np.ndarray:
    """Bin index per confidence for bins [k/n, (k+1)/n), the top bin closed at 1."""
    c = _as_float(confidences)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, c, side="right") - 1, 0, n_bins - 1)


def _binned_gaps(confidences: Any, correct: Any, bins: np.ndarray, n_bins: int):
    """(|acc − conf| per bin, weight per bin) over non-empty bins."""
    c, y = _as_float(confidences), _as_float(correct)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(bins, weights=c, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=y, minlength=n_bins)
    nz = count > 0
    gap = np.abs(acc_sum[nz] - conf_sum[nz]) / count[nz]
    return gap, count[nz] / len(c)


def expected_calibration_error(confidences: Any, correct: Any, n_bins: int = 10) -> float:
    """Top-label ECE with equal-width bins: Σ_b (n_b/n)·|acc_b − conf_b|."""
    gap, weight = _binned_gaps(confidences, correct, equal_width_bins(confidences, n_bins), n_bins)
    return float(np.sum(gap * weight))


def equal_mass_ece(confidences: Any, correct: Any, n_bins: int = 10) -> float:
    """Adaptive ECE (Nixon et al. 2019): bins hold equal numbers of sorted confidences.

    Robust to the confidence mass piling up in one equal-width bin (common for LLMs).
    """
    c = _as_float(confidences)
    order = np.argsort(c, kind="stable")
    bins = np.empty(len(c), dtype=np.int64)
    for b, chunk in enumerate(np.array_split(order, min(n_bins, len(c)))):
        bins[chunk] = b
    gap, weight = _binned_gaps(c, correct, bins, n_bins)
    return float(np.sum(gap * weight))


def max_calibration_error(confidences: Any, correct: Any, n_bins: int = 10) -> float:
    """MCE: the worst non-empty equal-width bin's |acc − conf|."""
    gap, _ = _binned_gaps(confidences, correct, equal_width_bins(confidences, n_bins), n_bins)
    return float(gap.max()) if gap.size else 0.0


def brier_score(probs: Any, labels: Any) -> float:
    """Multiclass Brier: mean over items of Σ_k (p_k − 1[k = y])², range [0, 2]."""
    p = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), np.asarray(labels, dtype=np.int64)] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(probs: Any, labels: Any, eps: float = 1e-15) -> float:
    """Mean negative log-probability of the gold choice (nats), probabilities clipped at eps."""
    p = np.asarray(probs, dtype=np.float64)
    gold = p[np.arange(len(p)), np.asarray(labels, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(gold, eps, 1.0))))


def answer_entropy(probs: Any) -> float:
    """Mean entropy (nats) of the answer distribution over the offered choices."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return float(np.mean(terms.sum(axis=1)))


def auroc(confidences: Any, correct: Any) -> float:
    """AUROC of confidence as a detector of correctness (Mann–Whitney U, ties count ½).

    NaN when every answer is right or every answer is wrong (the quantity is undefined).
    """
    from scipy.stats import rankdata

    c, y = _as_float(confidences), _as_float(correct) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(c)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _grid_points(sigma: np.ndarray) -> np.ndarray:
    """Points of the uniform [0, 1] grid the values are spread on, per bandwidth."""
    return np.maximum(2000, np.round(20 / sigma).astype(np.int64)) // 2 + 1


def _reflected_smooth(f: np.ndarray, v: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Σ_i v_i·K_σ(g − f_i) on a grid g of [0, 1], with a Gaussian reflected at 0 and 1.

    Batched: `f` is (R, n), `v` is (R, m, n) (m value rows per row of `f`), `sigma` is (R,), and
    all rows share one grid size. Each value is spread linearly onto its two neighbouring grid
    points; every row is convolved with its kernel in one FFT call. Returns (R, m, points).
    """
    from scipy.signal import fftconvolve

    rows, m = v.shape[:2]
    points = int(_grid_points(sigma[:1])[0])
    pos = f * (points - 1)
    left = pos.astype(np.int64).clip(0, points - 2)
    bins = np.broadcast_to(left[:, None, :], v.shape)
    frac = np.broadcast_to((pos - left)[:, None, :], v.shape)
    offset = (np.arange(rows * m) * points).reshape(rows, m, 1)  # one bincount for all rows
    size = rows * m * points
    values = np.bincount((bins + offset).ravel(), ((1 - frac) * v).ravel(), size)
    values += np.bincount((bins + 1 + offset).ravel(), (frac * v).ravel(), size)
    values = values.reshape(rows, m, points)
    grid = np.linspace(0.0, 1.0, points)
    s = sigma[:, None, None]
    kernel = np.exp(-((grid - 0.5) ** 2) / (2 * s**2)) / (np.sqrt(2 * np.pi) * s)
    flipped = values[..., ::-1]
    # reflected at both ends, cropped to the 2·points − 1 samples the `points` outputs reach
    half = points // 2
    extended = np.concatenate(
        [flipped[..., half : points - 1], values, flipped[..., 1 : 1 + half]], axis=2
    )
    return fftconvolve(extended, kernel, mode="valid", axes=2)


def smooth_ece_batch(confidences: Any, correct: Any, sigma: Any) -> np.ndarray:
    """smECE at a fixed bandwidth for each row of (B, n) confidences/outcomes, σ of shape (B,):
    the kernel-smoothed |E[conf − y | conf]| weighted by the smoothed density, read on a grid t
    of max(10/σ, 200) points."""
    f = np.atleast_2d(np.asarray(confidences, dtype=np.float64))
    y = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (len(f),))
    out = np.empty(len(f))
    points = _grid_points(sigma)
    for size in np.unique(points):  # rows sharing a grid size share one FFT call
        rows = np.flatnonzero(points == size)
        fr = f[rows]
        smoothed = _reflected_smooth(fr, np.stack([fr - y[rows], np.ones_like(fr)], axis=1),
                                     sigma[rows])
        lengths = np.maximum(np.round(10 / sigma[rows]).astype(np.int64), 200)
        row = np.repeat(np.arange(len(rows)), lengths)  # every row's t grid, end to end
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        t = (np.arange(len(row)) - first) / (lengths[row] - 1)
        idx = (t * (size - 1)).astype(np.int64).clip(0, size - 2)
        frac = (t - idx / (size - 1)) * (size - 1)
        at = smoothed[row, :, idx] * (1 - frac)[:, None] + smoothed[row, :, idx + 1] * frac[:, None]
        residual, density = at[:, 0], at[:, 1] + 1e-4
        num = np.bincount(row, np.abs(residual / density) * density, len(rows))
        out[rows] = num / np.bincount(row, density, len(rows))
    return out


def smooth_ece_rows(confidences: Any, correct: Any, eps: float = 1e-3) -> np.ndarray:
    """smECE with the self-consistent bandwidth σ* (σ = smECE_σ) for each row of (B, n) arrays,
    found by 10 bisection steps run side by side for all rows (bootstrap replicates)."""
    f = np.atleast_2d(np.asarray(confidences, dtype=np.float64))
    y = np.atleast_2d(np.asarray(correct, dtype=np.float64))

    def wide_enough(sigma: np.ndarray) -> np.ndarray:
        return (sigma < eps) | (sigma < smooth_ece_batch(f, y, sigma))

    hi, lo = np.ones(len(f)), np.zeros(len(f))
    search = ~wide_enough(hi)
    if search.any():
        fs, ys, h, low = f[search], y[search], hi[search], lo[search]
        for _ in range(10):
            mid = (h + low) / 2
            ok = mid < eps
            if (~ok).any():  # a bandwidth below eps counts as wide enough, uncomputed
                ok[~ok] = mid[~ok] < smooth_ece_batch(fs[~ok], ys[~ok], mid[~ok])
            low = np.where(ok, mid, low)
            h = np.where(ok, h, mid)
        hi[search] = h
    return smooth_ece_batch(f, y, hi)


def smooth_ece(confidences: Any, correct: Any, eps: float = 1e-3) -> float:
    """smECE with the self-consistent bandwidth σ* (σ = smECE_σ), found by 10 bisection steps.

    Unlike binned ECE it has no bin-edge artefacts and is consistent (Błasiok & Nakkiran 2023).
    """
    return float(smooth_ece_rows(_as_float(confidences)[None], _as_float(correct)[None], eps)[0])


def reliability_bins(confidences: Any, correct: Any, n_bins: int = 10) -> list[dict[str, float]]:
    """Per equal-width bin: edges, count, mean confidence and accuracy (NaN when empty)."""
    c, y = _as_float(confidences), _as_float(correct)
    bins = equal_width_bins(c, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    conf = np.bincount(bins, weights=c, minlength=n_bins)
    acc = np.bincount(bins, weights=y, minlength=n_bins)
    out = []
    for b in range(n_bins):
        n = int(count[b])
        out.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": n,
                "confidence": float(conf[b] / n) if n else float("nan"),
                "accuracy": float(acc[b] / n) if n else float("nan"),
            }
        )
    return out
