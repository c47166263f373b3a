"""The tasks of a sweep: loaded and tokenised once, scored at every point, stored per task.

Why a module of its own: a sweep scores one task or several (`--data` repeated, or a list in
the YAML), each with its own dev split and prompt settings, after ONE interpolation per point.
Everything per task lives here — loading and checking the data, naming the task, its scorers,
turning a scored split into store rows, and reading a split a killed run had already stored
back into the same objects — so the sweep loop only says when.

Split names in the store: a single-task sweep keeps "test"/"dev" (as stores written before
multi-task sweeps do); a multi-task sweep stores each task under "test@NAME"/"dev@NAME" and
the aggregate over tasks under "test"/"dev", so everything that reads "test" (frontier, pick,
verdict, report, export) reads the aggregate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calmerge.config import SweepConfig, TaskSpec
from calmerge.errors import ConfigError
from calmerge.eval.aggregate import TaskOutcome
from calmerge.eval.data.benchmark import Benchmark
from calmerge.eval.metrics import Metric, choice_view
from calmerge.results.store import Prediction
from calmerge.splits import split_key


@dataclass
class SweepTask:
    """One task: its settings, its loaded data per split, and (once built) its scorers."""

    name: str
    spec: TaskSpec
    benches: dict[str, Benchmark]
    multi: bool
    scorers: dict[str, Any] = field(default_factory=dict)
    fewshot_items: tuple = ()

    def key(self, split: str) -> str:
        return split_key(split, self.name if self.multi else None)

    @property
    def keys(self) -> list[str]:
        return [self.key(s) for s in self.benches]

    @property
    def size(self) -> int:
        return sum(len(s.items) for s in self.scorers.values())


def load_tasks(cfg: SweepConfig) -> list[SweepTask]:
    """Every task's data, loaded and checked before any model work (see the checks below)."""
    from calmerge.eval.data import items_digest, load_benchmark

    specs = cfg.tasks()
    multi = cfg.multi_task
    tasks: list[SweepTask] = []
    seen: dict[str, str] = {}
    for spec in specs:
        benches = {"test": load_benchmark(spec.data)}
        if spec.dev:
            benches["dev"] = load_benchmark(spec.dev)
            if items_digest(benches["dev"].items) == items_digest(benches["test"].items):
                raise ConfigError(
                    f"--dev {spec.dev} holds the same items as --data {spec.data}: λ would be"
                    " chosen on the data it is reported on, while the report said it was chosen"
                    " on dev",
                    "give a separate dev split, or drop --dev (the report then says the pick"
                    " was chosen on test)",
                )
        name = spec.name or benches["test"].name
        if name in seen:
            raise ConfigError(
                f"two tasks are named '{name}' (--data {seen[name]} and --data {spec.data})",
                "name them apart in the sweep YAML: data: [{data: …, name: …}, …]",
            )
        seen[name] = spec.data
        tasks.append(SweepTask(name=name, spec=spec, benches=benches, multi=multi))
    with_dev = [t.name for t in tasks if "dev" in t.benches]
    if with_dev and len(with_dev) != len(tasks):
        lacking = next(t.name for t in tasks if "dev" not in t.benches)
        raise ConfigError(
            f"task '{with_dev[0]}' has a dev split and task '{lacking}' has none: λ is chosen on"
            " the aggregate of the dev splits",
            "give every task a dev split, or none (the pick is then chosen on test)",
        )
    return tasks


def build_scorers(task: SweepTask, tokenizer: Any, cfg: SweepConfig, max_positions: Any) -> None:
    """Tokenise every split of a task once; prompts too long for the model fail here.

    Few-shot examples are the first `fewshot` dev items and are not also scored.
    """
    spec = task.spec
    items = {s: list(b.items) for s, b in task.benches.items()}
    shots = spec.fewshot or 0
    if shots and any(b.scoring is not None for b in task.benches.values()):
        # its dev docs are scored by lm-eval's program, doc for doc: none can become a shot
        raise ConfigError(
            f"task '{task.name}' is an lm-eval task: its few-shot examples are lm-eval's own,"
            f" not --fewshot {shots} from its dev split",
            "ask lm-eval for them (lmeval:TASK?fewshot=N), and set fewshot: 0 for this task",
        )
    fewshot = items["dev"][:shots] if shots and "dev" in items else []
    if fewshot:
        items["dev"] = items["dev"][shots:]
        if not items["dev"]:
            raise ConfigError(
                f"--fewshot {shots} uses every dev item of task '{task.name}'",
                "use fewer few-shot examples",
            )
    task.fewshot_items = tuple(fewshot)
    for split, its in items.items():
        scorer = task_scorer(task, tokenizer, cfg, its)
        scorer.check_context(max_positions)
        task.scorers[split] = scorer


def task_scorer(task: SweepTask, tokenizer: Any, cfg: Any, items: list) -> Any:
    """A scorer of `items` with the task's prompt settings and few-shot examples (a split, or
    a subset of one: the search's anchor items)."""
    from calmerge.eval.data import native_template
    from calmerge.eval.score import Scorer

    spec = task.spec
    return Scorer(
        tokenizer,
        items,
        mode=spec.mode or cfg.mode,
        template=spec.prompt_template or native_template(spec.data),
        prompt_format=spec.prompt_format or cfg.prompt_format,
        fewshot=list(task.fewshot_items),
        batch_size=cfg.batch_size,
        form=cfg.scoring_form,
    )


def scored_bench(task: SweepTask, split: str) -> Benchmark:
    """The benchmark as scored: the dev split without its few-shot examples."""
    import dataclasses

    bench = task.benches[split]
    shots = len(task.fewshot_items) if split == "dev" else 0
    return dataclasses.replace(bench, items=bench.items[shots:]) if shots else bench


@dataclass(frozen=True)
class ScoredSplit:
    """One task's split at one point: what the store keeps and what aggregation reads."""

    outcome: TaskOutcome
    predictions: list[Prediction]
    notes: tuple[str, ...] = ()

    @property
    def metrics(self) -> dict[str, tuple[float, float, float]]:
        return {k: (m.value, m.lo, m.hi) for k, m in self.outcome.metrics.items()}


def score_split(
    task: SweepTask, split: str, result: Any, cfg: SweepConfig
) -> ScoredSplit:
    """A scored split's metrics (the task's own where it defines them) and per-item rows."""
    from calmerge.eval.taskmetrics import benchmark_metrics

    scores = benchmark_metrics(
        scored_bench(task, split), result, n_boot=cfg.n_boot, seed=cfg.seed, n_bins=cfg.n_bins
    )
    outcome = TaskOutcome(
        name=task.name,
        metrics=dict(scores.metrics),
        score=np.asarray(scores.score, dtype=float),
        weight=np.asarray(scores.weight, dtype=float),
        view=choice_view(result),
        gold=bool(scores.gold),
    )
    return ScoredSplit(outcome, predictions(result, outcome), tuple(scores.notes))


def predictions(result: Any, outcome: TaskOutcome) -> list[Prediction]:
    """Per-item store rows, in item order (padding choices dropped); `score`/`weight` only
    where they differ from correctness and 1, so ordinary tasks store what they always did."""
    own_score = not outcome.gold or not np.array_equal(
        outcome.score, np.asarray(result.correct, dtype=float)
    )
    weighted = not np.all(outcome.weight == 1.0)
    return [
        Prediction(
            item_id=str(item_id),
            answer=int(result.answer[i]),
            pred=int(result.pred[i]),
            confidence=float(result.confidence[i]),
            logprobs=[float(x) for x in result.choice_logprobs[i][result.mask[i]]],
            score=float(outcome.score[i]) if own_score else None,
            weight=float(outcome.weight[i]) if weighted else None,
        )
        for i, item_id in enumerate(result.ids)
    ]


def stored_split(
    task: SweepTask, split: str, metrics: dict[str, tuple[float, float, float]],
    preds: list[Prediction],
) -> ScoredSplit:
    """A split a killed run had finished, rebuilt from the store exactly as it was scored:
    the log-likelihoods are stored, so the answer distribution, predictions and calmerge's
    per-item arrays follow from them with the scorer's own normalisation lengths."""
    from calmerge.analysis.baseline import choice_arrays
    from calmerge.eval.score import finalize

    scorer = task.scorers[split]
    ll, _, _ = choice_arrays(preds)  # as wide as the widest item, as the scorer's arrays are
    result = finalize(
        [p.item_id for p in preds], ll, scorer.mask, scorer.answer, scorer.norm_lengths,
        scorer.mode,
    )
    outcome = TaskOutcome(
        name=task.name,
        metrics={k: Metric(*v) for k, v in metrics.items()},
        score=np.array([p.value for p in preds], dtype=float),
        weight=np.array([1.0 if p.weight is None else p.weight for p in preds]),
        view=choice_view(result),
        gold="ece" in metrics,
    )
    return ScoredSplit(outcome, preds)
