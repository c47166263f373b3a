"""The store as flat tables: one summary row per run, one row per finished point.

`calmerge runs` and `calmerge results` print or write these; notebooks load them into pandas.
NaN (an interval that could not be computed) is written as an empty CSV cell or JSON null.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from calmerge.errors import ConfigError
from calmerge.results.store import PointRecord, ResultStore, RunRecord
from calmerge.splits import parse_split

FORMATS = ("csv", "json")


def run_summaries(db: ResultStore) -> list[dict[str, Any]]:
    """One row per run: id, name, hash, creation time, points (done/all), families."""
    rows = []
    for run in db.runs():
        pts = db.points(run.id)
        rows.append(
            {
                "id": run.id,
                "name": run.name,
                "hash": run.config_hash,
                "created": run.created,
                "points": len(pts),
                "done": sum(p.status == "done" for p in pts),
                "families": sorted({p.family for p in pts}),
            }
        )
    return rows


#: the `task` of the aggregate rows of a multi-task run
AGGREGATE_TASK = "(all)"


def point_rows(db: ResultStore, rec: RunRecord) -> list[dict[str, Any]]:
    """One row per finished point: run, family, λ, then `split.metric` with `_lo`/`_hi`.

    A multi-task run has one row per (point, task) — `task` names it and its splits drop the
    "@task" suffix, so every row has the same `test.acc`, `dev.acc`, … columns — plus one row
    per point for the aggregate over tasks (task "(all)", with the diversity metrics).
    """
    rows = []
    for pt in db.points(rec.id, status="done"):
        by_task: dict[str | None, dict[str, Any]] = {}
        for key, ms in sorted(db.metrics(pt.id).items()):
            split, task = parse_split(key)
            row = by_task.setdefault(task, {"run": rec.id, "family": pt.family, **_where(pt)})
            for name, (v, lo, hi) in sorted(ms.items()):
                row[f"{split}.{name}"] = v
                row[f"{split}.{name}_lo"] = lo
                row[f"{split}.{name}_hi"] = hi
        if set(by_task) == {None}:
            rows.append(by_task[None])
            continue
        for task in sorted(by_task, key=lambda t: (t is None, t or "")):
            row = by_task[task]
            head = {k: row.pop(k) for k in ["run", "family", *_where(pt)]}
            rows.append({**head, "task": AGGREGATE_TASK if task is None else task, **row})
    return rows


def _where(pt: PointRecord) -> dict[str, float]:
    """Where a point sits: `lam`, or a simplex point's `w.<model>` weight columns."""
    if pt.weights is None:
        return {"lam": pt.lam}
    return {f"w.{name}": w for name, w in pt.weights}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"--format '{fmt}': unknown", "use csv or json")
    return fmt


def serialise(rows: list[dict[str, Any]], fmt: str) -> str:
    """Rows as CSV (columns in first-seen order) or indented JSON."""
    check_format(fmt)
    if fmt == "json":
        clean = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in rows
        ]
        return json.dumps(clean, indent=2)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
