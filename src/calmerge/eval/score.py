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

Numerics: the forward runs in the model's dtype (fp32 or bf16); logits are gathered only at the
positions that predict continuation tokens and the log-softmax is taken in float32. Length
normalisation for acc_norm divides by the choice's character length, as lm-eval 0.4 does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from calmerge.errors import DataError
from calmerge.eval.data import Item
from calmerge.eval.metrics import Metric, compute_metrics
from calmerge.eval.packing import Encoded, PackedBatch, encode_partial, pack_batch, unpack_batch
from calmerge.eval.prompts import Mode, PromptBuilder, PromptFormat, targets

__all__ = ["Metric", "ScoreResult", "Scorer", "compute_metrics", "finalize"]


#: layer types whose masks the packed form reproduces (transformers' `config.layer_types` names)
FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class AttentionPlan:
    """What a model's attention needs for packed scoring, read from its (decoder's) config.

    `window` None: every layer is global, the block mask is the whole story. Otherwise
    `layer_types` names the distinct layer types: (SLIDING,) when every layer slides (one mask),
    (FULL, SLIDING) when mixed (one mask per type, as a dict). `pack` False: the packed form is
    not reproducible for this architecture at all and every batch is scored unpacked; `why` says
    why, for the docs and the tests.
    """

    window: int | None = None
    layer_types: tuple[str, ...] = (FULL,)
    pack: bool = True
    why: str = ""


def attention_plan(config: Any) -> AttentionPlan:
    """Local attention as transformers 5 builds it from a config, without naming models.

    `sliding_window` is the window; `use_sliding_window=False` (Qwen2 family) switches it off;
    `layer_types` says which layers use it, and its absence means all of them (Mistral, Phi-3,
    Starcoder2 apply `create_sliding_window_causal_mask` to every layer). Layer types other than
    full/sliding attention (chunked, linear/recurrent, …) and `attention_chunk_size` are not
    reproduced by a packed mask: unpacked.
    """
    types = getattr(config, "layer_types", None)
    kinds = tuple(dict.fromkeys(types)) if types else None
    if kinds is not None and not set(kinds) <= {FULL, SLIDING}:
        other = sorted(set(kinds) - {FULL, SLIDING})
        return AttentionPlan(pack=False, why=f"layer types {', '.join(other)}")
    if getattr(config, "attention_chunk_size", None):
        return AttentionPlan(pack=False, why="chunked attention")
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    if kinds is not None and SLIDING not in kinds:
        return AttentionPlan()
    if not window:
        if kinds is not None:  # sliding layers but no window: not a config we can read
            return AttentionPlan(pack=False, why="sliding layers without a sliding_window")
        return AttentionPlan()
    if kinds is None or kinds == (SLIDING,):
        return AttentionPlan(window=int(window), layer_types=(SLIDING,))
    return AttentionPlan(window=int(window), layer_types=(FULL, SLIDING))


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
    `batch_size` counts questions per forward.
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
        batch_size: int = 32,
    ) -> None:
        if not items:
            raise DataError("no items to score", "the data file is empty")
        if mode not in ("loglik", "letter"):
            raise DataError(f"--mode '{mode}': unknown", "use loglik or letter")
        self.items = list(items)
        self.mode = mode
        self.batch_size = max(1, int(batch_size))
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
        self.batches = [
            pack_batch(
                [self.encoded[i] for i in order[s : s + self.batch_size]],
                s, self.n_choices, pad,
            )
            for s in range(0, n, self.batch_size)
        ]
        self._unpacked: dict[int, PackedBatch] = {}  # batch index -> its unpacked form, lazily
        self._dict_refused: set[type] = set()  # decoder classes that refused per-type masks
        #: per batch of the last `score`: "packed", "windowed" or "unpacked" (for tests/reports)
        self.last_paths: list[str] = []

    def _encode(self, item: Item) -> Encoded:
        if item.partial is not None:
            return encode_partial(self.builder.encode_partial(item))
        ctx, conts = self.builder.encode(item)
        return Encoded(tuple(ctx), tuple(tuple(c) for c in conts))

    @property
    def n_tokens(self) -> int:
        """Tokens fed per full scoring pass (the unique-token count), for reporting."""
        return sum(e.packed_len for e in self.encoded)

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
        """Run the packed forwards on `model` (any HF causal LM) and return per-item scores."""
        import torch

        self.check_context(context_limit(model))
        decoder = model.get_decoder()
        plan = attention_plan(decoder.config)
        dtype = next(model.parameters()).dtype
        n = len(self.items)
        sums = torch.zeros(n * self.n_choices, dtype=torch.float64)
        misses = torch.zeros(n * self.n_choices, dtype=torch.long)  # non-argmax targets
        self.last_paths = []
        with torch.inference_mode(), _maybe_progress(progress, len(self.batches)) as advance:
            for b, batch in enumerate(self.batches):
                lp, hit = self._batch_logprobs(model, decoder, plan, dtype, b, batch)
                sums.index_add_(0, batch.owner, lp.double().cpu())
                misses.index_add_(0, batch.owner, (~hit).long().cpu())
                advance()
        ll = np.empty((n, self.n_choices))
        ll[self.order] = sums.view(n, self.n_choices).numpy()
        greedy = np.empty((n, self.n_choices), dtype=bool)
        greedy[self.order] = misses.view(n, self.n_choices).numpy() == 0
        ids = [it.id for it in self.items]
        return finalize(
            ids, ll, self.mask, self.answer, self.norm_lengths, self.mode, greedy=greedy
        )

    def _batch_logprobs(
        self, model: Any, decoder: Any, plan: AttentionPlan, dtype: Any, b: int,
        batch: PackedBatch,
    ) -> tuple[Any, Any]:
        """(log-probs, greedy hits) of one batch's targets, by the cheapest form that
        reproduces the plain sequence (see module doc)."""
        if plan.pack and (plan.window is None or batch.positions <= plan.window):
            # every query position < window: the window hides nothing, today's exact mask
            self.last_paths.append("packed")
            return _target_scores(model, batch, batch.additive_mask(dtype))
        if plan.pack and type(decoder) not in self._dict_refused:
            local = batch.additive_mask(dtype, plan.window)
            if plan.layer_types == (SLIDING,):
                self.last_paths.append("windowed")
                return _target_scores(model, batch, local)
            masks = {FULL: batch.additive_mask(dtype), SLIDING: local}
            try:
                scores = _target_scores(model, batch, masks)
            except (AttributeError, TypeError, KeyError):
                # a model that reads one mask for all layers fails on the dict (it has no
                # shape); it cannot be given per-layer masks, so it builds its own, unpacked
                self._dict_refused.add(type(decoder))
            else:
                self.last_paths.append("windowed")
                return scores
        if b not in self._unpacked:
            s = b * self.batch_size
            group = [self.encoded[i] for i in self.order[s : s + self.batch_size]]
            self._unpacked[b] = unpack_batch(group, s, self.n_choices, self._pad)
        self.last_paths.append("unpacked")
        return _target_scores(model, self._unpacked[b], None)


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

    device = model.device
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
    logits = model.get_output_embeddings()(picked).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(model.config, "logit_scale", None)
    if isinstance(scale, float):
        logits = logits * scale
    logp = torch.log_softmax(logits, dim=-1)
    target = batch.target.to(device)
    return logp.gather(1, target[:, None])[:, 0], logp.argmax(dim=-1) == target


class _maybe_progress:
    """A rich progress bar with ETA when asked, else a no-op; yields an `advance()` callable."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total, self._bar = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from calmerge.progress import progress_bar

        self._bar = progress_bar(transient=True)
        self._bar.__enter__()
        task = self._bar.add_task("scoring", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
