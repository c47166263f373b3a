"""The post-hoc baseline merging is compared with: the aligned model, temperature-scaled.

Temperature scaling fits one T on dev (NLL) and divides the aligned model's test choice
log-likelihoods by it. It can repair calibration but never changes which answer is chosen, so
a merge that is both more accurate and better calibrated beats it on both counts. Pure: it takes
stored per-item predictions and returns metrics; loading them is `results.points`' job.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from calmerge.eval.metrics import Metric, compute_metrics
from calmerge.eval.score import finalize
from calmerge.eval.temperature import fit_temperature
from calmerge.results.store import Prediction


def choice_arrays(preds: Sequence[Prediction]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log-likelihoods n×C padded with −inf, offered-choice mask, gold index) of predictions."""
    width = max(len(p.logprobs) for p in preds)
    ll = np.full((len(preds), width), -np.inf)
    for i, p in enumerate(preds):
        ll[i, : len(p.logprobs)] = p.logprobs
    return ll, np.isfinite(ll), np.array([p.answer for p in preds])


def temperature_scaled(
    dev: Sequence[Prediction], test: Sequence[Prediction], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Metric] | None:
    """Every metric of `test` after softmax(ll / T) with T fitted on `dev`, plus 'temperature'.

    None without both splits (there is nothing to fit on, or nothing to report on).
    """
    if not dev or not test:
        return None
    dev_ll, _, dev_y = choice_arrays(dev)
    temp = fit_temperature(dev_ll, dev_y)
    ll, mask, y = choice_arrays(test)
    scaled = finalize([p.item_id for p in test], ll / temp, mask, y, np.ones_like(ll), "loglik")
    out = dict(compute_metrics(scaled, n_boot=n_boot, seed=seed))
    out["temperature"] = Metric(float(temp), float("nan"), float("nan"))
    return out
