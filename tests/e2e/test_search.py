"""The per-layer search on tiny real models: a genome is mergekit's gradient merge (live
weights equal mergekit run on the exported YAML, both spaces), export, resume after kill -9
without re-evaluating stored candidates, the same seed giving the same frontier."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge as mergekit_run
from mergekit.options import MergeOptions
from safetensors.torch import load_file
from test_sweep import write_items
from tiny import make_model

from calmerge import api
from calmerge.cli import main
from calmerge.config import SearchConfig
from calmerge.eval.loading import load_model
from calmerge.io.models import open_checkpoint
from calmerge.merge.genome import parse_space
from calmerge.merge.mergekit_compat import to_mergekit
from calmerge.sweep.interpolate import LiveInterpolator
from calmerge.sweep.search import candidate_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deep_pair(tmp_path_factory):
    """A 4-layer tiny Llama pair: enough blocks for a gradient to differ per layer."""
    root = tmp_path_factory.mktemp("deep")
    base = make_model(root / "base", seed=0, layers=4)
    aligned = make_model(root / "aligned", seed=1, base=base, scale=0.2, layers=4)
    return base, aligned


@pytest.fixture(scope="module")
def search_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("searchdata")
    return write_items(root / "test.jsonl", 24), write_items(root / "dev.jsonl", 40, offset=100)


@pytest.mark.parametrize(("space", "genome"), [
    ("blocks:3", (0.1, 0.8, 0.35)),
    ("attn-mlp:2", (0.0, 1.0, 0.9, 0.2, 0.5)),
])
def test_a_genome_is_mergekit_s_gradient_merge(deep_pair, tmp_path, space, genome):
    base, aligned = deep_pair
    sp = parse_space(space)
    config = candidate_config(sp, str(base), str(aligned), genome)
    model, _ = load_model(aligned, device="cpu", dtype="float32")
    LiveInterpolator(model, open_checkpoint(base), open_checkpoint(aligned)).apply_config(config)
    live = model.state_dict()
    recipe = yaml.safe_load(yaml.safe_dump(to_mergekit(config)))  # what export writes
    mergekit_run(MergeConfiguration.model_validate(recipe), str(tmp_path / "mk"),
                 MergeOptions(quiet=True))
    theirs = {k: v for f in (tmp_path / "mk").glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(theirs) == set(live)
    assert all(torch.equal(theirs[k], live[k]) for k in theirs)
    # the layers really differ: layer 0 and layer 3 sit at different λ
    b, a = load_file(base / "model.safetensors"), load_file(aligned / "model.safetensors")
    name = "model.layers.{}.mlp.up_proj.weight"
    lam = [((live[name.format(i)] - b[name.format(i)]) / (a[name.format(i)] - b[name.format(i)]))
           .median().item() for i in (0, 3)]
    expected = (genome[0], genome[2]) if space == "blocks:3" else (genome[2], genome[3])
    assert lam == pytest.approx(expected, abs=1e-4)


def _cfg(pair, data, tmp, **kw) -> SearchConfig:
    args = dict(base=str(pair[0]), aligned=str(pair[1]), data=str(data[0]), dev=str(data[1]),
                space="blocks:2", population=4, anchors=6, budget=460, n_boot=50, device="cpu",
                store=str(tmp / "runs.db"), out=str(tmp / "report"))
    args.update(kw)
    return SearchConfig(**args)


@pytest.fixture(scope="module")
def searched(deep_pair, search_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("searched")
    cfg = _cfg(deep_pair, search_data, tmp)
    return cfg, api.search(cfg, progress=False)


def _front(store: str | Path) -> list[tuple]:
    a = api.analyse_search(store, None)
    return [c.genome for c in a.verdict.front]


def test_the_search_spends_its_budget_and_reports(searched):
    cfg, rep = searched
    v = rep.verdict
    assert rep.generations >= 2 and rep.candidates >= 6
    assert v.spent <= cfg.budget and v.front and len(v.lam_points) == v.spent // 40
    assert all("test" in c.point.metrics for c in v.front)
    assert {p.lam for p in v.lam_points} >= {0.0, 1.0}
    text = Path(rep.markdown).read_text()
    assert "Test hypervolume" in text and "λ at every layer" in text and "search blocks:2" in text
    assert {"fronts.png", "profiles.png"} <= {p.name for p in (Path(cfg.out) / "figures").iterdir()}
    # re-running the finished search computes nothing and finds the same frontier
    again = api.search(cfg, progress=False)
    assert again.computed == 0 and _front(cfg.store) == [c.genome for c in v.front]


def test_export_writes_the_candidate_and_its_gradient_recipe(searched, tmp_path, capsys):
    cfg, rep = searched
    pick = rep.verdict.pick
    out = _cli(["export", "--store", cfg.store, "--pick", f"candidate={pick.point_id}", "-o",
                str(tmp_path / "exp")], capsys)
    assert f"b0 {pick.genome[0]:g}".replace("0.", ".") in out
    recipe = tmp_path / "exp" / "mergekit_config.yml"
    assert "weight:" in recipe.read_text() and "merge_method: linear" in recipe.read_text()
    _cli(["merge", str(recipe), "-o", str(tmp_path / "again"), "--quiet"], capsys)
    a = load_file(tmp_path / "exp" / "model.safetensors")
    b = load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and they are the weights the candidate was scored with
    space = parse_space(cfg.space)
    model, _ = load_model(cfg.aligned, device="cpu", dtype="float32")
    LiveInterpolator(model, open_checkpoint(cfg.base), open_checkpoint(cfg.aligned)).apply_config(
        candidate_config(space, cfg.base, cfg.aligned, pick.genome))
    live = model.state_dict()
    assert all(torch.equal(a[k], live[k]) for k in a)


def _cli(argv, capsys) -> str:
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def _candidates(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as c:
            return c.execute("SELECT COUNT(*) FROM points WHERE weights != '' AND status = 'done'"
                             ).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_a_killed_search_resumes_without_re_evaluating(deep_pair, search_data, searched,
                                                       tmp_path):
    cfg0, rep0 = searched
    cfg = _cfg(deep_pair, search_data, tmp_path)
    code = (
        "import sys; sys.path[:0] = [{!r}, {!r}]\n"
        "from calmerge import api; from calmerge.config import SearchConfig\n"
        "api.search(SearchConfig.model_validate_json({!r}), progress=False)\n"
    ).format(str(ROOT / "src"), str(ROOT / "tests"), cfg.model_dump_json())
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = Path(cfg.store)
    deadline = time.time() + 240
    while _candidates(store) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = _candidates(store)
    assert 5 <= stored < rep0.candidates, "the kill came too late to test a resume"
    resumed = api.search(cfg, progress=False)
    # every candidate stored before the kill was read back, not scored again
    assert resumed.candidates == rep0.candidates
    assert resumed.computed <= rep0.computed - stored
    # and the same seed gives the same frontier as the uninterrupted run
    assert _front(cfg.store) == _front(cfg0.store)


# ── sweep --budget ──

def _sweep_cfg(pair, data, tmp, **kw):
    from calmerge.config import SweepConfig

    return SweepConfig(base=str(pair[0]), aligned=str(pair[1]), data=str(data[0]),
                       dev=str(data[1]), refine=False, n_boot=50, device="cpu",
                       store=str(tmp / "runs.db"), out=str(tmp / "report"), **kw)


def test_a_budgeted_sweep_scores_on_anchors_first_and_says_what_it_left(
        deep_pair, search_data, tmp_path):
    full = api.sweep(_sweep_cfg(deep_pair, search_data, tmp_path / "full"), progress=False)
    n_dev, lams = 40, 13  # the default grid and its two extrapolation points
    cheap = api.sweep(_sweep_cfg(deep_pair, search_data, tmp_path / "cheap", budget=400,
                                 anchors=8), progress=False)
    assert cheap.computed < full.computed == lams
    # the λ it did score fully are the full sweep's points exactly (same store rows)
    rows_full = {r["lam"]: r for r in api.results_table(tmp_path / "full" / "runs.db")}
    for r in api.results_table(tmp_path / "cheap" / "runs.db"):
        assert r["dev.acc"] == rows_full[r["lam"]]["dev.acc"]
        assert r["test.ece"] == rows_full[r["lam"]]["test.ece"]
    spent = 2 * n_dev + (lams - 2) * 8 + (cheap.computed - 2) * n_dev
    assert spent <= 400
    assert any(s.startswith("Budgeted sweep:") for s in cheap.sentences)
    # a re-run counts what the store holds against the same budget: nothing more is scored
    again = api.sweep(_sweep_cfg(deep_pair, search_data, tmp_path / "cheap", budget=400,
                                 anchors=8), progress=False)
    assert again.computed == 0
    assert "Budgeted sweep:" in Path(cheap.markdown).read_text()
    # a budget that pays for every λ leaves nothing open and picks as the full sweep does
    rich = api.sweep(_sweep_cfg(deep_pair, search_data, tmp_path / "rich", budget=10**6,
                                anchors=8), progress=False)
    text = next((s for s in rich.sentences if s.startswith("Budgeted sweep:")), None)
    # either racing ruled out what it did not score, or it scored every λ (then no sentence)
    assert (text is None and rich.computed == lams) or "racing ruled each of those out" in text
    assert rich.verdict.pick.lam == full.verdict.pick.lam


def test_without_pymoo_the_search_says_how_to_get_it(deep_pair, search_data, tmp_path,
                                                      monkeypatch):
    import builtins

    from calmerge.errors import ConfigError
    from calmerge.sweep.search import Search

    real = builtins.__import__

    def no_pymoo(name, *a, **kw):
        if name == "pymoo" or name.startswith("pymoo."):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pymoo)
    with pytest.raises(ConfigError, match="needs pymoo") as exc:
        Search(_cfg(deep_pair, search_data, tmp_path))
    assert "calmerge[search]" in exc.value.hint
    assert not (tmp_path / "runs.db").exists()


# ── a diversity objective ──

PROMPT_IDS = [f"p{i}" for i in range(10)]


def _distinct_2(samples: list[str]) -> float:
    """distinct-2 by hand: unique lower-cased word bigrams over all bigrams of the samples."""
    grams = [tuple(w[i:i + 2]) for s in samples for w in [s.lower().split()]
             for i in range(len(w) - 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _diverse_argv(pair, data, tmp: Path) -> list[str]:
    import json

    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"Tell me about fruit {i}."})
                               + "\n" for i in PROMPT_IDS))
    return ["search", "--base", str(pair[0]), "--aligned", str(pair[1]), "--data", str(data[0]),
            "--dev", str(data[1]), "--space", "blocks:2", "--population", "4", "--anchors", "6",
            "--budget", "460", "--objectives", "acc,ece,diversity", "--prompts", str(prompts),
            "--samples", "2", "--max-new-tokens", "8", "--anchor-prompts", "3",
            "--device", "cpu", "--store", str(tmp / "runs.db"), "--out", str(tmp / "report"),
            "--quiet"]


@pytest.fixture(scope="module")
def diverse(deep_pair, search_data, tmp_path_factory):
    """A search with a diversity objective, run from the command line."""
    tmp = tmp_path_factory.mktemp("diverse")
    argv = _diverse_argv(deep_pair, search_data, tmp)
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None)
    return argv, tmp, api.analyse_search(tmp / "runs.db", None).verdict


def test_a_diversity_search_races_on_dev_prompts_and_reports_on_test_prompts(diverse):
    from calmerge.results.store import ResultStore
    from calmerge.sweep.anchors import split_prompt_ids

    _, tmp, v = diverse
    assert v.objectives == ("acc", "ece", "distinct_2") and len(v.ref) == 3
    dev_ids, test_ids = split_prompt_ids(PROMPT_IDS, 0)
    # at most 3 anchor prompts (--anchor-prompts 3); fewer when the parents' per-prompt values
    # repeat (a duplicate anchor would add nothing)
    assert v.n_prompts[0] == v.n_prompts[2] == 5 and 1 <= v.n_prompts[1] <= 3
    db = ResultStore(tmp / "runs.db")

    def mean_over(gens, ids):
        return float(np.mean([_distinct_2(gens[i]) for i in ids]))

    promoted = 0
    for c in v.candidates:
        gens = db.generations(c.point_id)
        est = c.point.metrics["estimate"]["distinct_2"]
        assert est.lo <= est.value <= est.hi
        assert not set(gens) & set(test_ids) or "test" in c.point.metrics
        if c.full:  # every dev prompt sampled, the dev value theirs alone
            promoted += 1
            assert set(dev_ids) <= set(gens)
            assert c.on("dev", "distinct_2") == pytest.approx(mean_over(gens, dev_ids), abs=1e-12)
        else:  # only the anchor prompts, all of them dev prompts
            assert len(gens) == v.n_prompts[1] and set(gens) <= set(dev_ids)
        if "test" in c.point.metrics:
            assert c.on("test", "distinct_2") == pytest.approx(mean_over(gens, test_ids),
                                                               abs=1e-12)
    assert promoted >= 1 and v.front
    lam_ids = {r.lam: r.id for r in db.points(db.run(None).id, status="done") if r.weights is None}
    for p in v.lam_points:  # each half of the prompts, from the λ point's own samples
        gens = db.generations(lam_ids[p.lam])
        assert set(gens) == set(PROMPT_IDS)
        assert p.metrics["dev"]["distinct_2"].value == pytest.approx(mean_over(gens, dev_ids))
        assert p.metrics["test"]["distinct_2"].value == pytest.approx(mean_over(gens, test_ids))
    text = (tmp / "report" / "report.md").read_text()
    assert "distinct-2 ↑" in text and "5 dev and 5 test prompts" in text
    assert "test distinct-2" in text  # the frontier tables' columns


def test_a_diversity_search_resumes_from_the_cli(diverse, capsys):
    argv, tmp, v = diverse
    out = _cli(argv, capsys)
    assert "0 evaluations computed this session" in out, out
    assert _front(tmp / "runs.db") == [c.genome for c in v.front]


def test_a_diversity_search_exports_its_knee_with_its_numbers(diverse, tmp_path, capsys):
    _, tmp, v = diverse
    _cli(["export", "--store", str(tmp / "runs.db"), "--pick", "knee", "-o",
          str(tmp_path / "exp")], capsys)
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "distinct-2 ↑" in card  # the verdict sentence, in three objectives
    assert any(f"Per-layer candidate {c.point_id} " in card for c in v.front)  # a frontier member
    assert (tmp_path / "exp" / "mergekit_config.yml").is_file()
