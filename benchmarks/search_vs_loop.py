"""Per-layer candidates in place against a Mergenetic-style loop, on the same candidates.

The loop is what Mergenetic and mergekit-evolve do for every candidate: mergekit writes the
candidate's gradient config to disk, transformers loads the written checkpoint, and it is
scored. calmerge applies the same config to one live model in place (`LiveInterpolator.
apply_config`) and scores it with the same scorer. Both score the same dev items with the same
scorer, so their answers must agree exactly; the run checks it. A third timing is a plain
λ-sweep point (θ(λ) in place + the same scoring), the cost a search candidate is held to.

Model: a random Qwen2 pair in bf16 ("mid": hidden 768, 8 layers, vocab 16k, ~80M parameters;
"cpu"/"smoke": the sizes of benchmarks/gpu_sweep.py), 200 dev items of 300-word contexts, and
the search's anchor rung of 20 of them. Each step is timed apart — the merge (in place, or
mergekit's write plus transformers' load) and the scoring — so the ratios can be read for the
rung the search actually runs per candidate and for a full-dev promotion. Targets (issue 17): a
candidate ≤ 1.2× a sweep point, ≥ 10× faster than the loop.

    python benchmarks/search_vs_loop.py [--candidates 6] [--size mid|cpu|smoke] [--anchors 20]
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
        t = {"apply": [], "anchor": [], "full": [], "write": [], "load": []}
        ours, theirs = [], []
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
    mean = {k: float(np.mean(v)) for k, v in t.items()}
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
    print(json.dumps({"point_s": float(point), **{f"{k}_s": v for k, v in mean.items()},
                      "identical": same}))


#: a mid size for the loop's disk round trip to weigh what it weighs on real models
MID = dict(hidden=768, layers=8, inter=2048, heads=12, kv=4, vocab=16000)


if __name__ == "__main__":
    main()
