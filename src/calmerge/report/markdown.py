"""The Markdown twin of the HTML report: same content, images referenced by relative path.

Why escape here too: Markdown renderers pass raw HTML through, so a dataset or model name such
as `<script>` would be live markup on many viewers; table cells also must not contain `|`.
"""

from __future__ import annotations

import html

from calmerge.report.content import ReportContent, Table


def md_text(text: str) -> str:
    """Escape text for Markdown prose and table cells (HTML specials, pipes, newlines)."""
    out = html.escape(str(text), quote=False)
    for ch in ("\\", "`", "*", "_", "[", "]", "|"):
        out = out.replace(ch, "\\" + ch)
    return out.replace("\r", " ").replace("\n", " ")


def _table(t: Table) -> list[str]:
    lines = [f"**{md_text(t.caption)}**", ""]
    lines.append("| " + " | ".join(md_text(c) for c in t.columns) + " |")
    lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(t.columns))) + "|")
    for r in t.rows:
        cells = [md_text(c) for c in r.cells]
        if "pick" in r.tags:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def render_markdown(content: ReportContent, figures: dict[str, str]) -> str:
    """The report as Markdown; `figures` maps figure key -> path relative to the .md file."""
    lines = [f"# {md_text(content.title)}", ""]
    lines += [
        f"> {md_text(s)}" + ("  " if i < len(content.sentences) - 1 else "")
        for i, s in enumerate(content.sentences)
    ]
    lines += ["", "| | |", "|---|---|"]
    lines += [f"| {md_text(k)} | {md_text(v)} |" for k, v in content.meta]
    lines.append("")
    if content.baseline:
        lines += ["## Post-hoc baseline: aligned model + temperature scaling", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {md_text(k)} | {md_text(v)} |" for k, v in content.baseline]
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for key, rel in figures.items():
            caption = content.caption(key)
            lines += [f"![{md_text(caption)}]({rel})", "", f"*{md_text(caption)}*", ""]
    if content.tasks:
        lines += ["## Per task", ""]
        lines += [f"- {md_text(s)}" for s in content.task_sentences] + [""]
        for t in content.tasks:
            lines += _table(t)
    lines += ["## All points", "", "Bold row: the pick. Brackets are 95% bootstrap intervals.", ""]
    for t in content.tables:
        lines += _table(t)
    if content.examples:
        lines += ["## Examples", ""]
        for t in content.examples:
            lines += _table(t)
    return "\n".join(lines).rstrip() + "\n"
