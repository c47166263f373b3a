"""Scorer: packed shared-context scoring equals naive per-choice forwards; letter mode; errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import make_model

from calmerge.errors import DataError
from calmerge.eval.data import Item
from calmerge.eval.loading import load_model
from calmerge.eval.prompts import PromptBuilder
from calmerge.eval.score import Scorer, finalize

QUESTIONS = [
    "What colour is the sky?",
    "Which animal barks? dog cat cow horse.",
    "The capital of France is Paris. The capital of Italy is",
    "one two three",
    "apple banana cherry grape lemon mango orange pear plum. Which is yellow?",
]
CHOICES = ["blue", "green apple", "red cherry pie", "dog", "Rome", "four five", "lemon"]


def make_items(n: int = 9) -> list[Item]:
    return [
        Item(
            id=f"q{i}",
            question=QUESTIONS[i % len(QUESTIONS)] * (1 + i % 2),
            choices=tuple(CHOICES[(i + j) % len(CHOICES)] for j in range(2 + i % 3)),
            answer=i % 2,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def qwen(tiny_models_dir):
    path = make_model(tiny_models_dir / "qwen_eval", seed=2, arch="qwen2")
    return load_model(path, device="cpu", dtype="float32")


def naive_logprobs(model, tokenizer, items, **builder_kw) -> np.ndarray:
    """Each context+choice as its own unpadded forward: the definition being reproduced."""
    builder = PromptBuilder(tokenizer, **builder_kw)
    out = np.full((len(items), max(len(i.choices) for i in items)), -np.inf)
    for i, item in enumerate(items):
        ctx, conts = builder.encode(item)
        for j, cont in enumerate(conts):
            with torch.no_grad():
                logits = model(torch.tensor([ctx + cont])).logits[0].float()
            logp = logits.log_softmax(-1)
            out[i, j] = sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))
    return out


@pytest.mark.parametrize("which", ["llama", "qwen"])
def test_packed_equals_naive(which, request):
    model, tok = request.getfixturevalue(which)
    items = make_items()
    result = Scorer(tok, items, batch_size=4).score(model)
    expected = naive_logprobs(model, tok, items)
    np.testing.assert_allclose(result.choice_logprobs[result.mask], expected[result.mask], atol=1e-4)
    assert np.all(np.isneginf(result.choice_logprobs[~result.mask]))
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0)
    assert result.ids == tuple(i.id for i in items)


def test_batch_size_and_order_do_not_change_scores(llama):
    model, tok = llama
    items = make_items(7)
    a = Scorer(tok, items, batch_size=1).score(model)
    b = Scorer(tok, items, batch_size=7).score(model)
    np.testing.assert_allclose(a.choice_logprobs[a.mask], b.choice_logprobs[b.mask], atol=1e-4)


def test_scorer_reuses_tokenisation_across_weight_changes(llama, tiny_pair):
    """The sweep rewrites weights in place; scoring the same Scorer again must see them."""
    model, tok = load_model(tiny_pair[0], device="cpu")
    items = make_items(4)
    scorer = Scorer(tok, items)
    before = scorer.score(model).choice_logprobs.copy()
    aligned, _ = load_model(tiny_pair[1], device="cpu")
    with torch.no_grad():
        for p, q in zip(model.parameters(), aligned.parameters(), strict=True):
            p.copy_(q)
    after = scorer.score(model)
    assert not np.allclose(before, after.choice_logprobs)
    np.testing.assert_allclose(
        after.choice_logprobs[after.mask],
        naive_logprobs(aligned, tok, items)[after.mask],
        atol=1e-4,
    )


def test_bf16_close_to_fp32(tiny_pair):
    items = make_items(5)
    m32, tok = load_model(tiny_pair[0], device="cpu", dtype="float32")
    m16, _ = load_model(tiny_pair[0], device="cpu", dtype="bfloat16")
    a = Scorer(tok, items).score(m32)
    b = Scorer(tok, items).score(m16)
    assert np.all(np.isfinite(b.choice_logprobs[b.mask]))
    diff = np.abs(a.choice_logprobs[a.mask] - b.choice_logprobs[b.mask])
    assert diff.max() < 0.5 and diff.mean() < 0.15


def test_letter_mode_is_next_token_softmax_over_letters(llama):
    """letter mode = softmax of the letter logits at the answer position, over offered letters."""
    model, tok = llama
    items = make_items(6)
    tmpl = "{question}\n{choices}\nAnswer:"
    result = Scorer(tok, items, mode="letter", template=tmpl).score(model)
    builder = PromptBuilder(tok, mode="letter", template=tmpl)
    for i, item in enumerate(items):
        ctx, conts = builder.encode(item)
        assert all(len(c) == 1 for c in conts) and len({c[0] for c in conts}) == len(conts)
        with torch.no_grad():
            logits = model(torch.tensor([ctx])).logits[0, -1].float()
        letter_logits = logits[[c[0] for c in conts]]
        expected = torch.softmax(letter_logits, -1).numpy()
        np.testing.assert_allclose(result.probs[i, : len(item.choices)], expected, atol=1e-5)
    np.testing.assert_array_equal(result.pred, result.pred_norm)


def test_letter_tokens_follow_the_prompt(llama):
    """In the test tokenizer ' A' is one token but ' B' is 'Ġ'+'B': all letters must then be
    read after the space token, as bare letters; a prompt ending in a newline uses bare letters."""
    _, tok = llama
    item = Item("x", "Sky?", ("blue", "green", "red"), 0)
    space = PromptBuilder(tok, mode="letter", template="{question}\n{choices}\nAnswer:")
    ctx, conts = space.encode(item)
    assert tok.convert_ids_to_tokens(ctx[-1]) == "Ġ"
    assert [tok.decode(c) for c in conts] == ["A", "B", "C"]
    newline = PromptBuilder(tok, mode="letter", template="{question}\n{choices}\n", target_delimiter="")
    ctx2, conts2 = newline.encode(item)
    assert tok.decode(ctx2).endswith("\n") and [tok.decode(c) for c in conts2] == ["A", "B", "C"]


def test_chat_format_uses_template_and_no_space(llama):
    _, tok = llama
    item = Item("x", "Sky?", ("blue", "green"), 0)
    builder = PromptBuilder(tok, prompt_format="chat")
    text = builder.context(item)
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>")
    _ctx, conts = builder.encode(item)
    assert tok.decode(conts[0]) == "blue"


def test_fewshot_prefix_is_shared(llama):
    model, tok = llama
    items = make_items(3)
    shots = [Item("d0", "Which animal barks?", ("dog", "cat"), 0)]
    scorer = Scorer(tok, items, fewshot=shots)
    ctx = scorer.builder.context(items[0])
    assert ctx.startswith("Question: Which animal barks?\nAnswer: dog\n\nQuestion:")
    res = scorer.score(model)
    np.testing.assert_allclose(
        res.choice_logprobs[res.mask],
        naive_logprobs(model, tok, items, fewshot=tuple(shots))[res.mask],
        atol=1e-4,
    )


def test_chat_without_template_is_a_data_error(tiny_models_dir):
    path = make_model(tiny_models_dir / "nochat", seed=4, chat=False)
    _, tok = load_model(path, device="cpu")
    with pytest.raises(DataError, match="no chat template"):
        Scorer(tok, make_items(2), prompt_format="chat")


def test_prompt_longer_than_context_is_a_data_error(llama):
    model, tok = llama
    long = Item("long", "apple banana cherry " * 200, ("a", "b"), 0)
    scorer = Scorer(tok, [*make_items(2), long])
    with pytest.raises(DataError, match=r"item 'long'.*longer than the model's context of 256"):
        scorer.score(model)


def test_finalize_acc_norm_uses_character_length():
    ll = np.array([[-4.0, -6.0, -np.inf]])
    mask = np.array([[True, True, False]])
    res = finalize(["a"], ll, mask, np.array([1]), np.array([[2.0, 6.0, 1.0]]), "loglik")
    assert res.pred[0] == 0 and res.pred_norm[0] == 1  # -4/2=-2 < -6/6=-1
    assert bool(res.correct_norm[0]) and not bool(res.correct[0])
    np.testing.assert_allclose(res.probs[0], [1 / (1 + np.exp(-2)), np.exp(-2) / (1 + np.exp(-2)), 0])
