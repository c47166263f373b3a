"""Sweeps over several checkpoints on tiny real models: a simplex point's live weights equal
`calmerge merge` of the mergekit YAML a user would write for it (3- and 4-model soups, linear
and task arithmetic), the sweep end to end through the CLI (results rows carry the weights,
export, resume, refinement), the report's heat maps rendered in headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_sweep import write_items
from tiny import make_model

from calmerge import api
from calmerge.cli import main
from calmerge.config import SweepConfig
from calmerge.coords import weights_of
from calmerge.eval.loading import load_model
from calmerge.io.models import open_checkpoint
from calmerge.sweep.interpolate import LiveInterpolator


@pytest.fixture(scope="module")
def soup(tiny_pair, tmp_path_factory):
    """base, sft (the shared aligned model), dpo and rlhf: four tiny Llamas of one layout."""
    root = tmp_path_factory.mktemp("soup")
    base, sft = tiny_pair
    dpo = make_model(root / "dpo", seed=2, base=base, scale=0.2)
    rlhf = make_model(root / "rlhf", seed=3, base=base, scale=0.2)
    test = write_items(root / "test.jsonl", 24)
    dev = write_items(root / "dev.jsonl", 16, offset=100)
    return {"base": base, "sft": sft, "dpo": dpo, "rlhf": rlhf, "test": test, "dev": dev,
            "root": root}


def _yaml(path: Path, family: str, models: list[Path], weights: list[float]) -> Path:
    """The mergekit config a user writes by hand for this soup (no calmerge code involved)."""
    lines = [f"merge_method: {family}", f"base_model: {models[0]}", "models:"]
    given = models if family == "linear" else models[1:]
    for m, w in zip(given, weights, strict=True):
        lines += [f"  - model: {m}", "    parameters:", f"      weight: {w}"]
    path.write_text("\n".join([*lines, "dtype: float32", ""]))
    return path


CASES = [
    ("linear", ["base", "sft", "dpo"], [0.2, 0.3, 0.5]),
    ("linear", ["base", "sft", "dpo", "rlhf"], [0.1, 0.2, 0.3, 0.4]),
    ("task_arithmetic", ["base", "sft", "dpo"], [0.6, 0.7]),
    ("task_arithmetic", ["base", "sft", "dpo", "rlhf"], [0.5, 0.25, 1.2]),
]


@pytest.mark.parametrize(("family", "names", "weights"), CASES)
def test_a_simplex_point_equals_calmerge_merge_of_its_yaml(soup, tmp_path, capsys, family, names,
                                                           weights):
    paths = [soup[n] for n in names]
    model, _ = load_model(soup["sft"], device="cpu", dtype="float32")
    held = [open_checkpoint(p) for p in paths]
    interp = LiveInterpolator(model, held[0], held[1], others=held[2:])
    axes = names if family == "linear" else names[1:]
    interp.apply_weights(family, [str(p) for p in paths], weights_of(zip(axes, weights, strict=True)))
    live = model.state_dict()
    _run(["merge", str(_yaml(tmp_path / "soup.yml", family, paths, weights)), "-o",
          str(tmp_path / "merged"), "--quiet"], capsys)
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    assert merged and all(torch.equal(merged[k], live[k]) for k in merged)
    # and the soup is not a parent in disguise: it moved every parameter
    parent = load_file(paths[0] / "model.safetensors")
    assert any(not torch.equal(merged[k], parent[k]) for k in merged)


def _sweep_argv(soup, store, out, *extra):
    return ["sweep", "--models", f"base={soup['base']}", f"sft={soup['sft']}",
            f"dpo={soup['dpo']}", "--data", str(soup["test"]), "--dev", str(soup["dev"]),
            "--store", str(store), "--out", str(out), "--device", "cpu", "--quiet", *extra]


def _run(argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


@pytest.fixture(scope="module")
def swept(soup, tmp_path_factory):
    """A linear sweep over base/sft/dpo at step 0.5 with refinement, through the api."""
    root = tmp_path_factory.mktemp("swept")
    cfg = SweepConfig(
        models=[f"base={soup['base']}", f"sft={soup['sft']}", f"dpo={soup['dpo']}"],
        data=str(soup["test"]), dev=str(soup["dev"]), simplex_step=0.5, max_refine_points=4,
        resolution=0.125, n_boot=100, store=str(root / "runs.db"), out=str(root / "report"),
        device="cpu",
    )
    return cfg, api.sweep(cfg, progress=False)


def test_the_sweep_stores_every_grid_point_and_refines_on_the_simplex(swept):
    cfg, rep = swept
    rows = api.results_table(cfg.store)
    grid = {(r["w.base"], r["w.sft"], r["w.dpo"]) for r in rows}
    assert {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5),
            (0.0, 0.5, 0.5)} <= grid
    assert 6 < len(grid) <= 10 and rep.computed == len(grid)  # refinement added points
    assert all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in grid)  # refined: on the simplex
    assert all("lam" not in r for r in rows) and all("test.acc" in r for r in rows)
    assert rep.verdict.names == ("base", "sft", "dpo") and len(rep.verdict.parents) == 3
    assert len(rep.verdict.edges) == 3
    # resumed: nothing is computed again (the refinement found in the store counts against
    # the budget, so a re-run adds no points an uninterrupted run would not have)
    again = api.sweep(cfg, progress=False)
    assert again.computed == 0 and again.skipped == 6


def test_a_finer_step_reuses_the_points_it_shares(swept, tmp_path):
    cfg, rep = swept
    before = _done(cfg)
    finer = cfg.model_copy(update={"simplex_step": 0.25, "refine": False,
                                   "out": str(tmp_path / "r")})
    got = api.sweep(finer, progress=False)
    assert got.run_id == rep.run_id  # the step is not part of the run's identity
    quarter = {(a / 4, b / 4, (4 - a - b) / 4) for a in range(5) for b in range(5 - a)}
    assert len(quarter) == 15 and got.computed == len(quarter - before)
    assert _done(cfg) == before | quarter


def _done(cfg):
    return {(r["w.base"], r["w.sft"], r["w.dpo"]) for r in api.results_table(cfg.store)}


def test_export_of_any_point_and_the_report(swept, tmp_path, capsys):
    cfg, rep = swept
    out = _run(["export", "--store", cfg.store, "--pick", "weights=dpo:0.5,base:0.5,sft:0",
                "-o", str(tmp_path / "exp")], capsys)
    assert "base .5 · sft 0 · dpo .5" in out
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "Simplex point" in card and "base .5 · sft 0 · dpo .5" in card
    # the recipe beside it, in mergekit's schema, merges to the same weights
    recipe = tmp_path / "exp" / "mergekit_config.yml"
    assert "merge_method: linear" in recipe.read_text()
    _run(["merge", str(recipe), "-o", str(tmp_path / "again"), "--quiet"], capsys)
    again = load_file(tmp_path / "again" / "model.safetensors")
    # the exported weights are the live model's at that point
    sweep = __import__("calmerge.sweep.runner", fromlist=["Sweep"]).Sweep(cfg)
    sweep.evaluate_point("linear", weights_of([("base", .5), ("sft", 0.0), ("dpo", .5)]))
    exported = load_file(tmp_path / "exp" / "model.safetensors")
    live = sweep._model.state_dict()
    assert all(torch.equal(exported[k], live[k]) for k in exported)
    assert all(torch.equal(exported[k], again[k]) for k in exported)
    # and mergekit itself, run on that file, writes the same weights
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_run
    from mergekit.options import MergeOptions

    mk = MergeConfiguration.model_validate(yaml.safe_load(recipe.read_text()))
    mergekit_run(mk, str(tmp_path / "mk"), MergeOptions(quiet=True))
    theirs = {k: v for f in (tmp_path / "mk").glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(theirs) == set(exported)
    assert all(torch.equal(exported[k], theirs[k]) for k in exported)
    text = Path(rep.markdown).read_text()
    assert "base · sft · dpo" in text and "best of edge sft–dpo" in text
    figures = {p.name for p in (Path(cfg.out) / "figures").iterdir()}
    assert {"heat_linear_acc.png", "heat_linear_ece.png", "scatter.png"} <= figures
    assert rep.sentences and rep.sentences == api.report(cfg.store, None, cfg.out).sentences


def test_the_cli_takes_several_models_after_one_flag(soup, tmp_path, capsys):
    store = tmp_path / "runs.db"
    out = _run(_sweep_argv(soup, store, tmp_path / "rep", "--family", "task_arithmetic",
                           "--simplex-step", "1", "--no-refine"), capsys)
    assert "4 points computed" in out
    rows = api.results_table(store)
    assert {(r["w.sft"], r["w.dpo"]) for r in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all("w.base" not in r for r in rows)  # task vectors: the base has no coefficient


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_heat_maps_render_in_headless_chromium(swept, tmp_path):
    """The page is opened in a real browser; every embedded figure must decode to its size."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("CALMERGE_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed: apt-get install chromium")
        pytest.skip("chromium is not installed (CI installs it: .ci/run)")
    _, rep = swept
    html = Path(rep.html).read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'sizes';
  out.textContent = [...document.images].map(i => i.naturalWidth + 'x' + i.naturalHeight).join(' ');
  document.body.appendChild(out);
});</script></body>"""))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    sizes = re.search(r'<pre id="sizes">([^<]*)</pre>', dom)
    assert sizes, dom[-2000:]
    got = sizes.group(1).split()
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(got) == len(pngs) >= 4
    for size, data in zip(got, pngs, strict=True):
        raw = base64.b64decode(data)
        w, h = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
        assert size == f"{w}x{h}" and w > 100 and h > 100
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}",
                    Path(rep.html).as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("CALMERGE_KEEP_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
    assert json.loads(json.dumps(got))  # sizes are plain text
