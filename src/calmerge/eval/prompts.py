"""Prompt building and tokenisation for multiple-choice scoring.

One prompt per item, built once and reused for every point of a sweep. Two formats:
`plain` (template text, tokenised with the tokenizer's default special tokens, exactly as
lm-evaluation-harness does) and `chat` (the tokenizer's chat template with the generation prompt
added; few-shot examples become earlier user/assistant turns).

The continuation is what gets scored: the choice text (`loglik`) or its option letter (`letter`).
In plain format it follows the prompt after `target_delimiter` (" ", lm-eval's default; an item
may carry its own, e.g. from an lm-eval task); after a chat generation prompt it follows directly.

Partial scoring (`Item.partial`, lm-eval's multiple-input tasks such as winogrande) turns this
around: each choice completes the *context* (prompt + choice text, no delimiter) and the one
shared continuation `partial` is scored under every choice's context (`encode_partial`). It is
defined for plain-format loglik scoring only, which is the form lm-eval's numbers come from; the
other forms are refused rather than guessed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


def render(item: Item, template: str, mode: Mode | None = None) -> str:
    """Fill `{question}`, `{choices}` and `{subject}`; an unknown field is a one-line error."""
    if len(item.choices) > len(LETTERS) and (mode == "letter" or "{choices" in template):
        what = "--mode letter" if mode == "letter" else "the {choices} listing of the template"
        raise DataError(
            f"item '{item.id}': {len(item.choices)} choices, but {what} labels at most "
            f"{len(LETTERS)} (A..Z)",
            "use --mode loglik with a template without {choices}",
        )
    try:
        listing = format_choices(item.choices) if "{choices" in template else ""
        return template.format(question=item.question, choices=listing, subject=item.subject)
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


#: wall-clock seconds a chat template may take to render one prompt when it is checked: real
#: templates take milliseconds; one that loops for longer would stall every point of a sweep
TEMPLATE_SECONDS = 5.0


class _OverBudget(BaseException):
    """Raised inside a render that ran past its budget (a BaseException, so no `except
    Exception` in jinja or transformers swallows it: the tracer is gone once it fires)."""


def within_seconds(seconds: float, fn: Callable[[], Any]) -> Any:
    """`fn()`, stopped with `_OverBudget` once it has run `seconds` of wall-clock time.

    A Python thread cannot be killed and a signal only reaches the main thread, so the budget
    is a `sys.settrace` hook that reads the clock every 1024 Python calls and lines, in
    whichever thread renders. Jinja compiles a template to Python, so a template's loops are
    lines the hook sees; a single long C-level operation (one huge string repeat) is not.
    The hook costs while it is set, so callers use it for the checks only, not every render.
    """
    deadline = time.monotonic() + seconds
    ticks = 0

    def tick(frame: Any, event: str, arg: Any) -> Any:
        nonlocal ticks
        ticks += 1
        if not ticks & 1023 and time.monotonic() > deadline:
            raise _OverBudget
        return tick

    previous = sys.gettrace()
    sys.settrace(tick)
    try:
        return fn()
    finally:
        sys.settrace(previous)


def render_chat(
    tokenizer: Any, messages: list[dict[str, str]], *, check: bool = False
) -> str:
    """The chat template applied to `messages` with the generation prompt; a template that
    fails (its own `raise_exception`, a syntax error, a loop without end when `check`) is one
    line naming the tokenizer's template, not a traceback from inside jinja."""
    import jinja2

    def call() -> Any:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    name = f"{getattr(tokenizer, 'name_or_path', '') or 'the tokenizer'}: chat template"
    hint = "fix the chat template, or use --prompt-format plain"
    try:
        text = within_seconds(TEMPLATE_SECONDS, call) if check else call()
    except _OverBudget:
        raise DataError(
            f"{name} still rendering one prompt after {TEMPLATE_SECONDS:g} s (a loop without end?)",
            hint,
        ) from None
    except jinja2.TemplateError as exc:
        raise DataError(f"{name} fails: {str(exc)[:200]}", hint) from None
    except (RecursionError, MemoryError) as exc:
        raise DataError(f"{name} fails: {type(exc).__name__}", hint) from None
    if not isinstance(text, str):
        raise DataError(f"{name} renders {type(text).__name__}, not text", hint)
    return text


class TemplateCheck:
    """When a render is checked against the budget: the first, and every one whose messages
    are more than twice as long as the longest checked yet (a template's cost can grow with
    its input), so at most ~20 renders of a dataset pay for the hook."""

    def __init__(self) -> None:
        self.longest = 0

    def due(self, messages: list[dict[str, str]]) -> bool:
        size = sum(len(m["content"]) for m in messages) + 1
        if size <= 2 * self.longest:
            return False
        self.longest = size
        return True


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
    _check: TemplateCheck = field(default_factory=TemplateCheck, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prompt_format == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise DataError(
                "--prompt-format chat: the tokenizer has no chat template",
                "use --prompt-format plain, or a model with a chat template",
            )
        for shot in self.fewshot:
            if shot.partial is not None:
                self._check_partial(shot, "few-shot example")

    def _check_partial(self, item: Item, what: str = "item") -> None:
        """Refuse the forms partial scoring has no lm-eval definition for in calmerge.

        A letter target would drop the completion the question is about, and lm-eval's chat
        form of a multiple-input task (choice-filled user turns, the continuation after the
        generation prompt) is not reproduced here: a one-line refusal, not a guessed number.
        """
        if self.mode == "letter":
            raise DataError(
                f"{what} '{item.id}': a partial-scoring item (multiple-input task such as "
                "winogrande) cannot be scored in --mode letter",
                "use --mode loglik for this data",
            )
        if self.prompt_format == "chat":
            raise DataError(
                f"{what} '{item.id}': partial-scoring items (multiple-input tasks such as "
                "winogrande) are scored in plain format only",
                "use --prompt-format plain for this data",
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

    def shot_text(self, shot: Item) -> str:
        """One few-shot example in plain format: its prompt followed by its answer.

        A partial-scoring example is shown as lm-eval shows a winogrande example: the sentence
        filled with the right choice and completed, i.e. prompt + choices[answer] + partial
        (`partial` carries its own delimiter; the choice follows the prompt directly).
        """
        question = render(shot, self._template, self.mode)
        if shot.partial is not None:
            return question + shot.choices[shot.answer] + shot.partial
        return question + self.delimiter(shot) + targets(shot, self.mode)[shot.answer]

    def context(self, item: Item) -> str:
        """The full context text (few-shot examples included) that precedes the continuation.

        For a partial-scoring item this is the part every choice's context shares; choice j's
        own context is this text followed by `choices[j]` (`contexts`).
        """
        question = render(item, self._template, self.mode)
        if self.prompt_format == "plain":
            parts = [self.shot_text(s) for s in self.fewshot]
            return self.fewshot_delimiter.join([*parts, question])
        # chat: partial shots were refused in __post_init__
        shots = [
            (render(s, self._template, self.mode), targets(s, self.mode)[s.answer])
            for s in self.fewshot
        ]
        messages: list[dict[str, str]] = []
        for q, a in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        return render_chat(self.tokenizer, messages, check=self._check.due(messages))

    def encode(self, item: Item) -> tuple[list[int], list[list[int]]]:
        """Token ids of the context and of each continuation (lm-eval's `_encode_pair`).

        Trailing whitespace of the context moves into the continuation, the whole string is
        tokenised and split at the context's length, so merges across the boundary (" A" vs "A")
        follow the tokenizer exactly as it would see the full text. Special tokens follow
        `special_tokens_kwargs` (lm-eval's rule, plain and chat alike).
        """
        if item.partial is not None:
            # one shared context does not exist for such an item: scoring it as if it did
            # would be a silently wrong number, so the caller must take the other road
            raise ValueError(f"item '{item.id}' is a partial-scoring item: use encode_partial")
        context = self.context(item)
        conts = [self.delimiter(item) + t for t in targets(item, self.mode)]
        ctx_ids, cont_ids = encode_pairs(self.tokenizer, context, conts)
        if self.mode == "letter":
            return self._letter_tokens(item, context, ctx_ids, cont_ids)
        return ctx_ids, cont_ids

    def contexts(self, item: Item) -> list[str]:
        """A partial-scoring item's per-choice context texts: the shared context followed
        directly by each choice (lm-eval's `multiple_input_context`, plain format)."""
        if item.partial is None:
            raise ValueError(f"item '{item.id}' is not a partial-scoring item")
        self._check_partial(item)
        shared = self.context(item)
        return [shared + choice for choice in item.choices]

    def encode_partial(self, item: Item) -> list[tuple[list[int], list[int]]]:
        """(context ids, continuation ids) per choice of a partial-scoring item.

        lm-eval's requests for such an item are `[(context_j, partial) for each choice]`, each
        split by `_encode_pair` on its own: `encode_pairs` once per choice context. The
        continuation's tokens may differ between choices (a context's trailing whitespace moves
        into it, and BPE merges across the boundary follow the whole string).
        """
        out = []
        for context in self.contexts(item):
            ctx_ids, (cont_ids,) = encode_pairs(self.tokenizer, context, [item.partial or ""])
            out.append((ctx_ids, cont_ids))
        return out

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
