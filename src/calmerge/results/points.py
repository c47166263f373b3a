"""Stored points as analysis objects: the one bridge from the SQLite store to `analysis/`.

Why here and not in the sweep loop: reports, export and `calmerge results` read finished
points without running a sweep (or loading a model). The analysis modules stay pure — they take
`Point`s and arrays — and this module is the only one that knows how the store lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calmerge.analysis.pareto import Point
from calmerge.errors import StoreError
from calmerge.eval.calibration import reliability_bins
from calmerge.eval.metrics import Metric
from calmerge.io.checkpoint import Checkpoint
from calmerge.results.store import PointRecord, Prediction, ResultStore, RunRecord, round_lam


def load_points(
    store: ResultStore, run_id: int, *, with_correct: bool = True, n_bins: int = 10
) -> list[Point]:
    """Finished points of a run: metrics, reliability bins and per-item correctness per split."""
    out = []
    for rec in store.points(run_id, status="done"):
        raw = store.metrics(rec.id)
        metrics = {s: {k: Metric(*v) for k, v in ms.items()} for s, ms in raw.items()}
        reliability: dict[str, list[dict]] = {}
        correct: dict[str, np.ndarray] = {}
        for split in raw:
            preds = store.predictions(rec.id, split)
            if not preds:
                continue
            conf = np.array([p.confidence for p in preds])
            ok = np.array([p.pred == p.answer for p in preds], dtype=float)
            reliability[split] = reliability_bins(conf, ok, n_bins=n_bins)
            correct[split] = ok
        out.append(
            Point(
                family=rec.family,
                lam=rec.lam,
                metrics=metrics,
                reliability=reliability,
                correct=correct if with_correct else None,
            )
        )
    return out


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
    return StoredPredictions({s: store.predictions(rec.id, s) for s in splits})


def check_models_unchanged(rec: RunRecord, base: Checkpoint, aligned: Checkpoint) -> None:
    """Refuse to act on a run whose parents are no longer the models it measured (re-trained,
    re-downloaded, replaced): its numbers would describe weights that are not the ones written."""
    now = {"base": base.fingerprint(), "aligned": aligned.fingerprint()}
    for role, fingerprint in now.items():
        then = rec.fingerprints.get(role)
        if then is not None and then != fingerprint:
            path = base.path if role == "base" else aligned.path
            raise StoreError(
                f"{path}: the {role} model changed since run {rec.id} measured it"
                f" (fingerprint {then[:12]} then, {fingerprint[:12]} now)",
                "re-run the sweep on the current models (a new run), or restore the old ones",
            )
