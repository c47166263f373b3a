"""The metric registry is the one description of a metric: every metric calmerge measures is
registered, every registered metric is complete and usable everywhere a metric is named.

Why these tests: five hand-kept tables once drifted apart — diversity stored `embed_distance`
while Pareto and the figures knew only `embed_div`, so embedding diversity was silently never an
objective and never drawn. The invariants below fail on any such drift.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from calmerge.analysis.pareto import (
    Point,
    check_objectives,
    default_objectives,
    oriented,
    pareto_front,
)
from calmerge.errors import ConfigError
from calmerge.eval.metrics import (
    GENERATION_SPLIT,
    METRICS,
    SOURCES,
    Metric,
    MetricSpec,
    axis_label_of,
    compute_metrics,
    diversity_candidates,
    diversity_metrics,
    label_of,
    scale_of,
    specs,
)
from calmerge.eval.score import finalize
from calmerge.report.content import format_metric, metric_columns

NAN = float("nan")
NAMES = list(METRICS)


def point(lam: float, test: dict[str, float], gen: dict[str, float] | None = None) -> Point:
    metrics = {"test": {k: Metric(v, NAN, NAN) for k, v in test.items()}}
    if gen is not None:
        metrics[GENERATION_SPLIT] = {k: Metric(v, NAN, NAN) for k, v in gen.items()}
    return Point("linear", lam, metrics, {})


# ───────────────────────────── every spec is complete and accepted ─────────────────────────────


@pytest.mark.parametrize("name", NAMES)
def test_every_metric_has_a_label_a_direction_and_is_an_objective(name):
    spec = METRICS.get(name)
    assert spec.name == name
    assert spec.label.strip() and spec.unit.strip()
    assert spec.direction in ("max", "min") and spec.source in SOURCES
    assert spec.higher_is_better == (spec.direction == "max")
    assert check_objectives((name,)) == (name,)
    p = point(0.0, {name: 0.25}) if spec.source == "choices" else point(0.0, {}, {name: 0.25})
    assert oriented(p, (name,), "test")[0] == (0.25 if spec.higher_is_better else -0.25)
    assert pareto_front([p], (name,), "test") == [p]
    assert label_of(name) == spec.label and axis_label_of(name).startswith(spec.label)
    assert scale_of(name) == (100.0 if spec.percent else 1.0)


def test_registration_order_is_the_display_order():
    # the report's columns follow the registry, whatever order the store returns them in
    present = {n: Metric(0.5, NAN, NAN) for n in reversed([s.name for s in specs("choices")])}
    p = Point("linear", 0.0, {"test": {"temperature": Metric(1.0, NAN, NAN), **present}}, {})
    assert metric_columns([p], "test") == [*(s.name for s in specs("choices")), "temperature"]
    assert NAMES[:2] == ["acc", "acc_norm"]
    assert [s.source for s in METRICS.values()] == sorted(
        (s.source for s in METRICS.values()), key=SOURCES.index
    )


def test_what_compute_metrics_and_diversity_metrics_output_is_exactly_what_is_registered():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 4))
    labels = rng.integers(0, 4, 30)
    res = finalize([str(i) for i in range(30)], logits, np.ones_like(logits, dtype=bool), labels,
                   np.ones_like(logits), "loglik")
    assert list(compute_metrics(res, n_boot=20)) == [s.name for s in specs("choices")]
    samples = [["the cat sat", "a dog ran", "the cat sat"], ["tea", "green tea", "coffee"]]
    assert list(diversity_metrics(samples)) == [s.name for s in specs("generations")]
    assert "embed_distance" in diversity_metrics(samples)
    assert list(diversity_metrics(samples, embed=False)) == [
        s.name for s in specs("generations") if not s.needs_embedder
    ]


def test_unregistered_names_are_shown_as_stored():
    # the post-hoc baseline's temperature, or a metric a newer calmerge stored
    assert label_of("temperature") == axis_label_of("temperature") == "temperature"
    assert scale_of("temperature") == 1.0
    assert format_metric("temperature", Metric(1.5, NAN, NAN)) == "1.500"
    assert format_metric("acc_norm", Metric(0.5, 0.4, 0.6)) == "50.0% [40.0, 60.0]"


def test_a_malformed_or_second_spec_is_refused():
    fn = METRICS.get("acc").fn
    with pytest.raises(ValueError, match="direction"):
        MetricSpec("x", "up", "x", "fraction", "choices", fn)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label"):
        MetricSpec("x", "max", "", "fraction", "choices", fn)
    with pytest.raises(ValueError, match="bootstrapped"):
        MetricSpec("x", "max", "x", "count", "generations", fn, rows=lambda v, r, n: r)
    with pytest.raises(ValueError, match="registered twice"):
        METRICS.add("acc", METRICS.get("acc"))


# ───────────────────────────── embedding diversity as an objective ─────────────────────────────


def test_embed_distance_is_an_objective_and_the_old_name_points_to_it():
    assert check_objectives(("acc", "ece", "embed_distance")) == ("acc", "ece", "embed_distance")
    with pytest.raises(ConfigError) as e:
        check_objectives(("acc", "embed_div"))
    assert e.value.hint == "did you mean 'embed_distance'?"
    with pytest.raises(ConfigError, match="no objectives"):
        check_objectives(())


def test_diversity_preference_is_by_rank():
    ranks = [s.diversity_rank for s in diversity_candidates()]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert [s.name for s in diversity_candidates()][:2] == ["distinct_2", "embed_distance"]


# Hand-worked: three points on test (acc, ece) and their generation metrics.
#   λ=0:   acc .60  ece .05  embed .20
#   λ=0.5: acc .60  ece .05  embed .30   same acc/ece as λ=0, more diverse → dominates it
#   λ=1:   acc .70  ece .10  embed .10   most accurate → on the front
ACC_ECE = {0.0: (0.60, 0.05), 0.5: (0.60, 0.05), 1.0: (0.70, 0.10)}
EMBED = {0.0: 0.20, 0.5: 0.30, 1.0: 0.10}


def test_embed_distance_is_the_default_diversity_objective_without_distinct_metrics():
    pts = [point(x, {"acc": a, "ece": e}, {"embed_distance": EMBED[x]})
           for x, (a, e) in ACC_ECE.items()]
    objs = default_objectives(pts, "test")
    assert objs == ("acc", "ece", "embed_distance")
    assert [p.lam for p in pareto_front(pts, objs, "test")] == [0.5, 1.0]
    # on acc and ece alone λ=0 and λ=0.5 tie, so both stay on the front
    assert [p.lam for p in pareto_front(pts, ("acc", "ece"), "test")] == [0.0, 0.5, 1.0]


def test_distinct_2_outranks_embed_distance_and_a_partial_metric_is_not_a_default():
    both = [point(x, {"acc": a, "ece": e}, {"embed_distance": EMBED[x], "distinct_2": 1 - x / 2})
            for x, (a, e) in ACC_ECE.items()]
    assert default_objectives(both, "test") == ("acc", "ece", "distinct_2")
    # embed_distance missing on one point: not every point can be compared on it
    partial = [point(x, {"acc": a, "ece": e}, {"embed_distance": EMBED[x]} if x else {})
               for x, (a, e) in ACC_ECE.items()]
    assert default_objectives(partial, "test") == ("acc", "ece")


def test_a_lower_is_better_diversity_metric_is_oriented_down():
    p = point(0.0, {}, {"self_bleu": 40.0, "embed_distance": 0.3})
    v = oriented(p, ("self_bleu", "embed_distance"), "test")
    assert list(v) == [-40.0, 0.3]
    assert oriented(point(0.0, {}), ("embed_distance",), "test")[0] == -math.inf


def test_the_cli_eval_table_reads_the_registry():
    from calmerge.cli import _eval_rows

    measured = {n: Metric(0.5, 0.4, 0.6) for n in reversed([s.name for s in specs("choices")])}
    rows = _eval_rows(measured, {"embed_distance": 0.25, "distinct_2": 0.75})
    labels = [r[0] for r in rows]
    assert labels[: len(measured)] == [f"{s.name}: {s.label}" for s in specs("choices")]
    assert labels[len(measured):] == [
        f"{n}: {METRICS.get(n).label}" for n in ("distinct_2", "embed_distance")
    ]
    assert rows[0][1:] == ("0.5000", "[0.4000, 0.6000]")
