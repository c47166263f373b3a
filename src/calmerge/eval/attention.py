"""Which attention masks a model's layers need, read from its config without naming models.

Why a module of its own: the packed scoring form replaces the model's masks in every layer, so
it must know which layers slide and how far (`eval.score` module doc: local attention). This is
that reading — pure, from the config alone — shared by the scorer and the batch planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
