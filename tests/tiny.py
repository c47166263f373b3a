"""Tiny real Hugging Face checkpoints for tests: the real loading code runs on them.

`make_tokenizer` trains a byte-level BPE on a fixed text (deterministic, no network) so any
string encodes without unknown tokens; `make_model` saves a random Llama/Qwen2 with
`save_pretrained`. An "aligned" model is a base plus a seeded perturbation, optionally with
extra vocabulary rows, the way chat fine-tunes add special tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Question: What colour is the sky? A. blue B. green C. red D. yellow Answer: A",
    "Which animal barks? dog cat cow horse. The answer is dog.",
    "apple banana cherry grape lemon mango orange pear plum",
    "0 1 2 3 4 5 6 7 8 9 10 one two three four five six seven eight nine ten",
]
SPECIALS = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<pad>"]


def make_tokenizer(vocab_size: int = 320, chat: bool = True) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer; `chat` adds a chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def model_config(arch: str = "llama", vocab_size: int = 320, tie: bool = False, layers: int = 2):
    kw = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=5,
    )
    return LlamaConfig(**kw) if arch == "llama" else Qwen2Config(**kw)


def make_model(
    out: Path,
    *,
    seed: int = 0,
    arch: str = "llama",
    base: Path | None = None,
    scale: float = 0.05,
    extra_vocab: int = 0,
    dtype: torch.dtype = torch.float32,
    tie: bool = False,
    chat: bool = True,
    layers: int = 2,
    max_shard_size: str | None = None,
) -> Path:
    """Save a tiny causal LM at `out`. With `base`, start from it and add seeded noise."""
    tokenizer = make_tokenizer(chat=chat)
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    cls = LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM
    if base is not None:
        model = cls.from_pretrained(base, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.float().std().clamp_min(1e-3))
    else:
        model = cls(model_config(arch, vocab_size=vocab, tie=tie, layers=layers))
    if extra_vocab:
        added = [f"<|extra{i}|>" for i in range(extra_vocab)]
        tokenizer.add_special_tokens({"additional_special_tokens": added})
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    tokenizer.save_pretrained(out)
    return out
