"""`sweep --budget` against the full sweep on the built-in organism, in one run.

Both sweep the organism's base→aligned pair on the default grid (13 λ, refinement off, no
generations) with the CLI; the budgeted one gets half the dev item-evaluations the full sweep
spends (13 λ × all dev items). Reported: both picks (max-acc on dev), the item-evaluations each
spent (dev, and dev + test), wall time, and the budgeted run's own account of what it left.
Target (issue 17): the same pick with ≤ 50% of the item-evaluations, and a plain statement
when it cannot be sure.

    python benchmarks/budget_sweep.py [--seed 0] [--fraction 0.5]
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


def _spent(store: Path) -> tuple[int, int]:
    """(dev, test) item-evaluations a sweep's store holds: every per-item row of the dev and
    anchor splits, and of the test split."""
    import sqlite3

    with sqlite3.connect(store) as c:
        rows = dict(c.execute("SELECT split, COUNT(*) FROM predictions GROUP BY split"))
    return rows.get("dev", 0) + rows.get("anchor", 0), rows.get("test", 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=0.5)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent / "src"))
    from calmerge.api import build_organism, report, results_table
    from calmerge.eval.data import load_benchmark

    org = build_organism(seed=args.seed, progress=False)
    n_dev = len(load_benchmark(str(org.dev)).items)
    n_test = len(load_benchmark(str(org.test)).items)
    budget = int(args.fraction * 13 * n_dev)
    common = ["--base", str(org.base), "--aligned", str(org.aligned), "--data", str(org.test),
              "--dev", str(org.dev), "--no-refine", "--device", "cpu", "--quiet"]
    out = {}
    with tempfile.TemporaryDirectory(prefix="calmerge-budget-bench-") as tmp:
        work = Path(tmp)
        for name, extra in (("full", []), ("budget", ["--budget", str(budget)])):
            store = work / f"{name}.db"
            start = time.perf_counter()
            subprocess.run([str(BIN / "calmerge"), "sweep", *common, "--store", str(store),
                            "--out", str(work / name), *extra], env=ENV, check=True,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - start
            rows = results_table(store)
            rep = report(store, None, work / f"{name}-again")
            full_points = len(rows)
            dev, test = _spent(store)  # counted from the store's per-item rows
            out[name] = {"wall_s": wall, "points": full_points, "pick": rep.verdict.pick.lam,
                         "sentences": rep.sentences, "dev_evals": dev, "all_evals": dev + test}
    f, b = out["full"], out["budget"]
    print(f"organism seed {args.seed}: {n_dev} dev, {n_test} test items, 13 λ")
    print(f"full sweep: pick λ={f['pick']:g}, {f['dev_evals']:,} dev item-evaluations"
          f" ({f['all_evals']:,} with test), {f['wall_s']:.1f} s")
    print(f"budgeted:   pick λ={b['pick']:g}, {b['dev_evals']:,} dev item-evaluations"
          f" ({b['all_evals']:,} with test), {b['wall_s']:.1f} s; {b['points']} λ fully scored")
    print(f"same pick: {f['pick'] == b['pick']}; dev item-evaluations"
          f" {b['dev_evals'] / f['dev_evals']:.0%} of the full sweep's (target <= 50%)")
    print(next((s for s in b["sentences"] if s.startswith("Budgeted sweep:")), ""))
    print(json.dumps({k: {x: y for x, y in v.items() if x != "sentences"} for k, v in out.items()}))


if __name__ == "__main__":
    main()
