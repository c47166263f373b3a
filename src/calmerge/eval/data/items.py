"""The validated item types every source produces, and the one row check they all share.

Why a module of its own: files, datasets and lm-eval tasks differ in how they find a question,
its choices and its answer, but once found a row is checked by one rule (`_item`: at least two
non-empty choices, an answer given as a 0-based index or a letter and in range), so a bad row
reads the same whichever source it came from. `items_digest` lives beside `Item` because it
hashes exactly these fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from calmerge.errors import DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: each choice is one more continuation scored per question (and a column of every batch's
#: mask), so a row with thousands is a broken file, refused before any tokenising
MAX_CHOICES = 256


@dataclass(frozen=True)
class Item:
    """One multiple-choice question; `answer` is the 0-based index of the correct choice.

    `delimiter` is what joins the prompt and a choice in plain format when the item needs its
    own (an lm-eval task's `target_delimiter` other than a space); None = the scorer's (" ").

    `partial` is set for *partial scoring* (lm-eval's multiple-input tasks, e.g. winogrande):
    each choice completes the context instead — choice j's prompt is the rendered question
    followed directly by `choices[j]` — and the one shared continuation `partial` (delimiter
    included) is what is scored under every choice's prompt. None = ordinary items.
    """

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""
    delimiter: str | None = None
    partial: str | None = None


@dataclass(frozen=True)
class OpenPrompt:
    """One open-ended prompt for sampling (diversity)."""

    id: str
    prompt: str


def _answer_index(raw: Any, n_choices: int, where: str) -> int:
    """Index or letter → 0-based index, range-checked (True/False are not indices)."""
    if isinstance(raw, str):
        text = raw.strip()
        if len(text) == 1 and text.upper() in LETTERS:
            idx = LETTERS.index(text.upper())
        elif text.lstrip("-").isdigit():
            idx = int(text)
        else:
            raise DataError(
                f"{where}: 'answer' {raw!r} is not an index or a letter",
                "use a 0-based index or a letter such as B",
            )
    elif isinstance(raw, int) and not isinstance(raw, bool):
        idx = raw
    else:
        raise DataError(
            f"{where}: 'answer' must be an index or a letter, got {raw!r}",
            "use a 0-based index or a letter such as B",
        )
    if not 0 <= idx < n_choices:
        raise DataError(
            f"{where}: answer {raw!r} out of range for {n_choices} choices",
            f"use 0..{n_choices - 1} or A..{LETTERS[n_choices - 1]}",
        )
    return idx


def _item(
    row: dict[str, Any], where: str, fallback_id: str, *, duplicates_ok: bool = False
) -> Item:
    """One validated item. `duplicates_ok`: a choice listed twice is kept (an lm-eval task's
    documents, which lm-eval scores as they are, the tie going to the first), else refused."""
    for key in ("question", "choices", "answer"):
        if key not in row or row[key] is None:
            raise DataError(f"{where}: missing '{key}'", "rows need question, choices, answer")
    choices = row["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str | int | float) for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of strings", 'e.g. "choices": ["red", "blue"]')
    choices = tuple(str(c) for c in choices)
    if len(choices) < 2:
        raise DataError(
            f"{where}: {len(choices)} choice(s); at least 2 are needed",
            "a multiple-choice item needs two or more choices",
        )
    if len(choices) > MAX_CHOICES:
        raise DataError(
            f"{where}: {len(choices):,} choices; at most {MAX_CHOICES} are supported",
            "is 'choices' the right column?",
        )
    if any(not c.strip() for c in choices):
        raise DataError(f"{where}: empty choice text", "every choice needs some text")
    item_id = str(row.get("id", fallback_id))
    first: dict[str, int] = {}
    for i, c in enumerate(choices):
        if c in first and not duplicates_ok:
            # identical choices score identically, so which one "wins" depends on their order
            raise DataError(
                f"{where}: item '{item_id}' lists choice {c[:40]!r} twice "
                f"(choices {first[c]} and {i})",
                "remove the duplicate choice (a tie between identical choices is decided by order)",
            )
        first[c] = i
    return Item(
        id=item_id,
        question=str(row["question"]),
        choices=choices,
        answer=_answer_index(row["answer"], len(choices), where),
        subject=str(row.get("subject") or ""),
    )


def items_digest(items: Sequence[Item]) -> str:
    """sha256 of the items' canonical JSON: ties a run to the data it saw when there is no file.

    A dataset or task reference names data that can change under the same name (a new revision,
    an edited YAML), so a sweep over one is identified by what was loaded, not by the reference.
    """
    def canonical(it: Item) -> dict[str, Any]:  # fields left unset hash as before they existed
        d = dataclasses.asdict(it)
        for key in ("delimiter", "partial"):
            if d[key] is None:
                del d[key]
        return d

    payload = json.dumps(
        [canonical(it) for it in items],
        ensure_ascii=False, sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
