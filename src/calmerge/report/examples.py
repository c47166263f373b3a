"""The report's example tables: sample generations and changed answers, laid out as `Table`s
that both renderers (HTML, Markdown) show the same way."""

from __future__ import annotations

from collections.abc import Sequence

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
