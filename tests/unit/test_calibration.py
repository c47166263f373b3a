"""Calibration metrics against independent implementations and hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calmerge.eval import bootstrap, temperature
from calmerge.eval import calibration as cal
from calmerge.eval import metrics as metrics_mod
from calmerge.eval.metrics import METRICS, MetricSpec, compute_metrics, specs
from calmerge.eval.score import finalize
from calmerge.registry import Registry

CHOICE = {s.name: s for s in specs("choices")}


def random_probs(n: int, c: int, seed: int, sharp: float = 2.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * sharp
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(c, p=p) for p in probs ** 0.5 / (probs ** 0.5).sum(1)[:, None]])
    return logits, probs, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_and_mce_match_torchmetrics(seed, n_bins):
    from torchmetrics.functional.classification import multiclass_calibration_error

    _, probs, labels = random_probs(300, 4, seed)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    kw = dict(num_classes=4, n_bins=n_bins)
    tp, tl = torch.tensor(probs), torch.tensor(labels)
    ece = multiclass_calibration_error(tp, tl, norm="l1", **kw).item()
    mce = multiclass_calibration_error(tp, tl, norm="max", **kw).item()
    assert cal.expected_calibration_error(conf, correct, n_bins) == pytest.approx(ece, abs=1e-6)  # torchmetrics works in fp32
    assert cal.max_calibration_error(conf, correct, n_bins) == pytest.approx(mce, abs=1e-6)


def test_ece_hand_worked_and_top_bin_closed():
    conf = np.array([0.95, 1.0, 0.55, 0.45])
    correct = np.array([1, 0, 1, 0])
    # bin [0.9,1]: conf .975 acc .5 → .475·2/4; bin [.5,.6): .45·1/4; bin [.4,.5): .45·1/4
    assert cal.expected_calibration_error(conf, correct) == pytest.approx(0.2375 + 0.1125 + 0.1125)
    assert cal.max_calibration_error(conf, correct) == pytest.approx(0.475)


def test_equal_mass_ece_hand_worked():
    conf = np.array([0.1, 0.2, 0.3, 0.9])
    correct = np.array([0, 1, 1, 1])
    # two bins of two: {0.1,0.2} acc .5 conf .15 → .35; {0.3,0.9} acc 1 conf .6 → .4
    assert cal.equal_mass_ece(conf, correct, n_bins=2) == pytest.approx(0.5 * 0.35 + 0.5 * 0.4)
    # one bin per item: mean |y − c|
    assert cal.equal_mass_ece(conf, correct, n_bins=4) == pytest.approx(np.mean(np.abs(correct - conf)))


def test_brier_nll_auroc_match_sklearn():
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    _, probs, labels = random_probs(200, 5, 3)
    assert cal.brier_score(probs, labels) == pytest.approx(
        brier_score_loss(labels, probs, labels=range(5), scale_by_half=False))
    assert cal.nll(probs, labels) == pytest.approx(log_loss(labels, probs, labels=range(5)))
    conf, correct = probs.max(1), probs.argmax(1) == labels
    conf[:20] = conf[20:40]  # ties count one half
    assert cal.auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf))
    assert np.isnan(cal.auroc(conf, np.ones_like(correct)))


@pytest.mark.parametrize("n,seed", [(5, 0), (60, 1), (500, 2), (2000, 3)])
def test_smooth_ece_matches_relplot(n, seed):
    import relplot

    rng = np.random.default_rng(seed)
    f = rng.uniform(0.1, 1.0, n)
    y = (rng.uniform(size=n) < f ** 2).astype(float)
    assert cal.smooth_ece(f, y) == pytest.approx(relplot.smECE(f, y), abs=1e-9)


def test_entropy_hand_worked():
    probs = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert cal.answer_entropy(probs) == pytest.approx(np.log(2) / 2)


def test_reliability_bins_counts_and_means():
    bins = cal.reliability_bins([0.05, 0.15, 0.17, 1.0], [0, 1, 0, 1], n_bins=10)
    assert [b["count"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins[1]["confidence"] == pytest.approx(0.16) and bins[1]["accuracy"] == 0.5
    assert np.isnan(bins[2]["accuracy"])


def _result(n: int, seed: int):
    logits, _, labels = random_probs(n, 4, seed)
    mask = np.ones_like(logits, dtype=bool)
    return finalize([str(i) for i in range(n)], logits, mask, labels, np.ones_like(logits), "loglik")


def test_bootstrap_interval_is_the_percentile_interval_of_the_seeded_resamples():
    """The interval compute_metrics reports is the 2.5/97.5% quantile of the metric over the
    seeded item resamples — here accuracy, whose spread is also known in closed form."""
    res = _result(400, 5)
    ms = compute_metrics(res, n_boot=500, seed=1)
    correct = np.asarray(res.correct, dtype=float)
    draws = np.random.default_rng(1).integers(0, 400, size=(500, 400))
    expect = np.quantile(correct[draws].mean(axis=1), [0.025, 0.975])
    acc = ms["acc"]
    assert (acc.lo, acc.hi) == pytest.approx(tuple(expect))
    assert acc.lo < acc.value < acc.hi
    a = correct.mean()
    assert acc.hi - acc.lo == pytest.approx(2 * 1.96 * np.sqrt(a * (1 - a) / 400), rel=0.2)
    assert compute_metrics(res, n_boot=500, seed=1) == ms


def test_temperature_recovers_known_scale():
    """Labels sampled from softmax(z) and logits given as 3·z: the NLL-optimal T is ≈ 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4000, 4)) * 1.5
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    temp = temperature.fit_temperature(3 * z, labels)
    assert temp == pytest.approx(3.0, rel=0.1)
    assert cal.nll(temperature.apply_temperature(3 * z, temp), labels) < cal.nll(
        temperature.apply_temperature(3 * z, 1.0), labels)
    # masked (−inf) choices stay at probability 0
    zm = 3 * z.copy()
    zm[:, 3] = -np.inf
    assert np.all(temperature.apply_temperature(zm, temp)[:, 3] == 0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=60))
def test_ece_bounds(rows):
    conf = np.array([r[0] for r in rows])
    correct = np.array([r[1] for r in rows], dtype=float)
    ece = cal.expected_calibration_error(conf, correct)
    assert 0.0 <= ece <= cal.max_calibration_error(conf, correct) + 1e-12 <= 1.0 + 1e-12
    assert 0.0 <= cal.equal_mass_ece(conf, correct) <= 1.0


def test_compute_metrics_values_and_intervals():
    res = _result(150, 7)
    ms = compute_metrics(res, n_boot=60, seed=0)
    assert list(ms) == list(CHOICE)  # every choice metric of the registry, in its order
    assert ms["acc"].value == pytest.approx(np.mean(res.correct))
    assert ms["ece"].value == pytest.approx(cal.expected_calibration_error(res.confidence, res.correct))
    assert ms["brier"].value == pytest.approx(cal.brier_score(res.probs, res.answer))
    for name, m in ms.items():
        assert m.lo <= m.value <= m.hi or name in ("mce", "ece", "smece", "ece_mass"), name
        assert m.lo < m.hi
    again = compute_metrics(res, n_boot=60, seed=0)
    assert again == ms
    point = compute_metrics(res, n_boot=0)
    assert point["nll"].lo == point["nll"].value == point["nll"].hi


def _view_for(n: int, seed: int, ties: bool):
    _, probs, labels = random_probs(n, 4, seed)
    if ties:  # whole questions repeated: equal confidences with equal correctness
        probs = np.concatenate([probs, probs[: n // 3]])
        labels = np.concatenate([labels, labels[: n // 3]])
    pred = probs.argmax(1)
    return {
        "correct": (pred == labels).astype(np.float64),
        "correct_norm": (pred == labels).astype(np.float64),
        "confidence": probs.max(1),
        "probs": probs,
        "answer": labels.astype(np.int64),
    }


@pytest.mark.parametrize(("n", "seed", "ties"), [(300, 0, False), (40, 1, True), (7, 2, False),
                                                  (3, 3, True)])
@pytest.mark.parametrize("name", [n for n, s in CHOICE.items() if s.rows is not None])
def test_batched_bootstrap_metrics_equal_the_per_replicate_loop(name, n, seed, ties):
    """Each metric's replicate-batched form (used for bootstrap intervals) gives, replicate by
    replicate, what the plain metric gives on that resample."""
    spec = CHOICE[name]
    v = _view_for(n, seed, ties)
    m = len(v["correct"])
    draws = np.random.default_rng(seed).integers(0, m, size=(60 if spec.expensive else 400, m))
    batched = spec.rows(v, bootstrap.Resamples(draws), 10)
    loop = np.array([spec.fn({k: a[d] for k, a in v.items()}, 10) for d in draws])
    assert batched.shape == loop.shape
    np.testing.assert_allclose(batched, loop, rtol=1e-9, atol=1e-12, equal_nan=True)
    if name == "auroc":
        assert np.isnan(loop).any() == (n <= 7)  # tiny resamples can be all right or all wrong


def test_a_metric_without_a_batched_form_gets_its_interval_replicate_by_replicate(monkeypatch):
    res = _result(80, 3)
    fresh: Registry[MetricSpec] = Registry("metric")
    for name, spec in METRICS.items():
        fresh.add(name, spec)
    fresh.add("median_conf", MetricSpec("median_conf", "max", "median confidence", "probability",
                                        "choices", lambda v, n_bins: float(np.median(v["confidence"]))))
    monkeypatch.setattr(metrics_mod, "METRICS", fresh)
    ms = compute_metrics(res, n_boot=200, seed=0)
    draws = np.random.default_rng(0).integers(0, 80, size=(200, 80))
    expect = np.quantile([np.median(res.confidence[d]) for d in draws], [0.025, 0.975])
    assert (ms["median_conf"].lo, ms["median_conf"].hi) == pytest.approx(tuple(expect))
    assert "median_conf" not in METRICS  # the real registry is untouched
