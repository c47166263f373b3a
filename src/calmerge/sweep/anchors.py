"""The anchor rung: a cheap first look at a merge on a few dev items (`analysis.budget`).

Shared by the per-layer search (`sweep.search`) and the budgeted λ sweep (`sweep --budget`):
both score the parents on all of dev, choose anchor items from the parents' per-item answers,
score each other point on the anchors first, and spend full-dev scoring only where racing says
the frontier could still change. This module owns the anchors as a split of the sweep's task
(its own scorer, tokenised once) and the store rows of the rung: split "anchor" (the anchor
items' plain metrics and per-item predictions) and "estimate" (the weighted full-dev estimate
with its bootstrap interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ANCHOR_SPLIT = "anchor"
ESTIMATE_SPLIT = "estimate"


def default_anchors(n_dev: int) -> int:
    """10% of the dev items, at least 16 (or all of them on a tiny dev split)."""
    return min(n_dev, max(16, round(0.1 * n_dev)))


class AnchorRung:
    """Anchors of one sweep's single task, chosen from the parents' stored dev predictions."""

    def __init__(self, sweep: Any, k: int) -> None:
        self.sweep = sweep
        self.task = sweep.tasks[0]
        self.k = k
        self.anchors: Any = None
        self.scorer: Any = None

    def choose(self, base_id: int, aligned_id: int) -> None:
        """Per item, whether each parent was right and how confident it was (what
        tinyBenchmarks clusters on), stratified by subject when the items carry one and there
        are at least as many anchors as subjects."""
        import dataclasses

        from calmerge.analysis.budget import choose_anchors
        from calmerge.sweep.tasks import scored_bench, task_scorer

        store = self.sweep.store
        cols = []
        for pid in (base_id, aligned_id):
            preds = store.predictions(pid, "dev")
            cols.append(([p.value for p in preds], [p.confidence for p in preds]))
        features = np.column_stack([cols[0][0], cols[1][0], cols[0][1], cols[1][1]])
        dev = scored_bench(self.task, "dev")
        subjects = [getattr(it, "subject", None) for it in dev.items]
        # stratified when every subject can have an anchor of its own; with more subjects
        # than anchors (e.g. fine-grained subject labels) the parents' answers alone decide
        n_sub = len(set(subjects))
        strata = subjects if all(subjects) and 1 < n_sub <= self.k else None
        cfg = self.sweep.cfg
        self.anchors = choose_anchors(features, self.k, strata=strata, seed=cfg.seed)
        items = [dev.items[i] for i in self.anchors.indices]
        self.task.benches[ANCHOR_SPLIT] = dataclasses.replace(dev, items=tuple(items))
        self.scorer = task_scorer(self.task, self.sweep._tokenizer, cfg, items)

    @property
    def size(self) -> int:
        """Anchor items actually chosen (fewer than k when items repeat)."""
        return len(self.anchors.indices)

    def score(self) -> tuple[dict, dict]:
        """The live model on the anchors: (metrics, predictions) by split, for the store."""
        from calmerge.sweep.tasks import score_split

        got = score_split(self.task, ANCHOR_SPLIT, self.scorer.score(self.sweep._model),
                          self.sweep.cfg)
        return ({ANCHOR_SPLIT: got.metrics, ESTIMATE_SPLIT: self._estimate(got.predictions)},
                {ANCHOR_SPLIT: got.predictions})

    def _estimate(self, preds: Sequence[Any]) -> dict[str, tuple[float, float, float]]:
        from calmerge.analysis.budget import estimate

        cfg = self.sweep.cfg
        est = estimate(self.anchors, np.array([p.value for p in preds]),
                       np.array([p.confidence for p in preds]), n_bins=cfg.n_bins,
                       n_boot=200, seed=cfg.seed)
        return {k: (m.value, m.lo, m.hi) for k, m in (("acc", est.acc), ("ece", est.ece))}

    def estimate_of(self, metrics: dict) -> Any:
        """A stored rung's estimate as racing reads it."""
        from calmerge.analysis.budget import Estimate
        from calmerge.eval.metrics import Metric

        m = metrics[ESTIMATE_SPLIT]
        return Estimate(acc=Metric(*m["acc"]), ece=Metric(*m["ece"]), n=self.size)


def exact(acc: float, ece: float, n: int) -> Any:
    """A point scored on all of dev as racing sees it: a zero-width interval."""
    from calmerge.analysis.budget import Estimate
    from calmerge.eval.metrics import Metric

    return Estimate(acc=Metric(acc, acc, acc), ece=Metric(ece, ece, ece), n=n)
