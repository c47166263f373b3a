"""Cheap fitness: score a candidate merge on a few *anchor* items, estimate its full-dev
metrics with an uncertainty, and spend full-dev scoring only on candidates that could still be
on the Pareto frontier (issue #17).

Why: an evolutionary per-layer search or a fine λ sweep proposes far more candidates than can
each be scored on every dev item. Most of them are clearly worse than some other candidate
after a few dozen well-chosen items, so scoring everything on everything wastes the budget.

The pieces, each a small pure function (numpy/scipy only, no I/O):

- `choose_anchors`: cluster the dev items by what the parents did on them and keep the item
  nearest each centroid, weighted by its cluster's share of the dev set — the anchor-point
  estimator of tinyBenchmarks (Polo et al. 2024). Items the parents treat alike are likely
  treated alike by their merges, so one item can stand for its cluster.
- `estimate`: the weighted accuracy and weighted ECE of a candidate on the anchors, with a
  bootstrap interval over anchors.
- `promising`: racing — drop a candidate once some other candidate's *pessimistic* bounds
  beat its *optimistic* bounds (Maron & Moore's Hoeffding races, applied to Pareto dominance).
- `estimate_mean`: a per-prompt metric (a diversity objective) on anchor prompts, weighted
  the same way, with a bootstrap interval over anchor prompts.
- `hypervolume` / `hypervolume_gap`: the (accuracy, ECE[, diversity]) hypervolume of a front,
  and a paired bootstrap over test items (and test prompts) of the difference between two
  fronts' hypervolumes, so "the cheap search found as good a front" is a statement with an
  interval.
- `spearman`: how well anchor estimates rank candidates against their full-dev scores.

ECE everywhere uses calmerge's equal-width bins (`calibration.equal_width_bins`), so a number
here and a number in a report mean the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calmerge.errors import ConfigError, did_you_mean
from calmerge.eval.calibration import equal_width_bins, expected_calibration_error
from calmerge.eval.metrics import Metric

#: objectives `promising` understands, with whether higher is better; any registered generation
#: (diversity) metric is understood too, its direction read from the metric registry
OBJECTIVES: dict[str, bool] = {"acc": True, "ece": False}


def higher_is_better(name: str) -> bool:
    """An objective's direction: accuracy and ECE, or a generation metric of the registry."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    from calmerge.eval.metrics import METRICS

    spec = METRICS.get(name) if name in METRICS else None
    if spec is None or spec.source != "generations":
        names = [*OBJECTIVES, *(s.name for s in METRICS.values() if s.source == "generations")]
        raise ConfigError(
            f"unknown objective '{name}' for racing",
            did_you_mean(name, names) or f"choose from {', '.join(names)}",
        )
    return spec.higher_is_better

# ───────────────────────────── anchors ─────────────────────────────


@dataclass(frozen=True)
class Anchors:
    """Anchor items of a dev set: `indices` (int, sorted ascending) are positions in the dev
    items, `weights` (float, one per anchor, sum 1) the share of the dev set each stands for."""

    indices: np.ndarray
    weights: np.ndarray


def _kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability
    ∝ squared distance to the nearest centre so far.

    Why our own: it stops early when every remaining point coincides with a centre (fewer
    distinct rows than k), so duplicate rows never become two centres of one empty cluster —
    the case scipy's kmeans2 only warns about.
    """
    centres = [x[rng.integers(len(x))]]
    d2 = np.sum((x - centres[0]) ** 2, axis=1)
    while len(centres) < k:
        total = d2.sum()
        if total <= 0:
            break
        centres.append(x[rng.choice(len(x), p=d2 / total)])
        d2 = np.minimum(d2, np.sum((x - centres[-1]) ** 2, axis=1))
    return np.array(centres)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 100) -> np.ndarray:
    """Lloyd's k-means from k-means++ seeds; returns a label per row, labels 0..c−1 with no
    empty cluster (an emptied cluster is dropped, its centre forgotten)."""
    centres = _kmeans_pp_init(x, k, rng)
    labels = np.full(len(x), -1)
    for _ in range(max_iter):
        d2 = np.sum((x[:, None, :] - centres[None, :, :]) ** 2, axis=2)
        new = np.argmin(d2, axis=1)  # ties go to the lower centre: deterministic
        if np.array_equal(new, labels):
            break
        labels = new
        used = np.unique(labels)  # drop emptied clusters
        labels = np.searchsorted(used, labels)
        centres = np.array([x[labels == c].mean(axis=0) for c in range(len(used))])
    return np.unique(labels, return_inverse=True)[1].reshape(-1)


def _cluster_anchors(x: np.ndarray, k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(anchor row, cluster size) per non-empty cluster of `x`: the member nearest the centroid
    (lowest row on ties)."""
    labels = _kmeans(x, k, rng)
    out = []
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        d2 = np.sum((x[members] - x[members].mean(axis=0)) ** 2, axis=1)
        out.append((int(members[np.argmin(d2)]), len(members)))
    return out


def allocate(sizes: Sequence[int], k: int) -> np.ndarray:
    """k anchors over strata of the given sizes: proportional, at least 1 each, never more
    than a stratum holds, rounded by largest remainder (ties to the earlier stratum).

    Why at least one: a stratum (a subject) without an anchor would be estimated by items of
    other subjects, which is the bias stratification is there to remove.
    """
    n_s = np.asarray(sizes, dtype=np.int64)
    if k < len(n_s):
        raise ConfigError(
            f"{k} anchors cannot cover {len(n_s)} strata",
            f"use at least {len(n_s)} anchors, or no strata",
        )
    quota = k * n_s / n_s.sum()
    alloc = np.minimum(np.maximum(1, np.floor(quota).astype(np.int64)), n_s)
    while alloc.sum() > k:  # the minimum of 1 overdrew: take from the most over-allocated
        over = np.where(alloc > 1, alloc - quota, -np.inf)
        alloc[int(np.argmax(over))] -= 1
    while alloc.sum() < k:  # largest remainder among strata with room
        short = np.where(alloc < n_s, quota - alloc, -np.inf)
        alloc[int(np.argmax(short))] += 1
    return alloc


def choose_anchors(
    features: np.ndarray,
    k: int,
    *,
    strata: Sequence[str] | None = None,
    seed: int = 0,
) -> Anchors:
    """The anchor items of a dev set (tinyBenchmarks' anchor points, Polo et al. 2024).

    `features` (n_items, d): per item what the parents did on it (e.g. base and aligned
    correctness and confidence). The items are clustered into k clusters by seeded k-means++
    (deterministic for a seed); each cluster's anchor is its item nearest the centroid, with
    weight cluster size / n. Features are used as given: scale the columns beforehand if they
    are not comparable. With `strata` (one label per item, e.g. subject), the k anchors are
    allocated over strata by `allocate` and items are clustered within their stratum; weights
    stay shares of the whole set. k ≥ n gives every item, weight 1/n. When the items have
    fewer distinct feature rows than k, there are fewer anchors than k (a duplicate anchor
    would add nothing).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = len(x)
    if n == 0:
        raise ConfigError("no items to choose anchors from", "check the dev split")
    if k < 1:
        raise ConfigError(f"anchor count must be at least 1, got {k}", "use e.g. k=50")
    if strata is not None and len(strata) != n:
        raise ConfigError(
            f"{len(strata)} strata labels for {n} items", "give one stratum label per item"
        )
    if k >= n:
        return Anchors(np.arange(n), np.full(n, 1.0 / n))
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(n)]
        counts = [k]
    else:
        names, inverse = np.unique(np.asarray(strata, dtype=str), return_inverse=True)
        groups = [np.flatnonzero(inverse == s) for s in range(len(names))]
        counts = list(allocate([len(g) for g in groups], k))
    picked: list[tuple[int, int]] = []
    for rows, k_s in zip(groups, counts, strict=True):
        picked += [(int(rows[a]), size) for a, size in _cluster_anchors(x[rows], int(k_s), rng)]
    picked.sort()
    indices = np.array([i for i, _ in picked], dtype=np.int64)
    weights = np.array([size for _, size in picked], dtype=np.float64) / n
    return Anchors(indices, weights)


# ───────────────────────────── estimates ─────────────────────────────


@dataclass(frozen=True)
class Estimate:
    """A candidate's full-dev metrics estimated from its anchor items: weighted accuracy and
    weighted ECE, each with a 95% bootstrap interval over anchors; `n` items were scored.
    `others`: further objectives' estimates by name (a diversity metric from anchor prompts)."""

    acc: Metric
    ece: Metric
    n: int
    others: tuple[tuple[str, Metric], ...] = ()

    def get(self, name: str) -> Metric:
        if name in ("acc", "ece"):
            return getattr(self, name)
        for key, metric in self.others:
            if key == name:
                return metric
        raise KeyError(f"the estimate has no '{name}'")


def weighted_ece(
    confidence: np.ndarray, correct: np.ndarray, weights: np.ndarray, n_bins: int = 10
) -> float:
    """ECE with sample weights: Σ_b (W_b/W)·|acc_b − conf_b|, acc_b and conf_b the weighted
    means in equal-width bin b (calmerge's bins), W_b the bin's weight.

    Why the rescaling by the largest weight: ECE does not change when all weights are scaled,
    and with equal weights it makes every weight exactly 1, so the sums below are calmerge's
    own count arithmetic and the result equals `expected_calibration_error` bit for bit.
    """
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not len(c) == len(y) == len(w):
        raise ValueError(f"lengths differ: {len(c)} confidences, {len(y)} outcomes, {len(w)} weights")
    if len(w) == 0 or w.max() <= 0:
        return float("nan")
    w = w / w.max()
    bins = equal_width_bins(c, n_bins)
    total = np.bincount(bins, weights=w, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=w * c, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=w * y, minlength=n_bins)
    nz = total > 0
    gap = np.abs(acc_sum[nz] - conf_sum[nz]) / total[nz]
    return float(np.sum(gap * (total[nz] / w.sum())))


def _interval(value: float, stats: np.ndarray, level: float) -> Metric:
    """Percentile interval of replicate statistics, widened to contain the point value.

    Why widened: racing reads lo/hi as pessimistic/optimistic bounds; a skewed bootstrap (ECE
    is biased upward on resamples) can put both quantiles on one side of the value, and an
    "optimistic" bound worse than the estimate itself would eliminate candidates unfairly.
    """
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return Metric(value, float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return Metric(value, float(min(lo, value)), float(max(hi, value)))


def estimate(
    anchors: Anchors,
    correct: np.ndarray,
    confidence: np.ndarray,
    *,
    n_bins: int = 10,
    n_boot: int = 200,
    seed: int = 0,
) -> Estimate:
    """A candidate's full-dev accuracy and ECE estimated from its anchor items.

    `correct` (0/1 or fractional scores in [0, 1]) and `confidence` are the candidate's values
    on the anchors, in the order of `anchors.indices`. Accuracy is Σ w·correct, ECE is
    `weighted_ece`. Interval: 95% percentile bootstrap over anchors (anchors resampled with
    replacement, their weights renormalised), widened to contain the value (`_interval`).
    """
    w = np.asarray(anchors.weights, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64).reshape(-1)
    c = np.asarray(confidence, dtype=np.float64).reshape(-1)
    if not len(w) == len(y) == len(c):
        raise ValueError(f"{len(w)} anchors but {len(y)} outcomes and {len(c)} confidences")
    acc = float(np.sum(w * y) / np.sum(w))
    ece = weighted_ece(c, y, w, n_bins)
    k = len(w)
    draws = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
    wd = w[draws]  # (B, k) resampled weights
    total = wd.sum(axis=1)
    acc_rows = (wd * y[draws]).sum(axis=1) / total
    bins = equal_width_bins(c, n_bins)[draws] + np.arange(n_boot)[:, None] * n_bins
    size = n_boot * n_bins
    gap_sum = np.bincount(bins.ravel(), (wd * (y - c)[draws]).ravel(), size).reshape(n_boot, n_bins)
    ece_rows = np.abs(gap_sum).sum(axis=1) / total  # Σ_b W_b·|acc_b − conf_b| / W
    return Estimate(_interval(acc, acc_rows, 0.95), _interval(ece, ece_rows, 0.95), k)


def estimate_mean(
    anchors: Anchors, values: np.ndarray, *, n_boot: int = 200, seed: int = 0
) -> Metric:
    """A per-prompt metric's mean over all dev prompts, estimated from its anchor prompts:
    Σ w·value, with a 95% percentile bootstrap over anchors (weights renormalised on each
    resample), widened to contain the value — `estimate`'s accuracy, for any per-prompt value
    (a diversity metric is the mean over prompts of each prompt's value)."""
    w = np.asarray(anchors.weights, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(w) != len(v):
        raise ValueError(f"{len(w)} anchors but {len(v)} values")
    value = float(np.sum(w * v) / np.sum(w))
    draws = np.random.default_rng(seed).integers(0, len(w), size=(n_boot, len(w)))
    rows = (w[draws] * v[draws]).sum(axis=1) / w[draws].sum(axis=1)
    return _interval(value, rows, 0.95)


# ───────────────────────────── racing ─────────────────────────────


def promising(
    estimates: Sequence[Estimate], objectives: Sequence[str] = ("acc", "ece")
) -> list[int]:
    """Indices of the candidates that could still be on the Pareto frontier.

    Candidate i is dropped when some other candidate j dominates it pessimistically-vs-
    optimistically: j's pessimistic bound (acc.lo, ece.hi) is at least as good as i's
    optimistic bound (acc.hi, ece.lo) in every objective and strictly better in one. This is
    the confidence-bound elimination of racing (Maron & Moore 1994, Hoeffding races), with
    "better" being Pareto dominance: even if i is as good as its interval allows and j as bad
    as its allows, j still dominates i, so i is not worth scoring on the full dev set.
    NaN bounds compare false, so a candidate with unknown bounds is kept (never dropped by
    missing evidence). "acc" is maximised, "ece" minimised, a generation metric as the registry
    says; any subset and order.
    """
    if not objectives:
        raise ConfigError("no objectives given", "use e.g. acc,ece")
    higher = [higher_is_better(name) for name in objectives]
    m = len(estimates)
    opt = np.empty((m, len(objectives)))
    pess = np.empty((m, len(objectives)))
    for i, e in enumerate(estimates):
        for j, name in enumerate(objectives):
            metric: Metric = e.get(name)
            if higher[j]:  # oriented so that higher is better
                opt[i, j], pess[i, j] = metric.hi, metric.lo
            else:
                opt[i, j], pess[i, j] = -metric.lo, -metric.hi
    # dominated[j, i]: j's pessimistic bounds dominate i's optimistic bounds
    ge = np.all(pess[:, None, :] >= opt[None, :, :], axis=2)
    gt = np.any(pess[:, None, :] > opt[None, :, :], axis=2)
    dominated = ge & gt
    np.fill_diagonal(dominated, False)
    return [i for i in range(m) if not dominated[:, i].any()]


# ───────────────────────────── hypervolume ─────────────────────────────


def _hv2_min(x: np.ndarray, y: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """2-D hypervolume of each row's points in minimisation form, (R, m) arrays → (R,).

    Sort by x (then y), and every point that lowers the running minimum of y adds the slab
    [y, previous minimum] × [x, x_ref]. Points not strictly better than ref in both are moved
    onto ref, where they add nothing (NaN points fail both and are ignored).
    """
    keep = (x < rx) & (y < ry)
    x, y = np.where(keep, x, rx), np.where(keep, y, ry)
    order = np.lexsort((y, x), axis=-1)
    x, y = np.take_along_axis(x, order, -1), np.take_along_axis(y, order, -1)
    running = np.minimum.accumulate(y, axis=-1)
    prev = np.concatenate([np.full((*y.shape[:-1], 1), ry), running[..., :-1]], axis=-1)
    return np.sum((rx - x) * np.clip(prev - y, 0.0, None), axis=-1)


def _hv3_min(x: np.ndarray, y: np.ndarray, z: np.ndarray, ref: Sequence[float]) -> np.ndarray:
    """3-D hypervolume in minimisation form, (R, m) arrays → (R,), by slicing along z.

    Points sorted by z: between the k-th and the next z level the dominated region is the 2-D
    hypervolume of the first k+1 points, so HV = Σ_k (z_{k+1} − z_k) · HV₂(points ≤ k), the
    last slab ending at the reference. O(m² log m) per row, every row at once — fronts have
    tens of points and the bootstrap a thousand rows. Tested against pymoo's HV.
    """
    rx, ry, rz = (float(r) for r in ref)
    keep = (x < rx) & (y < ry) & (z < rz)
    x, y, z = np.where(keep, x, rx), np.where(keep, y, ry), np.where(keep, z, rz)
    order = np.argsort(z, axis=-1, kind="stable")
    x, y, z = (np.take_along_axis(a, order, -1) for a in (x, y, z))
    z_next = np.concatenate([z[..., 1:], np.full((*z.shape[:-1], 1), rz)], axis=-1)
    total = np.zeros(z.shape[:-1])
    idx = np.arange(z.shape[-1])
    for k in range(z.shape[-1]):
        total += (z_next[..., k] - z[..., k]) * _hv2_min(np.where(idx <= k, x, rx), y, rx, ry)
    return total


def _hypervolume_rows(values: Sequence[np.ndarray], ref: Sequence[float],
                      higher: Sequence[bool]) -> np.ndarray:
    """Hypervolume of each row's points given per objective as (R, m) arrays, natural
    orientation (`higher[j]`: objective j is maximised), 2 or 3 objectives → (R,)."""
    mins = [-np.asarray(v, dtype=np.float64) if h else np.asarray(v, dtype=np.float64)
            for v, h in zip(values, higher, strict=True)]
    rmin = [-float(r) if h else float(r) for r, h in zip(ref, higher, strict=True)]
    if len(mins) == 2:
        return _hv2_min(mins[0], mins[1], *rmin)
    if len(mins) == 3:
        return _hv3_min(*mins, rmin)
    raise ValueError(f"hypervolume of {len(mins)} objectives: 2 or 3 are supported")


def hypervolume(
    points: np.ndarray, ref: Sequence[float], higher: Sequence[bool] = (True, False)
) -> float:
    """Volume dominated by the points, bounded by the reference point `ref` (both in the
    objectives' own orientation: by default (accuracy ↑, ECE ↓); a third column, e.g. a
    diversity metric, with its direction in `higher`). Points not better than ref in every
    objective are ignored. 2-D: one sort; 3-D: slicing (`_hv3_min`). Tested against pymoo."""
    d = len(ref)
    p = np.asarray(points, dtype=np.float64).reshape(-1, d)
    if not len(p):
        return 0.0
    return float(_hypervolume_rows([p[None, :, j] for j in range(d)], ref, higher)[0])


def _front_rows(
    correct: np.ndarray, conf: np.ndarray, counts: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and ECE (B, m) of each of m candidates in each of B resamples given by item
    multiplicities `counts` (B, n).

    Why bins from the full data: an item's bin depends only on its own confidence, so on a
    resample ECE = Σ_b |Σ_{i∈b} count_i·(y_i − c_i)| / n — one matrix product for all
    candidates and replicates (as `eval.bootstrap.Resamples.binned` does for one candidate).
    """
    m, n = correct.shape
    acc = counts @ correct.T / n
    signed = np.zeros((n, m * n_bins))
    bins = np.stack([equal_width_bins(row, n_bins) for row in conf]) + (np.arange(m) * n_bins)[:, None]
    signed[np.tile(np.arange(n), m), bins.ravel()] = (correct - conf).ravel()
    ece = np.abs(counts @ signed).reshape(len(counts), m, n_bins).sum(axis=2) / n
    return acc, ece


def _as_front(correct: np.ndarray, conf: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.atleast_2d(np.asarray(correct, dtype=np.float64))
    c = np.atleast_2d(np.asarray(conf, dtype=np.float64))
    if y.shape != c.shape:
        raise ValueError(f"front {name}: correct {y.shape} and confidence {c.shape} differ")
    return y, c


def hypervolume_gap(
    a_correct: np.ndarray,
    a_conf: np.ndarray,
    b_correct: np.ndarray,
    b_conf: np.ndarray,
    *,
    ref: Sequence[float],
    a_prompts: np.ndarray | None = None,
    b_prompts: np.ndarray | None = None,
    prompts_higher: bool = True,
    n_bins: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Metric:
    """HV(front A) − HV(front B) on test items, with a paired bootstrap interval.

    `a_correct`/`a_conf` (m_a, n): one row per candidate of front A on the same n test items;
    `b_*` (m_b, n) likewise. Each replicate resamples the item indices once, shared by every
    row of both fronts (paired: item difficulty cancels out of the difference), recomputes
    every row's accuracy and ECE (calmerge's binning) and both hypervolumes. With a third
    objective measured per prompt (`a_prompts`/`b_prompts` (m, n_p): each candidate's value on
    each of the same n_p test prompts, the objective their mean, `prompts_higher` its
    direction), the prompts are resampled too, independently of the items and shared by both
    fronts, and `ref` has three entries. `value` is the difference on the full data (ECE by
    `expected_calibration_error`); the percentile interval at `level` is widened to contain it.
    """
    ya, ca = _as_front(a_correct, a_conf, "A")
    yb, cb = _as_front(b_correct, b_conf, "B")
    n = ya.shape[1]
    if yb.shape[1] != n:
        raise ValueError(f"front A has {n} items, front B {yb.shape[1]}: they must share items")
    third = a_prompts is not None
    if third != (b_prompts is not None) or len(ref) != 2 + third:
        raise ValueError("a third objective needs per-prompt values of both fronts and a 3-D ref")
    higher = (True, False, prompts_higher)[: len(ref)]
    rng = np.random.default_rng(seed)

    def counts_of(size: int) -> np.ndarray:
        draws = rng.integers(0, size, size=(n_boot, size))
        return np.bincount((draws + np.arange(n_boot)[:, None] * size).ravel(),
                           minlength=n_boot * size).reshape(n_boot, size).astype(np.float64)

    def full(y: np.ndarray, c: np.ndarray, p: np.ndarray | None) -> float:
        cols = [[float(np.mean(r)) for r in y],
                [expected_calibration_error(cc, r, n_bins) for r, cc in zip(y, c, strict=True)]]
        if p is not None:
            cols.append([float(np.mean(r)) for r in p])
        return hypervolume(np.array(cols).T, ref, higher)

    pa = None if a_prompts is None else np.atleast_2d(np.asarray(a_prompts, dtype=np.float64))
    pb = None if b_prompts is None else np.atleast_2d(np.asarray(b_prompts, dtype=np.float64))
    if pa is not None and (len(pa) != len(ya) or len(pb) != len(yb) or pa.shape[1] != pb.shape[1]):
        raise ValueError("per-prompt values: one row per candidate, the same prompts for both")
    value = full(ya, ca, pa) - full(yb, cb, pb)
    counts = counts_of(n)
    cols_a, cols_b = list(_front_rows(ya, ca, counts, n_bins)), list(_front_rows(yb, cb, counts, n_bins))
    if pa is not None:
        pc = counts_of(pa.shape[1])
        cols_a.append(pc @ pa.T / pa.shape[1])
        cols_b.append(pc @ pb.T / pb.shape[1])
    hv_a = _hypervolume_rows(cols_a, ref, higher)
    hv_b = _hypervolume_rows(cols_b, ref, higher)
    return _interval(value, hv_a - hv_b, level)


# ───────────────────────────── ranking ─────────────────────────────


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of paired values (scipy's, ties averaged); NaN for fewer than
    3 pairs or a constant side, where a rank correlation says nothing."""
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{len(a)} and {len(b)} values: spearman needs pairs")
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b).statistic)
