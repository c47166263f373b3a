"""Properties (hypothesis): merge identities and what calibration metrics must always satisfy."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from calmerge.eval.calibration import (
    brier_score,
    expected_calibration_error,
    max_calibration_error,
    nll,
)
from calmerge.merge.families import get_family
from calmerge.merge.methods import Group, get_method

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
tensors = arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 7)), elements=finite)


def pair(draw_a: np.ndarray, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.from_numpy(draw_a.copy())
    b = a + torch.randn(a.shape, generator=torch.Generator().manual_seed(seed))
    return a, b


def linear_family(lam: float, base: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
    """The linear family's merge at λ, as the engine and the sweep compute it."""
    models, params = get_family("linear").build("base", "aligned", lam, 1.0)
    weights = [m["parameters"]["weight"] for m in models]
    return get_method("linear")(Group((base, aligned)), weight=weights, **params)


@settings(max_examples=60, deadline=None)
@given(tensors, st.integers(0, 1000))
def test_lambda_0_is_base_and_1_is_aligned_exactly(a, seed):
    base, aligned = pair(a, seed)
    assert torch.equal(linear_family(0.0, base, aligned), base)
    assert torch.equal(linear_family(1.0, base, aligned), aligned)


@settings(max_examples=60, deadline=None)
@given(tensors, st.integers(0, 1000), st.floats(-2, 3, allow_nan=False))
def test_linear_is_symmetric(a, seed, w):
    x, y = pair(a, seed)
    linear = get_method("linear")
    one = linear(Group((x, y)), weight=[1 - w, w], normalize=False)
    two = linear(Group((y, x)), weight=[w, 1 - w], normalize=False)
    # equal up to rounding: the accumulation may use fused multiply-adds, whose order matters
    torch.testing.assert_close(one, two, rtol=1e-6, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(tensors, st.integers(2, 5), st.lists(st.floats(0.1, 5), min_size=5, max_size=5))
def test_soup_of_identical_models_is_the_model(a, n, weights):
    x = torch.from_numpy(a.copy())
    out = get_method("soup")(Group(tuple(x.clone() for _ in range(n))), weight=weights[:n])
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)


conf_correct = st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=80)


@settings(max_examples=100, deadline=None)
@given(conf_correct, st.integers(2, 20), st.randoms())
def test_ece_mce_bounded_and_order_invariant(rows, n_bins, rnd):
    conf = np.array([r[0] for r in rows])
    ok = np.array([r[1] for r in rows], dtype=float)
    ece = expected_calibration_error(conf, ok, n_bins)
    mce = max_calibration_error(conf, ok, n_bins)
    assert 0.0 <= ece <= mce + 1e-12 <= 1.0 + 1e-12
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    assert np.isclose(expected_calibration_error(conf[perm], ok[perm], n_bins), ece, atol=1e-12)
    assert np.isclose(max_calibration_error(conf[perm], ok[perm], n_bins), mce, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 6)), min_size=1, max_size=8))
def test_ece_is_zero_on_perfectly_calibrated_data(groups):
    """Groups of m·10 items at confidence k/10 with exactly m·k correct: ECE = MCE = 0."""
    conf, ok = [], []
    for k, m in groups:
        n = 10 * m
        conf += [k / 10 + 1e-9] * n  # nudge off the bin edge so each group sits in one bin
        ok += [1.0] * (m * k) + [0.0] * (n - m * k)
    conf, ok = np.array(conf), np.array(ok)
    assert expected_calibration_error(conf, ok, 10) < 1e-7
    assert max_calibration_error(conf, ok, 10) < 1e-7


probs = st.lists(st.floats(0.01, 1), min_size=2, max_size=6).map(lambda v: np.array(v) / sum(v))


@settings(max_examples=100, deadline=None)
@given(probs, st.data())
def test_brier_and_nll_are_proper(p, data):
    """The expected score under the true distribution p is smallest when the forecast is p."""
    q = data.draw(
        st.lists(st.floats(0.01, 1), min_size=len(p), max_size=len(p)).map(
            lambda v: np.array(v) / sum(v)
        )
    )
    labels = np.arange(len(p))

    def expected(score, forecast):
        rows = np.repeat(forecast[None, :], len(p), axis=0)
        per_label = [score(rows[i : i + 1], labels[i : i + 1]) for i in range(len(p))]
        return float(np.dot(p, per_label))

    for score in (brier_score, nll):
        assert expected(score, p) <= expected(score, q) + 1e-9
