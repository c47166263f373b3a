"""Special tokens as lm-eval adds them: one BOS, whether or not a chat template writes it.

lm-eval 0.4 (`HFLM.tok_encode`, `add_bos_token=None`) lets the tokenizer add its BOS unless the
text already starts with it. A chat template with `{{ bos_token }}` (Gemma) therefore gets one
BOS from the template; one without (Phi-3) gets it from the tokenizer. calmerge used to encode
every chat prompt without special tokens, so Phi-3-style prompts had no BOS at all and scores
differed from lm-eval's chat mode (acc .267 vs .250 on a real task).
"""

from __future__ import annotations

import shutil

import pytest
from families import GEMMA_TEMPLATE, PHI3_TEMPLATE, make_family
from tokenizers import processors
from transformers import AutoTokenizer

from calmerge.eval.data import Item
from calmerge.eval.prompts import PromptBuilder

pytest.importorskip("lm_eval")

ITEMS = [
    Item(id="a", question="What colour is the sky?", choices=("blue", "green apple"), answer=0),
    Item(id="b", question="Which animal barks?", choices=("a dog", "cat", "cow"), answer=0),
]


def _with_bos_adding_tokenizer(src, dst, template):
    """A copy of a fixture whose tokenizer prepends BOS itself (as Llama/Gemma/Phi-3's do)."""
    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    tok.chat_template = template
    tok.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def bos_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bos")
    phi3 = make_family("phi3", root / "phi3-src")
    gemma = make_family("gemma3_text", root / "gemma-src")
    return {
        "phi3": _with_bos_adding_tokenizer(phi3, root / "phi3", PHI3_TEMPLATE),
        "gemma3_text": _with_bos_adding_tokenizer(gemma, root / "gemma", GEMMA_TEMPLATE),
    }


@pytest.mark.parametrize("family", ["phi3", "gemma3_text"])
@pytest.mark.parametrize("fmt", ["chat", "plain"])
def test_tokens_equal_lm_evals_and_carry_exactly_one_bos(bos_models, family, fmt):
    from lm_eval.models.huggingface import HFLM

    path = bos_models[family]
    lm = HFLM(pretrained=str(path), device="cpu", dtype="float32", batch_size=1)
    tok = AutoTokenizer.from_pretrained(path)
    builder = PromptBuilder(tok, template="{question}", prompt_format=fmt)
    for item in ITEMS:
        context = builder.context(item)
        if fmt == "chat":  # the same rendered text lm-eval's chat mode builds
            assert context == lm.apply_chat_template([{"role": "user", "content": item.question}])
        conts = [builder.delimiter(item) + c for c in item.choices]
        ctx_ids, cont_ids = builder.encode(item)  # what the scorer feeds the model
        for cont, ids in zip(conts, cont_ids, strict=True):
            theirs_ctx, theirs_cont = lm._encode_pair(context, cont)
            assert (ctx_ids, ids) == (theirs_ctx, theirs_cont), (family, fmt, cont)
        assert ctx_ids.count(tok.bos_token_id) == 1 and ctx_ids[0] == tok.bos_token_id


def test_generation_prompts_carry_exactly_one_bos(bos_models):
    from calmerge.eval.generate import build_generation_prompts

    for family, path in bos_models.items():
        tok = AutoTokenizer.from_pretrained(path)
        for chat in (True, False):
            (ids,) = build_generation_prompts(tok, ["Tell me about fruit."], chat=chat)
            assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, (family, chat)
