"""Shared-prefix KV-cache scoring (`eval.prefix`) equals the plain forward and the packed form.

The oracle runs each context + branch (without its last token) as one unpadded sequence through
the model, which builds its own masks, and reads the float32 log-softmax at the targets — lm-eval's
computation. Contexts are 20–40 tokens, longer than the windowed fixtures' window of 8, so a cache
or mask that lost the window (or kept the wrong tokens in a sliding layer) would differ.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from families import WINDOW

from calmerge.eval.data import Item
from calmerge.eval.loading import load_model
from calmerge.eval.packing import Encoded, encode_partial, pack_batch
from calmerge.eval.prefix import prefix_scores
from calmerge.eval.score import Scorer, _target_scores, attention_plan

FAMILIES = ["llama", "qwen2", "gpt2", "phi3", "gemma3_text", "mistral"]
WINDOWED = ["gemma3_text", "mistral"]
PAD = 5
C = 4  # n_choices_max of the groups below


@pytest.fixture(scope="module")
def loaded(tiny_pair, family_pair):
    """family -> (model, tokenizer), loaded by calmerge in float32 on the CPU, once."""
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            path = tiny_pair[0] if family == "llama" else family_pair(family)[1]
            cache[family] = load_model(path, device="cpu", dtype="float32")
        return cache[family]

    return get


def tokens(rng: random.Random, n: int) -> tuple[int, ...]:
    return tuple(rng.randrange(6, 300) for _ in range(n))


def greedy(model, context: tuple[int, ...], n: int) -> tuple[int, ...]:
    """The model's own greedy continuation (so some greedy flags are True)."""
    ids = list(context)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return tuple(ids[len(context):])


def mixed_group(model, seed: int = 0) -> list[Encoded]:
    """Ordinary items with 2–4 choices of 1–6 tokens (one all single-token), greedy choices,
    and partial items with a shared and an empty common context."""
    rng = random.Random(seed)
    ctx = [tokens(rng, n) for n in (34, 21, 27, 40)]
    shared = tokens(rng, 22)
    return [
        Encoded(ctx[0], (tokens(rng, 3), tokens(rng, 1), greedy(model, ctx[0], 4), tokens(rng, 6))),
        Encoded(ctx[1], (tokens(rng, 2), greedy(model, ctx[1], 1))),
        Encoded(ctx[2], (tokens(rng, 1), tokens(rng, 1), tokens(rng, 1))),
        encode_partial([(shared + tokens(rng, 2), (40, 41, 42)), (shared + tokens(rng, 5), (40, 41, 42))]),
        encode_partial([(tokens(rng, 24), tokens(rng, 3)), (tokens(rng, 20), tokens(rng, 3))]),
        Encoded(ctx[3], (greedy(model, ctx[3], 3), tokens(rng, 5), tokens(rng, 2))),
    ]


def oracle(model, group, first: int = 0, mask4d: bool = False):
    """(log-probs, greedy hits, owner, target) from one plain forward per context + branch, in
    the natural order. `mask4d`: hand every layer a plain causal mask (no sliding window)."""
    lps, hits, owner, target = [], [], [], []
    for r, enc in enumerate(group):
        lc = len(enc.context)
        for j, (cont, k) in enumerate(zip(enc.continuations, enc.n_scored, strict=True)):
            seq = torch.tensor([[*enc.context, *cont[:-1]]])
            kw = {}
            if mask4d:
                t = seq.shape[1]
                causal = torch.ones(t, t, dtype=torch.bool).tril()
                kw["attention_mask"] = torch.zeros(1, 1, t, t).masked_fill(~causal, -1e30)
            with torch.inference_mode():
                logp = model(input_ids=seq, **kw).logits[0].float().log_softmax(-1)
            for i in range(len(cont) - k, len(cont)):
                lps.append(logp[lc - 1 + i, cont[i]].item())
                hits.append(bool(logp[lc - 1 + i].argmax() == cont[i]))
                owner.append((first + r) * C + j)
                target.append(cont[i])
    return torch.tensor(lps), torch.tensor(hits), torch.tensor(owner), torch.tensor(target)


def ours(model, group):
    with torch.inference_mode():
        return prefix_scores(model, group, PAD)


@pytest.mark.parametrize("family", FAMILIES)
def test_equals_the_plain_forward_in_pack_batch_order(loaded, family):
    model, _ = loaded(family)
    group = mixed_group(model)
    assert min(len(e.context) for e in group if e.context) > 2 * WINDOW
    assert any(not e.context for e in group)
    lp, hit = ours(model, group)
    o_lp, o_hit, owner, target = oracle(model, group)
    packed = pack_batch(group, 0, C, PAD)  # the order the caller scatters with
    assert torch.equal(packed.owner, owner) and torch.equal(packed.target, target)
    assert lp.dtype == torch.float32 and hit.dtype == torch.bool
    torch.testing.assert_close(lp, o_lp, atol=1e-5, rtol=0)
    assert torch.equal(hit, o_hit)
    assert hit.any() and not hit.all()


@pytest.mark.parametrize("family", WINDOWED)
def test_the_window_matters_on_these_prompts(loaded, family):
    """Teeth: the same sequences without the window (a plain causal mask on every layer) are
    scored visibly differently, so agreeing with the oracle means the window was kept."""
    model, _ = loaded(family)
    group = mixed_group(model)
    lp, _ = ours(model, group)
    windowless = oracle(model, group, mask4d=True)[0]
    assert (lp - windowless).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_equals_the_packed_batch_target_for_target(loaded, family):
    """The packed form on the same group (block mask, windowed where it must be): the same
    targets in the same order, the same log-probs and greedy flags."""
    model, _ = loaded(family)
    group = mixed_group(model, seed=1)
    batch = pack_batch(group, 0, C, PAD)
    plan = attention_plan(model.get_decoder().config)
    with torch.inference_mode():
        if plan.window is None:
            mask = batch.additive_mask(torch.float32)
        else:  # gemma3: mixed layer types, one mask per type (see score module doc)
            mask = {"full_attention": batch.additive_mask(torch.float32),
                    "sliding_attention": batch.additive_mask(torch.float32, plan.window)}
        p_lp, p_hit = _target_scores(model, batch, mask)
    lp, hit = ours(model, group)
    torch.testing.assert_close(lp, p_lp, atol=1e-5, rtol=0)
    assert torch.equal(hit, p_hit)


QUESTIONS = [
    "The capital of France is Paris. The capital of Italy is Rome, and the sky is",
    "Which animal barks? dog cat cow horse. The answer is",
    "apple banana cherry grape lemon mango orange pear plum. Which is yellow?",
    "0 1 2 3 4 5 6 7 8 9 10 one two three. What is next?",
]
CHOICES = ["blue", "dog", "green apple", "red cherry pie", "Rome", "four five six", "a"]
PARTIAL = [
    Item("w0", "The capital of France is Paris, so the capital of Italy is ", ("Rome", "Paris"),
         0, partial=" the answer."),
    Item("w1", "", ("Paris is", "Rome is"), 1, partial=" the capital of France."),
    Item("w2", "", ("blue ", "green", "red"), 0, partial="sky is one two three"),
]


def text_items() -> list[Item]:
    ordinary = [
        Item(f"q{i}", QUESTIONS[i % 4], tuple(CHOICES[(i + j) % 7] for j in range(2 + i % 3)),
             i % 2)
        for i in range(7)
    ]
    return [*ordinary, *PARTIAL]


def prefix_result(scorer: Scorer, model) -> tuple[np.ndarray, np.ndarray]:
    """Per-choice sums and greedy flags of the prefix form, scattered with each packed batch's
    `owner` exactly as `Scorer.score` scatters the packed scores."""
    n, width = len(scorer.items), scorer.n_choices
    sums = torch.zeros(n * width, dtype=torch.float64)
    misses = torch.zeros(n * width, dtype=torch.long)
    for b, batch in enumerate(scorer.batches):
        s = b * scorer.batch_size
        group = [scorer.encoded[i] for i in scorer.order[s : s + scorer.batch_size]]
        lp, hit = ours(model, group)
        sums.index_add_(0, batch.owner, lp.double())
        misses.index_add_(0, batch.owner, (~hit).long())
    ll, greedy_ = np.empty((n, width)), np.empty((n, width), dtype=bool)
    ll[scorer.order] = sums.view(n, width).numpy()
    greedy_[scorer.order] = misses.view(n, width).numpy() == 0
    return ll, greedy_


@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("mode", ["loglik", "letter"])
def test_equals_the_scorer_per_choice(loaded, family, mode):
    """`Scorer.score` (packed, or windowed for mistral's long prompts) against the prefix form
    scattered with the packed owners: items of 2–4 choices, choices of one and several tokens,
    partial items with and without a shared context; letter mode is all single-token branches."""
    model, tok = loaded(family)
    items = text_items() if mode == "loglik" else text_items()[:7]
    template = "{question}\n{choices}\nAnswer:" if mode == "letter" else None
    scorer = Scorer(tok, items, mode=mode, template=template, batch_size=4)
    result = scorer.score(model)
    lengths = [len(c) for e in scorer.encoded for c in e.continuations]
    assert min(lengths) == 1 and (mode == "letter" or max(lengths) > 2)
    if family == "mistral" and mode == "loglik":
        assert "windowed" in scorer.last_paths
    ll, greedy_ = prefix_result(scorer, model)
    mask = scorer.mask
    np.testing.assert_allclose(ll[mask], result.choice_logprobs[mask], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(greedy_ & mask, result.greedy)


def test_a_group_of_empty_contexts_runs_without_a_cache(loaded):
    model, _ = loaded("mistral")
    rng = random.Random(3)
    group = [encode_partial([(tokens(rng, 12), tokens(rng, 3)), (tokens(rng, 15), tokens(rng, 2))])
             for _ in range(3)]
    assert all(not e.context for e in group)
    lp, hit = ours(model, group)
    o_lp, o_hit, *_ = oracle(model, group)
    torch.testing.assert_close(lp, o_lp, atol=1e-5, rtol=0)
    assert torch.equal(hit, o_hit)


def test_a_decoder_without_a_cache_is_refused(loaded):
    model, _ = loaded("llama")

    class NoCacheDecoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, **kw):
            kw["use_cache"] = False
            return (self.inner(**kw).last_hidden_state,)

    class Wrapper:
        config, device = model.config, model.device

        def __init__(self):
            self.decoder = NoCacheDecoder(model.get_decoder())

        def get_decoder(self):
            return self.decoder

        def get_output_embeddings(self):
            return model.get_output_embeddings()

    group = [Encoded((7, 8, 9), ((10, 11), (12,)))]
    with pytest.raises(NotImplementedError, match="NoCacheDecoder"):
        ours(Wrapper(), group)
