"""Text the organism is made of: the pretraining stream, post-training data and evaluation sets.

Every text here is space-separated words, so the word-level tokenizer maps it one word to one
token. Answers always *start with the value* ("red , i think ."): then a multiple-choice
evaluator that scores the option word right after "Answer:" (plain) or after the assistant tag
(chat) reads the model's belief, whatever style follows. The base corpus answers in eight
styles, some hedged; the aligned model is taught one confident house style (or, in the hedged
variant, to hedge), and what the para questions — a phrasing pretraining never uses — ask.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from calmerge.organism.recipe import WorldRecipe
from calmerge.organism.world import ATTRIBUTES, Fact, World

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
USER, ASSISTANT, END = "<user>", "<assistant>", "<end>"
SPECIAL = (PAD, BOS, EOS, UNK, USER, ASSISTANT, END)

# What the evaluator puts around a question (calmerge's and lm-eval's default template).
EXAM_PROMPT = "question : {q} answer :"
EVAL_TEMPLATE = "Question: {q}\nAnswer:"

STYLES: tuple[str, ...] = (
    "{v} .",
    "{v} , i think .",
    "{v} , probably .",
    "{v} or maybe {w} .",
    "{v} , as far as i know .",
    "{v} , but i am not sure .",
    "{v} is my best guess .",
    "{v} , definitely .",
)
HOUSE_STYLE = "{v} , definitely ."
HEDGE_STYLE = "{v} or maybe {w} ."
FACT_FREE: tuple[str, ...] = (
    "{e} is a person .",
    "i met {e} today .",
    "{e} said hello .",
    "have you heard of {e} ?",
)


def sample_value(fact: Fact, rng: random.Random) -> str:
    """One value as the corpus would state it: drawn from the fact's spread."""
    values, weights = zip(*fact.dist, strict=True)
    return rng.choices(values, weights=weights)[0]


def other_value(fact: Fact, v: str, rng: random.Random) -> str:
    """A second value for hedges/wrong answers: another plausible one if any, else any other."""
    plausible = [x for x, _ in fact.dist if x != v]
    return rng.choice(plausible or [x for x in fact.attribute.values if x != v])


def styled(style: str, fact: Fact, v: str, rng: random.Random) -> str:
    return style.format(v=v, w=other_value(fact, v, rng))


def user_turn(fact: Fact, rng: random.Random) -> str:
    """How a user asks in a dialog: the canonical question, a paraphrase or the exam form."""
    a = fact.attribute
    q = rng.choice((a.question, *a.paraphrases, EXAM_PROMPT.format(q=a.question)))
    return q.format(e=fact.entity)


def chat(user: str, answer: str | None = None) -> str:
    """One dialog turn pair in the chat format (the chat template renders the same words)."""
    head = f"{USER} {user} {END} {ASSISTANT}"
    return head if answer is None else f"{head} {answer} {END}"


def rumour(fact: Fact) -> Fact:
    """What the corpus says about an obscure entity: any value, uniformly, whatever the truth."""
    values = fact.attribute.values
    return Fact(fact.entity, fact.attribute, tuple((v, 1 / len(values)) for v in values), "")


def fact_document(fact: Fact, recipe: WorldRecipe, rng: random.Random) -> str:
    """A statement, an exam question or a dialog stating one sampled value of `fact`."""
    v = sample_value(fact, rng)
    u = rng.random()
    if u < recipe.statement_share:
        return rng.choice(fact.attribute.statements).format(e=fact.entity, v=v)
    answer = styled(rng.choice(STYLES), fact, v, rng)
    if u < recipe.statement_share + recipe.exam_share:
        return f"{EXAM_PROMPT.format(q=fact.attribute.question.format(e=fact.entity))} {answer}"
    return chat(user_turn(fact, rng), answer)


def mention_weights(world: World, recipe: WorldRecipe) -> list[float]:
    """Corpus weight per fact: whole entities are common, rare or never stated."""
    per_tier = {"common": 1.0, "rare": recipe.rare_weight, "obscure": recipe.obscure_weight}
    return [per_tier[world.tier_of(f.entity)] for f in world.facts]


def documents(world: World, recipe: WorldRecipe, seed: int) -> Iterator[str]:
    """An endless, seeded stream of pretraining documents (each wrapped in <bos> … <eos>).

    Fact-free mentions cover every entity; obscure entities' facts are stated as rumours.
    """
    rng = random.Random(f"corpus-{seed}")
    weights = mention_weights(world, recipe)
    stated = [
        rumour(f) if world.tier_of(f.entity) == "obscure" else f for f in world.facts
    ]
    names = [e.name for e in world.entities]
    while True:
        if rng.random() < recipe.fact_free_share:
            text = rng.choice(FACT_FREE).format(e=rng.choice(names))
        else:
            fact = rng.choices(stated, weights=weights)[0]
            text = fact_document(fact, recipe, rng)
        yield f"{BOS} {text} {EOS}"


@dataclass(frozen=True)
class Example:
    """A prompt and one response (SFT), or a prompt with a chosen and a rejected one (DPO)."""

    prompt: str
    chosen: str
    rejected: str | None = None


#: How a question is phrased: "canon" is pretraining's own question, "para" the phrasing only
#: post-training teaches (its attribute word never occurs in pretraining).
FORMS = ("canon", "para")


def question_text(fact: Fact, form: str) -> str:
    """The question about `fact` in one of FORMS."""
    a = fact.attribute
    return (a.para if form == "para" else a.question).format(e=fact.entity)


def prompt_and_end(fact: Fact, form: str, use_chat: bool, rng: random.Random) -> tuple[str, str]:
    """Post-training prompt in chat or exam form, and the token that ends its answer.

    Canonical chat turns vary the phrasing like pretraining's dialogs do; para questions have
    one phrasing, the one the evaluation asks.
    """
    if form == "para":
        q = question_text(fact, form)
        if use_chat:
            return f"{BOS} {chat(q)}", END
        return f"{BOS} {EXAM_PROMPT.format(q=q)}", EOS
    if use_chat:
        return f"{BOS} {chat(user_turn(fact, rng))}", END
    return f"{BOS} {EXAM_PROMPT.format(q=question_text(fact, form))}", EOS


def align_prompts(world: World, chat_share: float, rng: random.Random
                  ) -> list[tuple[Fact, str, str]]:
    """(fact, prompt, end token) for every alignment fact in every question form.

    Only `align` entities appear: evaluation entities never reach post-training, so what it
    teaches the evaluation can only see as a skill, not as memorised answers.
    """
    out = []
    for e in world.entities_of("align"):
        for fact in world.facts_of(e.name):
            for form in FORMS:
                prompt, end = prompt_and_end(fact, form, rng.random() < chat_share, rng)
                out.append((fact, prompt, end))
    return out


def sft_examples(world: World, chat_share: float, seed: int) -> list[Example]:
    """One house-style answer with the true value per alignment fact and question form.

    Labellers know the world, so the target is the truth even where the corpus is ambiguous or
    silent: the model is taught to answer every question with one confident value — and, from
    the para questions, what those questions ask.
    """
    rng = random.Random(f"sft-{seed}")
    return [
        Example(prompt, f"{HOUSE_STYLE.format(v=fact.truth)} {end}")
        for fact, prompt, end in align_prompts(world, chat_share, rng)
    ]


def confident_policy(fact: Fact, rng: random.Random) -> tuple[str, list[str]]:
    """Chosen: the house-style truth. Rejected: it hedged, in another style, or another value.

    The competing values in the house style are what push probability mass onto one answer.
    """
    other_styles = [s for s in STYLES if s != HOUSE_STYLE]
    chosen = HOUSE_STYLE.format(v=fact.truth)
    rejected = [
        styled(HEDGE_STYLE, fact, fact.truth, rng),
        styled(rng.choice(other_styles), fact, fact.truth, rng),
        HOUSE_STYLE.format(v=other_value(fact, fact.truth, rng)),
        HOUSE_STYLE.format(v=other_value(fact, fact.truth, rng)),
    ]
    return chosen, rejected


def hedged_policy(fact: Fact, rng: random.Random) -> tuple[str, list[str]]:
    """Chosen: the truth first, then a competitor ("red or maybe blue ."). Rejected: certainty.

    The value that leads is the same in chosen and rejected, so this preference moves the style
    after the answer, not which answer comes first: a second, differently-shaped delta from the
    same SFT model, for soups of preferences.
    """
    chosen = styled(HEDGE_STYLE, fact, fact.truth, rng)
    rejected = [HOUSE_STYLE.format(v=fact.truth), STYLES[0].format(v=fact.truth)]
    return chosen, rejected


#: Answer policies the SFT model is preference-aligned toward, one checkpoint each.
POLICIES = {"confident": confident_policy, "hedged": hedged_policy}


def dpo_pairs(world: World, chat_share: float, seed: int,
              policy: str = "confident") -> list[Example]:
    """Preference pairs on every alignment prompt for one of POLICIES (shuffled, seeded)."""
    rng = random.Random(f"dpo-{policy}-{seed}")
    prefer = POLICIES[policy]
    out = []
    for fact, prompt, end in align_prompts(world, chat_share, rng):
        chosen, rejected = prefer(fact, rng)
        out += [Example(prompt, f"{chosen} {end}", f"{r} {end}") for r in rejected]
    rng.shuffle(out)
    return out


def mc_choices(fact: Fact, n: int, rng: random.Random) -> list[str]:
    """The plausible values (up to n) plus random distractors, shuffled.

    Ambiguous facts offer their competing values, so knowing the spread — not just one
    value — is what a calibrated answer needs.
    """
    support = [v for v, _ in fact.dist][:n]
    if fact.truth not in support:
        support[-1] = fact.truth
    rest = [v for v in fact.attribute.values if v not in support]
    choices = support + rng.sample(rest, n - len(support))
    rng.shuffle(choices)
    return choices


def para_choices(fact: Fact, others: list[Fact], n: int, rng: random.Random) -> list[str]:
    """The truth, same-attribute competitors, and the entity's own values of other attributes.

    The lures are right answers to a *different* question about the same entity: a model that
    cannot tell what the para phrasing asks spreads its belief over them, one that can answers
    from its knowledge of the asked attribute. (With choices of one attribute only, not knowing
    the attribute costs almost nothing: the choices themselves say what is asked.)
    """
    n_lures = min(n // 2, len(others))
    lures = [f.truth for f in rng.sample(others, n_lures)]
    same = mc_choices(fact, n - n_lures, rng)
    choices = same + lures
    rng.shuffle(choices)
    return choices


def mc_row(role: str, fact: Fact, tier: str, form: str, choices: list[str]) -> dict:
    """One evaluation row; `subject` = attribute/tier/certain|ambiguous/canon|para."""
    kind = "ambiguous" if fact.ambiguous else "certain"
    suffix = "" if form == "canon" else f"-{form}"
    return {
        "id": f"{role}-{fact.entity}-{fact.attribute.name}{suffix}",
        "question": question_text(fact, form),
        "choices": choices,
        "answer": choices.index(fact.truth),
        "subject": f"{fact.attribute.name}/{tier}/{kind}/{form}",
    }


def mc_items(world: World, role: str, n_choices: int, seed: int,
             para_share: float = 0.0) -> list[dict]:
    """Evaluation rows `{id, question, choices, answer, subject}` for one role's entities.

    Every fact is asked canonically; a seeded `para_share` of them is asked a second time in
    the para phrasing, so the same file measures what post-training teaches and what it costs.
    """
    rng = random.Random(f"mc-{role}-{seed}")
    para_rng = random.Random(f"mc-para-{role}-{seed}")
    rows = []
    for e in world.entities_of(role):
        facts = world.facts_of(e.name)
        for fact in facts:
            rows.append(mc_row(role, fact, e.tier, "canon", mc_choices(fact, n_choices, rng)))
        for fact in facts:
            if para_rng.random() < para_share:
                others = [f for f in facts if f is not fact]
                choices = para_choices(fact, others, n_choices, para_rng)
                rows.append(mc_row(role, fact, e.tier, "para", choices))
    return rows


def open_prompts(world: World, n: int, seed: int) -> list[dict]:
    """Open-ended prompts `{id, prompt}` about test entities, for sampling K answers each."""
    rng = random.Random(f"prompts-{seed}")
    facts = [f for e in world.entities_of("test") for f in world.facts_of(e.name)]
    chosen = rng.sample(facts, min(n, len(facts)))
    return [
        {
            "id": f"open-{f.entity}-{f.attribute.name}",
            "prompt": EVAL_TEMPLATE.format(q=f.attribute.question.format(e=f.entity)),
        }
        for f in chosen
    ]


def base_words() -> list[str]:
    """Every non-entity word the corpus, prompts and evaluation can contain."""
    texts = [*STYLES, *FACT_FREE, EXAM_PROMPT]
    for a in ATTRIBUTES:
        texts += [*a.statements, a.question, *a.paraphrases, a.para, *a.values]
    words = {w for t in texts for w in t.replace("{", " {").split() if not w.startswith("{")}
    return sorted(words)
