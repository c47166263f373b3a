"""Stored points as analysis objects: the one bridge from the SQLite store to `analysis/`.

Why here and not in the sweep loop: reports, export and `calmerge results` read finished
points without running a sweep (or loading a model). The analysis modules stay pure — they take
`Point`s and arrays — and this module is the only one that knows how the store lays them out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from calmerge.analysis.pareto import Point
from calmerge.errors import StoreError
from calmerge.eval.calibration import reliability_bins
from calmerge.eval.metrics import Metric
from calmerge.io.checkpoint import Checkpoint
from calmerge.results.store import (
    PointRecord,
    Prediction,
    ResultStore,
    RunRecord,
    round_lam,
)
from calmerge.splits import parse_split


def load_points(
    store: ResultStore, run_id: int, *, with_correct: bool = True, n_bins: int = 10,
    aggregate: str = "macro",
) -> list[Point]:
    """Finished points of a run: metrics, reliability bins and per-item accuracy per split.

    A multi-task run stores items per task ("test@mmlu"); its aggregate split ("test") is
    given the items of all its tasks, weighted as `aggregate` (macro/micro) weighs the tasks
    and stratified by task, with reliability bins pooled over the tasks that have gold.
    """
    from calmerge.eval.aggregate import item_weights

    out = []
    for rec in store.points(run_id, status="done"):
        raw = store.metrics(rec.id)
        metrics = {s: {k: Metric(*v) for k, v in ms.items()} for s, ms in raw.items()}
        reliability: dict[str, list[dict]] = {}
        correct: dict[str, np.ndarray] = {}
        weights: dict[str, np.ndarray] = {}
        strata: dict[str, np.ndarray] = {}
        stored = {s: store.predictions(rec.id, s) for s in store.prediction_splits(rec.id)}
        for split in raw:
            names = [split] if split in stored else task_splits(stored, split)
            parts = [stored[k] for k in names]
            if not parts or not all(parts):
                continue
            values = [np.array([p.value for p in ps]) for ps in parts]
            own = [np.array([1.0 if p.weight is None else p.weight for p in ps]) for ps in parts]
            correct[split] = np.concatenate(values)
            w = item_weights(own, aggregate)
            if len(parts) > 1 or not np.allclose(w, w[0]):
                weights[split] = w
            if len(parts) > 1:
                strata[split] = np.concatenate([np.full(len(v), i) for i, v in enumerate(values)])
            gold = [ps for ps, k in zip(parts, names, strict=True) if "ece" in raw.get(k, {})]
            if gold:
                conf = np.array([p.confidence for ps in gold for p in ps])
                ok = np.array([p.pred == p.answer for ps in gold for p in ps], dtype=float)
                reliability[split] = reliability_bins(conf, ok, n_bins=n_bins)
        out.append(
            Point(
                family=rec.family,
                lam=rec.lam,
                mix=rec.weights,
                metrics=metrics,
                reliability=reliability,
                correct=correct if with_correct else None,
                weights=weights if with_correct else None,
                strata=strata if with_correct else None,
            )
        )
    return out


def task_splits(splits: Iterable[str], split: str) -> list[str]:
    """The per-task splits ("test@arc", "test@mmlu", sorted) an aggregate split is made of."""
    return sorted(k for k in splits if parse_split(k)[0] == split and parse_split(k)[1])


def point_record(store: ResultStore, run_id: int, family: str, lam: float) -> PointRecord | None:
    """The finished stored point (family, λ) of a run, or None."""
    key = round_lam(lam)
    return next(
        (
            p
            for p in store.points(run_id, status="done")
            if p.family == family and round_lam(p.lam) == key
        ),
        None,
    )


@dataclass(frozen=True)
class StoredPredictions:
    """Per-item predictions of one stored point, split by split (empty where not scored)."""

    by_split: dict[str, list[Prediction]]

    def get(self, split: str) -> list[Prediction]:
        return self.by_split.get(split, [])


def point_predictions(
    store: ResultStore, run_id: int, family: str, lam: float, splits: tuple[str, ...]
) -> StoredPredictions | None:
    """The stored per-item predictions of point (family, λ) on `splits`; None if not finished."""
    rec = point_record(store, run_id, family, lam)
    if rec is None:
        return None
    return StoredPredictions({s: _split_predictions(store, rec.id, s) for s in splits})


def _split_predictions(store: ResultStore, point_id: int, split: str) -> list[Prediction]:
    """A split's predictions; for the aggregate split of a multi-task run, those of its tasks
    that have gold, one after another (what pooled calibration is computed over)."""
    preds = store.predictions(point_id, split)
    if preds:
        return preds
    metrics = store.metrics(point_id)
    return [
        p
        for key in task_splits(store.prediction_splits(point_id), split)
        if "ece" in metrics.get(key, {})
        for p in store.predictions(point_id, key)
    ]


def check_models_unchanged(
    rec: RunRecord, *models: Checkpoint, names: Sequence[str] = ("base", "aligned")
) -> None:
    """Refuse to act on a run whose parents are no longer the models it measured (re-trained,
    re-downloaded, replaced): its numbers would describe weights that are not the ones written.
    `names`: the fingerprints' keys, in the order of `models` (a simplex sweep's model names)."""
    for role, ckpt in zip(names, models, strict=True):
        fingerprint = ckpt.fingerprint()
        then = rec.fingerprints.get(role)
        if then is not None and then != fingerprint:
            raise StoreError(
                f"{ckpt.path}: the {role} model changed since run {rec.id} measured it"
                f" (fingerprint {then[:12]} then, {fingerprint[:12]} now)",
                "re-run the sweep on the current models (a new run), or restore the old ones",
            )


def budget_status(
    store: ResultStore, run_id: int, family: str = "linear",
    objectives: Sequence[str] = ("acc", "ece"),
) -> dict | None:
    """What a budgeted sweep (`sweep --budget`) left: the λ points looked at on anchor items
    only, and which of them racing could not rule out (they might be on the frontier). Read
    from the store, so a report is current however many sessions the sweep took. None when no
    point of the run was scored on anchors only."""
    from calmerge.analysis.budget import promising
    from calmerge.sweep.anchors import ESTIMATE_SPLIT, exact

    pts = [p for p in store.points(run_id) if p.family == family and p.weights is None]
    scouted = {p.lam: store.metrics(p.id) for p in pts if p.status != "done"}
    scouted = {lam: m for lam, m in scouted.items() if ESTIMATE_SPLIT in m}
    if not scouted:
        return None
    done = {p.lam: store.metrics(p.id) for p in pts if p.status == "done"}
    done = {lam: m for lam, m in done.items() if "dev" in m}
    n_dev = len(store.items(run_id, "dev"))
    field_ = [*done, *scouted]
    known = [exact(done[x]["dev"]["acc"][0], done[x]["dev"]["ece"][0], n_dev) if x in done else
             _estimate(scouted[x][ESTIMATE_SPLIT]) for x in field_]
    open_ = sorted(field_[i] for i in promising(known, tuple(objectives)) if field_[i] in scouted)
    return {"full": len(done), "scouted": len(scouted), "open": open_}


def _estimate(m: dict) -> object:
    from calmerge.analysis.budget import Estimate

    return Estimate(acc=Metric(*m["acc"]), ece=Metric(*m["ece"]), n=0)


@dataclass(frozen=True)
class StoredSearch:
    """A search run's stored points as the search verdict reads them."""

    candidates: list  # analysis.search.Candidate
    lam_points: list[Point]
    test_predictions: dict[int, list[Prediction]]  # id(point) -> its test predictions
    n_dev: int
    n_anchor: int
    #: a diversity objective: id(point) -> its value on each test prompt (the bootstrap's rows)
    test_prompts: dict[int, np.ndarray] | None = None
    n_prompts: tuple[int, int, int] = (0, 0, 0)  # dev, anchor, test prompts


def load_search(store: ResultStore, run_id: int, *, n_bins: int = 10,
                diversity: str | None = None, seed: int = 0) -> StoredSearch:
    """A search run's stored points (`sweep.search`).

    With a diversity objective, each λ point's dev and test value of it are computed from its
    stored samples on the dev and test halves of the prompts (`sweep.anchors.split_prompt_ids`,
    the search's own split), so no number chosen on dev has seen a test prompt; candidates
    stored theirs when they were scored.
    """
    from calmerge.analysis.search import Candidate
    from calmerge.sweep.anchors import ANCHOR_SPLIT, prompt_values, split_prompt_ids

    points = load_points(store, run_id, n_bins=n_bins)
    ids = {r.coord: r.id for r in store.points(run_id, status="done")}
    lam_points = [p for p in points if p.mix is None]
    cands = [Candidate(p, tuple(v for _, v in p.mix), ids[p.coord]) for p in points
             if p.mix is not None]
    if not cands or not any(c.full for c in cands):
        raise StoreError(f"run {run_id} has no fully scored candidate yet",
                         "run or resume the search first")
    test_prompts, n_prompts = None, (0, 0, 0)
    if diversity is not None:
        gens = {p.coord: store.generations(ids[p.coord]) for p in points}
        every = next((g for g in (gens[p.coord] for p in lam_points) if g), {})
        dev_ids, test_ids = split_prompt_ids(list(every), seed)
        lam_points = [_with_prompt_halves(p, diversity, gens[p.coord], dev_ids, test_ids)
                      for p in lam_points]
        test_prompts = {id(p): prompt_values(diversity, gens[p.coord], test_ids)
                        for p in [*lam_points, *(c.point for c in cands)] if "test" in p.metrics}
        scouted = next((c for c in cands if not c.full), None)
        n_anchor_prompts = len(gens[scouted.point.coord]) if scouted else 0
        n_prompts = (len(dev_ids), n_anchor_prompts, len(test_ids))
    test = {id(p): store.predictions(ids[p.coord], "test")
            for p in [c.point for c in cands] + lam_points if "test" in p.metrics}
    n_dev = len(store.items(run_id, "dev"))
    anchor = next((len(store.predictions(c.point_id, ANCHOR_SPLIT)) for c in cands), 0)
    return StoredSearch(cands, lam_points, test, n_dev, anchor, test_prompts, n_prompts)


def _with_prompt_halves(p: Point, metric: str, gens: dict[str, list[str]],
                        dev_ids: Sequence[str], test_ids: Sequence[str]) -> Point:
    """A λ point with `metric` on its dev and test splits, each the mean over that half of the
    prompts of its stored samples (its generation split averages over all prompts)."""
    from calmerge.sweep.anchors import prompt_values

    if not gens:
        return p
    metrics = {k: dict(v) for k, v in p.metrics.items()}
    for split, half in (("dev", dev_ids), ("test", test_ids)):
        if split in metrics:
            value = float(np.mean(prompt_values(metric, gens, half)))
            metrics[split][metric] = Metric(value, float("nan"), float("nan"))
    return dataclasses.replace(p, metrics=metrics)
