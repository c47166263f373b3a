"""Embedding diversity end to end: a sweep on the tiny pair with embed_diversity=True stores
`embed_distance` for every point, Pareto takes it as an objective under that name, and the
report draws and tabulates it.

Why end to end: the drift this guards against (diversity storing `embed_distance`, Pareto and
the figures looking for `embed_div`) passed every unit test of each part; only the whole path
from the sweep through the store to the report shows the name agreeing everywhere.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from calmerge import api
from calmerge.analysis.pareto import default_objectives
from calmerge.analysis.verdict import verdict
from calmerge.config import SweepConfig
from calmerge.eval.metrics import GENERATION_SPLIT, METRICS, diversity_candidates
from calmerge.report.figures import diversity_panels, diversity_vs_lambda
from calmerge.results.store import ResultStore

EMBED = "embed_distance"


@pytest.fixture(scope="module")
def swept(tiny_pair, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    fruits = ["apple", "banana", "cherry", "grape", "lemon"]
    items = [
        {"id": f"q{i}", "question": f"Question {i}: fruit number {i % 5}? Answer:",
         "choices": [fruits[(i + j) % 5] for j in range(3)], "answer": i % 3}
        for i in range(12)
    ]
    (root / "test.jsonl").write_text("\n".join(json.dumps(r) for r in items) + "\n")
    (root / "prompts.jsonl").write_text(
        "\n".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about fruit {i}."})
                  for i in range(2)) + "\n"
    )
    base, aligned = tiny_pair
    cfg = SweepConfig(
        base=str(base), aligned=str(aligned), data=str(root / "test.jsonl"),
        prompts=str(root / "prompts.jsonl"), grid=(0.0, 0.5, 1.0), extrapolate=(), refine=False,
        samples=3, max_new_tokens=6, embed_diversity=True, n_boot=20,
        store=str(root / "runs.db"), out=str(root / "report"), device="cpu",
    )
    res = api.sweep(cfg, progress=False)
    return cfg, res


def test_embed_distance_is_stored_for_every_point(swept):
    cfg, res = swept
    db = ResultStore(cfg.store)
    done = db.points(res.run_id, status="done")
    assert sorted(p.lam for p in done) == [0.0, 0.5, 1.0]
    for p in done:
        value, _, _ = db.metrics(p.id)[GENERATION_SPLIT][EMBED]
        assert 0.0 <= value <= 2.0  # a mean cosine distance


def test_embed_distance_is_a_default_objective_in_its_rank(swept):
    _, res = swept
    points = res.verdict.pick, res.verdict.base, res.verdict.aligned
    # the default third objective is the best-ranked diversity metric every point has
    measured = [s.name for s in diversity_candidates()
                if all(s.name in p.metrics.get(GENERATION_SPLIT, {}) for p in points)]
    assert EMBED in measured
    assert res.verdict.objectives == ("acc", "ece", measured[0])
    # without the distinct-n metrics it is embedding diversity that is chosen
    no_distinct = [
        dataclasses.replace(p, metrics={
            **p.metrics,
            GENERATION_SPLIT: {k: m for k, m in p.metrics[GENERATION_SPLIT].items()
                               if not k.startswith("distinct_")},
        })
        for p in points
    ]
    assert default_objectives(no_distinct, "test") == ("acc", "ece", EMBED)
    # and asked for by name, it is accepted and judged on
    v = verdict(list(points), objectives=("acc", "ece", EMBED), n_boot=20)
    assert v.objectives == ("acc", "ece", EMBED)


def test_the_report_draws_and_tabulates_embed_distance(swept):
    _, res = swept
    points = [res.verdict.pick, res.verdict.base, res.verdict.aligned]
    panels = diversity_panels(points, "test")
    assert EMBED in panels
    assert panels == sorted(panels, key=lambda n: METRICS.get(n).diversity_rank)
    fig = diversity_vs_lambda(points, panels, "test")
    label = METRICS.get(EMBED).label
    assert any(ax.get_title().startswith(label) for ax in fig.axes)
    md = res.markdown.read_text("utf-8")
    assert "diversity.png" in md and label in md  # the figure and the generation table's column
