"""Partial scoring (lm-eval multiple-input tasks, e.g. winogrande) and greedy flags.

The oracle needs no calmerge: for each choice the context string is built by hand (prompt +
choice, no delimiter), split from the shared continuation by lm-eval's `_encode_pair` rule
(re-implemented here), and the plain sequence context_j + continuation goes through the
checkpoint loaded with transformers' Auto class, unpacked and unmasked; the choice's score is the
sum of the log-softmax at the continuation tokens and its greedy flag is whether each of them is
the argmax there (lm-eval's `is_greedy`). Where lm-eval is installed its `hf` model is asked too.
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from families import WINDOW, load_causal_lm
from tiny import make_tokenizer
from tokenizers import processors
from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

from calmerge.errors import DataError
from calmerge.eval.data import Item
from calmerge.eval.loading import load_model
from calmerge.eval.packing import (
    Encoded,
    common_prefix_len,
    encode_partial,
    pack_batch,
    unpack_batch,
)
from calmerge.eval.prompts import PromptBuilder
from calmerge.eval.score import (
    FULL,
    SLIDING,
    Scorer,
    _target_scores,
    finalize,
)

TEMPLATE = "{question}"  # the lm-eval source's native template: the question is the prompt

#: winogrande-shaped items: a shared sentence start (w0, w2), a blank at the sentence start
#: (w1, w3: no shared token without a BOS), one choice's context a token prefix of the other's
#: (w2), a choice ending in whitespace that moves into the continuation (w3), three choices (w4)
PARTIAL = [
    Item("w0", "The capital of France is Paris, so the capital of Italy is ", ("Rome", "Paris"),
         0, partial=" the answer."),
    Item("w1", "", ("Paris is", "Rome is"), 1, partial=" the capital of France."),
    Item("w2", "Which animal barks? The ", ("dog", "dog and the cat"), 0,
         partial=" barks at night."),
    Item("w3", "", ("blue ", "green"), 0, partial="sky is one two three"),
    Item("w4", "apple banana cherry. The yellow one is the ", ("lemon", "plum", "mango"), 0,
         partial=" fruit."),
]
ORDINARY = [
    Item("o0", "What colour is the sky?", ("blue", "green apple"), 0),
    Item("o1", "Which animal barks? dog cat cow horse.", ("dog", "cow", "red cherry pie"), 0),
    Item("o2", "one two three", ("four five", "Rome"), 0),
]
#: long sentences for the windowed fixtures (window 8): every context is 20+ tokens
LONG = [
    Item(f"L{i}", q, c, 0, partial=p)
    for i, (q, c, p) in enumerate([
        ("The capital of France is Paris. The capital of Italy is Rome, and the sky is ",
         ("blue", "green"), " because of the light."),
        ("", ("Which animal barks? dog cat cow horse. The answer is dog",
              "Which animal barks? dog cat cow horse. The answer is cat"), " and it is loud."),
        ("", ("apple banana cherry grape lemon mango orange pear plum is",
              "0 1 2 3 4 5 6 7 8 9 10 one two three four is"), " a list of words."),
    ])
]


def lm_eval_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4 `HFLM._encode_pair` for a tokenizer whose BOS (if any) it adds itself."""
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context)
    return ctx, whole[len(ctx):]


def request_strings(item: Item, shots: str = "") -> list[tuple[str, str]]:
    """lm-eval's requests for one item under template "{question}", written out by hand."""
    if item.partial is None:
        return [(shots + item.question, " " + c) for c in item.choices]
    return [(shots + item.question + c, item.partial) for c in item.choices]


def plain_oracle(model, tok, items, shots: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(log-likelihood, is_greedy) per choice from one plain forward per (context, cont)."""
    width = max(len(it.choices) for it in items)
    ll = np.full((len(items), width), -np.inf)
    greedy = np.zeros((len(items), width), dtype=bool)
    for i, item in enumerate(items):
        for j, (context, cont) in enumerate(request_strings(item, shots)):
            ctx, cont_ids = lm_eval_pair(tok, context, cont)
            with torch.no_grad():
                logits = model(torch.tensor([ctx + cont_ids])).logits[0].float()
            logp = logits.log_softmax(-1)[len(ctx) - 1 : len(ctx) - 1 + len(cont_ids)]
            target = torch.tensor(cont_ids)
            ll[i, j] = logp.gather(1, target[:, None]).sum().item()
            greedy[i, j] = bool((logp.argmax(-1) == target).all())
    return ll, greedy


def assert_like_oracle(result, oracle, atol=1e-4):
    ll, greedy = oracle
    mask = result.mask
    np.testing.assert_allclose(result.choice_logprobs[mask], ll[mask], atol=atol, rtol=0)
    np.testing.assert_array_equal(result.greedy, greedy & mask)


def model_and_reference(path):
    model, tok = load_model(path, device="cpu", dtype="float32")
    return model, tok, load_causal_lm(path)


@pytest.fixture(scope="module")
def llama(tiny_pair):
    return model_and_reference(tiny_pair[0])


# --- tokens and packing --------------------------------------------------------------------


def test_tokens_are_lm_evals_pairs_and_the_prefix_is_only_context(llama):
    """Every branch = rest of its context + its continuation, split as lm-eval splits the pair;
    the shared part never reaches into a continuation, and may be empty."""
    _, tok, _ = llama
    scorer = Scorer(tok, PARTIAL, template=TEMPLATE)
    prefixes = []
    for item, enc in zip(PARTIAL, scorer.encoded, strict=True):
        pairs = [lm_eval_pair(tok, c, k) for c, k in request_strings(item)]
        lc = len(enc.context)
        prefixes.append(lc)
        for (ctx, cont), branch, k in zip(pairs, enc.continuations, enc.n_scored, strict=True):
            assert (*enc.context, *branch) == (*ctx, *cont)
            assert k == len(cont) and lc <= len(ctx)
        assert lc == common_prefix_len([ctx for ctx, _ in pairs])
        # the longest common prefix: the next tokens differ (or one context ended)
        assert len({ctx[lc] if lc < len(ctx) else None for ctx, _ in pairs}) > 1
    assert prefixes[1] == prefixes[3] == 0  # a blank at the sentence start, no BOS
    assert min(prefixes[0], prefixes[2], prefixes[4]) > 5
    assert len(scorer.encoded[2].continuations[0]) == scorer.encoded[2].n_scored[0]  # nested


def test_common_prefix_len():
    assert common_prefix_len([(1, 2, 3), (1, 2, 4)]) == 2
    assert common_prefix_len([(1, 2), (1, 2, 3)]) == 2
    assert common_prefix_len([(5,), (6, 7)]) == 0
    assert common_prefix_len([(1, 2, 3)] * 3) == 3


def test_encoded_refuses_targets_no_position_predicts():
    Encoded((1,), ((2, 3),), (2,))
    Encoded((), ((2, 3),), (1,))
    with pytest.raises(ValueError):
        Encoded((), ((2, 3),), (2,))  # no context: the first token cannot be a target
    with pytest.raises(ValueError):
        Encoded((1,), ((2, 3),), (3,))
    with pytest.raises(ValueError):
        Encoded((1,), ((2, 3),), (0,))


def _old_targets(encoded, first, n_choices, packed):
    """The targets pack_batch/unpack_batch built before partial scoring: every branch token."""
    rows, cols, tgt, owner = [], [], [], []
    seq = 0
    for r, enc in enumerate(encoded):
        lc, start = len(enc.context), len(enc.context)
        for j, cont in enumerate(enc.continuations):
            n = len(cont) - 1
            if packed:
                rows += [r] * len(cont)
                cols += [lc - 1, *range(start, start + n)]
                start += n
            else:
                rows += [seq] * len(cont)
                cols += range(lc - 1, lc - 1 + len(cont))
                seq += 1
            tgt += cont
            owner += [(first + r) * n_choices + j] * len(cont)
    return rows, cols, tgt, owner


@pytest.mark.parametrize("packer", [pack_batch, unpack_batch])
def test_ordinary_items_pack_exactly_as_before(llama, packer):
    """Ordinary items: the same inputs and the same targets as the packing had before `scored`
    (so their scores are bit-identical), whether `scored` is left unset or spelled out."""
    _, tok, _ = llama
    scorer = Scorer(tok, ORDINARY)
    encoded = scorer.encoded
    explicit = [Encoded(e.context, e.continuations, e.n_scored) for e in encoded]
    a, b = packer(encoded, 3, 4, 5), packer(explicit, 3, 4, 5)
    for name in ("input_ids", "position_ids", "rows", "cols", "target", "owner"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.allowed is None and b.allowed is None) or torch.equal(a.allowed, b.allowed)
    old = _old_targets(encoded, 3, 4, packer is pack_batch)
    new = (a.rows.tolist(), a.cols.tolist(), a.target.tolist(), a.owner.tolist())
    assert new == tuple(list(x) for x in old)


def test_packed_len_and_positions_follow_the_plain_sequences(llama):
    _, tok, _ = llama
    scorer = Scorer(tok, PARTIAL, template=TEMPLATE)
    for item, enc in zip(PARTIAL, scorer.encoded, strict=True):
        pairs = [lm_eval_pair(tok, c, k) for c, k in request_strings(item)]
        # the plain sequence context_j + cont_j feeds all but its last token
        assert enc.positions_needed == max(len(c) + len(k) for c, k in pairs) - 1
        assert enc.packed_len == len(enc.context) + sum(
            len(c) + len(k) - len(enc.context) - 1 for c, k in pairs
        )


# --- scores against the plain forward ------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "phi3"])
def test_partial_scores_equal_the_plain_forward(family, family_pair, tiny_pair):
    path = tiny_pair[0] if family == "llama" else family_pair(family)[1]
    model, tok, reference = model_and_reference(path)
    scorer = Scorer(tok, PARTIAL, template=TEMPLATE, batch_size=2)
    result = scorer.score(model)
    assert set(scorer.last_paths) == {"packed"}
    assert any(not e.context for e in scorer.encoded)  # the zero-length common prefix ran
    assert_like_oracle(result, plain_oracle(reference, tok, PARTIAL))


def test_scores_are_per_choice_context_not_a_shared_one(llama):
    """Teeth: scoring the continuation after the shared prompt alone gives other numbers."""
    model, tok, reference = llama
    result = Scorer(tok, PARTIAL, template=TEMPLATE).score(model)
    wrong = [Item(it.id, it.question + it.choices[0], it.choices, 0, partial=it.partial)
             for it in PARTIAL]  # every choice under choice 0's context
    ll, _ = plain_oracle(reference, tok, wrong)
    assert np.abs(result.choice_logprobs[:, 1] - ll[:, 1]).max() > 1e-2


def test_mixed_batch_of_partial_and_ordinary_items(llama):
    model, tok, reference = llama
    items = [PARTIAL[0], ORDINARY[0], PARTIAL[1], ORDINARY[1], PARTIAL[4], ORDINARY[2],
             PARTIAL[3]]
    scorer = Scorer(tok, items, template=TEMPLATE, batch_size=len(items))
    result = scorer.score(model)
    assert scorer.last_paths == ["packed"]  # one batch holds both kinds
    assert_like_oracle(result, plain_oracle(reference, tok, items))
    alone = Scorer(tok, ORDINARY, template=TEMPLATE).score(model)
    ours = result.choice_logprobs[[1, 3, 5]]
    np.testing.assert_allclose(ours[alone.mask], alone.choice_logprobs[alone.mask], atol=1e-5)
    assert result.ids == tuple(it.id for it in items)


def test_bos_tokenizer_shares_exactly_the_bos(llama, tiny_pair, tmp_path):
    """A tokenizer that prepends BOS: a blank at the sentence start shares that one token."""
    path = tmp_path / "bos"
    shutil.copytree(tiny_pair[0], path)
    tok = AutoTokenizer.from_pretrained(path)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    tok.save_pretrained(path)
    model, tok, reference = model_and_reference(path)
    scorer = Scorer(tok, PARTIAL, template=TEMPLATE)
    assert scorer.encoded[1].context == (tok.bos_token_id,)
    assert_like_oracle(scorer.score(model), plain_oracle(reference, tok, PARTIAL))


def test_partial_fewshot_shows_the_filled_sentence(llama):
    """A partial example renders as prompt + its right choice + partial (the filled sentence)."""
    model, tok, reference = llama
    shots = [Item("s0", "", ("Rome is", "Paris is"), 1, partial=" the capital of France."),
             Item("s1", "What colour is the sky?", ("green", "blue"), 1)]
    scorer = Scorer(tok, PARTIAL, template=TEMPLATE, fewshot=shots)
    text = "Paris is the capital of France.\n\nWhat colour is the sky? blue\n\n"
    assert scorer.builder.context(PARTIAL[0]) == text + PARTIAL[0].question
    assert scorer.builder.contexts(PARTIAL[1]) == [text + "Paris is", text + "Rome is"]
    assert all(len(e.context) > 5 for e in scorer.encoded)
    assert_like_oracle(scorer.score(model), plain_oracle(reference, tok, PARTIAL, shots=text))


def test_acc_norm_divides_by_the_choice_text(llama):
    """lm-eval's completion_len for a multiple-input task is len(doc_to_choice), the filling."""
    _, tok, _ = llama
    scorer = Scorer(tok, PARTIAL, template=TEMPLATE)
    for i, item in enumerate(PARTIAL):
        assert scorer.norm_lengths[i, : len(item.choices)].tolist() == [
            float(len(c)) for c in item.choices
        ]


# --- the windowed and unpacked paths ---------------------------------------------------------


@pytest.mark.parametrize("family", ["gemma3_text", "mistral"])
def test_sliding_window_partial_items(family, family_pair):
    model, tok, reference = model_and_reference(family_pair(family)[1])
    items = [*LONG, *PARTIAL]
    scorer = Scorer(tok, items, template=TEMPLATE, batch_size=3)
    assert min(len(e.context) + min(map(len, e.continuations)) for e in scorer.encoded[:3]) > 20
    assert any(not e.context for e in scorer.encoded[:3])
    result = scorer.score(model)
    assert "windowed" in scorer.last_paths
    assert_like_oracle(result, plain_oracle(reference, tok, items))


def test_model_refusing_per_type_masks_scores_partial_items_unpacked():
    """The fallback (one plain sequence per choice) on partial items, as the sliding-window
    suite reaches it: MistralModel with mixed layer_types fails on the dict of masks."""
    tok = make_tokenizer(chat=False)
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = MistralConfig(
            vocab_size=len(tok), sliding_window=WINDOW, layer_types=[FULL, SLIDING],
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=0,
            eos_token_id=0, pad_token_id=5,
        )
    model = MistralForCausalLM(cfg).eval()
    if model.get_decoder().config.layer_types is None:
        pytest.skip("this transformers drops Mistral's layer_types")
    short = [Item(f"s{i}", q, ("a", "b c"), 0) for i, q in enumerate(["sky?", "dog", "one"])]
    items = [*LONG, *short]  # the short ones fit the window: packed, to show both paths ran
    scorer = Scorer(tok, items, template=TEMPLATE, batch_size=3)
    result = scorer.score(model)
    assert scorer.last_paths == ["unpacked", "packed"]
    assert_like_oracle(result, plain_oracle(model, tok, items))


def test_unpacked_batch_equals_the_packed_one(llama):
    """unpack_batch on partial items (zero and non-zero shared prefix): the same targets, the
    same scores and greedy flags as the packed batch, owner for owner."""
    model, tok, _ = llama
    scorer = Scorer(tok, [*PARTIAL, *ORDINARY], template=TEMPLATE, batch_size=99)
    group = [scorer.encoded[i] for i in scorer.order]
    packed = pack_batch(group, 0, scorer.n_choices, scorer._pad)
    plain = unpack_batch(group, 0, scorer.n_choices, scorer._pad)
    assert torch.equal(packed.owner, plain.owner) and torch.equal(packed.target, plain.target)
    with torch.inference_mode():
        lp_a, hit_a = _target_scores(model, packed, packed.additive_mask(torch.float32))
        lp_b, hit_b = _target_scores(model, plain, None)
    torch.testing.assert_close(lp_a, lp_b, atol=1e-4, rtol=0)
    assert torch.equal(hit_a, hit_b)


# --- greedy flags ----------------------------------------------------------------------------


def greedy_items(model, tok) -> list[Item]:
    """Items some of whose choices are the model's own greedy continuation (so the flags are
    not all False): the continuation is greedy-decoded after choice 0's context."""
    out = []
    for item in [*PARTIAL, *ORDINARY]:
        context = request_strings(item)[0][0]
        ids = tok.encode(context)
        with torch.no_grad():
            for _ in range(2):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        text = tok.decode(ids[len(tok.encode(context)):])
        if item.partial is None:
            if text.startswith(" ") and text.strip() and text[1:] not in item.choices[1:]:
                out.append(Item(item.id, item.question, (text[1:], *item.choices[1:]), 0))
        else:
            out.append(Item(item.id, item.question, item.choices, 0, partial=text))
    return out


@pytest.mark.parametrize("path", ["packed", "unpacked"])
def test_greedy_flags_equal_the_argmax_oracle(llama, path, monkeypatch):
    model, tok, reference = llama
    items = [*greedy_items(reference, tok), *PARTIAL, *ORDINARY]
    if path == "unpacked":  # the architecture-independent fallback, for a model like llama
        from calmerge.eval import score

        monkeypatch.setattr(score, "attention_plan", lambda config: score.AttentionPlan(
            pack=False, why="test"))
    scorer = Scorer(tok, items, template=TEMPLATE, batch_size=4)
    result = scorer.score(model)
    assert set(scorer.last_paths) == {path}
    oracle = plain_oracle(reference, tok, items)
    assert oracle[1].any() and not oracle[1][result.mask].all()  # both kinds of flag occur
    assert_like_oracle(result, oracle)


def test_letter_mode_greedy_is_the_letter_being_the_argmax(llama):
    model, tok, _ = llama
    tmpl = "{question}\n{choices}\nAnswer:"
    result = Scorer(tok, ORDINARY, mode="letter", template=tmpl).score(model)
    builder = PromptBuilder(tok, mode="letter", template=tmpl)
    for i, item in enumerate(ORDINARY):
        ctx, conts = builder.encode(item)
        with torch.no_grad():
            top = int(model(torch.tensor([ctx])).logits[0, -1].argmax())
        assert result.greedy[i, : len(conts)].tolist() == [c[0] == top for c in conts]
        assert not result.greedy[i, len(conts):].any()


def test_lm_eval_hf_model_agrees(llama, tiny_pair):
    """lm-eval's own `hf` model on the same requests: tokens, log-likelihoods and is_greedy."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tok, reference = llama
    items = [*greedy_items(reference, tok), *PARTIAL, *ORDINARY]
    lm = HFLM(pretrained=str(tiny_pair[0]), batch_size=4, device="cpu", dtype="float32")
    scorer = Scorer(tok, items, template=TEMPLATE)
    result = scorer.score(model)
    reqs, where = [], []
    for i, item in enumerate(items):
        for j, args in enumerate(request_strings(item)):
            reqs.append(Instance("loglikelihood", {}, args, len(reqs)))
            where.append((i, j))
            if item.partial is not None:
                enc = scorer.encoded[i]
                ctx, cont = lm._encode_pair(*args)
                assert (*enc.context, *enc.continuations[j]) == (*ctx, *cont)
                assert enc.n_scored[j] == len(cont)
    ll = np.full(result.mask.shape, -np.inf)
    greedy = np.zeros(result.mask.shape, dtype=bool)
    for (i, j), (x, g) in zip(where, lm.loglikelihood(reqs, disable_tqdm=True), strict=True):
        ll[i, j], greedy[i, j] = x, g
    assert greedy.any()
    assert_like_oracle(result, (ll, greedy))


# --- results and refusals --------------------------------------------------------------------


def test_finalize_keeps_greedy_masked_and_predictions_carry_it():
    ll = np.array([[-1.0, -2.0, -np.inf]])
    mask = np.array([[True, True, False]])
    args = (["a"], ll, mask, np.array([0]), np.ones((1, 3)), "loglik")
    plain = finalize(*args)
    assert plain.greedy is None and "greedy" not in plain.predictions()[0]
    res = finalize(*args, greedy=np.array([[True, False, True]]))
    assert res.greedy.tolist() == [[True, False, False]]
    assert res.predictions()[0]["greedy"] == [True, False]


def test_letter_mode_refuses_partial_items(llama):
    _, tok, _ = llama
    with pytest.raises(DataError, match=r"item 'w1'.*--mode letter") as err:
        Scorer(tok, [ORDINARY[0], PARTIAL[1]], mode="letter")
    assert "--mode loglik" in err.value.hint and "\n" not in str(err.value)


def test_chat_format_refuses_partial_items_and_examples(llama):
    _, tok, _ = llama
    with pytest.raises(DataError, match=r"item 'w0'.*plain format") as err:
        Scorer(tok, [PARTIAL[0]], prompt_format="chat")
    assert "--prompt-format plain" in err.value.hint
    with pytest.raises(DataError, match=r"few-shot example 'w1'.*plain format"):
        Scorer(tok, ORDINARY, prompt_format="chat", fewshot=[PARTIAL[1]])
    with pytest.raises(DataError, match=r"few-shot example 'w1'.*--mode letter"):
        Scorer(tok, ORDINARY, mode="letter", fewshot=[PARTIAL[1]])


def test_shared_context_encode_refuses_partial_items(llama):
    """`encode` has one context for all choices: for a partial item that would be wrong."""
    _, tok, _ = llama
    builder = PromptBuilder(tok, template=TEMPLATE)
    with pytest.raises(ValueError, match="encode_partial"):
        builder.encode(PARTIAL[0])
    with pytest.raises(ValueError):
        builder.contexts(ORDINARY[0])
    pairs = builder.encode_partial(PARTIAL[0])
    assert encode_partial(pairs).n_scored == tuple(len(c) for _, c in pairs)
