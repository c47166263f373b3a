"""What one data reference scores: its items and, for lm-eval tasks, how lm-eval turns their
scores into metrics.

Why a type of its own: a file's items are measured by calmerge's metrics alone, but an
lm-evaluation-harness task is items *plus a program* — its `process_results`, its metric list
and aggregations, its groups' weights. truthfulqa_mc2's "acc" is the probability mass on the
true answers, not "does choice 0 win"; mmlu's "acc" is a size-weighted mean over 57 leaf tasks.
Reading only the items loses that program and gives a number under lm-eval's name that is not
lm-eval's. A `Benchmark` keeps both, and `eval.taskmetrics.benchmark_metrics` runs the program
on calmerge's log-likelihoods.

The hooks are plain callables (closures over lm-eval's task objects, built by `data.lmeval`), so
this module imports nothing of lm-eval and a Benchmark with `scoring=None` (files, `hf:`) costs
nothing. Sources whose data carries its own scoring register a loader here
(`@benchmark_source("lmeval")`); every other source is its items and calmerge's metrics.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calmerge.errors import DataError
from calmerge.eval.data.hf import _HF_BUILDERS, _HF_SUFFIXES, _is_split_word
from calmerge.eval.data.items import Item
from calmerge.registry import Registry

#: one doc's requests as lm-eval hands them to process_results: (log-likelihood, is_greedy)
Results = Sequence[tuple[float, Any]]


@dataclass(frozen=True)
class TaskScoring:
    """How lm-eval scores one leaf task, whose docs are `items[start:stop]` in doc order.

    `process(results)` runs the task's own `process_results` (built-in or the YAML's
    `!function`) on every doc, given each doc's `[(ll, is_greedy)]` per choice, and returns the
    per-doc metric values; `aggregation[m]` turns a metric's
    per-doc values into the task's number, and a metric process_results returns without an
    aggregation is averaged with `mean` — both exactly as lm-eval does. `gold`: the built-in
    multiple-choice process_results, so `doc_to_target` is the answer and calmerge's gold-based
    metrics mean what they say. `needs_greedy`: metrics that read is_greedy (exact_match); they
    are left out when the scorer does not report greediness.
    """

    name: str
    start: int
    stop: int
    process: Callable[[Sequence[Results]], list[dict[str, Any]]]
    aggregation: Mapping[str, Callable[[list[Any]], Any]]
    mean: Callable[[list[Any]], Any]
    higher_is_better: Mapping[str, bool | None]
    gold: bool
    needs_greedy: frozenset[str] = frozenset()
    process_name: str = "process_results"

    @property
    def size(self) -> int:
        return self.stop - self.start

    def aggregate_fn(self, metric: str) -> Callable[[list[Any]], Any]:
        return self.aggregation.get(metric, self.mean)

    def is_mean(self, metric: str) -> bool:
        """Aggregated by lm-eval's plain mean, so the per-doc values can be resampled directly."""
        return self.aggregate_fn(metric) is self.mean


@dataclass(frozen=True)
class GroupScoring:
    """A group's aggregate: for each `(metric, weight_by_size)` the mean over its LEAF tasks.

    lm-eval 0.4.13's `Group.aggregate` reads every leaf under the group (`get_all_tasks()`),
    not its subgroups' aggregates, weighting each leaf by its doc count or equally; `aggregate`
    is that function itself: `aggregate({leaf: (n_docs, {metric: value})}) -> {metric: value}`.
    `pooled`: not an lm-eval group but calmerge's own root over tasks lm-eval does not
    aggregate (a tag, several names, a group without aggregate_metric_list), size-weighted.
    """

    name: str
    leaves: tuple[str, ...]
    metrics: tuple[tuple[str, bool], ...]
    aggregate: Callable[[Mapping[str, tuple[int, Mapping[str, float]]]], dict[str, float]]
    pooled: bool = False


@dataclass(frozen=True)
class BenchmarkScoring:
    """lm-eval's program for a benchmark: its leaf tasks (in item order), its groups (children
    before parents) and `root`, the task or group whose metrics are the benchmark's."""

    tasks: tuple[TaskScoring, ...]
    groups: tuple[GroupScoring, ...]
    root: str

    @property
    def gold(self) -> bool:
        """Every task's answer is its doc_to_target (calmerge's gold-based metrics are defined)."""
        return all(t.gold for t in self.tasks)


@dataclass(frozen=True)
class Benchmark:
    """What one data reference scores: its items and, for lm-eval tasks, how lm-eval turns their
    scores into metrics."""

    ref: str
    items: tuple[Item, ...]
    scoring: BenchmarkScoring | None = None  # None for files / hf: calmerge's metrics only
    notes: tuple[str, ...] = ()  # human-readable, shown in reports/CLI

    @property
    def name(self) -> str:
        """A short default display name: lmeval:mmlu -> "mmlu", lmeval:a,b -> "a+b", a file
        path -> its stem, hf:x/y:cfg:split -> "y:cfg"."""
        return display_name(self.ref)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(.*)$", re.DOTALL)


def display_name(ref: str | Path) -> str:
    """The short name of a data reference (see `Benchmark.name`); pure string work, so a
    reference that does not load still has a name to report."""
    text = str(ref)
    match = _SCHEME.match(text)
    if match is None or match.group(1) not in ("file", "hf", "lmeval"):
        return Path(text).stem or text
    source, body = match.group(1), match.group(2).partition("?")[0]
    if source == "lmeval":
        names = [n.strip() for n in body.split(",") if n.strip()]
        return "+".join(Path(n).stem if n.endswith((".yaml", ".yml")) else n for n in names)
    if source == "hf":
        parts = re.split(r":(?![^\[]*\])", body)
        path, rest = parts[0], parts[1:]
        if path in _HF_BUILDERS and rest:
            return Path(rest[0]).stem
        config = None
        if (len(rest) == 1 and not _is_split_word(rest[0])) or len(rest) >= 2:
            config = rest[0]
        local = Path(path)
        base = local.stem if local.suffix.lower() in _HF_SUFFIXES else local.name or path
        return f"{base}:{config}" if config else base
    return Path(body).stem or body  # file:PATH


BenchmarkLoader = Callable[[str, str | None], Benchmark]  # (reference body, split) -> Benchmark
_BENCHMARKS: Registry[BenchmarkLoader] = Registry("benchmark source", error=DataError)


def benchmark_source(name: str) -> Callable[[BenchmarkLoader], BenchmarkLoader]:
    """Register `fn(body, split) -> Benchmark` for references `name:body` whose data carries its
    own scoring (lm-eval tasks); sources without one are wrapped by `load_benchmark`."""

    def register(fn: BenchmarkLoader) -> BenchmarkLoader:
        _BENCHMARKS.add(name, fn)
        return fn

    return register


def benchmark_loader(source: str) -> BenchmarkLoader | None:
    """The registered loader of a source, or None: its items are all there is to it."""
    return _BENCHMARKS.get(source) if source in _BENCHMARKS.names() else None
