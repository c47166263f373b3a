"""The bad-input corpus: every way a user can hand calmerge something wrong.

Each case builds its broken input in a scratch directory and returns the command line; the test
runs it and demands exit code 2, exactly one error line on stderr naming the culprit (`expect`;
a progress bar may precede it when the fault is found while streaming), no traceback, and no
output written. `docs/robustness.md` is generated from this table
(`python tests/bad_inputs/cases.py > docs/robustness.md`) and a test keeps it current.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tiny import make_model  # noqa: E402


@dataclass(frozen=True)
class Case:
    id: str
    title: str
    build: Callable[[Path, tuple[Path, Path]], list[str]]
    expect: str  # a substring of the one-line message (the culprit's name)


OUT = "OUT"  # placeholder replaced by the output path every case must not create


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_weights(model: Path, fn: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    f = model / "model.safetensors"
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})
    return model


def items_file(tmp: Path, rows: list, name: str = "items.jsonl") -> Path:
    p = tmp / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


GOOD = {"id": "a", "question": "Q?", "choices": ["x", "y"], "answer": 0}


def merge_argv(base: Path, aligned: Path, *extra: str) -> list[str]:
    return ["merge", "--base", str(base), "--aligned", str(aligned), "--lam", "0.5", "-o", OUT, *extra]


def sweep_argv(pair: tuple[Path, Path], data: Path, *extra: str) -> list[str]:
    base, aligned = pair
    return ["sweep", "--base", str(base), "--aligned", str(aligned), "--data", str(data),
            "--store", f"{OUT}/runs.db", "--out", OUT, "--quiet", *extra]


def eval_argv(model: Path, data: Path, *extra: str) -> list[str]:
    return ["eval", str(model), "--data", str(data), "--output", OUT, *extra]


# ── checkpoints ──
def truncated(tmp, pair):
    m = copy_model(pair[1], tmp / "trunc")
    f = m / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    return merge_argv(pair[0], m)


def garbage_header(tmp, pair):
    m = copy_model(pair[1], tmp / "garbage")
    f = m / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 40) + b"{not json at all, just garbage bytes!!}" + data[48:])
    return merge_argv(pair[0], m)


def missing_shard(tmp, pair):
    m = make_model(tmp / "sharded", seed=1, base=pair[0], scale=0.2, max_shard_size="100KB")
    shards = sorted(m.glob("model-*.safetensors"))
    shards[-1].unlink()
    return merge_argv(pair[0], m)


def shape_mismatch(tmp, pair):
    m = make_model(tmp / "deeper", seed=3, layers=2)
    edit_weights(m, lambda t: t.__setitem__("model.norm.weight", torch.ones(65)))
    return merge_argv(pair[0], m)


def arch_mismatch(tmp, pair):
    m = make_model(tmp / "qwen", seed=4, arch="qwen2")
    return merge_argv(pair[0], m)


def missing_tensor(tmp, pair):
    m = copy_model(pair[1], tmp / "missing")
    edit_weights(m, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    return merge_argv(pair[0], m)


def vocab_shrunk(tmp, pair):
    m = copy_model(pair[1], tmp / "smallvocab")

    def cut(t):
        t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"][:-10].clone()
        t["lm_head.weight"] = t["lm_head.weight"][:-10].clone()

    edit_weights(m, cut)
    cfg = json.loads((m / "config.json").read_text())
    cfg["vocab_size"] -= 10
    (m / "config.json").write_text(json.dumps(cfg))
    return merge_argv(pair[0], m)


def nan_weights(tmp, pair):
    m = copy_model(pair[1], tmp / "nan")
    edit_weights(m, lambda t: t["model.layers.0.self_attn.q_proj.weight"].view(-1).__setitem__(7, float("nan")))
    return merge_argv(pair[0], m)


def inf_weights(tmp, pair):
    m = copy_model(pair[1], tmp / "inf")
    edit_weights(m, lambda t: t["model.norm.weight"].__setitem__(0, float("inf")))
    return merge_argv(pair[0], m)


def pickle_ckpt(tmp, pair):
    m = copy_model(pair[1], tmp / "pickled")
    tensors = load_file(m / "model.safetensors")
    (m / "model.safetensors").unlink()
    torch.save(tensors, m / "pytorch_model.bin")
    return merge_argv(pair[0], m)


def remote_code(tmp, pair):
    m = copy_model(pair[1], tmp / "remote")
    cfg = json.loads((m / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (m / "config.json").write_text(json.dumps(cfg))
    return merge_argv(pair[0], m)


def missing_model(tmp, pair):
    return merge_argv(pair[0], tmp / "no-such-model")


def adapter_without_base(tmp, pair):
    a = tmp / "lora-adapter"
    a.mkdir()
    cfg = {"peft_type": "LORA", "base_model_name_or_path": str(tmp / "no-such-base"), "r": 4,
           "lora_alpha": 8, "target_modules": ["q_proj"]}
    (a / "adapter_config.json").write_text(json.dumps(cfg))
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{key}.lora_A.weight": torch.zeros(4, 64), f"{key}.lora_B.weight": torch.zeros(64, 4)},
              a / "adapter_model.safetensors")
    return eval_argv(a, items_file(tmp, [GOOD, {**GOOD, "id": "b"}]))


# ── merge configs and flags ──
def unknown_method(tmp, pair):
    y = tmp / "m.yml"
    y.write_text(f"merge_method: lineer\nbase_model: {pair[0]}\nmodels:\n  - model: {pair[1]}\n"
                 "    parameters:\n      weight: 1.0\n")
    return ["merge", str(y), "-o", OUT]


def unknown_key(tmp, pair):
    y = tmp / "m.yml"
    y.write_text(f"merge_method: linear\nmodles:\n  - model: {pair[1]}\n")
    return ["merge", str(y), "-o", OUT]


def nan_weight(tmp, pair):
    y = tmp / "m.yml"
    y.write_text(f"merge_method: linear\nmodels:\n  - model: {pair[0]}\n    parameters:\n      weight: 0.5\n"
                 f"  - model: {pair[1]}\n    parameters:\n      weight: .nan\n")
    return ["merge", str(y), "-o", OUT]


def inf_slerp_t(tmp, pair):
    y = tmp / "m.yml"
    y.write_text(f"merge_method: slerp\nbase_model: {pair[0]}\nmodels:\n  - model: {pair[1]}\n"
                 "parameters:\n  t: .inf\n")
    return ["merge", str(y), "-o", OUT]


def non_numeric_lambda(tmp, pair):
    return ["merge", "--base", str(pair[0]), "--aligned", str(pair[1]), "--lam", "abc", "-o", OUT]


def malformed_yaml(tmp, pair):
    y = tmp / "m.yml"
    y.write_text("merge_method: linear\n  models: [\n")
    return ["merge", str(y), "-o", OUT]


def output_is_file(tmp, pair):
    f = tmp / "a-file"
    f.write_text("keep me")
    return ["merge", "--base", str(pair[0]), "--aligned", str(pair[1]), "--lam", "0.5", "-o", str(f)]


def output_unwritable(tmp, pair):
    return ["merge", "--base", str(pair[0]), "--aligned", str(pair[1]), "--lam", "0.5", "-o",
            "/proc/calmerge-out"]


# ── datasets ──
def empty_dataset(tmp, pair):
    p = tmp / "empty.jsonl"
    p.write_text("\n")
    return sweep_argv(pair, p)


def malformed_line(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, '{"id": "b", "question": "Q?", "choices": ["x", "y"]']))


def answer_out_of_range(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, {**GOOD, "id": "b", "answer": 5}]))


def duplicate_ids(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, GOOD]))


def one_choice(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, {**GOOD, "id": "b", "choices": ["x"]}]))


def missing_data(tmp, pair):
    return sweep_argv(pair, tmp / "nope.jsonl")


def chat_without_template(tmp, pair):
    m = make_model(tmp / "nochat", seed=5, base=pair[0], chat=False)
    for f in m.glob("chat_template*"):
        f.unlink()
    return eval_argv(m, items_file(tmp, [GOOD]), "--prompt-format", "chat")


def prompt_too_long(tmp, pair):
    long_q = "word " * 400
    return sweep_argv(pair, items_file(tmp, [{**GOOD, "question": long_q}]))


def eval_malformed(tmp, pair):
    return eval_argv(pair[1], items_file(tmp, [GOOD, "not json"]))


# ── sweep configs and stores ──
def sweep_yaml(tmp, pair, line: str) -> list[str]:
    """A sweep YAML of the pair, one good item, and `line` (the fault) among its keys."""
    y = tmp / "s.yml"
    y.write_text(f"base: {pair[0]}\naligned: {pair[1]}\ndata: {items_file(tmp, [GOOD])}\n{line}\n"
                 f"store: {OUT}/runs.db\nout: {OUT}\n")
    return ["sweep", str(y), "--quiet"]


def sweep_unknown_key(tmp, pair):
    return sweep_yaml(tmp, pair, "gird: [0, 1]")


def sweep_bad_grid(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD]), "--grid", "0,half,1")


def sweep_unknown_family(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD]), "--family", "slurp")


def sweep_unknown_pick(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD]), "--pick", "knea")


def sweep_unknown_objective(tmp, pair):
    return sweep_yaml(tmp, pair, "objectives: [acc, ece, embed_div]")


def report_unknown_pick(tmp, pair):
    store = tmp / "runs.db"
    from calmerge.results.store import ResultStore

    ResultStore(store).close()  # an existing, empty store: the rule is refused before it is read
    return ["report", "--store", str(store), "--out", OUT, "--pick", "max_acc"]


def sweep_bad_value(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD]), "--samples", "0")


def sweep_report_is_file(tmp, pair):
    f = tmp / "report-file"
    f.write_text("keep me")
    base, aligned = pair
    return ["sweep", "--base", str(base), "--aligned", str(aligned), "--data",
            str(items_file(tmp, [GOOD])), "--store", f"{OUT}/runs.db", "--out", str(f), "--quiet"]


def missing_store(tmp, pair):
    return ["results", "--store", str(tmp / "none.db")]


def not_a_store(tmp, pair):
    f = tmp / "junk.db"
    f.write_bytes(b"definitely not sqlite " * 50)
    return ["runs", "--store", str(f)]


CASES: list[Case] = [
    Case("truncated-safetensors", "Truncated safetensors file", truncated, "model.safetensors"),
    Case("garbage-header", "Safetensors file with a garbage header", garbage_header, "model.safetensors"),
    Case("missing-shard", "Index names a shard that is not there", missing_shard, "model-0000"),
    Case("shape-mismatch", "Tensor shapes differ between base and aligned", shape_mismatch, "model.norm.weight"),
    Case("architecture-mismatch", "Base is Llama, aligned is Qwen2", arch_mismatch, "qwen2"),
    Case("missing-tensor", "Aligned lacks a tensor the base has", missing_tensor, "model.layers.1.mlp.up_proj.weight"),
    Case("vocab-mismatch", "Aligned vocabulary smaller than the base's", vocab_shrunk, "(310, 64)"),
    Case("nan-weights", "NaN in a weight", nan_weights, "model.layers.0.self_attn.q_proj.weight"),
    Case("inf-weights", "Inf in a weight", inf_weights, "model.norm.weight"),
    Case("pickle-checkpoint", "Pickle .bin checkpoint without --allow-pickle", pickle_ckpt, "--allow-pickle"),
    Case("remote-code", "Model needing trust_remote_code without the flag", remote_code, "--trust-remote-code"),
    Case("missing-model", "Model path that does not exist", missing_model, "no-such-model"),
    Case("adapter-base-missing", "LoRA adapter whose base model cannot be found", adapter_without_base, "no-such-base"),
    Case("unknown-method", "Unknown merge method in a YAML", unknown_method, "lineer"),
    Case("unknown-config-key", "Unknown key in a merge YAML (did you mean)", unknown_key, "modles"),
    Case("nan-merge-weight", "`weight: .nan` in a merge YAML", nan_weight, "parameter 'weight' of model"),
    Case("inf-slerp-t", "`t: .inf` in a slerp YAML", inf_slerp_t, "parameter 't'"),
    Case("non-numeric-lambda", "Non-numeric λ on the command line", non_numeric_lambda, "abc"),
    Case("malformed-yaml", "YAML that does not parse", malformed_yaml, "m.yml"),
    Case("output-is-file", "Output path is an existing file", output_is_file, "a-file"),
    Case("output-unwritable", "Output path cannot be written", output_unwritable, "/proc/calmerge-out"),
    Case("empty-dataset", "Dataset with no rows", empty_dataset, "empty.jsonl"),
    Case("malformed-jsonl", "Malformed JSONL line", malformed_line, "items.jsonl:2"),
    Case("answer-out-of-range", "Answer index past the choices", answer_out_of_range, "items.jsonl:2"),
    Case("duplicate-ids", "Two rows with the same id", duplicate_ids, "duplicate id 'a'"),
    Case("one-choice", "A question with fewer than two choices", one_choice, "items.jsonl:2"),
    Case("missing-dataset", "Dataset path that does not exist", missing_data, "nope.jsonl"),
    Case("chat-without-template", "Chat prompts on a tokenizer with no chat template", chat_without_template, "chat template"),
    Case("prompt-too-long", "Prompt longer than the model's context", prompt_too_long, "context"),
    Case("eval-malformed-jsonl", "`calmerge eval` on a malformed JSONL line", eval_malformed, "items.jsonl:2"),
    Case("sweep-unknown-key", "Unknown key in a sweep YAML (did you mean)", sweep_unknown_key, "gird"),
    Case("sweep-bad-grid", "Non-numeric λ grid", sweep_bad_grid, "0,half,1"),
    Case("sweep-unknown-family", "Unknown sweep family", sweep_unknown_family, "slurp"),
    Case("sweep-unknown-pick", "Unknown pick rule, refused before any model loads", sweep_unknown_pick, "knea"),
    Case("sweep-unknown-objective", "Unknown objective in a sweep YAML (did you mean embed_distance)", sweep_unknown_objective, "embed_div"),
    Case("report-unknown-pick", "Unknown pick rule for `report`, refused before the store is read", report_unknown_pick, "max_acc"),
    Case("sweep-bad-value", "Out-of-range config value", sweep_bad_value, "samples"),
    Case("report-dir-is-file", "Report directory is an existing file", sweep_report_is_file, "report-file"),
    Case("missing-store", "Results store that does not exist", missing_store, "none.db"),
    Case("not-a-store", "Results store that is not SQLite", not_a_store, "junk.db"),
]


def _more_cases() -> list[Case]:
    """Cases kept in topic modules beside this one (`cases_<topic>.py`, each with a CASES list),
    so the corpus grows without one file holding every class of bad input."""
    import importlib
    import pkgutil

    found: list[Case] = []
    for mod in sorted(pkgutil.iter_modules([str(HERE)]), key=lambda m: m.name):
        if mod.name.startswith("cases_"):
            found += importlib.import_module(f"bad_inputs.{mod.name}").CASES
    return found


if __name__ != "__main__":  # run as a script, the module delegates to its imported self below
    CASES += _more_cases()
    _ids = [c.id for c in CASES]
    assert len(_ids) == len(set(_ids)), "duplicate bad-input case ids"


def markdown() -> str:
    """docs/robustness.md: the table of cases, generated from CASES."""
    lines = [
        "# Robustness: bad inputs",
        "",
        "Generated from `tests/bad_inputs/cases.py` (`python tests/bad_inputs/cases.py > docs/robustness.md`).",
        "Every case is run by `tests/e2e/test_bad_inputs.py`: exit code 2, exactly one error line on stderr",
        "naming the culprit and a hint, no traceback, and nothing written at the output path (faults",
        "found while streaming, such as NaN weights, may follow a progress bar).",
        "",
        "| case | what is wrong | the message names |",
        "|---|---|---|",
    ]
    lines += [f"| `{c.id}` | {c.title} | `{c.expect}` |" for c in CASES]
    lines += [
        "",
        "Faults done for real, in subprocesses (`tests/e2e/test_faults.py`):",
        "",
        "- kill -9 at random moments during a sweep, 12 trials on 3 stores: `PRAGMA integrity_check` is ok",
        "  after every kill, no finished point is ever recomputed, and each re-run ends with metrics and",
        "  per-item predictions identical to an uninterrupted run;",
        "- kill -9 during `calmerge merge`: the output is either absent or complete and loadable; the",
        "  next run removes the temporary directory a killed run left;",
        "- two sweeps on one store at once: every point computed exactly once, both end with the full",
        "  plan and the same numbers;",
        "- a full disk (a real 600 KB tmpfs) under the results store: one clear line, exit 2, every",
        "  finished point kept, the store intact;",
        "- a merge onto a disk too small for it: refused before any work; a write that fails half-way",
        "  through a shard (RLIMIT_FSIZE): one clear line, exit 2, nothing left behind;",
        "- same seed, same machine: identical per-item predictions on re-run.",
        "",
        "Safe by default: pickle checkpoints are refused without `--allow-pickle` (then loaded with",
        "`torch.load(weights_only=True)`), remote code without `--trust-remote-code`; the HTML and Markdown",
        "reports escape every text from datasets and model outputs (`<script>` in a question and in a",
        "generation is tested); all SQL is parameterised.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    # the topic modules import `bad_inputs.cases`: use that one instance, not this script's
    from bad_inputs.cases import markdown as _markdown

    sys.stdout.write(_markdown())
