"""Per-layer candidates in place against a Mergenetic-style loop, on the same candidates.

The loop is what Mergenetic and mergekit-evolve do for every candidate: mergekit writes the
candidate's gradient config to disk, transformers loads the written checkpoint, and it is
scored. calmerge applies the same config to one live model in place (`LiveInterpolator.
apply_config`) and scores it with the same scorer. Both score the same dev items with the same
scorer, so their answers must agree exactly; the run checks it. A third timing is a plain
λ-sweep point (θ(λ) in place + the same scoring), the cost a search candidate is held to.

Model: the CPU size of benchmarks/gpu_sweep.py (a random 5M-parameter Qwen2 pair in bf16,
4 layers, 200 items of 300-word contexts). Targets (issue 17): a candidate ≤ 1.2× a sweep point,
≥ 10× faster than the loop.

    python benchmarks/search_vs_loop.py [--candidates 6] [--size cpu|smoke]
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
    ap.add_argument("--size", default="cpu", choices=("cpu", "smoke"))
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
    size = gpu_sweep.SIZES[args.size]
    space = parse_space("attn-mlp:2")
    rng = np.random.default_rng(0)
    genomes = [round_genome(g) for g in rng.uniform(0, 1, size=(args.candidates, len(space.genes)))]
    with tempfile.TemporaryDirectory(prefix="calmerge-search-bench-") as tmp:
        work = Path(tmp)
        base, aligned = gpu_sweep.build_pair(work, size)
        items = load_benchmark(str(gpu_sweep.write_items(work / "dev.jsonl", size))).items
        model, tok = load_model(aligned, device="cpu", dtype="auto")
        scorer = Scorer(tok, items, template="{question}")
        interp = LiveInterpolator(model, open_checkpoint(base), open_checkpoint(aligned))
        interp.apply("linear", 0.5)
        scorer.score(model)  # warm-up: kernels, allocator

        start = time.perf_counter()
        for lam in np.linspace(0, 1, args.candidates):
            interp.apply("linear", float(lam))
            scorer.score(model)
        point = (time.perf_counter() - start) / args.candidates

        ours, start = [], time.perf_counter()
        for g in genomes:
            interp.apply_config(candidate_config(space, str(base), str(aligned), g,
                                                 out_dtype=size["dtype"]))
            ours.append(scorer.score(model).choice_logprobs.copy())
        in_place = (time.perf_counter() - start) / args.candidates

        theirs, start = [], time.perf_counter()
        for i, g in enumerate(genomes):
            cfg = candidate_config(space, str(base), str(aligned), g, out_dtype=size["dtype"])
            out = work / f"cand{i}"
            mk = MergeConfiguration.model_validate(yaml.safe_load(yaml.safe_dump(to_mergekit(cfg))))
            mergekit_run(mk, str(out), MergeOptions(quiet=True))
            m, _ = load_model(out, device="cpu", dtype="auto")
            theirs.append(scorer.score(m).choice_logprobs.copy())
            del m
        loop = (time.perf_counter() - start) / args.candidates
    same = all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    print(f"{args.candidates} attn-mlp:2 candidates, {len(items)} items, {args.size} size")
    print(f"sweep point {point:.2f} s   candidate in place {in_place:.2f} s"
          f" ({in_place / point:.2f}x a sweep point, target <= 1.2x)")
    print(f"Mergenetic-style loop {loop:.2f} s per candidate: in place is {loop / in_place:.1f}x"
          " faster (target >= 10x)")
    print(f"identical log-likelihoods in place and from mergekit's checkpoints: {same}")
    print(json.dumps({"point_s": point, "candidate_s": in_place, "loop_s": loop,
                      "identical": same}))


if __name__ == "__main__":
    main()
