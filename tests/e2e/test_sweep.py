"""The sweep end to end on tiny real models: in-place θ(λ), resume, refinement, results, export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from calmerge import api
from calmerge.config import SweepConfig
from calmerge.results.store import ResultStore
from calmerge.sweep.runner import refine_lambdas

FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "pear", "plum"]


def write_items(path: Path, n: int, offset: int = 0) -> Path:
    rows = []
    for i in range(n):
        k = (i + offset) % len(FRUITS)
        choices = [FRUITS[(k + j) % len(FRUITS)] for j in range(4)]
        rows.append(
            {
                "id": f"q{offset + i}",
                "question": f"Question {offset + i}: which fruit is number {k}? Answer:",
                "choices": choices,
                "answer": (i * 7) % 4,
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def sweep_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweepdata")
    test = write_items(root / "test.jsonl", 24)
    dev = write_items(root / "dev.jsonl", 16, offset=100)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"id": f"p{i}", "prompt": f"Tell me about fruit {i}."}) for i in range(3))
        + "\n"
    )
    return test, dev, prompts


def _cfg(tiny_pair, sweep_data, tmp_path, **kw) -> SweepConfig:
    base, aligned = tiny_pair
    test, dev, _ = sweep_data
    args = dict(
        base=str(base),
        aligned=str(aligned),
        data=str(test),
        dev=str(dev),
        grid=(0.0, 0.5, 1.0),
        extrapolate=(),
        refine=False,
        n_boot=50,
        store=str(tmp_path / "runs.db"),
        out=str(tmp_path / "report"),
        device="cpu",
    )
    args.update(kw)
    return SweepConfig(**args)


def test_refine_lambdas_halves_intervals_next_to_the_front():
    done = [(0.0, 0.5, 0.1), (0.5, 0.7, 0.2), (1.0, 0.6, 0.3)]
    assert refine_lambdas(done, [True, True, False], resolution=0.05, limit=10) == [0.25, 0.75]
    assert refine_lambdas(done, [False, True, False], resolution=0.05, limit=1) == [0.25]
    assert refine_lambdas(done, [True, False, False], resolution=0.1, limit=10) == [0.2]  # snapped
    assert refine_lambdas(done, [False, False, False], resolution=0.05, limit=10) == []
    assert refine_lambdas(done, [True, True, True], resolution=0.3, limit=10) == []


def test_sweep_resumes_and_never_recomputes(tiny_pair, sweep_data, tmp_path):
    cfg = _cfg(tiny_pair, sweep_data, tmp_path)
    first = api.sweep(cfg, progress=False)
    assert (first.computed, first.skipped) == (3, 0)
    second = api.sweep(cfg, progress=False)
    assert (second.computed, second.skipped) == (0, 3)
    assert first.run_id == second.run_id
    # a wider grid on the same config extends the same run
    third = api.sweep(cfg.model_copy(update={"grid": (0.0, 0.25, 0.5, 1.0)}), progress=False)
    assert (third.computed, third.skipped, third.run_id) == (1, 3, first.run_id)
    rows = api.results_table(cfg.store)
    assert [r["lam"] for r in rows] == [0.0, 0.25, 0.5, 1.0]
    for r in rows:
        assert 0.0 <= r["test.acc"] <= 1.0 and 0.0 <= r["dev.ece"] <= 1.0
        assert r["test.acc_lo"] <= r["test.acc"] <= r["test.acc_hi"]
    assert first.html.is_file() and first.markdown.is_file()


def test_results_csv_and_json(tiny_pair, sweep_data, tmp_path):
    cfg = _cfg(tiny_pair, sweep_data, tmp_path, grid=(0.0, 1.0))
    api.sweep(cfg, progress=False)
    rows = api.results_table(cfg.store)
    text = api.write_results(rows, "csv", tmp_path / "r.csv")
    assert text.splitlines()[0].startswith("run,family,lam,")
    assert (tmp_path / "r.csv").read_text() == text
    data = json.loads(api.write_results(rows, "json", None))
    assert [d["lam"] for d in data] == [0.0, 1.0]


@pytest.fixture(scope="module")
def extended_pair(tiny_pair, tmp_path_factory):
    """The tiny base and an aligned model that added three special tokens (chat fine-tunes do)."""
    from tiny import make_model

    base = tiny_pair[0]
    return base, make_model(tmp_path_factory.mktemp("ext") / "a", seed=4, base=base, extra_vocab=3)


@pytest.mark.parametrize(
    "family,lams,pair",
    [("linear", (0.3, 1.2, -0.5), "tiny_pair"), ("linear", (0.6, 1.1), "extended_pair"),
     ("slerp", (0.4,), "tiny_pair"), ("ties", (0.7,), "tiny_pair"),
     ("dare_ties", (0.5,), "extended_pair"), ("dare_linear", (1.1,), "tiny_pair"),
     ("task_arithmetic", (0.8,), "tiny_pair")],
)
@pytest.mark.parametrize("parents", ["resident", "streamed"])
def test_sweep_point_weights_equal_merge_engine(request, tmp_path, family, lams, pair, parents):
    """The in-place θ(λ) of the sweep and `calmerge merge` at the same λ are the same weights —
    also the rows an aligned model added to the vocabulary, which only it has — whether the
    parents are held in memory or read from disk per point."""
    from calmerge.eval.loading import load_model
    from calmerge.io.models import open_checkpoint
    from calmerge.merge.engine import merge_pair
    from calmerge.sweep.interpolate import LiveInterpolator

    base, aligned = request.getfixturevalue(pair)
    model, _ = load_model(str(aligned), dtype="float32", device="cpu")
    interp = LiveInterpolator(
        model, open_checkpoint(base), open_checkpoint(aligned), density=0.6, seed=3,
        parents=parents,
    )
    assert interp.placement.where == {"resident": "device", "streamed": "disk"}[parents]
    for lam in lams:
        interp.apply(family, lam)
        out = merge_pair(base, aligned, lam, tmp_path / f"{family}{lam}", method=family,
                         density=0.6, seed=3)
        merged = load_file(out / "model.safetensors")
        live = dict(model.named_parameters())
        assert set(live) <= set(merged)
        for name, param in live.items():
            assert torch.equal(param.detach(), merged[name]), name


def test_sweep_families_and_diversity(tiny_pair, sweep_data, tmp_path):
    _, _, prompts = sweep_data
    cfg = _cfg(
        tiny_pair, sweep_data, tmp_path, grid=(0.0, 1.0), prompts=str(prompts), samples=2,
        max_new_tokens=6, embed_diversity=False, families=("linear", "slerp"),
    )
    res = api.sweep(cfg, progress=False)
    assert res.computed == 4
    rows = api.results_table(cfg.store)
    assert {r["family"] for r in rows} == {"linear", "slerp"}
    assert all(0.0 <= r["gen.distinct_2"] <= 1.0 for r in rows)
    db = ResultStore(cfg.store)
    pt = db.points(res.run_id, status="done")[0]
    gens = db.generations(pt.id)
    assert sorted(gens) == ["p0", "p1", "p2"] and all(len(v) == 2 for v in gens.values())


def test_refinement_adds_points(tiny_pair, sweep_data, tmp_path):
    cfg = _cfg(tiny_pair, sweep_data, tmp_path, refine=True, resolution=0.125, max_refine_points=3)
    res = api.sweep(cfg, progress=False)
    assert 3 < res.computed <= 6
    lams = [r["lam"] for r in api.results_table(cfg.store)]
    assert all(math.isclose(x / 0.125, round(x / 0.125)) for x in lams)


def test_export_picked_point(tiny_pair, sweep_data, tmp_path):
    cfg = _cfg(tiny_pair, sweep_data, tmp_path)
    api.sweep(cfg, progress=False)
    out, point = api.export(cfg.store, None, pick="lambda=0.5", out=tmp_path / "export")
    assert point.lam == 0.5
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model is not None
    card = (out / "README.md").read_text()
    assert "λ=0.5" in card and "| test | accuracy (`acc`) |" in card
    assert "](figures/acc_vs_ece.png)" in card and (out / "figures" / "acc_vs_ece.png").is_file()
    assert (out / "figures" / "reliability.png").read_bytes().startswith(b"\x89PNG")


def test_report_escapes_dataset_and_model_text(tiny_pair, tmp_path):
    """`<script>` in a question and in a model's generation comes out inert in HTML and Markdown."""
    evil = "<script>alert('x')</script>"
    rows = [
        {"id": f"e{i}", "question": f"{evil} question {i}?", "choices": [f"a{i}", f"b{i} {evil}"],
         "answer": i % 2}
        for i in range(12)
    ]
    data = tmp_path / "evil.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": f"Say {evil}"}) + "\n")
    base, aligned = tiny_pair
    cfg = SweepConfig(
        base=str(base), aligned=str(aligned), data=str(data), prompts=str(prompts), grid=(0.0, 0.5, 1.0),
        extrapolate=(), refine=False, samples=2, max_new_tokens=4, embed_diversity=False, n_boot=20,
        store=str(tmp_path / "runs.db"), out=str(tmp_path / "report"), device="cpu", pick="lambda=0.5",
    )
    res = api.sweep(cfg, progress=False)
    db = ResultStore(cfg.store)
    pid = db.points(res.run_id, status="done")[0].id
    with db._tx() as c:  # a model that writes markup
        c.execute("UPDATE generations SET text = ? WHERE point_id = ?", (f"model says {evil}", pid))
    paths = api.report(cfg.store, None, tmp_path / "report").paths
    html_text = paths.html.read_text()
    md_text = paths.markdown.read_text()
    assert "<script" not in html_text.lower() and "<script" not in md_text.lower()
    assert "&lt;script&gt;alert(" in html_text  # the text is shown, escaped
    assert "model says &lt;script&gt;" in html_text
    assert "Sample generations" in html_text


def test_parent_points_sample_exactly_what_eval_of_the_parents_samples(tiny_pair, sweep_data, tmp_path):
    """One generation config for the whole sweep: the λ=0 and λ=1 samples equal `calmerge eval`
    of the base and of the aligned model with the same settings (the sweep's stop ids)."""
    from calmerge.config import EvalConfig
    from calmerge.results.points import point_record

    base, aligned = tiny_pair
    test, _, prompts = sweep_data
    gen = dict(samples=3, max_new_tokens=7, temperature=0.9, top_p=0.95, seed=5)
    cfg = _cfg(tiny_pair, sweep_data, tmp_path, grid=(0.0, 1.0), prompts=str(prompts),
               embed_diversity=False, **gen)
    api.sweep(cfg, progress=False)
    db = ResultStore(cfg.store)
    run = db.run(None)
    stops = tuple(run.config["stop_token_ids"])
    assert stops  # resolved from the parents' generation configs, stored with the run
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"stop at token ids {', '.join(map(str, stops))}" in report
    for lam, model in ((0.0, base), (1.0, aligned)):
        ev = api.evaluate(EvalConfig(model=str(model), data=str(test), prompts=str(prompts),
                                     device="cpu", n_boot=0, embed_diversity=False,
                                     stop_token_ids=stops, **gen)).evaluation
        stored = db.generations(point_record(db, run.id, "linear", lam).id)
        assert stored == ev.samples, lam
        assert db.metrics(point_record(db, run.id, "linear", lam).id)["gen"]["distinct_2"][0] == (
            ev.diversity["distinct_2"]
        )


def test_an_explicit_grid_is_what_is_evaluated():
    from calmerge.config import DEFAULT_EXTRAPOLATION, load_sweep_config

    need = {"base": "b", "aligned": "a", "data": "d.jsonl"}
    default = load_sweep_config(None, need)
    assert set(DEFAULT_EXTRAPOLATION) <= set(default.lambdas())  # the default grid extrapolates
    typed = load_sweep_config(None, {**need, "grid": (0.0, 0.5, 1.0)})
    assert typed.lambdas() == (0.0, 0.5, 1.0)
    asked = load_sweep_config(None, {**need, "grid": (0.0, 1.0), "extrapolate": (1.5,)})
    assert asked.lambdas() == (0.0, 1.0, 1.5)
    # stored and reloaded, the resolved choice is kept
    again = SweepConfig.model_validate(typed.model_dump(mode="json"))
    assert again.lambdas() == typed.lambdas()
