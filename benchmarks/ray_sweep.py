"""Ray scale-out: the same sweep on 2 single-threaded CPU workers against 1, in one run.

A local Ray cluster is started on this machine (`ray start --head --num-cpus 2`); each worker
holds one live model and runs torch on one thread. Both runs compute the same grid on the same
pair and data (the CPU size of benchmarks/gpu_sweep.py: a random 5M-parameter Qwen2 pair, 200
items with 300-token contexts) and must store identical points. Wall time counts everything the
command does after the cluster is up: the workers' start (imports, model load, tokenising), the
points, the store writes and the report. Target (issue 18): >= 1.7x with 2 workers.

    python benchmarks/ray_sweep.py [--points 16]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": "disabled",
       "RAY_USAGE_STATS_ENABLED": "0"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep(work: Path, base: Path, aligned: Path, data: Path, address: str, workers: int,
          grid: str) -> tuple[float, dict]:
    store = work / f"w{workers}.db"
    start = time.perf_counter()
    subprocess.run(
        [str(BIN / "calmerge"), "sweep", "--base", str(base), "--aligned", str(aligned),
         "--data", str(data), "--grid", grid, "--no-extrapolate", "--no-refine",
         "--prompt-template", "{question}", "--device", "cpu", "--ray", address,
         "--workers", str(workers), "--store", str(store), "--out", str(work / f"r{workers}"),
         "--quiet"],
        env=ENV, check=True, stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    sys.path.insert(0, str(HERE.parent / "src"))
    from calmerge.api import results_table

    return wall, {r["lam"]: {k: v for k, v in r.items() if k.startswith("test.")}
                  for r in results_table(store)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=16)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    import gpu_sweep

    grid = ",".join(f"{i / (args.points - 1):.6g}" for i in range(args.points))
    with tempfile.TemporaryDirectory(prefix="calmerge-ray-bench-") as tmp:
        work = Path(tmp)
        size = gpu_sweep.SIZES["cpu"]
        base, aligned = gpu_sweep.build_pair(work, size)
        data = gpu_sweep.write_items(work / "items.jsonl", size)
        port = _port()
        subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                        "--include-dashboard=false", "--disable-usage-stats"],
                       env=ENV, check=True, capture_output=True)
        try:
            address = f"127.0.0.1:{port}"
            one, p1 = sweep(work, base, aligned, data, address, 1, grid)
            two, p2 = sweep(work, base, aligned, data, address, 2, grid)
        finally:
            subprocess.run([str(BIN / "ray"), "stop", "--force"], env=ENV, capture_output=True)
    print(f"{args.points} points, {size['items']} items, 5M-param Qwen2 pair in bf16")
    print(f"1 worker: {one:.1f} s   2 workers: {two:.1f} s   speed-up {one / two:.2f}x "
          "(target >= 1.7x)")
    print(f"identical points: {p1 == p2}")
    print(json.dumps({"one": one, "two": two}))


if __name__ == "__main__":
    main()
