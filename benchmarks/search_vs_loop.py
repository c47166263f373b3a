"""Per-layer candidates in place against a Mergenetic-style loop, on the same candidates.

The loop is what Mergenetic and mergekit-evolve do for every candidate: mergekit writes the
candidate's gradient config to disk, transformers loads the written checkpoint, and it is
scored. calmerge applies the same config to one live model in place (`LiveInterpolator.
apply_config`) and scores it with the same scorer. Both score the same dev items with the same
scorer, so their answers must agree exactly; the run checks it. A third timing is a plain
λ-sweep point (θ(λ) in place + the same scoring), the cost a search candidate is held to.

Mergenetic's own evaluation path is timed too, as its `LmHarnessEvaluator` runs it for every
candidate (mergenetic/evaluation/lm_harness.py): a new lm-eval `TaskManager`, the task loaded
and its test split cut to the anchor ids, the written checkpoint loaded as an lm-eval model,
`simple_evaluate`. Mergenetic loads the model with vLLM, which needs a GPU; here it is lm-eval's
HF backend (`HFLM`, bf16), the same harness on the CPU. Its log-likelihoods are compared with
calmerge's on the anchors (bf16, different batching: agreement to a tolerance, reported).

Model: a random Qwen2 pair in bf16 ("mid": hidden 768, 8 layers, vocab 16k, ~80M parameters;
"cpu"/"smoke": the sizes of benchmarks/gpu_sweep.py), 200 dev items of 300-word contexts, and
the search's anchor rung of 20 of them. Each step is timed apart — the merge (in place, or
mergekit's write plus transformers' load) and the scoring — so the ratios can be read for the
rung the search actually runs per candidate and for a full-dev promotion. Targets (issue 17): a
candidate ≤ 1.2× a sweep point, ≥ 10× faster than the loop.

    python benchmarks/search_vs_loop.py [--candidates 6] [--size mid|cpu|smoke] [--anchors 20]
                                        [--no-lmeval]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--size", default="mid", choices=("mid", "cpu", "smoke"))
    ap.add_argument("--anchors", type=int, default=20)
    ap.add_argument("--no-lmeval", action="store_true", help="skip Mergenetic's lm-eval path")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "src"))
    import gpu_sweep
    import numpy as np
    import torch
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_run
    from mergekit.options import MergeOptions

    from calmerge.eval.data import load_benchmark
    from calmerge.eval.loading import load_model
    from calmerge.eval.score import Scorer
    from calmerge.io.models import open_checkpoint
    from calmerge.merge.genome import parse_space, round_genome
    from calmerge.merge.mergekit_compat import to_mergekit
    from calmerge.sweep.interpolate import LiveInterpolator
    from calmerge.sweep.search import candidate_config

    torch.set_num_threads(2)
    size = {**gpu_sweep.SIZES["cpu"], **MID} if args.size == "mid" else gpu_sweep.SIZES[args.size]
    space = parse_space("attn-mlp:2")
    rng = np.random.default_rng(0)
    genomes = [round_genome(g) for g in rng.uniform(0, 1, size=(args.candidates, len(space.genes)))]
    with tempfile.TemporaryDirectory(prefix="calmerge-search-bench-") as tmp:
        work = Path(tmp)
        base, aligned = gpu_sweep.build_pair(work, size)
        items = load_benchmark(str(gpu_sweep.write_items(work / "dev.jsonl", size))).items
        model, tok = load_model(aligned, device="cpu", dtype="auto")
        full = Scorer(tok, items, template="{question}")
        anchor = Scorer(tok, items[: args.anchors], template="{question}")
        interp = LiveInterpolator(model, open_checkpoint(base), open_checkpoint(aligned))
        interp.apply("linear", 0.5)
        full.score(model)  # warm-up: kernels, allocator

        def timed(fn):
            start = time.perf_counter()
            out = fn()
            return time.perf_counter() - start, out

        point = np.mean([timed(lambda lam=lam: (interp.apply("linear", float(lam)),
                                                full.score(model)))[0]
                         for lam in np.linspace(0, 1, args.candidates)])
        t = {"apply": [], "anchor": [], "full": [], "write": [], "load": [], "lmeval": [],
             "lm_tasks": [], "lm_load": [], "lm_eval": []}
        agree = []
        ours, theirs, gaps = [], [], []
        task_dir = None if args.no_lmeval else write_lmeval_task(work, items)
        for i, g in enumerate(genomes):
            cfg = candidate_config(space, str(base), str(aligned), g, out_dtype=size["dtype"])
            t["apply"].append(timed(lambda cfg=cfg: interp.apply_config(cfg))[0])
            t["anchor"].append(timed(lambda: anchor.score(model))[0])
            dt, res = timed(lambda: full.score(model))
            t["full"].append(dt)
            ours.append(res.choice_logprobs.copy())
            out = work / f"cand{i}"
            mk = MergeConfiguration.model_validate(yaml.safe_load(yaml.safe_dump(to_mergekit(cfg))))
            t["write"].append(timed(lambda mk=mk, out=out: mergekit_run(
                mk, str(out), MergeOptions(quiet=True)))[0])
            dt, (m, _) = timed(lambda out=out: load_model(out, device="cpu", dtype="auto"))
            t["load"].append(dt)
            theirs.append(full.score(m).choice_logprobs.copy())
            del m
            if task_dir is not None:
                dt, (lls, parts) = timed(lambda out=out: mergenetic_evaluate(out, task_dir,
                                                                             args.anchors))
                t["lmeval"].append(dt)
                for k, v in parts.items():
                    t[k].append(v)
                mine = res.choice_logprobs[: args.anchors]
                gaps.append(float(np.max(np.abs(np.array(lls) - mine))))
                agree.append(float(np.mean(np.argmax(lls, 1) == np.argmax(mine, 1))))
    mean = {k: float(np.mean(v)) if v else float("nan") for k, v in t.items()}
    same = all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    ours_full, ours_anchor = mean["apply"] + mean["full"], mean["apply"] + mean["anchor"]
    loop_full = mean["write"] + mean["load"] + mean["full"]
    loop_anchor = mean["write"] + mean["load"] + mean["anchor"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.candidates} attn-mlp:2 candidates; {n_params / 1e6:.0f}M-parameter Qwen2 in"
          f" {size['dtype']}; {len(items)} dev items, {args.anchors} anchor items")
    print(f"per candidate: apply in place {mean['apply']:.3f} s | mergekit write"
          f" {mean['write']:.2f} s + load {mean['load']:.2f} s | score {args.anchors} items"
          f" {mean['anchor']:.2f} s, {len(items)} items {mean['full']:.2f} s")
    print(f"candidate on all dev items: {ours_full:.2f} s = {ours_full / point:.2f}x a sweep"
          f" point ({point:.2f} s; target <= 1.2x)")
    print(f"against the loop: {loop_full / ours_full:.1f}x faster on all dev items,"
          f" {loop_anchor / ours_anchor:.1f}x on the anchor rung; merge step alone"
          f" {(mean['write'] + mean['load']) / mean['apply']:.0f}x (target >= 10x)")
    print(f"identical log-likelihoods in place and from mergekit's checkpoints: {same}")
    if t["lmeval"]:
        mergenetic = mean["write"] + mean["lmeval"]
        print(f"Mergenetic's path on the {args.anchors} anchors: mergekit write"
              f" {mean['write']:.2f} s + a new TaskManager and task {mean['lm_tasks']:.2f} s"
              f" + HFLM load {mean['lm_load']:.2f} s + simple_evaluate {mean['lm_eval']:.2f} s"
              f" (which indexes lm-eval's tasks again: Mergenetic passes it no task manager)"
              f" = {mergenetic:.2f} s per candidate against {ours_anchor:.2f} s in place:"
              f" {mergenetic / ours_anchor:.1f}x (target >= 10x; the lean loop above, without"
              f" lm-eval's per-call set-up, is the bound any disk loop pays)")
        print(f"lm-eval against calmerge on the anchors (bf16, different batching): the same"
              f" chosen answer on {100 * min(agree):.0f}% of items or more, log-likelihoods"
              f" within {max(gaps):.2g} nats")
    print(json.dumps({"point_s": float(point), **{f"{k}_s": v for k, v in mean.items()},
                      "identical": same, "lmeval_max_gap": max(gaps) if gaps else None,
                      "lmeval_min_agreement": min(agree) if agree else None}))


def write_lmeval_task(root: Path, items) -> Path:
    """The dev items as an lm-eval task over local JSON, prompted as calmerge prompts them
    ('{question}', choices after a space)."""
    folder = root / "lmeval_task"
    folder.mkdir()
    data = folder / "dev.jsonl"
    data.write_text("".join(json.dumps({"id": it.id, "question": it.question,
                                        "choices": list(it.choices), "answer": it.answer})
                            + "\n" for it in items))
    (folder / "dev.yaml").write_text(
        "task: calmerge_search_dev\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n')
    return folder


def mergenetic_evaluate(model_dir: Path, task_dir: Path,
                        n_anchor: int) -> tuple[list[list[float]], dict[str, float]]:
    """One candidate as Mergenetic's LmHarnessEvaluator evaluates it: a fresh TaskManager, the
    task's test split cut to the anchor ids, the checkpoint loaded as an lm-eval model,
    simple_evaluate. Returns each anchor's per-choice log-likelihoods, in dev order, and the
    seconds of each step."""
    import logging
    import warnings

    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    start = time.perf_counter()
    manager = TaskManager(include_path=str(task_dir))
    with warnings.catch_warnings():  # Mergenetic's call, deprecated in lm-eval 0.4.13
        warnings.simplefilter("ignore", DeprecationWarning)
        task = manager.load_task_or_group("calmerge_search_dev")["calmerge_search_dev"]
    task.dataset["test"] = task.dataset["test"].select(range(n_anchor))
    tasks_s = time.perf_counter() - start
    lm = HFLM(pretrained=str(model_dir), device="cpu", dtype="bfloat16", batch_size=8)
    load_s = time.perf_counter() - start - tasks_s
    out = simple_evaluate(lm, tasks=[task], log_samples=True)
    eval_s = time.perf_counter() - start - tasks_s - load_s
    samples = sorted(out["samples"]["calmerge_search_dev"], key=lambda s: s["doc_id"])
    return ([[float(r[0]) for r in s["filtered_resps"]] for s in samples],
            {"lm_tasks": tasks_s, "lm_load": load_s, "lm_eval": eval_s})


#: a mid size for the loop's disk round trip to weigh what it weighs on real models
MID = dict(hidden=768, layers=8, inter=2048, heads=12, kv=4, vocab=16000)


if __name__ == "__main__":
    main()
