"""Sliding-window attention under packed scoring: equal to lm-eval's `hf` model past the window.

The scorer hands the model its own 4-D mask, which replaces the model's; on local-attention
layers the mask must therefore carry the window too, counted in the positions the plain sequence
context+choice has. The fixtures' window is 8 tokens; the prompts here are 20–60 tokens long, so
every sliding layer hides most of the context from the choice tokens.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from families import WINDOW, load_causal_lm
from tiny import make_tokenizer
from transformers import (
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from calmerge.eval.data import Item
from calmerge.eval.loading import load_model
from calmerge.eval.score import (
    FULL,
    SLIDING,
    AttentionPlan,
    Scorer,
    _target_logprobs,
    attention_plan,
)

WINDOWED = ["gemma3_text", "mistral"]
SENTENCES = [
    "The capital of France is Paris. Which city is in France?",
    "apple banana cherry grape lemon. Which is yellow?",
    "Which animal barks? dog cat cow horse.",
    "0 1 2 3 4 5 6 7 8 9 10 one two three. What is next?",
    "What colour is the sky? A. blue B. green C. red",
    "The capital of Italy is Rome; the sky is blue, so",
]
CHOICES = ["blue sky", "green apple pie", "red cherry", "a dog barks", "Paris France",
           "Rome Italy", "eleven twelve", "banana split", "lemon mango"]
SHORT = ["sky?", "dog", "one", "Rome"]  # with template "{question}": inside the window of 8


def long_items(n: int = 10) -> list[Item]:
    return [
        Item(
            id=f"l{i}",
            question=SENTENCES[i % len(SENTENCES)],
            choices=tuple(CHOICES[(2 * i + j) % len(CHOICES)] for j in range(2 + i % 3)),
            answer=i % 2,
        )
        for i in range(n)
    ]


def short_items() -> list[Item]:
    return [Item(id=f"s{i}", question=q, choices=("a", "b c"), answer=0)
            for i, q in enumerate(SHORT)]


def plain_forward(model, scorer: Scorer) -> np.ndarray:
    """Each context+choice as one unpadded forward through the full model (its own masks)."""
    out = np.full(scorer.mask.shape, -np.inf)
    for i, enc in enumerate(scorer.encoded):
        lc = len(enc.context)
        for j, cont in enumerate(enc.continuations):
            with torch.no_grad():
                logits = model(torch.tensor([[*enc.context, *cont]])).logits[0].float()
            logp = logits.log_softmax(-1)
            out[i, j] = sum(logp[lc - 1 + k, t].item() for k, t in enumerate(cont))
    return out


def block_mask_only(model, scorer: Scorer) -> np.ndarray:
    """The scorer before the fix: the block mask alone handed to every layer."""
    n = len(scorer.items)
    sums = torch.zeros(n * scorer.n_choices, dtype=torch.float64)
    with torch.inference_mode():
        for batch in scorer.batches:
            lp = _target_logprobs(model, batch, batch.additive_mask(torch.float32))
            sums.index_add_(0, batch.owner, lp.double())
    ll = np.empty((n, scorer.n_choices))
    ll[scorer.order] = sums.view(n, scorer.n_choices).numpy()
    return np.where(scorer.mask, ll, -np.inf)


def lm_eval_logliks(path, scorer: Scorer) -> np.ndarray:
    """lm-eval 0.4 `hf` model on the same (context, continuation) strings."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(path), batch_size=8, device="cpu", dtype="float32")
    b = scorer.builder
    reqs, where = [], []
    for i, item in enumerate(scorer.items):
        for j, choice in enumerate(item.choices):
            args = (b.context(item), b.delimiter(item) + choice)
            reqs.append(Instance("loglikelihood", {}, args, len(reqs)))
            where.append((i, j))
    out = np.full(scorer.mask.shape, -np.inf)
    for (i, j), (ll, _) in zip(where, lm.loglikelihood(reqs, disable_tqdm=True), strict=True):
        out[i, j] = ll
    return out



def _scores_like_the_plain_sequence(model, reference, scorer, paths):
    """Score with calmerge, check which paths ran (a set: any order; a list: batch by batch)
    and that every choice equals a plain forward of `reference` on context+choice; returns
    (scores, mask of real choices)."""
    ours = scorer.score(model)
    ran = set(scorer.last_paths) if isinstance(paths, set) else scorer.last_paths
    assert ran == paths
    mask = scorer.mask
    np.testing.assert_allclose(ours.choice_logprobs[mask], plain_forward(reference, scorer)[mask],
                               atol=1e-4, rtol=0)
    return ours, mask

@pytest.fixture(scope="module")
def windowed(family_pair):
    """family -> (path, model via calmerge, the same via transformers' Auto class)."""
    out = {}
    for name in WINDOWED:
        path = family_pair(name)[1]
        model, tok = load_model(path, device="cpu", dtype="float32")
        out[name] = (path, model, tok, load_causal_lm(path))
    return out


@pytest.mark.parametrize("family", WINDOWED)
def test_long_prompts_match_lm_eval_and_plain_forward(windowed, family):
    path, model, tok, auto = windowed[family]
    assert attention_plan(model.get_decoder().config).window == WINDOW
    scorer = Scorer(tok, long_items(), batch_size=4)
    lengths = [len(e.context) for e in scorer.encoded]
    assert min(lengths) >= 20 and max(lengths) <= 60, lengths
    assert all(len(c) >= 2 for e in scorer.encoded for c in e.continuations)

    ours, mask = _scores_like_the_plain_sequence(model, auto, scorer, {"windowed"})
    theirs = lm_eval_logliks(path, scorer)
    np.testing.assert_allclose(ours.choice_logprobs[mask], theirs[mask], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", WINDOWED)
def test_block_mask_alone_was_wrong(windowed, family):
    """The check has teeth: without the window the same prompts are scored visibly wrong."""
    _, model, tok, auto = windowed[family]
    scorer = Scorer(tok, long_items(), batch_size=4)
    mask = scorer.mask
    err = np.abs(block_mask_only(model, scorer)[mask] - plain_forward(auto, scorer)[mask]).max()
    assert err > 1e-3


def test_short_prompts_keep_the_packed_path(windowed):
    """Prompts inside the window: today's block mask, bit for bit, and still the right numbers."""
    _, model, tok, auto = windowed["gemma3_text"]
    scorer = Scorer(tok, short_items(), template="{question}", batch_size=3)
    assert max(e.positions_needed for e in scorer.encoded) <= WINDOW
    ours, _ = _scores_like_the_plain_sequence(model, auto, scorer, {"packed"})
    np.testing.assert_array_equal(ours.choice_logprobs, block_mask_only(model, scorer))


def test_mixed_batch_windows_only_where_needed(windowed):
    """Short and long items together: long batches windowed, short ones packed, all correct."""
    _, model, tok, auto = windowed["mistral"]
    scorer = Scorer(tok, [*long_items(4), *short_items()], template="{question}", batch_size=4)
    _scores_like_the_plain_sequence(model, auto, scorer, ["windowed", "packed"])


def _tiny(cls, cfg, tmp_path):
    """Save a tiny random model of `cls(cfg)` with the test tokenizer and load it back."""
    tok = make_tokenizer(chat=False)
    torch.manual_seed(3)
    cls(cfg(len(tok))).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok = load_model(tmp_path, device="cpu", dtype="float32")
    return model, tok, cls.from_pretrained(tmp_path, dtype=torch.float32).eval()


COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0,
              eos_token_id=0, pad_token_id=5)


def test_qwen2_use_sliding_window_gets_one_mask_per_layer_type(tmp_path):
    """Qwen2 with use_sliding_window: layer 0 global, layer 1 sliding — the dict of masks."""
    model, tok, auto = _tiny(Qwen2ForCausalLM, lambda v: Qwen2Config(
        vocab_size=v, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
        **COMMON), tmp_path)
    assert attention_plan(model.get_decoder().config) == AttentionPlan(WINDOW, (FULL, SLIDING))
    scorer = Scorer(tok, long_items(6), batch_size=3)
    _scores_like_the_plain_sequence(model, auto, scorer, {"windowed"})


def test_phi3_with_a_window_matches_lm_eval(tmp_path):
    """Phi-3 configs with `sliding_window` (no layer_types): every layer slides, one mask."""
    model, tok, auto = _tiny(Phi3ForCausalLM, lambda v: Phi3Config(
        vocab_size=v, sliding_window=WINDOW, **{**COMMON, "num_key_value_heads": 4}), tmp_path)
    assert attention_plan(model.get_decoder().config) == AttentionPlan(WINDOW, (SLIDING,))
    scorer = Scorer(tok, long_items(6), batch_size=3)
    ours, mask = _scores_like_the_plain_sequence(model, auto, scorer, {"windowed"})
    theirs = lm_eval_logliks(tmp_path, scorer)
    np.testing.assert_allclose(ours.choice_logprobs[mask], theirs[mask], atol=1e-4, rtol=0)
    wrong = np.abs(block_mask_only(model, scorer)[mask] - theirs[mask]).max()
    assert wrong > 1e-3


def test_model_refusing_per_type_masks_is_scored_unpacked():
    """MistralModel reads one mask for every layer: given mixed `layer_types` (which it ignores,
    sliding everywhere) it fails on the dict, and the scorer falls back to plain sequences the
    model masks itself. (Loaded through the Auto classes such a config becomes Ministral, which
    takes the dict; the class is built directly here.)"""
    tok = make_tokenizer(chat=False)
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = MistralConfig(vocab_size=len(tok), sliding_window=WINDOW,
                            layer_types=[FULL, SLIDING], **COMMON)
    model = MistralForCausalLM(cfg).eval()
    if attention_plan(model.get_decoder().config).layer_types != (FULL, SLIDING):
        pytest.skip("this transformers drops Mistral's layer_types")
    scorer = Scorer(tok, [*long_items(4), *short_items()], template="{question}", batch_size=4)
    _scores_like_the_plain_sequence(model, model, scorer, ["unpacked", "packed"])


def test_plan_is_read_from_the_config():
    """No model names: the window, its switch and the layer types decide."""
    assert attention_plan(Qwen2Config(use_sliding_window=False)) == AttentionPlan()
    assert attention_plan(Phi3Config(sliding_window=2047)) == AttentionPlan(2047, (SLIDING,))
    assert attention_plan(Phi3Config(sliding_window=None)) == AttentionPlan()
    full_only = Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=99)
    assert attention_plan(full_only) == AttentionPlan()
    hybrid = Qwen2Config(layer_types=["linear_attention", FULL], num_hidden_layers=2)
    assert not attention_plan(hybrid).pack


def test_multimodal_gemma3_reads_the_text_config(family_pair):
    """Gemma3ForConditionalGeneration: the window lives in `text_config`; the decoder's config
    is read, and text-only questions score as the full model's own forward does."""
    path = family_pair("gemma3_mm")[1]
    model, tok = load_model(path, device="cpu", dtype="float32")
    assert attention_plan(model.get_decoder().config) == AttentionPlan(WINDOW, (FULL, SLIDING))
    scorer = Scorer(tok, long_items(4), batch_size=2)
    _scores_like_the_plain_sequence(model, model, scorer, {"windowed"})
