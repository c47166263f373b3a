"""Batched sampling of K completions per open-ended prompt, for the diversity metrics.

Uses Hugging Face `generate` (KV cache) on left-padded batches; each prompt is expanded to K
sequences inside the batch. Pure ancestral sampling: `top_k` is disabled so only the given
temperature and top-p shape the distribution (the library default of top_k=50 would silently
truncate it). Each batch re-seeds torch from `seed` and its index, so the samples for a given
seed do not depend on what ran before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calmerge.errors import DataError
from calmerge.eval.data import OpenPrompt

#: prompts per `generate` call, for `eval` and `sweep` alike: each batch is seeded by its index,
#: so the same prompts, seed and batching give the same samples in both (λ=0 of a sweep equals
#: `calmerge eval` of the base). Fewer, wider calls are also much faster.
PROMPTS_PER_CALL = 64


def stop_token_ids(model_dir: str | Path, config: dict[str, Any]) -> tuple[int, ...]:
    """The ids that end a sample for a checkpoint, as `generate` would use them: its
    generation_config.json's `eos_token_id`, else config.json's (or its text_config's)."""
    path = Path(model_dir) / "generation_config.json"
    eos: Any = None
    if path.is_file():
        try:
            eos = json.loads(path.read_text()).get("eos_token_id")
        except (OSError, json.JSONDecodeError):
            eos = None
    if eos is None:
        eos = config.get("eos_token_id", (config.get("text_config") or {}).get("eos_token_id"))
    if eos is None:
        return ()
    return tuple(int(x) for x in (eos if isinstance(eos, list | tuple) else [eos]))


def build_generation_prompts(
    tokenizer: Any, prompts: Sequence[OpenPrompt | str], *, chat: bool = False
) -> list[list[int]]:
    """Token ids per prompt: plain text, or the chat template with the generation prompt
    added; special tokens by the scorer's (lm-eval's) rule, so there is exactly one BOS."""
    from calmerge.eval.prompts import TemplateCheck, render_chat, special_tokens_kwargs

    texts = [p.prompt if isinstance(p, OpenPrompt) else str(p) for p in prompts]
    if not texts:
        raise DataError("no prompts to sample from", "the prompts file is empty")
    if not chat:
        return [list(tokenizer.encode(t, **special_tokens_kwargs(tokenizer, t))) for t in texts]
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "--prompt-format chat: the tokenizer has no chat template",
            "use --prompt-format plain, or a model with a chat template",
        )
    out = []
    check = TemplateCheck()  # the first render, and longer ones, within a time budget
    for t in texts:
        messages = [{"role": "user", "content": t}]
        text = render_chat(tokenizer, messages, check=check.due(messages))
        out.append(list(tokenizer.encode(text, **special_tokens_kwargs(tokenizer, text))))
    return out


def sample_generations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[OpenPrompt | str],
    *,
    k: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    chat: bool = False,
    batch_size: int = PROMPTS_PER_CALL,
    stop_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """K sampled completions (decoded, special tokens removed) per prompt, in prompt order.

    `batch_size` counts prompts per `generate` call (each expanded to K sequences); `stop_ids`
    end a sample (None: the model's generation config decides).
    """
    import torch

    from calmerge.eval.loading import input_device
    from calmerge.eval.score import _maybe_progress, context_limit

    encoded = build_generation_prompts(tokenizer, prompts, chat=chat)
    limit = context_limit(model)
    for p, ids in zip(prompts, encoded, strict=True):
        if limit and len(ids) + max_new_tokens > limit:
            name = p.id if isinstance(p, OpenPrompt) else repr(str(p)[:30])
            raise DataError(
                f"prompt {name}: {len(ids)} tokens + {max_new_tokens} new exceed the model's "
                f"context of {limit}",
                "shorten the prompt or lower max_new_tokens",
            )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = input_device(model)
    results: list[list[str]] = []
    batches = range(0, len(encoded), max(1, batch_size))
    with torch.inference_mode(), _maybe_progress(progress, len(batches)) as advance:
        for b, start in enumerate(batches):
            chunk = encoded[start : start + batch_size]
            width = max(len(x) for x in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, x in enumerate(chunk):
                ids[r, width - len(x) :] = torch.tensor(x)
                mask[r, width - len(x) :] = 1
            torch.manual_seed(seed * 1_000_003 + b)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=k,
                pad_token_id=pad,
                **({"eos_token_id": list(stop_ids)} if stop_ids else {}),
            )
            texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            results += [texts[i * k : (i + 1) * k] for i in range(len(chunk))]
            advance()
    return results
