"""The report: files written atomically, self-contained HTML, escaping, Markdown twin."""

from __future__ import annotations

import dataclasses
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_pareto import HUMP_ACC, HUMP_ECE, synthetic_points

from calmerge.analysis.pareto import Metric, Point
from calmerge.analysis.verdict import verdict
from calmerge.errors import OutputError
from calmerge.report import write_report
from calmerge.report.content import format_metric
from calmerge.report.sentences import verdict_sentences

EVIL = '<script>alert("x")</script>'
FEW = {x: HUMP_ACC[x] for x in (0.0, 0.3, 0.5, 0.7, 1.0, 1.2)}
FEW_ECE = {x: HUMP_ECE[x] for x in FEW}


class Refs(HTMLParser):
    """Collects every tag and every URL-bearing attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "data", "action")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pts = synthetic_points(FEW, FEW_ECE, diversity={x: 0.5 - 0.2 * x for x in FEW})
    ts = {"acc": Metric(0.62, 0.58, 0.66), "ece": Metric(0.045, NAN, NAN)}
    v = verdict(pts, temperature_scaled=ts, n_boot=200)
    out = tmp_path_factory.mktemp("rep") / "nested" / "report"
    reloaded = [dataclasses.replace(p) for p in pts]  # as if read back from the store
    paths = write_report(
        reloaded,
        v,
        out,
        title=f"sweep {EVIL}",
        meta={"base": f"org/{EVIL}", EVIL: "a|b"},
        temperature_scaled=ts,
    )
    return pts, v, out, paths


NAN = float("nan")


def test_files_written(report):
    _, _, out, paths = report
    assert paths.html == out / "report.html" and paths.markdown == out / "report.md"
    assert set(paths.figures) == {
        "acc_vs_ece",
        "acc",
        "ece",
        "brier",
        "nll",
        "diversity",
        "reliability",
    }
    for p in paths.figures.values():
        assert p.parent == out / "figures"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in out.rglob("*") if f.name.startswith(".")]  # no temp files left


def test_html_is_self_contained(report):
    _, _, _, paths = report
    page = paths.html.read_text("utf-8")
    refs = Refs()
    refs.feed(page)
    assert refs.urls and all(u.startswith("data:image/png;base64,") for u in refs.urls)
    assert refs.tags.count("img") == len(paths.figures)
    assert "script" not in refs.tags and "link" not in refs.tags and "iframe" not in refs.tags
    assert not re.search(r"url\(|@import|https?://", page)


def test_everything_is_escaped(report):
    _, _, _, paths = report
    page = paths.html.read_text("utf-8")
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;") >= 3  # title tag, h1, meta key and value
    md = paths.markdown.read_text("utf-8")
    assert "<script" not in md.lower() and "&lt;script&gt;" in md
    assert "a\\|b" in md  # a pipe in a value must not split the table row


def test_verdict_and_table_in_both_formats(report):
    pts, v, out, paths = report
    page = paths.html.read_text("utf-8")
    md = paths.markdown.read_text("utf-8")
    first = verdict_sentences(v)[0]
    assert first.startswith("λ=0.5 is Pareto-superior")
    assert page.index(first) < page.index("<img")  # the verdict comes before the figures
    classes = [set(c.split()) for c in re.findall(r'<tr class="([^"]*)">', page)]
    n_tables = page.count("<caption>")
    assert n_tables == 3  # test, dev, gen
    for role in ("pick", "base", "aligned"):
        assert sum(role in c for c in classes) == n_tables, role
    assert any({"pick", "front"} <= c for c in classes)  # the max-acc pick is on the frontier
    rows = re.findall(r"^\| linear \| ", md, flags=re.M) + re.findall(r"^\| \*\*linear", md, re.M)
    assert len(rows) == len(pts) * n_tables
    for key, path in paths.figures.items():
        rel = path.relative_to(out).as_posix()
        assert f"]({rel})" in md, key
    assert "Temperature scaling of the aligned model" in page
    assert "69.0% [65.0, 73.0]" in page and "69.0% \\[65.0, 73.0\\]" in md


def test_no_dev_wording_reaches_the_report(tmp_path):
    pts = synthetic_points(FEW, FEW_ECE, splits=("test",))
    v = verdict(pts, n_boot=100)
    paths = write_report(pts, v, tmp_path, title="t", meta={})
    assert "same data it is reported on" in paths.html.read_text("utf-8")
    assert set(paths.figures) == {"acc_vs_ece", "acc", "ece", "brier", "nll", "reliability"}


def test_minimal_points_and_missing_metrics(tmp_path):
    # Only acc on test, no reliability, no per-item results: still a report, no crash.
    pts = [
        Point("linear", lam, {"test": {"acc": Metric(a, NAN, NAN), "ece": Metric(e, NAN, NAN)}}, {})
        for lam, a, e in ((0.0, 0.5, 0.05), (0.5, 0.55, 0.06), (1.0, 0.52, 0.09))
    ]
    v = verdict(pts, n_boot=50)
    paths = write_report(pts, v, tmp_path / "r", title="t", meta={"k": "v"})
    assert set(paths.figures) == {"acc_vs_ece", "acc", "ece", "reliability"}
    assert "no per-item results" in paths.html.read_text("utf-8")


def test_output_dir_that_is_a_file(tmp_path):
    pts = synthetic_points(FEW, FEW_ECE, splits=("test",))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        write_report(pts, verdict(pts, n_boot=10), f, title="t", meta={})


def test_format_metric():
    assert format_metric("acc", Metric(0.6333, 0.61, 0.655)) == "63.3% [61.0, 65.5]"
    assert format_metric("ece", Metric(0.0521, NAN, NAN)) == "0.052"
    assert format_metric("ece", Metric(math.nan, 0, 1)) == "–"
    assert format_metric("nll", None) == "–"


def test_existing_report_is_replaced(tmp_path):
    pts = synthetic_points(FEW, FEW_ECE, splits=("test",))
    v = verdict(pts, n_boot=10)
    write_report(pts, v, tmp_path, title="first-title", meta={})
    paths = write_report(pts, v, tmp_path, title="second-title", meta={})
    page = paths.html.read_text("utf-8")
    assert "second-title" in page and "first-title" not in page
    assert Path(paths.html).stat().st_mode & 0o044  # readable by others (not mkstemp's 0600)


def test_model_card_escapes_what_the_user_named():
    """Run names and paths come from the user: the card (rendered by the Hub) must not carry
    their markup, and a recipe path cannot close the YAML fence it is quoted in."""
    from calmerge.io.export import model_card
    from calmerge.report.card import card_metrics

    pts = synthetic_points(HUMP_ACC, HUMP_ECE)
    v = verdict(pts, n_boot=50)
    card = card_metrics(v.pick, run_id=1, run_name="<script>alert(1)</script> | *x*",
                        rule="max-acc", verdict=v)
    assert "<script>" not in card and "&lt;script&gt;" in card and "\\| \\*x\\*" in card
    recipe = {"method": "linear", "models": [{"model": "/data/```\n# Injected heading\n```"}]}
    text = model_card(recipe, base="/data/base")
    fence = next(line for line in text.splitlines() if line.endswith("yaml"))[: -len("yaml")]
    assert len(fence) > 3 and set(fence) == {"`"}
    body = text.split(fence + "yaml\n", 1)[1].split("\n" + fence + "\n", 1)[0]
    assert "Injected heading" in body  # the path is inside the fence, as text
