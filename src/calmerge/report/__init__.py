"""calmerge.report: the sweep's report (self-contained HTML, Markdown, PNG figures)."""

from calmerge.report.html import ReportPaths, render_html, write_report
from calmerge.report.markdown import render_markdown

__all__ = ["ReportPaths", "render_html", "render_markdown", "write_report"]
