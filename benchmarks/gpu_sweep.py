"""Sweep at scale: calmerge against today's pipeline and against the physical floor, one run.

A random Qwen2-layout pair (GPU: ~1B parameters in bf16; CPU: a small one, so the same script
runs in CI) and MMLU-like items whose contexts are as long as 5-shot MMLU prompts. For 11 λ:

- calmerge sweep, parents resident and parents streamed (both in-process, peak memory read);
  the two must store identical points;
- the pipeline people use today: `mergekit-yaml` writes the point, `lm_eval --model hf` scores
  it; timed on 2 points and extrapolated to 11 (the per-point cost is constant);
- the floor: one load plus 11 × one bare batched forward over the unique tokens (every
  question's packed row, causal mask only, no scoring work at all).

Targets (issue 15): ≥20× faster than the pipeline, ≤1.3× the floor, peak GPU memory ≤3.3× one
model (parents resident) and ≤1.3× (streamed). On CPU the memory figure is peak RSS. Generation
throughput (tokens/s, batched, KV cache) is measured on the same model.

    python benchmarks/gpu_sweep.py            # GPU when there is one, else the CPU size
    python benchmarks/gpu_sweep.py --smoke    # seconds: what the test suite runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}

#: model and data sizes: (hidden, layers, intermediate, heads, kv heads, vocab), items, words
SIZES = {
    "gpu": dict(hidden=2048, layers=16, inter=5504, heads=16, kv=4, vocab=32000, items=1000,
                context_words=600, dtype="bfloat16"),
    "cpu": dict(hidden=256, layers=4, inter=704, heads=4, kv=2, vocab=4000, items=200,
                context_words=300, dtype="bfloat16"),
    "smoke": dict(hidden=64, layers=2, inter=128, heads=2, kv=1, vocab=600, items=24,
                  context_words=60, dtype="bfloat16"),
}


def words(size: dict) -> list[str]:
    """The benchmark's word list: random lowercase words, few enough that BPE learns each."""
    rng = random.Random(1)
    n = max(50, size["vocab"] // 4)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
            for _ in range(n)]


def build_pair(root: Path, size: dict) -> tuple[Path, Path]:
    """A random Qwen2 base and a perturbed 'aligned' copy, with a byte-level BPE tokenizer
    trained on the benchmark's words (transformers rebuilds a Qwen2 checkpoint's tokenizer as
    BPE from vocab + merges, so a word-level one would not survive the round trip)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size["vocab"], special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tk.train_from_iterator([" ".join(words(size))] * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<pad>")
    cfg = Qwen2Config(
        vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
        intermediate_size=size["inter"], num_attention_heads=size["heads"],
        num_key_value_heads=size["kv"], max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    dtype = getattr(torch, size["dtype"])
    paths = []
    for name, noise in (("base", 0.0), ("aligned", 0.02)):
        model = Qwen2ForCausalLM(cfg)
        if noise:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * noise)
        model = model.to(dtype)
        out = root / name
        model.save_pretrained(out)
        tok.save_pretrained(out)
        paths.append(out)
        del model
    return paths[0], paths[1]


def write_items(path: Path, size: dict, seed: int = 0) -> Path:
    """MMLU-like items: a 5-shot-length context of words, four one-to-three-word choices."""
    rng = random.Random(seed)
    vocab = words(size)
    rows = []
    for i in range(size["items"]):
        ctx = " ".join(rng.choice(vocab) for _ in range(size["context_words"]))
        choices = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 3))) for _ in range(4)]
        rows.append({"id": f"q{i}", "question": ctx, "choices": choices, "answer": i % 4})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(baseline: int) -> int:
    """Peak bytes of this process's work: the GPU allocator's peak on CUDA, else the peak RSS
    above `baseline` (the RSS once torch and transformers are imported, ~0.5 GB, which would
    dwarf a small model)."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return _rss() - baseline


def inner_sweep(args: argparse.Namespace) -> None:
    """One calmerge sweep in this process (run as a child, so peaks are its own); prints JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import transformers  # noqa: F401  (imported before the baseline is read)

    from calmerge import api
    from calmerge.config import SweepConfig

    baseline = _rss()
    cfg = SweepConfig(
        base=args.base, aligned=args.aligned, data=args.data, grid=tuple(args.lams),
        extrapolate=(), refine=False, prompt_template="{question}", n_boot=0,
        device=_device(), parents=args.parents, scoring_form=args.form, store=args.store,
        out=args.out,
    )
    from calmerge.sweep.runner import Sweep

    start = time.perf_counter()
    runner = Sweep(cfg)
    outcome = runner.execute(progress=False)
    peak = peak_memory(baseline)  # the sweep itself (the report's matplotlib comes after)
    api.report(cfg.store, str(runner.run.id), cfg.out)
    wall = time.perf_counter() - start
    accs = {str(r["lam"]): r["test.acc"] for r in api.results_table(cfg.store)}
    lls = {str(r["lam"]): r.get("test.nll") for r in api.results_table(cfg.store)}
    forms = sorted({sc._form for t in runner.tasks for sc in t.scorers.values()})
    timings = [sc.form_timings for t in runner.tasks for sc in t.scorers.values()]
    print(json.dumps({"wall": wall, "peak": peak, "accs": accs, "nll": lls,
                      "placement": outcome.placement, "dtype": runner.cfg.dtype,
                      "forms": forms, "timings": timings}))


def inner_floor(args: argparse.Namespace) -> None:
    """Load once + 11 bare forwards over every question's packed row (causal mask only)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch
    import transformers  # noqa: F401  (imported before the baseline is read)

    from calmerge.eval.data import load_items
    from calmerge.eval.loading import load_model, load_tokenizer
    from calmerge.eval.score import Scorer

    baseline = _rss()
    tok = load_tokenizer(args.aligned)
    scorer = Scorer(tok, load_items(args.data), template="{question}", batch_size=32)
    rows = [b.input_ids for b in scorer.batches]
    start = time.perf_counter()
    model, _ = load_model(args.aligned, device=_device(), dtype="auto")
    load = time.perf_counter() - start
    decoder = model.get_decoder()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    with torch.inference_mode():
        decoder(input_ids=rows[-1].to(model.device))  # warm-up (kernels, allocator)
        sync()
        start = time.perf_counter()
        for _ in args.lams:
            for ids in rows:
                decoder(input_ids=ids.to(model.device), use_cache=False)
        sync()
    forwards = time.perf_counter() - start
    peak = peak_memory(baseline)  # load + the bare forwards (before generation)
    tokens = scorer.n_tokens
    # generation throughput on the same model: 32 prompts x 8 samples x 48 new tokens
    from calmerge.eval.generate import sample_generations

    vocab = words(SIZES[args.size])
    prompts = [" ".join(vocab[(i * 7 + j) % len(vocab)] for j in range(32)) for i in range(32)]
    start = time.perf_counter()
    out = sample_generations(model, tok, prompts, k=8, max_new_tokens=48, seed=0)
    sync()
    gen_s = time.perf_counter() - start
    gen_tokens = sum(len(tok.encode(s)) for ss in out for s in ss)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"load": load, "forwards": forwards, "tokens": tokens, "peak": peak,
                      "model_bytes": nbytes, "gen_tokens": gen_tokens, "gen_s": gen_s}))


def _child(mode: str, **kw) -> dict:
    cmd = [sys.executable, __file__, f"--inner-{mode}"]
    for k, v in kw.items():
        cmd += [f"--{k}", *(map(str, v) if isinstance(v, list) else [str(v)])]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def lm_eval_task(work: Path, data: Path) -> Path:
    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "gpu_bench.yaml").write_text(
        "task: gpu_bench\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: answer\n"
        "target_delimiter: ' '\nmetric_list:\n  - metric: acc\n"
    )
    return tasks


def pipeline(work: Path, base: Path, aligned: Path, tasks: Path, lams: list[float],
             dtype: str) -> tuple[float, dict]:
    """mergekit-yaml then lm_eval per λ; (seconds for these points, acc per λ)."""
    total, accs = 0.0, {}
    device = _device()
    for lam in lams:
        cfg = work / f"merge_{lam}.yml"
        cfg.write_text(
            # fp32 arithmetic written as `dtype`, as calmerge merges (compute fp32, out the
            # checkpoint's dtype): a bf16 mergekit merge rounds every product and differs
            f"merge_method: linear\ndtype: float32\nout_dtype: {dtype}\nmodels:\n"
            f"  - model: {base}\n    parameters:\n      weight: {1 - lam}\n"
            f"  - model: {aligned}\n    parameters:\n      weight: {lam}\n"
            "parameters:\n  normalize: false\n"
        )
        out, res = work / f"merged_{lam}", work / f"lmeval_{lam}"
        start = time.perf_counter()
        for cmd in (
            [str(BIN / "mergekit-yaml"), str(cfg), str(out), "--copy-tokenizer",
             *(["--cuda"] if device == "cuda" else [])],
            [str(BIN / "lm_eval"), "--model", "hf", "--model_args",
             f"pretrained={out},dtype={dtype}", "--tasks", "gpu_bench", "--include_path",
             str(tasks), "--device", device, "--batch_size", "32", "--output_path", str(res)],
        ):
            done = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
        total += time.perf_counter() - start
        result = json.loads(next(res.rglob("results_*.json")).read_text())
        accs[lam] = result["results"]["gpu_bench"]["acc,none"]
        shutil.rmtree(out)
    return total, accs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 3 points, 1 pipeline point")
    ap.add_argument("--size", choices=sorted(SIZES), help="default: gpu with CUDA, else cpu")
    for mode in ("sweep", "floor"):
        ap.add_argument(f"--inner-{mode}", action="store_true", help=argparse.SUPPRESS)
    for k in ("base", "aligned", "data", "store", "out", "parents", "form"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    ap.add_argument("--lams", type=float, nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner_sweep:
        return inner_sweep(args)
    if args.inner_floor:
        return inner_floor(args)
    name = "smoke" if args.smoke else args.size or ("gpu" if _device() == "cuda" else "cpu")
    size = SIZES[name]
    n_points = 3 if args.smoke else 11
    lams = [round(i / (n_points - 1), 6) for i in range(n_points)]
    timed = lams[:1] if args.smoke else [lams[3], lams[7]]
    with tempfile.TemporaryDirectory(prefix="calmerge-gpu-bench-") as tmp:
        work = Path(tmp)
        base, aligned = build_pair(work, size)
        data = write_items(work / "items.jsonl", size)
        common = dict(base=base, aligned=aligned, data=data, lams=lams)
        runs = {"resident": _child("sweep", **common, parents="resident", form="auto",
                                   store=work / "resident.db", out=work / "resident-report")}
        # streamed scores in the form the first sweep kept, so the two differ only in where
        # the parents live (on a GPU "auto" chooses by the clock)
        runs["streamed"] = _child("sweep", **common, parents="streamed",
                                  form=runs["resident"]["forms"][0], store=work / "streamed.db",
                                  out=work / "streamed-report")
        floor = _child("floor", aligned=aligned, data=data, lams=lams, size=name)
        tasks = lm_eval_task(work, data)
        pipe_s, pipe_accs = pipeline(work, base, aligned, tasks, timed, size["dtype"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from calmerge.memory import format_bytes

    device = _device()
    if device == "cuda":
        import torch

        device = f"cuda ({torch.cuda.get_device_name(0)})"
    res, stream = runs["resident"], runs["streamed"]
    same = res["accs"] == stream["accs"] and res["nll"] == stream["nll"]
    agree = max(abs(res["accs"][str(x)] - pipe_accs[x]) for x in timed)
    pipe_total = pipe_s / len(timed) * len(lams)
    floor_s = floor["load"] + floor["forwards"]
    model = floor["model_bytes"]
    print(f"device: {device}; size '{name}': {size['items']} items, {floor['tokens']:,} unique "
          f"tokens per pass, {len(lams)} points, {size['dtype']}, model {format_bytes(model)}")
    timing = res["timings"][0] or "not timed on a CPU"
    print(f"scored in {res['dtype']}; scoring form: {', '.join(res['forms'])} ({timing})")
    print(f"resident: {res['placement']}")
    print(f"streamed: {stream['placement']}")
    print(f"resident and streamed points identical: {same}")
    print(f"acc vs mergekit+lm_eval on {len(timed)} point(s): max |diff| {agree:.4f}")
    print(f"calmerge sweep (resident): {res['wall']:.1f} s; streamed: {stream['wall']:.1f} s")
    print(f"pipeline: {pipe_s:.1f} s for {len(timed)} point(s) -> {pipe_total:.1f} s for "
          f"{len(lams)} (extrapolated); speed-up {pipe_total / res['wall']:.1f}x (target >= 20x)")
    print(f"floor: load {floor['load']:.1f} s + {len(lams)} bare passes {floor['forwards']:.1f} s"
          f" = {floor_s:.1f} s; sweep / floor {res['wall'] / floor_s:.2f}x (target <= 1.3x)")
    if device.startswith("cuda"):
        print(f"peak GPU memory: resident {res['peak'] / model:.2f}x one model (target <= 3.3x),"
              f" streamed {stream['peak'] / model:.2f}x (target <= 1.3x)")
    else:  # a small CPU model is dwarfed by activations: the floor process is the reference
        print(f"peak RSS above imports: resident {format_bytes(res['peak'])}, streamed "
              f"{format_bytes(stream['peak'])}, floor (load + bare forwards) "
              f"{format_bytes(floor['peak'])}: {res['peak'] / floor['peak']:.2f}x / "
              f"{stream['peak'] / floor['peak']:.2f}x the floor; parents "
              f"{format_bytes(2 * model)}")
    print(f"generation: {floor['gen_tokens']:,} tokens in {floor['gen_s']:.1f} s = "
          f"{floor['gen_tokens'] / floor['gen_s']:.0f} tokens/s (32 prompts x 8 samples)")


if __name__ == "__main__":
    main()
