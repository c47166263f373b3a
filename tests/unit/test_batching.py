"""batch_size="auto": the memory model, the plan, and the out-of-memory back-off.

The back-off is exercised deterministically by a decoder whose forward raises the CUDA
out-of-memory error whenever a batch holds more than a cap of tokens (rows × width), and once
for real: the CPU allocator under an address-space limit, in a subprocess.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from families import WINDOW
from tiny import make_tokenizer
from transformers import MistralConfig, MistralForCausalLM

from calmerge import memory
from calmerge.errors import ConfigError, DataError
from calmerge.eval import batching, score
from calmerge.eval.batching import (
    ModelSizes,
    QuestionSize,
    forward_bytes,
    is_oom,
    model_sizes,
    plan_batches,
)
from calmerge.eval.data import Item
from calmerge.eval.loading import load_model
from calmerge.eval.score import FULL, SLIDING, AttentionPlan, Scorer
from calmerge.memory import host_available_bytes

WORDS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "pear", "plum", "one",
         "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "dog", "cat",
         "cow", "horse"]
CHOICES = ["blue", "green apple", "red cherry pie", "dog", "Rome", "four five", "lemon"]


def varied_items(n: int = 20) -> list[Item]:
    """Questions of 3 to 25 words and 2 to 4 choices, in no particular length order."""
    return [
        Item(
            id=f"q{i}",
            question=" ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + (i * 7) % 23)),
            choices=tuple(CHOICES[(i + j) % len(CHOICES)] for j in range(2 + i % 3)),
            answer=i % 2,
        )
        for i in range(n)
    ]


def assert_same_scores(a, b) -> None:
    """Per-choice log-likelihoods within 1e-5 (float32 matmuls vary with the batch's shape)
    and the same predictions."""
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.choice_logprobs[a.mask], b.choice_logprobs[b.mask],
                               atol=1e-5, rtol=0)
    np.testing.assert_array_equal(a.pred, b.pred)
    np.testing.assert_array_equal(a.pred_norm, b.pred_norm)
    np.testing.assert_array_equal(a.greedy, b.greedy)


class CappedForward:
    """Wraps a decoder's forward: raises `error` when a batch holds more than `cap` tokens."""

    def __init__(self, decoder, cap: int, error: Exception | None = None) -> None:
        self.inner, self.cap = decoder.forward, cap
        self.error = error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        self.raised = 0
        self.ran: list[tuple[int, int]] = []  # (rows, width) of the forwards that ran

    def __call__(self, *args, **kwargs):
        rows, width = kwargs["input_ids"].shape
        if rows * width > self.cap:
            self.raised += 1
            raise self.error
        self.ran.append((rows, width))
        return self.inner(*args, **kwargs)


# --- the memory model ------------------------------------------------------------------------


def test_forward_bytes_by_hand():
    """2 rows × 10 tokens, hidden 8, 2 heads, MLP 16, 3 targets of a 100-token vocab."""
    kw = dict(hidden=8, heads=2, intermediate=16, vocab_rows=3, vocab=100)
    # masks 2·10²·(3 + 2·4) = 2200; layer 20·(12·8 + 3·16)·4 = 11520 + 2·2·10²·8 = 3200;
    # head 3·100·(4 + 2·4) = 3600 + 20·8·4 = 640: the layer is the larger stage
    assert forward_bytes(2, 10, dtype_bytes=4, **kw) == 2200 + 11520 + 3200
    # without our masks (unpacked) the model's own causal mask: 2·10²·(1 + 4) = 1000
    assert forward_bytes(2, 10, dtype_bytes=4, mask=False, **kw) == 1000 + 11520 + 3200
    # bf16: masks 200·(3 + 2·2) = 1400; layer 20·144·2 = 5760 + 400·12 = 4800
    assert forward_bytes(2, 10, dtype_bytes=2, **kw) == 1400 + 5760 + 4800
    # 1000 targets of a 1000-token vocab: the head is the larger stage, 1000·1000·12 + 640
    big_head = {**kw, "vocab_rows": 1000, "vocab": 1000}
    assert forward_bytes(2, 10, dtype_bytes=4, **big_head) == 2200 + 12_000_000 + 640
    # no intermediate size: GPT-2's 4 × hidden = 32, layer 20·(96 + 96)·4 = 15360 + 3200
    no_mlp = {**kw, "intermediate": None}
    assert forward_bytes(2, 10, dtype_bytes=4, **no_mlp) == 2200 + 15360 + 3200
    sizes = ModelSizes(hidden=8, heads=2, intermediate=16, vocab=100, dtype_bytes=4)
    assert sizes.forward_bytes(2, 10, vocab_rows=3) == forward_bytes(2, 10, dtype_bytes=4, **kw)


def _fake_model(config, vocab_rows: int = 50, hidden: int = 16):
    head = torch.nn.Linear(hidden, vocab_rows, bias=False).to(torch.bfloat16)
    return SimpleNamespace(
        config=config, parameters=lambda: iter(head.parameters()),
        get_output_embeddings=lambda: head,
        get_input_embeddings=lambda: torch.nn.Embedding(vocab_rows, hidden),
    )


def test_model_sizes_read_the_text_config(llama):
    model, tok = llama
    # KV cache per token: 2 (keys, values) x 2 layers x 2 kv heads x head dim 16 x 4 bytes
    assert model_sizes(model) == ModelSizes(64, 4, 128, len(tok), 4, kv_bytes=512)
    text = SimpleNamespace(hidden_size=32, num_attention_heads=8, intermediate_size=96,
                           vocab_size=40)
    multimodal = SimpleNamespace(get_text_config=lambda: text, hidden_size=999)
    assert model_sizes(_fake_model(multimodal)) == ModelSizes(32, 8, 96, 50, 2, kv_bytes=2 * 8 * 4 * 2)  # the head: 50
    gpt2 = SimpleNamespace(n_embd=24, n_head=3, n_inner=None, vocab_size=50)
    assert model_sizes(_fake_model(gpt2)) == ModelSizes(24, 3, 96, 50, 2, kv_bytes=2 * 3 * 8 * 2)
    bare = SimpleNamespace()  # nothing in the config: the embeddings and 64-wide heads
    assert model_sizes(_fake_model(bare, hidden=128)) == ModelSizes(128, 2, 512, 50, 2, kv_bytes=2 * 2 * 64 * 2)


def test_model_devices_and_the_budget_over_a_device_map(monkeypatch):
    """A dispatched model's activations visit every device of its map: the budget is the
    least free one's share; disk and meta hold none. The ceiling is CUDA's only on CUDA."""
    mapped = SimpleNamespace(device=torch.device("meta"),
                             hf_device_map={"embed": 0, "layers.0": 1, "lm_head": "cpu",
                                            "layers.1": "disk"})
    assert batching.model_devices(mapped) == [
        torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)]
    free = {"cpu": 1000, "cuda:0": 4000, "cuda:1": 2000}
    monkeypatch.setattr(batching, "available_bytes", lambda d: free[str(d)])
    cpu_share = int(1000 * batching.CPU_BUDGET_FRACTION)
    assert batching.memory_budget(mapped) == min(cpu_share,
                                                 int(2000 * batching.CUDA_BUDGET_FRACTION))
    assert batching.max_questions(mapped) == batching.CPU_MAX_QUESTIONS
    on_gpus = SimpleNamespace(device=torch.device("cuda", 0), hf_device_map={"a": 0, "b": 1})
    assert batching.memory_budget(on_gpus) == int(2000 * batching.CUDA_BUDGET_FRACTION)
    assert batching.max_questions(on_gpus) == batching.CUDA_MAX_QUESTIONS


def test_host_available_bytes_reads_meminfo(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "cgroup_free_bytes", lambda: None)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  8000 kB\nMemFree:  1000 kB\nMemAvailable:  5000 kB\n")
    assert host_available_bytes(meminfo) == 5000 * 1024
    monkeypatch.setattr(memory, "cgroup_free_bytes", lambda: 1234)
    assert host_available_bytes(meminfo) == 1234  # a container's limit binds
    monkeypatch.setattr(memory, "cgroup_free_bytes", lambda: None)
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert host_available_bytes(tmp_path / "missing") == pytest.approx(free, rel=0.5)


def test_is_oom_knows_the_allocators_messages():
    with pytest.raises(RuntimeError) as cpu:  # this torch's own CPU allocator text
        torch.empty(1 << 60, dtype=torch.uint8)
    assert is_oom(cpu.value)
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB"))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_oom(MemoryError())
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("out of memory"))  # only allocator errors say so


# --- the plan --------------------------------------------------------------------------------


SIZES = ModelSizes(hidden=64, heads=4, intermediate=128, vocab=320, dtype_bytes=4)


def cost(rows: int, width: int, targets: int) -> int:
    return SIZES.forward_bytes(rows, width, vocab_rows=targets)


def test_plan_respects_the_budget_and_keeps_the_order():
    rng = np.random.default_rng(0)
    widths = sorted(rng.integers(5, 400, size=300).tolist(), reverse=True)
    sizes = [QuestionSize(int(w), 1, 8) for w in widths]
    budget = cost(6, 400, 48)
    spans = plan_batches(sizes, cost, budget, ceiling=32)
    assert [i for s, e in spans for i in range(s, e)] == list(range(len(sizes)))
    for s, e in spans:
        part = sizes[s:e]
        estimate = cost(len(part), max(q.width for q in part), sum(q.targets for q in part))
        assert e - s <= 32 and (estimate <= budget or e - s == 1)
        if e < len(sizes) and e - s < 32:  # greedy: one more question would not have fit
            more = sizes[s : e + 1]
            assert cost(len(more), max(q.width for q in more), 8 * len(more)) > budget
    counts = [e - s for s, e in spans]
    # shorter questions: more of them per batch (the last batch is what is left)
    assert counts[:-1] == sorted(counts[:-1]) and counts[0] < 32 and 32 in counts


def test_plan_counts_rows_and_targets_and_starts_anywhere():
    sizes = [QuestionSize(50, rows=4, targets=10)] * 6
    per_question = cost(4, 50, 10)
    spans = plan_batches(sizes, cost, cost(8, 50, 20), ceiling=99)
    assert spans == [(0, 2), (2, 4), (4, 6)] and cost(12, 50, 30) > 2 * per_question
    # over budget, a question still gets a batch of its own: only a real failure says it
    # cannot run; the ceiling caps a batch whatever the budget
    assert plan_batches(sizes, cost, 1, ceiling=99, start=4) == [(4, 5), (5, 6)]
    assert plan_batches(sizes, cost, 10**12, ceiling=4) == [(0, 4), (4, 6)]


# --- scoring with "auto" ---------------------------------------------------------------------


def test_auto_scores_equal_fixed_batches(llama):
    model, tok = llama
    items = varied_items()
    one = Scorer(tok, items, batch_size=1).score(model)
    fixed = Scorer(tok, items, batch_size=32).score(model)
    auto = Scorer(tok, items, batch_size="auto")
    assert auto.batches == []  # planned from the model, at the first score
    assert_same_scores(auto.score(model), one)
    assert_same_scores(auto.score(model), fixed)
    assert auto.last_batch_sizes == [20] and auto.oom_backoffs == 0  # CPU: up to 32 a forward


def test_auto_batches_grow_as_the_questions_shorten(llama):
    model, tok = llama
    items = varied_items()
    scorer = Scorer(tok, items, batch_size="auto", memory_budget=1)
    widths = [scorer.encoded[i].packed_len for i in scorer.order]
    budget = model_sizes(model).forward_bytes(3, widths[0], vocab_rows=30)
    scorer = Scorer(tok, items, batch_size="auto", memory_budget=budget)
    result = scorer.score(model)
    sizes = scorer.last_batch_sizes
    assert sum(sizes) == len(items) and sizes == sorted(sizes) and 1 < sizes[0] < sizes[-1]
    assert [len(b.input_ids) for b in scorer.batches] == sizes
    assert_same_scores(result, Scorer(tok, items, batch_size=1).score(model))


def test_fixed_batch_size_is_unchanged(llama):
    model, tok = llama
    scorer = Scorer(tok, varied_items(9), batch_size=4)
    assert [len(b.input_ids) for b in scorer.batches] == [4, 4, 1]
    scorer.score(model)
    assert scorer.last_batch_sizes == [4, 4, 1] and scorer.last_paths == ["packed"] * 3
    with pytest.raises(ConfigError, match="batch size 'big'"):
        Scorer(tok, varied_items(2), batch_size="big")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="memory budget 0"):
        Scorer(tok, varied_items(2), batch_size="auto", memory_budget=0)


def test_auto_on_a_sliding_window_family(family_pair):
    model, tok = load_model(family_pair("gemma3_text")[1], device="cpu", dtype="float32")
    items = varied_items(12)
    budget = model_sizes(model).forward_bytes(3, 60, vocab_rows=30)
    scorer = Scorer(tok, items, batch_size="auto", memory_budget=budget)
    result = scorer.score(model)
    assert len(scorer.last_batch_sizes) > 1 and "windowed" in scorer.last_paths
    assert_same_scores(result, Scorer(tok, items, batch_size=4).score(model))


def test_auto_plans_unpacked_batches_by_their_own_cost(llama, monkeypatch):
    """Where every batch runs unpacked (one row per choice), the plan counts those rows."""
    model, tok = llama
    monkeypatch.setattr(score, "attention_plan", lambda config: AttentionPlan(pack=False))
    items = varied_items()
    probe = Scorer(tok, items, batch_size="auto", memory_budget=1)
    sizes = probe._sizes("unpacked")
    budget = model_sizes(model).forward_bytes(8, sizes[0].width, vocab_rows=40, mask=False)
    scorer = Scorer(tok, items, batch_size="auto", memory_budget=budget)
    result = scorer.score(model)
    expected = plan_batches(sizes, lambda r, w, t: model_sizes(model).forward_bytes(
        r, w, vocab_rows=t, mask=False), budget, batching.CPU_MAX_QUESTIONS)
    assert scorer.last_batch_sizes == [e - s for s, e in expected] and len(expected) > 1
    assert set(scorer.last_paths) == {"unpacked"}
    assert_same_scores(result, Scorer(tok, items, batch_size=32).score(model))


def test_a_model_refusing_per_type_masks_is_replanned_unpacked():
    """The first batch finds that the model cannot take the dict of masks; the rest of the
    data is planned again at the unpacked cost (one row per choice), not run at the packed
    plan's size."""
    tok = make_tokenizer(chat=False)
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = MistralConfig(vocab_size=len(tok), sliding_window=WINDOW,
                            layer_types=[FULL, SLIDING], hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
                            pad_token_id=5)
    model = MistralForCausalLM(cfg).eval()
    if score.attention_plan(model.get_decoder().config).layer_types != (FULL, SLIDING):
        pytest.skip("this transformers drops Mistral's layer_types")
    items = [it for it in varied_items(24) if len(it.question.split()) > 8]
    probe = Scorer(tok, items, batch_size="auto", memory_budget=1)
    packed, unpacked = probe._sizes("packed"), probe._sizes("unpacked")
    sizes = model_sizes(model)
    budget = sizes.forward_bytes(6, packed[0].width, vocab_rows=60)
    scorer = Scorer(tok, items, batch_size="auto", memory_budget=budget)
    result = scorer.score(model)
    first = scorer.last_batch_sizes[0]
    assert first == plan_batches(packed, cost_of(sizes, True), budget, 32)[0][1]
    rest = plan_batches(unpacked, cost_of(sizes, False), budget, 32, start=first)
    assert scorer.last_batch_sizes[1:] == [e - s for s, e in rest]
    assert len(rest) > 1 and set(scorer.last_paths) == {"unpacked"}
    assert_same_scores(result, Scorer(tok, items, batch_size=4).score(model))


def cost_of(sizes: ModelSizes, mask: bool):
    return lambda r, w, t: sizes.forward_bytes(r, w, vocab_rows=t, mask=mask)


# --- the back-off ----------------------------------------------------------------------------


def test_out_of_memory_backs_off_once_and_the_next_call_fits(llama, monkeypatch):
    model, tok = llama
    items = varied_items()
    one = Scorer(tok, items, batch_size=1).score(model)
    fixed = Scorer(tok, items, batch_size=32).score(model)
    scorer = Scorer(tok, items, batch_size="auto", memory_budget=1 << 40)  # the plan: all 20
    longest = scorer.encoded[scorer.order[0]].packed_len
    capped = CappedForward(model.get_decoder(), cap=3 * longest)
    monkeypatch.setattr(model.get_decoder(), "forward", capped)

    first = scorer.score(model)
    assert scorer.oom_backoffs == capped.raised > 0
    assert all(rows * width <= capped.cap for rows, width in capped.ran)
    assert sum(scorer.last_batch_sizes) == len(items) and len(capped.ran) == len(
        scorer.last_batch_sizes)
    assert_same_scores(first, one)
    assert_same_scores(first, fixed)
    sizes = list(scorer.last_batch_sizes)

    capped.raised, capped.ran = 0, []
    second = scorer.score(model)  # a sweep's next point: the batches that fitted, no failure
    assert scorer.oom_backoffs == capped.raised == 0 and scorer.last_batch_sizes == sizes
    assert_same_scores(second, first)


def test_a_question_too_big_alone_is_a_data_error(llama, monkeypatch):
    model, tok = llama
    items = varied_items()
    scorer = Scorer(tok, items, batch_size="auto", memory_budget=1 << 40)
    big = scorer.order[0]
    tokens = scorer.encoded[big].packed_len
    monkeypatch.setattr(model.get_decoder(), "forward",
                        CappedForward(model.get_decoder(), cap=tokens - 1))
    with pytest.raises(DataError) as err:
        scorer.score(model)
    line = err.value.one_line()
    assert f"item '{items[big].id}' ({tokens} tokens)" in line and "\n" not in line
    assert "--dtype" in err.value.hint and "shorten the prompts" in err.value.hint


def test_other_errors_propagate_unchanged(llama, monkeypatch):
    model, tok = llama
    decoder = model.get_decoder()
    boom = RuntimeError("mat1 and mat2 shapes cannot be multiplied (boom)")
    monkeypatch.setattr(decoder, "forward", CappedForward(decoder, cap=0, error=boom))
    scorer = Scorer(tok, varied_items(), batch_size="auto", memory_budget=1 << 40)
    with pytest.raises(RuntimeError) as err:
        scorer.score(model)
    assert err.value is boom and scorer.oom_backoffs == 0
    # a fixed batch size does not back off: its out-of-memory error is the caller's
    oom = torch.OutOfMemoryError("CUDA out of memory.")
    monkeypatch.setattr(decoder, "forward", CappedForward(decoder, cap=0, error=oom))
    with pytest.raises(torch.OutOfMemoryError):
        Scorer(tok, varied_items(), batch_size=4).score(model)


# --- a real allocation failure ---------------------------------------------------------------

#: Run in a subprocess under RLIMIT_AS. glibc's mmap threshold is fixed so that every freed
#: tensor goes back to the kernel at once: with the default (a threshold that grows as memory
#: is freed) what fits after a failure varies from run to run.
_CHILD = r"""
import json, resource, sys
import numpy as np, torch
from tiny import make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM
from calmerge.errors import DataError
from calmerge.eval.data import Item
from calmerge.eval.score import Scorer

torch.manual_seed(0)
torch.set_num_threads(1)
tok = make_tokenizer(chat=False)
cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok),
                  max_position_embeddings=4096, bos_token_id=0, eos_token_id=0, pad_token_id=5,
                  attn_implementation="eager")
model = LlamaForCausalLM(cfg).eval()
words = "apple banana cherry grape lemon mango orange pear plum".split()
items = [Item(f"q{i}", " ".join(words[(i + k) % 9] for k in range(250 + 3 * i)),
              ("one two", "three four"), 0) for i in range(8)]
ref = Scorer(tok, items, batch_size=8).score(model)  # ~1000 tokens a question
auto = Scorer(tok, items, batch_size="auto", memory_budget=1 << 50)  # plans all 8 at once
alone = Scorer(tok, items, batch_size="auto", memory_budget=1 << 50)

def cap(extra_mb):
    used = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (used + extra_mb * 2**20, resource.RLIM_INFINITY))

cap(150)  # one question needs ~35 MB, all eight ~300 MB
got = auto.score(model)
cap(10)
try:
    alone.score(model)
    too_big = ""
except DataError as exc:
    too_big = exc.one_line()
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print(json.dumps({
    "backoffs": auto.oom_backoffs, "sizes": auto.last_batch_sizes,
    "diff": float(np.abs(got.choice_logprobs - ref.choice_logprobs).max()),
    "same_pred": bool((got.pred == ref.pred).all()), "too_big": too_big,
}))
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="needs Linux's RLIMIT_AS and glibc's malloc tunables")
def test_a_real_cpu_allocation_failure_is_survived():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backoffs"] >= 1 and sum(out["sizes"]) == 8 and max(out["sizes"]) < 8
    assert out["diff"] <= 1e-5 and out["same_pred"]
    assert "does not fit in memory" in out["too_big"] and "item 'q" in out["too_big"]
