"""Multiple-choice scoring: per-choice continuation log-likelihoods, batched, context shared.

Why it is fast: a question's context is computed once and every choice reads it. Each question is
packed into ONE sequence — context tokens, then each choice's tokens (all but the last, which is
only ever a target) — with a block attention mask (a choice sees the context and its own earlier
tokens, never another choice) and position ids that restart after the context for every choice.
That is exactly the computation of running the context once and each choice from its KV cache,
in a single batched forward and with no cache copies: the tokens processed equal the
"unique-token floor" (each context once plus the choice tokens).

Prompts and token ids are built once in `Scorer.__init__`; `Scorer.score(model)` only runs
forwards, so a sweep that rewrites the weights in place re-scores the same data cheaply.

Numerics: the forward runs in the model's dtype (fp32 or bf16); logits are gathered only at the
positions that predict continuation tokens and the log-softmax is taken in float32. Length
normalisation for acc_norm divides by the choice's character length, as lm-eval 0.4 does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calmerge.errors import DataError
from calmerge.eval.data import Item
from calmerge.eval.metrics import Metric, compute_metrics
from calmerge.eval.prompts import Mode, PromptBuilder, PromptFormat, targets

__all__ = ["Metric", "ScoreResult", "Scorer", "compute_metrics", "finalize"]


@dataclass(frozen=True)
class Encoded:
    """One question in tokens: the shared context and one continuation per choice."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]

    @property
    def packed_len(self) -> int:
        """Tokens actually fed to the model: context + each choice without its last token."""
        return len(self.context) + sum(len(c) - 1 for c in self.continuations)

    @property
    def positions_needed(self) -> int:
        """The largest position id used, +1: context plus the longest choice minus one."""
        return len(self.context) + max(len(c) for c in self.continuations) - 1


@dataclass
class PackedBatch:
    """Model inputs for a batch of packed questions plus where to read each target's logit."""

    input_ids: Any  # (B, T) long
    position_ids: Any  # (B, T) long
    allowed: Any  # (B, 1, T, T) bool, True where a query may attend a key
    rows: Any  # (N,) batch row of each target
    cols: Any  # (N,) position whose logits predict the target
    target: Any  # (N,) target token id
    owner: Any  # (N,) flat index question*C + choice that the target belongs to
    _masks: dict[Any, Any] = field(default_factory=dict)

    def additive_mask(self, dtype: Any) -> Any:
        """The float mask the attention adds (0 / dtype-min); cached per dtype."""
        import torch

        if dtype not in self._masks:
            mask = torch.zeros(self.allowed.shape, dtype=dtype)
            mask.masked_fill_(~self.allowed, torch.finfo(dtype).min)
            self._masks[dtype] = mask
        return self._masks[dtype]


def pack_batch(
    encoded: Sequence[Encoded], first_question: int, n_choices_max: int, pad_id: int
) -> PackedBatch:
    """Pack questions into right-padded rows with block masks and restarting positions.

    Padding tokens attend only to themselves so no softmax row is empty (which would give NaNs);
    their outputs are never read.
    """
    import torch

    width = max(e.packed_len for e in encoded)
    b = len(encoded)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    seg = torch.full((b, width), -1, dtype=torch.long)
    rows, cols, tgt, owner = [], [], [], []
    for r, enc in enumerate(encoded):
        lc = len(enc.context)
        ids[r, :lc] = torch.tensor(enc.context)
        pos[r, :lc] = torch.arange(lc)
        seg[r, :lc] = 0
        start = lc
        for j, cont in enumerate(enc.continuations):
            body = cont[:-1]
            n = len(body)
            if n:
                ids[r, start : start + n] = torch.tensor(body)
                pos[r, start : start + n] = torch.arange(lc, lc + n)
                seg[r, start : start + n] = j + 1
            reads = [lc - 1, *range(start, start + n)]
            rows += [r] * len(cont)
            cols += reads
            tgt += list(cont)
            owner += [(first_question + r) * n_choices_max + j] * len(cont)
            start += n
    idx = torch.arange(width)
    causal = idx[None, :] <= idx[:, None]  # (T, T): key <= query
    same = seg[:, :, None] == seg[:, None, :]  # (B, T, T)
    key_ctx = (seg == 0)[:, None, :]
    query_real = (seg >= 0)[:, :, None]
    allowed = causal[None] & ((key_ctx & query_real) | (same & query_real))
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # padding sees itself
    return PackedBatch(
        input_ids=ids,
        position_ids=pos,
        allowed=allowed[:, None],
        rows=torch.tensor(rows),
        cols=torch.tensor(cols),
        target=torch.tensor(tgt),
        owner=torch.tensor(owner),
    )


@dataclass(frozen=True)
class ScoreResult:
    """Per-item scores; arrays are n×C padded to the largest choice count, `mask` marks real ones.

    `choice_logprobs` are summed continuation log-likelihoods (−inf where masked); `probs` is
    the softmax over the offered choices (the model's answer distribution; in letter mode this is
    the option-letter softmax renormalised over the offered letters); `confidence` = max prob.
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

    def __len__(self) -> int:
        return len(self.ids)

    def predictions(self) -> list[dict[str, Any]]:
        """Per-item rows for JSON output / the results store."""
        out = []
        for i, item_id in enumerate(self.ids):
            valid = self.mask[i]
            out.append(
                {
                    "id": item_id,
                    "answer": int(self.answer[i]),
                    "pred": int(self.pred[i]),
                    "pred_norm": int(self.pred_norm[i]),
                    "correct": bool(self.correct[i]),
                    "confidence": float(self.confidence[i]),
                    "logprobs": [float(x) for x in self.choice_logprobs[i][valid]],
                    "probs": [float(x) for x in self.probs[i][valid]],
                }
            )
        return out


def finalize(
    ids: Sequence[str],
    logprobs: np.ndarray,
    mask: np.ndarray,
    answer: np.ndarray,
    norm_lengths: np.ndarray,
    mode: str,
) -> ScoreResult:
    """Scores → predictions: argmax (acc), argmax of ll/char-length (acc_norm), softmax probs.

    Ties go to the first choice, like numpy's argmax in lm-eval.
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
    )


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
            self.norm_lengths[i, : len(it.choices)] = [float(len(t)) for t in targets(it, mode)]
        self.answer = np.array([it.answer for it in self.items])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        order = sorted(range(n), key=lambda i: -self.encoded[i].packed_len)
        self.order = order
        self.batches = [
            pack_batch(
                [self.encoded[i] for i in order[s : s + self.batch_size]],
                s, self.n_choices, pad,
            )
            for s in range(0, n, self.batch_size)
        ]

    def _encode(self, item: Item) -> Encoded:
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

        self.check_context(getattr(model.config, "max_position_embeddings", None))
        n = len(self.items)
        sums = torch.zeros(n * self.n_choices, dtype=torch.float64)
        with torch.inference_mode(), _maybe_progress(progress, len(self.batches)) as advance:
            for batch in self.batches:
                lp = _target_logprobs(model, batch)
                sums.index_add_(0, batch.owner, lp.double().cpu())
                advance()
        sorted_ll = sums.view(n, self.n_choices).numpy()
        ll = np.empty_like(sorted_ll)
        ll[self.order] = sorted_ll
        ids = [it.id for it in self.items]
        return finalize(ids, ll, self.mask, self.answer, self.norm_lengths, self.mode)


def _target_logprobs(model: Any, batch: PackedBatch) -> Any:
    """float32 log p(target) for every target of a packed batch (one forward)."""
    import torch

    device = model.device
    dtype = next(model.parameters()).dtype
    decoder = model.get_decoder()
    out = decoder(
        input_ids=batch.input_ids.to(device),
        position_ids=batch.position_ids.to(device),
        attention_mask=batch.additive_mask(dtype).to(device),
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
    return logp.gather(1, batch.target.to(device)[:, None])[:, 0]


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
