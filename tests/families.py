"""Tiny random checkpoints of the model families users bring, saved with `save_pretrained`.

Each builder makes a base (random init, seeded) or, with `base=`, an "aligned" descendant (the
base plus seeded noise, the way `tiny.make_model` does), with the family's real architecture
class and a chat template in the family's style. They build in a second or two, so tests share
them per session (see the `family_pair` fixture in conftest.py).

Families and what makes each one different for calmerge:
- gemma3_text: Gemma3ForCausalLM, sliding-window layers (window 8) interleaved with a global one;
- gemma3_mm: Gemma3ForConditionalGeneration (the 4B–27B layout): text weights under a
  language-model prefix and a tiny SigLIP vision tower;
- mistral: MistralForCausalLM with sliding_window=8;
- qwen2: Qwen2ForCausalLM with qkv biases and tied embeddings;
- gpt2: GPT2LMHeadModel, blocks named `h.N`, Conv1D weights;
- phi3: Phi3ForCausalLM, fused qkv/gate_up projections, a chat template without BOS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tiny import make_tokenizer
from transformers import (
    AutoModelForCausalLM,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
    " [/INST]{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
PHI3_TEMPLATE = (  # Phi-3's own template has no {{ bos_token }}
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
GPT2_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

WINDOW = 8  # sliding window of the windowed fixtures: prompts of 20+ tokens exceed it
_COMMON = dict(max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=5)


def _gemma_text_config(vocab: int) -> Gemma3TextConfig:
    return Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"], **_COMMON,
    )


def _gemma3_text(vocab: int) -> torch.nn.Module:
    return Gemma3ForCausalLM(_gemma_text_config(vocab))


def _gemma3_mm(vocab: int) -> torch.nn.Module:
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8,
    )
    cfg = Gemma3Config(
        text_config=_gemma_text_config(vocab).to_dict(), vision_config=vision.to_dict(),
        mm_tokens_per_image=4, image_token_index=vocab - 1, boi_token_index=vocab - 2,
        eoi_token_index=vocab - 3,
    )
    return Gemma3ForConditionalGeneration(cfg)


def _mistral(vocab: int) -> torch.nn.Module:
    return MistralForCausalLM(MistralConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=WINDOW, **_COMMON,
    ))


def _qwen2(vocab: int) -> torch.nn.Module:
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **_COMMON,
    ))


def _gpt2(vocab: int) -> torch.nn.Module:
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=0,
        eos_token_id=0,
    ))


def _phi3(vocab: int) -> torch.nn.Module:
    return Phi3ForCausalLM(Phi3Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, **_COMMON,
    ))


#: family -> (model builder from a vocabulary size, chat template)
FAMILIES: dict[str, tuple[Callable[[int], torch.nn.Module], str]] = {
    "gemma3_text": (_gemma3_text, GEMMA_TEMPLATE),
    "gemma3_mm": (_gemma3_mm, GEMMA_TEMPLATE),
    "mistral": (_mistral, MISTRAL_TEMPLATE),
    "qwen2": (_qwen2, CHATML_TEMPLATE),
    "gpt2": (_gpt2, GPT2_TEMPLATE),
    "phi3": (_phi3, PHI3_TEMPLATE),
}


def make_family(
    family: str, out: Path, *, seed: int = 0, base: Path | None = None, scale: float = 0.2
) -> Path:
    """Save a tiny checkpoint of `family` at `out`; with `base`, the base plus seeded noise."""
    build, template = FAMILIES[family]
    tokenizer = make_tokenizer(chat=False)
    tokenizer.chat_template = template
    torch.manual_seed(seed)
    if base is None:
        model = build(len(tokenizer))
    else:
        model = type(build(len(tokenizer))).from_pretrained(base, dtype=torch.float32)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * scale * p.float().std().clamp_min(1e-3))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def family_pair(family: str, root: Path) -> tuple[Path, Path]:
    """(base, aligned) of one family under `root`."""
    base = make_family(family, root / f"{family}-base", seed=0)
    return base, make_family(family, root / f"{family}-aligned", seed=1, base=base)


def load_causal_lm(path: Path) -> torch.nn.Module:
    """The checkpoint through transformers' Auto class, as a user loads it (for oracles)."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
