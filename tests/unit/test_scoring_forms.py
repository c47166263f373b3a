"""The two scoring forms — packed (block mask) and prefix (the context's KV cache) — give the
same scores through the Scorer, and `form="auto"` keeps the one it timed faster."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import make_tokenizer

from calmerge.errors import ConfigError
from calmerge.eval import score
from calmerge.eval.data import Item
from calmerge.eval.loading import load_model
from calmerge.eval.score import Scorer


def _items(n=10):
    words = ["red", "green", "blue", "amber", "violet", "crimson", "teal", "olive", "navy", "gold"]
    out = []
    for i in range(n):
        ctx = " ".join(words[(i + j) % 10] for j in range(8 + 3 * i))  # lengths differ
        k = 2 + i % 3  # 2-4 choices
        out.append(Item(f"q{i}", f"Which colour follows? {ctx}",
                        tuple(" ".join(words[(i + c + m) % 10] for m in range(1 + c % 3))
                              for c in range(k)), i % k))
    return out


@pytest.fixture(scope="module")
def llama(tiny_pair):
    return load_model(str(tiny_pair[1]), device="cpu", dtype="float32")


def _score(model, tok, items, **kw):
    sc = Scorer(tok, items, template="{question}", **kw)
    return sc, sc.score(model)


def test_prefix_form_equals_packed(llama):
    model, tok = llama
    items = _items()
    _, packed = _score(model, tok, items, batch_size=4)
    sc, prefix = _score(model, tok, items, batch_size=4, form="prefix")
    assert set(sc.last_paths) == {"prefix"}
    np.testing.assert_allclose(prefix.choice_logprobs[packed.mask],
                               packed.choice_logprobs[packed.mask], atol=1e-5)
    assert (prefix.pred == packed.pred).all() and (prefix.greedy == packed.greedy).all()


def test_prefix_form_on_sliding_windows_longer_than_the_window(family_pair):
    base, _ = family_pair("gemma3_text")
    model, _ = load_model(str(base), device="cpu", dtype="float32")
    tok = make_tokenizer()
    items = _items(6)
    _, packed = _score(model, tok, items, batch_size=3)
    sc, prefix = _score(model, tok, items, batch_size=3, form="prefix")
    assert set(sc.last_paths) == {"prefix"}
    np.testing.assert_allclose(prefix.choice_logprobs[packed.mask],
                               packed.choice_logprobs[packed.mask], atol=1e-5)


@pytest.fixture
def timed_on_cpu(monkeypatch):
    """The timing the CPU skips (see `score.TIMED_DEVICES`), switched on to test it here."""
    monkeypatch.setattr(score, "TIMED_DEVICES", {"cuda", "cpu"})


def test_auto_is_packed_on_the_cpu_without_timing(llama):
    model, tok = llama
    sc, _ = _score(model, tok, _items(), batch_size=4, form="auto")
    assert sc._form == "packed" and sc.form_timings == {} and set(sc.last_paths) == {"packed"}


def test_auto_keeps_the_form_it_timed_faster(llama, timed_on_cpu):
    model, tok = llama
    items = _items()
    _, packed = _score(model, tok, items, batch_size=4)
    sc, got = _score(model, tok, items, batch_size=4, form="auto")
    assert set(sc.form_timings) == {"packed", "prefix"}
    faster = min(sc.form_timings, key=lambda k: (sc.form_timings[k], k != "packed"))
    assert sc._form == faster
    expected = {"prefix"} if faster == "prefix" else {"packed"}
    assert set(sc.last_paths) == expected
    np.testing.assert_allclose(got.choice_logprobs[packed.mask],
                               packed.choice_logprobs[packed.mask], atol=1e-5)
    again = sc.score(model)  # a sweep's next point: no second measurement
    assert set(sc.last_paths) == expected
    np.testing.assert_allclose(again.choice_logprobs, got.choice_logprobs, atol=1e-6)


def test_auto_picks_prefix_when_it_is_faster(llama, monkeypatch, timed_on_cpu):
    """The choice follows the clock: with the packed forward slowed down, prefix is kept."""
    import time

    model, tok = llama
    real = score._target_scores

    def slow(*a, **kw):  # far above the noise of a loaded 2-core machine
        time.sleep(0.5)
        return real(*a, **kw)

    monkeypatch.setattr(score, "_target_scores", slow)
    sc, _ = _score(model, tok, _items(), batch_size=4, form="auto")
    assert sc._form == "prefix" and set(sc.last_paths) == {"prefix"}


def test_a_model_the_prefix_form_cannot_take_is_scored_packed(llama, monkeypatch, timed_on_cpu):
    model, tok = llama

    def refuse(*a, **kw):
        raise NotImplementedError("no expandable cache")

    monkeypatch.setattr(score, "prefix_scores", refuse)
    _, packed = _score(model, tok, _items(), batch_size=4)
    sc, got = _score(model, tok, _items(), batch_size=4, form="prefix")
    assert set(sc.last_paths) == {"packed"}
    np.testing.assert_allclose(got.choice_logprobs, packed.choice_logprobs, atol=1e-6)
    sc, _ = _score(model, tok, _items(), batch_size=4, form="auto")
    assert sc._form == "packed" and sc.form_timings["prefix"] == float("inf")


def test_prefix_form_with_auto_batches_under_a_budget(llama):
    model, tok = llama
    items = _items()
    _, packed = _score(model, tok, items, batch_size=4)
    sc, got = _score(model, tok, items, batch_size="auto", form="prefix", memory_budget=3_000_000)
    assert set(sc.last_paths) == {"prefix"} and len(sc.last_batch_sizes) > 1
    np.testing.assert_allclose(got.choice_logprobs[packed.mask],
                               packed.choice_logprobs[packed.mask], atol=1e-5)


def test_an_unknown_form_is_refused(llama):
    with pytest.raises(ConfigError, match="scoring form 'fast'"):
        Scorer(llama[1], _items(2), form="fast")
