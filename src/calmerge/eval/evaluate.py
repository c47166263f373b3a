"""One model, measured: score the items, sample the prompts, compute every registered metric.

`calmerge eval` in one function, the single-model twin of the sweep runner: every input is
validated (items, prompts, template, chat template, context length) before the model runs, so a
user mistake leaves nothing behind. Writing the results is the caller's (`api.evaluate`).

The data is a Benchmark (`load_benchmark`): for an lm-eval task its metrics are the task's own
(`taskmetrics.benchmark_metrics`: truthfulqa_mc2's acc is its mc2 score, a group's acc lm-eval's
group aggregate), and what was decided on the way (a YAML that fixes num_fewshot, calmerge
metrics left out) travels in `Evaluation.notes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from calmerge.config import EvalConfig, parse_max_memory
from calmerge.errors import DataError
from calmerge.eval.calibration import reliability_bins
from calmerge.eval.data import Benchmark, load_benchmark, load_items, load_prompts, native_template
from calmerge.eval.loading import load_model, load_tokenizer
from calmerge.eval.metrics import Metric, diversity_metrics
from calmerge.eval.score import Scorer, ScoreResult, context_limit
from calmerge.eval.taskmetrics import benchmark_metrics


@dataclass(frozen=True)
class Evaluation:
    """Metrics with intervals, per-item scores, reliability bins and diversity of one model.

    `metrics` are the benchmark's (for an lm-eval task, under lm-eval's names); `reliability` is
    empty when the data has no gold answer calmerge can read (a task with its own
    process_results). `notes`: what the reader of the numbers must know (see `Benchmark.notes`).
    `breakdown`: lm-eval's metrics of each task and group under an lm-eval group or tag.
    """

    metrics: dict[str, Metric]
    result: ScoreResult
    reliability: list[dict[str, float]]
    diversity: dict[str, float] | None
    samples: dict[str, list[str]] | None  # prompt id -> its samples
    seconds: float
    notes: tuple[str, ...] = ()
    breakdown: dict[str, dict[str, Metric]] = field(default_factory=dict)
    dtype: str = "float32"  # what the model was scored in (`--dtype auto` resolved)


def evaluate_model(cfg: EvalConfig, *, progress: bool = False) -> Evaluation:
    """Score `cfg.data` (and sample `cfg.prompts`) with the model `cfg.model`."""
    bench = load_benchmark(cfg.data)
    items = list(bench.items)
    fewshot = load_items(cfg.dev)[: cfg.fewshot] if cfg.dev else []
    prompt_notes = _prompt_notes(cfg, bench, bool(fewshot))
    prompts = load_prompts(cfg.prompts) if cfg.prompts else []
    # prompts are built (and chat templates rendered, under their time budget) before the
    # model loads: a bad template or item costs seconds, not a model load
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    scorer = Scorer(
        tokenizer, items, mode=cfg.mode, template=cfg.prompt_template or native_template(cfg.data),
        prompt_format=cfg.prompt_format, fewshot=fewshot, batch_size=cfg.batch_size,
        form=cfg.scoring_form,
    )
    model, tokenizer = load_model(
        cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle, tokenizer=tokenizer, device_map=cfg.device_map,
        max_memory=parse_max_memory(cfg.max_memory),
    )
    scorer.check_context(context_limit(model))
    start = time.perf_counter()
    result = scorer.score(model, progress=progress)
    scores = benchmark_metrics(bench, result, n_boot=cfg.n_boot, seed=cfg.seed, n_bins=cfg.n_bins)
    reliability = (
        reliability_bins(result.confidence, result.correct, cfg.n_bins) if scores.gold else []
    )
    diversity = samples = None
    if prompts:
        from calmerge.eval.generate import sample_generations

        generated = sample_generations(
            model, tokenizer, prompts, k=cfg.samples, temperature=cfg.temperature,
            top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
            chat=cfg.prompt_format == "chat", stop_ids=cfg.stop_token_ids, progress=progress,
        )
        diversity = diversity_metrics(generated, embed=cfg.embed_diversity)
        samples = {p.id: s for p, s in zip(prompts, generated, strict=True)}
    return Evaluation(
        scores.metrics, result, reliability, diversity, samples, time.perf_counter() - start,
        notes=scores.notes + prompt_notes, breakdown=scores.breakdown,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
    )


def _prompt_notes(cfg: EvalConfig, bench: Benchmark, fewshot: bool) -> tuple[str, ...]:
    """For an lm-eval benchmark: refuse what its metrics cannot be computed from, and say when
    the prompts are calmerge's rather than lm-eval's (the metric functions are lm-eval's, the
    numbers then are not). Checked before the model loads."""
    if bench.scoring is None:
        return ()
    if cfg.mode != "loglik" and not bench.scoring.gold:
        raise DataError(
            f"{cfg.data}: the task's own metrics are computed from each choice's "
            f"log-likelihood; --mode {cfg.mode} scores option letters",
            "use --mode loglik for this task",
        )
    changed = []
    if cfg.prompt_template not in (None, native_template(cfg.data)):
        changed.append(f"--prompt-template {cfg.prompt_template!r}")
    if cfg.prompt_format != "plain":
        changed.append(f"--prompt-format {cfg.prompt_format}")
    if fewshot:
        changed.append(f"{cfg.fewshot} few-shot items from --dev")
    if not changed:
        return ()
    return (f"{bench.name}: prompts are not lm-eval's ({', '.join(changed)}): its metric "
            "functions are applied to calmerge's prompts, so the numbers are not lm-eval's",)
