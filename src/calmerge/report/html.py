"""The self-contained HTML report and `write_report`, which writes it with its Markdown twin.

Why one file with base64 figures: a report gets mailed, attached to issues and opened from
archives; it must not depend on sibling files or on the network. Why jinja2 with autoescape:
model names, dataset names and meta come from users and files, so every piece of text is
escaped by default rather than by remembering to.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from calmerge.analysis.pareto import Point
from calmerge.analysis.verdict import Verdict
from calmerge.errors import OutputError
from calmerge.eval.metrics import Metric
from calmerge.io.atomic import atomic_write_text
from calmerge.report.content import ReportContent, Table, build_content
from calmerge.report.figures import make_figures
from calmerge.report.markdown import render_markdown

#: figures shown across the full width (several panels side by side)
WIDE = frozenset({"reliability"})


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    figures: dict[str, Path]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: resources.files("calmerge.report").joinpath(name).read_text("utf-8")
        ),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render_html(content: ReportContent, figures: dict[str, Path]) -> str:
    """The report page; every figure is read and embedded as a base64 data URI."""
    figs = [
        {
            "caption": content.caption(key),
            "data": base64.b64encode(path.read_bytes()).decode("ascii"),
            "wide": key in WIDE,
        }
        for key, path in figures.items()
    ]
    return _environment().get_template("template.html").render(c=content, figures=figs)


def _prepare(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"report output '{out_dir}' is a file", "pass a directory with --out")
    try:
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create report folder '{out_dir}': {exc.strerror}",
            "choose a writable --out directory",
        ) from None
    return out_dir


def write_report(
    points: Sequence[Point],
    verdict: Verdict,
    out_dir: Path,
    *,
    title: str,
    meta: dict[str, str],
    temperature_scaled: dict[str, Metric] | None = None,
    examples: Sequence[Table] = (),
    task_verdicts: dict[str, Verdict] | None = None,
    extra_sentences: Sequence[str] = (),
) -> ReportPaths:
    """Write report.html (self-contained), report.md and figures/*.png into `out_dir`;
    `extra_sentences` follow the verdict's (e.g. a budgeted sweep's state)."""
    out_dir = _prepare(out_dir)
    try:
        figures = make_figures(points, verdict, out_dir / "figures", temperature_scaled)
        content = build_content(
            points,
            verdict,
            title=title,
            meta=meta,
            temperature_scaled=temperature_scaled,
            examples=examples,
            task_verdicts=task_verdicts,
        )
        if extra_sentences:
            import dataclasses

            content = dataclasses.replace(
                content, sentences=[*content.sentences, *extra_sentences]
            )
        return write_pages(out_dir, content, figures)
    except OSError as exc:
        raise _unwritable(out_dir, exc) from None


def write_pages(out_dir: Path, content: ReportContent, figures: dict[str, Path]) -> ReportPaths:
    """report.html (figures embedded) and report.md (figures linked) from one content: every
    report kind (λ, simplex, search) is written by this one step."""
    html_path = atomic_write_text(out_dir / "report.html", render_html(content, figures))
    rel = {k: p.relative_to(out_dir).as_posix() for k, p in figures.items()}
    md_path = atomic_write_text(out_dir / "report.md", render_markdown(content, rel))
    return ReportPaths(html=html_path, markdown=md_path, figures=figures)


def _unwritable(out_dir: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"cannot write the report into '{out_dir}': {exc}", "check free space and permissions"
    )
