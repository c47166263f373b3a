"""Sweep benchmark: `calmerge sweep` vs the pipeline people use today, in one run.

Today's pipeline for an 11-point λ study: for every λ, `mergekit-yaml` writes the merge to disk,
then `lm_eval --model hf` loads and evaluates it. calmerge loads the model once and rewrites the
weights in place per point. Both evaluate the same local multiple-choice task with the bare
`{question}` context (lm-eval's prompt), so per-point accuracies must agree; the script checks
that and prints wall-time and peak-RSS ratios.

Model: the built-in organism (built or reused from the cache). Usage:
    python benchmarks/sweep_vs_pipeline.py [--points 11] [--limit 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str], **kw) -> tuple[float, int]:
    """Run a command; return (wall seconds, peak RSS in MB of that command).

    The RSS comes from /usr/bin/time, not from wait4 on our own child: Linux carries the
    parent's high-water RSS into a child's ru_maxrss across fork + exec, and this script may
    have grown (it builds the organism in-process when it is not cached).
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], env=ENV, **kw)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}")
        return wall, int(rss.read().split()[-1]) // 1024


def lm_eval_task(work: Path, test: Path, limit: int) -> Path:
    """A local lm-eval task over the same JSONL: bare question context, choice after one space."""
    rows = [json.loads(line) for line in test.read_text().splitlines() if line.strip()][:limit]
    data = work / "task.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (work / "tasks").mkdir()
    (work / "tasks" / "bench.yaml").write_text(
        f"""task: calmerge_bench
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
"""
    )
    return data


def pipeline(work: Path, base: Path, aligned: Path, lams: list[float]) -> tuple[float, int, dict]:
    """mergekit-yaml then lm_eval for every λ; returns wall, max peak RSS, acc per λ."""
    total, peak, accs = 0.0, 0, {}
    for lam in lams:
        cfg = work / f"merge_{lam}.yml"
        cfg.write_text(
            f"merge_method: linear\ndtype: float32\nmodels:\n"
            f"  - model: {base}\n    parameters:\n      weight: {1 - lam}\n"
            f"  - model: {aligned}\n    parameters:\n      weight: {lam}\n"
            f"parameters:\n  normalize: false\n"
        )
        out = work / f"merged_{lam}"
        wall, rss = run([str(BIN / "mergekit-yaml"), str(cfg), str(out), "--copy-tokenizer", "--lazy-unpickle"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total, peak = total + wall, max(peak, rss)
        res = work / f"lmeval_{lam}"
        wall, rss = run(
            [str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={out},dtype=float32",
             "--tasks", "calmerge_bench", "--include_path", str(work / "tasks"), "--device", "cpu",
             "--batch_size", "32", "--output_path", str(res)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        total, peak = total + wall, max(peak, rss)
        result = json.loads(next(res.rglob("results_*.json")).read_text())
        accs[lam] = result["results"]["calmerge_bench"]["acc,none"]
        shutil.rmtree(out)
    return total, peak, accs


def calmerge_sweep(work: Path, base: Path, aligned: Path, data: Path, lams: list[float]) -> tuple[float, int, dict]:
    store = work / "runs.db"
    grid = ",".join(f"{x:g}" for x in lams)
    wall, rss = run(
        [str(BIN / "calmerge"), "sweep", "--base", str(base), "--aligned", str(aligned), "--data", str(data),
         "--grid", grid, "--no-extrapolate", "--no-refine", "--prompt-template", "{question}",
         "--device", "cpu", "--store", str(store), "--out", str(work / "report"), "--quiet"],
        stdout=subprocess.DEVNULL,
    )
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from calmerge.api import results_table

    accs = {row["lam"]: row["test.acc"] for row in results_table(store)}
    return wall, rss, accs


def model_floor(aligned: Path, data: Path) -> int:
    """Peak RSS of one process that loads the model and scores the task once (the 1× reference)."""
    code = (
        "from calmerge.eval.loading import load_model\n"
        "from calmerge.eval.data import load_items\n"
        "from calmerge.eval.score import Scorer\n"
        f"m, t = load_model({str(aligned)!r}, device='cpu')\n"
        f"Scorer(t, load_items({str(data)!r}), template='{{question}}').score(m)\n"
    )
    return run([sys.executable, "-c", code])[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=11)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--base", type=Path, help="base model (default: the built-in organism's)")
    ap.add_argument("--aligned", type=Path, help="aligned model")
    ap.add_argument("--data", type=Path, help="multiple-choice JSONL (default: organism test)")
    args = ap.parse_args()
    if args.base and args.aligned and args.data:
        base, aligned, test = args.base.resolve(), args.aligned.resolve(), args.data.resolve()
    else:
        from calmerge.organism import build_organism

        org = build_organism(progress=False)
        base, aligned, test = org.base, org.aligned, org.test
    lams = [round(i / (args.points - 1), 6) for i in range(args.points)]
    with tempfile.TemporaryDirectory(prefix="calmerge-bench-") as tmp:
        work = Path(tmp)
        data = lm_eval_task(work, Path(test), args.limit)
        n_items = sum(1 for line in data.read_text().splitlines() if line.strip())
        ours_wall, ours_rss, ours = calmerge_sweep(work, base, aligned, data, lams)
        floor_rss = model_floor(aligned, data)
        peer_wall, peer_rss, peer = pipeline(work, base, aligned, lams)
    worst = max(abs(ours[x] - peer[x]) for x in lams)
    print(f"points: {len(lams)}  items: {n_items}")
    print(f"{'λ':>6} {'calmerge acc':>13} {'mergekit+lm_eval acc':>21}")
    for x in lams:
        print(f"{x:>6g} {ours[x]:>13.4f} {peer[x]:>21.4f}")
    print(f"max |acc difference|: {worst:.4f}  ({'identical' if worst == 0 else 'DIFFERENT'})")
    print(f"calmerge sweep wall: {ours_wall:.1f} s   mergekit+lm_eval wall: {peer_wall:.1f} s")
    print(f"speed-up: {peer_wall / ours_wall:.1f}x (target >= 10x)")
    print(f"peak RSS: sweep {ours_rss} MB, load+score-once floor {floor_rss} MB, "
          f"ratio {ours_rss / floor_rss:.2f}x (target <= 1.5x); pipeline peak {peer_rss} MB")


if __name__ == "__main__":
    main()
