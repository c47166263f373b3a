"""A diversity objective in cheap fitness (`analysis.budget`): the per-prompt estimate, racing
in three objectives with the registry's directions, and the 3-D hypervolume and its paired
bootstrap — checked against pymoo's HV and hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest
from pymoo.indicators.hv import HV

from calmerge.analysis.budget import (
    Anchors,
    Estimate,
    estimate_mean,
    higher_is_better,
    hypervolume,
    hypervolume_gap,
    promising,
)
from calmerge.errors import ConfigError
from calmerge.eval.calibration import expected_calibration_error
from calmerge.eval.metrics import METRICS, Metric, generation_objective
from calmerge.sweep.anchors import split_prompt_ids


def pymoo_hv(points: np.ndarray, ref, higher) -> float:
    sign = np.array([-1.0 if h else 1.0 for h in higher])
    return float(HV(ref_point=sign * np.asarray(ref))(points * sign))


def test_3d_hypervolume_by_hand():
    # one point: the box [0, 0.5] acc × [0.2, 1] ECE × [0, 0.4] diversity = 0.5·0.8·0.4
    assert hypervolume(np.array([[0.5, 0.2, 0.4]]), (0, 1, 0), (True, False, True)) == \
        pytest.approx(0.16, abs=1e-15)
    # two boxes overlapping in [0, 0.5] × [0.2, 1] × [0, 0.4]... by inclusion–exclusion:
    # A = (0.5, 0.2, 0.4) → 0.16; B = (0.8, 0.6, 0.9) → 0.8·0.4·0.9 = 0.288;
    # A ∩ B = 0.5 · 0.4 · 0.4 = 0.08 → 0.368
    pts = np.array([[0.5, 0.2, 0.4], [0.8, 0.6, 0.9]])
    assert hypervolume(pts, (0, 1, 0), (True, False, True)) == pytest.approx(0.368, abs=1e-15)
    # a point past the reference in one objective adds nothing
    assert hypervolume(np.array([[0.5, 0.2, -0.1]]), (0, 1, 0), (True, False, True)) == 0.0


@pytest.mark.parametrize("seed", range(30))
def test_3d_hypervolume_matches_pymoo(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 25))
    pts = rng.random((m, 3))
    if seed % 2:
        pts = np.round(pts, 1)  # ties in every coordinate
    higher = (True, False, bool(seed % 3))  # a diversity metric either way (self-BLEU is ↓)
    ref = (0.05, 0.95, 0.1 if higher[2] else 0.9)
    assert hypervolume(pts, ref, higher) == pytest.approx(pymoo_hv(pts, ref, higher),
                                                          rel=1e-12, abs=1e-15)


def _front(rng, m, n, n_p, div):
    conf = rng.random((m, n))
    y = (rng.random((m, n)) < conf * 0.85).astype(float)
    return y, conf, np.clip(rng.normal(div, 0.05, (m, n_p)), 0, 1)


def test_gap_with_prompts_is_zero_for_the_same_front():
    rng = np.random.default_rng(0)
    y, c, p = _front(rng, 3, 200, 30, 0.5)
    gap = hypervolume_gap(y, c, y, c, ref=(0.0, 0.6, 0.0), a_prompts=p, b_prompts=p,
                          n_boot=200)
    assert gap.value == 0.0 and gap.lo == 0.0 and gap.hi == 0.0


def test_gap_with_prompts_sees_a_diversity_win():
    # same items and scores, front A more diverse on every prompt: positive, interval above 0
    rng = np.random.default_rng(1)
    y, c, p = _front(rng, 3, 200, 30, 0.4)
    ref = (0.0, 0.6, 0.0)
    gap = hypervolume_gap(y, c, y, c, ref=ref, a_prompts=p + 0.2, b_prompts=p, n_boot=300)

    def pts(q):
        eces = [expected_calibration_error(cc, r) for r, cc in zip(y, c, strict=True)]
        return np.column_stack([y.mean(axis=1), eces, q.mean(axis=1)])

    expected = (pymoo_hv(pts(p + 0.2), ref, (True, False, True))
                - pymoo_hv(pts(p), ref, (True, False, True)))
    assert gap.value == pytest.approx(expected, rel=1e-12)
    assert gap.lo > 0


def test_gap_with_prompts_is_seeded_and_checks_its_inputs():
    rng = np.random.default_rng(2)
    ya, ca, pa = _front(rng, 2, 100, 12, 0.5)
    yb, cb, pb = _front(rng, 3, 100, 12, 0.5)
    kw = dict(ref=(0.0, 0.7, 0.0), a_prompts=pa, b_prompts=pb, n_boot=100, seed=5)
    assert hypervolume_gap(ya, ca, yb, cb, **kw) == hypervolume_gap(ya, ca, yb, cb, **kw)
    with pytest.raises(ValueError, match="3-D ref"):
        hypervolume_gap(ya, ca, yb, cb, ref=(0.0, 0.7), a_prompts=pa, b_prompts=pb)
    with pytest.raises(ValueError, match="same prompts"):
        hypervolume_gap(ya, ca, yb, cb, ref=(0.0, 0.7, 0.0), a_prompts=pa, b_prompts=pb[:, :5])


def test_estimate_mean_by_hand():
    anchors = Anchors(np.array([0, 3, 7]), np.array([0.5, 0.3, 0.2]))
    m = estimate_mean(anchors, np.array([0.2, 0.6, 1.0]), n_boot=400)
    assert m.value == pytest.approx(0.5 * 0.2 + 0.3 * 0.6 + 0.2 * 1.0, abs=1e-15)
    assert 0.2 <= m.lo <= m.value <= m.hi <= 1.0 and m.lo < m.hi
    same = estimate_mean(Anchors(np.arange(4), np.full(4, 0.25)), np.full(4, 0.3))
    assert same.value == pytest.approx(0.3) and same.lo == pytest.approx(0.3)
    with pytest.raises(ValueError):
        estimate_mean(anchors, np.array([0.1, 0.2]))


def _est(acc, ece, name, div):
    return Estimate(Metric(*acc), Metric(*ece), 20, ((name, Metric(*div)),))


def test_racing_a_diversity_objective_follows_the_registry_direction():
    acc, ece = (0.7, 0.7, 0.7), (0.1, 0.1, 0.1)  # exact: only diversity can decide
    varied = (0.8, 0.75, 0.85)
    samey = (0.3, 0.25, 0.35)
    # distinct-2 is maximised: the samey candidate is dominated
    both = [_est(acc, ece, "distinct_2", varied), _est(acc, ece, "distinct_2", samey)]
    assert promising(both, ("acc", "ece", "distinct_2")) == [0]
    assert promising(both, ("acc", "ece")) == [0, 1]  # without it they tie
    # self-BLEU is minimised: the same numbers rank the other way
    both = [_est(acc, ece, "self_bleu", varied), _est(acc, ece, "self_bleu", samey)]
    assert promising(both, ("acc", "ece", "self_bleu")) == [1]


def test_directions_and_the_diversity_name():
    assert higher_is_better("acc") and not higher_is_better("ece")
    assert higher_is_better("distinct_2") and not higher_is_better("self_bleu")
    assert generation_objective("diversity") == "distinct_2"
    assert generation_objective("self_bleu") == "self_bleu"
    with pytest.raises(ConfigError) as err:
        higher_is_better("distinct2")
    assert "distinct_2" in err.value.hint
    with pytest.raises(ConfigError):
        higher_is_better("brier")  # a choice metric is not raced


@pytest.mark.parametrize("name", [s.name for s in METRICS.values()
                                  if s.source == "generations" and not s.needs_embedder])
def test_per_prompt_values_average_to_the_metric(name):
    samples = [["a b c", "a b d", "a b c"], ["x y", "x y", "x y"], ["p q r s", "t u v w"]]
    spec = METRICS.get(name)
    values = spec.prompt_values(samples)
    assert values.shape == (3,)
    assert float(np.mean(values)) == spec.fn(samples)
    assert values[1] == spec.fn([samples[1]])


def test_prompt_halves_are_seeded_disjoint_and_order_free():
    ids = [f"p{i}" for i in range(11)]
    dev, test = split_prompt_ids(ids, 0)
    assert len(dev) == 6 and len(test) == 5 and set(dev) | set(test) == set(ids)
    assert not set(dev) & set(test)
    assert split_prompt_ids(list(reversed(ids)), 0) == (dev, test)
    assert split_prompt_ids(ids, 1) != (dev, test)
