"""The anchor rung: a cheap first look at a merge on a few dev items (`analysis.budget`).

Shared by the per-layer search (`sweep.search`) and the budgeted λ sweep (`sweep --budget`):
both score the parents on all of dev, choose anchor items from the parents' per-item answers,
score each other point on the anchors first, and spend full-dev scoring only where racing says
the frontier could still change. This module owns the anchors as a split of the sweep's task
(its own scorer, tokenised once) and the store rows of the rung: split "anchor" (the anchor
items' plain metrics and per-item predictions) and "estimate" (the weighted full-dev estimate
with its bootstrap interval).

A search with a diversity objective has a second rung beside the items: anchor *prompts*.
The open-ended prompts are split once into dev and test halves (`split_prompt_ids`); the
parents' per-prompt diversity on the dev prompts chooses anchor prompts the way their per-item
answers choose anchor items, a candidate samples only the anchor prompts at first, and its
full-dev diversity is estimated from them (`analysis.budget.estimate_mean`).
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


def default_anchor_prompts(n_dev_prompts: int) -> int:
    """A quarter of the dev prompts, at least 4: a prompt's value averages K samples, so fewer
    stand for more than items do, and sampling costs more than scoring."""
    return min(n_dev_prompts, max(4, round(0.25 * n_dev_prompts)))


#: the fewest open-ended prompts a diversity search can split into dev and test halves
MIN_PROMPTS = 4


def split_prompt_ids(ids: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """The prompts' ids in two halves, (dev, test), each sorted: a seeded shuffle of the
    sorted ids, the first ⌈n/2⌉ for dev. Depends only on the ids and the seed, so the report
    finds the same halves from the stored generations alone."""
    ordered = sorted(ids)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    half = (len(ordered) + 1) // 2
    return (sorted(ordered[i] for i in perm[:half]), sorted(ordered[i] for i in perm[half:]))


def prompt_values(metric: str, generations: dict[str, list[str]], ids: Sequence[str]) -> np.ndarray:
    """Each prompt's value of a generation metric, for the prompts `ids` of stored samples."""
    from calmerge.eval.metrics import METRICS

    return METRICS.get(metric).prompt_values([generations[i] for i in ids])


class AnchorRung:
    """Anchors of one sweep's single task, chosen from the parents' stored dev predictions."""

    def __init__(self, sweep: Any, k: int, *, diversity: str | None = None,
                 prompts: Sequence[Any] = (), k_prompts: int = 0) -> None:
        self.sweep = sweep
        self.task = sweep.tasks[0]
        self.k = k
        self.anchors: Any = None
        self.scorer: Any = None
        #: a diversity objective: its metric, the dev prompts, anchor prompts chosen among them
        self.diversity = diversity
        self.prompts = list(prompts)
        self.k_prompts = k_prompts
        self.prompt_anchors: Any = None
        self.anchor_prompts: list[Any] = []

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
        if self.diversity:  # per dev prompt, each parent's diversity (from its stored samples)
            ids = [p.id for p in self.prompts]
            feats = np.column_stack([prompt_values(self.diversity, store.generations(pid), ids)
                                     for pid in (base_id, aligned_id)])
            self.prompt_anchors = choose_anchors(feats, self.k_prompts, seed=cfg.seed)
            self.anchor_prompts = [self.prompts[i] for i in self.prompt_anchors.indices]

    @property
    def size(self) -> int:
        """Anchor items actually chosen (fewer than k when items repeat)."""
        return len(self.anchors.indices)

    def score(self) -> tuple[dict, dict, dict]:
        """The live model on the anchors: (metrics, predictions) by split and the samples of
        the anchor prompts by prompt id (a diversity objective; else none), for the store."""
        from calmerge.analysis.budget import estimate_mean
        from calmerge.sweep.tasks import score_split

        got = score_split(self.task, ANCHOR_SPLIT, self.scorer.score(self.sweep._model),
                          self.sweep.cfg)
        metrics = {ANCHOR_SPLIT: dict(got.metrics), ESTIMATE_SPLIT: self._estimate(got.predictions)}
        gens: dict[str, list[str]] = {}
        if self.diversity:
            gens = self.sweep.sample(self.anchor_prompts)
            values = prompt_values(self.diversity, gens, list(gens))
            nan = float("nan")
            metrics[ANCHOR_SPLIT][self.diversity] = (float(np.mean(values)), nan, nan)
            est = estimate_mean(self.prompt_anchors, values, seed=self.sweep.cfg.seed)
            metrics[ESTIMATE_SPLIT][self.diversity] = (est.value, est.lo, est.hi)
        return metrics, {ANCHOR_SPLIT: got.predictions}, gens

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
        others = ((self.diversity, Metric(*m[self.diversity])),) if self.diversity else ()
        return Estimate(acc=Metric(*m["acc"]), ece=Metric(*m["ece"]), n=self.size, others=others)


def exact(acc: float, ece: float, n: int, others: dict[str, float] | None = None) -> Any:
    """A point scored on all of dev as racing sees it: zero-width intervals (`others`: further
    objectives' exact values, e.g. diversity over all dev prompts)."""
    from calmerge.analysis.budget import Estimate
    from calmerge.eval.metrics import Metric

    rest = tuple((k, Metric(v, v, v)) for k, v in (others or {}).items())
    return Estimate(acc=Metric(acc, acc, acc), ece=Metric(ece, ece, ece), n=n, others=rest)


# ── sweep --budget ──

def check_sweep_budget(sweep: Any) -> None:
    """A budget that cannot pay for the parents on all of dev and every other λ on the
    anchors is refused before anything is written."""
    from calmerge.errors import ConfigError
    from calmerge.results.store import round_lam

    cfg = sweep.cfg
    n_dev = len(sweep.tasks[0].scorers["dev"].items)
    k = min(n_dev, cfg.anchors or default_anchors(n_dev))
    others = [x for x in cfg.lambdas() if round_lam(x) not in (0.0, 1.0)]
    need = 2 * n_dev + len(others) * k
    if cfg.budget < need:
        raise ConfigError(
            f"--budget {cfg.budget:,} item-evaluations is less than one look at every"
            f" λ: {need:,} (both parents on all {n_dev} dev items, then {len(others)} λ on"
            f" {k} anchor items each)",
            f"give --budget {need:,} or more, or fewer λ points / --anchors",
        )


def budgeted_sweep(sweep: Any, family: str, lams: Sequence[float], outcome: Any, bar: Any) -> None:
    """`--budget`: the parents on everything, every other λ on the anchor items first, then
    full scoring (dev and test) in order of promise for the λ racing cannot rule out, while
    the dev budget lasts (`analysis.budget`). No refinement: the budget is spent on the grid.
    Whether the racing ended — every λ that could be on the frontier fully scored — is what
    `results.points.budget_status` reads back from the store."""
    import contextlib

    from calmerge.analysis.budget import promising
    from calmerge.errors import StoreError
    from calmerge.results.store import round_lam

    cfg, store, run_id = sweep.cfg, sweep.store, sweep.run.id
    n_dev = len(sweep.tasks[0].scorers["dev"].items)
    bar.add(2 * sweep.work_per_point)
    sweep._run_points(family, [0.0, 1.0], outcome, bar)
    done = sweep.done_ids(family)
    rung = AnchorRung(sweep, min(n_dev, cfg.anchors or default_anchors(n_dev)))
    rung.choose(done[0.0], done[1.0])
    spent = 2 * n_dev
    others = [round_lam(x) for x in lams if round_lam(x) not in (0.0, 1.0)]
    store.add_points(run_id, family, others)
    ids = {p.lam: p.id for p in store.points(run_id) if p.family == family and p.weights is None}
    bar.add(len(others) * rung.size)
    est: dict[float, Any] = {}
    for lam in others:
        metrics = store.metrics(ids[lam])
        if ESTIMATE_SPLIT not in metrics and lam not in done:
            pid = store.claim(run_id, family, lam)
            if pid is not None:  # (held by another live sweep: it will score it)
                try:
                    bar.describe(f"{family} λ={lam:g} on {rung.size} anchor items")
                    sweep._load()
                    sweep._interp.apply(family, lam)
                    m, preds, _ = rung.score()
                    store.save_splits(pid, metrics=m, predictions=preds)
                finally:
                    with contextlib.suppress(StoreError):
                        store.release(pid)
                metrics = store.metrics(pid)
        if ESTIMATE_SPLIT in metrics:
            est[lam] = rung.estimate_of(metrics)
            spent += rung.size  # (read back or scored now: the budget counts it either way)
        bar.advance(rung.size)
    # λ fully scored by an earlier session (a promotion, or a full sweep sharing the run)
    spent += n_dev * sum(lam in done for lam in others)
    while True:
        done = sweep.done_ids(family)
        field_ = [lam for lam in others if lam in done or lam in est] + [0.0, 1.0]
        known = []
        for lam in field_:
            if lam in done:
                dev = store.metrics(done[lam])["dev"]
                known.append(exact(dev["acc"][0], dev["ece"][0], n_dev))
            else:
                known.append(est[lam])
        open_ = [field_[i] for i in promising(known, cfg.objectives or ("acc", "ece"))
                 if field_[i] not in done]
        if not open_ or spent + n_dev > cfg.budget:
            break
        lam = max(open_, key=lambda x: (est[x].acc.value, -est[x].ece.value, -x))
        bar.add(sweep.work_per_point)
        sweep._run_points(family, [lam], outcome, bar)
        spent += n_dev
    outcome.spent = spent
