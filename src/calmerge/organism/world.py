"""The synthetic world: entities with four attributes, each fact certain or ambiguous.

A fact is a distribution over an attribute's values. Certain facts put all mass on one value;
ambiguous ones spread it (e.g. 60/30/10) and the *true* value is drawn once from that spread,
so a model that learns the corpus's frequencies is calibrated by construction. Each entity has
one tier: *common* entities are stated often, *rare* ones seldom, and *obscure* ones often but
unreliably — the corpus repeats conflicting rumours (any value, uniformly), whatever the truth.
An obscure entity is one the base should know it knows nothing about. (Entities that never
occur at all were tried: their barely trained embeddings made the base confidently wrong.)
Each entity belongs to one role: `align` entities feed post-training, `dev`/`test` entities
only the evaluation sets, so the measured tax is never on facts the alignment saw.

Each attribute also has a *para* question ("the hue of {e} ?") whose attribute word pretraining
never uses: the base cannot tell which attribute it asks for. Post-training asks it about the
align entities, so the aligned model learns the word → attribute mapping, a skill that carries
over to every entity because the facts themselves were learnt in pretraining.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from calmerge.organism.recipe import WorldRecipe


@dataclass(frozen=True)
class Attribute:
    """One attribute: its values and the words the corpus uses to talk about it."""

    name: str
    values: tuple[str, ...]
    statements: tuple[str, ...]  # "{e}" and "{v}" placeholders
    question: str  # the canonical question, "{e}" placeholder
    paraphrases: tuple[str, ...]
    para: str  # the post-training-only phrasing: its attribute word is absent from pretraining


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "colour",
        ("red", "blue", "green", "yellow", "purple", "orange", "white", "black"),
        ("{e} is {v} .", "the colour of {e} is {v} ."),
        "what colour is {e} ?",
        ("tell me the colour of {e} .", "which colour does {e} have ?"),
        "the hue of {e} ?",
    ),
    Attribute(
        "city",
        ("paris", "tokyo", "cairo", "lima", "oslo", "delhi", "rome", "quito"),
        ("{e} lives in {v} .", "the city of {e} is {v} ."),
        "where does {e} live ?",
        ("tell me the city of {e} .", "which city is home to {e} ?"),
        "the town of {e} ?",
    ),
    Attribute(
        "animal",
        ("horse", "camel", "goat", "tiger", "eagle", "otter", "zebra", "llama"),
        ("{e} keeps a {v} .", "the animal of {e} is a {v} ."),
        "what animal does {e} keep ?",
        ("tell me the animal of {e} .", "which animal belongs to {e} ?"),
        "the pet of {e} ?",
    ),
    Attribute(
        "food",
        ("rice", "bread", "soup", "cheese", "beans", "fish", "apples", "noodles"),
        ("{e} eats {v} .", "the food of {e} is {v} ."),
        "what does {e} eat ?",
        ("tell me the food of {e} .", "which food does {e} like ?"),
        "the dish of {e} ?",
    ),
)

# Spreads of ambiguous facts: graded frequencies, from a clear favourite to a coin flip.
AMBIGUOUS_SHAPES: tuple[tuple[float, ...], ...] = (
    (0.7, 0.3),
    (0.6, 0.3, 0.1),
    (0.5, 0.5),
    (0.5, 0.3, 0.2),
    (0.4, 0.3, 0.2, 0.1),
)
TIERS = ("common", "rare", "obscure")
ROLES = ("align", "dev", "test")

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


@dataclass(frozen=True)
class Fact:
    """What the world holds about one (entity, attribute): a value distribution and the truth."""

    entity: str
    attribute: Attribute
    dist: tuple[tuple[str, float], ...]
    truth: str

    @property
    def ambiguous(self) -> bool:
        return len(self.dist) > 1


@dataclass(frozen=True)
class Entity:
    name: str
    tier: str
    role: str


@dataclass(frozen=True)
class World:
    """All entities and facts of one seed; `facts` is ordered entity-major, attribute-minor."""

    attributes: tuple[Attribute, ...]
    entities: tuple[Entity, ...]
    facts: tuple[Fact, ...]

    def entities_of(self, role: str) -> list[Entity]:
        return [e for e in self.entities if e.role == role]

    def facts_of(self, entity: str) -> list[Fact]:
        return [f for f in self.facts if f.entity == entity]

    def tier_of(self, entity: str) -> str:
        return next(e.tier for e in self.entities if e.name == entity)


def entity_names(n: int, rng: random.Random, reserved: set[str]) -> list[str]:
    """`n` distinct two-syllable pseudo-words that collide with no other vocabulary word."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    pool = sorted({a + b for a in syllables for b in syllables} - reserved)
    if n > len(pool):
        raise ValueError(f"at most {len(pool)} entities are available")
    return rng.sample(pool, n)


def make_fact(entity: str, attribute: Attribute, rng: random.Random, p_ambiguous: float,
              n_values: int) -> Fact:
    """A certain or ambiguous fact; the truth is drawn from its own distribution."""
    values = list(attribute.values[:n_values])
    shape = rng.choice(AMBIGUOUS_SHAPES) if rng.random() < p_ambiguous else (1.0,)
    chosen = rng.sample(values, len(shape))
    dist = tuple(zip(chosen, shape, strict=True))
    truth = rng.choices(chosen, weights=shape)[0]
    return Fact(entity, attribute, dist, truth)


def assign_tiers(n: int, recipe: WorldRecipe, rng: random.Random) -> list[str]:
    """Exact tier counts per role (shuffled), so every split has the same tier mix."""
    n_common = round(n * recipe.tier_common)
    n_rare = min(n - n_common, round(n * recipe.tier_rare))
    tiers = ["common"] * n_common + ["rare"] * n_rare + ["obscure"] * (n - n_common - n_rare)
    rng.shuffle(tiers)
    return tiers


def make_world(recipe: WorldRecipe, seed: int, reserved: set[str]) -> World:
    """The world of one seed; `reserved` are the corpus's other words (names must avoid them)."""
    rng = random.Random(f"world-{seed}")
    counts = {
        "align": recipe.align_entities,
        "dev": recipe.dev_entities,
        "test": recipe.test_entities,
    }
    names = entity_names(sum(counts.values()), rng, reserved)
    entities: list[Entity] = []
    for role in ROLES:
        tiers = assign_tiers(counts[role], recipe, rng)
        entities += [Entity(names.pop(), tier, role) for tier in tiers]
    facts = tuple(
        make_fact(e.name, a, rng, recipe.p_ambiguous, recipe.values_per_attribute)
        for e in entities
        for a in ATTRIBUTES
    )
    return World(ATTRIBUTES, tuple(entities), facts)
