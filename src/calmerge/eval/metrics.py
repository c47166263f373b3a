"""The one description of every metric: `Metric` (a measured value) and `MetricSpec` (what a
metric is), each metric registered once in `METRICS`.

Why one registry: a metric used to be described in five tables (calibration's functions and
directions, diversity's functions, Pareto's objectives and diversity preference, the figures'
labels and percent set, the CLI's rows) that drifted apart. Diversity stored `embed_distance`
while Pareto and the figures only knew `embed_div`, so embedding diversity was never a default
objective, never drawn, and asking for it as an objective answered "did you mean 'embed_div'?".
Now the bootstrap, the diversity measurement, Pareto objectives and their orientation, figure
labels and scaling, report columns and the CLI table all read the spec; adding a metric is one
function plus one registration below. Registration order is the display order.

Where the code lives: the numeric functions (ECE, smECE, their batched bootstrap forms,
distinct-n, self-BLEU, embeddings) stay pure in `calibration` and `diversity`, which import
nothing of calmerge's metrics; this module says which of them are metrics and how to read them,
and measures them (`compute_metrics` for scored items, `diversity_metrics` for generations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from calmerge.errors import DataError
from calmerge.eval import bootstrap as boot
from calmerge.eval import calibration as cal
from calmerge.eval import diversity as div
from calmerge.eval.bootstrap import EXPENSIVE_BOOT_CAP, Resamples
from calmerge.eval.calibration import View
from calmerge.registry import Registry

# ───────────────────────────── the value type ─────────────────────────────


@dataclass(frozen=True)
class Metric:
    """A measured value with its bootstrap 95% interval (lo/hi are nan when unknown)."""

    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


# ───────────────────────────── the spec ─────────────────────────────

Direction = Literal["max", "min"]
#: "choices": computed from the scored multiple-choice items of each split;
#: "generations": from sampled generations, which do not depend on the split;
#: "tasks": combined from the tasks' own values in a multi-task sweep (`eval.aggregate`).
Source = Literal["choices", "generations", "tasks"]
SOURCES: tuple[str, ...] = get_args(Source)
#: the split name generation metrics are stored under (and that objectives fall back to)
GENERATION_SPLIT = "gen"

ChoiceFn = Callable[[View, int], float]
#: the same metric for all bootstrap replicates at once: fn(view, resamples, n_bins) -> (B,)
RowsFn = Callable[[View, Any, int], np.ndarray]
PromptFn = Callable[[list[str]], float]
SamplesFn = Callable[[Sequence[Sequence[str]]], float]


@dataclass(frozen=True)
class MetricSpec:
    """Everything any part of calmerge needs to know about one metric.

    `fn` is the point estimate: `fn(view, n_bins)` for choice metrics, `fn(samples)` over every
    prompt's samples for generation metrics. `prompt_values` (generation metrics only): each
    prompt's own value, `fn` being their mean — what an estimate from a subset of prompts and
    a bootstrap over prompts need. `rows` is a choice metric's replicate-batched form
    (None: the bootstrap calls `fn` once per replicate). `percent`: stored as a fraction, drawn
    and printed as percent. `expensive`: the bootstrap uses only its first
    `bootstrap.EXPENSIVE_BOOT_CAP` replicates. `diversity_rank`: order of preference for the
    default third Pareto objective (None: never a default). `needs_embedder`: needs the
    sentence-embedding model, so it is skipped when embedding diversity is off.
    """

    name: str
    direction: Direction
    label: str
    unit: str
    source: Source
    fn: Callable[..., float]
    rows: RowsFn | None = None
    percent: bool = False
    expensive: bool = False
    diversity_rank: int | None = None
    needs_embedder: bool = False
    prompt_values: Callable[[Sequence[Sequence[str]]], np.ndarray] | None = None

    def __post_init__(self) -> None:
        # a malformed spec is a bug in calmerge: refuse it at import, before any number is made
        if self.direction not in get_args(Direction):
            raise ValueError(f"metric {self.name!r}: direction must be 'max' or 'min'")
        if self.source not in SOURCES:
            raise ValueError(f"metric {self.name!r}: source must be one of {SOURCES}")
        if not (self.label and self.unit):
            raise ValueError(f"metric {self.name!r}: needs a label and a unit")
        if self.source != "choices" and (self.rows is not None or self.expensive):
            raise ValueError(f"metric {self.name!r}: only choice metrics are bootstrapped")
        if self.source != "generations" and self.needs_embedder:
            raise ValueError(f"metric {self.name!r}: only generation metrics embed samples")
        if (self.source == "generations") != (self.prompt_values is not None):
            raise ValueError(f"metric {self.name!r}: generation metrics, and only they, have"
                             " per-prompt values")

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "max"

    @property
    def scale(self) -> float:
        """The factor from the stored value to the drawn and printed one."""
        return 100.0 if self.percent else 1.0

    @property
    def axis_label(self) -> str:
        """The label with the unit of what is drawn: 'accuracy [%]', 'NLL [nats]'."""
        return f"{self.label} [{'%' if self.percent else self.unit}]"


METRICS: Registry[MetricSpec] = Registry("metric")


def choice_metric(
    name: str,
    direction: Direction,
    *,
    label: str,
    unit: str,
    rows: RowsFn | None = None,
    percent: bool = False,
    expensive: bool = False,
    diversity_rank: int | None = None,
) -> Callable[[ChoiceFn], ChoiceFn]:
    """Register `fn(view, n_bins) -> float` as a metric of scored multiple-choice items."""

    def deco(fn: ChoiceFn) -> ChoiceFn:
        METRICS.add(
            name,
            MetricSpec(name, direction, label, unit, "choices", fn, rows, percent, expensive,
                       diversity_rank),
        )
        return fn

    return deco


def generation_metric(
    name: str,
    direction: Direction,
    *,
    label: str,
    unit: str,
    per_prompt: bool = True,
    diversity_rank: int | None = None,
    needs_embedder: bool = False,
) -> Callable[[Callable], Callable]:
    """Register a metric of sampled generations.

    `per_prompt=True`: `fn(samples of one prompt) -> float` (diversity is measured for the same
    request, never across requests). `per_prompt=False`: `fn` takes every prompt's samples at
    once and returns each prompt's value — embedding distance does, so that all texts are
    encoded in one batch. Either way the metric is the mean over prompts.
    """

    def deco(fn: Callable) -> Callable:
        values = _each_prompt(fn) if per_prompt else _as_array(fn)
        METRICS.add(
            name,
            MetricSpec(name, direction, label, unit, "generations", _mean_over_prompts(values, name),
                       diversity_rank=diversity_rank, needs_embedder=needs_embedder,
                       prompt_values=values),
        )
        return fn

    return deco


TasksFn = Callable[[Sequence[dict[str, "Metric"]], Sequence[int]], float]


def task_metric(
    name: str, direction: Direction, *, label: str, unit: str, percent: bool = False
) -> Callable[[TasksFn], TasksFn]:
    """Register `fn(metrics of each task, item count of each task) -> float`: a metric of a
    multi-task sweep's aggregate split, combined from the tasks' own values."""

    def deco(fn: TasksFn) -> TasksFn:
        METRICS.add(name, MetricSpec(name, direction, label, unit, "tasks", fn, percent=percent))
        return fn

    return deco


def _each_prompt(fn: PromptFn) -> Callable[[Sequence[Sequence[str]]], np.ndarray]:
    def each(samples: Sequence[Sequence[str]]) -> np.ndarray:
        return np.array([fn(list(g)) for g in samples], dtype=np.float64)

    return each


def _as_array(fn: Callable) -> Callable[[Sequence[Sequence[str]]], np.ndarray]:
    def each(samples: Sequence[Sequence[str]]) -> np.ndarray:
        return np.asarray(fn([list(g) for g in samples]), dtype=np.float64)

    return each


def _mean_over_prompts(values: Callable[[Sequence[Sequence[str]]], np.ndarray],
                       name: str) -> SamplesFn:
    def over_prompts(samples: Sequence[Sequence[str]]) -> float:
        return float(np.mean(values(samples)))

    over_prompts.__doc__ = f"{name} of each prompt's samples, averaged over prompts."
    return over_prompts


# ───────────────────────────── reading the registry ─────────────────────────────


def specs(source: Source) -> list[MetricSpec]:
    """The metrics of one source, in registration order."""
    return [s for s in METRICS.values() if s.source == source]


def diversity_candidates() -> list[MetricSpec]:
    """Metrics that may be the default third Pareto objective, most preferred first."""
    ranked = [s for s in METRICS.values() if s.diversity_rank is not None]
    return sorted(ranked, key=lambda s: s.diversity_rank)


def label_of(name: str) -> str:
    """The metric's label; a stored name the registry does not know (the temperature of the
    post-hoc baseline, a metric of a newer calmerge) is shown as itself."""
    return METRICS.get(name).label if name in METRICS else name


def axis_label_of(name: str) -> str:
    return METRICS.get(name).axis_label if name in METRICS else name


def scale_of(name: str) -> float:
    """100 for metrics shown as percent, else 1 (unknown names are shown as stored)."""
    return METRICS.get(name).scale if name in METRICS else 1.0


# ───────────────────────────── the metrics ─────────────────────────────


@choice_metric("acc", "max", label="accuracy", unit="fraction", percent=True, rows=boot.acc_rows)
def _acc(v: View, n_bins: int) -> float:
    return float(np.mean(v["correct"]))


@choice_metric("acc_norm", "max", label="accuracy (length-normalised)", unit="fraction",
               percent=True, rows=boot.acc_norm_rows)
def _acc_norm(v: View, n_bins: int) -> float:
    return float(np.mean(v["correct_norm"]))


@choice_metric("ece", "min", label="ECE (equal-width bins)", unit="probability",
               rows=boot.ece_rows)
def _ece(v: View, n_bins: int) -> float:
    return cal.expected_calibration_error(v["confidence"], v["correct"], n_bins)


@choice_metric("ece_mass", "min", label="ECE (equal-mass bins)", unit="probability",
               rows=boot.ece_mass_rows)
def _ece_mass(v: View, n_bins: int) -> float:
    return cal.equal_mass_ece(v["confidence"], v["correct"], n_bins)


@choice_metric("mce", "min", label="MCE (worst equal-width bin)", unit="probability",
               rows=boot.mce_rows)
def _mce(v: View, n_bins: int) -> float:
    return cal.max_calibration_error(v["confidence"], v["correct"], n_bins)


@choice_metric("smece", "min", label="smooth ECE", unit="probability", rows=boot.smece_rows,
               expensive=True)
def _smece(v: View, n_bins: int) -> float:
    return cal.smooth_ece(v["confidence"], v["correct"])


@choice_metric("brier", "min", label="Brier score", unit="squared error, 0–2",
               rows=boot.brier_rows)
def _brier(v: View, n_bins: int) -> float:
    return cal.brier_score(v["probs"], v["answer"])


@choice_metric("nll", "min", label="NLL", unit="nats", rows=boot.nll_rows)
def _nll(v: View, n_bins: int) -> float:
    return cal.nll(v["probs"], v["answer"])


@choice_metric("auroc", "max", label="AUROC (confidence → correct)", unit="probability",
               rows=boot.auroc_rows)
def _auroc(v: View, n_bins: int) -> float:
    return cal.auroc(v["confidence"], v["correct"])


@choice_metric("entropy", "max", label="answer entropy", unit="nats", rows=boot.entropy_rows,
               diversity_rank=7)
def _entropy(v: View, n_bins: int) -> float:
    return cal.answer_entropy(v["probs"])


# distinct-2 is the default diversity objective: the most used in the alignment-tax literature,
# and it needs no embedding model
for _n, _rank in ((1, 3), (2, 1), (3, 4)):
    generation_metric(f"distinct_{_n}", "max", label=f"distinct-{_n}", unit="fraction",
                      diversity_rank=_rank)(lambda s, n=_n: div.distinct_n(s, n))
generation_metric("self_bleu", "min", label="self-BLEU", unit="BLEU 0–100",
                  diversity_rank=5)(div.self_bleu)
generation_metric("distinct_answers", "max", label="distinct answers", unit="count",
                  diversity_rank=6)(div.distinct_answers)
generation_metric("embed_distance", "max", label="embedding diversity",
                  unit="1 − cos", per_prompt=False, diversity_rank=2,
                  needs_embedder=True)(div.embedding_distances)


AGGREGATES = ("macro", "micro")


def task_shares(sizes: Sequence[int], kind: str) -> np.ndarray:
    """Each task's share of an aggregate over tasks: equal (macro) or by item count (micro)."""
    if kind not in AGGREGATES:
        raise ValueError(f"aggregate {kind!r}: use macro or micro")
    n = np.asarray(sizes, dtype=float)
    return np.full(len(n), 1.0 / len(n)) if kind == "macro" else n / n.sum()


def _over_tasks(metric: str, weighted: bool) -> TasksFn:
    def combine(tasks: Sequence[dict[str, Metric]], sizes: Sequence[int]) -> float:
        values = np.array([t[metric].value for t in tasks])
        return float(task_shares(sizes, "micro" if weighted else "macro") @ values)

    combine.__doc__ = f"The tasks' {metric}, {'item-weighted' if weighted else 'each task equal'}."
    return combine


# a multi-task sweep's aggregates (its `acc` is one of the first two, as `aggregate` says); like
# lm-eval groups: macro = `weight_by_size: false`, micro = `weight_by_size: true`
for _m, _label in (("acc", "accuracy"), ("acc_norm", "accuracy (length-normalised)")):
    task_metric(f"{_m}_macro", "max", label=f"{_label}, mean over tasks", unit="fraction",
                percent=True)(_over_tasks(_m, weighted=False))
    task_metric(f"{_m}_micro", "max", label=f"{_label}, item-weighted over tasks",
                unit="fraction", percent=True)(_over_tasks(_m, weighted=True))
task_metric("ece_macro", "min", label="ECE, mean over tasks", unit="probability")(
    _over_tasks("ece", weighted=False))



# ───────────────────────────── measuring ─────────────────────────────


def _view(result: Any) -> View:
    """The per-item arrays every choice metric reads, in float64 (answers as indices)."""
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
    """Every registered choice metric of a ScoreResult with paired percentile-bootstrap 95%
    intervals, in registration order.

    All metrics share the same resampled item sets (so intervals of differences between metrics
    of one run are coherent); an `expensive` metric uses the first EXPENSIVE_BOOT_CAP of them.
    Each metric is computed for all replicates at once where its spec has a batched form
    (`rows`), else once per replicate.
    """
    view = _view(result)
    n = len(view["correct"])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n)) if n_boot > 0 and n > 1 else None
    return view_metrics(view, draws=draws, n_bins=n_bins)


def choice_view(result: Any) -> View:
    """The per-item arrays the choice metrics read, from a ScoreResult (or anything with its
    `correct`, `correct_norm`, `confidence`, `probs` and `answer`)."""
    return _view(result)


def view_metrics(
    view: View, *, draws: np.ndarray | None, n_bins: int = 10,
    expensive_intervals: bool = True,
) -> dict[str, Metric]:
    """The choice metrics of per-item arrays, with intervals from the given resamples (B, n)
    of item indices (None: no interval). Callers that resample within strata (the tasks of a
    multi-task sweep) draw their own; `compute_metrics` draws plain ones.
    `expensive_intervals=False`: an `expensive` metric gets its value and no interval (NaN)."""
    resamples: dict[int, Resamples] = {}
    out: dict[str, Metric] = {}
    for spec in specs("choices"):
        value = spec.fn(view, n_bins)
        if draws is None:
            out[spec.name] = Metric(value, value, value)
            continue
        if spec.expensive and not expensive_intervals:
            out[spec.name] = Metric(value, float("nan"), float("nan"))
            continue
        use = draws[:EXPENSIVE_BOOT_CAP] if spec.expensive else draws
        if spec.rows is not None:
            if len(use) not in resamples:
                resamples[len(use)] = Resamples(use)
            stats = np.asarray(spec.rows(view, resamples[len(use)], n_bins))
        else:
            stats = np.array([spec.fn({k: a[idx] for k, a in view.items()}, n_bins) for idx in use])
        stats = stats[np.isfinite(stats)]
        if stats.size:
            lo, hi = np.quantile(stats, [0.025, 0.975])
            out[spec.name] = Metric(value, float(lo), float(hi))
        else:
            out[spec.name] = Metric(value, float("nan"), float("nan"))
    return out


def diversity_metrics(samples: list[list[str]], *, embed: bool = True) -> dict[str, float]:
    """Every registered generation metric over K samples per prompt, in registration order;
    `embed=False` skips those that need the embedding model (`embed_distance`)."""
    if not samples or not any(samples):
        raise DataError("no samples to measure diversity on", "check the prompts file")
    return {
        spec.name: spec.fn(samples)
        for spec in specs("generations")
        if embed or not spec.needs_embedder
    }


#: the objective name that stands for the preferred generation-diversity metric
DIVERSITY = "diversity"


def generation_objective(name: str) -> str:
    """`diversity` as the registry's preferred generation metric (lowest `diversity_rank`:
    distinct-2), any other name as itself — so a stored study names the metric it measured."""
    if name != DIVERSITY:
        return name
    return next(s.name for s in diversity_candidates() if s.source == "generations")


def diversity_of(objectives: Sequence[str]) -> str | None:
    """The diversity objective among a search's objectives (the one beside acc and ECE)."""
    return next((o for o in objectives if o not in ("acc", "ece")), None)
