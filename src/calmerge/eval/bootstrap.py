"""Bootstrap resamples and the replicate-batched forms of the choice metrics.

Why batched: 1000 replicates × ten metrics per sweep point, one replicate at a time, cost more
than scoring the point. `Resamples` holds the drawn item indices and their multiplicities, so
means and binned sums become one matrix product for all replicates; each `*_rows` function
gives a metric for every replicate at once, shape (B,), and is tested equal, replicate by
replicate, to the point metric of `eval.calibration` on that resample.
"""

from __future__ import annotations

import numpy as np

from calmerge.eval.calibration import View, equal_width_bins, smooth_ece_rows

# smECE costs ~ms per replicate even side by side; its bootstrap uses this many replicates.
EXPENSIVE_BOOT_CAP = 100


class Resamples:
    """B bootstrap resamples of n items: `draws` (B, n) item indices and, derived, `counts`
    (B, n) multiplicities, so a metric can be computed for all replicates at once."""

    def __init__(self, draws: np.ndarray) -> None:
        self.draws = draws
        self.n = draws.shape[1]
        rows = np.arange(len(draws))[:, None] * self.n
        self.counts = np.bincount((draws + rows).ravel(), minlength=draws.size).reshape(
            draws.shape
        ).astype(np.float64)

    def mean(self, per_item: np.ndarray) -> np.ndarray:
        """The mean of a per-item quantity in every replicate."""
        return self.counts @ per_item / self.n

    def binned(self, bins: np.ndarray, n_bins: int, *values: np.ndarray) -> list[np.ndarray]:
        """Per replicate and bin (B, n_bins): item counts, then the sums of each of `values`."""
        onehot = np.zeros((self.n, n_bins))
        onehot[np.arange(self.n), bins] = 1.0
        return [self.counts @ onehot] + [self.counts @ (onehot * v[:, None]) for v in values]


def _item_brier(v: View) -> np.ndarray:
    p = v["probs"]
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), v["answer"]] = 1.0
    return np.sum((p - onehot) ** 2, axis=1)


def _item_nll(v: View) -> np.ndarray:
    gold = v["probs"][np.arange(len(v["probs"])), v["answer"]]
    return -np.log(np.clip(gold, 1e-15, 1.0))


def _item_entropy(v: View) -> np.ndarray:
    p = v["probs"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, -p * np.log(p), 0.0).sum(axis=1)


def acc_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    return r.mean(v["correct"])


def acc_norm_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    return r.mean(v["correct_norm"])


def ece_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    bins = equal_width_bins(v["confidence"], n_bins)
    _, conf, acc = r.binned(bins, n_bins, v["confidence"], v["correct"])
    return np.abs(acc - conf).sum(axis=1) / r.n


def ece_mass_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    """Equal-mass bins over each replicate's sorted confidences: the bin edges fall at fixed
    positions of the sorted multiset, found in the running multiplicities (ties between
    different items with equal confidence are ordered by item, not by draw)."""
    order = np.argsort(v["confidence"], kind="stable")
    c, y = v["confidence"][order], v["correct"][order]
    w = r.counts[:, order]
    sizes = [len(a) for a in np.array_split(np.arange(r.n), min(n_bins, r.n))]
    edges = np.concatenate([[0], np.cumsum(sizes)])
    upto = np.cumsum(w, axis=1)  # positions covered up to and including each item
    cum_c = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * c, axis=1)], axis=1)
    cum_y = np.concatenate([np.zeros((len(w), 1)), np.cumsum(w * y, axis=1)], axis=1)
    # the item holding each edge position, for all replicates in one search: rows are made
    # disjoint by an offset larger than any position
    shift = (np.arange(len(w)) * (r.n + 1))[:, None]
    k = np.searchsorted((upto + shift).ravel(), (edges[None, :] + shift).ravel(), side="right")
    k = np.minimum(k.reshape(len(w), -1) - np.arange(len(w))[:, None] * r.n, r.n - 1)
    before = np.where(k > 0, np.take_along_axis(upto, np.maximum(k - 1, 0), axis=1), 0.0)
    extra = edges[None, :] - before
    conf = np.take_along_axis(cum_c, k, axis=1) + extra * c[k]
    acc = np.take_along_axis(cum_y, k, axis=1) + extra * y[k]
    return np.abs(np.diff(acc, axis=1) - np.diff(conf, axis=1)).sum(axis=1) / r.n


def mce_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    bins = equal_width_bins(v["confidence"], n_bins)
    count, conf, acc = r.binned(bins, n_bins, v["confidence"], v["correct"])
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(count > 0, np.abs(acc - conf) / count, 0.0)
    return gap.max(axis=1)


def brier_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    return r.mean(_item_brier(v))


def nll_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    return r.mean(_item_nll(v))


def smece_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    return smooth_ece_rows(v["confidence"][r.draws], v["correct"][r.draws])


def auroc_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    """Mann–Whitney U with multiplicities: each right answer beats the wrong ones of lower
    confidence (ties count ½); NaN where a replicate is all right or all wrong."""
    order = np.argsort(v["confidence"], kind="stable")
    c, pos = v["confidence"][order], v["correct"][order] > 0.5
    w = r.counts[:, order]
    wneg, wpos = w * ~pos, w * pos
    start = np.r_[0, np.flatnonzero(np.diff(c)) + 1]  # first item of each tie group
    group = np.cumsum(np.r_[0, np.diff(c) != 0])
    neg_before = np.concatenate([np.zeros((len(w), 1)), np.cumsum(wneg, axis=1)], axis=1)
    neg_group = np.add.reduceat(wneg, start, axis=1)  # wrong answers per tie group
    below = neg_before[:, start][:, group] + 0.5 * neg_group[:, group]
    n_pos, n_neg = wpos.sum(axis=1), wneg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (wpos * below).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def entropy_rows(v: View, r: Resamples, n_bins: int) -> np.ndarray:
    return r.mean(_item_entropy(v))
