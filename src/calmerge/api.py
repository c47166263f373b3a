"""The Python API: every CLI command is one call here, usable from a notebook.

Sections, one per subsystem, mirror `cli.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calmerge.config import SweepConfig
from calmerge.errors import ConfigError, OutputError, StoreError
from calmerge.io.atomic import atomic_write_text

# ───────────────────────────── merge engine ─────────────────────────────
# Heavy modules (torch) are imported inside the functions so `import calmerge.api` stays cheap.


def inspect_model(
    ref: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> dict[str, Any]:
    """Architecture, parameter count, dtypes, vocabulary, chat template of a model."""
    from calmerge.io.checkpoint import open_checkpoint

    ckpt = open_checkpoint(ref, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    embed = next((n for n in ckpt.tensor_names if "embed_tokens" in n), None)
    return {
        "path": str(ckpt.path),
        "architecture": ", ".join(ckpt.architectures) or "?",
        "model_type": ckpt.model_type or "?",
        "parameters": ckpt.num_params,
        "tensors": len(ckpt.tensor_names),
        "dtypes": {str(d).removeprefix("torch."): n for d, n in ckpt.dtypes.items()},
        "vocab_size": ckpt.config.get("vocab_size"),
        "embedding_rows": ckpt.shape(embed)[0] if embed else None,
        "layers": ckpt.num_layers,
        "hidden_size": ckpt.config.get("hidden_size"),
        "tied_embeddings": ckpt.tied_embeddings,
        "chat_template": ckpt.has_chat_template,
        "shards": len(ckpt.shard_files) or None,
        "fingerprint": ckpt.fingerprint()[:16],
    }


def diff_models(
    base: str | Path,
    aligned: str | Path,
    *,
    png: str | Path | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> list[Any]:
    """Per-layer relative ‖θ_aligned − θ_base‖ / ‖θ_base‖ (LayerDelta list), optional PNG."""
    from calmerge.io.checkpoint import open_checkpoint
    from calmerge.merge.engine import layer_deltas, plot_deltas

    opts = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
    if png is not None and Path(png).is_dir():
        raise OutputError(f"{png}: is a directory", "give a .png file path")
    b, a = open_checkpoint(base, **opts), open_checkpoint(aligned, **opts)
    deltas = layer_deltas(b, a)
    if png is not None:
        plot_deltas(deltas, Path(png), title=f"{Path(str(aligned)).name} vs {Path(str(base)).name}")
    return deltas


def merge(config: Any, out: str | Path, **options: Any) -> Any:
    """Run a merge config (MergeConfig, or a path to our / mergekit YAML) into `out`.

    Options: force, max_shard_size, compute_dtype, out_dtype, allow_pickle, trust_remote_code,
    device, model_card_extra, quiet, on_warning. Returns a MergeResult.
    """
    from calmerge.merge.engine import run_merge

    return run_merge(config, out, **options)


def merge_pair(base: str | Path, aligned: str | Path, lam: float, out: str | Path,
               **options: Any) -> Path:
    """θ_base + λ(θ_aligned − θ_base) into `out` (see calmerge.merge.engine.merge_pair)."""
    from calmerge.merge.engine import merge_pair as _merge_pair

    return _merge_pair(base, aligned, lam, out, **options)


# ───────────────────────────── evaluation ─────────────────────────────


@dataclass(frozen=True)
class EvalReport:
    """A finished `calmerge eval`: metrics with intervals, per-item scores, diversity, files."""

    metrics: dict[str, Any]
    result: Any
    reliability: list[dict[str, float]]
    diversity: dict[str, float] | None
    samples: list[list[str]] | None
    seconds: float
    output: Path | None = None
    diagram: Path | None = None


def _eval_output_paths(output: str | None) -> tuple[Path | None, Path | None]:
    """(JSON path, PNG path beside it), checked writable before any work starts."""
    if output is None:
        return None, None
    path = Path(output)
    if path.is_dir():
        raise OutputError(f"--output {path}: is a directory", "give a file name like results.json")
    if not path.parent.is_dir():
        raise OutputError(f"--output {path}: folder {path.parent} does not exist", "create it first")
    return path, path.with_suffix(".reliability.png")


def evaluate(cfg: Any, *, progress: bool = False) -> EvalReport:
    """Score `cfg.data` (and sample `cfg.prompts`) with one model; write outputs atomically.

    Every input is validated (items, prompts, template, chat template, context length, output
    path) before the model runs, so a user mistake leaves nothing behind.
    """
    import time

    from calmerge.eval.calibration import compute_metrics, reliability_bins
    from calmerge.eval.data import load_items, load_prompts, native_template
    from calmerge.eval.loading import load_model
    from calmerge.eval.score import Scorer

    out_json, out_png = _eval_output_paths(cfg.output)
    items = load_items(cfg.data)
    fewshot = load_items(cfg.dev)[: cfg.fewshot] if cfg.dev else []
    prompts = load_prompts(cfg.prompts) if cfg.prompts else []
    model, tokenizer = load_model(
        cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
    )
    scorer = Scorer(
        tokenizer, items, mode=cfg.mode, template=cfg.prompt_template or native_template(cfg.data),
        prompt_format=cfg.prompt_format, fewshot=fewshot, batch_size=cfg.batch_size,
    )
    scorer.check_context(getattr(model.config, "max_position_embeddings", None))
    start = time.perf_counter()
    result = scorer.score(model, progress=progress)
    metrics = compute_metrics(result, n_boot=cfg.n_boot, seed=cfg.seed, n_bins=cfg.n_bins)
    reliability = reliability_bins(result.confidence, result.correct, cfg.n_bins)
    diversity = samples = None
    if prompts:
        from calmerge.eval.diversity import diversity_metrics
        from calmerge.eval.generate import sample_generations

        samples = sample_generations(
            model, tokenizer, prompts, k=cfg.samples, temperature=cfg.temperature,
            top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
            chat=cfg.prompt_format == "chat", batch_size=max(1, cfg.batch_size // 2),
            progress=progress,
        )
        diversity = diversity_metrics(samples, embed=cfg.embed_diversity)
    report = EvalReport(
        metrics, result, reliability, diversity, samples, time.perf_counter() - start
    )
    if out_json is not None:
        _write_eval_json(report, cfg, prompts, out_json)
        from calmerge.report.figures import reliability_one, save_png

        ece = metrics["ece"]
        title = f"{Path(cfg.model).name}: ECE {ece.value:.3f} [{ece.lo:.3f}, {ece.hi:.3f}]"
        save_png(reliability_one(reliability, title), out_png)
        report = EvalReport(**{**report.__dict__, "output": out_json, "diagram": out_png})
    return report


def _write_eval_json(report: EvalReport, cfg: Any, prompts: list, path: Path) -> None:
    import json
    import math

    def clean(x: float) -> float | None:
        return None if isinstance(x, float) and not math.isfinite(x) else x

    payload = {
        "config": cfg.model_dump(mode="json"),
        "metrics": {k: {n: clean(v) for n, v in m.as_dict().items()} for k, m in report.metrics.items()},
        "reliability": [{k: clean(v) for k, v in b.items()} for b in report.reliability],
        "diversity": report.diversity,
        "predictions": report.result.predictions(),
        "samples": (
            {p.id: s for p, s in zip(prompts, report.samples, strict=True)}
            if report.samples is not None else None
        ),
        "seconds": report.seconds,
    }
    atomic_write_text(path, json.dumps(payload, indent=1))


# ───────────────────────────── sweep ─────────────────────────────


@dataclass(frozen=True)
class SweepReport:
    """What a finished sweep hands back: where things are and what was concluded."""

    run_id: int
    store: Path
    html: Path
    markdown: Path
    verdict: Any
    computed: int
    skipped: int


def sweep(cfg: SweepConfig, *, progress: bool = True) -> SweepReport:
    """Run (or resume) a sweep, then write its report into `cfg.out`."""
    from calmerge.sweep.runner import Sweep

    runner = Sweep(cfg)
    outcome = runner.execute(progress=progress)
    paths, verdict = report(cfg.store, str(runner.run.id), Path(cfg.out), pick=cfg.pick)
    return SweepReport(
        run_id=runner.run.id,
        store=Path(cfg.store),
        html=paths.html,
        markdown=paths.markdown,
        verdict=verdict,
        computed=len(outcome.computed),
        skipped=len(outcome.skipped),
    )


def list_runs(store: str | Path) -> list[dict[str, Any]]:
    """One summary row per run in a store."""
    db = _open_store(store)
    rows = []
    for run in db.runs():
        pts = db.points(run.id)
        rows.append(
            {
                "id": run.id,
                "name": run.name,
                "hash": run.config_hash,
                "created": run.created,
                "points": len(pts),
                "done": sum(p.status == "done" for p in pts),
                "families": sorted({p.family for p in pts}),
            }
        )
    return rows


def results_table(store: str | Path, run: str | None = None) -> list[dict[str, Any]]:
    """One row per finished point: family, λ, then `split.metric` with `_lo`/`_hi` intervals."""
    db = _open_store(store)
    rec = db.run(run)
    rows = []
    for pt in db.points(rec.id, status="done"):
        row: dict[str, Any] = {"run": rec.id, "family": pt.family, "lam": pt.lam}
        for split, ms in sorted(db.metrics(pt.id).items()):
            for name, (v, lo, hi) in sorted(ms.items()):
                row[f"{split}.{name}"] = v
                row[f"{split}.{name}_lo"] = lo
                row[f"{split}.{name}_hi"] = hi
        rows.append(row)
    return rows


def write_results(rows: list[dict[str, Any]], fmt: str, out: Path | None) -> str:
    """Serialise `results_table` rows as csv or json; written atomically when `out` is given."""
    import csv
    import io
    import json
    import math

    if fmt not in ("csv", "json"):
        raise ConfigError(f"--format '{fmt}': unknown", "use csv or json")
    if fmt == "json":
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
        text = json.dumps(clean, indent=2)
    else:
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out is not None:
        atomic_write_text(Path(out), text)
    return text


@dataclass(frozen=True)
class Analysis:
    """A run's finished points and what they say: the verdict and the post-hoc baseline."""

    db: Any
    run: Any
    points: list
    verdict: Any
    temperature_scaled: dict[str, Any] | None


def analyse(store: str | Path, run: str | None, *, pick: str = "max-acc") -> Analysis:
    """Load a run from the store and judge it; no model is loaded.

    λ is picked on dev when the run has a dev split (reported on test); the temperature-scaling
    baseline is the aligned model's dev-fitted temperature applied to its test predictions.
    """
    from calmerge.analysis.pareto import verdict as make_verdict
    from calmerge.sweep.runner import load_points

    db = _open_store(store)
    rec = db.run(run)
    cfg = rec.config
    points = load_points(db, rec.id, n_bins=int(cfg.get("n_bins", 10)))
    if not points:
        raise StoreError(f"run {rec.id} has no finished points", "run or resume the sweep first")
    splits = {s for p in points for s in p.metrics}
    ts = temperature_baseline(db, rec.id, n_boot=int(cfg.get("n_boot", 1000)))
    v = make_verdict(
        points,
        select_split="dev" if "dev" in splits else "test",
        report_split="test",
        rule=pick,
        objectives=tuple(cfg["objectives"]) if cfg.get("objectives") else None,
        temperature_scaled=ts,
        n_boot=int(cfg.get("n_boot", 1000)),
        seed=int(cfg.get("seed", 0)),
    )
    return Analysis(db, rec, points, v, ts)


def report(
    store: str | Path, run: str | None, out: str | Path, *, pick: str = "max-acc"
) -> tuple[Any, Any]:
    """(Re)write the HTML/Markdown report of a run from the store alone."""
    from calmerge.report import write_report

    a = analyse(store, run, pick=pick)
    cfg = a.run.config
    meta = {
        "run": f"{a.run.id} ({a.run.config_hash})",
        "base": str(cfg.get("base")),
        "aligned": str(cfg.get("aligned")),
        "test data": str(cfg.get("data")),
        "dev data": str(cfg.get("dev") or "none (pick chosen on test)"),
        "scoring": f"{cfg.get('mode')} · {cfg.get('prompt_format')} prompts · {cfg.get('dtype')}",
        "store": str(Path(store)),
    }
    paths = write_report(
        a.points,
        a.verdict,
        Path(out),
        title=a.run.name,
        meta=meta,
        temperature_scaled=a.temperature_scaled,
        examples=example_tables(a.db, a.run.id, a.verdict),
    )
    return paths, a.verdict


def example_tables(db: Any, run_id: int, verdict: Any, *, limit: int = 6) -> list[Any]:
    """Text the report quotes: sample generations of base/aligned/pick, and test questions the
    pick answers differently from the aligned model (what merging changed, item by item)."""
    from calmerge.analysis.pareto import point_label
    from calmerge.report.content import Row, Table

    ids = {(p.family, p.lam): p.id for p in db.points(run_id, status="done")}
    roles = [("base", verdict.base), ("aligned", verdict.aligned), ("pick", verdict.pick)]
    cols = [f"{role} ({point_label(p)})" for role, p in roles]
    tables = []
    prompts = db.prompts(run_id)
    if prompts:
        gens = [db.generations(ids[(p.family, p.lam)]) for _, p in roles]
        rows = [
            Row([text, *("\n".join(g.get(pid, [])[:2]) for g in gens)])
            for pid, text in list(prompts.items())[:limit]
        ]
        tables.append(Table("gen", "Sample generations (first two samples)", ["prompt", *cols], rows))
    split = verdict.report_split
    items = db.items(run_id, split)
    aligned_preds = db.predictions(ids[(verdict.aligned.family, verdict.aligned.lam)], split)
    pick_preds = db.predictions(ids[(verdict.pick.family, verdict.pick.lam)], split)
    rows = []
    for item, a, p in zip(items, aligned_preds, pick_preds, strict=False):
        if a.pred != p.pred and len(rows) < limit:
            choice = item["choices"]
            mark = {True: "✓", False: "✗"}
            rows.append(
                Row([
                    item["question"],
                    choice[item["answer"]],
                    f"{choice[a.pred]} {mark[a.pred == item['answer']]} ({a.confidence:.2f})",
                    f"{choice[p.pred]} {mark[p.pred == item['answer']]} ({p.confidence:.2f})",
                ])
            )
    if items and aligned_preds and pick_preds:
        tables.append(
            Table(
                split,
                f"Questions ({split}) the pick answers differently from the aligned model",
                ["question", "answer", cols[1], cols[2]],
                rows,
            )
        )
    return tables


def temperature_baseline(db: Any, run_id: int, *, n_boot: int = 1000) -> dict[str, Any] | None:
    """Metrics of the aligned model (linear λ=1) after temperature scaling fitted on dev.

    This is the post-hoc calibration fix merging is compared with. None without a dev split.
    """
    import numpy as np

    from calmerge.analysis.pareto import Metric
    from calmerge.eval.calibration import compute_metrics, fit_temperature
    from calmerge.eval.score import finalize

    aligned = next(
        (p for p in db.points(run_id, status="done") if p.family == "linear" and p.lam == 1.0), None
    )
    if aligned is None:
        return None
    dev, test = db.predictions(aligned.id, "dev"), db.predictions(aligned.id, "test")
    if not dev or not test:
        return None

    def arrays(preds):
        width = max(len(p.logprobs) for p in preds)
        ll = np.full((len(preds), width), -np.inf)
        for i, p in enumerate(preds):
            ll[i, : len(p.logprobs)] = p.logprobs
        return ll, np.isfinite(ll), np.array([p.answer for p in preds])

    dev_ll, _, dev_y = arrays(dev)
    temp = fit_temperature(dev_ll, dev_y)
    ll, mask, y = arrays(test)
    scaled = finalize([p.item_id for p in test], ll / temp, mask, y, np.ones_like(ll), "loglik")
    ms = compute_metrics(scaled, n_boot=n_boot)
    out = {k: Metric(m.value, m.lo, m.hi) for k, m in ms.items()}
    out["temperature"] = Metric(float(temp), float("nan"), float("nan"))
    return out


def export(
    store: str | Path,
    run: str | None,
    *,
    pick: str,
    out: str | Path,
    force: bool = False,
    max_shard_size: str = "5GB",
) -> tuple[Path, Any]:
    """Write the picked merge of a run through the merge engine; its model card carries the
    measured metrics and the accuracy-vs-ECE and reliability figures."""
    import tempfile

    from calmerge.merge.engine import merge_pair
    from calmerge.report.figures import make_figures

    a = analyse(store, run, pick=pick)
    point, cfg = a.verdict.pick, a.run.config
    with tempfile.TemporaryDirectory(prefix="calmerge-card-") as tmp:
        figs = make_figures(a.points, a.verdict, Path(tmp), a.temperature_scaled)
        files = {
            f"figures/{key}.png": figs[key].read_bytes()
            for key in ("acc_vs_ece", "reliability")
            if key in figs
        }
    path = merge_pair(
        cfg["base"],
        cfg["aligned"],
        point.lam,
        Path(out),
        method=point.family,
        force=force,
        max_shard_size=max_shard_size,
        model_card_extra=model_card_metrics(point, a.run, pick, a.verdict, list(files)),
        extra_files=files,
        params=None
        if point.family in ("linear", "slerp")
        else {"density": cfg.get("density", 0.5), "seed": cfg.get("seed", 0)},
    )
    return path, point


def model_card_metrics(
    point: Any, rec: Any, pick: str, verdict: Any, figures: Sequence[str] = ()
) -> str:
    """The model card's measured section: how the point was picked, the verdict, its metrics."""
    lines = [
        "## Measured by calmerge",
        "",
        f"Picked `{point.family}` λ={point.lam:g} by rule `{pick}` from sweep run {rec.id}"
        f" ({rec.name}).",
        "",
        *[f"- {s}" for s in verdict.sentences],
        "",
        "| split | metric | value | 95% interval |",
        "|---|---|---|---|",
    ]
    for split, ms in sorted(point.metrics.items()):
        for name, m in sorted(ms.items()):
            interval = "" if m.lo != m.lo else f"{m.lo:.4f} – {m.hi:.4f}"
            lines.append(f"| {split} | {name} | {m.value:.4f} | {interval} |")
    lines += ["", *[f"![{Path(f).stem}]({f})" for f in figures]]
    return "\n".join(lines) + "\n"


def _open_store(store: str | Path):
    from calmerge.results.store import ResultStore

    path = Path(store)
    if not path.is_file():
        raise StoreError(f"{path}: results store not found", "run `calmerge sweep` first or pass --store")
    return ResultStore(path)


def demo(out: str | Path = "demo-output", *, seed: int = 0, progress: bool = True) -> SweepReport:
    """The whole study on the built-in base/aligned pair: build (or reuse) it, sweep, report.

    The report lands at `out/report.html`; the store at `out/runs.db`, so re-running the demo
    resumes instead of recomputing.
    """
    from calmerge.organism import build_organism

    out = Path(out)
    org = build_organism(seed=seed, progress=progress)
    cfg = SweepConfig(
        name=f"organism seed {seed}",
        base=str(org.base),
        aligned=str(org.aligned),
        data=str(org.test),
        dev=str(org.dev),
        prompts=str(org.prompts),
        store=str(out / "runs.db"),
        out=str(out),
        seed=seed,
    )
    return sweep(cfg, progress=progress)


# ───────────────────────────── built-in default ─────────────────────────────


def build_organism(
    out: str | Path | None = None,
    *,
    seed: int = 0,
    recipe: Any = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> Any:
    """Build (or reuse from the cache) the built-in base/aligned pair; returns OrganismPaths.

    `recipe` is an `organism.Recipe` or a path to a YAML recipe; None is the demo's recipe.
    """
    from calmerge.organism import build_organism as build

    return build(
        out, seed=seed, recipe=load_organism_recipe(recipe), cache_dir=cache_dir,
        progress=progress, force=force,
    )


def load_organism_recipe(recipe: Any) -> Any:
    """A Recipe from a Recipe, a YAML path, or None (the default recipe)."""
    from calmerge.config import load_yaml, validate
    from calmerge.organism import Recipe, default_recipe

    if recipe is None:
        return default_recipe()
    if isinstance(recipe, Recipe):
        return recipe
    return validate(Recipe, load_yaml(Path(recipe)), str(recipe))

