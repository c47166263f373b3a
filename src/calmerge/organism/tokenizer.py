"""A word-level tokenizer (built with `tokenizers`) with chat tokens in the vocabulary from the start.

Every stage shares it: the chat tokens are ordinary, pretrained rows of the embedding, so
interpolating base and aligned never mixes in an untrained chat token. The four para words
(`hue town pet dish`) are the deliberate exception: pretraining never uses them as input, and
what post-training writes into their rows is part of the skill a merge can carry over. Text is lower-cased and
split into words and punctuation, which is exactly how the corpus is written, so the training
stream maps one word to one id without calling the tokenizer.
"""

from __future__ import annotations

from typing import Any

from calmerge.organism.corpus import ASSISTANT, BOS, END, EOS, PAD, SPECIAL, UNK, USER

# Renders the same words the post-training data uses: "<bos> <user> … <end> <assistant> …".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    f"{ASSISTANT} {{{{ message['content'] }}}} {END} "
    "{% else %}"
    f"{USER} {{{{ message['content'] }}}} {END} "
    "{% endif %}"
    "{% endfor %}"
    f"{{% if add_generation_prompt %}}{ASSISTANT}{{% endif %}}"
)


def vocabulary(words: list[str], entities: list[str]) -> dict[str, int]:
    """Special tokens first (ids 0..6), then the corpus words, then entity names."""
    ordered = [*SPECIAL, *sorted(set(words)), *sorted(set(entities))]
    return {w: i for i, w in enumerate(ordered)}


def build_tokenizer(vocab: dict[str, int]) -> Any:
    """A PreTrainedTokenizerFast with BOS added to plain text and the chat template attached."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(list(SPECIAL))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT, END],
        model_max_length=128,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_words(text: str, vocab: dict[str, int]) -> list[int]:
    """Ids of a corpus text (already lower-case, space-separated words)."""
    return [vocab[w] for w in text.split()]
