"""Multiple-choice scoring from a shared-prefix KV cache: each context once, each branch from it.

Why a second form next to `eval.packing`: the packed form hands the model a dense (B, 1, T, T)
block mask, quadratic in memory and a bar to fused attention kernels on long prompts, and it
must re-create every local-attention pattern (sliding windows) itself. Here the model builds all
its own masks — causal, sliding (Gemma-2/3, Mistral, Phi-3), padding — exactly as in lm-eval's
plain sequence context + choice, and the context is still computed only once:

1. The group's contexts, left-padded, run through `model.get_decoder()` with `use_cache=True`
   (2-D padding mask, positions 0…len−1 on the real tokens). Left padding puts every context's
   last real token in the last column, so (a) that column's hidden state predicts the first
   token of each of its branches, and (b) a sliding layer's cache, which keeps the last
   window − 1 columns, keeps the context's last real tokens. The window is counted in cache
   columns: between two real tokens of one row the column distance equals the position distance
   (the padding sits before both), so it is the plain sequence's window.
2. The cache is expanded to one row per branch by `Cache.batch_select_indices` with the owning
   context's row index repeated (items may have different numbers of choices: a gather, not a
   `repeat_interleave`). It stays the model's own cache object, so a sliding layer keeps its
   `cumulative_length` and the masks the model derives from `get_mask_sizes` stay right.
3. The branches (each without its last token, which is only a target; right-padded) run with
   the expanded cache, attention mask [context mask | branch mask] and positions continuing from
   their context's length. Branches of one token (letter mode) need no second pass: their only
   target is read in step 1. With an empty context (partial items whose choices differ from the
   first token) the context row is all padding, which the branch never attends to — it is its
   plain sequence alone; a group with only empty contexts runs its branches without a cache.

Logits are taken only at target positions (as `score._target_scores`: float32, the config's
`final_logit_softcapping` and float `logit_scale`), then log-softmax, gather and argmax.

Padding: the left padding's own queries see no key at all; eager and SDPA attention give them
finite outputs (checked on the CPU; batched generation with left padding relies on the same on
GPUs), which nothing reads or attends to.

Cost: two forwards per group instead of one, and the expanded cache holds every branch's copy of
its context's keys/values (sliding layers only window − 1 columns) — memory grows with choices ×
the group's longest context, so groups should be sized in those tokens. Measured on one CPU
thread (tiny Llama, one group of 32 questions × 4 choices of 3–8 tokens, 400-token contexts):
0.13 s against 0.15 s packed and 0.45 s for one plain sequence per choice; with hidden size 256
and 4 layers 2.1 s against 1.85 s packed. The point is GPUs and long prompts, where the dense
mask hurts.

Not reproduced (→ `NotImplementedError`, the caller falls back): a decoder that returns no
`Cache` object (legacy tuples, custom models), caches without batch selection, and cache layers
other than plain full/sliding attention — recurrent/linear states (left padding would run
through them), chunked attention (chunks counted in padded columns), KV-shared layers: none of
these were checked against the plain sequence.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from calmerge.eval.packing import Encoded

if TYPE_CHECKING:
    import torch


def prefix_scores(
    model: Any, group: Sequence[Encoded], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 log p(target), target is the argmax) for every target of `group`.

    The order is `pack_batch(group, …)`'s: question by question, choice by choice, token by
    token, so the packed batch's `owner` scatters these as it scatters the packed scores.
    """
    import torch

    from calmerge.eval.loading import input_device

    device = input_device(model)
    decoder = model.get_decoder()
    b = len(group)
    width = max(len(e.context) for e in group)
    ctx_mask = torch.zeros((b, width), dtype=torch.long)
    pieces, cache = [], None
    if width:
        ids = torch.full((b, width), pad_id, dtype=torch.long)
        pos = torch.zeros((b, width), dtype=torch.long)
        for r, enc in enumerate(group):
            lc = len(enc.context)
            if lc:
                ids[r, width - lc :] = torch.tensor(enc.context)
                pos[r, width - lc :] = torch.arange(lc)
                ctx_mask[r, width - lc :] = 1
        out = _forward(decoder, ids, ctx_mask, pos, device, first=True)
        cache = _cache_of(decoder, out)
        pieces.append(_hidden(out)[:, -1])  # row r: predicts the first token of r's branches

    # branches that need the second pass: those with tokens besides their last one
    branch_of: dict[tuple[int, int], int] = {}
    owners, bodies = [], []
    for r, enc in enumerate(group):
        for j, cont in enumerate(enc.continuations):
            if len(cont) > 1:
                branch_of[r, j] = len(bodies)
                owners.append(r)
                bodies.append(cont[:-1])
    span = max((len(x) for x in bodies), default=0)
    if bodies:
        n = len(bodies)
        ids = torch.full((n, span), pad_id, dtype=torch.long)
        pos = torch.zeros((n, span), dtype=torch.long)
        mask = torch.zeros((n, span), dtype=torch.long)
        for i, (r, body) in enumerate(zip(owners, bodies, strict=True)):
            lc = len(group[r].context)
            ids[i, : len(body)] = torch.tensor(body)
            pos[i, : len(body)] = torch.arange(lc, lc + len(body))
            mask[i, : len(body)] = 1
        rows = torch.tensor(owners)
        if cache is not None:
            cache.batch_select_indices(rows.to(device))
            mask = torch.cat([ctx_mask[rows], mask], dim=1)
        out = _forward(decoder, ids, mask, pos, device, first=False, cache=cache)
        pieces.append(_hidden(out).reshape(n * span, -1))

    offset = b if width else 0  # where the branch states start in the stacked hidden states
    picks, targets = [], []
    for r, enc in enumerate(group):
        for j, (cont, k) in enumerate(zip(enc.continuations, enc.n_scored, strict=True)):
            for i in range(len(cont) - k, len(cont)):  # token i is predicted by branch token i−1
                picks.append(r if i == 0 else offset + branch_of[r, j] * span + i - 1)
            targets += cont[len(cont) - k :]
    hidden = torch.cat(pieces)
    picked = hidden[torch.tensor(picks, device=device)]
    target = torch.tensor(targets, device=device)
    logp = torch.log_softmax(head_logits(model, picked), dim=-1)
    return logp.gather(1, target[:, None])[:, 0], logp.argmax(dim=-1) == target


def _forward(
    decoder: Any, ids: Any, mask: Any, pos: Any, device: Any, *, first: bool, cache: Any = None
) -> Any:
    """One decoder forward; `first` (the contexts) asks for a cache, `cache` (the branches) is
    passed under the name this transformers uses for it."""
    kwargs: dict[str, Any] = {"use_cache": first or cache is not None}
    if cache is not None:
        params = inspect.signature(decoder.forward).parameters
        kwargs["cache" if "cache" in params else "past_key_values"] = cache
    return decoder(
        input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
        **kwargs,
    )


def _hidden(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def _cache_of(decoder: Any, out: Any) -> Any:
    """The forward's KV cache, if it is one this form can expand and was checked with."""
    name = type(decoder).__name__
    try:  # the layered cache API of recent transformers (5.x)
        from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer
    except ImportError as err:
        raise NotImplementedError(f"{name}: this transformers has no layered KV cache") from err
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if not isinstance(cache, Cache) or not hasattr(cache, "batch_select_indices"):
        raise NotImplementedError(f"{name} returns no expandable KV cache ({type(cache).__name__})")
    types = set(getattr(decoder.config, "layer_types", None) or ())
    if getattr(decoder.config, "attention_chunk_size", None) or "chunked_attention" in types:
        raise NotImplementedError(f"{name}: chunked attention is not scored from a shared cache")
    plain = (DynamicLayer, DynamicSlidingWindowLayer)
    odd = sorted({type(x).__name__ for x in getattr(cache, "layers", ()) if type(x) not in plain})
    if odd:
        raise NotImplementedError(f"{name}: cache layers {', '.join(odd)} are not scored from a "
                                  "shared cache")
    return cache


def head_logits(model: Any, picked: Any) -> Any:
    """float32 logits of the picked hidden states, capped and scaled as the model's head does
    (Gemma-2's `final_logit_softcapping`, Cohere's `logit_scale`; a multimodal model keeps them
    in its text config). Both scoring forms read logits here, so they cannot differ in it."""
    import torch

    logits = model.get_output_embeddings()(picked).float()
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(text, "logit_scale", None)
    if isinstance(scale, float):
        logits = logits * scale
    return logits
