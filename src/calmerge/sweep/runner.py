"""The sweep loop: grid, then adaptive refinement, every point stored as it finishes.

Why this shape: the expensive parts (loading the model, tokenising the data) happen once; each
point only rewrites the weights in place and re-scores pre-tokenised data. Every finished point
is one committed transaction in the results store, so a killed sweep resumes at the first
unfinished point and a second sweep on the same store skips what the first one holds. With
several tasks (`sweep.tasks`) the weights are rewritten once per point and each task is
committed as soon as it is scored, so a point killed midway resumes with the tasks it finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calmerge.config import SweepConfig
from calmerge.coords import Coord, coord_label
from calmerge.errors import StoreError
from calmerge.eval.metrics import Metric
from calmerge.results.store import Prediction, ResultStore, RunRecord, round_lam


def file_digest(path: str | Path) -> str:
    """sha256 of a data file's bytes: a run is tied to the data it saw, not to its path."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def refine_lambdas(
    done: Sequence[tuple[float, float, float]],
    on_front: Sequence[bool],
    *,
    resolution: float,
    limit: int,
) -> list[float]:
    """Midpoints between neighbouring λ where the frontier is, down to `resolution`.

    `done` holds (λ, acc, ece) of finished points of one family, `on_front` whether each is
    non-dominated. The frontier "bends" where a frontier point sits: the interval on either side
    of it is where a better trade-off may hide, so those intervals are halved while wider than
    2·resolution. Returns at most `limit` new λ, closest to frontier points first.
    """
    order = np.argsort([d[0] for d in done])
    lams = [done[i][0] for i in order]
    front = [on_front[i] for i in order]
    out: list[float] = []
    for i in range(len(lams) - 1):
        lo, hi = lams[i], lams[i + 1]
        if not (front[i] or front[i + 1]) or hi - lo <= 2 * resolution + 1e-9:
            continue
        mid = round(round(((lo + hi) / 2) / resolution) * resolution, 6)
        if lo < mid < hi and mid not in out:
            out.append(mid)
    return out[:limit]


@dataclass
class SweepOutcome:
    run: RunRecord
    store_path: Path
    computed: list[tuple[str, Coord]] = field(default_factory=list)
    skipped: list[tuple[str, Coord]] = field(default_factory=list)
    #: where the parents lived (`Placement.describe`), None when no point needed the model
    placement: str | None = None
    #: with --ray: what each worker did (`distributed.WorkerStats`), by worker index
    workers: dict[int, Any] = field(default_factory=dict)
    #: with --budget: the dev item-evaluations spent (stored ones included)
    spent: int | None = None


def plan_identity(cfg: SweepConfig, fingerprints: dict[str, str], data: dict[str, str]) -> dict:
    """What makes two sweeps the same run: models, data bytes and eval settings (not the grid)."""
    return {"models": fingerprints, "data": data, "eval": cfg.eval_identity()}


def check_output_dir(out: Path) -> None:
    """The report directory must be creatable; found out before hours of work, not after."""
    from calmerge.errors import OutputError

    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is a file", "give a directory for the report (--out)")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{out}: not writable", "choose a directory you can write to (--out)")


def shared_stop_ids(*models: Any) -> tuple[int, ...]:
    """The union of every parent's end-of-sequence ids, in the order given (the loaded model's
    first)."""
    from calmerge.eval.generate import stop_token_ids

    ids = [i for m in models for i in stop_token_ids(m.path, m.config)]
    return tuple(dict.fromkeys(ids))


def scan_finite(ckpt: Any) -> None:
    """Refuse NaN/Inf weights before any work, naming the tensor (one read of each parent)."""
    from calmerge.io.validate import check_finite

    for name in ckpt.tensor_names:
        check_finite(ckpt, name, ckpt.get(name))


def worker_sweep(config: dict[str, Any]) -> Sweep:
    """A Ray worker's sweep (`sweep.distributed`): the driver's config, validated and tokenised
    the same way, over a throwaway store and report folder of its own (the driver alone writes
    the real store)."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="calmerge-worker-"))
    cfg = SweepConfig.model_validate(config)
    cfg = cfg.model_copy(update={"out": str(scratch / "report"), "ray": None})
    return Sweep(cfg, store=ResultStore(scratch / "scratch.db"))


class Sweep:
    """A prepared sweep: models open, data tokenised once, store attached.

    Construction does all validation (models, data, config) before any point is computed, so a
    bad input fails in seconds with one line and leaves nothing behind.
    """

    def __init__(
        self, cfg: SweepConfig, *, store: ResultStore | None = None,
        study: dict[str, Any] | None = None,
    ) -> None:
        """`study`: the settings of a study run on this machinery (`sweep.search`): part of the
        run's identity and stored with its config, so it is a run of its own."""
        from calmerge.eval.data import items_digest, load_prompts, source_of
        from calmerge.eval.loading import load_tokenizer
        from calmerge.io.models import open_checkpoint
        from calmerge.io.validate import validate_pair
        from calmerge.sweep.tasks import build_scorers, load_tasks

        self.cfg = cfg
        check_output_dir(Path(cfg.out))
        self._pool: Any = None
        if cfg.ray:  # the cluster is checked before anything is written
            self._ray_check()
        self.base = open_checkpoint(
            cfg.base, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code
        )
        #: a simplex sweep's models by name (its first is `base`, its last `aligned`)
        self.named: dict[str, Any] = {}
        if cfg.simplex:
            self.named[cfg.models[0].name] = self.base
            for m in cfg.models[1:]:
                self.named[m.name] = open_checkpoint(
                    m.path, allow_pickle=cfg.allow_pickle,
                    trust_remote_code=cfg.trust_remote_code, base=cfg.base,
                )
            self.aligned = self.named[cfg.models[-1].name]
            for m in list(self.named.values())[1:]:  # every model shares the base's layout
                self.pair = validate_pair(self.base, m)
        else:
            self.aligned = open_checkpoint(
                cfg.aligned, allow_pickle=cfg.allow_pickle,
                trust_remote_code=cfg.trust_remote_code, base=cfg.base,
            )
            self.pair = validate_pair(self.base, self.aligned)
        for ckpt in self.parents:
            scan_finite(ckpt)
        if cfg.dtype == "auto":
            # resolved before the run's identity: the dtype scored in is what identifies it (a
            # float32 checkpoint's "auto" run is its float32 run) and what the report states
            from calmerge.eval.loading import checkpoint_dtype

            cfg = cfg.model_copy(update={"dtype": checkpoint_dtype(self.aligned)})
            self.cfg = cfg
        if cfg.prompts and cfg.stop_token_ids is None:
            # one generation config for every λ: stop at either parent's end-of-sequence ids
            ids = shared_stop_ids(self.aligned, *[c for c in self.parents if c is not self.aligned])
            cfg = cfg.model_copy(update={"stop_token_ids": ids})
            self.cfg = cfg
        self.tasks = load_tasks(cfg)
        self.prompts = load_prompts(cfg.prompts) if cfg.prompts else []
        self._tokenizer = load_tokenizer(
            cfg.aligned, trust_remote_code=cfg.trust_remote_code, base=cfg.base
        )
        for task in self.tasks:  # tokenised once; a prompt too long fails here, before any work
            build_scorers(
                task, self._tokenizer, cfg, self.aligned.text_setting("max_position_embeddings")
            )
        if self.prompts:  # generation prompts rendered (template time budget) before any work
            from calmerge.eval.generate import build_generation_prompts

            build_generation_prompts(
                self._tokenizer, self.prompts, chat=cfg.prompt_format == "chat"
            )
        digests = {}
        for task in self.tasks:
            refs = {"test": task.spec.data, "dev": task.spec.dev}
            for split, bench in task.benches.items():
                ref = refs[split]
                digests[task.key(split)] = (
                    file_digest(ref) if source_of(ref) == "file" else items_digest(bench.items)
                )
        if cfg.prompts:
            digests["prompts"] = file_digest(cfg.prompts)
        if cfg.budget is not None:
            from calmerge.sweep.anchors import check_sweep_budget

            check_sweep_budget(self)
        fingerprints = (
            {name: c.fingerprint() for name, c in self.named.items()} if cfg.simplex
            else {"base": self.base.fingerprint(), "aligned": self.aligned.fingerprint()}
        )
        identity = plan_identity(cfg, fingerprints, digests)
        if study is not None:
            identity["study"] = study
        self.store = store or ResultStore(cfg.store)
        name = cfg.name or (
            " · ".join(m.name for m in cfg.models) if cfg.simplex
            else f"{Path(str(cfg.aligned)).name} vs {Path(str(cfg.base)).name}"
        )
        stored = cfg.model_dump(mode="json")
        if study is not None:
            stored["study"] = json.loads(json.dumps(study))
        self.run = self.store.get_or_create_run(config_hash(identity), name, stored, fingerprints)
        for task in self.tasks:
            for split, scorer in task.scorers.items():
                self.store.save_items(self.run.id, task.key(split), scorer.items)
        self._notes: list[str] = [n for t in self.tasks for b in t.benches.values() for n in b.notes]
        if self._notes:
            self.store.save_notes(self.run.id, self._notes)
        if self.prompts:
            self.store.save_prompts(self.run.id, self.prompts)
        self._model = None

    @property
    def parents(self) -> list[Any]:
        """Every checkpoint a point mixes: the pair, or a simplex sweep's models in order."""
        return list(self.named.values()) if self.named else [self.base, self.aligned]

    def _ray_check(self) -> None:
        from calmerge.sweep import distributed

        ray = distributed.import_ray()
        distributed.check_address(self.cfg.ray)
        distributed.connect(ray, self.cfg.ray)
        gpu = self.cfg.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
        kind = "GPU" if gpu else "CPU"
        self._ray_workers = self.cfg.workers or max(1, int(ray.cluster_resources().get(kind, 1)))
        self._ray_gpu = gpu
        distributed.check_capacity(ray, self._ray_workers, gpu)

    def _workers(self) -> Any:
        """The Ray worker pool, started at the first point that needs computing."""
        if self._pool is None:
            from calmerge.sweep.distributed import WorkerPool

            self._pool = WorkerPool(self.cfg.model_dump(mode="json"), self._ray_workers,
                                    build=worker_sweep, gpu=self._ray_gpu)
            self._pool.start()
        return self._pool

    @property
    def items(self) -> dict[str, list]:
        """The scored items of every split, by store split name."""
        return {t.key(s): sc.items for t in self.tasks for s, sc in t.scorers.items()}

    @property
    def select_split(self) -> str:
        return "dev" if all("dev" in t.benches for t in self.tasks) else "test"

    def _load(self) -> None:
        """Load the live model once (lazily: a fully resumed run needs none)."""
        if self._model is not None:
            return
        from calmerge.config import parse_max_memory
        from calmerge.eval.loading import load_model
        from calmerge.sweep.interpolate import LiveInterpolator

        cfg = self.cfg
        # an adapter's live model is its base architecture: every weight is rewritten per point
        self._model, _ = load_model(
            cfg.aligned, dtype=cfg.dtype, device=cfg.device, trust_remote_code=cfg.trust_remote_code,
            base=cfg.base, merge_adapter=False, allow_pickle=cfg.allow_pickle,
            tokenizer=self._tokenizer, device_map=cfg.device_map,
            max_memory=parse_max_memory(cfg.max_memory),
        )
        others = [c for c in self.parents if c is not self.base and c is not self.aligned]
        self._interp = LiveInterpolator(
            self._model, self.base, self.aligned, density=cfg.density, seed=cfg.seed,
            parents=cfg.parents, others=others,
        )
        self.placement = self._interp.placement.describe()

    @property
    def work_per_point(self) -> int:
        """Progress units of one point: every scored item plus every sampled generation."""
        return sum(t.size for t in self.tasks) + len(self.prompts) * self.cfg.samples

    def evaluate_point(
        self, family: str, lam: Coord, advance: Callable[[int], None] = lambda n: None,
        *, point_id: int | None = None,
    ) -> tuple[dict, dict, dict]:
        """Rewrite the weights to (family, λ or weights) and measure every task's splits (+
        diversity).

        In a multi-task sweep each task is saved as soon as it is scored (`point_id` given),
        and a task an interrupted attempt had saved is read back, not scored again; the
        returned metrics then hold the aggregate (and diversity) and the predictions nothing,
        the tasks' rows being in the store already.
        """
        from calmerge.eval.aggregate import aggregate_metrics
        from calmerge.eval.metrics import GENERATION_SPLIT
        from calmerge.sweep.tasks import stored_split

        cfg = self.cfg
        multi = cfg.multi_task and point_id is not None
        saved = self.store.metrics(point_id) if multi else {}  # tasks an earlier attempt saved
        applied = False

        def apply() -> None:  # the weights are rewritten once per point, and only if needed
            nonlocal applied
            if not applied:
                self._load()
                if isinstance(lam, tuple):  # a simplex point's weights
                    paths = [str(c.path) for c in self.parents]
                    self._interp.apply_weights(family, paths, lam)
                else:
                    self._interp.apply(family, lam)
                applied = True
        metrics: dict[str, dict[str, tuple[float, float, float]]] = {}
        preds: dict[str, list[Prediction]] = {}
        outcomes: dict[str, list] = {}
        for task in self.tasks:
            scored = {}
            for split in task.scorers:
                key = task.key(split)
                if key in saved:
                    got = stored_split(
                        task, split, saved[key], self.store.predictions(point_id, key)
                    )
                else:
                    apply()
                    got = self._score(task, split)
                scored[key] = got
                outcomes.setdefault(split, []).append(got.outcome)
                advance(len(got.predictions))
            fresh = {k: v for k, v in scored.items() if k not in saved}
            if multi and fresh:
                self.store.save_splits(
                    point_id,
                    metrics={k: v.metrics for k, v in fresh.items()},
                    predictions={k: v.predictions for k, v in fresh.items()},
                )
            elif not multi:
                metrics.update({k: v.metrics for k, v in scored.items()})
                preds.update({k: v.predictions for k, v in scored.items()})
        if cfg.multi_task:
            for split, outs in outcomes.items():
                agg = aggregate_metrics(
                    outs, kind=cfg.aggregate, n_boot=cfg.n_boot, seed=cfg.seed, n_bins=cfg.n_bins
                )
                metrics[split] = {k: (m.value, m.lo, m.hi) for k, m in agg.items()}
        gens: dict[str, list[str]] = {}
        if self.prompts:
            from calmerge.eval.metrics import diversity_metrics

            apply()
            gens = self.sample(self.prompts)
            div = diversity_metrics(list(gens.values()), embed=cfg.embed_diversity)
            metrics[GENERATION_SPLIT] = {k: (v, float("nan"), float("nan")) for k, v in div.items()}
            advance(len(self.prompts) * cfg.samples)
        return metrics, preds, gens

    def sample(self, prompts: Sequence[Any]) -> dict[str, list[str]]:
        """K samples per prompt from the live model as it stands, by prompt id (in order), with
        the sweep's sampling settings and seed."""
        from calmerge.eval.generate import sample_generations

        cfg = self.cfg
        samples = sample_generations(
            self._model, self._tokenizer, prompts, k=cfg.samples, temperature=cfg.temperature,
            top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
            chat=cfg.prompt_format == "chat", stop_ids=cfg.stop_token_ids,
        )
        return {p.id: s for p, s in zip(prompts, samples, strict=True)}

    def _score(self, task: Any, split: str) -> Any:
        from calmerge.sweep.tasks import score_split

        result = task.scorers[split].score(self._model)
        scored = score_split(task, split, result, self.cfg)
        fresh = [n for n in scored.notes if n not in self._notes]
        if fresh:  # e.g. a metric left out because it needs what was not measured
            self._notes += fresh
            self.store.save_notes(self.run.id, fresh)
        return scored

    # ── the loop ──
    def _initial_points(self, family: str) -> tuple[Coord, ...]:
        """Families that extrapolate (linear) get the grid and the extrapolation points; the
        others interpolate only. A simplex sweep: the simplex (or box) grid (`sweep.simplex`)."""
        from calmerge.merge.families import get_family

        if self.cfg.simplex:
            from calmerge.sweep.simplex import grid

            geo = self.geometry(family)
            return tuple(
                geo.weights(u)
                for u in grid(geo, self.cfg.simplex_step, self.cfg.extrapolate or ())
            )
        if get_family(family).extrapolates:
            return self.cfg.lambdas()
        return tuple(x for x in self.cfg.grid if 0.0 <= x <= 1.0)

    def _run_points(self, family: str, lams: Sequence[Coord], outcome: SweepOutcome, bar) -> None:
        """Compute every λ not yet done; wait for points another live sweep is computing.

        Waiting matters when two sweeps share a store: each ends only when the whole plan is in
        the store, so each can write a complete report. A holder that dies is taken over.
        """
        self.store.add_points(self.run.id, family, lams)
        todo = [x if isinstance(x, tuple) else round_lam(x) for x in lams]
        if self.cfg.ray:
            return self._run_points_ray(family, todo, outcome, bar)
        waited = False
        while todo:
            held = []
            for lam in todo:
                status = self.store.claim(self.run.id, family, lam)
                if status is None:
                    if self._is_done(family, lam):
                        if not waited:
                            outcome.skipped.append((family, lam))
                        bar.advance(self.work_per_point)
                    else:
                        held.append(lam)
                    continue
                self._compute(status, family, lam, outcome, bar)
            todo = held
            if todo:
                waited = True
                bar.describe(f"{family}: waiting for {len(todo)} point(s) another sweep holds")
                time.sleep(0.5)

    def _run_points_ray(self, family: str, todo: list[Coord], outcome: SweepOutcome, bar) -> None:
        """`_run_points` over the Ray pool: a point is claimed when a worker takes it and
        recorded here, by the driver, when the worker answers (`sweep.distributed`). The
        workers start only when some point is left to compute."""
        for lam in [x for x in todo if self._is_done(family, x)]:
            outcome.skipped.append((family, lam))
            bar.advance(self.work_per_point)
            todo.remove(lam)
        waited = False
        while todo:
            held: list[Coord] = []

            def claim(fam: str, lam: Coord, held=held, waited=waited) -> int | None:
                pid = self.store.claim(self.run.id, fam, lam)
                if pid is None:
                    if not self._is_done(fam, lam):
                        held.append(lam)
                    else:
                        if not waited:
                            outcome.skipped.append((fam, lam))
                        bar.advance(self.work_per_point)
                return pid

            def done(job: Any, result: dict[str, Any]) -> None:
                self.store.finish_point(
                    job.point_id, metrics=result["metrics"], predictions=result["predictions"],
                    generations=result["generations"], seconds=result["seconds"],
                )
                outcome.computed.append((job.family, job.lam))
                outcome.placement = result["placement"]
                bar.advance(self.work_per_point)
                bar.describe(f"{family}: {len(outcome.computed)} points on "
                             f"{self._ray_workers} Ray workers")

            pool = self._workers()
            pool.run([(family, lam) for lam in todo], claim, done, self.store.release)
            outcome.workers = pool.stats
            todo = held
            if todo:
                waited = True
                bar.describe(f"{family}: waiting for {len(todo)} point(s) another sweep holds")
                time.sleep(0.5)

    def done_ids(self, family: str) -> dict[Coord, int]:
        """{λ or weights: point id} of the finished points of `family` (the one lookup the
        sweep, the budgeted sweep and the search make of what the store holds)."""
        return {p.coord: p.id for p in self.store.points(self.run.id, status="done")
                if p.family == family}

    def _is_done(self, family: str, lam: Coord) -> bool:
        return lam in self.done_ids(family)

    def _compute(self, pid: int, family: str, lam: Coord, outcome: SweepOutcome, bar) -> None:
        bar.describe(f"{family} {coord_label(lam)}")
        start = time.perf_counter()
        try:
            metrics, preds, gens = self.evaluate_point(family, lam, bar.advance, point_id=pid)
            self.store.finish_point(
                pid,
                metrics=metrics,
                predictions=preds,
                generations=gens,
                seconds=time.perf_counter() - start,
                keep=[k for t in self.tasks for k in t.keys] if self.cfg.multi_task else
                BUDGET_SPLITS,  # a budgeted sweep's anchor rung of this point stays
            )
        except BaseException:
            with contextlib.suppress(StoreError):  # a full disk may refuse the release too
                self.store.release(pid)
            raise
        outcome.computed.append((family, lam))

    def _scored_points(self, family: str) -> tuple[list[Any], set[Coord]]:
        """The finished points of `family` with an accuracy on the selection split, and the
        coordinates of those on its Pareto frontier there."""
        from calmerge.analysis.pareto import default_objectives, pareto_front
        from calmerge.results.points import load_points

        points = [
            p for p in load_points(self.store, self.run.id, aggregate=self.cfg.aggregate)
            if p.family == family
        ]
        split = self.select_split
        points = [p for p in points if split in p.metrics and "acc" in p.metrics[split]]
        if len(points) < 2:
            return points, set()
        objectives = self.cfg.objectives or default_objectives(points, split)
        return points, {p.coord for p in pareto_front(points, objectives, split)}

    def _simplex_refinement(self, family: str, budget: int) -> list[Coord]:
        """New weight vectors between frontier points and their neighbours (`simplex.refine`)."""
        from calmerge.sweep.simplex import refine

        points, front = self._scored_points(family)
        if not front:
            return []
        geo = self.geometry(family)
        units = [geo.units(p.mix) for p in points]
        new = refine(
            geo, units, [p.coord in front for p in points], resolution=self.cfg.resolution,
            limit=budget,
        )
        return [geo.weights(u) for u in new]

    def geometry(self, family: str) -> Any:
        """The simplex (linear) or box (task vectors) a simplex sweep's family spans."""
        from calmerge.merge.families import get_family
        from calmerge.sweep.simplex import UNIT, Geometry

        return Geometry(
            tuple(m.name for m in self.cfg.models), get_family(family).task_vectors,
            round(self.cfg.simplex_max * UNIT),
        )

    def _refinement(self, family: str, budget: int) -> list[Coord]:
        if self.cfg.simplex:
            return self._simplex_refinement(family, budget)
        points, front_coords = self._scored_points(family)
        if not front_coords:
            return []
        split = self.select_split
        front = {p.lam for p in points if p.coord in front_coords}
        nan = Metric(float("nan"), float("nan"), float("nan"))
        done = [
            (p.lam, p.metrics[split]["acc"].value, p.metrics[split].get("ece", nan).value)
            for p in points
        ]
        return refine_lambdas(
            done, [p.lam in front for p in points], resolution=self.cfg.resolution, limit=budget
        )

    def close(self) -> None:
        """Drop the scratch copies of offloaded weights and the Ray pool, if any."""
        if self._model is not None:
            self._interp.close()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def execute(self, *, progress: bool = True) -> SweepOutcome:
        """Compute every unfinished point of the plan; refine where the frontier bends."""
        outcome = SweepOutcome(run=self.run, store_path=self.store.path)
        try:
            self._execute(outcome, progress)
        finally:
            if self._model is not None:
                outcome.placement = self.placement
                self._interp.close()  # scratch copies of offloaded weights, if any
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
        return outcome

    def _execute(self, outcome: SweepOutcome, progress: bool) -> None:
        with PointBar(enabled=progress) as bar:
            for family in self.cfg.families:
                lams = self._initial_points(family)
                if self.cfg.budget is not None:
                    from calmerge.sweep.anchors import budgeted_sweep

                    budgeted_sweep(self, family, lams, outcome, bar)
                    continue
                bar.add(len(lams) * self.work_per_point)
                self._run_points(family, lams, outcome, bar)
                # refinement points a previous session added count against the budget, so a
                # resumed (or re-run) sweep ends with the points an uninterrupted one has
                grid = {x if isinstance(x, tuple) else round_lam(x) for x in lams}
                refined = sum(p.coord not in grid for p in self.store.points(self.run.id)
                              if p.family == family)
                budget = max(0, self.cfg.max_refine_points - refined) if self.cfg.refine else 0
                while budget > 0:
                    new = self._refinement(family, budget)
                    known = {p.coord for p in self.store.points(self.run.id) if p.family == family}
                    new = [x for x in new if (x if isinstance(x, tuple) else round_lam(x)) not in known]
                    if not new:
                        break
                    bar.add(len(new) * self.work_per_point)
                    self._run_points(family, new, outcome, bar)
                    budget -= len(new)


#: the splits a budgeted sweep's anchor rung writes (kept when the point is fully scored)
BUDGET_SPLITS = ("anchor", "estimate")


class PointBar:
    """A rich progress bar over points × items (and generations), with ETA; silent if disabled."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None
        self._task = None

    def __enter__(self) -> PointBar:
        if self.enabled:
            from calmerge.progress import progress_bar

            self._progress = progress_bar("[bold]sweep[/] {task.description}")
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def add(self, n: int) -> None:
        if self._progress is not None:
            total = self._progress.tasks[0].total or 0
            self._progress.update(self._task, total=total + n)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)
