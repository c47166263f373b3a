"""Pareto analysis: dominance, frontier, knee, pick rules, recovered fraction and the verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calmerge.analysis.pareto import (
    Metric,
    Point,
    default_objectives,
    dominates,
    oriented,
    parents,
    pareto_front,
    recovered_fraction,
)
from calmerge.analysis.pick import PICK_RULES, knee_point, pick
from calmerge.analysis.verdict import paired_gain_interval, verdict
from calmerge.errors import ConfigError
from calmerge.report.sentences import temperature_sentence, verdict_sentences

NAN = float("nan")


def pt(lam: float, family: str = "linear", split: str = "test", **vals: float) -> Point:
    """A point whose metrics on `split` are the given values (no intervals)."""
    return Point(
        family=family,
        lam=lam,
        metrics={split: {k: Metric(v, NAN, NAN) for k, v in vals.items()}},
        reliability={},
    )


def synthetic_points(
    accs: dict[float, float],
    eces: dict[float, float],
    *,
    n_items: int = 400,
    splits: tuple[str, ...] = ("dev", "test"),
    seed: int = 0,
    nested: bool = True,
    diversity: dict[float, float] | None = None,
) -> list[Point]:
    """Linear-family points with exact accuracies and per-item correctness on every split.

    `nested=True`: every item has a difficulty u and a model of accuracy a answers it iff u < a,
    so a more accurate point is right on a superset of items (a strong paired signal).
    `nested=False`: each point's correct items are drawn independently (pure noise pairing).
    """
    rng = np.random.default_rng(seed)
    out = []
    per_split = {s: rng.permutation(n_items) for s in splits}
    for lam, acc in sorted(accs.items()):
        metrics, correct, rel = {}, {}, {}
        k = round(acc * n_items)
        for s in splits:
            ok = np.zeros(n_items)
            if nested:
                ok[per_split[s][:k]] = 1
            else:
                ok[rng.permutation(n_items)[:k]] = 1
            correct[s] = ok
            a = ok.mean()
            metrics[s] = {
                "acc": Metric(a, a - 0.04, a + 0.04),
                "ece": Metric(eces[lam], eces[lam] * 0.7, eces[lam] * 1.3),
                "brier": Metric(0.3 - 0.1 * a + eces[lam], NAN, NAN),
                "nll": Metric(1.2 - a + 2 * eces[lam], NAN, NAN),
            }
            conf = np.linspace(0.05, 0.95, 10)
            rel[s] = [
                {
                    "lo": c - 0.05,
                    "hi": c + 0.05,
                    "count": 10 + i,
                    "confidence": c,
                    "accuracy": min(1.0, max(0.0, c - eces[lam] * (i - 4) / 5)),
                }
                for i, c in enumerate(conf)
            ]
        if diversity is not None:
            metrics["gen"] = {"distinct_2": Metric(diversity[lam], NAN, NAN)}
        out.append(Point("linear", lam, metrics, rel, correct))
    return out


LAMS = [round(0.1 * i, 1) for i in range(13)]
HUMP_ACC = {x: 0.60 + 0.02 * x + 0.08 * math.sin(math.pi * min(x, 1.0)) for x in LAMS}
HUMP_ECE = {x: 0.04 + 0.12 * x**2 for x in LAMS}


# ───────────────────────────── dominance and frontier ─────────────────────────────


def test_dominance_hand_examples():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 1.0])
    assert dominates(a, b)
    assert not dominates(b, a)
    assert not dominates(a, a)  # equal vectors: neither dominates
    assert not dominates(np.array([2.0, 0.0]), np.array([0.0, 2.0]))


def test_oriented_flips_min_objectives_and_nan_is_worst():
    p = pt(0.5, acc=0.7, ece=0.1)
    assert list(oriented(p, ("acc", "ece"), "test")) == [0.7, -0.1]
    q = pt(0.5, acc=0.7)
    assert oriented(q, ("acc", "ece"), "test")[1] == -math.inf


def test_front_hand_worked():
    pts = [
        pt(0.0, acc=0.60, ece=0.05),  # best ECE: on the front
        pt(0.3, acc=0.66, ece=0.07),  # on the front
        pt(0.5, acc=0.65, ece=0.09),  # dominated by 0.3
        pt(0.7, acc=0.68, ece=0.12),  # best acc: on the front
        pt(1.0, acc=0.62, ece=0.15),  # dominated by everything better
        pt(0.35, acc=0.66, ece=0.07),  # exact tie with 0.3: both stay
    ]
    front = pareto_front(pts, ("acc", "ece"), "test")
    assert [p.lam for p in front] == [0.0, 0.3, 0.7, 0.35]
    only_acc = pareto_front(pts, ("acc",), "test")
    assert [p.lam for p in only_acc] == [0.7]


def test_front_rejects_unknown_objective_with_hint():
    with pytest.raises(ConfigError) as e:
        pareto_front([pt(0, acc=0.5)], ("accc",), "test")
    assert "acc" in (e.value.hint or "")


vec = st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.5, 0.9, NAN]), min_size=3, max_size=3)


@settings(max_examples=150, deadline=None)
@given(st.lists(vec, min_size=1, max_size=14))
def test_front_property(rows):
    names = ("acc", "ece", "distinct_2")
    pts = [pt(i / 10, **dict(zip(names, r, strict=True))) for i, r in enumerate(rows)]
    front = pareto_front(pts, names, "test")
    fv = [oriented(p, names, "test") for p in front]
    assert front
    for p in pts:
        v = oriented(p, names, "test")
        if any(p is f for f in front):
            assert not any(dominates(o, v) for o in (oriented(q, names, "test") for q in pts))
        else:
            assert any(dominates(f, v) for f in fv)


def test_default_objectives_add_diversity_when_present():
    pts = synthetic_points(HUMP_ACC, HUMP_ECE, diversity={x: 0.5 - 0.2 * x for x in LAMS})
    assert default_objectives(pts, "dev") == ("acc", "ece", "distinct_2")
    assert default_objectives(synthetic_points(HUMP_ACC, HUMP_ECE), "dev") == ("acc", "ece")


# ───────────────────────────── parents, recovered fraction ─────────────────────────────


def test_parents_and_missing_parent():
    pts = [pt(0.0, acc=0.5), pt(0.5, acc=0.6), pt(1.0, acc=0.55), pt(0.0, "slerp", acc=0.1)]
    base, aligned = parents(pts)
    assert (base.family, base.lam, aligned.lam) == ("linear", 0.0, 1.0)
    with pytest.raises(ConfigError, match="λ=1"):
        parents(pts[:2])


def test_recovered_fraction():
    assert recovered_fraction(0.05, 0.15, 0.075) == pytest.approx(0.75)
    assert recovered_fraction(0.05, 0.15, 0.15) == pytest.approx(0.0)
    assert recovered_fraction(0.05, 0.15, 0.03) == pytest.approx(1.2)
    assert recovered_fraction(0.10, 0.08, 0.05) is None  # alignment lowered ECE
    assert recovered_fraction(0.10, 0.10, 0.05) is None
    assert recovered_fraction(NAN, 0.10, 0.05) is None


# ───────────────────────────── knee and pick rules ─────────────────────────────


def test_knee_hand_example():
    # Normalised (acc, -ece): extremes (1,0) at λ=1 and (0,1) at λ=0; the chord is x+y=1.
    # λ=0.4 sits at (0.8, 0.8): distance 0.6/√2 ≈ 0.42, the largest → the knee.
    pts = [
        pt(0.0, acc=0.50, ece=0.00),
        pt(0.2, acc=0.60, ece=0.02),  # (0.2, 0.8): distance 0
        pt(0.4, acc=0.90, ece=0.02),  # (0.8, 0.8)
        pt(0.7, acc=0.95, ece=0.06),  # (0.9, 0.4): distance 0.3/√2
        pt(1.0, acc=1.00, ece=0.10),
    ]
    front = pareto_front(pts, ("acc", "ece"), "test")
    assert knee_point(front, ("acc", "ece"), "test").lam == 0.4
    assert pick(pts, "knee", split="test", objectives=("acc", "ece")).lam == 0.4


def test_knee_straight_front_falls_back_to_nearest_ideal():
    pts = [pt(0.0, acc=0.5, ece=0.0), pt(0.5, acc=0.75, ece=0.05), pt(1.0, acc=1.0, ece=0.1)]
    # All on the chord; distances to (1,1) are √0.5·… equal for the ends, smallest for the middle.
    assert pick(pts, "knee", split="test", objectives=("acc", "ece")).lam == 0.5


def test_pick_rules():
    pts = [
        pt(0.0, acc=0.60, ece=0.05),
        pt(0.4, acc=0.70, ece=0.07),
        pt(0.6, acc=0.70, ece=0.06),  # same acc as 0.4, better ECE → max-acc picks it
        pt(0.8, acc=0.65, ece=0.09),
        pt(1.0, acc=0.64, ece=0.15),
        pt(0.2, acc=0.64, ece=0.055),  # acc == aligned, lowest ECE among those ≥ aligned
    ]
    assert pick(pts, "max-acc", split="test").lam == 0.6
    assert pick(pts, "min-ece", split="test").lam == 0.2
    assert pick(pts, "lambda=0.8", split="test").lam == 0.8
    assert pick(pts, "linear:lambda=0.4", split="test").lam == 0.4
    assert {"max-acc", "min-ece", "knee"} <= set(PICK_RULES)


def test_pick_errors():
    pts = [pt(0.0, acc=0.6, ece=0.05), pt(1.0, acc=0.64, ece=0.15)]
    with pytest.raises(ConfigError) as e:
        pick(pts, "max_acc", split="test")
    assert e.value.hint == "did you mean 'max-acc'?"
    with pytest.raises(ConfigError, match=r"λ=0\.5") as e:
        pick(pts, "lambda=0.5", split="test")
    assert "0, 1" in (e.value.hint or "")
    with pytest.raises(ConfigError, match="ambiguous"):
        pick([pt(0.5, "slerp", acc=0.6), pt(0.5, "ties", acc=0.6)], "lambda=0.5", split="test")
    with pytest.raises(ConfigError, match="not measured"):
        pick([pt(0.0, ece=0.1)], "max-acc", split="test")


# ───────────────────────────── bootstrap and verdict ─────────────────────────────


def test_paired_gain_interval_is_paired_and_against_both_parents():
    n = 500
    u = np.random.default_rng(1).random(n)
    base, aligned, merged = (u < 0.60) * 1.0, (u < 0.62) * 1.0, (u < 0.66) * 1.0
    g = paired_gain_interval(merged, base, aligned, n_boot=500, seed=0)
    assert g.value == pytest.approx(merged.mean() - aligned.mean())
    assert 0 < g.lo <= g.value <= g.hi
    same = paired_gain_interval(aligned, base, aligned, n_boot=300, seed=0)
    assert same.value == 0 and same.hi <= 1e-12  # never above the better parent
    again = paired_gain_interval(merged, base, aligned, n_boot=500, seed=0)
    assert again == g  # seeded
    with pytest.raises(ValueError):
        paired_gain_interval(merged[:10], base, aligned)


def test_verdict_superior():
    pts = synthetic_points(HUMP_ACC, HUMP_ECE)
    v = verdict(pts, n_boot=400)
    assert v.pick.lam == 0.5 and v.select_split == "dev" and v.report_split == "test"
    assert v.is_superior and v.gain.lo > 0
    assert v.best_parent == "aligned"
    assert v.recovered == pytest.approx((0.16 - 0.07) / 0.12)
    assert verdict_sentences(v)[0].startswith("λ=0.5 is Pareto-superior: +7.0 points over the best parent")
    assert "75% of the lost calibration recovered" in verdict_sentences(v)[0]
    assert "chosen by rule 'max-acc' on dev and is reported on test" in " ".join(verdict_sentences(v))


def test_verdict_not_superior_when_gain_is_noise():
    accs = {0.0: 0.60, 0.5: 0.6075, 1.0: 0.60}
    eces = {0.0: 0.05, 0.5: 0.08, 1.0: 0.10}
    pts = synthetic_points(accs, eces, nested=False, seed=3)
    v = verdict(pts, n_boot=400)
    assert v.pick.lam == 0.5
    assert not v.is_superior and v.gain.lo <= 0 < v.gain.hi
    assert verdict_sentences(v)[0].startswith("No λ is Pareto-superior on test: λ=0.5")
    assert "does not exclude zero" in verdict_sentences(v)[0]
    assert "40% of the lost calibration recovered" in verdict_sentences(v)[0]


def test_verdict_parent_pick_and_no_ece_rise():
    accs = {0.0: 0.70, 0.5: 0.65, 1.0: 0.60}
    eces = {0.0: 0.10, 0.5: 0.09, 1.0: 0.05}  # alignment *improved* calibration
    v = verdict(synthetic_points(accs, eces), n_boot=200)
    assert v.pick.lam == 0.0 and not v.is_superior and v.recovered is None
    assert "the base model itself" in verdict_sentences(v)[0]
    assert "alignment did not raise ECE" in verdict_sentences(v)[0]


def test_verdict_without_dev_says_so():
    pts = synthetic_points(HUMP_ACC, HUMP_ECE, splits=("test",))
    v = verdict(pts, n_boot=200)
    assert v.chosen_on_report_split and v.select_split == "test"
    text = " ".join(verdict_sentences(v))
    assert "chosen on test, the same data it is reported on" in text
    with pytest.raises(ConfigError, match="split 'holdout'"):
        verdict(pts, report_split="holdout")


def test_verdict_selection_uses_dev_not_test():
    # dev says λ=0.3 is best, test says λ=0.7: the verdict must pick on dev.
    pts = synthetic_points(
        {0.0: 0.6, 0.3: 0.7, 0.7: 0.65, 1.0: 0.6}, {0.0: 0.05, 0.3: 0.06, 0.7: 0.08, 1.0: 0.1}
    )
    for p in pts:
        if p.lam == 0.7:
            p.metrics["test"]["acc"] = Metric(0.9, NAN, NAN)
    assert verdict(pts, n_boot=100).pick.lam == 0.3


def test_verdict_temperature_sentence_and_missing_items():
    pts = synthetic_points(HUMP_ACC, HUMP_ECE)
    ts = {"acc": Metric(0.62, NAN, NAN), "ece": Metric(0.03, NAN, NAN)}
    v = verdict(pts, n_boot=200, temperature_scaled=ts)
    assert temperature_sentence(v) is not None
    assert "reaches ECE 0.030" in temperature_sentence(v)
    assert "less well calibrated (ECE 0.070) and 7.0 points more accurate" in temperature_sentence(v)
    bare = [Point(p.family, p.lam, p.metrics, p.reliability, None) for p in pts]
    vb = verdict(bare, n_boot=200)
    assert not vb.is_superior and "no per-item results" in verdict_sentences(vb)[0]


def test_paired_gain_without_resamples_has_no_interval_and_is_never_superior():
    pick_c, base_c, aligned_c = np.array([1, 1, 1, 0]), np.array([1, 0, 0, 0]), np.array([0, 1, 0, 0])
    g = paired_gain_interval(pick_c, base_c, aligned_c, n_boot=0)
    assert g.value == pytest.approx(0.5) and math.isnan(g.lo) and math.isnan(g.hi)
