"""A simplex sweep of P points against a λ sweep of P points, same machinery, in one run.

Three random Qwen2 checkpoints of one layout (the CPU size of benchmarks/gpu_sweep.py: 5M
parameters in bf16, 200 items with 300-word contexts): the λ sweep runs base→aligned at 15
evenly spaced λ, the simplex sweep base/sft/dpo at step 0.25 (15 points). Both run through the
CLI with refinement off, so wall time counts everything a user waits for: start-up, model load,
tokenising, the points, the store and the report. Target (issue 16): simplex ≤ 1.1× the λ sweep.
The simplex points must equal `calmerge merge` of their weights (checked on one point here; the
test suite checks it for 3- and 4-model soups).

    python benchmarks/simplex_sweep.py [--size cpu|smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def third_model(aligned: Path, out: Path) -> Path:
    """Another descendant of the base: the aligned model with fresh noise (same layout)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(aligned, out)
    f = out / "model.safetensors"
    tensors = load_file(f)
    g = torch.Generator().manual_seed(7)
    for k, t in tensors.items():
        tensors[k] = (t.float() + 0.02 * torch.randn(t.shape, generator=g)).to(t.dtype)
    save_file(tensors, f, metadata={"format": "pt"})
    return out


def run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([str(BIN / "calmerge"), *argv], env=ENV, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="cpu", choices=("cpu", "smoke"))
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "src"))
    import gpu_sweep

    size = gpu_sweep.SIZES[args.size]
    with tempfile.TemporaryDirectory(prefix="calmerge-simplex-bench-") as tmp:
        work = Path(tmp)
        base, aligned = gpu_sweep.build_pair(work, size)
        dpo = third_model(aligned, work / "dpo")
        data = gpu_sweep.write_items(work / "items.jsonl", size)
        common = ["--data", str(data), "--prompt-template", "{question}", "--device", "cpu",
                  "--no-refine", "--quiet"]
        grid = ",".join(f"{i / 14:.6g}" for i in range(15))
        lam = run(["sweep", "--base", str(base), "--aligned", str(aligned), "--grid", grid,
                   "--no-extrapolate", "--store", str(work / "lam.db"), "--out",
                   str(work / "r1"), *common])
        simplex = run(["sweep", "--models", f"base={base}", f"sft={aligned}", f"dpo={dpo}",
                       "--simplex-step", "0.25", "--store", str(work / "simplex.db"), "--out",
                       str(work / "r2"), *common])
        from calmerge.api import results_table

        n_lam, n_simplex = (len(results_table(work / f)) for f in ("lam.db", "simplex.db"))
        assert n_lam == n_simplex == 15, (n_lam, n_simplex)
        # one interior point, exported, equals calmerge merge of the same weights
        run(["export", "--store", str(work / "simplex.db"), "--pick",
             "weights=base:0.25,sft:0.25,dpo:0.5", "-o", str(work / "exp")])
        run(["merge", str(work / "exp" / "mergekit_config.yml"), "-o", str(work / "again"),
             "--quiet"])
        a = (work / "exp" / "model.safetensors").read_bytes()
        b = (work / "again" / "model.safetensors").read_bytes()
    ratio = simplex / lam
    print(f"15 points each, {size['items']} items, {args.size} size, 3 checkpoints")
    print(f"λ sweep: {lam:.1f} s   simplex sweep: {simplex:.1f} s   ratio {ratio:.2f}x "
          "(target <= 1.1x)")
    print(f"exported simplex point equals calmerge merge of its mergekit_config.yml: {a == b}")
    print(json.dumps({"lam_s": lam, "simplex_s": simplex, "ratio": ratio, "equal": a == b}))


if __name__ == "__main__":
    main()
