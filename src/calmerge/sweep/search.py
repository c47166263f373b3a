"""Per-layer merge coefficients by multi-objective evolution, every candidate in place.

Mergenetic and mergekit-evolve write every candidate to disk with mergekit and reload it to
score it. Here a candidate is a genome (`merge.genome`: K anchors of λ across depth, mergekit's
gradient semantics), turned into the merge config it stands for and applied to the one live
model by the merge engine's own per-tensor function (`LiveInterpolator.apply_config`), then
scored on pre-tokenised dev items — seconds, no disk.

Cheap fitness (`analysis.budget`): the parents are scored on all of dev once; their per-item
answers choose a small anchor subset (tinyBenchmarks' anchor points: cluster the items, one
representative per cluster, weighted by cluster size). Every candidate is first scored on the
anchors only, giving an estimate of its full-dev accuracy and ECE with a bootstrap interval;
racing then promotes to the full dev split only the candidates that could still be on the
frontier (their optimistic bound is not dominated by anyone's pessimistic bound). NSGA-II
(pymoo, ask/tell) sees each candidate's best-known numbers: full dev where it was promoted,
else the estimate. The budget counts dev item-evaluations.

A diversity objective (`--objectives acc,ece,diversity`, a generation metric of the registry)
is raced the same way on sampled generations: the open-ended prompts are split once into dev
and test halves, a candidate first samples only the anchor prompts (chosen from the parents'
per-prompt diversity), is estimated from them with a bootstrap interval over prompts, and a
promotion samples the rest of the dev prompts. Its samples are stored with it, so a resumed
search reads them back like its scores.

Every evaluation is a row of the results store (a candidate is a point keyed by its genome;
splits "anchor", "dev", "test"), and the algorithm is seeded: a killed search re-runs the same
generations, reads every stored evaluation back instead of recomputing it, and continues.

At the end the dev frontier of the fully scored candidates is scored on test, beside a scalar-λ
sweep given the same dev budget (the λ grid the budget pays for), and the two frontiers are
compared by hypervolume on test with a paired bootstrap interval over the test items.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calmerge.analysis.budget import higher_is_better
from calmerge.config import MergeConfig, SearchConfig
from calmerge.coords import Weights, weights_of
from calmerge.errors import ConfigError
from calmerge.merge.genome import Space, candidate_settings, check_layers, parse_space, round_genome
from calmerge.sweep.anchors import (
    MIN_PROMPTS,
    AnchorRung,
    default_anchor_prompts,
    default_anchors,
    exact,
    prompt_values,
    split_prompt_ids,
)

#: the family every candidate and the λ baseline are stored under (both are `linear` merges)
FAMILY = "linear"


def import_pymoo() -> None:
    """pymoo is the optional extra `[search]`: its absence is one line, before any work."""
    try:
        import pymoo  # noqa: F401
    except ImportError:
        raise ConfigError(
            "calmerge search needs pymoo (NSGA-II), which is not installed",
            "pip install 'calmerge[search]'",
        ) from None


def default_budget(n_dev: int) -> int:
    """40 full-dev evaluations' worth of item-evaluations."""
    return 40 * n_dev


def minimum_budget(n_dev: int, population: int, anchors: int) -> int:
    """The parents on all of dev, then one generation on the anchors: less than this cannot
    run a single step of the search."""
    return 2 * n_dev + population * anchors


def check_budget(cfg: SearchConfig, n_dev: int, anchors: int) -> int:
    budget = cfg.budget if cfg.budget is not None else default_budget(n_dev)
    need = minimum_budget(n_dev, cfg.population, anchors)
    if budget < need:
        raise ConfigError(
            f"--budget {budget:,} item-evaluations is less than one step of the search:"
            f" {need:,} (both parents on all {n_dev} dev items, then {cfg.population}"
            f" candidates on {anchors} anchor items)",
            f"give --budget {need:,} or more (default: {default_budget(n_dev):,}), or a smaller"
            " --population / --anchors",
        )
    return budget


def genome_weights(space: Space, genome: Sequence[float]) -> Weights:
    """A genome as the store keys a point: (gene name, value) pairs."""
    return weights_of(zip(space.genes, genome, strict=True))


def candidate_config(space: Space, base: str, aligned: str, genome: Sequence[float],
                     *, out_dtype: str | None = None) -> MergeConfig:
    """The candidate as a validated MergeConfig (fp32 compute, as `calmerge merge`)."""
    return MergeConfig(**candidate_settings(space, base, aligned, genome),
                       compute_dtype="float32", out_dtype=out_dtype)


@dataclass
class Evaluated:
    """What is known of one candidate: its estimate from the anchors and, once promoted, its
    exact dev numbers."""

    genome: tuple[float, ...]
    point_id: int
    estimate: Any  # analysis.budget.Estimate
    dev: dict[str, float] | None = None  # every objective on all of dev (items and prompts)

    def value(self, name: str) -> float:
        if self.dev is not None:
            return self.dev[name]
        return self.estimate.get(name).value


@dataclass
class SearchOutcome:
    run_id: int
    evaluated: list[Evaluated] = field(default_factory=list)
    spent: int = 0  # dev item-evaluations, including those read back from the store
    computed: int = 0  # candidate evaluations (anchor or dev) this session actually ran
    generations: int = 0
    lam_points: list[float] = field(default_factory=list)
    front: list[Evaluated] = field(default_factory=list)


class Search:
    """A prepared search: the pair open, dev and test tokenised, anchors chosen lazily."""

    def __init__(self, cfg: SearchConfig, *, progress: bool = True) -> None:
        from calmerge.eval.data import load_benchmark
        from calmerge.io.models import open_checkpoint
        from calmerge.sweep.runner import Sweep

        self.cfg = cfg
        self.progress = progress
        import_pymoo()
        self.space = parse_space(cfg.space)
        # everything that can be refused is refused before the sweep machinery writes a store
        base = open_checkpoint(cfg.base, allow_pickle=cfg.allow_pickle,
                               trust_remote_code=cfg.trust_remote_code)
        check_layers(self.space, base.num_layers, str(cfg.base))
        self.diversity = cfg.diversity
        self.dev_prompts: list[Any] = []
        self.test_prompts: list[Any] = []
        if self.diversity:
            self._split_prompts()
        dev = load_benchmark(cfg.dev)
        if dev.scoring is not None:
            raise ConfigError(
                f"--dev {cfg.dev}: an lm-eval task with its own scoring program; the search"
                " scores subsets of dev, which that program does not define",
                "give the search a dev split of plain items (JSONL/CSV or hf:…)",
            )
        n_dev = len(dev.items) - cfg.fewshot
        self.n_anchors = min(n_dev, cfg.anchors or default_anchors(n_dev))
        self.budget = check_budget(cfg, n_dev, self.n_anchors)
        self.sweep = Sweep(cfg.sweep_config(), study=cfg.study())
        self.store = self.sweep.store
        self.run = self.sweep.run
        self.task = self.sweep.tasks[0]
        self.n_dev = len(self.task.scorers["dev"].items)
        n_p = len(self.dev_prompts)
        self._parents_known: list[Any] | None = None
        self.rung = AnchorRung(self.sweep, self.n_anchors, diversity=self.diversity,
                               prompts=self.dev_prompts,
                               k_prompts=min(n_p, cfg.anchor_prompts or default_anchor_prompts(n_p)))

    def _split_prompts(self) -> None:
        """The open-ended prompts in dev and test halves (`split_prompt_ids`): candidates are
        selected on the dev prompts' diversity and the final frontiers reported on the test
        prompts', as with items."""
        from calmerge.eval.data.files import load_prompts

        prompts = load_prompts(self.cfg.prompts)
        if len(prompts) < MIN_PROMPTS:
            raise ConfigError(
                f"--prompts {self.cfg.prompts}: {len(prompts)} prompts; a diversity search"
                f" splits them into dev and test halves and needs at least {MIN_PROMPTS}",
                "give more open-ended prompts (tens: diversity is averaged over prompts)",
            )
        dev_ids, _ = split_prompt_ids([p.id for p in prompts], self.cfg.seed)
        dev = set(dev_ids)
        self.dev_prompts = [p for p in prompts if p.id in dev]
        self.test_prompts = [p for p in prompts if p.id not in dev]

    # ── evaluation of one candidate ──
    def _apply(self, genome: Sequence[float]) -> None:
        s = self.sweep
        s._load()
        config = candidate_config(self.space, str(s.base.path), str(s.aligned.path), genome,
                                  out_dtype=s._interp._out_dtype)
        s._interp.apply_config(config)

    def _score(self, scorer: Any, split: str) -> Any:
        from calmerge.sweep.tasks import score_split

        result = scorer.score(self.sweep._model)
        return score_split(self.task, split, result, self.sweep.cfg)

    def _choose_anchors(self) -> None:
        self.rung.choose(self._lam_point(0.0), self._lam_point(1.0))

    def _lam_point(self, lam: float) -> int:
        return self.sweep.done_ids(FAMILY)[lam]

    def _stored(self, genome: tuple) -> tuple[int | None, dict]:
        """(point id, metrics) of a stored candidate; (None, {}) if it was never finished."""
        pid = self.sweep.done_ids(FAMILY).get(genome_weights(self.space, genome))
        return (pid, self.store.metrics(pid)) if pid is not None else (None, {})

    def evaluate_anchor(self, genome: tuple, outcome: SearchOutcome) -> Evaluated:
        """The candidate on the anchor items (read back if stored; if another live search is
        computing it, its row is waited for)."""
        key = genome_weights(self.space, genome)
        while True:
            pid, metrics = self._stored(genome)
            if pid is not None:
                break
            self.store.add_points(self.run.id, FAMILY, [key])
            pid = self.store.claim(self.run.id, FAMILY, key)
            if pid is None:
                time.sleep(0.5)
                continue
            start = time.perf_counter()
            try:
                self._apply(genome)
                metrics, preds, gens = self.rung.score()
                self.store.finish_point(pid, metrics=metrics, predictions=preds,
                                        generations=gens, seconds=time.perf_counter() - start)
            except BaseException:
                self.store.release(pid)
                raise
            outcome.computed += 1
            metrics = self.store.metrics(pid)
            break
        outcome.spent += self.rung.size
        # a dev split stored by an earlier session is read back when racing promotes the
        # candidate again (the same decision, replayed), so its cost is counted again too
        return Evaluated(genome, pid, self.rung.estimate_of(metrics))

    def promote(self, ev: Evaluated, outcome: SearchOutcome) -> None:
        """Score a candidate on all of dev (once: a stored dev split is read back)."""
        metrics = self.store.metrics(ev.point_id)
        if "dev" not in metrics:
            self._save_split(ev, "dev", self.dev_prompts)
            outcome.computed += 1
            metrics = self.store.metrics(ev.point_id)
        outcome.spent += self.n_dev
        ev.dev = {k: metrics["dev"][k][0] for k in self.cfg.objectives}

    def score_test(self, ev: Evaluated) -> None:
        """The final frontier's candidates on test (not part of the dev budget)."""
        if "test" not in self.store.metrics(ev.point_id):
            self._save_split(ev, "test", self.test_prompts)

    def _save_split(self, ev: Evaluated, split: str, prompts: Sequence[Any]) -> None:
        """The candidate on every item of `split` and, with a diversity objective, on every
        prompt of that half (sampling only those its rungs have not sampled yet): the
        split's metrics, predictions and new samples in one transaction."""
        self._apply(ev.genome)
        got = self._score(self.task.scorers[split], split)
        metrics, gens = dict(got.metrics), {}
        if self.diversity:
            have = self.store.generations(ev.point_id)
            missing = [p for p in prompts if p.id not in have]
            gens = self.sweep.sample(missing) if missing else {}
            values = prompt_values(self.diversity, {**have, **gens}, [p.id for p in prompts])
            metrics[self.diversity] = (float(np.mean(values)), float("nan"), float("nan"))
        self.store.save_splits(ev.point_id, metrics={split: metrics},
                               predictions={split: got.predictions}, generations=gens)

    # ── the loop ──
    def _parents(self, outcome: SearchOutcome, bar: Any) -> None:
        from calmerge.sweep.runner import SweepOutcome

        bar.add(2 * (self.sweep.work_per_point - self.n_dev))  # their test items too
        self.sweep._run_points(FAMILY, [0.0, 1.0], SweepOutcome(self.run, self.store.path), bar)
        outcome.spent += 2 * self.n_dev

    def _initial_population(self, rng: np.random.Generator) -> np.ndarray:
        """Half the first generation on the scalar-λ line (every gene equal: the paper's
        merges, evenly spaced), half uniform at random: the search starts from what one λ can
        do and can only add to it."""
        g, p, upper = len(self.space.genes), self.cfg.population, self.cfg.upper
        line = np.repeat(np.linspace(0.0, upper, p // 2)[:, None], g, axis=1)
        rand = rng.uniform(0.0, upper, size=(p - p // 2, g))
        return np.vstack([line, rand])

    def execute(self, on_generation: Callable[[SearchOutcome], None] | None = None) -> SearchOutcome:
        """Search until the budget cannot pay for another generation; then the test frontier
        and the scalar-λ baseline of the same budget."""
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem

        from calmerge.analysis.budget import promising
        from calmerge.sweep.runner import PointBar

        cfg, space = self.cfg, self.space
        outcome = SearchOutcome(self.run.id)
        with PointBar(enabled=self.progress) as bar:
            bar.add(self.budget)
            self._parents(outcome, bar)
            self._choose_anchors()
            g = len(space.genes)
            problem = Problem(n_var=g, n_obj=len(cfg.objectives), xl=np.zeros(g),
                              xu=np.full(g, cfg.upper))
            rng = np.random.default_rng(cfg.seed)
            algorithm = NSGA2(pop_size=cfg.population, sampling=self._initial_population(rng),
                              eliminate_duplicates=True)
            algorithm.setup(problem, seed=cfg.seed, termination=("n_gen", 10**9), verbose=False)
            known: dict[tuple, Evaluated] = {}
            step = cfg.population * self.rung.size
            while outcome.spent + step <= self.budget:
                pop = algorithm.ask()
                genomes = [round_genome(x, 0.0, cfg.upper) for x in pop.get("X")]
                pop.set("X", np.array(genomes, dtype=float))
                evs = []
                for genome in genomes:
                    bar.describe(f"generation {outcome.generations + 1}: anchors")
                    ev = known.get(genome) or self.evaluate_anchor(genome, outcome)
                    known[genome] = ev
                    evs.append(ev)
                    bar.advance(self.rung.size)
                # racing: this generation against everything already scored on all of dev,
                # the parents included; the most promising (by estimate) promoted first
                full = [e for e in known.values() if e.dev is not None]
                field_ = [*evs, *[e for e in full if all(e is not x for x in evs)]]
                bounds = [self._as_estimate(e) for e in field_] + self._parent_bounds()
                keep = [i for i in promising(bounds, cfg.objectives) if i < len(field_)
                        and field_[i].dev is None]
                keep = self._best_first(keep, field_)[: math.ceil(cfg.promote * cfg.population)]
                for i in keep:
                    ev = field_[i]
                    if outcome.spent + self.n_dev <= self.budget:
                        bar.describe(f"generation {outcome.generations + 1}: promoting")
                        self.promote(ev, outcome)
                        bar.advance(self.n_dev)
                pop.set("F", np.array([self._fitness(e) for e in evs], dtype=float))
                algorithm.tell(infills=pop)
                outcome.generations += 1
                if on_generation is not None:
                    on_generation(outcome)
            outcome.evaluated = list(known.values())
            self._finish(outcome, bar)
        return outcome

    def _best_first(self, keep: list[int], field_: list[Evaluated]) -> list[int]:
        """Successive halving's order: by Pareto rank of the estimates among the kept
        candidates (the non-dominated first), then by estimated accuracy."""
        f = {i: np.array(self._fitness(field_[i])) for i in keep}
        rank = {i: sum(bool(np.all(f[j] <= f[i]) and np.any(f[j] < f[i])) for j in keep)
                for i in keep}
        return sorted(keep, key=lambda i: (rank[i], *f[i], field_[i].genome))

    def _parent_bounds(self) -> list[Any]:
        """The parents' exact dev numbers: a candidate they dominate is not worth promoting
        (read once: every generation races against them)."""
        if self._parents_known is None:
            self._parents_known = self._read_parent_bounds()
        return self._parents_known

    def _read_parent_bounds(self) -> list[Any]:
        out = []
        for lam in (0.0, 1.0):
            pid = self._lam_point(lam)
            dev = self.store.metrics(pid)["dev"]
            others = {}
            if self.diversity:
                values = prompt_values(self.diversity, self.store.generations(pid),
                                       [p.id for p in self.dev_prompts])
                others[self.diversity] = float(np.mean(values))
            out.append(exact(dev["acc"][0], dev["ece"][0], self.n_dev, others))
        return out

    def _as_estimate(self, ev: Evaluated) -> Any:
        """A candidate's numbers as racing sees them: exact (a zero-width interval) once it was
        scored on all of dev, else the anchor estimate."""
        if ev.dev is None:
            return ev.estimate
        rest = {self.diversity: ev.dev[self.diversity]} if self.diversity else None
        return exact(ev.dev["acc"], ev.dev["ece"], self.n_dev, rest)

    def _fitness(self, ev: Evaluated) -> list[float]:
        """pymoo minimises: −accuracy, ECE, ∓diversity (best known numbers)."""
        return [-ev.value(o) if higher_is_better(o) else ev.value(o) for o in self.cfg.objectives]

    def _finish(self, outcome: SearchOutcome, bar: Any) -> None:
        """The dev frontier of the fully scored candidates on test; the λ baseline at equal
        budget (the λ grid `spent` pays for, parents included) on dev and test."""
        from calmerge.sweep.runner import SweepOutcome

        full = [e for e in outcome.evaluated if e.dev is not None]
        outcome.front = dev_front(full, self.cfg.objectives)
        for ev in outcome.front:
            bar.describe("frontier on test")
            self.score_test(ev)
        n_lam = max(2, outcome.spent // self.n_dev)
        lams = [round(i / (n_lam - 1), 6) for i in range(n_lam)]
        outcome.lam_points = lams
        bar.describe(f"scalar λ baseline: {n_lam} points")
        bar.add(len(lams) * self.sweep.work_per_point)
        self.sweep._run_points(FAMILY, lams, SweepOutcome(self.run, self.store.path), bar)

    def close(self) -> None:
        self.sweep.close()


def dev_front(evs: Sequence[Evaluated], objectives: Sequence[str]) -> list[Evaluated]:
    """The candidates no other fully scored candidate dominates on dev."""
    signs = {o: 1.0 if higher_is_better(o) else -1.0 for o in objectives}
    vals = [np.array([signs[o] * e.dev[o] for o in objectives]) for e in evs]
    out = []
    for i, v in enumerate(vals):
        if not any(np.all(w >= v) and np.any(w > v) for j, w in enumerate(vals) if j != i):
            out.append(evs[i])
    # one candidate per distinct dev outcome (genomes that score the same are kept once)
    seen: set[tuple] = set()
    uniq = []
    for e in sorted(out, key=lambda e: (-e.dev["acc"], e.dev["ece"], e.genome)):
        key = tuple(round(e.dev[o], 12) for o in objectives)
        if key not in seen:
            seen.add(key)
            uniq.append(e)
    return uniq

