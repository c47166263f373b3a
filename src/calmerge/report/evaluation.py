"""The files `calmerge eval --output` writes: a results JSON and a reliability diagram.

Both go through `io.atomic`, so an interrupted run leaves the previous file or none, never half.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calmerge.eval.metrics import Metric
from calmerge.io.atomic import atomic_write_text
from calmerge.report.figures import reliability_one, save_png


def _clean(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def write_eval_json(
    path: Path,
    *,
    config: dict[str, Any],
    metrics: dict[str, Metric],
    reliability: Sequence[dict[str, float]],
    diversity: dict[str, float] | None,
    predictions: list[dict[str, Any]],
    samples: dict[str, list[str]] | None,
    seconds: float,
    notes: Sequence[str] = (),
    breakdown: dict[str, dict[str, Metric]] | None = None,
) -> Path:
    """Everything one evaluation measured, non-finite numbers as null. `breakdown`: lm-eval's
    metrics of every task and group under an lm-eval group; `notes`: how they were made."""

    def table(ms: dict[str, Metric]) -> dict[str, dict[str, Any]]:
        return {k: {n: _clean(v) for n, v in m.as_dict().items()} for k, m in ms.items()}

    payload = {
        "config": config,
        "metrics": table(metrics),
        "notes": list(notes),
        "breakdown": {task: table(ms) for task, ms in (breakdown or {}).items()},
        "reliability": [{k: _clean(v) for k, v in b.items()} for b in reliability],
        "diversity": diversity,
        "predictions": predictions,
        "samples": samples,
        "seconds": seconds,
    }
    return atomic_write_text(path, json.dumps(payload, indent=1))


def write_eval_diagram(
    path: Path, model: str, ece: Metric, reliability: Sequence[dict[str, float]]
) -> Path:
    """The reliability diagram of one evaluated model, titled with its ECE and interval."""
    title = f"{Path(model).name}: ECE {ece.value:.3f} [{ece.lo:.3f}, {ece.hi:.3f}]"
    return save_png(reliability_one(reliability, title), path)
