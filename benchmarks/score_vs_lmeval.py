"""Time calmerge's multiple-choice Scorer against lm-evaluation-harness and the token floor.

Builds (locally, no downloads) a random ~27M-parameter Llama with a trained byte-level BPE and a
task of 400 questions × 4 multi-token choices with 20–60-word contexts, then times in one run:

1. `lm_eval` with `--model hf` (python API: `simple_evaluate(HFLM(...))`), whole wall time;
2. calmerge's `Scorer` (tokenisation + packed shared-context scoring), checking that its
   per-choice log-likelihoods equal lm-eval's;
3. the unique-token floor: each context once plus every choice's tokens alone, as bare batched
   forward passes (no loss, no gathering) — what any exact method must at least compute.

Usage: HF_HUB_OFFLINE=1 python benchmarks/score_vs_lmeval.py [--questions 400] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

WORDS = ["time", "person", "year", "way", "day", "thing", "man", "world", "life", "hand", "part", "child", "eye", "woman", "place", "work", "week", "case", "point", "government", "company", "number", "group", "problem", "fact", "river", "mountain", "city", "country", "science", "music", "history", "language", "energy", "water", "light", "sound", "market", "school", "garden", "animal", "bright", "quick", "silent", "ancient", "modern", "small", "large", "early", "late", "green", "blue", "red", "golden", "heavy", "runs", "builds", "grows", "moves", "falls", "rises", "speaks", "writes", "reads", "carries", "opens", "closes", "finds", "holds"]


def build_model(out: Path, vocab: int = 8000) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) + rng.choice(["", "s", "ing", "ed"]) for _ in range(40))
              for _ in range(3000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=8, vocab_size=len(fast),
                      max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def build_task(root: Path, n: int) -> Path:
    """Pseudo-English questions with 20–60-word contexts and 1–6-word choices."""
    rng = random.Random(1)
    data = root / "items.jsonl"
    with data.open("w") as fh:
        for i in range(n):
            ctx = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
            choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
                       for _ in range(4)]
            fh.write(json.dumps({"id": f"q{i}", "question": ctx + "?", "choices": choices,
                                 "answer": rng.randrange(4)}) + "\n")
    (root / "bench.yaml").write_text(
        "task: calmerge_bench\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n')
    return data


def time_lmeval(model_dir: Path, root: Path, batch: int) -> tuple[float, dict[str, list[float]]]:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    lm = HFLM(pretrained=str(model_dir), batch_size=batch, device="cpu", dtype="float32")
    out = simple_evaluate(model=lm, tasks=["calmerge_bench"],
                          task_manager=TaskManager(include_path=str(root)), log_samples=True)
    seconds = time.perf_counter() - start
    lls = {s["doc"]["id"]: [float(r[0]) for r in s["filtered_resps"]]
           for s in out["samples"]["calmerge_bench"]}
    return seconds, lls


def time_floor(model, scorer, batch_tokens: int = 4096) -> float:
    """Contexts once + every choice's tokens alone, as right-padded batched forwards."""
    seqs = [list(e.context) for e in scorer.encoded]
    seqs += [list(c) for e in scorer.encoded for c in e.continuations]
    seqs.sort(key=len, reverse=True)
    start = time.perf_counter()
    with torch.inference_mode():
        i = 0
        while i < len(seqs):
            width = len(seqs[i])
            j = min(len(seqs), i + max(1, batch_tokens // width))
            ids = torch.ones((j - i, width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, s in enumerate(seqs[i:j]):
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = 1
            model(input_ids=ids, attention_mask=mask)
            i = j
    return time.perf_counter() - start


def main() -> None:
    from calmerge.eval.data import load_items
    from calmerge.eval.loading import load_model
    from calmerge.eval.score import Scorer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32, help="questions per forward (ours)")
    ap.add_argument("--lmeval-batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for all three (1 is steadier on a shared machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.out or Path(tempfile.mkdtemp(prefix="calmerge-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(root / "model")
    data = build_task(root, args.questions)
    model, tok = load_model(model_dir, device="cpu", dtype="float32")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {params:.1f}M params, torch threads {torch.get_num_threads()}")

    t0 = time.perf_counter()
    scorer = Scorer(tok, load_items(data), batch_size=args.batch)
    t_tok = time.perf_counter() - t0
    model(torch.tensor([[0, 1, 2]]))  # warm-up
    t0 = time.perf_counter()
    ours = scorer.score(model)
    t_ours = time.perf_counter() - t0
    t_floor = time_floor(model, scorer)
    t_lm, lls = time_lmeval(model_dir, root, args.lmeval_batch)

    theirs = np.array([lls[i] for i in ours.ids])
    diff = float(np.abs(theirs - ours.choice_logprobs).max())
    agree = float(np.mean(theirs.argmax(1) == ours.pred))
    total = t_tok + t_ours
    rows = {
        "questions": args.questions, "params_M": round(params, 1),
        "tokens_scored": scorer.n_tokens,
        "lm_eval_s": round(t_lm, 2), "calmerge_tokenise_s": round(t_tok, 2),
        "calmerge_score_s": round(t_ours, 2), "floor_s": round(t_floor, 2),
        "speedup_vs_lm_eval": round(t_lm / total, 2),
        "score_vs_floor": round(t_ours / t_floor, 2),
        "max_abs_loglik_diff": diff, "pred_agreement": agree,
    }
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
