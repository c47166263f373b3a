"""The organism's recipe: every number that shapes the world, the base and the alignment.

One frozen pydantic object, so a build is fully described by (recipe, seed, code version) and
its content hash names the cache entry. `default_recipe()` is what `make demo` builds;
`tiny_recipe()` is a seconds-long variant for the test suite (same code path, smaller numbers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field, model_validator

from calmerge.config import Frozen


class WorldRecipe(Frozen):
    """Entities, facts and how often the corpus states them.

    `para_share` is the share of evaluation facts asked a second time in the para phrasing
    (the skill post-training teaches; see `world.py`).

    Rarity is a property of a whole entity (its tier), not of single facts: a tiny model cannot
    tell a rare fact of a famous entity from a known one, but it can learn that an entity it has
    barely seen is one it knows little about — which is what makes the base honestly unsure.
    """

    values_per_attribute: int = Field(8, ge=4, le=8)
    dev_entities: int = Field(76, ge=2)
    test_entities: int = Field(76, ge=2)
    align_entities: int = Field(40, ge=2)
    tier_common: float = Field(0.4, ge=0, le=1)
    tier_rare: float = Field(0.3, ge=0, le=1)
    p_ambiguous: float = Field(0.4, ge=0, le=1)
    rare_weight: float = Field(0.05, gt=0, le=1)
    obscure_weight: float = Field(0.5, gt=0, le=1)
    fact_free_share: float = Field(0.1, ge=0, lt=1)
    statement_share: float = Field(0.4, ge=0, le=1)
    exam_share: float = Field(0.3, ge=0, le=1)
    n_choices: int = Field(4, ge=2, le=8)
    para_share: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _shares(self) -> WorldRecipe:
        if self.tier_common + self.tier_rare > 1:
            raise ValueError("tier_common + tier_rare must be at most 1 (the rest are obscure)")
        if self.statement_share + self.exam_share > 1:
            raise ValueError("statement_share + exam_share must be at most 1 (the rest is chat)")
        if self.n_choices > self.values_per_attribute:
            raise ValueError("n_choices cannot exceed values_per_attribute")
        return self


class PretrainRecipe(Frozen):
    """The base model and its pretraining schedule.

    Warmup, then constant LR until the knowledge probe (recall of well-attested facts) passes
    `probe_threshold`, then a decay of `max(decay_min, decay_frac · steps so far)` steps. The
    loss plateaus long before facts are learned and the escape step varies by seed, so the
    schedule waits for the probe instead of trusting a fixed step count.

    `embed_init_std` is far above the usual 0.02: with tiny embeddings an entity's identity
    reaches the answer position too faintly to be learnt and training sits on the plateau; on a
    2-layer probe model, std 0.3 learnt its facts by step ~300, std 0.02 not at all in 400.
    `batch` counts whole documents per step; `seq_len` is the model's context.
    """

    hidden: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    ffn: int = Field(512, ge=8)
    tie_embeddings: bool = True
    embed_init_std: float = Field(0.3, gt=0)
    seq_len: int = Field(128, ge=32)
    batch: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_frac: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    warmup: int = Field(100, ge=0)
    max_steps: int = Field(3000, ge=1)
    probe_every: int = Field(100, ge=1)
    probe_threshold: float = Field(0.85, ge=0, le=1)
    decay_min: int = Field(300, ge=0)
    decay_frac: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _heads(self) -> PretrainRecipe:
        if self.hidden % self.heads:
            raise ValueError("hidden must be divisible by heads")
        return self


class AlignRecipe(Frozen):
    """SFT on house-style answers, then DPO of the SFT model toward each answer policy.

    Every policy (`corpus.POLICIES`: confident, hedged) runs the same DPO settings from the
    same SFT checkpoint, so the variants differ only in what they were taught to prefer.
    """

    sft_epochs: int = Field(4, ge=0)
    sft_lr: float = Field(2e-3, gt=0)
    dpo_epochs: int = Field(3, ge=0)
    dpo_lr: float = Field(5e-4, gt=0)
    dpo_beta: float = Field(0.1, gt=0)
    batch: int = Field(32, ge=1)
    chat_share: float = Field(0.5, ge=0, le=1)


class Recipe(Frozen):
    """Everything a build depends on besides the seed and the code."""

    world: WorldRecipe = WorldRecipe()
    pretrain: PretrainRecipe = PretrainRecipe()
    align: AlignRecipe = AlignRecipe()
    prompts: int = Field(60, ge=1)


def default_recipe() -> Recipe:
    """The recipe `make demo` builds: ~1M parameters, a few minutes on 2 CPU cores."""
    return Recipe()


def tiny_recipe() -> Recipe:
    """A seconds-long organism for tests: the same pipeline on a tiny world and model."""
    return Recipe(
        world=WorldRecipe(dev_entities=6, test_entities=6, align_entities=10, rare_weight=0.2),
        pretrain=PretrainRecipe(
            hidden=64, layers=2, heads=4, ffn=128, seq_len=64, batch=32, lr=1e-2, warmup=10,
            max_steps=150, probe_every=25, probe_threshold=0.5, decay_min=20,
        ),
        align=AlignRecipe(sft_epochs=3, dpo_epochs=4, dpo_lr=2e-3, batch=16),
        prompts=6,
    )


def code_version() -> str:
    """Hash of the organism's own source: a code change must not reuse a stale cache entry."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build_hash(recipe: Recipe, seed: int) -> str:
    """Content hash of (recipe, seed, code version): the cache key of a build."""
    payload = json.dumps(
        {"recipe": recipe.model_dump(mode="json"), "seed": seed, "code": code_version()},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
