"""Diversity metrics (hand-worked, sacrebleu) and batched, seeded sampling on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from calmerge.errors import DataError
from calmerge.eval import diversity as div
from calmerge.eval.generate import build_generation_prompts, sample_generations
from calmerge.eval.loading import load_model
from calmerge.eval.metrics import diversity_metrics, specs


def test_distinct_n_hand_worked():
    samples = ["a b a", "a b c"]
    assert div.distinct_n(samples, 1) == pytest.approx(3 / 6)  # {a,b,c} of 6 unigrams
    assert div.distinct_n(samples, 2) == pytest.approx(3 / 4)  # ab, ba, bc of 4 bigrams
    assert div.distinct_n(samples, 3) == pytest.approx(2 / 2)
    assert div.distinct_n(["", "x"], 2) == 0.0


def test_self_bleu_matches_sacrebleu_and_orders_diversity():
    from sacrebleu.metrics import BLEU

    same = ["the cat sat on the mat"] * 3
    varied = ["the cat sat on the mat", "a dog ran in the park", "birds fly over blue seas"]
    assert div.self_bleu(same) == pytest.approx(100.0)
    bleu = BLEU(effective_order=True)
    expected = np.mean([bleu.sentence_score(s, [r for r in varied if r != s]).score for s in varied])
    assert div.self_bleu(varied) == pytest.approx(expected)
    assert div.self_bleu(varied) < 30


def test_distinct_answers_normalises_case_and_space():
    assert div.distinct_answers(["Paris", " paris ", "Rome"]) == 2.0


def test_pairwise_cosine_distance_hand_worked():
    e = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    assert div.pairwise_cosine_distance(e) == pytest.approx((1 + 0 + 1) / 3)


def test_diversity_metrics_with_embeddings():
    same = [["The cat sat."] * 3, ["Paris is the capital."] * 3]
    varied = [["The cat sat.", "Stocks fell sharply today.", "I like green tea."]] * 2
    a, b = diversity_metrics(same), diversity_metrics(varied)
    assert a["embed_distance"] == pytest.approx(0.0, abs=1e-5)
    assert b["embed_distance"] > 0.5
    assert a["distinct_answers"] == 1.0 and b["distinct_answers"] == 3.0
    generated = specs("generations")
    assert list(a) == [s.name for s in generated]  # every generation metric, registry order
    assert list(diversity_metrics(same, embed=False)) == [
        s.name for s in generated if not s.needs_embedder
    ]
    with pytest.raises(DataError):
        diversity_metrics([])


@pytest.fixture(scope="module")
def model(tiny_pair):
    return load_model(tiny_pair[1], device="cpu")


def test_sampling_is_batched_seeded_and_shaped(model):
    m, tok = model
    prompts = ["The capital of France is", "apple banana", "one two"]
    a = sample_generations(m, tok, prompts, k=3, max_new_tokens=5, seed=1, batch_size=2)
    b = sample_generations(m, tok, prompts, k=3, max_new_tokens=5, seed=1, batch_size=2)
    c = sample_generations(m, tok, prompts, k=3, max_new_tokens=5, seed=2, batch_size=2)
    assert a == b and a != c
    assert [len(s) for s in a] == [3, 3, 3]
    assert len({s for group in a for s in group}) > 3  # sampling, not greedy


def test_chat_prompts_use_the_template(model):
    _, tok = model
    ids = build_generation_prompts(tok, ["Hi"], chat=True)[0]
    assert tok.decode(ids) == "<|user|>Hi<|end|><|assistant|>"


def test_prompt_too_long_for_generation(model):
    m, tok = model
    with pytest.raises(DataError, match="exceed the model's context"):
        sample_generations(m, tok, ["apple " * 250], k=2, max_new_tokens=32)
