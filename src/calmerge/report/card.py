"""The model card's measured section for an exported sweep point.

Why its own module: the card is report content (what was measured, how the point was picked,
the verdict) that travels with the checkpoint; it reads the same Point and Verdict as the HTML
report, so the two cannot disagree. Every text that comes from the user (run names) is escaped
as the Markdown report escapes it: the card is rendered by the Hub and by editors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calmerge.analysis.pareto import Point
from calmerge.analysis.verdict import Verdict
from calmerge.eval.metrics import METRICS, label_of
from calmerge.report.markdown import md_text
from calmerge.report.sentences import verdict_sentences


def card_metrics(
    point: Point,
    *,
    run_id: int,
    run_name: str,
    rule: str,
    verdict: Verdict,
    figures: Sequence[str] = (),
) -> str:
    """Markdown: how the point was picked, the verdict's sentences, every metric per split (in
    the metric registry's order, by label and name)."""
    head = (f"Picked `{point.family}` λ={point.lam:g} by rule `{rule}` from sweep run {run_id}"
            f" ({md_text(run_name)}).")
    return _card(point, head, verdict_sentences(verdict), figures)


def simplex_card(point: Point, verdict: Any, *, run_id: int, run_name: str) -> str:
    """The measured section of an exported simplex point (`analysis.simplex.SimplexVerdict`):
    its weights, how it was picked, the verdict's sentences, every metric per split."""
    from calmerge.analysis.pareto import point_label
    from calmerge.report.sentences import simplex_sentences

    head = (f"Simplex point `{point.family}` {md_text(point_label(point))} (rule"
            f" `{verdict.rule}`) from sweep run {run_id} ({md_text(run_name)}).")
    return _card(point, head, simplex_sentences(verdict), ())


def _card(point: Point, head: str, sentences: Sequence[str], figures: Sequence[str]) -> str:
    lines = [
        "## Measured by calmerge",
        "",
        head,
        "",
        *[f"- {md_text(s)}" for s in sentences],
        "",
        "| split | metric | value | 95% interval |",
        "|---|---|---|---|",
    ]
    order = {name: i for i, name in enumerate(METRICS)}
    for split, ms in sorted(point.metrics.items()):
        for name, m in sorted(ms.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])):
            interval = "" if math.isnan(m.lo) else f"{m.lo:.4f} – {m.hi:.4f}"
            lines.append(
                f"| {md_text(split)} | {md_text(label_of(name))} (`{name}`) | {m.value:.4f} |"
                f" {interval} |"
            )
    lines += ["", *[f"![{Path(f).stem}]({f})" for f in figures]]
    return "\n".join(lines) + "\n"
