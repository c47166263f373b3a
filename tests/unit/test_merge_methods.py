"""merge.methods: every method equals mergekit 0.1.x's on the same tensors, bit for bit.

The oracle is mergekit's own `merge_tensors` (test-only dependency). Tensors are large enough
(> 1M elements) to exercise slerp's chunked norms.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mergekit.config import ConditionalParameter, evaluate_setting
from mergekit.merge_methods import merge_tensors

from calmerge.errors import ConfigError
from calmerge.merge.methods import METHODS, Group, get_method, layer_position, resolve_setting


@pytest.fixture(scope="module")
def trio() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(700, 1600, generator=g)
    return (
        base,
        base + 0.05 * torch.randn(base.shape, generator=g),
        base + 0.05 * torch.randn(base.shape, generator=g),
    )


DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("weights", "normalize"), [([0.3, 0.9], True), ([1.7, -0.7], False)])
def test_linear_matches_mergekit(trio, dtype, weights, normalize):
    a, b = trio[0].to(dtype), trio[1].to(dtype)
    ref = merge_tensors([a, b], "linear", parameters={"weight": weights, "normalize": normalize})
    out = get_method("linear")(Group((a, b)), weight=weights, normalize=normalize)
    assert out.dtype == dtype
    assert torch.equal(out, ref)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 1.4])
def test_slerp_matches_mergekit(trio, t):
    base, a, _ = trio
    ref = merge_tensors([base, a], "slerp", parameters={"t": t}, base_index=0)
    assert torch.equal(get_method("slerp")(Group((base, a), 0), t=t), ref)


def test_slerp_colinear_falls_back_to_lerp_like_mergekit():
    v = torch.linspace(-1, 1, 4096).reshape(64, 64)
    ref = merge_tensors([v, 2 * v], "slerp", parameters={"t": 0.25}, base_index=0)
    out = get_method("slerp")(Group((v, 2 * v), 0), t=0.25)
    assert torch.equal(out, ref)
    assert torch.allclose(out, 1.25 * v)
    zero = torch.zeros(8, 8)
    ref0 = merge_tensors([zero, v[:8, :8]], "slerp", parameters={"t": 0.5}, base_index=0)
    assert torch.equal(get_method("slerp")(Group((zero, v[:8, :8]), 0), t=0.5), ref0)


TASK_CASES = [
    ("task_arithmetic", {"weight": [0.8, -0.4]}, {"lambda": 1.3}),
    ("task_arithmetic", {"weight": [0.5, 0.5]}, {"normalize": True}),
    ("ties", {"weight": [0.6, 0.4], "density": [0.3, 0.7]}, {}),
    ("ties", {"weight": [1.0, 1.0], "density": [0.5, 0.5]}, {"normalize": False, "lambda": 0.7}),
    ("dare_ties", {"weight": [0.6, 0.5], "density": [0.3, 0.6]}, {}),
    ("dare_linear", {"weight": [0.6, 0.5], "density": [0.5, 0.9]}, {"rescale": False}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("method", "per_delta", "shared"), TASK_CASES)
def test_task_vector_methods_match_mergekit(trio, dtype, method, per_delta, shared):
    tensors = [t[:300, :400].contiguous().to(dtype) for t in trio]  # ties sorts: keep it small
    torch.manual_seed(11)  # mergekit's DARE draws from the global generator
    ref = merge_tensors(tensors, method, parameters={**per_delta, **shared}, base_index=0)
    ours = {k: [None, *v] for k, v in per_delta.items()}
    out = get_method(method)(
        Group(tuple(tensors), 0), torch.Generator().manual_seed(11), **ours, **shared
    )
    assert out.dtype == dtype
    assert torch.equal(out, ref)


def test_dare_is_seeded_and_actually_drops(trio):
    base, a, b = trio
    method = get_method("dare_linear")
    kw = {"weight": [None, 1.0, 1.0], "density": [None, 0.2, 0.2]}
    r1 = method(Group((base, a, b), 0), torch.Generator().manual_seed(1), **kw)
    r2 = method(Group((base, a, b), 0), torch.Generator().manual_seed(1), **kw)
    r3 = method(Group((base, a, b), 0), torch.Generator().manual_seed(2), **kw)
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    plain = get_method("task_arithmetic")(Group((base, a, b), 0), weight=[None, 1.0, 1.0])
    assert not torch.equal(r1, plain)


def test_soup_is_mergekit_linear_over_the_variants(trio):
    base, a, b = trio
    ref = merge_tensors([a, b], "linear", parameters={"weight": [2.0, 1.0]})
    out = get_method("soup")(Group((a, b, base), 2), weight=[2.0, 1.0, 1.0])
    assert torch.equal(out, ref)


def test_lambda_identities(trio):
    base, a, _ = trio
    lin = get_method("linear")
    assert torch.equal(lin(Group((base, a)), weight=[1.0, 0.0]), base)
    assert torch.equal(lin(Group((base, a)), weight=[0.0, 1.0]), a)
    ta = get_method("task_arithmetic")
    assert torch.equal(ta(Group((base, a), 0), weight=[None, 0.0]), base)


def test_unknown_method_suggests_closest():
    with pytest.raises(ConfigError) as exc:
        get_method("slerpp")
    assert "did you mean 'slerp'" in exc.value.one_line()
    assert {
        "linear",
        "task_arithmetic",
        "slerp",
        "ties",
        "dare_ties",
        "dare_linear",
        "soup",
    } <= set(METHODS)


_scalar = st.floats(-3, 3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(_scalar, min_size=1, max_size=6),
    layer=st.integers(0, 9),
    layers=st.integers(1, 10),
)
def test_gradients_match_mergekit(values, layer, layers):
    layer = min(layer, layers - 1)
    t = layer_position(layer, layers)
    expect = evaluate_setting("model.layers.0.mlp", values, t, validate=float)
    assert resolve_setting(values, "model.layers.0.mlp", t) == pytest.approx(expect, abs=0, rel=0)


@pytest.mark.parametrize(
    "name",
    [
        "model.layers.1.self_attn.q_proj.weight",
        "lm_head.weight",
        "model.layers.0.mlp.up_proj.weight",
    ],
)
def test_filters_match_mergekit(name):
    setting = [
        {"filter": "self_attn", "value": [0.1, 0.9]},
        {"filter": "mlp", "value": 0.3},
        {"value": 0.5},
    ]
    mk = [ConditionalParameter(**c) for c in setting]
    for t in (0.0, 0.5, 1.0):
        assert resolve_setting(setting, name, t) == evaluate_setting(name, mk, t, validate=float)


def test_non_numeric_parameter_is_a_config_error():
    with pytest.raises(ConfigError, match="'weight': 'abc' is not a number"):
        resolve_setting("abc", "x", 0.0, "weight")
