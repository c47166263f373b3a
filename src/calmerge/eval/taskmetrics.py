"""A Benchmark's metrics from one ScoreResult: calmerge's own, and for lm-eval tasks lm-eval's.

Why a module of its own: calmerge's metrics (`eval.metrics`) read a gold answer per item, but an
lm-eval task says itself what its numbers are. truthfulqa_mc2's `process_results` turns the
choices' log-likelihoods into the probability mass on the true answers and calls it "acc";
mmlu's "acc" is a group aggregate over 57 leaf tasks. Reporting calmerge's "does choice 0 win"
under that name would be a silently wrong number. So for an lm-eval benchmark this module runs
the task's own program on calmerge's log-likelihoods — `process_results(doc, [(ll, is_greedy)])`
per doc, `aggregation()[metric]` over the docs, lm-eval's `Group.aggregate` over a group's leaf
tasks — and reports the result under lm-eval's names (`BenchmarkScores.metrics`).

The rules:
- a task with lm-eval's built-in multiple-choice process_results has a gold answer: calmerge's
  metrics stay, and lm-eval's are added (mcc, f1, brier_score, acc_bytes, exact_match, …) or,
  for acc and acc_norm, checked per doc to be the same numbers (they are the same argmax);
- a task with its own process_results has no gold answer calmerge can use (its doc_to_target
  is not "the" answer; mc2's true mass is not a top-label confidence): calmerge's metrics that
  read the answer are left out (`GOLD_FREE` stay) and the task's own metrics take their names;
- is_greedy comes from the scorer (`ScoreResult.greedy`); where it is unknown (None) a metric
  that needs it (exact_match) is left out with a note — never computed from False — and a
  task's own process_results that reads it is refused.

Intervals: every metric shares the draws of `compute_metrics` (same seed, same resampled item
sets, so lm-eval's acc and calmerge's acc get the same interval). A replicate is lm-eval's
pipeline run on the resampled docs: a task's mean-aggregated metric is the mean of its drawn
docs' values (all replicates at once); any other aggregation (f1, mcc, brier_score, a task's
own) is re-aggregated on the drawn docs for the first `EXPENSIVE_BOOT_CAP` replicates; a group
combines its leaves' replicate values with the replicate's doc counts as sizes (or equally, for
`weight_by_size: false`). A replicate in which a task drew no doc gives that task no value.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calmerge.errors import DataError
from calmerge.eval.bootstrap import EXPENSIVE_BOOT_CAP, Resamples
from calmerge.eval.data.benchmark import Benchmark, BenchmarkScoring, GroupScoring, TaskScoring
from calmerge.eval.metrics import Metric, compute_metrics, specs

#: calmerge's choice metrics that read no gold answer, kept for tasks without one; any other
#: (and any registered later) is left out for them
GOLD_FREE = frozenset({"entropy"})
_CHUNK = 128  # bootstrap replicates per block of item counts (bounds memory on large suites)


@dataclass(frozen=True)
class BenchmarkScores:
    """A Benchmark's metrics and what each item contributes to its accuracy.

    `metrics`: calmerge's and lm-eval's under their final names (for an lm-eval benchmark, the
    root task's or group's metrics under lm-eval's names). `score`/`weight`: per item, such that
    `metrics["acc"].value == (score*weight).sum()/weight.sum()` — the per-doc value of the
    root's acc (0/1 correctness for gold tasks, mc2's true mass for truthfulqa_mc2) with weight
    1, or 1/docs-of-its-task under a `weight_by_size: false` group; where lm-eval defines no acc
    (a gold task listing only acc_norm) `score` is calmerge's correctness and `metrics["acc"]`
    calmerge's accuracy. `gold`: False when calmerge's gold-based metrics were left out.
    `higher_is_better`: the direction of every metric in `metrics` (None: lm-eval's tasks
    disagree). `breakdown`: for an lm-eval benchmark, lm-eval's metrics of every task and group
    under it (mmlu's subjects and categories), with intervals.
    """

    metrics: dict[str, Metric]
    score: np.ndarray
    weight: np.ndarray
    gold: bool
    notes: tuple[str, ...]
    higher_is_better: dict[str, bool | None] = field(default_factory=dict)
    breakdown: dict[str, dict[str, Metric]] = field(default_factory=dict)


def benchmark_metrics(
    bench: Benchmark, result: Any, *, n_boot: int, seed: int, n_bins: int
) -> BenchmarkScores:
    """Every metric of `bench` from its ScoreResult, with percentile-bootstrap 95% intervals.

    Without scoring hooks (files, `hf:`) this is `compute_metrics` with score = correctness and
    weight = 1; for an lm-eval benchmark see the module doc.
    """
    calm = compute_metrics(result, n_boot=n_boot, seed=seed, n_bins=n_bins)
    directions: dict[str, bool | None] = {
        s.name: s.higher_is_better for s in specs("choices")
    }
    correct = np.asarray(result.correct, dtype=np.float64)
    notes = bench.notes
    if bench.scoring is not None and getattr(result, "mode", "loglik") != "loglik":
        if not bench.scoring.gold:
            raise DataError(
                f"{bench.ref}: the task's own metrics are computed from each choice's "
                f"log-likelihood, but these scores are {result.mode} mode",
                "score lmeval: data with --mode loglik",
            )
        notes += (f"{bench.name}: scored in {result.mode} mode, so only calmerge's metrics "
                  "are reported (lm-eval's read continuation log-likelihoods)",)
    elif bench.scoring is not None:
        return _lmeval_metrics(bench, bench.scoring, result, calm, directions, n_boot, seed)
    return BenchmarkScores(
        calm, correct, np.ones(len(correct)), True, notes, {k: directions[k] for k in calm}
    )


# ───────────────────────────── per-doc values ─────────────────────────────


class _GreedyUnknown(Exception):
    """A task's own process_results used is_greedy, which the scorer did not report."""


class _UnknownGreedy:
    """is_greedy where the scorer did not report it: reading it in any way raises, so a
    process_results that needs it is refused instead of being fed a made-up False."""

    def _refuse(self, *args: object) -> Any:
        raise _GreedyUnknown

    __bool__ = __int__ = __float__ = __index__ = _refuse
    __add__ = __radd__ = __mul__ = __rmul__ = __sub__ = __rsub__ = _refuse
    __and__ = __rand__ = __or__ = __ror__ = __eq__ = __ne__ = __lt__ = __gt__ = _refuse
    __hash__ = None  # type: ignore[assignment]


_UNKNOWN = _UnknownGreedy()


@dataclass
class _TaskValues:
    """One task's per-doc metric values: for metric m, `docs[m]` (item indices) and `vals[m]`."""

    task: TaskScoring
    docs: dict[str, list[int]]
    vals: dict[str, list[Any]]


def _doc_results(task: TaskScoring, result: Any, greedy: np.ndarray | None) -> list[list]:
    """Each doc's [(ll, is_greedy)] per choice, as lm-eval's `hf` model hands them over."""
    out = []
    for i in range(task.start, task.stop):
        k = int(result.mask[i].sum())
        lls = [float(x) for x in result.choice_logprobs[i, :k]]
        if greedy is not None:
            flags: list[Any] = [bool(x) for x in greedy[i, :k]]
        elif task.gold:
            flags = [False] * k  # read only by needs_greedy metrics, which are left out
        else:
            flags = [_UNKNOWN] * k
        out.append(list(zip(lls, flags, strict=True)))
    return out


def _task_values(
    bench: Benchmark, task: TaskScoring, result: Any, greedy: np.ndarray | None,
    notes: list[str],
) -> _TaskValues:
    try:
        per_doc = task.process(_doc_results(task, result, greedy))
    except _GreedyUnknown:
        raise DataError(
            f"{bench.ref}: task '{task.name}' reads is_greedy in its process_results "
            f"({task.process_name}), which these scores do not report",
            "score with a calmerge whose scorer reports greedy flags",
        ) from None
    dropped = task.needs_greedy if greedy is None else frozenset()
    if dropped:
        notes.append(
            f"{task.name}: {', '.join(sorted(dropped))} left out: it needs is_greedy, which "
            "these scores do not report"
        )
    docs: dict[str, list[int]] = {}
    vals: dict[str, list[Any]] = {}
    for d, metrics in enumerate(per_doc):
        for m, v in metrics.items():
            if m in dropped:
                continue
            if isinstance(v, _UnknownGreedy):
                raise DataError(
                    f"{bench.ref}: task '{task.name}' returns is_greedy as its {m}",
                    "these scores do not report greedy flags",
                )
            docs.setdefault(m, []).append(task.start + d)
            vals.setdefault(m, []).append(v)
    if task.gold and "acc" in vals:
        # lm-eval's acc and calmerge's correctness are the same argmax against the same
        # gold; if they ever differ, calmerge's calibration metrics describe other answers
        ours = np.asarray(result.correct, dtype=np.float64)[docs["acc"]]
        bad = np.flatnonzero(np.asarray(vals["acc"], dtype=np.float64) != ours)
        if bad.size:
            raise RuntimeError(
                f"{task.name} doc {docs['acc'][bad[0]] - task.start}: lm-eval's acc and "
                "calmerge's correctness disagree (a calmerge bug; please report it)"
            )
    return _TaskValues(task, docs, vals)


# ───────────────────────────── the bootstrap ─────────────────────────────


def _draws(n: int, n_boot: int, seed: int) -> np.ndarray | None:
    """The resampled item sets of `compute_metrics` (same generator, same call)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n)) if n_boot > 0 and n > 1 else None


def _count_blocks(draws: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Item multiplicities (rows: replicates) in blocks of `_CHUNK` replicates."""
    for s in range(0, len(draws), _CHUNK):
        rows = slice(s, min(s + _CHUNK, len(draws)))
        yield rows, Resamples(draws[rows]).counts


def _safe_aggregate(fn: Any, values: list[Any]) -> float:
    if not values:
        return float("nan")
    try:
        return float(fn(values))
    except (ValueError, ZeroDivisionError, FloatingPointError, TypeError):
        return float("nan")  # e.g. an f1 or mcc over a replicate with one class only


def _task_replicates(
    values: Mapping[str, _TaskValues], draws: np.ndarray
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Per task and metric, its value in each replicate; and each task's doc count in each.

    One pass over blocks of item multiplicities serves every task's mean-aggregated metrics
    (a replicate's mean is counts @ values / counts); other aggregations are re-run on each of
    the first EXPENSIVE_BOOT_CAP replicates' drawn docs, in draw order.
    """
    b = len(draws)
    sizes = {name: np.zeros(b) for name in values}
    num = {(name, m): np.zeros(b) for name, tv in values.items() for m in tv.vals
           if tv.task.is_mean(m)}
    den = {key: np.zeros(b) for key in num}
    cols = {key: np.asarray(values[key[0]].docs[key[1]]) for key in num}
    vecs = {key: np.asarray(values[key[0]].vals[key[1]], dtype=np.float64) for key in num}
    for rows, counts in _count_blocks(draws):
        for name, tv in values.items():
            sizes[name][rows] = counts[:, tv.task.start : tv.task.stop].sum(axis=1)
        for key in num:
            c = counts[:, cols[key]]
            num[key][rows] = c @ vecs[key]
            den[key][rows] = c.sum(axis=1)
    reps: dict[str, dict[str, np.ndarray]] = {name: {} for name in values}
    with np.errstate(invalid="ignore", divide="ignore"):
        for (name, m), total in num.items():
            reps[name][m] = np.where(den[(name, m)] > 0, total / den[(name, m)], np.nan)
    capped = draws[:EXPENSIVE_BOOT_CAP]
    for name, tv in values.items():
        task = tv.task
        for m in (m for m in tv.vals if not task.is_mean(m)):
            pos = np.full(task.size, -1)  # doc -> position in vals[m] (-1: no value)
            pos[np.asarray(tv.docs[m]) - task.start] = np.arange(len(tv.docs[m]))
            fn, vals = task.aggregate_fn(m), tv.vals[m]
            stats = []
            with warnings.catch_warnings():  # sklearn's warnings on one-class replicates
                warnings.simplefilter("ignore")
                for idx in capped:
                    drawn = pos[idx[(idx >= task.start) & (idx < task.stop)] - task.start]
                    stats.append(_safe_aggregate(fn, [vals[j] for j in drawn[drawn >= 0]]))
            reps[name][m] = np.array(stats)
    return reps, sizes


def _group_replicates(
    group: GroupScoring, reps: dict[str, dict[str, np.ndarray]], sizes: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The group's metrics per replicate, as `aggregate_subtask_metrics` over its leaves."""
    out: dict[str, np.ndarray] = {}
    for metric, by_size in group.metrics:
        leaves = [leaf for leaf in group.leaves if metric in reps[leaf]]
        if not leaves:
            continue
        length = min(len(reps[leaf][metric]) for leaf in leaves)
        v = np.stack([reps[leaf][metric][:length] for leaf in leaves])
        n = np.stack([sizes[leaf][:length] for leaf in leaves])
        w = n if by_size else np.where(n > 0, 1.0, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[metric] = np.nansum(np.where(w > 0, v * w, 0.0), axis=0) / np.sum(w, axis=0)
        if not by_size:  # every leaf counts, so a leaf with no value leaves none
            out[metric] = np.where(np.isnan(v).any(axis=0), np.nan, out[metric])
    return out


def _interval(value: float, stats: np.ndarray | None) -> Metric:
    if stats is None:
        return Metric(value, value, value)
    stats = stats[np.isfinite(stats)]
    if not stats.size:
        return Metric(value, float("nan"), float("nan"))
    lo, hi = np.quantile(stats, [0.025, 0.975])
    return Metric(value, float(lo), float(hi))


# ───────────────────────────── lm-eval's numbers ─────────────────────────────


def _directions(
    scoring: BenchmarkScoring, node: str, tasks: Mapping[str, TaskScoring]
) -> dict[str, bool | None]:
    """higher_is_better of a task, or of a group as lm-eval propagates it (None on conflict)."""
    if node in tasks:
        return dict(tasks[node].higher_is_better)
    group = next(g for g in scoring.groups if g.name == node)
    out: dict[str, bool | None] = {}
    for leaf in group.leaves:
        for m, h in tasks[leaf].higher_is_better.items():
            out[m] = h if m not in out else (out[m] if out[m] == h else None)
    return out


def _lmeval_metrics(
    bench: Benchmark, scoring: BenchmarkScoring, result: Any, calm: dict[str, Metric],
    directions: dict[str, bool | None], n_boot: int, seed: int,
) -> BenchmarkScores:
    if tuple(result.ids) != tuple(it.id for it in bench.items):
        raise ValueError("the ScoreResult is not of this benchmark's items")
    expected = [f"{t.name}-{d}" for t in scoring.tasks for d in range(t.size)]
    if [it.id for it in bench.items] != expected:
        # the hooks read doc d of a task at item start+d: items sliced or reordered after
        # loading (e.g. few-shot examples taken off a dev split) would be scored as other docs
        raise ValueError(
            f"{bench.ref}: the items are not the ones the task scoring was built for; "
            "score lm-eval benchmarks whole (or drop their scoring: calmerge's metrics only)"
        )
    greedy = getattr(result, "greedy", None)
    notes = list(bench.notes)
    tasks = {t.name: t for t in scoring.tasks}
    values = {t.name: _task_values(bench, t, result, greedy, notes) for t in scoring.tasks}
    # point values: lm-eval's aggregation of each task, then lm-eval's Group.aggregate
    nodes: dict[str, dict[str, float]] = {
        name: {m: float(tv.task.aggregate_fn(m)(v)) for m, v in tv.vals.items()}
        for name, tv in values.items()
    }
    for group in scoring.groups:
        if group.metrics:
            nodes[group.name] = group.aggregate(
                {leaf: (tasks[leaf].size, nodes[leaf]) for leaf in group.leaves}
            )
    # intervals from the shared draws
    draws = _draws(len(bench.items), n_boot, seed)
    reps: dict[str, dict[str, np.ndarray]] = {}
    sizes: dict[str, np.ndarray] = {}
    if draws is not None:
        reps, sizes = _task_replicates(values, draws)
        for group in scoring.groups:
            reps[group.name] = _group_replicates(group, reps, sizes)
    measured = {
        node: {m: _interval(v, reps[node].get(m) if draws is not None else None)
               for m, v in metrics.items()}
        for node, metrics in nodes.items()
    }
    root = measured[scoring.root]
    for m, metric in root.items():
        if not np.isfinite(metric.value):
            notes.append(f"{scoring.root}: lm-eval's {m} is not finite ({metric.value})")
    gold = scoring.gold
    if gold:  # calmerge's order, lm-eval's values under shared names, lm-eval's others after
        merged = {**calm, **root}
    else:  # the task's own metrics first, then calmerge's that read no answer
        merged = {**root, **{k: v for k, v in calm.items() if k in GOLD_FREE and k not in root}}
    hib = {k: directions.get(k) for k in merged}
    hib.update(_directions(scoring, scoring.root, tasks))
    score, weight = _acc_shares(bench, scoring, values, result, gold)
    if "acc" in merged and not np.isclose(
        (score * weight).sum() / weight.sum(), merged["acc"].value, rtol=1e-9, atol=1e-12
    ):
        raise RuntimeError(f"{bench.ref}: the per-item acc shares do not add up to acc")
    breakdown = {
        node: metrics for node, metrics in measured.items()
        if not any(g.pooled and g.name == node for g in scoring.groups)
    }
    return BenchmarkScores(
        merged, score, weight, gold, tuple(dict.fromkeys(notes)),
        {k: hib.get(k) for k in merged}, breakdown if len(breakdown) > 1 else {},
    )


def _acc_shares(
    bench: Benchmark, scoring: BenchmarkScoring, values: Mapping[str, _TaskValues],
    result: Any, gold: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Per item, its value of the root's acc and its weight in it (see BenchmarkScores)."""
    n = len(bench.items)
    groups = {g.name: g for g in scoring.groups}
    root = groups.get(scoring.root)
    if root is None:
        leaves, by_size = (scoring.root,), True
        has_acc = "acc" in values[scoring.root].vals
    else:
        by_size = dict(root.metrics).get("acc", True)
        leaves, has_acc = root.leaves, "acc" in dict(root.metrics)
    if not has_acc:
        if not gold:
            raise DataError(
                f"{bench.ref}: {scoring.root} reports no acc", "calmerge needs one accuracy"
            )
        return np.asarray(result.correct, dtype=np.float64), np.ones(n)
    score = np.full(n, np.nan)
    weight = np.zeros(n)
    for leaf in leaves:
        tv = values[leaf]
        docs = tv.docs.get("acc", [])
        if len(docs) != tv.task.size:
            raise DataError(
                f"{bench.ref}: task '{leaf}' returned acc for {len(docs)} of its "
                f"{tv.task.size} docs",
                "calmerge needs every item's share of acc",
            )
        score[docs] = np.asarray(tv.vals["acc"], dtype=np.float64)
        weight[docs] = 1.0 if by_size else 1.0 / tv.task.size
    return score, weight
