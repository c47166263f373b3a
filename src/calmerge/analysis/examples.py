"""What the report quotes, item by item: sample generations of the parents and the pick, and
the questions on which the pick answers differently from the aligned model.

Pure selection over stored rows (no store, no formatting): `results.points` loads the rows and
`report.examples` lays them out as tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from calmerge.results.store import Prediction


@dataclass(frozen=True)
class Answer:
    """One model's answer to a question: the choice text, whether it is right, its confidence."""

    text: str
    correct: bool
    confidence: float


@dataclass(frozen=True)
class ChangedAnswer:
    """A question the pick answers differently from the aligned model."""

    question: str
    gold: str
    aligned: Answer
    pick: Answer


def _answer(item: Mapping[str, Any], pred: Prediction) -> Answer:
    return Answer(item["choices"][pred.pred], pred.pred == item["answer"], pred.confidence)


def changed_answers(
    items: Sequence[Mapping[str, Any]],
    aligned: Sequence[Prediction],
    pick: Sequence[Prediction],
    *,
    limit: int = 6,
) -> list[ChangedAnswer]:
    """The first `limit` items (in item order) whose predicted choice differs between the two."""
    out = []
    for item, a, p in zip(items, aligned, pick, strict=False):
        if a.pred != p.pred:
            out.append(ChangedAnswer(item["question"], item["choices"][item["answer"]],
                                     _answer(item, a), _answer(item, p)))
            if len(out) == limit:
                break
    return out


def sample_generations(
    prompts: Mapping[str, str],
    generations: Sequence[Mapping[str, Sequence[str]]],
    *,
    limit: int = 6,
    per_prompt: int = 2,
) -> list[tuple[str, list[list[str]]]]:
    """(prompt text, the first `per_prompt` samples of each model) for the first `limit`
    prompts; `generations` holds one {prompt id: samples} mapping per model."""
    return [
        (text, [list(g.get(pid, []))[:per_prompt] for g in generations])
        for pid, text in list(prompts.items())[:limit]
    ]
