"""One model, measured: score the items, sample the prompts, compute every registered metric.

`calmerge eval` in one function, the single-model twin of the sweep runner: every input is
validated (items, prompts, template, chat template, context length) before the model runs, so a
user mistake leaves nothing behind. Writing the results is the caller's (`api.evaluate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from calmerge.config import EvalConfig
from calmerge.eval.calibration import reliability_bins
from calmerge.eval.data import load_items, load_prompts, native_template
from calmerge.eval.loading import load_model, load_tokenizer
from calmerge.eval.metrics import Metric, compute_metrics, diversity_metrics
from calmerge.eval.score import Scorer, ScoreResult, context_limit


@dataclass(frozen=True)
class Evaluation:
    """Metrics with intervals, per-item scores, reliability bins and diversity of one model."""

    metrics: dict[str, Metric]
    result: ScoreResult
    reliability: list[dict[str, float]]
    diversity: dict[str, float] | None
    samples: dict[str, list[str]] | None  # prompt id -> its samples
    seconds: float


def evaluate_model(cfg: EvalConfig, *, progress: bool = False) -> Evaluation:
    """Score `cfg.data` (and sample `cfg.prompts`) with the model `cfg.model`."""
    items = load_items(cfg.data)
    fewshot = load_items(cfg.dev)[: cfg.fewshot] if cfg.dev else []
    prompts = load_prompts(cfg.prompts) if cfg.prompts else []
    # prompts are built (and chat templates rendered, under their time budget) before the
    # model loads: a bad template or item costs seconds, not a model load
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    scorer = Scorer(
        tokenizer, items, mode=cfg.mode, template=cfg.prompt_template or native_template(cfg.data),
        prompt_format=cfg.prompt_format, fewshot=fewshot, batch_size=cfg.batch_size,
    )
    model, tokenizer = load_model(
        cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle, tokenizer=tokenizer,
    )
    scorer.check_context(context_limit(model))
    start = time.perf_counter()
    result = scorer.score(model, progress=progress)
    metrics = compute_metrics(result, n_boot=cfg.n_boot, seed=cfg.seed, n_bins=cfg.n_bins)
    reliability = reliability_bins(result.confidence, result.correct, cfg.n_bins)
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
        metrics, result, reliability, diversity, samples, time.perf_counter() - start
    )
