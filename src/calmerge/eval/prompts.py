"""Prompt building and tokenisation for multiple-choice scoring.

One prompt per item, built once and reused for every point of a sweep. Two formats:
`plain` (template text, tokenised with the tokenizer's default special tokens, exactly as
lm-evaluation-harness does) and `chat` (the tokenizer's chat template with the generation prompt
added; few-shot examples become earlier user/assistant turns).

The continuation is what gets scored: the choice text (`loglik`) or its option letter (`letter`).
In plain format it follows the prompt after `target_delimiter` (" ", lm-eval's default; an item
may carry its own, e.g. from an lm-eval task); after a chat generation prompt it follows directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from calmerge.errors import DataError
from calmerge.eval.data import LETTERS, Item

Mode = Literal["loglik", "letter"]
PromptFormat = Literal["plain", "chat"]

DEFAULT_TEMPLATES: dict[str, str] = {
    "loglik": "Question: {question}\nAnswer:",
    "letter": "{question}\n{choices}\nAnswer:",
}
FIELDS = ("question", "choices", "subject")


def format_choices(choices: Sequence[str]) -> str:
    """'A. first\\nB. second …' — the listing used by `{choices}` in templates."""
    return "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))


def render(item: Item, template: str) -> str:
    """Fill `{question}`, `{choices}` and `{subject}`; an unknown field is a one-line error."""
    try:
        return template.format(
            question=item.question, choices=format_choices(item.choices), subject=item.subject
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(
            f"--prompt-template: cannot fill {exc!s} in {template!r}",
            f"available fields: {', '.join('{' + f + '}' for f in FIELDS)}",
        ) from None


def targets(item: Item, mode: Mode) -> list[str]:
    """The strings scored for each choice: the choice text or its option letter."""
    if mode == "letter":
        if len(item.choices) > len(LETTERS):
            raise DataError(
                f"item '{item.id}': letter mode supports at most 26 choices", "use --mode loglik"
            )
        return [LETTERS[i] for i in range(len(item.choices))]
    return list(item.choices)


@dataclass(frozen=True)
class PromptBuilder:
    """Turns items into (context text, continuation texts) for one tokenizer and format."""

    tokenizer: Any
    mode: Mode = "loglik"
    template: str | None = None
    prompt_format: PromptFormat = "plain"
    fewshot: tuple[Item, ...] = ()
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"

    def __post_init__(self) -> None:
        if self.prompt_format == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise DataError(
                "--prompt-format chat: the tokenizer has no chat template",
                "use --prompt-format plain, or a model with a chat template",
            )

    @property
    def _template(self) -> str:
        return self.template if self.template is not None else DEFAULT_TEMPLATES[self.mode]

    def delimiter(self, item: Item) -> str:
        """What separates an item's prompt and continuation: the item's own delimiter or
        `target_delimiter` in plain format, nothing after a chat generation prompt."""
        if self.prompt_format == "chat":
            return ""
        return self.target_delimiter if item.delimiter is None else item.delimiter

    def context(self, item: Item) -> str:
        """The full context text (few-shot examples included) that precedes the continuation."""
        shots = [(render(s, self._template), targets(s, self.mode)[s.answer]) for s in self.fewshot]
        question = render(item, self._template)
        if self.prompt_format == "plain":
            pairs = zip(shots, self.fewshot, strict=True)
            parts = [q + self.delimiter(s) + a for (q, a), s in pairs]
            return self.fewshot_delimiter.join([*parts, question])
        messages: list[dict[str, str]] = []
        for q, a in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def encode(self, item: Item) -> tuple[list[int], list[list[int]]]:
        """Token ids of the context and of each continuation (lm-eval's `_encode_pair`).

        Trailing whitespace of the context moves into the continuation, the whole string is
        tokenised and split at the context's length, so merges across the boundary (" A" vs "A")
        follow the tokenizer exactly as it would see the full text. Special tokens follow
        `special_tokens_kwargs` (lm-eval's rule, plain and chat alike).
        """
        context = self.context(item)
        conts = [self.delimiter(item) + t for t in targets(item, self.mode)]
        ctx_ids, cont_ids = encode_pairs(self.tokenizer, context, conts)
        if self.mode == "letter":
            return self._letter_tokens(item, context, ctx_ids, cont_ids)
        return ctx_ids, cont_ids

    def _letter_tokens(
        self, item: Item, context: str, ctx_ids: list[int], cont_ids: list[list[int]]
    ) -> tuple[list[int], list[list[int]]]:
        """One distinct token per option letter, in the form that follows the prompt.

        Tokenizers differ: " A" may be one token, or a space token followed by "A" — and a
        small BPE may even mix the two across letters. When every delimiter+letter is a single
        distinct token, those are used (the common case: " A" … " D"). Otherwise the prompt
        (with its trailing whitespace and the delimiter) is the context and the bare letters are
        the targets, so all letters are read at the same position in one forward.
        """
        if all(len(c) == 1 for c in cont_ids) and len({c[0] for c in cont_ids}) == len(cont_ids):
            return ctx_ids, cont_ids
        letters = [
            self.tokenizer.encode(t, add_special_tokens=False) for t in targets(item, "letter")
        ]
        if all(len(x) == 1 for x in letters) and len({x[0] for x in letters}) == len(letters):
            text = context + self.delimiter(item)
            kwargs = special_tokens_kwargs(self.tokenizer, text)
            return list(self.tokenizer.encode(text, **kwargs)), letters
        raise DataError(
            f"item '{item.id}': the option letters do not tokenise to distinct single tokens",
            "use --mode loglik for this tokenizer",
        )


def special_tokens_kwargs(tokenizer: Any, text: str) -> dict[str, bool]:
    """lm-eval 0.4's rule for special tokens (`HFLM.tok_encode` with its default
    `add_bos_token=None`): the tokenizer adds its own (a BOS, for Llama/Gemma/Phi-3 tokenizers)
    unless the text already starts with the BOS string (a chat template with
    `{{ bos_token }}`), so there is exactly one BOS either way. The same for plain and chat
    prompts: a chat template *without* `{{ bos_token }}` (Phi-3) still gets the tokenizer's BOS.
    """
    bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    bos = tokenizer.decode(bos_id) if bos_id is not None else ""
    return {"add_special_tokens": False} if bos and text.startswith(bos) else {}


def encode_pairs(
    tokenizer: Any, context: str, continuations: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """Context ids and per-continuation ids, split the way lm-eval 0.4 splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuations = [context[-n_spaces:] + c for c in continuations]
        context = context[:-n_spaces]
    kwargs = special_tokens_kwargs(tokenizer, context)
    ctx_ids = list(tokenizer.encode(context, **kwargs))
    if not ctx_ids:
        raise DataError("empty prompt after tokenisation", "use a template with some text")
    out = []
    for cont in continuations:
        whole = list(tokenizer.encode(context + cont, **kwargs))
        cont_ids = whole[len(ctx_ids) :]
        if not cont_ids:
            raise DataError(f"continuation {cont!r} tokenises to nothing", "check the choices")
        out.append(cont_ids)
    return ctx_ids, out
