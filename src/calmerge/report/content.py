"""What the report says, independent of how it is rendered (HTML or Markdown).

Why a separate content step: both renderers must show the same numbers, the same verdict and
the same table; building that once as plain strings keeps them from drifting apart. Strings
here are *unescaped* text; each renderer escapes for its own format. Column order, labels,
percent formatting and objective arrows come from the metric registry, like the figures'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from calmerge.analysis.pareto import Point, metric_of, pareto_front, point_label, same_point
from calmerge.analysis.verdict import Verdict
from calmerge.eval.metrics import GENERATION_SPLIT, METRICS, Metric, label_of, scale_of
from calmerge.report.sentences import task_verdict_sentence, verdict_sentences
from calmerge.splits import parse_split, split_key


@dataclass(frozen=True)
class Row:
    """One table row; `tags` mark the pick, the parents and frontier points for highlighting."""

    cells: list[str]
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Table:
    split: str
    caption: str
    columns: list[str]
    rows: list[Row]


@dataclass(frozen=True)
class ReportContent:
    title: str
    meta: list[tuple[str, str]]
    sentences: list[str]
    superior: bool
    tables: list[Table]
    baseline: list[tuple[str, str]] = field(default_factory=list)
    examples: list[Table] = field(default_factory=list)
    #: a multi-task run: one row per task (parents, the pick, the task's own pick) and one
    #: sentence per task's own verdict
    tasks: list[Table] = field(default_factory=list)
    task_sentences: list[str] = field(default_factory=list)
    #: captions of figures the λ report does not draw (a simplex report's), by figure key
    captions: dict[str, str] = field(default_factory=dict)
    legend: str = (
        "Green row: the pick; bold: the parents (λ=0 base, λ=1 aligned); blue: on the Pareto"
        " frontier. Brackets are 95% bootstrap intervals."
    )

    def caption(self, key: str) -> str:
        from calmerge.report.figures import CAPTIONS

        return self.captions.get(key) or CAPTIONS.get(key, key)


def format_metric(name: str, m: Metric | None) -> str:
    """'63.3% [61.0, 65.5]' for metrics shown as percent, '0.052 [0.041, 0.066]' otherwise."""
    if m is None or math.isnan(m.value):
        return "–"
    k = scale_of(name)
    if k != 1.0:
        body, lo, hi = f"{k * m.value:.1f}%", k * m.lo, k * m.hi
        ci = f" [{lo:.1f}, {hi:.1f}]"
    else:
        body, lo, hi = f"{m.value:.3f}", m.lo, m.hi
        ci = f" [{lo:.3f}, {hi:.3f}]"
    return body + (ci if math.isfinite(lo) and math.isfinite(hi) else "")


def metric_columns(points: Sequence[Point], split: str) -> list[str]:
    """Metrics measured on `split`, registry order first (acc, calibration, diversity), then rest."""
    present = {k for p in points for k in p.metrics.get(split, {})}
    known = [k for k in METRICS if k in present]
    return known + sorted(present - set(known))


def split_order(points: Sequence[Point], verdict: Verdict) -> list[str]:
    """Report split first, then the selection split, then the rest (generation split last)."""
    present = {s for p in points for s in p.metrics if parse_split(s)[1] is None}
    first = [verdict.report_split, verdict.select_split]
    rest = sorted(present - set(first), key=lambda s: (s == GENERATION_SPLIT, s))
    return [s for s in dict.fromkeys(first) if s in present] + rest


def points_table(points: Sequence[Point], split: str, verdict: Verdict) -> Table:
    """All points on one split, sorted by family then λ, with their role."""
    metrics = metric_columns(points, split)
    has_acc_ece = all(m in metrics for m in ("acc", "ece"))
    front = (
        {id(p) for p in pareto_front(points, verdict.objectives, split)} if has_acc_ece else set()
    )
    roles = {"pick": verdict.pick, "base": verdict.base, "aligned": verdict.aligned}
    rows = []
    for p in sorted(points, key=lambda q: (q.family != "linear", q.family, q.lam)):
        tags = {role for role, q in roles.items() if same_point(p, q)}
        if id(p) in front:
            tags.add("front")
        role = ", ".join(t if t != "front" else "frontier" for t in sorted(tags, key=_role_order))
        cells = [p.family, f"{p.lam:g}", role]
        cells += [format_metric(m, p.metrics.get(split, {}).get(m)) for m in metrics]
        rows.append(Row(cells=cells, tags=frozenset(tags)))
    if split == verdict.report_split:
        caption = (
            f"All points on {split} (reported split; frontier over {', '.join(verdict.objectives)})"
        )
    elif split == verdict.select_split:
        caption = f"All points on {split} (the split λ was chosen on)"
    elif split == GENERATION_SPLIT:
        caption = "Diversity of sampled generations"
    else:
        caption = f"All points on {split}"
    if not has_acc_ece:
        caption = caption.replace(f"; frontier over {', '.join(verdict.objectives)}", "")
    columns = ["family", "λ", "role"] + [label_of(m) for m in metrics]
    return Table(split=split, caption=caption, columns=columns, rows=rows)


def tasks_table(verdict: Verdict, per_task: dict[str, Verdict]) -> Table:
    """One row per task of a multi-task run: accuracy and ECE of the parents and of the
    aggregate's pick on that task, then the λ the task alone would pick and its verdict."""
    trio = (("base", verdict.base), ("aligned", verdict.aligned), ("pick", verdict.pick))
    rows = []
    for task, tv in per_task.items():
        test = split_key("test", task)
        cells = [task]
        for name in ("acc", "ece"):
            cells += [format_metric(name, metric_of(p, name, test)) for _, p in trio]
        own = tv.pick_is_parent or point_label(tv.pick)
        cells += [own, "yes" if tv.is_superior else "no"]
        rows.append(Row(cells=cells, tags=frozenset({"superior"} if tv.is_superior else ())))
    pick = point_label(verdict.pick)
    columns = ["task", "acc base", "acc aligned", f"acc {pick}", "ECE base", "ECE aligned",
               f"ECE {pick}", "task's own pick", "superior there"]
    caption = (
        f"Per task on test: the parents, the aggregate's pick ({pick}) and the λ each task"
        " alone would pick (same rule, on its own dev split)"
    )
    return Table(split="test", caption=caption, columns=columns, rows=rows)


def _role_order(tag: str) -> int:
    return ("pick", "base", "aligned", "front").index(tag)


def build_content(
    points: Sequence[Point],
    verdict: Verdict,
    *,
    title: str,
    meta: dict[str, str],
    temperature_scaled: dict[str, Metric] | None = None,
    examples: Sequence[Table] = (),
    task_verdicts: dict[str, Verdict] | None = None,
) -> ReportContent:
    """Everything the report shows, as plain (unescaped) strings.

    `examples` are text tables quoted from the data and the models (sample generations,
    questions the pick answers differently); they are escaped like everything else.
    """
    meta_rows = [(str(k), str(v)) for k, v in meta.items()]
    meta_rows += [
        ("pick rule", f"{verdict.rule} (chosen on {verdict.select_split})"),
        ("reported on", verdict.report_split),
        (
            "objectives",
            ", ".join(
                f"{o} {'↑' if METRICS.get(o).higher_is_better else '↓'}" for o in verdict.objectives
            ),
        ),
        ("points", str(len(points))),
    ]
    baseline = []
    if temperature_scaled:
        baseline = [(label_of(k), format_metric(k, m)) for k, m in temperature_scaled.items()]
    return ReportContent(
        title=title,
        meta=meta_rows,
        sentences=verdict_sentences(verdict),
        superior=verdict.is_superior,
        tables=[points_table(points, s, verdict) for s in split_order(points, verdict)],
        baseline=baseline,
        examples=list(examples),
        tasks=[tasks_table(verdict, task_verdicts)] if task_verdicts else [],
        task_sentences=[task_verdict_sentence(t, v) for t, v in (task_verdicts or {}).items()],
    )
