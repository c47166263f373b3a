"""Pretraining the base model: packed word stream, warmup-stable-decay LR, a knowledge probe.

The loss of a fact-learning model sits on a plateau long before the facts are known, and the
step at which it leaves varies from seed to seed. So the stable (constant-LR) phase lasts until
a probe says well-attested facts are recalled, then the LR decays; every seed ends trained, and
`max_steps` bounds the build time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from calmerge.organism.corpus import EXAM_PROMPT
from calmerge.organism.recipe import PretrainRecipe
from calmerge.organism.tokenizer import encode_words
from calmerge.organism.world import Fact, World


def new_model(recipe: PretrainRecipe, vocab: dict[str, int], seed: int) -> Any:
    """A freshly initialised LlamaForCausalLM with tied embeddings (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from calmerge.organism.corpus import BOS, EOS, PAD

    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=recipe.hidden,
        intermediate_size=recipe.ffn,
        num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads,
        num_key_value_heads=recipe.heads,
        max_position_embeddings=recipe.seq_len,
        tie_word_embeddings=recipe.tie_embeddings,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[PAD],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, recipe.embed_init_std)
    return model


def doc_batches(docs: Iterator[str], vocab: dict[str, int], batch: int,
                max_len: int) -> Iterator[tuple[Any, Any, Any]]:
    """Endless (ids, attention mask, labels) batches of `batch` whole documents, right-padded.

    Documents are not packed into long rows: before the model has learnt where to look, its
    attention is spread evenly over what it sees, and a short document gives the entity a
    large share of it. Packed 128-token rows dilute that first signal and prolong the plateau.
    """
    import torch

    from calmerge.organism.corpus import PAD

    pad = vocab[PAD]
    while True:
        rows = [encode_words(next(docs), vocab)[:max_len] for _ in range(batch)]
        width = max(map(len, rows))
        ids = torch.full((batch, width), pad, dtype=torch.long)
        attn = torch.zeros((batch, width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            attn[i, : len(r)] = 1
        yield ids, attn, ids.masked_fill(attn == 0, -100)


def lr_factor(step: int, recipe: PretrainRecipe, decay_start: int | None) -> float:
    """Multiplier of the peak LR: linear warmup, constant, then cosine decay after the probe."""
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    if decay_start is None or step < decay_start:
        return 1.0
    span = decay_length(decay_start, recipe)
    t = min(1.0, (step - decay_start) / max(1, span))
    floor = recipe.min_lr_frac
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def decay_length(decay_start: int, recipe: PretrainRecipe) -> int:
    """How long the decay lasts: a share of the steps so far, at least `decay_min`."""
    return max(recipe.decay_min, round(recipe.decay_frac * decay_start))


@dataclass(frozen=True)
class Probe:
    """Recall of facts the corpus states often: exam prompts of one length per attribute."""

    groups: tuple[tuple[Any, Any, Any], ...]  # (prompt ids [n, L], value ids [k], truth idx [n])

    @property
    def size(self) -> int:
        return sum(len(g[2]) for g in self.groups)


def make_probe(world: World, vocab: dict[str, int], n: int, seed: int) -> Probe:
    """Up to `n` certain facts of common entities (training facts, never dev/test answers)."""
    import torch

    from calmerge.organism.corpus import BOS

    rng = random.Random(f"probe-{seed}")
    pool = [f for f in world.facts if not f.ambiguous and world.tier_of(f.entity) == "common"]
    facts = rng.sample(pool, min(n, len(pool)))
    groups = []
    for attr in world.attributes:
        mine: list[Fact] = [f for f in facts if f.attribute is attr]
        if not mine:
            continue
        prompts = [
            encode_words(f"{BOS} {EXAM_PROMPT.format(q=attr.question.format(e=f.entity))}", vocab)
            for f in mine
        ]
        values = torch.tensor([vocab[v] for v in attr.values])
        truth = torch.tensor([attr.values.index(f.truth) for f in mine])
        groups.append((torch.tensor(prompts), values, truth))
    return Probe(tuple(groups))


def probe_recall(model: Any, probe: Probe) -> float:
    """Share of probe facts whose true value is the model's top value after 'answer :'."""
    import torch

    hits = 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for prompts, values, truth in probe.groups:
            logits = model(input_ids=prompts).logits[:, -1, values]
            hits += int((logits.argmax(-1) == truth).sum())
    model.train(was_training)
    return hits / max(1, probe.size)


@dataclass
class PretrainLog:
    """What happened during pretraining, kept in the build's metadata."""

    steps: int = 0
    decay_start: int | None = None
    probes: list[tuple[int, float, float]] = field(default_factory=list)  # step, recall, loss


def pretrain(
    model: Any,
    batches: Iterator[Any],
    probe: Probe,
    recipe: PretrainRecipe,
    *,
    on_step: Callable[[int, int, float, float], None] | None = None,
) -> PretrainLog:
    """Train in place until the probe passes and the decay that follows it is done.

    `on_step(step, planned_total, loss, last_recall)` drives a progress bar; the planned total
    shrinks from `max_steps` to the real end once the decay start is known.
    """
    import torch

    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay
    )
    log = PretrainLog()
    model.train()
    recall, ema = 0.0, None
    end = recipe.max_steps
    step = 0
    while step < end:
        if log.decay_start is None and step >= recipe.max_steps - recipe.decay_min:
            log.decay_start = step  # probe never passed: still end on a decayed LR
            end = min(recipe.max_steps, step + decay_length(step, recipe))
        for group in opt.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, recipe, log.decay_start)
        ids, attn, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        value = float(loss.detach())
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        if step % recipe.probe_every == 0 or step == end:
            recall = probe_recall(model, probe)
            log.probes.append((step, round(recall, 4), round(ema, 4)))
            if log.decay_start is None and recall >= recipe.probe_threshold:
                log.decay_start = step
                end = min(recipe.max_steps, step + decay_length(step, recipe))
        if on_step is not None:
            on_step(step, end, ema, recall)
    log.steps = step
    return log
