"""How lm-eval scores a task, as hooks on a Benchmark: per-doc `process_results`, its
aggregations, and lm-eval's own group aggregates, ready to run on calmerge's log-likelihoods.

Why apart from `data.lmeval`: that module finds and builds lm-eval's tasks and turns their docs
into items; this one wraps the built task and group objects as the `TaskScoring` /
`GroupScoring` closures `eval.taskmetrics` calls, and checks that the benchmark has the
accuracy-like number calmerge needs. Every call into lm-eval's objects keeps the caller's global
RNGs (`_caller_rng_kept`): lm-eval draws from `random` where one would not expect it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from calmerge.errors import DataError
from calmerge.eval.data.benchmark import BenchmarkScoring, GroupScoring, TaskScoring
from calmerge.eval.data.items import Item

#: built-in multiple-choice metrics that read is_greedy rather than the log-likelihoods
_GREEDY_METRICS = frozenset({"exact_match"})


@contextlib.contextmanager
def _caller_rng_kept() -> Iterator[None]:
    """Run lm-eval code without changing the caller's global RNGs (random, numpy, torch CPU).

    lm-eval draws from the global `random` where one would not expect it (`Task.task_name`
    evaluates `random_task_id()` on every access), so every call into task objects is wrapped.
    """
    import numpy as np
    import torch

    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


@dataclass
class _Built:
    """One leaf task after its docs were read: its items and what scoring it needs."""

    name: str
    task: Any
    docs: list[Any]
    entries: list[tuple[str, Item]]
    own: str | None


# ───────────────────────────── how lm-eval scores them ─────────────────────────────


def _task_scoring(built: _Built, start: int) -> TaskScoring:
    from lm_eval.api.metrics import mean

    task, docs = built.task, built.docs
    aggregation = dict(task.aggregation())

    def process(results: Sequence[Sequence[tuple[float, Any]]]) -> list[dict[str, Any]]:
        with _caller_rng_kept():
            return [
                task.process_results(doc, list(res))
                for doc, res in zip(docs, results, strict=True)
            ]

    return TaskScoring(
        name=built.name, start=start, stop=start + len(docs), process=process,
        aggregation=aggregation, mean=mean, higher_is_better=dict(task.higher_is_better()),
        gold=built.own is None,
        needs_greedy=frozenset(aggregation) & _GREEDY_METRICS if built.own is None else frozenset(),
        process_name=built.own or "process_results",
    )


def _aggregator(group: Any) -> Callable[[Any], dict[str, float]]:
    """lm-eval's own `Group.aggregate`, fed and read in calmerge's terms (filter "none")."""

    def aggregate(values: Any) -> dict[str, float]:
        flat = {
            leaf: {"sample_len": size, **{f"{m},none": v for m, v in metrics.items()}}
            for leaf, (size, metrics) in values.items()
        }
        with _caller_rng_kept():
            out = group.aggregate(flat)
        return {
            k[: -len(",none")]: float(v)
            for k, v in out.items()
            if k.endswith(",none") and "_stderr" not in k
        }

    return aggregate


def _group_scoring(group: Any, pooled: bool = False) -> GroupScoring:
    return GroupScoring(
        name=group.name,
        leaves=tuple(t.task_name for t in group.get_all_tasks()),
        metrics=tuple((a.metric, bool(a.weight_by_size)) for a in group.aggregate_metric_list or ()),
        aggregate=_aggregator(group), pooled=pooled,
    )


def _bottom_up(groups: dict[str, Any]) -> list[Any]:
    """Groups with children before parents (lm-eval's `_collect_groups_bottom_up` order)."""
    from lm_eval.api.group import Group

    order: list[Any] = []
    seen: set[str] = set()

    def visit(g: Any) -> None:
        if g.name in seen:
            return
        for child in g:
            if isinstance(child, Group):
                visit(child)
        seen.add(g.name)
        order.append(g)

    for g in groups.values():
        visit(g)
    return order


def _names(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _lmeval_scoring(
    loaded: dict[str, Any], tasks: tuple[TaskScoring, ...], ref: str, notes: list[str]
) -> BenchmarkScoring:
    """Which node's metrics are the benchmark's, and the groups that aggregate under it."""
    from lm_eval.api.group import Group
    from lm_eval.config.group import AggMetricConfig

    groups = dict(loaded.get("groups") or {})
    children = {sub.name for g in groups.values() for sub in g.get_all_groups(recursive=False)}
    in_groups = {t.task_name for g in groups.values() for t in g.get_all_tasks()}
    top: list[Any] = [g for n, g in groups.items() if n not in children]
    top += [t for n, t in loaded["tasks"].items() if n not in in_groups]
    order = [_group_scoring(g) for g in _bottom_up(groups)]
    by_name = {t.name: t for t in tasks}
    single = top[0] if len(top) == 1 else None
    if single is not None and not isinstance(single, Group):
        root = single.task_name
    elif isinstance(single, Group) and single.has_aggregation:
        root = single.name
    else:
        # no lm-eval number covers everything named: pool the leaves, size-weighted, over the
        # metrics every leaf declares (as a group with weight_by_size: true would)
        top_names = [n.name if isinstance(n, Group) else n.task_name for n in top]
        declared = [set(t.aggregation) for t in tasks]
        common = [m for m in tasks[0].aggregation if all(m in d for d in declared)]
        pooled = Group(name="+".join(top_names), aggregate_metric_list=[
            AggMetricConfig(metric=m, weight_by_size=True) for m in common
        ])
        for node in top:
            pooled.add(node)
        order.append(_group_scoring(pooled, pooled=True))
        root = pooled.name
        why = (f"group {top_names[0]} has no aggregate_metric_list: calmerge pools its"
               if single is not None
               else f"{_names(top_names)} have no lm-eval aggregate over them: calmerge pools "
               "their")
        notes.append(
            f"{why} {sum(t.size for t in tasks)} docs (each metric the mean over the tasks "
            "weighted by their doc counts, as an lm-eval group with weight_by_size: true)"
        )
    scoring = BenchmarkScoring(tasks=tasks, groups=tuple(order), root=root)
    _check_acc(scoring, by_name, ref)
    return scoring


def _check_acc(scoring: BenchmarkScoring, tasks: dict[str, TaskScoring], ref: str) -> None:
    """calmerge needs one accuracy-like number per item (`BenchmarkScores.score`): the root's
    "acc" as a mean of per-doc values, or, on gold tasks, calmerge's own correctness."""
    if scoring.root in tasks:
        leaves, has_acc = (scoring.root,), "acc" in tasks[scoring.root].aggregation
    else:
        group = next(g for g in scoring.groups if g.name == scoring.root)
        leaves, has_acc = group.leaves, any(m == "acc" for m, _ in group.metrics)
    if not has_acc:
        if not scoring.gold:
            raise DataError(
                f"{ref}: '{scoring.root}' reports no acc and scores with its own process_results",
                "calmerge needs an accuracy-like metric named acc in the task's metric_list",
            )
        return
    for leaf in leaves:
        task = tasks[leaf]
        if "acc" not in task.aggregation:
            raise DataError(
                f"{ref}: {scoring.root} aggregates acc but task '{leaf}' has none",
                "calmerge needs every item's share of acc; add acc to that task's metric_list",
            )
        if not task.is_mean("acc"):
            raise DataError(
                f"{ref}: task '{leaf}' aggregates acc other than by its mean",
                "calmerge reads acc as a mean over docs (aggregation: mean)",
            )
