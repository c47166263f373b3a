"""The Python API: every CLI command is one call here, usable from a notebook.

A façade and nothing more: each function validates its inputs through `config`, calls the one
module that does the work (merge engine, scorer, sweep runner, analysis, report) and returns
typed results. Heavy modules (torch, numpy, transformers) are imported inside the functions so
`import calmerge.api` stays cheap. Sections, one per subsystem, mirror `cli.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmerge.config import EvalConfig, MergeConfig, SearchConfig, SweepConfig
from calmerge.errors import OutputError, StoreError
from calmerge.io.atomic import atomic_write_text

if TYPE_CHECKING:
    from calmerge.analysis.diff import LayerDelta
    from calmerge.analysis.pareto import Point
    from calmerge.analysis.simplex import SimplexVerdict
    from calmerge.analysis.verdict import Verdict
    from calmerge.eval.evaluate import Evaluation
    from calmerge.eval.metrics import Metric
    from calmerge.merge.engine import MergeResult
    from calmerge.organism import OrganismPaths, Recipe
    from calmerge.report import ReportPaths
    from calmerge.results.store import ResultStore, RunRecord

# ───────────────────────────── merge engine ─────────────────────────────


def inspect_model(
    ref: str | Path,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    base: str | Path | None = None,
) -> dict[str, Any]:
    """Architecture, parameter count, dtypes, vocabulary, chat template of a model.

    Sizes are the text model's: a multimodal config (Gemma-3 4B–27B) keeps them in `text_config`.
    A LoRA adapter is described as the merged model it stands for (its base's architecture),
    plus its rank, alpha, target modules and base path (`adapter_*` keys).
    """
    from calmerge.io.adapters import AdapterCheckpoint
    from calmerge.io.models import open_checkpoint

    ckpt = open_checkpoint(
        ref, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, base=base
    )
    embed = next((n for n in ckpt.tensor_names if "embed_tokens" in n), None)
    adapter: dict[str, Any] = {}
    if isinstance(ckpt, AdapterCheckpoint):
        cfg = ckpt.adapter_config
        adapter = {
            "adapter": "LoRA" + (" (rsLoRA)" if cfg.get("use_rslora") else ""),
            "adapter_rank": ckpt.rank,
            "adapter_alpha": cfg.get("lora_alpha"),
            "adapter_target_modules": ckpt.target_modules,
            "adapter_modules": len(ckpt.modules),
            "adapter_modules_to_save": sorted(ckpt.replaced),
            "adapter_base": str(ckpt.base.path),
        }
    return {
        "path": str(ckpt.path),
        "architecture": ", ".join(ckpt.architectures) or "?",
        "model_type": ckpt.model_type or "?",
        "parameters": ckpt.num_params,
        "tensors": len(ckpt.tensor_names),
        "dtypes": {str(d).removeprefix("torch."): n for d, n in ckpt.dtypes.items()},
        "vocab_size": ckpt.text_setting("vocab_size"),
        "embedding_rows": ckpt.shape(embed)[0] if embed else None,
        "layers": ckpt.num_layers,
        "hidden_size": ckpt.text_setting("hidden_size"),
        "tied_embeddings": ckpt.tied_embeddings,
        "chat_template": ckpt.has_chat_template,
        "shards": len(ckpt.shard_files) or None,
        "fingerprint": ckpt.fingerprint()[:16],
        **adapter,
    }


def diff_models(
    base: str | Path,
    aligned: str | Path,
    *,
    png: str | Path | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> list[LayerDelta]:
    """Per-layer relative ‖θ_aligned − θ_base‖ / ‖θ_base‖, and optionally its bar chart."""
    from calmerge.analysis.diff import layer_deltas, plot_deltas
    from calmerge.io.models import open_checkpoint

    opts = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
    if png is not None and Path(png).is_dir():
        raise OutputError(f"{png}: is a directory", "give a .png file path")
    if png is not None:
        from calmerge.io.outputs import check_not_input

        check_not_input(png, [("base model", base), ("aligned model", aligned)], "--png")
    b, a = open_checkpoint(base, **opts), open_checkpoint(aligned, base=base, **opts)
    deltas = layer_deltas(b, a)
    if png is not None:
        plot_deltas(deltas, Path(png), title=f"{Path(str(aligned)).name} vs {Path(str(base)).name}")
    return deltas


def load_merge_config(path: str | Path) -> MergeConfig:
    """A merge YAML, ours or mergekit's (recognised by its `merge_method` key), validated."""
    from calmerge.merge.mergekit_compat import load_merge_config as load

    return load(Path(path))


def pair_config(
    base: str | Path, aligned: str | Path, lam: float, *, method: str = "linear",
    density: float = 1.0, seed: int = 0,
) -> MergeConfig:
    """The merge of family `method` at λ between two models (see `merge.families`)."""
    from calmerge.merge.engine import pair_config as build

    return build(base, aligned, lam, method=method, density=density, seed=seed)


def merge(
    config: MergeConfig | str | Path,
    out: str | Path,
    *,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    compute_dtype: str | None = None,
    out_dtype: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    quiet: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> MergeResult:
    """Run a merge config (a MergeConfig, or a path to our / mergekit YAML) into `out`."""
    from calmerge.merge.engine import run_merge

    return run_merge(
        config, out, force=force, max_shard_size=max_shard_size, compute_dtype=compute_dtype,
        out_dtype=out_dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        device=device, quiet=quiet, on_warning=on_warning,
    )


# ───────────────────────────── evaluation ─────────────────────────────


@dataclass(frozen=True)
class EvalReport:
    """A finished `calmerge eval`: what was measured, and the files written (if any)."""

    evaluation: Evaluation
    output: Path | None = None
    diagram: Path | None = None


def evaluate(cfg: EvalConfig, *, progress: bool = False) -> EvalReport:
    """Score `cfg.data` (and sample `cfg.prompts`) with one model; write outputs atomically.

    The output paths are checked before the model loads, every input before it runs
    (`eval.evaluate`), so a user mistake leaves nothing behind.
    """
    from calmerge.eval.evaluate import evaluate_model
    from calmerge.io.outputs import eval_inputs, eval_output_paths

    out_json, out_png = eval_output_paths(cfg.output, eval_inputs(cfg))
    ev = evaluate_model(cfg, progress=progress)
    if out_json is None or out_png is None:
        return EvalReport(ev)
    from calmerge.report.evaluation import write_eval_diagram, write_eval_json

    write_eval_json(
        out_json, config={**cfg.model_dump(mode="json"), "dtype": ev.dtype}, metrics=ev.metrics,
        reliability=ev.reliability, diversity=ev.diversity, predictions=ev.result.predictions(),
        samples=ev.samples, seconds=ev.seconds, notes=ev.notes, breakdown=ev.breakdown,
    )
    if "ece" not in ev.metrics or not ev.reliability:  # a task with its own metric: no gold
        return EvalReport(ev, out_json, None)
    write_eval_diagram(out_png, cfg.model, ev.metrics["ece"], ev.reliability)
    return EvalReport(ev, out_json, out_png)


# ───────────────────────────── sweep ─────────────────────────────


@dataclass(frozen=True)
class SweepReport:
    """What a finished sweep hands back: where things are and what was concluded."""

    run_id: int
    store: Path
    html: Path
    markdown: Path
    verdict: Verdict | SimplexVerdict  # a sweep over several models: the simplex verdict
    sentences: list[str]
    computed: int
    skipped: int
    #: where the parents lived this session (None when every point was already stored)
    placement: str | None = None
    dtype: str = "float32"  # the dtype the model was scored in (`--dtype auto` resolved)
    workers: dict[int, Any] = field(default_factory=dict)  # --ray: what each worker did


def sweep(cfg: SweepConfig, *, progress: bool = True) -> SweepReport:
    """Run (or resume) a sweep, then write its report into `cfg.out`."""
    from calmerge.io.outputs import check_not_input, check_report_dir, run_inputs
    from calmerge.sweep.runner import Sweep

    check_not_input(cfg.store, run_inputs(cfg), "--store")
    check_report_dir(cfg.out, cfg.store, run_inputs(cfg))
    runner = Sweep(cfg)
    outcome = runner.execute(progress=progress)
    written = report(cfg.store, str(runner.run.id), Path(cfg.out), pick=cfg.pick)
    return SweepReport(
        run_id=runner.run.id,
        store=Path(cfg.store),
        html=written.paths.html,
        markdown=written.paths.markdown,
        verdict=written.verdict,
        sentences=written.sentences,
        computed=len(outcome.computed),
        skipped=len(outcome.skipped),
        placement=outcome.placement,
        dtype=runner.cfg.dtype,
        workers=outcome.workers,
    )


@dataclass(frozen=True)
class SearchReport:
    """What a finished search hands back: where things are and what it concluded."""

    run_id: int
    store: Path
    html: Path
    markdown: Path
    verdict: Any  # analysis.search.SearchVerdict
    sentences: list[str]
    computed: int  # candidate evaluations this session ran (anchor or full dev)
    candidates: int
    generations: int


def search(cfg: SearchConfig, *, progress: bool = True) -> SearchReport:
    """Run (or resume) a per-layer search (`sweep.search`), then write its report."""
    from calmerge.io.outputs import check_not_input, check_report_dir, run_inputs
    from calmerge.sweep.search import Search

    inputs = run_inputs(cfg.sweep_config())
    check_not_input(cfg.store, inputs, "--store")
    check_report_dir(cfg.out, cfg.store, inputs)
    runner = Search(cfg, progress=progress)
    try:
        outcome = runner.execute()
    finally:
        runner.close()
    written = report(cfg.store, str(runner.run.id), Path(cfg.out))
    return SearchReport(
        run_id=runner.run.id, store=Path(cfg.store), html=written.paths.html,
        markdown=written.paths.markdown, verdict=written.verdict, sentences=written.sentences,
        computed=outcome.computed, candidates=len(outcome.evaluated),
        generations=outcome.generations,
    )


@dataclass(frozen=True)
class SearchAnalysis:
    db: ResultStore
    run: RunRecord
    config: SweepConfig
    study: dict[str, Any]
    verdict: Any  # analysis.search.SearchVerdict
    n_layers: int


def analyse_search(store: str | Path, run: str | None) -> SearchAnalysis:
    """Load a finished search and judge it (`analysis.search`); no model is loaded."""
    from calmerge.analysis.search import search_verdict
    from calmerge.io.models import open_checkpoint
    from calmerge.merge.genome import parse_space
    from calmerge.results.points import load_search

    db = _open_store(store)
    rec = db.run(run)
    cfg = stored_config(rec)
    study = rec.config["study"]
    space = parse_space(study["space"])
    objectives = tuple(study["objectives"])
    from calmerge.eval.metrics import diversity_of

    diversity = diversity_of(objectives)
    got = load_search(db, rec.id, n_bins=cfg.n_bins, diversity=diversity, seed=cfg.seed)
    v = search_verdict(
        got.candidates, got.lam_points, genes=space.genes, test_predictions=got.test_predictions,
        test_prompts=got.test_prompts, n_prompts=got.n_prompts, objectives=objectives,
        n_dev=got.n_dev, n_anchor=got.n_anchor, n_boot=cfg.n_boot, seed=cfg.seed,
        n_bins=cfg.n_bins,
    )
    layers = open_checkpoint(cfg.base, allow_pickle=cfg.allow_pickle,
                             trust_remote_code=cfg.trust_remote_code).num_layers
    return SearchAnalysis(db, rec, cfg, study, v, layers)


def list_runs(store: str | Path) -> list[dict[str, Any]]:
    """One summary row per run in a store."""
    from calmerge.results.table import run_summaries

    return run_summaries(_open_store(store))


def results_table(store: str | Path, run: str | None = None) -> list[dict[str, Any]]:
    """One row per finished point: family, λ, then `split.metric` with `_lo`/`_hi` intervals."""
    from calmerge.results.table import point_rows

    db = _open_store(store)
    return point_rows(db, db.run(run))


def write_results(
    rows: list[dict[str, Any]], fmt: str, out: Path | None, *, store: str | Path | None = None
) -> str:
    """Serialise `results_table` rows as csv or json; written atomically when `out` is given,
    never over a results store (`store`, or any SQLite file) or into it."""
    from calmerge.io.outputs import check_not_input, check_not_store
    from calmerge.results.table import serialise

    text = serialise(rows, fmt)
    if out is not None:
        check_not_store(out, "-o")
        check_not_input(out, [("results store", store)], "-o")
        atomic_write_text(Path(out), text)
    return text


@dataclass(frozen=True)
class Analysis:
    """A run's finished points and what they say: the verdict and the post-hoc baseline."""

    db: ResultStore
    run: RunRecord
    config: SweepConfig
    points: list[Point]
    verdict: Verdict
    temperature_scaled: dict[str, Metric] | None
    #: a multi-task run: each task's own verdict (its own pick); empty otherwise
    task_verdicts: dict[str, Verdict] = field(default_factory=dict)


def stored_config(rec: RunRecord) -> SweepConfig:
    """The run's SweepConfig as stored (keys of older calmerge versions that no longer exist
    are dropped; missing ones take today's defaults, which are what those versions used)."""
    fields = SweepConfig.model_fields
    return SweepConfig.model_validate({k: v for k, v in rec.config.items() if k in fields})


def analyse(store: str | Path, run: str | None, *, pick: str = "max-acc") -> Analysis:
    """Load a run from the store and judge it; no model is loaded.

    λ is picked on dev when the run has a dev split (reported on test); the temperature-scaling
    baseline is the aligned model's dev-fitted temperature applied to its test predictions.
    """
    from calmerge.analysis.baseline import temperature_scaled
    from calmerge.analysis.pick import check_rule
    from calmerge.analysis.verdict import verdict as make_verdict
    from calmerge.results.points import load_points, point_predictions

    check_rule(pick)
    db = _open_store(store)
    rec = db.run(run)
    cfg = stored_config(rec)
    points = load_points(db, rec.id, n_bins=cfg.n_bins, aggregate=cfg.aggregate)
    if not points:
        raise StoreError(f"run {rec.id} has no finished points", "run or resume the sweep first")
    splits = {s for p in points for s in p.metrics}
    aligned = point_predictions(db, rec.id, "linear", 1.0, ("dev", "test"))
    ts = (
        temperature_scaled(aligned.get("dev"), aligned.get("test"), n_boot=cfg.n_boot)
        if aligned is not None
        else None
    )
    if ts is not None and cfg.multi_task:
        # calibration is pooled over the tasks with gold; a temperature changes no answer, so
        # the accuracies are the aligned model's own aggregate ones
        from calmerge.analysis.pareto import find_lam

        own = find_lam(points, "linear", 1.0)
        for name in ("acc", "acc_norm"):
            m = own.metrics.get("test", {}).get(name) if own is not None else None
            if m is not None:
                ts[name] = m
    v = make_verdict(
        points,
        select_split="dev" if "dev" in splits else "test",
        report_split="test",
        rule=pick,
        objectives=cfg.objectives,
        temperature_scaled=ts,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
    )
    from calmerge.analysis.verdict import task_verdicts

    per_task = task_verdicts(
        points, rule=pick, objectives=cfg.objectives, n_boot=cfg.n_boot, seed=cfg.seed
    )
    return Analysis(db, rec, cfg, points, v, ts, per_task)


@dataclass(frozen=True)
class WrittenReport:
    """A (re)written report: its files, the verdict and the verdict's sentences."""

    paths: ReportPaths
    verdict: Verdict
    sentences: list[str]


@dataclass(frozen=True)
class SimplexAnalysis:
    """A sweep over several models from the store: its points and the simplex verdict."""

    db: ResultStore
    run: RunRecord
    config: SweepConfig
    points: list[Point]
    verdict: SimplexVerdict

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.config.models]


def analyse_simplex(store: str | Path, run: str | None, *, pick: str = "max-acc") -> SimplexAnalysis:
    """Load a sweep over several models and judge it (`analysis.simplex`); no model is loaded.

    The pick is chosen on dev when the run has one (reported on test), and compared with every
    parent and with the best point of every edge.
    """
    from calmerge.analysis.pick import check_rule
    from calmerge.analysis.simplex import simplex_verdict
    from calmerge.results.points import load_points

    check_rule(pick)
    db = _open_store(store)
    rec = db.run(run)
    cfg = stored_config(rec)
    points = load_points(db, rec.id, n_bins=cfg.n_bins, aggregate=cfg.aggregate)
    if not points:
        raise StoreError(f"run {rec.id} has no finished points", "run or resume the sweep first")
    splits = {s for p in points for s in p.metrics}
    v = simplex_verdict(
        points, [m.name for m in cfg.models], select_split="dev" if "dev" in splits else "test",
        report_split="test", rule=pick, objectives=cfg.objectives, upper=cfg.simplex_max,
        n_boot=cfg.n_boot, seed=cfg.seed,
    )
    return SimplexAnalysis(db, rec, cfg, points, v)


def _report_meta(rec: RunRecord, cfg: SweepConfig, db: ResultStore, store: str | Path) -> dict:
    """The report's header rows: run, models, data, scoring, generation, notes, store."""
    from calmerge.report.sentences import data_meta, generation_settings

    models = (
        {f"model {m.name}": m.path for m in cfg.models} if cfg.simplex
        else {"base": cfg.base, "aligned": cfg.aligned}
    )
    return {
        "run": f"{rec.id} ({rec.config_hash})",
        **models,
        **data_meta(cfg),
        "scoring": (
            f"{cfg.dtype} (each task's mode and prompt format above)" if cfg.multi_task
            else f"{cfg.mode} · {cfg.prompt_format} prompts · {cfg.dtype}"
        ),
        **({"generation": generation_settings(cfg)} if cfg.prompts else {}),
        **{f"note {i + 1}": n for i, n in enumerate(db.notes(rec.id))},
        "store": str(Path(store)),
    }


def report(
    store: str | Path, run: str | None, out: str | Path, *, pick: str = "max-acc"
) -> WrittenReport:
    """(Re)write the HTML/Markdown report of a run from the store alone."""
    from calmerge.analysis.pick import check_rule
    from calmerge.io.outputs import check_report_dir, run_inputs, write_marker
    from calmerge.report import write_report
    from calmerge.report.examples import example_tables
    from calmerge.report.sentences import verdict_sentences

    check_rule(pick)
    stored = _stored_run_config(store, run)
    check_report_dir(out, store, run_inputs(stored))
    if _is_search(store, run):
        return _search_report(store, run, out)
    if stored.simplex:
        return _simplex_report(store, run, out, pick=pick)
    a = analyse(store, run, pick=pick)
    meta = _report_meta(a.run, a.config, a.db, store)
    sentences = verdict_sentences(a.verdict)
    budget = _budget_sentence(a)
    if budget:
        sentences.append(budget)
    write_marker(out, "report")
    paths = write_report(
        a.points,
        a.verdict,
        Path(out),
        title=a.run.name,
        meta=meta,
        temperature_scaled=a.temperature_scaled,
        examples=example_tables(a.db, a.run.id, a.verdict),
        task_verdicts=a.task_verdicts,
        extra_sentences=[budget] if budget else [],
    )
    return WrittenReport(paths, a.verdict, sentences)


def _budget_sentence(a: Analysis) -> str | None:
    """A budgeted sweep's state in one sentence (None for a fully scored sweep): how many λ
    were only looked at on anchors, and whether racing ruled every one of them out."""
    from calmerge.results.points import budget_status

    st = budget_status(a.db, a.run.id, objectives=a.config.objectives or ("acc", "ece"))
    if st is None:
        return None
    head = (f"Budgeted sweep: {st['full']} λ points fully scored, {st['scouted']} looked at on"
            " anchor items only")
    if not st["open"]:
        return (f"{head}; racing ruled each of those out (its optimistic bounds are dominated"
                " by a fully scored point), so they could not have changed the frontier.")
    lams = ", ".join(f"{x:g}" for x in st["open"])
    return (f"{head}; {len(st['open'])} of them (λ = {lams}) could still be on the frontier but"
            " were not fully scored, so the pick may differ from a full sweep's: give more"
            " --budget to be sure.")


def _is_search(store: str | Path, run: str | None) -> bool:
    with _open_store(store) as db:
        return "study" in db.run(run).config


def _search_report(store: str | Path, run: str | None, out: str | Path) -> WrittenReport:
    """The report of a per-layer search (`report.search`)."""
    from calmerge.io.outputs import write_marker
    from calmerge.report.search import search_sentences, write_search_report

    a = analyse_search(store, run)
    write_marker(out, "report")
    paths = write_search_report(a.verdict, Path(out), title=a.run.name,
                                meta=_report_meta(a.run, a.config, a.db, store),
                                study=a.study, n_layers=a.n_layers)
    return WrittenReport(paths, a.verdict, search_sentences(a.verdict, a.study))


def _simplex_report(
    store: str | Path, run: str | None, out: str | Path, *, pick: str
) -> WrittenReport:
    """The report of a sweep over several models (`report.simplex`)."""
    from calmerge.io.outputs import write_marker
    from calmerge.report.sentences import simplex_sentences
    from calmerge.report.simplex import write_simplex_report

    a = analyse_simplex(store, run, pick=pick)
    write_marker(out, "report")
    paths = write_simplex_report(
        a.points, a.names, a.verdict, Path(out), title=a.run.name,
        meta=_report_meta(a.run, a.config, a.db, store), upper=a.config.simplex_max,
    )
    return WrittenReport(paths, a.verdict, simplex_sentences(a.verdict))


def export(
    store: str | Path,
    run: str | None,
    *,
    pick: str,
    out: str | Path,
    force: bool = False,
    max_shard_size: str = "5GB",
) -> tuple[Path, Point]:
    """Write the picked merge of a run through the merge engine; its model card carries the
    measured metrics and the accuracy-vs-ECE and reliability figures."""
    import tempfile

    from calmerge.analysis.pick import check_rule
    from calmerge.io.outputs import check_not_input
    from calmerge.merge.engine import merge_pair
    from calmerge.report.card import card_metrics
    from calmerge.report.figures import make_figures

    check_rule(pick)
    from calmerge.io.outputs import run_inputs

    stored = _stored_run_config(store, run)
    inputs = [("results store", store), *run_inputs(stored)]
    check_not_input(out, inputs, "-o")
    if _is_search(store, run):
        return _export_search(store, run, pick=pick, out=out, force=force,
                              max_shard_size=max_shard_size)
    if stored.simplex:
        return _export_simplex(store, run, pick=pick, out=out, force=force,
                               max_shard_size=max_shard_size)
    a = analyse(store, run, pick=pick)
    point, cfg = a.verdict.pick, a.config
    from calmerge.io.models import open_checkpoint
    from calmerge.results.points import check_models_unchanged

    opts = {"allow_pickle": cfg.allow_pickle, "trust_remote_code": cfg.trust_remote_code}
    check_models_unchanged(  # the card's numbers must describe the weights written
        a.run, open_checkpoint(cfg.base, **opts), open_checkpoint(cfg.aligned, base=cfg.base, **opts)
    )
    with tempfile.TemporaryDirectory(prefix="calmerge-card-") as tmp:
        figs = make_figures(a.points, a.verdict, Path(tmp), a.temperature_scaled)
        files = {
            f"figures/{key}.png": figs[key].read_bytes()
            for key in ("acc_vs_ece", "reliability")
            if key in figs
        }
    card = card_metrics(
        point, run_id=a.run.id, run_name=a.run.name, rule=pick, verdict=a.verdict,
        figures=list(files),
    )
    path = merge_pair(
        cfg.base,
        cfg.aligned,
        point.lam,
        Path(out),
        method=point.family,
        density=cfg.density,
        seed=cfg.seed,
        force=force,
        max_shard_size=max_shard_size,
        model_card_extra=card,
        extra_files=files,
        allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
    )
    return path, point


def _export_simplex(
    store: str | Path, run: str | None, *, pick: str, out: str | Path, force: bool,
    max_shard_size: str,
) -> tuple[Path, Point]:
    """Write a simplex point (the pick, or `weights=…`) through the merge engine, its card
    carrying the measured numbers and the recipe (the same MergeConfig the sweep applied)."""
    from calmerge.io.models import open_checkpoint
    from calmerge.merge.engine import merge_simplex
    from calmerge.report.card import simplex_card
    from calmerge.results.points import check_models_unchanged

    a = analyse_simplex(store, run, pick=pick)
    cfg, point = a.config, a.verdict.pick
    opts = {"allow_pickle": cfg.allow_pickle, "trust_remote_code": cfg.trust_remote_code}
    check_models_unchanged(a.run, *(
        open_checkpoint(m.path, **opts, **({"base": cfg.base} if i else {}))
        for i, m in enumerate(cfg.models)
    ), names=a.names)
    path = merge_simplex(
        [m.path for m in cfg.models], point.mix, Path(out), method=point.family, force=force,
        max_shard_size=max_shard_size, allow_pickle=cfg.allow_pickle,
        trust_remote_code=cfg.trust_remote_code,
        model_card_extra=simplex_card(point, a.verdict, run_id=a.run.id, run_name=a.run.name),
    )
    return path, point


def _export_search(
    store: str | Path, run: str | None, *, pick: str, out: str | Path, force: bool,
    max_shard_size: str,
) -> tuple[Path, Point]:
    """Write a searched candidate (the pick rule over the search's dev frontier, or
    `candidate=ID`) through the merge engine; `mergekit_config.yml` beside it holds the
    per-layer gradients mergekit reproduces."""
    from calmerge.analysis.pick import pick as pick_point
    from calmerge.errors import ConfigError
    from calmerge.io.models import open_checkpoint
    from calmerge.merge.engine import run_merge
    from calmerge.merge.genome import parse_space
    from calmerge.report.search import search_card
    from calmerge.results.points import check_models_unchanged
    from calmerge.sweep.search import candidate_config

    a = analyse_search(store, run)
    v, cfg = a.verdict, a.config
    if pick.strip().startswith("candidate="):
        want = pick.strip().removeprefix("candidate=")
        found = next((c for c in v.candidates if str(c.point_id) == want), None)
        if found is None:
            raise ConfigError(
                f"pick rule '{pick}': run {a.run.id} has no candidate {want}",
                "the search report's frontier table lists each candidate's id",
            )
    else:
        chosen = pick_point([c.point for c in v.front], pick, split="dev",
                            objectives=v.objectives)
        found = next(c for c in v.front if c.point is chosen)
    opts = {"allow_pickle": cfg.allow_pickle, "trust_remote_code": cfg.trust_remote_code}
    check_models_unchanged(a.run, open_checkpoint(cfg.base, **opts),
                           open_checkpoint(cfg.aligned, base=cfg.base, **opts))
    config = candidate_config(parse_space(a.study["space"]), cfg.base, cfg.aligned, found.genome)
    result = run_merge(config, Path(out), force=force, max_shard_size=max_shard_size,
                       allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
                       quiet=True, model_card_extra=search_card(
                           found, v, a.study, run_id=a.run.id, run_name=a.run.name))
    return result.path, found.point


def _stored_run_config(store: str | Path, run: str | None) -> SweepConfig:
    """The run's stored config, the store closed again (nothing of it left open or written)."""
    with _open_store(store) as db:
        return stored_config(db.run(run))


def _open_store(store: str | Path) -> ResultStore:
    from calmerge.results.store import ResultStore

    path = Path(store)
    if not path.is_file():
        raise StoreError(f"{path}: results store not found", "run `calmerge sweep` first or pass --store")
    return ResultStore(path)


@dataclass(frozen=True)
class DemoReport:
    """The demo's two studies: the λ sweep base→aligned, then the base–SFT–DPO triangle."""

    sweep: SweepReport
    triangle: SweepReport


#: the demo triangle's grid spacing: 21 points (plus refinement), about a minute on 2 cores
DEMO_SIMPLEX_STEP = 0.2


def demo(out: str | Path = "demo-output", *, seed: int = 0, progress: bool = True) -> DemoReport:
    """The whole study on the built-in organism: build (or reuse) it, sweep λ between its base
    and aligned model, then sweep the triangle of its three stages (base, SFT, SFT+DPO).

    Reports land at `out/report.html` (λ) and `out/triangle/report.html`; both runs share the
    store `out/runs.db`, so re-running the demo resumes instead of recomputing.
    """
    from calmerge.organism import build_organism

    out = Path(out)
    org = build_organism(seed=seed, progress=progress)
    common = dict(data=str(org.test), dev=str(org.dev), prompts=str(org.prompts),
                  store=str(out / "runs.db"), seed=seed)
    lam = sweep(SweepConfig(name=f"organism seed {seed}", base=str(org.base),
                            aligned=str(org.aligned), out=str(out), **common), progress=progress)
    triangle = sweep(SweepConfig(
        name=f"organism seed {seed}: base · sft · dpo",
        models=[f"base={org.base}", f"sft={org.sft}", f"dpo={org.aligned}"],
        simplex_step=DEMO_SIMPLEX_STEP, out=str(out / "triangle"), **common,
    ), progress=progress)
    return DemoReport(lam, triangle)


# ───────────────────────────── built-in default ─────────────────────────────


def build_organism(
    out: str | Path | None = None,
    *,
    seed: int = 0,
    recipe: Recipe | str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> OrganismPaths:
    """Build (or reuse from the cache) the built-in organism — every stage (base, sft, aligned,
    hedged) and its evaluation files; returns OrganismPaths.

    `recipe` is an `organism.Recipe` or a path to a YAML recipe; None is the demo's recipe.
    """
    from calmerge.organism import build_organism as build

    return build(
        out, seed=seed, recipe=load_organism_recipe(recipe), cache_dir=cache_dir,
        progress=progress, force=force,
    )


def load_organism_recipe(recipe: Recipe | str | Path | None) -> Recipe:
    """A Recipe from a Recipe, a YAML path, or None (the default recipe)."""
    from calmerge.config import load_yaml, validate
    from calmerge.organism import Recipe, default_recipe

    if recipe is None:
        return default_recipe()
    if isinstance(recipe, Recipe):
        return recipe
    return validate(Recipe, load_yaml(Path(recipe)), str(recipe))

