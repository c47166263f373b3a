"""The report's example tables: sample generations and changed answers, laid out as `Table`s
that both renderers (HTML, Markdown) show the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from calmerge.analysis.examples import ChangedAnswer
from calmerge.eval.metrics import GENERATION_SPLIT
from calmerge.report.content import Row, Table

_MARK = {True: "✓", False: "✗"}


def generations_table(columns: Sequence[str], rows: Sequence[tuple[str, list[list[str]]]]) -> Table:
    """One row per prompt: the prompt, then each model's first samples (one per line)."""
    return Table(
        GENERATION_SPLIT,
        "Sample generations (first two samples)",
        ["prompt", *columns],
        [Row([text, *("\n".join(s) for s in samples)]) for text, samples in rows],
    )


def changed_table(
    split: str, aligned_col: str, pick_col: str, changed: Sequence[ChangedAnswer]
) -> Table:
    """One row per question the pick answers differently: gold, then each answer ✓/✗ (conf)."""
    rows = [
        Row([
            c.question,
            c.gold,
            f"{c.aligned.text} {_MARK[c.aligned.correct]} ({c.aligned.confidence:.2f})",
            f"{c.pick.text} {_MARK[c.pick.correct]} ({c.pick.confidence:.2f})",
        ])
        for c in changed
    ]
    return Table(
        split,
        f"Questions ({split}) the pick answers differently from the aligned model",
        ["question", "answer", aligned_col, pick_col],
        rows,
    )


def example_tables(db: Any, run_id: int, v: Any, *, limit: int = 6) -> list[Table]:
    """Text the report quotes: sample generations of base/aligned/pick, and test questions the
    pick answers differently from the aligned model (what merging changed, item by item)."""
    from calmerge.analysis.examples import changed_answers, sample_generations
    from calmerge.analysis.pareto import point_label
    from calmerge.results.points import point_record, task_splits

    roles = [("base", v.base), ("aligned", v.aligned), ("pick", v.pick)]
    records = [point_record(db, run_id, p.family, p.lam) for _, p in roles]
    cols = [f"{role} ({point_label(p)})" for role, p in roles]
    tables = []
    prompts = db.prompts(run_id)
    if prompts:
        gens = [db.generations(r.id) for r in records]
        tables.append(generations_table(cols, sample_generations(prompts, gens, limit=limit)))
    split = v.report_split
    # a multi-task run keeps items per task ("test@mmlu"): one table per task
    splits = [split] if db.items(run_id, split) else task_splits(
        db.prediction_splits(records[1].id), split
    )
    for s in splits:
        items = db.items(run_id, s)
        aligned_preds = db.predictions(records[1].id, s)
        pick_preds = db.predictions(records[2].id, s)
        if items and aligned_preds and pick_preds:
            changed = changed_answers(items, aligned_preds, pick_preds, limit=limit)
            tables.append(changed_table(s, cols[1], cols[2], changed))
    return tables
