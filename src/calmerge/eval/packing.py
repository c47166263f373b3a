"""The packed token layout of multiple-choice scoring: one sequence per question.

Why a module of its own: this is what makes scoring fast and exact, and it is pure token
bookkeeping — no model. Each question is packed into ONE sequence — context tokens, then each
choice's tokens (all but the last, which is only ever a target) — with a block attention mask
(a choice sees the context and its own earlier tokens, never another choice) and position ids
that restart after the context for every choice. That is exactly the computation of running
the context once and each choice from its KV cache, in a single batched forward and with no
cache copies: the tokens processed equal the "unique-token floor" (each context once plus the
choice tokens). `unpack_batch` lays the same targets out as one plain sequence per choice, the
fallback `eval.score` uses where a model cannot take the packed masks.

Partial scoring (`Item.partial`: lm-eval's multiple-input tasks such as winogrande) has one
context per choice and one shared continuation. It packs the same way: the shared context is the
longest common token prefix of the choices' context tokens, each choice's branch is the rest of
its context followed by the continuation, and only the branch's trailing continuation tokens are
targets (`Encoded.scored`). A branch reads exactly the tokens of its plain sequence context_j +
continuation at the same positions, so the score is lm-eval's loglikelihood of that pair. The
common prefix may be empty (no BOS and contexts that differ from their first token): a branch
then sees only itself, which is still its plain sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Encoded:
    """One question in tokens: the shared context and one continuation (branch) per choice.

    `scored[j]` is how many trailing tokens of branch j are targets; None = all of them (an
    ordinary item, whose branch is the choice's continuation). A partial-scoring item's branch
    starts with the part of its context not shared with the other choices, which the branch
    reads but does not score. With an empty shared context a branch's first token has nothing
    to be predicted from, so it can never be a target.
    """

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]
    scored: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        first = 1 if not self.context else 0  # the earliest branch index that can be a target
        for cont, k in zip(self.continuations, self.n_scored, strict=True):
            if not 1 <= k <= len(cont) - first:
                raise ValueError(f"{k} scored tokens in a branch of {len(cont)} (context "
                                 f"{len(self.context)}): no position predicts them")

    @property
    def n_scored(self) -> tuple[int, ...]:
        """Targets per branch: `scored`, or every token of each branch."""
        if self.scored is None:
            return tuple(len(c) for c in self.continuations)
        return self.scored

    @property
    def packed_len(self) -> int:
        """Tokens actually fed to the model: context + each branch without its last token."""
        return len(self.context) + sum(len(c) - 1 for c in self.continuations)

    @property
    def positions_needed(self) -> int:
        """The largest position id used, +1: context plus the longest branch minus one (for a
        partial item: the longest plain sequence context_j + continuation, minus one)."""
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

    @property
    def positions(self) -> int:
        """The largest position id in the batch, +1 (what a sliding window is compared with)."""
        return int(self.position_ids.max()) + 1

    def additive_mask(self, dtype: Any, window: int | None = None) -> Any:
        """The float mask the attention adds (0 / dtype-min); cached per (dtype, window).

        With `window`, the block mask is intersected with a sliding window counted in position
        ids: a query at position p sees a key at position k only if k > p − window — exactly the
        keys it sees in the unpacked sequence context+choice, whose indices are these positions.
        """
        import torch

        key = (dtype, window)
        if key not in self._masks:
            allowed = self.allowed
            if window is not None:
                pos = self.position_ids
                inside = pos[:, None, :] > pos[:, :, None] - window  # (B, T, T): key > query − w
                allowed = allowed & inside[:, None]
            mask = torch.zeros(allowed.shape, dtype=dtype)
            mask.masked_fill_(~allowed, torch.finfo(dtype).min)
            self._masks[key] = mask
        return self._masks[key]


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all `seqs` share (0 if they differ at the start)."""
    n = min(len(x) for x in seqs)
    for i in range(n):
        tok = seqs[0][i]
        if any(x[i] != tok for x in seqs):
            return i
    return n


def encode_partial(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> Encoded:
    """A partial-scoring item's per-choice (context ids, continuation ids) as one packed question.

    The shared context is the common prefix of the context tokens only — never of context +
    continuation, whose tokens must all be scored under their own choice's context even where
    two choices happen to agree on them. Branch j = its context's remaining tokens + its
    continuation, of which only the continuation is scored.
    """
    contexts = [tuple(c) for c, _ in pairs]
    n = common_prefix_len(contexts)
    branches = tuple(ctx[n:] + tuple(cont) for ctx, (_, cont) in zip(contexts, pairs, strict=True))
    return Encoded(contexts[0][:n], branches, tuple(len(cont) for _, cont in pairs))


def pack_batch(
    encoded: Sequence[Encoded], first_question: int, n_choices_max: int, pad_id: int
) -> PackedBatch:
    """Pack questions into right-padded rows with block masks and restarting positions.

    Padding tokens attend only to themselves so no softmax row is empty (which would give NaNs);
    their outputs are never read. Only each branch's `n_scored` trailing tokens become targets;
    the branch's first token is read at the context's last position, so with an empty context
    (where that position does not exist) the first token is never a target (`Encoded` checks).
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
        if lc:
            ids[r, :lc] = torch.tensor(enc.context)
            pos[r, :lc] = torch.arange(lc)
            seg[r, :lc] = 0
        start = lc
        for j, (cont, k) in enumerate(zip(enc.continuations, enc.n_scored, strict=True)):
            body = cont[:-1]
            n = len(body)
            if n:
                ids[r, start : start + n] = torch.tensor(body)
                pos[r, start : start + n] = torch.arange(lc, lc + n)
                seg[r, start : start + n] = j + 1
            reads = [lc - 1, *range(start, start + n)]  # reads[i] predicts cont[i]
            skip = len(cont) - k  # leading branch tokens that are context, not targets
            rows += [r] * k
            cols += reads[skip:]
            tgt += list(cont[skip:])
            owner += [(first_question + r) * n_choices_max + j] * k
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


def target_owner(encoded: Sequence[Encoded], first_question: int, n_choices_max: int) -> Any:
    """Each target's flat index question·C + choice, in `pack_batch`'s target order (what a
    form that lays the tokens out otherwise, `eval.prefix`, scatters its scores with)."""
    import torch

    owner = []
    for r, enc in enumerate(encoded):
        for j, k in enumerate(enc.n_scored):
            owner += [(first_question + r) * n_choices_max + j] * k
    return torch.tensor(owner)


def unpack_batch(
    encoded: Sequence[Encoded], first_question: int, n_choices_max: int, pad_id: int
) -> PackedBatch:
    """The same targets as `pack_batch`, one right-padded plain sequence per choice.

    Row = context + choice without its last token, positions 0…n−1, no mask of ours: the model
    builds its own causal (and sliding/chunked) masks, as for lm-eval's `hf` model, and the right
    padding is never seen by a real token. `allowed` is None: nothing to pass as a mask.
    For a partial-scoring item the row is exactly lm-eval's context_j + continuation.
    """
    import torch

    seqs, rows, cols, tgt, owner = [], [], [], [], []
    for r, enc in enumerate(encoded):
        lc = len(enc.context)
        for j, (cont, k) in enumerate(zip(enc.continuations, enc.n_scored, strict=True)):
            row = len(seqs)
            skip = len(cont) - k
            seqs.append([*enc.context, *cont[:-1]])
            rows += [row] * k
            cols += range(lc - 1 + skip, lc - 1 + len(cont))
            tgt += list(cont[skip:])
            owner += [(first_question + r) * n_choices_max + j] * k
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(x)
    return PackedBatch(
        input_ids=ids,
        position_ids=torch.arange(width).expand(len(seqs), width),
        allowed=None,
        rows=torch.tensor(rows),
        cols=torch.tensor(cols),
        target=torch.tensor(tgt),
        owner=torch.tensor(owner),
    )
