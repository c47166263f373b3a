"""Memory-aware batch sizes for packed multiple-choice scoring (`Scorer(batch_size="auto")`).

Why a model of memory rather than trial and error: the fastest batch is the largest that fits,
and a packed question's cost is very uneven — its attention mask and scores grow with the
square of its length — so one fixed number of questions is either too small for short prompts
or too large for long ones. A small pure estimate (`forward_bytes`) of the peak bytes of one
forward, from the model's config sizes, lets `plan_batches` grow each batch of the
length-sorted questions up to a budget (a fraction of the free memory, `memory_budget`).
The estimate is only a model: a forward that still runs out of memory is split and retried by
the scorer (`is_oom`, `release_memory`), which then keeps the batches that worked.

The constants below are per element of the tensors one forward keeps alive at its peak, under
`torch.inference_mode` (no autograd graph: each layer's intermediates are freed before the next
layer runs, so the peak is one layer's worth and does not grow with the number of layers).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from calmerge.memory import available_bytes

#: copies of a (tokens, hidden) activation alive at a layer's peak: the residual stream, the
#: normed input (and its float32 upcast in RMSNorm for 16-bit models), q/k/v (k/v expanded to
#: every head by `repeat_kv`), the rotary temporaries (q·cos, rotate_half(q)·sin, their sum),
#: the attention output, its transposed copy and the output projection
HIDDEN_COPIES = 12
#: copies of a (tokens, intermediate) activation alive in a gated MLP: act(gate), up, and their
#: product (a plain GPT-2 MLP keeps two)
MLP_COPIES = 3
#: bytes per attention score of an eager or SDPA-math kernel, per (row, head, query, key), by
#: the model's bytes per element: in float32 the scores and their softmax are alive at once;
#: a 16-bit model also keeps the masked scores in its dtype next to their float32 softmax and
#: its cast back (and the CPU's 16-bit matmul upcasts) — measured 6.5 and 9.3 bytes on CPU
SCORE_BYTES = {4: 8, 2: 12}
#: bool bytes per (row, query, key) of our dense masks: the packed `allowed`, the `~allowed`
#: temporary of `masked_fill_`, and the sliding-window intersection
MASK_BOOL_BYTES = 3
#: additive (model-dtype) masks per (row, query, key): the full and the sliding-window one that
#: a model mixing layer types is handed together
MASK_ADDITIVE_COPIES = 2
#: float32 copies of the gathered (targets, vocab) logits alive at once: `.float()` and the
#: log-softmax (besides the head's own output in the model dtype; soft-capping's one extra
#: transient is left to the budget's margin)
LOGIT_F32_COPIES = 2
#: the MLP width when the config does not say (GPT-2's `n_inner=None` means 4 × hidden)
DEFAULT_MLP_RATIO = 4

#: share of the free memory a plan may fill. CUDA: the rest covers the estimate's error,
#: fragmentation of the caching allocator and cuBLAS workspaces. CPU: Linux overcommits, so
#: an over-large CPU batch is usually killed by the OOM killer rather than refused with an
#: exception the scorer could back off from — the CPU plan must be the more cautious one.
CUDA_BUDGET_FRACTION = 0.8
CPU_BUDGET_FRACTION = 0.5
#: most questions per forward: on CPU 32 measured fastest (a forward is
#: compute-bound there and bigger masks only cost memory); on CUDA large batches keep the
#: device busy and the budget is what binds
CPU_MAX_QUESTIONS = 32
CUDA_MAX_QUESTIONS = 512

#: the texts of an out-of-memory RuntimeError: CUDA/MPS ("... out of memory ...") and the CPU
#: allocator ("DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes")
_OOM_TEXTS = ("out of memory", "can't allocate memory")


@dataclass(frozen=True)
class ModelSizes:
    """The sizes of a model that its forward's memory depends on (see `forward_bytes`)."""

    hidden: int
    heads: int
    intermediate: int
    vocab: int
    dtype_bytes: int
    #: bytes of KV cache per token over all layers (2 · layers · kv heads · head dim · dtype)
    kv_bytes: int = 0

    def forward_bytes(self, rows: int, width: int, *, vocab_rows: int = 0,
                      mask: bool = True) -> int:
        """`forward_bytes` with this model's sizes."""
        return forward_bytes(
            rows, width, hidden=self.hidden, heads=self.heads, dtype_bytes=self.dtype_bytes,
            intermediate=self.intermediate, vocab_rows=vocab_rows, vocab=self.vocab, mask=mask,
        )

    def prefix_bytes(self, rows: int, width: int, *, vocab_rows: int = 0) -> int:
        """A shared-prefix batch (`eval.prefix`) of `rows` branches up to `width` positions:
        costed as that many plain rows (the model's own masks; the safe side, since a branch's
        queries are only its own tokens) plus every branch's copy of the KV cache."""
        plain = self.forward_bytes(rows, width, vocab_rows=vocab_rows, mask=False)
        return plain + 2 * rows * width * self.kv_bytes  # the context's cache and its copies


#: the share of the forward budget that a scorer's kept packed batches (their masks) may take
#: on the CPU, where they share memory with the forwards
KEEP_MASKS_FRACTION = 0.25


def mask_bytes(rows: int, width: int, sizes: ModelSizes) -> int:
    """Bytes a kept packed batch holds: its bool block mask and its additive copy."""
    return rows * width * width * (1 + sizes.dtype_bytes)


def forward_bytes(
    rows: int,
    width: int,
    *,
    hidden: int,
    heads: int,
    dtype_bytes: int,
    intermediate: int | None = None,
    vocab_rows: int = 0,
    vocab: int = 0,
    mask: bool = True,
) -> int:
    """Estimated peak bytes of one forward of `rows` sequences of `width` tokens.

    masks        rows·width² · (MASK_BOOL_BYTES + MASK_ADDITIVE_COPIES·dtype_bytes): the dense
                 masks of a packed batch (`mask`), alive for the whole forward; without them (an
                 unpacked batch) the model's own causal mask, rows·width² · (1 + dtype_bytes)
    then the larger of the two stages, which never overlap (a layer's intermediates are freed
    before the head runs, and only the decoder's output reaches it):
    a layer      rows·width · (HIDDEN_COPIES·hidden + MLP_COPIES·intermediate) · dtype_bytes
                 + rows·heads·width² · SCORE_BYTES[dtype_bytes] (the score matrix of an
                 eager/math kernel; a flash or memory-efficient kernel needs less: the safe side)
    the head     vocab_rows·vocab · (dtype_bytes + 4·LOGIT_F32_COPIES), only the positions that
                 predict a target reach it, + the decoder output rows·width·hidden·dtype_bytes
    Weights are not counted: they are resident before the free memory is read. Measured on CPU
    (Llama layout, hidden 512–1024, widths 64–2048, eager and SDPA, fp32 and bf16) the estimate
    was 0.9–1.4× the peak RSS growth with eager attention (small batches, where the BLAS
    workspaces and the allocator add a fixed ~100 MB, near 0.9), and more with SDPA.
    """
    inner = intermediate if intermediate else DEFAULT_MLP_RATIO * hidden
    tokens = rows * width
    pairs = rows * width * width
    per_pair = MASK_BOOL_BYTES + MASK_ADDITIVE_COPIES * dtype_bytes if mask else 1 + dtype_bytes
    masks = pairs * per_pair
    score_bytes = SCORE_BYTES.get(dtype_bytes, max(SCORE_BYTES.values()))
    layer = tokens * (HIDDEN_COPIES * hidden + MLP_COPIES * inner) * dtype_bytes
    layer += pairs * heads * score_bytes
    head = vocab_rows * vocab * (dtype_bytes + 4 * LOGIT_F32_COPIES)
    head += tokens * hidden * dtype_bytes
    return int(masks + max(layer, head))


def _first(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_sizes(model: Any) -> ModelSizes:
    """The sizes `forward_bytes` needs, read from the model's (text) config.

    Multimodal configs keep the decoder's sizes in `text_config` (`get_text_config()`); GPT-2
    style configs name them n_embd / n_head / n_inner. Where the config is silent the embeddings
    say (hidden: the input embedding width; vocab: the output head's rows).
    """
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    if hidden is None:
        hidden = int(model.get_input_embeddings().weight.shape[1])
    heads = _first(text, "num_attention_heads", "n_head") or max(1, hidden // 64)
    inner = _first(text, "intermediate_size", "n_inner") or DEFAULT_MLP_RATIO * hidden
    head = model.get_output_embeddings()
    vocab = _first(text, "vocab_size")
    if head is not None and getattr(head, "weight", None) is not None:
        vocab = int(head.weight.shape[0])  # a resized head can differ from the config
    dtype = next(model.parameters()).dtype
    layers = _first(text, "num_hidden_layers", "n_layer") or 1
    kv_heads = _first(text, "num_key_value_heads") or heads
    head_dim = _first(text, "head_dim") or max(1, hidden // heads)
    kv = 2 * layers * kv_heads * head_dim * int(dtype.itemsize)
    return ModelSizes(hidden, heads, inner, vocab or 0, int(dtype.itemsize), kv)


def model_devices(model: Any) -> list[Any]:
    """Every torch device the model's layers run on: `model.device`, and with a device map
    (`from_pretrained(device_map=...)`) each device it names — activations visit them all.
    Disk and meta (offloaded weights, streamed in by accelerate) hold no activations."""
    import torch

    devices = set()
    for where in [model.device, *(getattr(model, "hf_device_map", None) or {}).values()]:
        if isinstance(where, int):
            where = torch.device("cuda", where)
        elif isinstance(where, str) and where != "disk":
            where = torch.device(where)
        if isinstance(where, torch.device) and where.type != "meta":
            devices.add(where)
    return sorted(devices, key=str) or [torch.device("cpu")]


def memory_budget(model: Any) -> int:
    """Bytes one forward may use: a fraction of the least free memory over the model's devices
    (CUDA_BUDGET_FRACTION on CUDA devices, CPU_BUDGET_FRACTION elsewhere)."""
    budgets = [
        int(available_bytes(d) * (CUDA_BUDGET_FRACTION if d.type == "cuda" else CPU_BUDGET_FRACTION))
        for d in model_devices(model)
    ]
    return min(budgets)


def max_questions(model: Any) -> int:
    """The ceiling on questions per forward: CUDA_MAX_QUESTIONS when the model runs on CUDA
    only, else CPU_MAX_QUESTIONS (a layer on the CPU sets the pace)."""
    if all(d.type == "cuda" for d in model_devices(model)):
        return CUDA_MAX_QUESTIONS
    return CPU_MAX_QUESTIONS


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` says an allocation failed — the one failure a smaller batch can fix.

    torch.OutOfMemoryError (CUDA, and what newer torch raises elsewhere), a RuntimeError with
    an allocator's out-of-memory text (the CPU allocator raises a plain RuntimeError), and
    Python's MemoryError (the token lists of a batch being packed).
    """
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _OOM_TEXTS)


def release_memory(devices: Sequence[Any]) -> None:
    """Free what a failed forward left: collect cycles (a traceback keeps frames and their
    tensors alive) and hand CUDA's cached blocks back, so the retry starts from a clean pool."""
    gc.collect()
    if any(getattr(d, "type", str(d)).startswith("cuda") for d in devices):
        import torch

        torch.cuda.empty_cache()


@dataclass(frozen=True)
class QuestionSize:
    """What one question adds to a forward: `rows` sequences (1 packed, one per choice
    unpacked), all at most `width` tokens, with `targets` logit rows to read."""

    width: int
    rows: int = 1
    targets: int = 0


#: cost(rows, width, targets) -> estimated bytes of one forward
Cost = Callable[[int, int, int], int]


def plan_batches(
    sizes: Sequence[QuestionSize], cost: Cost, budget: float, ceiling: int, start: int = 0
) -> list[tuple[int, int]]:
    """Question ranges [s, e) covering sizes[start:], in order: greedy, each batch grows while
    its estimated cost stays within `budget` and it holds at most `ceiling` questions.

    The batch's width is its longest question's; with questions sorted longest first, later
    batches are narrower and hold more. A question over budget on its own still gets a batch of
    one: the estimate is an estimate, and only a real out-of-memory error says it cannot run.
    """
    out: list[tuple[int, int]] = []
    s, n = start, len(sizes)
    ceiling = max(1, ceiling)
    while s < n:
        rows, width, targets = sizes[s].rows, sizes[s].width, sizes[s].targets
        e = s + 1
        while e < n and e - s < ceiling:
            nxt = sizes[e]
            r, w, t = rows + nxt.rows, max(width, nxt.width), targets + nxt.targets
            if cost(r, w, t) > budget:
                break
            rows, width, targets = r, w, t
            e += 1
        out.append((s, e))
        s = e
    return out
