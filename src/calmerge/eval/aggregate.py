"""Several tasks as one number: the aggregate metrics of a multi-task sweep point.

Why a module of its own: a sweep over MMLU, ARC and a local file reports each task, but the
frontier and the pick need one accuracy and one calibration error. The rules, chosen to match
lm-eval's group aggregation so a multi-task sweep reads like an lm-eval group:

- `acc` is `acc_macro` (the mean of the tasks' accuracies, lm-eval's `weight_by_size: false`)
  or `acc_micro` (the tasks' accuracies weighted by their item counts, `weight_by_size: true`),
  as the sweep's `aggregate` setting says; both are always stored. `acc_norm` likewise.
- Calibration (`ece`, `brier`, `nll`, …) is *pooled*: computed over the items of every task
  that defines one gold choice per item, as if they were one dataset — a confidence of 0.8
  should be right 80% of the time whichever task the question came from. `ece_macro` is the
  mean of the tasks' own ECEs. A task with its own metric and no gold (truthfulqa_mc2) is
  left out of the pooled calibration; the sweep notes it.
- Intervals come from a stratified bootstrap: each replicate resamples items *within* each
  task (every task keeps its size, so a replicate is a plausible re-draw of the same benchmark
  suite), and the same replicates serve every aggregate metric — except the `expensive` ones
  (smECE), whose pooled value is reported without an interval: its bootstrap over the pooled
  items costs as much as every task's own smECE interval together (which are kept), and made
  a multi-task sweep 1.3× slower than sweeping its tasks one by one
  (`benchmarks/multitask_sweep.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calmerge.eval.calibration import View
from calmerge.eval.metrics import AGGREGATES, METRICS, Metric, task_shares, view_metrics

#: the accuracy-like metrics aggregated over tasks (the rest are pooled over items)
TASK_MEANS = ("acc", "acc_norm")


@dataclass(frozen=True)
class TaskOutcome:
    """One task scored at one point: its metrics and the per-item arrays aggregation needs.

    `score`/`weight` give the task's accuracy as sum(score·weight)/sum(weight) (correctness and
    1 for an ordinary task); `view` is calmerge's per-item arrays (correct, confidence, probs,
    answer, …) and `gold` whether they mean anything (False: the task has its own metric).
    """

    name: str
    metrics: dict[str, Metric]
    score: np.ndarray
    weight: np.ndarray
    view: View
    gold: bool

    @property
    def n(self) -> int:
        return len(self.score)


def item_weights(weights: Sequence[np.ndarray], kind: str) -> np.ndarray:
    """Per-item weights over all tasks (concatenated in order), given each task's own item
    weights, whose weighted mean of the items' scores is the aggregate accuracy: a task's
    share spread over its items by their own weights. The verdict's paired bootstrap reads
    these (`results.points`)."""
    shares = task_shares([len(w) for w in weights], kind)
    return np.concatenate([s * w / w.sum() for s, w in zip(shares, weights, strict=True)])


def stratified_draws(sizes: Sequence[int], n_boot: int, seed: int) -> np.ndarray | None:
    """(B, N) item indices over the concatenated tasks, each replicate resampling within each
    task; None when there is nothing to resample (n_boot 0, or a single item)."""
    total = int(sum(sizes))
    if n_boot <= 0 or total <= 1:
        return None
    rng = np.random.default_rng(seed)
    parts, start = [], 0
    for n in sizes:
        parts.append(start + rng.integers(0, n, size=(n_boot, n)))
        start += n
    return np.concatenate(parts, axis=1)


def _interval(stats: np.ndarray) -> tuple[float, float]:
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return float(lo), float(hi)


def _task_mean_rows(
    tasks: Sequence[TaskOutcome], scores: Sequence[np.ndarray], draws: np.ndarray,
    shares: np.ndarray,
) -> np.ndarray:
    """An aggregate accuracy in every replicate: each task's weighted mean of its per-item
    `scores` on its resample, combined by the tasks' shares."""
    out = np.zeros(len(draws))
    start = 0
    for share, t, score in zip(shares, tasks, scores, strict=True):
        idx = draws[:, start : start + t.n] - start
        w = t.weight[idx]
        out += share * (score[idx] * w).sum(axis=1) / w.sum(axis=1)
        start += t.n
    return out


def _per_item(tasks: Sequence[TaskOutcome], name: str) -> list[np.ndarray] | None:
    """The per-item values whose weighted mean is each task's `name`: its scores for acc,
    calmerge's length-normalised correctness for acc_norm (only when every task has gold)."""
    if name == "acc":
        return [t.score for t in tasks]
    if all(t.gold for t in tasks):
        return [np.asarray(t.view["correct_norm"], dtype=float) for t in tasks]
    return None


def _pooled_view(tasks: Sequence[TaskOutcome]) -> View:
    """The gold tasks' per-item arrays as one dataset (probabilities padded with zeros to the
    widest choice count: a padded choice has probability 0, so no metric sees it)."""
    width = max(t.view["probs"].shape[1] for t in tasks)
    probs = [np.pad(t.view["probs"], ((0, 0), (0, width - t.view["probs"].shape[1]))) for t in tasks]
    view = {k: np.concatenate([t.view[k] for t in tasks]) for k in tasks[0].view if k != "probs"}
    view["probs"] = np.concatenate(probs)
    return view


def aggregate_metrics(
    tasks: Sequence[TaskOutcome], *, kind: str, n_boot: int, seed: int, n_bins: int
) -> dict[str, Metric]:
    """The aggregate metrics of several tasks scored at one point (see the module doc)."""
    if not tasks:
        raise ValueError("no tasks to aggregate")
    sizes = [t.n for t in tasks]
    draws = stratified_draws(sizes, n_boot, seed)
    out: dict[str, Metric] = {}
    for name in TASK_MEANS:
        if not all(name in t.metrics for t in tasks):
            continue
        for k in AGGREGATES:
            shares = task_shares(sizes, k)
            value = METRICS.get(f"{name}_{k}").fn([t.metrics for t in tasks], sizes)
            lo = hi = float("nan")
            per_item = _per_item(tasks, name)
            if draws is not None and per_item is not None:
                lo, hi = _interval(_task_mean_rows(tasks, per_item, draws, shares))
            out[f"{name}_{k}"] = Metric(value, lo, hi)
        out[name] = out[f"{name}_{kind}"]
    gold = [t for t in tasks if t.gold]
    if gold:
        pooled_draws = stratified_draws([t.n for t in gold], n_boot, seed)
        pooled = view_metrics(
            _pooled_view(gold), draws=pooled_draws, n_bins=n_bins, expensive_intervals=False
        )
        for name, m in pooled.items():
            if name not in TASK_MEANS:
                out[name] = m
        if all("ece" in t.metrics for t in gold):
            value = METRICS.get("ece_macro").fn([t.metrics for t in gold], [t.n for t in gold])
            out["ece_macro"] = Metric(value, float("nan"), float("nan"))
    return out
