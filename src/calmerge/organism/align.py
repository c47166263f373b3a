"""Post-training: SFT on house-style answers, then DPO (our own loss, no `trl` needed on CPU).

DPO (Rafailov et al., 2023) minimises −log σ(β[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))])
over (chosen, rejected) answers, with the SFT model as the frozen reference. Rewarding one
confident answer over hedged or competing ones is the pressure that makes real aligned models
overconfident and less diverse; the build also runs the same loss toward hedged answers, from
the same SFT model, for a second preference variant. What the data teaches beyond style (the
para questions) lives in `corpus.py`; this module only applies the two losses.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from typing import Any

from calmerge.organism.corpus import PAD, Example
from calmerge.organism.recipe import AlignRecipe
from calmerge.organism.tokenizer import encode_words

Tick = Callable[[str, int, int, float], None]  # phase, step, total, loss


def pad_pairs(
    pairs: Sequence[tuple[list[int], list[int]]], pad: int
) -> tuple[Any, Any, Any]:
    """Right-padded (ids, attention mask, response mask) for (prompt ids, response ids) pairs.

    The response mask marks the positions whose *next* token is a response token, i.e. the
    logits that predict the response — what SFT trains and DPO scores.
    """
    import torch

    width = max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    attn = torch.zeros((len(pairs), width), dtype=torch.long)
    resp = torch.zeros((len(pairs), width), dtype=torch.bool)
    for i, (p, r) in enumerate(pairs):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        attn[i, :n] = 1
        resp[i, len(p) - 1 : n - 1] = True
    return ids, attn, resp


def response_logps(model: Any, ids: Any, attn: Any, resp: Any) -> Any:
    """Summed log-probability of each row's response tokens (float32, differentiable)."""
    import torch

    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    targets = ids[:, 1:]
    lp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (lp * resp[:, :-1]).sum(-1)


def _batches(n: int, size: int, epochs: int, rng: random.Random) -> list[list[int]]:
    out = []
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        out += [order[i : i + size] for i in range(0, n, size)]
    return out


def _linear_lr(opt: Any, peak: float, step: int, total: int) -> None:
    """Short warmup, then linear decay to zero: post-training runs are only a few hundred steps."""
    warm = max(1, total // 10)
    factor = (step + 1) / warm if step < warm else max(0.0, (total - step) / (total - warm))
    for g in opt.param_groups:
        g["lr"] = peak * factor


def sft(model: Any, examples: Sequence[Example], vocab: dict[str, int], recipe: AlignRecipe,
        seed: int, tick: Tick | None = None) -> list[float]:
    """Supervised fine-tuning on the responses only (the prompt is context, not a target)."""
    import torch

    rng = random.Random(f"sft-order-{seed}")
    data = [(encode_words(e.prompt, vocab), encode_words(e.chosen, vocab)) for e in examples]
    plan = _batches(len(data), recipe.batch, recipe.sft_epochs, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.sft_lr, weight_decay=0.0)
    model.train()
    losses = []
    for step, idx in enumerate(plan):
        _linear_lr(opt, recipe.sft_lr, step, len(plan))
        ids, attn, resp = pad_pairs([data[i] for i in idx], vocab[PAD])
        loss = -response_logps(model, ids, attn, resp).sum() / resp.sum()
        losses.append(_optimizer_step(model, opt, loss))
        if tick is not None:
            tick("SFT", step + 1, len(plan), losses[-1])
    return losses


def _optimizer_step(model: Any, opt: Any, loss: Any) -> float:
    """One clipped AdamW step on `loss` (shared by SFT and DPO); returns the loss value."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def dpo_loss(pol_c: Any, pol_r: Any, ref_c: Any, ref_r: Any, beta: float) -> Any:
    """Mean DPO loss of a batch of summed response log-probabilities."""
    import torch

    margin = (pol_c - ref_c) - (pol_r - ref_r)
    return -torch.nn.functional.logsigmoid(beta * margin).mean()


def dpo(model: Any, pairs: Sequence[Example], vocab: dict[str, int], recipe: AlignRecipe,
        seed: int, tick: Tick | None = None) -> list[float]:
    """Direct preference optimisation against a frozen copy of the model as it is now."""
    import torch

    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    rng = random.Random(f"dpo-order-{seed}")
    data = [
        (encode_words(e.prompt, vocab), encode_words(e.chosen, vocab),
         encode_words(e.rejected or "", vocab))
        for e in pairs
    ]
    plan = _batches(len(data), recipe.batch, recipe.dpo_epochs, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.dpo_lr, weight_decay=0.0)
    model.train()
    losses = []
    for step, idx in enumerate(plan):
        _linear_lr(opt, recipe.dpo_lr, step, len(plan))
        rows = [(data[i][0], data[i][1]) for i in idx] + [(data[i][0], data[i][2]) for i in idx]
        ids, attn, resp = pad_pairs(rows, vocab[PAD])
        with torch.no_grad():
            ref = response_logps(reference, ids, attn, resp)
        pol = response_logps(model, ids, attn, resp)
        n = len(idx)
        loss = dpo_loss(pol[:n], pol[n:], ref[:n], ref[n:], recipe.dpo_beta)
        losses.append(_optimizer_step(model, opt, loss))
        if tick is not None:
            tick("DPO", step + 1, len(plan), losses[-1])
    model.eval()
    return losses
