"""Cheap fitness (`analysis.budget`): anchors, anchor estimates, racing, hypervolume — checked
against calmerge's own ECE, pymoo's HV, scipy's Spearman and hand-worked examples."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pymoo.indicators.hv import HV
from scipy.stats import spearmanr

from calmerge.analysis import budget
from calmerge.analysis.budget import (
    Anchors,
    Estimate,
    allocate,
    choose_anchors,
    estimate,
    hypervolume,
    hypervolume_gap,
    promising,
    spearman,
    weighted_ece,
)
from calmerge.errors import ConfigError
from calmerge.eval.calibration import expected_calibration_error
from calmerge.eval.metrics import Metric


def parents(n: int, seed: int) -> np.ndarray:
    """Features of n items: base correct, aligned correct, base conf, aligned conf."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    base = (rng.random(n) > difficulty * 0.9).astype(float)
    aligned = np.where(rng.random(n) < 0.8, base, 1 - base)
    conf_b = np.clip(0.3 + 0.6 * (1 - difficulty) + rng.normal(0, 0.05, n), 0, 1)
    conf_a = np.clip(0.6 + 0.35 * rng.random(n), 0, 1)
    return np.column_stack([base, aligned, conf_b, conf_a])


def candidate(features: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
    """A merge-like candidate: per item the base's or the aligned's outcome, mostly."""
    pick = np.where(rng.random(len(features)) < t, features[:, 0], features[:, 1])
    flip = rng.random(len(features)) < 0.03
    return np.where(flip, 1 - pick, pick)


# ───────────────────────────── anchors ─────────────────────────────


def check_anchors(a: Anchors, n: int) -> None:
    assert a.indices.dtype.kind == "i" and a.weights.dtype.kind == "f"
    assert len(a.indices) == len(a.weights)
    assert np.all(np.diff(a.indices) > 0)  # sorted, unique
    assert a.indices.min() >= 0 and a.indices.max() < n
    assert np.all(a.weights > 0)
    assert abs(a.weights.sum() - 1.0) < 1e-12


@pytest.mark.parametrize("k", [1, 7, 30, 99])
def test_anchors_are_valid_and_deterministic_per_seed(k):
    f = parents(300, 0)
    a, b = choose_anchors(f, k, seed=3), choose_anchors(f, k, seed=3)
    check_anchors(a, 300)
    assert len(a.indices) == k
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_different_seeds_give_different_anchors():
    f = np.random.default_rng(0).random((300, 4))
    runs = {tuple(choose_anchors(f, 20, seed=s).indices) for s in range(4)}
    assert len(runs) > 1


def test_k_at_least_n_takes_every_item():
    for k in (10, 25):
        a = choose_anchors(parents(10, 1), k)
        np.testing.assert_array_equal(a.indices, np.arange(10))
        np.testing.assert_array_equal(a.weights, np.full(10, 0.1))


def test_duplicate_rows_give_no_empty_clusters():
    """Fewer distinct rows than k: one anchor per distinct row, weights still sum to 1."""
    f = np.repeat(np.eye(3), [4, 5, 6], axis=0)
    a = choose_anchors(f, 8, seed=0)
    check_anchors(a, 15)
    assert len(a.indices) == 3
    np.testing.assert_allclose(sorted(a.weights), [4 / 15, 5 / 15, 6 / 15], rtol=0, atol=1e-15)


def test_weights_sum_to_one_on_many_shapes():
    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(5, 200))
        f = rng.integers(0, 3, size=(n, 2)).astype(float)  # many ties: k-means empties clusters
        check_anchors(choose_anchors(f, int(rng.integers(1, n)), seed=trial), n)


def test_allocation_by_hand():
    assert list(allocate([50, 30, 20], 10)) == [5, 3, 2]
    # quotas 2.4, 1.2, 0.4 → floors 2, 1, 0 → the last raised to 1
    assert list(allocate([6, 3, 1], 4)) == [2, 1, 1]
    # quotas 2.5, 1.5, 1.0 → 2, 1, 1, one left: largest remainder, tie to the earlier stratum
    assert list(allocate([5, 3, 2], 5)) == [3, 1, 1]
    # quotas 0.2, 0.2, 3.6 → 1, 1, 3 is one too many: taken from the most over-allocated
    assert list(allocate([1, 1, 18], 4)) == [1, 1, 2]
    with pytest.raises(ConfigError):
        allocate([3, 3, 3], 2)


def test_strata_allocation_and_weights():
    f = parents(100, 2)
    strata = ["math"] * 50 + ["law"] * 30 + ["bio"] * 20
    a = choose_anchors(f, 10, strata=strata, seed=1)
    check_anchors(a, 100)
    labels = np.array(strata)[a.indices]
    for name, k_s, share in (("math", 5, 0.5), ("law", 3, 0.3), ("bio", 2, 0.2)):
        assert (labels == name).sum() == k_s
        assert abs(a.weights[labels == name].sum() - share) < 1e-12


def test_strata_errors():
    with pytest.raises(ConfigError):
        choose_anchors(parents(10, 0), 3, strata=["a"] * 9)
    with pytest.raises(ConfigError):
        choose_anchors(parents(10, 0), 0)


def test_clear_clusters_are_estimated_exactly():
    """Items identical within each of 5 groups: any candidate that treats a group alike is
    estimated exactly by one anchor per group."""
    sizes = [10, 20, 30, 15, 25]
    rows = np.array([[1, 0, 0.9, 0.3], [0, 1, 0.2, 0.8], [1, 1, 0.7, 0.7], [0, 0, 0.4, 0.5],
                     [1, 0, 0.5, 0.95]])
    f = np.repeat(rows, sizes, axis=0)
    group = np.repeat(np.arange(5), sizes)
    rng = np.random.default_rng(0)
    for seed in range(5):
        a = choose_anchors(f, 5, seed=seed)
        assert sorted(group[a.indices]) == [0, 1, 2, 3, 4]
        for _ in range(10):
            per_group = rng.random(5)  # fractional scores work too
            correct = per_group[group]
            est = estimate(a, correct[a.indices], rng.random(5)[group][a.indices], n_boot=20)
            assert abs(est.acc.value - correct.mean()) < 1e-12


def test_anchor_estimate_beats_a_random_subset():
    """Mean absolute error of estimated accuracy over 200 candidates: anchors chosen by
    clustering the parents' behaviour against a uniform random subset of the same size."""
    n, k = 1000, 30
    f = parents(n, 7)
    a = choose_anchors(f, k, seed=0)
    rng = np.random.default_rng(11)
    err_anchor, err_random = [], []
    for _ in range(200):
        y = candidate(f, rng.random(), rng)
        err_anchor.append(abs(np.sum(a.weights * y[a.indices]) - y.mean()))
        subset = rng.choice(n, k, replace=False)
        err_random.append(abs(y[subset].mean() - y.mean()))
    assert np.mean(err_anchor) < 0.6 * np.mean(err_random), (
        np.mean(err_anchor), np.mean(err_random))


# ───────────────────────────── weighted ECE ─────────────────────────────


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_weighted_ece_with_equal_weights_is_calmerges_ece_exactly(seed, n_bins):
    rng = np.random.default_rng(seed)
    c = rng.random(257)
    c[:5] = [0.0, 0.1, 0.5, 0.9, 1.0]  # bin edges and the closed top bin
    y = (rng.random(257) < c).astype(float)
    ref = expected_calibration_error(c, y, n_bins)
    for w in (np.ones(257), np.full(257, 1 / 257), np.full(257, 0.37)):
        assert weighted_ece(c, y, w, n_bins) == ref


def test_weighted_ece_with_integer_weights_is_ece_of_repeated_items():
    rng = np.random.default_rng(3)
    c, y = rng.random(80), rng.random(80)  # fractional outcomes too
    w = rng.integers(1, 6, size=80)
    ref = expected_calibration_error(np.repeat(c, w), np.repeat(y, w), 10)
    assert weighted_ece(c, y, w.astype(float)) == pytest.approx(ref, rel=1e-12)


def test_weighted_ece_by_hand():
    # bins 1, 8, 9: 0.5·|0 − 0.15| + 0.25·|1 − 0.85| + 0.25·|0 − 0.9| = 0.3375
    got = weighted_ece(np.array([0.15, 0.85, 0.9]), np.array([0, 1, 0]),
                       np.array([0.5, 0.25, 0.25]))
    assert got == pytest.approx(0.3375, abs=1e-15)
    # one bin: |(0.5·1 + 0.5·0) − (0.5·0.62 + 0.5·0.68)| = 0.15
    assert weighted_ece(np.array([0.62, 0.68]), np.array([1, 0]), np.ones(2)) == pytest.approx(0.15)


# ───────────────────────────── estimate ─────────────────────────────


def test_estimate_on_every_item_is_the_full_metric():
    f = parents(200, 4)
    y, c = f[:, 0], f[:, 2]
    e = estimate(choose_anchors(f, 500), y, c)
    assert e.n == 200
    assert e.acc.value == pytest.approx(y.mean(), abs=1e-14)
    assert e.ece.value == expected_calibration_error(c, y)


def test_estimate_intervals_contain_the_value_and_shrink_with_more_anchors():
    f = parents(2000, 5)
    rng = np.random.default_rng(0)
    y, c = candidate(f, 0.5, rng), f[:, 3]
    widths = {}
    for k in (20, 400):
        a = choose_anchors(f, k, seed=0)
        e = estimate(a, y[a.indices], c[a.indices], seed=1)
        assert isinstance(e, Estimate) and e.n == k
        for m in (e.acc, e.ece):
            assert m.lo <= m.value <= m.hi
        widths[k] = (e.acc.hi - e.acc.lo, e.ece.hi - e.ece.lo)
    assert widths[400][0] < 0.5 * widths[20][0]
    assert widths[400][1] < 0.5 * widths[20][1]


def test_estimate_is_deterministic_per_seed():
    a = choose_anchors(parents(300, 0), 25)
    y, c = parents(300, 1)[a.indices, 1], parents(300, 1)[a.indices, 3]
    assert estimate(a, y, c, seed=4) == estimate(a, y, c, seed=4)


# ───────────────────────────── racing ─────────────────────────────


def est(acc: tuple[float, float, float], ece: tuple[float, float, float]) -> Estimate:
    return Estimate(Metric(*acc), Metric(*ece), 30)


def test_promising_drops_a_clearly_dominated_candidate():
    good = est((0.80, 0.75, 0.85), (0.05, 0.03, 0.07))
    bad = est((0.50, 0.45, 0.55), (0.20, 0.15, 0.25))
    assert promising([good, bad]) == [0]
    assert promising([bad, good]) == [1]


def test_promising_keeps_overlapping_and_trade_offs():
    a = est((0.80, 0.75, 0.85), (0.05, 0.03, 0.07))
    overlap = est((0.70, 0.60, 0.80), (0.10, 0.08, 0.12))  # its acc.hi 0.80 > a's acc.lo 0.75
    trade = est((0.60, 0.58, 0.62), (0.01, 0.00, 0.02))  # worse acc, better ece
    assert promising([a, overlap, trade]) == [0, 1, 2]


def test_promising_keeps_identical_candidates():
    a = est((0.8, 0.75, 0.85), (0.05, 0.03, 0.07))
    assert promising([a, a]) == [0, 1]
    point = est((0.8, 0.8, 0.8), (0.05, 0.05, 0.05))  # zero-width: equal, not better
    assert promising([point, point]) == [0, 1]


def test_promising_ties_need_one_strict_win():
    a = est((0.8, 0.7, 0.9), (0.05, 0.04, 0.06))
    b = est((0.6, 0.5, 0.7), (0.20, 0.10, 0.30))  # b.acc.hi == a.acc.lo; a.ece.hi < b.ece.lo
    assert promising([a, b]) == [0]
    c = est((0.6, 0.5, 0.7), (0.20, 0.06, 0.30))  # tie in both: kept
    assert promising([a, c]) == [0, 1]


def test_promising_objective_subsets_and_order():
    a = est((0.80, 0.75, 0.85), (0.30, 0.28, 0.32))
    b = est((0.50, 0.45, 0.55), (0.05, 0.03, 0.07))
    assert promising([a, b]) == [0, 1]
    assert promising([a, b], ("acc",)) == [0]
    assert promising([a, b], ("ece",)) == [1]
    assert promising([a, b], ("ece", "acc")) == [0, 1]
    assert promising([]) == []


def test_promising_unknown_objective_has_a_hint():
    with pytest.raises(ConfigError) as err:
        promising([est((0.5, 0.4, 0.6), (0.1, 0.0, 0.2))], ("accuracy",))
    assert "acc" in err.value.hint
    with pytest.raises(ConfigError):
        promising([], ())


# ───────────────────────────── hypervolume ─────────────────────────────


def pymoo_hv(points: np.ndarray, ref: tuple[float, float]) -> float:
    minimised = np.column_stack([-points[:, 0], points[:, 1]])
    return float(HV(ref_point=np.array([-ref[0], ref[1]]))(minimised))


def test_hypervolume_by_hand():
    # union of [0, acc] × [ece, 1]: 0.3·0.9 + (0.5 − 0.3)·0.8 + (0.7 − 0.5)·0.6 = 0.55;
    # (0.4, 0.3) is dominated, (0.9, 1.2) is beyond the reference point
    pts = np.array([[0.5, 0.2], [0.7, 0.4], [0.3, 0.1], [0.4, 0.3], [0.9, 1.2]])
    assert hypervolume(pts, (0.0, 1.0)) == pytest.approx(0.55, abs=1e-15)
    assert hypervolume(np.empty((0, 2)), (0.0, 1.0)) == 0.0
    assert hypervolume(np.array([[0.9, 1.2]]), (0.0, 1.0)) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_matches_pymoo(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 40))
    pts = np.column_stack([rng.random(m), rng.random(m) * 0.3])
    if seed % 3 == 0:  # a true front: acc and ece rising together
        pts = np.sort(pts, axis=0)
    ref = (0.1, 0.25)
    assert hypervolume(pts, ref) == pytest.approx(pymoo_hv(pts, ref), rel=1e-12, abs=1e-15)


def fronts(seed: int, m_a: int = 4, m_b: int = 3, n: int = 300):
    rng = np.random.default_rng(seed)
    conf_a, conf_b = rng.random((m_a, n)), rng.random((m_b, n))
    ya = (rng.random((m_a, n)) < conf_a * 0.9).astype(float)
    yb = (rng.random((m_b, n)) < conf_b * 0.8).astype(float)
    return ya, conf_a, yb, conf_b


def full_hv(y: np.ndarray, c: np.ndarray, ref) -> float:
    pts = np.array([[r.mean(), expected_calibration_error(cc, r)] for r, cc in zip(y, c, strict=True)])
    return pymoo_hv(pts, ref)


def test_hypervolume_gap_value_and_interval():
    ya, ca, yb, cb = fronts(0)
    ref = (0.0, 0.5)
    gap = hypervolume_gap(ya, ca, yb, cb, ref=ref, n_boot=300, seed=2)
    assert gap.value == pytest.approx(full_hv(ya, ca, ref) - full_hv(yb, cb, ref), abs=1e-12)
    assert gap.lo <= gap.value <= gap.hi
    assert gap.hi - gap.lo > 0


def test_hypervolume_gap_of_identical_fronts_is_exactly_zero():
    ya, ca, _, _ = fronts(1)
    gap = hypervolume_gap(ya, ca, ya.copy(), ca.copy(), ref=(0.0, 0.5), n_boot=200)
    assert (gap.value, gap.lo, gap.hi) == (0.0, 0.0, 0.0)


def test_resampled_front_metrics_match_calmerges_on_the_resample():
    """The matrix form of accuracy and ECE per replicate equals recomputing them from the
    resampled items with calmerge's functions."""
    ya, ca, _, _ = fronts(2, m_a=3, n=120)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, 120, size=(5, 120))
    counts = np.stack([np.bincount(d, minlength=120) for d in draws]).astype(float)
    acc, ece = budget._front_rows(ya, ca, counts, 10)
    for b, d in enumerate(draws):
        for r in range(3):
            assert acc[b, r] == pytest.approx(ya[r, d].mean(), abs=1e-14)
            assert ece[b, r] == pytest.approx(expected_calibration_error(ca[r, d], ya[r, d]),
                                              abs=1e-14)


def test_hypervolume_gap_is_fast_at_full_size():
    ya, ca, yb, cb = fronts(3, m_a=30, m_b=30, n=2000)
    start = time.perf_counter()
    gap = hypervolume_gap(ya, ca, yb, cb, ref=(0.0, 0.5), n_boot=1000)
    assert time.perf_counter() - start < 10.0  # typically well under a second or two
    assert gap.lo <= gap.value <= gap.hi


# ───────────────────────────── spearman ─────────────────────────────


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (3, 10, 57):
        x = rng.random(n)
        y = x + rng.normal(0, 0.3, n)
        y[: n // 3] = y[0]  # ties
        assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-15)


def test_spearman_is_nan_when_undefined():
    assert np.isnan(spearman([1.0, 2.0], [2.0, 1.0]))
    assert np.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert np.isnan(spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
