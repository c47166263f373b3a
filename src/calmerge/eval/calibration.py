"""Calibration and accuracy metrics: pure numpy functions, no I/O, no globals.

Conventions (all computed in float64):
- `confidences` is the top-label probability, `correct` a 0/1 array of whether the top label
  was right; `probs` is n×C (rows sum to 1; padded choices carry 0) and `labels` the gold index.
- Equal-width ECE uses bins [0, 0.1), …, [0.9, 1.0] (the last bin closed), weighted by count,
  like torchmetrics' `multiclass_calibration_error(norm="l1")` for confidences below 1.
- Equal-mass ECE splits the sorted confidences into `n_bins` groups of (nearly) equal size.
- Smooth ECE is Błasiok & Nakkiran's smECE with a reflected Gaussian kernel and its
  self-consistent bandwidth — the algorithm of `relplot.smECE`, with FFT convolution.

`compute_metrics` turns a `ScoreResult` into every metric with paired bootstrap 95% intervals;
metrics are registered with `@metric(name)`, so adding one is one function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def _grid_values(f: np.ndarray, v: np.ndarray, points: int) -> np.ndarray:
    """Spread each value linearly onto its two neighbouring points of a uniform grid on [0, 1]."""
    values = np.zeros(points)
    pos = f * (points - 1)
    bins = pos.astype(np.int64).clip(0, points - 2)
    frac = pos - bins
    np.add.at(values, bins, (1 - frac) * v)
    np.add.at(values, bins + 1, frac * v)
    return values


def _reflected_smooth(f: np.ndarray, v: np.ndarray, t: np.ndarray, sigma: float) -> np.ndarray:
    """Σ_i v_i·K_σ(t − f_i) with a Gaussian reflected at 0 and 1, evaluated at `t`."""
    from scipy.signal import fftconvolve

    points = max(2000, round(20 / sigma)) // 2 + 1
    values = _grid_values(f, v, points)
    grid = np.linspace(0.0, 1.0, points)
    kernel = np.exp(-((grid - 0.5) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    extended = np.concatenate([values[::-1][:-1], values, values[::-1][1:]])
    smoothed = fftconvolve(extended, kernel, mode="valid")[points // 2 : points // 2 + points]
    idx = (t * (points - 1)).astype(np.int64).clip(0, points - 2)
    frac = (t - idx / (points - 1)) * (points - 1)
    return smoothed[idx] * (1 - frac) + smoothed[idx + 1] * frac


def smooth_ece_at(confidences: Any, correct: Any, sigma: float) -> float:
    """smECE at a fixed bandwidth: kernel-smoothed |E[conf − y | conf]| weighted by density."""
    f, y = _as_float(confidences), _as_float(correct)
    t = np.linspace(0.0, 1.0, max(round(10 / sigma), 200))
    residual = _reflected_smooth(f, f - y, t, sigma)
    density = _reflected_smooth(f, np.ones_like(f), t, sigma) + 1e-4
    return float(np.sum(np.abs(residual / density) * density) / np.sum(density))


def smooth_ece(confidences: Any, correct: Any, eps: float = 1e-3) -> float:
    """smECE with the self-consistent bandwidth σ* (σ = smECE_σ), found by 10 bisection steps.

    Unlike binned ECE it has no bin-edge artefacts and is consistent (Błasiok & Nakkiran 2023).
    """

    def wide_enough(sigma: float) -> bool:
        return sigma < eps or sigma < smooth_ece_at(confidences, correct, sigma)

    hi, lo = 1.0, 0.0
    if not wide_enough(hi):
        for _ in range(10):
            mid = (hi + lo) / 2
            if wide_enough(mid):
                lo = mid
            else:
                hi = mid
    return smooth_ece_at(confidences, correct, hi)


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


def bootstrap_ci(
    fn: Callable[..., float],
    *arrays: Any,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1−alpha) interval of `fn(*arrays)`, resampling items jointly."""
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if n_boot <= 0 or n < 2:
        value = fn(*arrs)
        return value, value
    rng = np.random.default_rng(seed)
    stats = np.array(
        [fn(*(a[idx] for a in arrs)) for idx in rng.integers(0, n, size=(n_boot, n))]
    )
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ───────────────────────────── temperature scaling ─────────────────────────────


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    shifted = np.where(finite, x - np.max(np.where(finite, x, -np.inf), axis=1, keepdims=True), 0)
    ex = np.where(finite, np.exp(shifted), 0.0)
    return ex / ex.sum(axis=1, keepdims=True)


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """softmax(logits / T) over the finite entries (−inf marks a choice not offered)."""
    x = np.asarray(logits, dtype=np.float64)
    return _softmax(np.where(np.isfinite(x), x / temperature, -np.inf))


def fit_temperature(logits: Any, labels: Any) -> float:
    """The T > 0 minimising dev-set NLL of softmax(logits / T) — the post-hoc baseline.

    Accepts choice log-likelihoods or logits (any per-row shift gives the same fit); searched
    over log T in [−5, 5] with Brent's bounded method, so the result is in [e^−5, e^5].
    """
    from scipy.optimize import minimize_scalar

    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    res = minimize_scalar(
        lambda log_t: nll(apply_temperature(x, float(np.exp(log_t))), y),
        bounds=(-5.0, 5.0),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(res.x))


# ───────────────────────────── metric registry ─────────────────────────────


@dataclass(frozen=True)
class Metric:
    """A point estimate and its bootstrap 95% interval."""

    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


MetricFn = Callable[[dict[str, np.ndarray], int], float]
METRICS: dict[str, MetricFn] = {}
HIGHER_IS_BETTER: dict[str, bool] = {}
# smECE costs ~ms per call; its bootstrap is capped at this many replicates.
EXPENSIVE_BOOT_CAP = 100
_EXPENSIVE = {"smece"}


def metric(name: str, higher_is_better: bool) -> Callable[[MetricFn], MetricFn]:
    """Register `fn(view, n_bins) -> float`; `view` holds the per-item arrays of a result."""

    def deco(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        HIGHER_IS_BETTER[name] = higher_is_better
        return fn

    return deco


@metric("acc", True)
def _acc(v: dict[str, np.ndarray], n_bins: int) -> float:
    return float(np.mean(v["correct"]))


@metric("acc_norm", True)
def _acc_norm(v: dict[str, np.ndarray], n_bins: int) -> float:
    return float(np.mean(v["correct_norm"]))


@metric("ece", False)
def _ece(v: dict[str, np.ndarray], n_bins: int) -> float:
    return expected_calibration_error(v["confidence"], v["correct"], n_bins)


@metric("ece_mass", False)
def _ece_mass(v: dict[str, np.ndarray], n_bins: int) -> float:
    return equal_mass_ece(v["confidence"], v["correct"], n_bins)


@metric("mce", False)
def _mce(v: dict[str, np.ndarray], n_bins: int) -> float:
    return max_calibration_error(v["confidence"], v["correct"], n_bins)


@metric("brier", False)
def _brier(v: dict[str, np.ndarray], n_bins: int) -> float:
    return brier_score(v["probs"], v["answer"])


@metric("nll", False)
def _nll(v: dict[str, np.ndarray], n_bins: int) -> float:
    return nll(v["probs"], v["answer"])


@metric("smece", False)
def _smece(v: dict[str, np.ndarray], n_bins: int) -> float:
    return smooth_ece(v["confidence"], v["correct"])


@metric("auroc", True)
def _auroc(v: dict[str, np.ndarray], n_bins: int) -> float:
    return auroc(v["confidence"], v["correct"])


@metric("entropy", True)
def _entropy(v: dict[str, np.ndarray], n_bins: int) -> float:
    return answer_entropy(v["probs"])


def _view(result: Any) -> dict[str, np.ndarray]:
    return {
        "correct": np.asarray(result.correct, dtype=np.float64),
        "correct_norm": np.asarray(result.correct_norm, dtype=np.float64),
        "confidence": np.asarray(result.confidence, dtype=np.float64),
        "probs": np.asarray(result.probs, dtype=np.float64),
        "answer": np.asarray(result.answer, dtype=np.int64),
    }


def compute_metrics(
    result: Any, *, n_boot: int = 1000, seed: int = 0, n_bins: int = 10
) -> dict[str, Metric]:
    """Every registered metric of a ScoreResult with paired percentile-bootstrap 95% intervals.

    All metrics share the same resampled item sets (so intervals of differences between metrics
    of one run are coherent); smECE uses the first EXPENSIVE_BOOT_CAP of them.
    """
    view = _view(result)
    n = len(view["correct"])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n)) if n_boot > 0 and n > 1 else None
    out: dict[str, Metric] = {}
    for name, fn in METRICS.items():
        value = fn(view, n_bins)
        if draws is None:
            out[name] = Metric(value, value, value)
            continue
        use = draws[:EXPENSIVE_BOOT_CAP] if name in _EXPENSIVE else draws
        stats = np.array([fn({k: a[idx] for k, a in view.items()}, n_bins) for idx in use])
        stats = stats[np.isfinite(stats)]
        if stats.size:
            lo, hi = np.quantile(stats, [0.025, 0.975])
            out[name] = Metric(value, float(lo), float(hi))
        else:
            out[name] = Metric(value, float("nan"), float("nan"))
    return out
