"""Real lm-eval task definitions, end to end: `calmerge eval` vs `lm_eval --model hf`, one run.

The claim: scoring real lm-eval task definitions at ≥ 500 documents is at least 3× faster than
`lm_eval --model hf` end to end, with identical metrics. "End to end" is the commands a user
types, run here as subprocesses and timed by wall clock:

    lm_eval --model hf --model_args pretrained=MODEL,dtype=float32 --tasks T1,T2
            --include_path TASKS --device cpu --batch_size 32 --output_path OUT --log_samples
    calmerge eval MODEL --data 'lmeval:T1,T2?include_path=TASKS' --device cpu --batch-size 32
            --output out.json

(`--fewshot N` adds `--num_fewshot N` to the one and `&fewshot=N` to the other.) The tasks are
lm-eval 0.4.13's own YAMLs — arc_easy and hellaswag (with its `utils.process_docs`) by default,
piqa on request — copied from the installed package with only the task/tag names and the
dataset changed: `dataset_path: json` over generated local documents in each dataset's real
schema (each document's choices distinct, as in the real datasets almost always).
The model is score_vs_lmeval.py's random ~27M-parameter Llama with a trained byte-level BPE.
Every task's acc and acc_norm must be identical in both outputs; the script prints both, the
wall times and their ratio, the tokens each tool forwards (the ratio that sharing contexts
alone would give), and writes the figures as JSON.

Usage: python benchmarks/tasks_vs_lmeval.py [--docs 500] [--tasks arc_easy,hellaswag]
           [--fewshot N] [--threads N] [--repeat N] [--n-boot 1000] [--json F]
On a small shared machine, `--threads 1 --repeat 3` gives figures that hold from one run to the
next; with several threads a busy core elsewhere slows either tool many-fold at random.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
METRICS = ("acc", "acc_norm")
PREFIX = "bench_"  # our copies never collide with lm-eval's built-in task names

sys.path.insert(0, str(HERE))
from score_vs_lmeval import WORDS, build_model  # noqa: E402


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _distinct(rng: random.Random, n: int, lo: int, hi: int, end: tuple[str, ...] = ("",)) -> list[str]:
    """n different answers, as in the real datasets' rows (both tools score a repeated choice
    the same way, the tie going to the first copy, but a tie says nothing about speed)."""
    out: list[str] = []
    while len(out) < n:
        text = _words(rng, lo, hi) + rng.choice(end)
        if text not in out:
            out.append(text)
    return out


# ── documents in each dataset's real schema (what the HF dataset rows look like) ──


def arc_doc(rng: random.Random, i: int) -> dict[str, Any]:
    n = rng.choice([3, 4, 4, 4, 5])
    labels = rng.choice([list("ABCDE"), list("12345")])[:n]
    return {"id": f"Mercury_{i}", "question": _words(rng, 8, 25).capitalize() + "?",
            "choices": {"text": _distinct(rng, n, 1, 5), "label": labels},
            "answerKey": rng.choice(labels)}


def hellaswag_doc(rng: random.Random, i: int) -> dict[str, Any]:
    ctx_a, ctx_b = _words(rng, 10, 30) + ".", _words(rng, 2, 6)
    return {"ind": i, "activity_label": _words(rng, 1, 3).title(), "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b.capitalize()}",
            "endings": _distinct(rng, 4, 6, 18, (".", " [title] step.", "")),
            "source_id": f"activitynet~v_{i}", "split": "val", "split_type": "indomain",
            "label": str(rng.randrange(4))}


def piqa_doc(rng: random.Random, i: int) -> dict[str, Any]:
    sol1, sol2 = _distinct(rng, 2, 5, 20)
    return {"goal": _words(rng, 5, 15).capitalize() + ".", "sol1": sol1, "sol2": sol2,
            "label": rng.randrange(2)}


#: task → (document builder, the splits its YAML reads, its folder in lm_eval/tasks)
TASKS = {
    "arc_easy": (arc_doc, ("train", "validation", "test"), "arc"),
    "hellaswag": (hellaswag_doc, ("train", "validation"), "hellaswag"),
    "piqa": (piqa_doc, ("train", "validation"), "piqa"),
}


def lm_eval_yaml(task: str) -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / TASKS[task][2] / f"{task}.yaml"


def write_task(root: Path, task: str, n_docs: int, seed: int) -> str:
    """lm-eval's YAML for `task` over `n_docs` generated docs; returns the copy's task name.

    Only `task:`, `tag:` and the dataset lines change; every template, the process_docs
    hook (its utils.py copied beside it) and the metric list are lm-eval's own.
    """
    make, splits, _ = TASKS[task]
    rng = random.Random(seed)
    folder = root / task
    folder.mkdir(parents=True)
    for split in splits:  # a few train docs (no few-shot here); the scored split has n_docs
        size = 20 if split == "train" else n_docs
        with (folder / f"{split}.jsonl").open("w") as fh:
            for i in range(size):
                fh.write(json.dumps(make(rng, i)) + "\n")
    source = lm_eval_yaml(task)
    text = source.read_text()
    files = "".join(f"    {s}: {folder / f'{s}.jsonl'}\n" for s in splits)
    text, n = re.subn(r"(?m)^dataset_path: .*$",
                      f"dataset_path: json\ndataset_kwargs:\n  data_files:\n{files.rstrip()}", text)
    assert n == 1, f"{source}: no dataset_path line"
    name = PREFIX + task
    text, n = re.subn(r"(?m)^task: .*$", f"task: {name}", text)
    assert n == 1, f"{source}: no task line"
    text = re.sub(r"(?m)^(tag:\n(?:  - .*\n)+)", lambda m: re.sub(r"  - ", f"  - {PREFIX}", m[1]),
                  text)
    header = (f"# Copied from lm-evaluation-harness's {source.parent.name}/{source.name};"
              " changed: task/tag names and the dataset (local JSON).\n")
    (folder / f"{task}.yaml").write_text(header + text)
    for helper in source.parent.glob("*.py"):
        shutil.copy(helper, folder / helper.name)
    return name


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-15:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))
    return wall


def lm_eval_results(out: Path, names: list[str]) -> tuple[dict[str, dict[str, float]], dict]:
    """Per-task acc/acc_norm from lm-eval's results JSON, and that JSON."""
    result = json.loads(next(out.rglob("results_*.json")).read_text())
    return {t: {m: result["results"][t][f"{m},none"] for m in METRICS} for t in names}, result


def calmerge_results(out: Path, names: list[str]) -> tuple[dict[str, dict[str, float]], str, dict]:
    """Per-task acc/acc_norm from `calmerge eval --output`'s JSON; where they came from; the JSON.

    Several task names are one pooled benchmark in calmerge: its `metrics` are the pool's. The
    per-task numbers are its `breakdown` where the JSON has one; otherwise they are counted from
    the JSON's per-item predictions (ids `TASK-N`), the mean taken as lm-eval's `mean` takes it
    (sum / len), so a difference in any document shows.
    """
    doc = json.loads(out.read_text())
    if len(names) == 1:
        return {names[0]: {m: doc["metrics"][m]["value"] for m in METRICS}}, "metrics", doc
    breakdown = doc.get("breakdown") or {}
    if all(t in breakdown for t in names):
        return {t: {m: breakdown[t][m]["value"] for m in METRICS} for t in names}, "breakdown", doc
    per: dict[str, dict[str, list[float]]] = {t: {m: [] for m in METRICS} for t in names}
    for p in doc["predictions"]:
        task = p["id"].rsplit("-", 1)[0]
        per[task]["acc"].append(float(bool(p["correct"])))
        per[task]["acc_norm"].append(float(p["pred_norm"] == p["answer"]))
    return ({t: {m: sum(v) / len(v) for m, v in ms.items()} for t, ms in per.items()},
            "per-item predictions (the JSON has no per-task breakdown)", doc)


def token_work(ref: str, model: Path) -> tuple[int, int]:
    """Tokens each tool feeds the model for `ref`: calmerge's packed shared-context sequences,
    and every (context + choice) request without its last token, as lm-eval's HFLM runs them.
    Their ratio is the speed-up that forwarding fewer tokens alone would give."""
    from calmerge.eval.data import load_benchmark, native_template
    from calmerge.eval.loading import load_tokenizer
    from calmerge.eval.score import Scorer

    scorer = Scorer(load_tokenizer(model), list(load_benchmark(ref).items),
                    template=native_template(ref))
    per_request = sum(len(e.context) + len(c) - 1 for e in scorer.encoded for c in e.continuations)
    return scorer.n_tokens, per_request


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=500, help="scored documents per task")
    ap.add_argument("--tasks", default="arc_easy,hellaswag", help=f"of {', '.join(TASKS)}")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS for both commands (1 is steadier on a shared machine)")
    ap.add_argument("--n-boot", type=int, default=None, help="calmerge eval --n-boot (default 1000)")
    ap.add_argument("--fewshot", type=int, default=0,
                    help="few-shot examples from each task's train split (lm_eval --num_fewshot;"
                    " calmerge's ?fewshot=): longer shared contexts")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run both this many times, alternating the order; the fastest counts")
    ap.add_argument("--batch-size", type=int, default=32, help="both tools' --batch_size")
    ap.add_argument("--out", type=Path, default=None, help="keep the work folder here")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task {unknown[0]}; choose from {', '.join(TASKS)}")
    env = dict(ENV)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))

    root = args.out or Path(tempfile.mkdtemp(prefix="calmerge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    model = build_model(root / "model")
    task_dir = root / "tasks"
    names = [write_task(task_dir, t, args.docs, seed=i) for i, t in enumerate(tasks)]

    lm_out = root / "lm_eval"
    lm_cmd = [str(BIN / "lm_eval"), "--model", "hf", "--model_args",
              f"pretrained={model},dtype=float32", "--tasks", ",".join(names),
              "--include_path", str(task_dir), "--device", "cpu",
              "--batch_size", str(args.batch_size), "--output_path", str(lm_out), "--log_samples"]
    cm_out = root / "calmerge.json"
    ref = f"lmeval:{','.join(names)}?include_path={task_dir}"
    if args.fewshot:
        lm_cmd += ["--num_fewshot", str(args.fewshot)]
        ref += f"&fewshot={args.fewshot}"
    cm_cmd = [str(BIN / "calmerge"), "eval", str(model), "--data", ref, "--device", "cpu",
              "--batch-size", str(args.batch_size), "--output", str(cm_out)]
    if args.n_boot is not None:
        cm_cmd += ["--n-boot", str(args.n_boot)]
    print("$ " + " ".join(lm_cmd))
    print("$ " + " ".join(cm_cmd))
    walls: dict[str, list[float]] = {"lm_eval": [], "calmerge": []}
    for i in range(args.repeat):  # alternating which goes first, so drift hits both
        order = [("lm_eval", lm_cmd), ("calmerge", cm_cmd)]
        for tool, cmd in order if i % 2 == 0 else order[::-1]:
            if tool == "lm_eval":
                shutil.rmtree(lm_out, ignore_errors=True)
            else:  # each run writes its outputs afresh
                for old in (cm_out, cm_out.with_suffix(".reliability.png")):
                    old.unlink(missing_ok=True)
            walls[tool].append(run(cmd, env, root / f"{tool}.log"))
    t_lm, t_cm = min(walls["lm_eval"]), min(walls["calmerge"])

    ours_tokens, request_tokens = token_work(ref, model)
    theirs, lm_json = lm_eval_results(lm_out, names)
    ours, source, cm_json = calmerge_results(cm_out, names)
    same = theirs == ours
    # the pooled headline calmerge prints: lm-eval's per-task means weighted by documents
    sizes = {t: lm_json["n-samples"][t]["effective"] for t in names}
    pooled = {m: sum(theirs[t][m] * sizes[t] for t in names) / sum(sizes.values()) for m in METRICS}
    pooled_diff = max(abs(cm_json["metrics"][m]["value"] - pooled[m]) for m in METRICS)
    print(f"tasks: {', '.join(names)}  documents: "
          + ", ".join(f"{t} {n}" for t, n in sizes.items())
          + f"  few-shot: {args.fewshot}  threads: {args.threads or 'default'}  load average: {os.getloadavg()[0]:.2f}")
    print(f"calmerge per-task metrics from: {source}")
    print(f"{'task':<18} {'metric':<9} {'lm_eval':>20} {'calmerge':>20}")
    for t in names:
        for m in METRICS:
            flag = "" if theirs[t][m] == ours[t][m] else "   DIFFERENT"
            print(f"{t:<18} {m:<9} {theirs[t][m]:>20.17g} {ours[t][m]:>20.17g}{flag}")
    print(f"metrics: {'identical' if same else 'DIFFERENT'}; calmerge's pooled acc/acc_norm vs"
          f" lm-eval's document-weighted: max |diff| {pooled_diff:.2g}")
    print(f"lm_eval --model hf: {t_lm:.1f} s   calmerge eval: {t_cm:.1f} s   "
          f"speed-up: {t_lm / t_cm:.2f}x (target >= 3x)"
          + (f"   [fastest of {args.repeat}; all: lm_eval "
             + ", ".join(f"{x:.1f}" for x in walls["lm_eval"]) + "; calmerge "
             + ", ".join(f"{x:.1f}" for x in walls["calmerge"]) + "]" if args.repeat > 1 else ""))
    print(f"tokens forwarded: calmerge {ours_tokens:,} (shared contexts), lm-eval's requests"
          f" {request_tokens:,}: ratio {request_tokens / ours_tokens:.2f}x")
    print(f"  (inside: lm-eval's total_evaluation_time {float(lm_json['total_evaluation_time_seconds']):.1f} s,"
          f" calmerge's scoring {cm_json['seconds']:.1f} s)")
    figures = {
        "tasks": names, "docs": sizes, "threads": args.threads, "fewshot": args.fewshot,
        "batch_size": args.batch_size, "calmerge_n_boot": args.n_boot or 1000,
        "lm_eval_s": round(t_lm, 2), "calmerge_s": round(t_cm, 2),
        "walls_s": {k: [round(x, 2) for x in v] for k, v in walls.items()},
        "speedup": round(t_lm / t_cm, 3), "metrics_identical": same,
        "calmerge_per_task_source": source, "pooled_max_abs_diff": pooled_diff,
        "lm_eval_metrics": theirs, "calmerge_metrics": ours,
        "lm_eval_total_evaluation_time_s": float(lm_json["total_evaluation_time_seconds"]),
        "calmerge_scoring_s": cm_json["seconds"],
        "tokens_calmerge": ours_tokens, "tokens_lm_eval_requests": request_tokens,
        "load_average_end": os.getloadavg()[0], "commands": [lm_cmd, cm_cmd],
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"figures: {args.json}")
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
