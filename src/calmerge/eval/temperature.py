"""Temperature scaling: the post-hoc calibration fix merging is compared with.

One T > 0 fitted on dev by NLL, applied as softmax(logits / T). It can repair calibration but
never changes which answer is chosen (argmax is invariant to T), which is why a merge that is
also more accurate beats it on both counts. Pure numpy/scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from calmerge.eval.calibration import nll


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
