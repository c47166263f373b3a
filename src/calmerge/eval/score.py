"""Multiple-choice scoring: per-choice continuation log-likelihoods, batched, context shared.

Why it is fast: a question's context is computed once and every choice reads it — the packed
layout of `eval.packing` (one sequence per question, block attention mask, restarting
positions), whose tokens processed equal the "unique-token floor" (each context once plus the
choice tokens). This module runs those batches through a model and reads the scores.

Local attention (sliding windows: Gemma-2/3, Mistral, Phi-3, Qwen2 with `use_sliding_window`):
the 4-D mask handed to the model replaces the model's own for every layer, so the block mask alone
would let a sliding layer see further back than it does in the plain sequence. In the plain
sequence context+choice a token's index equals its position, and the packed positions restart so
that every token keeps the position it has there; a sliding layer's window (transformers'
`sliding_window_overlay`: key visible iff key_pos > query_pos − window) is therefore applied to the
packed position ids, intersected with the block mask. Which layers slide is read from the config
(`AttentionPlan`): no `layer_types` means every layer slides (Mistral, Phi-3), mixed
`layer_types` get one mask per layer type as the dict transformers' models accept
(`{"full_attention": …, "sliding_attention": …}`). A batch whose prompts all fit inside the window
gets the plain block mask (bit-identical to a model without a window). Where the packed form
cannot be reproduced (a model that refuses the per-type dict, layer types other than full or
sliding attention, chunked attention) the scorer falls back to one plain sequence per choice,
batched, and lets the model build its own masks — lm-eval's computation, at the cost of the
context being computed once per choice.

Partial scoring (`Item.partial`, lm-eval's multiple-input tasks such as winogrande) packs the
same way (`packing.encode_partial`): only each branch's trailing continuation tokens are targets.

Greedy flags (lm-eval's `is_greedy`): a choice is greedy when every one of its target tokens is
the argmax of the log-softmax at its position, read from the same forward as the log-probs.

Prompts and token ids are built once in `Scorer.__init__`; `Scorer.score(model)` only runs
forwards, so a sweep that rewrites the weights in place re-scores the same data cheaply.

Batches are ranges of the questions sorted longest first. `batch_size=N` cuts them every N
questions, packed in `__init__`. `batch_size="auto"` plans them at the first `score` from the
model's sizes and the free memory (`eval.batching`): each batch as large as the estimate lets it
be, so the short questions at the end share forwards in larger numbers. A forward that still
runs out of memory is split in two and retried, the rest of the data is re-planned under the
lowered budget, and the batches that ran are what the next `score` of the same model replays —
a sweep backs off once, not at every point.

Numerics: the forward runs in the model's dtype (fp32 or bf16); logits are gathered only at the
positions that predict continuation tokens and the log-softmax is taken in float32. Length
normalisation for acc_norm divides by the choice's character length, as lm-eval 0.4 does.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from calmerge.errors import ConfigError, DataError
from calmerge.eval import batching
from calmerge.eval.attention import FULL, SLIDING, AttentionPlan, attention_plan
from calmerge.eval.batching import ModelSizes, QuestionSize, plan_batches
from calmerge.eval.data import Item
from calmerge.eval.metrics import Metric, compute_metrics
from calmerge.eval.packing import (
    Encoded,
    PackedBatch,
    encode_partial,
    pack_batch,
    target_owner,
    unpack_batch,
)
from calmerge.eval.prefix import head_logits, prefix_scores
from calmerge.eval.prompts import Mode, PromptBuilder, PromptFormat, targets

__all__ = [
    "FULL", "SLIDING", "AttentionPlan", "Metric", "ScoreResult", "Scorer", "attention_plan",
    "compute_metrics", "finalize",
]


#: questions per forward: a number, or "auto" (as many as the memory takes, `eval.batching`)
BatchSize = int | Literal["auto"]
#: how a question's choices read its context: one packed sequence (block mask), or the context's
#: KV cache (`eval.prefix`); "auto" times both on the first batch and keeps the faster
Form = Literal["auto", "packed", "prefix"]
FORMS: tuple[str, ...] = ("auto", "packed", "prefix")
#: device types where "auto" times the two forms. Not the CPU: there the two measured level
#: (benchmarks/gpu_sweep.py: 0.40 s packed, 0.45 s prefix on the first batch), and a choice by
#: the clock would make two runs of one sweep differ in the 8th digit, where CPU runs are
#: otherwise reproducible bit for bit (resume and shared-store tests compare exactly)
TIMED_DEVICES = {"cuda"}
#: a batch: the questions order[start:stop] of the length-sorted order
Span = tuple[int, int]


@dataclass(frozen=True)
class ScoreResult:
    """Per-item scores; arrays are n×C padded to the largest choice count, `mask` marks real ones.

    `choice_logprobs` are summed continuation log-likelihoods (−inf where masked); `probs` is
    the softmax over the offered choices (the model's answer distribution; in letter mode this is
    the option-letter softmax renormalised over the offered letters); `confidence` = max prob.
    `greedy` is lm-eval's `is_greedy` per choice (every scored token is the argmax at its
    position; False where masked), None when the scores did not come with it.
    """

    ids: tuple[str, ...]
    choice_logprobs: np.ndarray
    mask: np.ndarray
    probs: np.ndarray
    answer: np.ndarray
    pred: np.ndarray
    correct: np.ndarray
    confidence: np.ndarray
    pred_norm: np.ndarray
    correct_norm: np.ndarray
    mode: str = "loglik"
    greedy: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def predictions(self) -> list[dict[str, Any]]:
        """Per-item rows for JSON output / the results store."""
        out = []
        for i, item_id in enumerate(self.ids):
            valid = self.mask[i]
            row = {
                "id": item_id,
                "answer": int(self.answer[i]),
                "pred": int(self.pred[i]),
                "pred_norm": int(self.pred_norm[i]),
                "correct": bool(self.correct[i]),
                "confidence": float(self.confidence[i]),
                "logprobs": [float(x) for x in self.choice_logprobs[i][valid]],
                "probs": [float(x) for x in self.probs[i][valid]],
            }
            if self.greedy is not None:
                row["greedy"] = [bool(x) for x in self.greedy[i][valid]]
            out.append(row)
        return out


def finalize(
    ids: Sequence[str],
    logprobs: np.ndarray,
    mask: np.ndarray,
    answer: np.ndarray,
    norm_lengths: np.ndarray,
    mode: str,
    greedy: np.ndarray | None = None,
) -> ScoreResult:
    """Scores → predictions: argmax (acc), argmax of ll/char-length (acc_norm), softmax probs.

    Ties go to the first choice, like numpy's argmax in lm-eval. `greedy` (n×C bool, optional
    so callers that rescale stored log-likelihoods need not invent it) is kept, masked to False.
    """
    ll = np.where(mask, logprobs, -np.inf)
    shifted = ll - ll.max(axis=1, keepdims=True)
    ex = np.where(mask, np.exp(shifted), 0.0)
    probs = ex / ex.sum(axis=1, keepdims=True)
    pred = ll.argmax(axis=1)
    pred_norm = (ll / np.where(mask, norm_lengths, 1.0)).argmax(axis=1)
    return ScoreResult(
        ids=tuple(ids),
        choice_logprobs=ll,
        mask=mask,
        probs=probs,
        answer=answer,
        pred=pred,
        correct=pred == answer,
        confidence=probs.max(axis=1),
        pred_norm=pred_norm,
        correct_norm=pred_norm == answer,
        mode=mode,
        greedy=None if greedy is None else np.asarray(greedy, dtype=bool) & mask,
    )


def context_limit(model: Any) -> int | None:
    """The longest sequence a model takes: its (text) config's max_position_embeddings.

    Multimodal configs (Gemma-3 4B–27B) keep it in `text_config`, so the text config is read.
    """
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


class Scorer:
    """Builds prompts and packed token batches once; `score(model)` re-runs only the forwards.

    `mode="loglik"` scores each choice's text as a continuation (lm-eval multiple_choice);
    `mode="letter"` reads the option-letter logits at the answer position in the same single
    forward (each letter is one target token from the context's last position).
    `batch_size` counts questions per forward, or is "auto": the largest batches the memory
    takes (see the module doc); `memory_budget` then fixes the bytes one forward may use instead
    of reading the free memory (for tests and for sharing a device).

    After `score`: `last_paths` (per forward: "packed", "windowed" or "unpacked"),
    `last_batch_sizes` (questions per forward) and `oom_backoffs` (forwards that ran out of
    memory and were split, in that call; only "auto" backs off, a fixed size fails as it is).
    """

    def __init__(
        self,
        tokenizer: Any,
        items: Sequence[Item],
        *,
        mode: Mode = "loglik",
        template: str | None = None,
        prompt_format: PromptFormat = "plain",
        fewshot: Sequence[Item] = (),
        batch_size: BatchSize = 32,
        memory_budget: int | None = None,
        form: Form = "packed",
    ) -> None:
        if not items:
            raise DataError("no items to score", "the data file is empty")
        if mode not in ("loglik", "letter"):
            raise DataError(f"--mode '{mode}': unknown", "use loglik or letter")
        if form not in FORMS:
            raise ConfigError(f"scoring form '{form}': unknown", f"use one of {', '.join(FORMS)}")
        self.items = list(items)
        self.mode = mode
        self.form = form
        self._form: str | None = None if form == "auto" else form  # resolved at the first score
        self._prefix_refused: set[type] = set()  # decoder classes the prefix form cannot run
        #: "auto": seconds of the first batch in each form, as measured ({} until then)
        self.form_timings: dict[str, float] = {}
        self.auto = batch_size == "auto"
        self.batch_size: BatchSize = "auto" if self.auto else _fixed_batch_size(batch_size)
        if memory_budget is not None and memory_budget <= 0:
            raise ConfigError(f"memory budget {memory_budget}: not a positive number of bytes")
        self.memory_budget = memory_budget
        self.builder = PromptBuilder(
            tokenizer, mode=mode, template=template, prompt_format=prompt_format,
            fewshot=tuple(fewshot),
        )
        self.encoded = [self._encode(it) for it in self.items]
        self.n_choices = max(len(it.choices) for it in self.items)
        n = len(self.items)
        self.mask = np.zeros((n, self.n_choices), dtype=bool)
        self.norm_lengths = np.ones((n, self.n_choices))
        for i, it in enumerate(self.items):
            self.mask[i, : len(it.choices)] = True
            # lm-eval's acc_norm divides by len() of each `doc_to_choice` string; for a
            # multiple-input (partial) task those are the texts filling the context, i.e.
            # `choices[j]` again, not the shared continuation — what `targets` returns
            self.norm_lengths[i, : len(it.choices)] = [float(len(t)) for t in targets(it, mode)]
        self.answer = np.array([it.answer for it in self.items])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._pad = pad
        order = sorted(range(n), key=lambda i: -self.encoded[i].packed_len)
        self.order = order
        self._packed: dict[Span, PackedBatch] = {}  # span -> its packed batch (`_keep_packed`)
        #: whether packed batches (and their T×T masks) are kept between calls: with a fixed
        #: size, as always; "auto" keeps them only where they do not share the memory the plan
        #: budgets (a CUDA model's masks live in host memory) — see `_auto_spans`
        self._keep_packed = not self.auto
        self._unpacked: dict[Span, PackedBatch] = {}  # span -> its unpacked form, lazily
        #: the batches `score` runs; "auto": planned at the first score (`_auto_spans`)
        self._spans: list[Span] = []
        if not self.auto:
            size = int(self.batch_size)
            self._spans = [(s, min(s + size, n)) for s in range(0, n, size)]
            for span in self._spans:
                self._packed_batch(span)
        #: (model sizes, "packed" | "unpacked" | "prefix"): what `_spans` was planned for
        self._plan_key: tuple[ModelSizes, str] | None = None
        self._budget = math.inf  # "auto": bytes a forward may use, lowered by each back-off
        self._question_sizes: dict[bool, list[QuestionSize]] = {}  # unpacked? -> per question
        self._ceiling = batching.CPU_MAX_QUESTIONS
        self._dict_refused: set[type] = set()  # decoder classes that refused per-type masks
        #: per batch of the last `score`: "packed", "windowed" or "unpacked" (for tests/reports)
        self.last_paths: list[str] = []
        self.last_batch_sizes: list[int] = []
        self.oom_backoffs = 0

    def _encode(self, item: Item) -> Encoded:
        if item.partial is not None:
            return encode_partial(self.builder.encode_partial(item))
        ctx, conts = self.builder.encode(item)
        return Encoded(tuple(ctx), tuple(tuple(c) for c in conts))

    @property
    def n_tokens(self) -> int:
        """Tokens fed per full scoring pass (the unique-token count), for reporting."""
        return sum(e.packed_len for e in self.encoded)

    @property
    def batches(self) -> list[PackedBatch]:
        """The packed batches `score` runs, in order ("auto": those of the last plan; none
        before the first `score`)."""
        return [self._packed.get(span) or self._pack(span) for span in self._spans]

    def check_context(self, max_positions: int | None) -> None:
        """Refuse items whose prompt + choice does not fit the model's position range."""
        if not max_positions:
            return
        for item, enc in zip(self.items, self.encoded, strict=True):
            if enc.positions_needed > max_positions:
                raise DataError(
                    f"item '{item.id}': prompt + choice is {enc.positions_needed} tokens, longer "
                    f"than the model's context of {max_positions}",
                    "shorten the question/template or use fewer few-shot examples",
                )

    def score(self, model: Any, *, progress: bool = False) -> ScoreResult:
        """Run the packed forwards on `model` (any HF causal LM) and return per-item scores.

        Every target is added to its choice's sum exactly once: a batch's scores are added only
        after its forward returned, and a batch that ran out of memory is replaced by its two
        halves (and the rest re-planned), never rerun beside them.
        """
        import torch

        self.check_context(context_limit(model))
        decoder = model.get_decoder()
        plan = attention_plan(decoder.config)
        dtype = next(model.parameters()).dtype
        n = len(self.items)
        sums = torch.zeros(n * self.n_choices, dtype=torch.float64)
        misses = torch.zeros(n * self.n_choices, dtype=torch.long)  # non-argmax targets
        self.last_paths, self.last_batch_sizes, self.oom_backoffs = [], [], 0
        todo = deque(self._auto_spans(model, plan, decoder) if self.auto else self._spans)
        if self._form is None:
            self._choose_form(model, decoder, plan, dtype, todo[0])
            if self.auto:  # the prefix form is planned at its own cost
                todo = deque(self._auto_spans(model, plan, decoder))
        ran: list[Span] = []
        with torch.inference_mode(), _maybe_progress(progress, n) as advance:
            while todo:
                span = todo.popleft()
                try:
                    lp, hit, path, batch = self._batch_logprobs(model, decoder, plan, dtype, span)
                except Exception as exc:
                    if not (self.auto and batching.is_oom(exc)):
                        raise
                    if span[1] - span[0] == 1:
                        raise self._too_big(span[0]) from exc
                else:
                    sums.index_add_(0, batch.owner, lp.double().cpu())
                    misses.index_add_(0, batch.owner, (~hit).long().cpu())
                    self.last_paths.append(path)
                    self.last_batch_sizes.append(span[1] - span[0])
                    ran.append(span)
                    if not self._keep_packed:
                        self._packed.pop(span, None)
                    del batch, lp, hit
                    advance(span[1] - span[0])
                    if self.auto and self._plan_changed(model, plan, decoder):
                        todo = deque(self._replan(span[1]))
                    continue
                # out of the `except`: the failed forward's frames and tensors are released
                todo = deque(self._back_off(model, span))
        if self.auto:
            self._spans = ran  # what ran is what fits: the next score of this model replays it
            for cache in (self._packed, self._unpacked):
                for span in set(cache) - set(ran):
                    del cache[span]
        ll = np.empty((n, self.n_choices))
        ll[self.order] = sums.view(n, self.n_choices).numpy()
        greedy = np.empty((n, self.n_choices), dtype=bool)
        greedy[self.order] = misses.view(n, self.n_choices).numpy() == 0
        ids = [it.id for it in self.items]
        return finalize(
            ids, ll, self.mask, self.answer, self.norm_lengths, self.mode, greedy=greedy
        )

    # -- "auto" batches ------------------------------------------------------------------------

    def _uses_prefix(self, plan: AttentionPlan, decoder: Any) -> bool:
        return plan.pack and self._form == "prefix" and type(decoder) not in self._prefix_refused

    def _expected_kind(self, plan: AttentionPlan, decoder: Any) -> str:
        """How the batches will run: "packed", "prefix" or "unpacked" (one row per choice):
        each has its own cost."""
        if self._uses_prefix(plan, decoder):
            return "prefix"
        refused = plan.layer_types == (FULL, SLIDING) and type(decoder) in self._dict_refused
        return "unpacked" if not plan.pack or refused else "packed"

    def _sizes(self, kind: str) -> list[QuestionSize]:
        """What each question (in the sorted order) adds to a forward: one packed row, or one
        row per choice (unpacked, and the prefix form's branches)."""
        unpacked = kind != "packed"
        if unpacked in self._question_sizes:
            return self._question_sizes[unpacked]
        out = []
        for i in self.order:
            enc = self.encoded[i]
            n_targets = sum(enc.n_scored)
            if unpacked:
                out.append(QuestionSize(enc.positions_needed, len(enc.continuations), n_targets))
            else:
                out.append(QuestionSize(enc.packed_len, 1, n_targets))
        self._question_sizes[unpacked] = out
        return out

    def _cost(self) -> Callable[[int, int, int], int]:
        """cost(rows, width, targets) of a forward under the current plan key."""
        assert self._plan_key is not None
        sizes, kind = self._plan_key
        if kind == "prefix":
            return lambda rows, width, n_targets: sizes.prefix_bytes(
                rows, width, vocab_rows=n_targets
            )
        return lambda rows, width, n_targets: sizes.forward_bytes(
            rows, width, vocab_rows=n_targets, mask=kind == "packed"
        )

    def _span_cost(self, span: Span) -> int:
        assert self._plan_key is not None
        part = self._sizes(self._plan_key[1])[span[0] : span[1]]
        return self._cost()(
            sum(q.rows for q in part), max(q.width for q in part), sum(q.targets for q in part)
        )

    def _replan(self, start: int) -> list[Span]:
        """Spans for the questions from `start` on, under the current key and budget."""
        assert self._plan_key is not None
        sizes = self._sizes(self._plan_key[1])
        return plan_batches(sizes, self._cost(), self._budget, self._ceiling, start=start)

    def _auto_spans(self, model: Any, plan: AttentionPlan, decoder: Any) -> list[Span]:
        """The spans that ran last time for this model's sizes, else a fresh plan.

        A fresh plan reads the budget (`memory_budget`, else a fraction of the free memory of
        the model's devices) — but never above one that an earlier back-off lowered.
        """
        key = (batching.model_sizes(model), self._expected_kind(plan, decoder))
        if key == self._plan_key and self._spans:
            return self._spans
        budget = self.memory_budget
        if budget is None:
            budget = batching.memory_budget(model)
        self._budget = min(self._budget, budget)
        self._ceiling = batching.max_questions(model)
        self._plan_key = key
        self._packed.clear()
        self._unpacked.clear()
        self._spans = self._replan(0)
        # the packed batches (and their T×T masks) are kept for the next call — a sweep's next
        # point — unless, on the CPU, all of them together would take a real share of the
        # memory the plan gave the forwards; then they are rebuilt per call (re-packing costs
        # ~5% of a CPU point). A CUDA model's masks live in host memory, apart.
        sizes = self._sizes("packed")
        kept = sum(
            batching.mask_bytes(stop - start, max(q.width for q in sizes[start:stop]), key[0])
            for start, stop in self._spans
        )
        on_cuda = all(d.type == "cuda" for d in batching.model_devices(model))
        self._keep_packed = on_cuda or kept <= batching.KEEP_MASKS_FRACTION * self._budget
        return self._spans

    def _plan_changed(self, model: Any, plan: AttentionPlan, decoder: Any) -> bool:
        """After a batch: did it reveal that the rest runs otherwise than planned (a model that
        refused the per-type masks runs unpacked from now on)? Then the key is updated."""
        assert self._plan_key is not None
        kind = self._expected_kind(plan, decoder)
        if kind == self._plan_key[1]:
            return False
        self._plan_key = (self._plan_key[0], kind)
        return True

    def _back_off(self, model: Any, span: Span) -> list[Span]:
        """A forward of `span` ran out of memory: its halves, then the rest re-planned under a
        budget lowered to the larger half's estimate (kept for later calls), so the batches
        after it do not fail the same way one by one."""
        self._packed.pop(span, None)
        self._unpacked.pop(span, None)
        self._spans = []  # should this call not finish, the next one plans under the new budget
        batching.release_memory(batching.model_devices(model))
        self.oom_backoffs += 1
        start, stop = span
        mid = (start + stop + 1) // 2
        self._budget = min(self._budget, self._span_cost((start, mid)))
        return [(start, mid), (mid, stop), *self._replan(stop)]

    def _too_big(self, position: int) -> DataError:
        i = self.order[position]
        return DataError(
            f"item '{self.items[i].id}' ({self.encoded[i].packed_len} tokens) does not fit in "
            "memory for one forward, even alone",
            "use a smaller --dtype/--device-map auto, or shorten the prompts",
        )

    # -- the form ------------------------------------------------------------------------------

    def _choose_form(
        self, model: Any, decoder: Any, plan: AttentionPlan, dtype: Any, span: Span
    ) -> None:
        """`form="auto"`: on a GPU (`TIMED_DEVICES`), time the first (longest) batch packed and
        from the prefix cache, and keep the faster for every later batch and call; elsewhere
        the packed form. The packed
        form runs once untimed first (kernel selection, allocator warm-up). A form that runs
        out of memory, or that the model cannot take, loses; ties go to the packed form."""
        import time

        import torch

        from calmerge.eval.loading import input_device

        self._form = "packed"
        if not plan.pack:  # neither form: the model builds its own masks, one row per choice
            return
        device = input_device(model)
        if getattr(device, "type", str(device)) not in TIMED_DEVICES:
            return  # the CPU: packed, measured level with prefix, and reproducible bit for bit
        sync = torch_sync(device)

        def timed() -> tuple[float, str]:
            start = time.perf_counter()
            with torch.inference_mode():
                path = self._batch_logprobs(model, decoder, plan, dtype, span)[2]
            sync()
            return time.perf_counter() - start, path

        try:
            timed()
            packed, _ = timed()
            self._form = "prefix"
            prefix, path = timed()
        except Exception as exc:
            if not batching.is_oom(exc):
                raise
            batching.release_memory(batching.model_devices(model))
            self._form = "packed"
            self.form_timings = {}
            return
        self.form_timings = {"packed": packed, "prefix": prefix if path == "prefix" else math.inf}
        self._form = "prefix" if self.form_timings["prefix"] < packed else "packed"
        if not self._keep_packed:
            self._packed.pop(span, None)

    # -- one batch -------------------------------------------------------------------------------

    def _group(self, span: Span) -> list[Encoded]:
        return [self.encoded[i] for i in self.order[span[0] : span[1]]]

    def _pack(self, span: Span) -> PackedBatch:
        return pack_batch(self._group(span), span[0], self.n_choices, self._pad)

    def _packed_batch(self, span: Span) -> PackedBatch:
        if span not in self._packed:
            self._packed[span] = self._pack(span)
        return self._packed[span]

    def _unpacked_batch(self, span: Span) -> PackedBatch:
        if span not in self._unpacked:
            self._unpacked[span] = unpack_batch(
                self._group(span), span[0], self.n_choices, self._pad
            )
        return self._unpacked[span]

    def _batch_logprobs(
        self, model: Any, decoder: Any, plan: AttentionPlan, dtype: Any, span: Span,
    ) -> tuple[Any, Any, str, PackedBatch]:
        """(log-probs, greedy hits, path, the batch that ran) of one batch's targets, by the
        cheapest form that reproduces the plain sequence (see module doc)."""
        if self._uses_prefix(plan, decoder):
            group = self._group(span)
            try:
                lp, hit = prefix_scores(model, group, self._pad)
            except NotImplementedError:  # a cache this form was not checked with: packed
                self._prefix_refused.add(type(decoder))
            else:
                return lp, hit, "prefix", _Targets(target_owner(group, span[0], self.n_choices))
        if plan.pack:
            batch = self._packed_batch(span)
            if plan.window is None or batch.positions <= plan.window:
                # every query position < window: the window hides nothing, today's exact mask
                return (*_target_scores(model, batch, batch.additive_mask(dtype)), "packed", batch)
            if type(decoder) not in self._dict_refused:
                local = batch.additive_mask(dtype, plan.window)
                if plan.layer_types == (SLIDING,):
                    return (*_target_scores(model, batch, local), "windowed", batch)
                masks = {FULL: batch.additive_mask(dtype), SLIDING: local}
                try:
                    scores = _target_scores(model, batch, masks)
                except (AttributeError, TypeError, KeyError):
                    # a model that reads one mask for all layers fails on the dict (it has no
                    # shape); it cannot be given per-layer masks, so it builds its own, unpacked
                    self._dict_refused.add(type(decoder))
                else:
                    return (*scores, "windowed", batch)
        unpacked = self._unpacked_batch(span)
        return (*_target_scores(model, unpacked, None), "unpacked", unpacked)


@dataclass(frozen=True)
class _Targets:
    """What `score` reads of a batch that ran in the prefix form: each target's owner."""

    owner: Any


def torch_sync(device: Any) -> Callable[[], None]:
    """A function that waits for `device`'s queued work (CUDA is asynchronous), for timing."""
    import torch

    if getattr(device, "type", str(device)) == "cuda" or str(device).startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _fixed_batch_size(value: Any) -> int:
    """A number of questions per forward (at least 1), as `int()` reads it."""
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        raise ConfigError(
            f"batch size {value!r}: not a number of questions", "use a positive integer or auto"
        ) from None


def _target_logprobs(model: Any, batch: PackedBatch, mask: Any) -> Any:
    """float32 log p(target) for every target of a batch (one forward); see `_target_scores`."""
    return _target_scores(model, batch, mask)[0]


def _target_scores(model: Any, batch: PackedBatch, mask: Any) -> tuple[Any, Any]:
    """(float32 log p(target), target is the argmax) for every target of a batch, one forward.

    `mask`: the 4-D additive mask for all layers, a dict of them per layer type, or None for an
    unpacked batch (plain positions; the model builds its own masks). The argmax is taken over
    the log-softmax, as lm-eval's `is_greedy` is (ties go to the first token, as in torch).
    """
    import torch

    from calmerge.eval.loading import input_device

    device = input_device(model)
    decoder = model.get_decoder()
    if mask is None:
        out = decoder(input_ids=batch.input_ids.to(device), use_cache=False)
    else:
        if isinstance(mask, dict):
            mask = {k: v.to(device) for k, v in mask.items()}
        else:
            mask = mask.to(device)
        out = decoder(
            input_ids=batch.input_ids.to(device),
            position_ids=batch.position_ids.to(device),
            attention_mask=mask,
            use_cache=False,
        )
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
    picked = hidden[batch.rows.to(device), batch.cols.to(device)]
    logp = torch.log_softmax(head_logits(model, picked), dim=-1)
    target = batch.target.to(device)
    return logp.gather(1, target[:, None])[:, 0], logp.argmax(dim=-1) == target


class _maybe_progress:
    """A rich progress bar with ETA when asked, else a no-op; yields an `advance(n=1)` callable."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self._bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda n=1: None
        from calmerge.progress import progress_bar

        self._bar = progress_bar(transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("scoring", total=self.total)
        return lambda n=1: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
