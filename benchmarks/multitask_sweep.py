"""Multi-task sweep benchmark: one sweep over three tasks vs its scoring floor and vs three sweeps.

The claim: a multi-task sweep (`calmerge sweep --data A --data B --data C`, or `data:` as a list
in the sweep YAML) costs at most 1.1× the sum of scoring its tasks at every point — one
interpolation per point, every task tokenised once. Measured in one process run:

a. `Sweep(cfg).execute()` of the three-task sweep (construction — opening the checkpoints,
   loading and tokenising the data, the store — timed apart);
b. the floor: Σ over points × tasks × splits of `scorer.score(model)` alone, on one loaded
   model set to each point's weights (the interpolation untimed);
c. three single-task sweeps over the same tasks, one after the other (what a user would do
   without multi-task sweeps), construction and execute.

It prints a/b (target ≤ 1.1) and a/c, where the rest of a's time goes (scoring, bootstrap
intervals per task and for the aggregate, smECE's share of them, interpolation, model load,
SQLite — measured by wrapping those functions with timers in this process, calmerge itself
unchanged), checks that every task's metrics in the multi-task store equal its single-task
sweep's, and reruns (a) with n_boot 0 to show the loop's cost without intervals.

torch runs on one thread unless --threads says otherwise: on a small shared machine a
multi-threaded forward waits on every busy core, and the same scoring call then varies
many-fold from one minute to the next, which no ratio survives.

Tasks: the built-in organism's test and dev items (built or reused from the cache), split
round-robin into three tasks, each prompted differently (bare question, a question/answer
frame, two few-shot examples). Usage:
    python benchmarks/multitask_sweep.py [--points 11] [--n-boot 1000] [--threads 1] [--json F]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

#: the three tasks: name, prompt template, few-shot examples (drawn from the task's dev split)
TASKS = (
    ("bare", "{question}", 0),
    ("framed", "question : {question} answer :", 0),
    ("shots", "{question}", 2),
)


# ───────────────────────────── timers (this process only) ─────────────────────────────


class Profile:
    """Exclusive wall time per phase: a timed function's time minus its timed callees'.

    A phase wrapped with `by_caller` is kept apart per calling phase ("smECE intervals, per
    task" vs ", aggregate"): the same function costs differently for different callers.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []  # [callees' seconds, phase] per open call
        self._patched: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attr: str, phase: str, by_caller: dict[str, str] | None = None) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kw: Any) -> Any:
            name = phase
            if by_caller and self._stack:
                name = f"{phase}{by_caller.get(self._stack[-1][1], '')}"
            self._stack.append([0.0, name])
            start = time.perf_counter()
            try:
                return original(*args, **kw)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._stack.pop()[0]
                self.seconds[name] += elapsed - inner
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][0] += elapsed

        self._patched.append((owner, attr, original))
        setattr(owner, attr, timed)

    def install(self) -> None:
        from calmerge.eval import aggregate, bootstrap, taskmetrics
        from calmerge.eval.score import Scorer
        from calmerge.results.store import ResultStore
        from calmerge.sweep import tasks
        from calmerge.sweep.interpolate import LiveInterpolator
        from calmerge.sweep.runner import Sweep

        self.wrap(Scorer, "score", "scoring (forward passes)")
        per_task, agg = "per-task metrics + intervals, ex smECE", "aggregate + intervals, ex smECE"
        self.wrap(taskmetrics, "benchmark_metrics", per_task)
        self.wrap(tasks, "predictions", "per-item store rows")
        self.wrap(aggregate, "aggregate_metrics", agg)
        self.wrap(bootstrap, "smooth_ece_rows", "smECE intervals",
                  by_caller={per_task: ", per task", agg: ", aggregate"})
        self.wrap(LiveInterpolator, "apply", "interpolation")
        self.wrap(Sweep, "_load", "model load")
        for name, attr in vars(ResultStore).items():
            if not name.startswith("_") and inspect.isfunction(attr):
                self.wrap(ResultStore, name, "SQLite store")
        self.wrap(tasks, "build_scorers", "tokenising")
        self.wrap(tasks, "load_tasks", "loading data")

    def uninstall(self) -> None:
        for owner, attr, original in reversed(self._patched):
            setattr(owner, attr, original)
        self._patched.clear()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


# ───────────────────────────── the work ─────────────────────────────


def write_tasks(work: Path, test: Path, dev: Path) -> list[dict[str, Any]]:
    """Three task files (test and dev, round-robin thirds of the organism's) and their specs."""
    rows = {s: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
            for s, p in (("test", test), ("dev", dev))}
    specs = []
    for i, (name, template, shots) in enumerate(TASKS):
        paths = {}
        for split, items in rows.items():
            paths[split] = work / f"{name}_{split}.jsonl"
            paths[split].write_text("".join(json.dumps(r) + "\n" for r in items[i :: len(TASKS)]))
        specs.append({"data": str(paths["test"]), "dev": str(paths["dev"]), "name": name,
                      "mode": "loglik", "prompt_template": template, "fewshot": shots})
    return specs


def sweep_yaml(work: Path, tag: str, base: Path, aligned: Path, data: Any, lams: list[float],
               n_boot: int, **settings: Any) -> Path:
    """The sweep YAML a user would write (`--no-refine --no-extrapolate`, CPU)."""
    import yaml

    cfg = {"base": str(base), "aligned": str(aligned), "data": data, **settings, "grid": lams,
           "extrapolate": [], "refine": False, "n_boot": n_boot, "device": "cpu",
           "store": str(work / f"{tag}.db"), "out": str(work / f"{tag}-report")}
    path = work / f"{tag}.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


def run_sweep(path: Path) -> tuple[float, float, Any]:
    """(construction seconds, execute seconds, the Sweep)."""
    from calmerge.config import load_sweep_config
    from calmerge.sweep.runner import Sweep

    cfg = load_sweep_config(path, {})
    start = time.perf_counter()
    sweep = Sweep(cfg)
    built = time.perf_counter() - start
    start = time.perf_counter()
    sweep.execute(progress=False)
    return built, time.perf_counter() - start, sweep


def scoring_floor(path: Path, lams: list[float]) -> tuple[float, int]:
    """Σ scorer.score(model) over points × tasks × splits, one loaded model; (seconds, calls).

    The scorers are the sweep's own (same tokenisation, templates, few-shot examples, batch
    size); the weights are set to each point's θ(λ) untimed, so only the forwards count.
    """
    from calmerge.config import load_sweep_config
    from calmerge.eval.loading import load_model, load_tokenizer
    from calmerge.io.models import open_checkpoint
    from calmerge.sweep.interpolate import LiveInterpolator
    from calmerge.sweep.tasks import build_scorers, load_tasks

    cfg = load_sweep_config(path, {})
    base, aligned = open_checkpoint(cfg.base), open_checkpoint(cfg.aligned)
    tok = load_tokenizer(cfg.aligned)
    tasks = load_tasks(cfg)
    for task in tasks:
        build_scorers(task, tok, cfg, aligned.text_setting("max_position_embeddings"))
    model, _ = load_model(cfg.aligned, dtype=cfg.dtype, device=cfg.device, tokenizer=tok)
    interp = LiveInterpolator(model, base, aligned, density=cfg.density, seed=cfg.seed)
    total, calls = 0.0, 0
    for lam in lams:
        interp.apply("linear", lam)
        for task in tasks:
            for scorer in task.scorers.values():
                start = time.perf_counter()
                scorer.score(model)
                total += time.perf_counter() - start
                calls += 1
    return total, calls


def stored_metrics(sweep: Any) -> dict[tuple[float, str], dict[str, tuple]]:
    """{(λ, split): {metric: (value, lo, hi)}} of a finished sweep, NaN as None."""
    out = {}
    for point in sweep.store.points(sweep.run.id, status="done"):
        for split, ms in sweep.store.metrics(point.id).items():
            out[(point.lam, split)] = {
                k: tuple(None if isinstance(x, float) and math.isnan(x) else x for x in v)
                for k, v in ms.items()
            }
    return out


def values_of(stored: dict) -> dict:
    """The metric values of `stored_metrics`, intervals dropped."""
    return {k: {m: v[0] for m, v in ms.items()} for k, ms in stored.items()}


def profiled_sweep(prof: Profile, path: Path) -> tuple[float, float, Any, dict, dict]:
    """run_sweep under the timers: (construction s, execute s, sweep, phase s, phase calls)."""
    prof.reset()
    prof.install()
    try:
        built, executed, sweep = run_sweep(path)
    finally:
        prof.uninstall()
    return built, executed, sweep, dict(prof.seconds), dict(prof.calls)


def phase_table(phases: dict[str, float], executed: float) -> dict[str, float]:
    """Execute-time phases, largest first, the untimed remainder as 'other'."""
    setup = ("tokenising", "loading data")
    rows = {k: round(v, 3) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])
            if k not in setup}
    rest = executed - sum(v for k, v in phases.items() if k not in setup)
    rows["other (loop, Python)"] = round(rest, 3) + 0.0  # no "-0.000"
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=11)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 0: torch's default (all cores). With two or more, a busy"
                    " core elsewhere slows every forward many-fold and the ratios mean nothing")
    ap.add_argument("--no-diagnose", action="store_true",
                    help="skip the rerun of (a) with n_boot 0")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()

    import torch

    from calmerge.organism import build_organism

    if args.threads:
        torch.set_num_threads(args.threads)
    org = build_organism(progress=False)
    lams = [round(i / (args.points - 1), 6) for i in range(args.points)]
    prof = Profile()
    with tempfile.TemporaryDirectory(prefix="calmerge-bench-") as tmp:
        work = Path(tmp)
        specs = write_tasks(work, Path(org.test), Path(org.dev))
        multi_yaml = sweep_yaml(work, "multi", org.base, org.aligned, specs, lams, args.n_boot)

        floor_before, floor_calls = scoring_floor(multi_yaml, lams)
        m_build, m_exec, multi, phases, calls = profiled_sweep(prof, multi_yaml)
        singles = []
        for spec in specs:
            settings = {k: spec[k] for k in ("dev", "mode", "prompt_template", "fewshot")}
            path = sweep_yaml(work, f"single-{spec['name']}", org.base, org.aligned,
                              spec["data"], lams, args.n_boot, **settings)
            singles.append((spec["name"], *profiled_sweep(prof, path)))
        floor_after, _ = scoring_floor(multi_yaml, lams)
        diags: dict[str, tuple] = {}
        if not args.no_diagnose and args.n_boot:  # (a) again without the intervals
            path = sweep_yaml(work, "noboot", org.base, org.aligned, specs, lams, 0)
            diags["n_boot 0 (no intervals)"] = (*profiled_sweep(prof, path),
                                                scoring_floor(path, lams)[0])

        ours = stored_metrics(multi)
        same, compared = True, 0
        for name, *_, sweep, _, _ in singles:
            for (lam, split), ms in stored_metrics(sweep).items():
                compared += 1
                if ours.get((lam, f"{split}@{name}")) != ms:
                    same = False
                    print(f"DIFFERENT: task {name} λ={lam:g} {split}")
        diag_same = {  # without intervals only the values can agree
            label: values_of(stored_metrics(d[2])) == values_of(ours) for label, d in diags.items()
        }
        n_items = {t.name: {split: len(sc.items) for split, sc in t.scorers.items()}
                   for t in multi.tasks}

    floor = min(floor_before, floor_after)
    s_build = sum(s[1] for s in singles)
    s_exec = sum(s[2] for s in singles)
    s_phases: dict[str, float] = defaultdict(float)
    for s in singles:
        for k, v in s[4].items():
            s_phases[k] += v
    inside = phases.get("scoring (forward passes)", 0.0)
    rows = phase_table(phases, m_exec)

    print(f"points: {len(lams)}  tasks: {len(specs)}  items per task (test/dev): "
          + ", ".join(f"{n} {v['test']}/{v['dev']}" for n, v in n_items.items())
          + f"  n_boot: {args.n_boot}  torch threads: {torch.get_num_threads()}"
          + f"  load average: {os.getloadavg()[0]:.2f}")
    print(f"(a) multi-task sweep execute: {m_exec:.2f} s  (construction {m_build:.2f} s:"
          f" tokenising {phases.get('tokenising', 0):.2f} s, loading data"
          f" {phases.get('loading data', 0):.2f} s)")
    print(f"(b) scoring floor, {floor_calls} scorer.score calls: {floor:.2f} s"
          f"  (before {floor_before:.2f} s, after {floor_after:.2f} s; the lower is b)")
    print(f"    the same calls inside (a): {inside:.2f} s")
    print(f"(c) three single-task sweeps: execute {s_exec:.2f} s, construction {s_build:.2f} s")
    print(f"a/b: {m_exec / floor:.3f}x (target <= 1.1x)   a / scoring inside a:"
          f" {m_exec / inside:.3f}x")
    print(f"a/c: {m_exec / s_exec:.3f}x execute, "
          f"{(m_build + m_exec) / (s_build + s_exec):.3f}x construction+execute")
    # the per-task work a multi-task sweep cannot avoid: scoring each task and measuring it
    # (its metrics and their intervals); what multi-task adds is everything else
    per_task = sum(v for k, v in rows.items() if k.startswith(("scoring", "smECE intervals, per", "per-task metrics")))
    print(f"a / per-task work (scoring + per-task metrics and intervals, {per_task:.2f} s):"
          f" {m_exec / per_task:.3f}x (target <= 1.1x)")
    print("where (a)'s time goes (exclusive seconds)       [three single-task sweeps]")
    for k, v in rows.items():
        print(f"  {k:<42} {v:>8.3f}  ({100 * v / m_exec:5.1f}%)   [{s_phases.get(k, 0):8.3f}]")
    print(f"per-task metrics equal the single-task sweeps': {'identical' if same else 'DIFFERENT'}"
          f" ({compared} (λ, split) metric sets compared)")
    figures: dict[str, Any] = {
        "points": len(lams), "tasks": len(specs), "items": n_items, "n_boot": args.n_boot,
        "torch_threads": torch.get_num_threads(), "load_average_end": os.getloadavg()[0],
        "multi_construct_s": round(m_build, 3), "multi_execute_s": round(m_exec, 3),
        "floor_score_s": round(floor, 3), "floor_before_s": round(floor_before, 3),
        "floor_after_s": round(floor_after, 3), "floor_calls": floor_calls,
        "scoring_inside_multi_s": round(inside, 3),
        "single_construct_s": round(s_build, 3), "single_execute_s": round(s_exec, 3),
        "a_over_b": round(m_exec / floor, 3),
        "a_over_per_task_work": round(m_exec / per_task, 3),
        "a_over_scoring_inside_a": round(m_exec / inside, 3),
        "a_over_c_execute": round(m_exec / s_exec, 3),
        "a_over_c_total": round((m_build + m_exec) / (s_build + s_exec), 3),
        "multi_phases_s": rows, "multi_phase_calls": calls,
        "single_phases_s": phase_table(dict(s_phases), s_exec),
        "metrics_identical": same, "metric_sets_compared": compared,
    }
    for label, (_, d_exec, _, d_phases, _, d_floor) in diags.items():
        d_rows = phase_table(d_phases, d_exec)
        d_inside = d_phases.get("scoring (forward passes)", 0.0)
        print(f"diagnosis — (a) again with {label}:")
        print(f"  execute {d_exec:.2f} s, floor {d_floor:.2f} s, a/b {d_exec / d_floor:.3f}x,"
              f" a / scoring inside {d_inside:.2f} s: {d_exec / d_inside:.3f}x;"
              f" metric values {'identical to' if diag_same[label] else 'DIFFERENT from'} (a)'s")
        for k, v in d_rows.items():
            print(f"  {k:<42} {v:>8.3f}  ({100 * v / d_exec:5.1f}%)")
        figures.setdefault("diagnoses", {})[label] = {
            "execute_s": round(d_exec, 3), "floor_s": round(d_floor, 3),
            "a_over_b": round(d_exec / d_floor, 3), "a_over_scoring_inside": round(d_exec / d_inside, 3),
            "phases_s": d_rows, "same_as_a": diag_same[label],
        }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
