"""LoRA adapters as the aligned side: a virtual checkpoint equal to peft's merge_and_unload().

The adapters are built with peft itself on the tiny fixtures (B randomised: peft starts it at
zero, which would make Δ = 0 and every comparison vacuous); the oracle is peft's merged model,
saved densely with save_pretrained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from calmerge import api
from calmerge.config import EvalConfig, SweepConfig
from calmerge.io.adapters import AdapterCheckpoint
from calmerge.io.models import open_checkpoint
from calmerge.merge.engine import merge_pair

peft = pytest.importorskip("peft")

LLAMA_TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _build(base: Path, root: Path, name: str, *, seed: int, tokenizer: bool, **lora) -> tuple[Path, Path]:
    """(adapter dir, dense merged copy) of a LoRA on `base` with random A and B."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, **lora))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n or "lora_A" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            elif "modules_to_save" in n:
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    adapter = root / name
    pm.save_pretrained(adapter)
    tok = AutoTokenizer.from_pretrained(base)
    if tokenizer:
        tok.save_pretrained(adapter)
    dense = root / f"{name}-dense"
    merged = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter
    ).merge_and_unload()
    merged.save_pretrained(dense)
    tok.save_pretrained(dense)
    return adapter, dense


@pytest.fixture(scope="module")
def adapters(tiny_pair, family_pair, tmp_path_factory):
    """name -> (base, adapter, dense merged copy)."""
    root = tmp_path_factory.mktemp("lora")
    llama = tiny_pair[0]
    gpt2 = family_pair("gpt2")[0]
    out = {}
    out["llama"] = (llama, *_build(llama, root, "llama", seed=1, tokenizer=True,
                                   target_modules=LLAMA_TARGETS, modules_to_save=["lm_head"]))
    out["rslora"] = (llama, *_build(llama, root, "rslora", seed=2, tokenizer=False,
                                    target_modules=["q_proj", "v_proj"], use_rslora=True))
    out["gpt2"] = (gpt2, *_build(gpt2, root, "gpt2", seed=3, tokenizer=False,
                                 target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True))
    return out


def _weights(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _assert_bitwise(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(want) <= set(got), set(want) - set(got)
    for name, w in want.items():
        assert got[name].dtype == w.dtype and torch.equal(got[name], w), name


@pytest.mark.parametrize("name", ["llama", "rslora", "gpt2"])
def test_merge_at_one_is_peft_merge_and_unload_bitwise(adapters, name, tmp_path):
    base, adapter, dense = adapters[name]
    out = merge_pair(base, adapter, 1.0, tmp_path / "m1")
    merged, oracle = _weights(out), _weights(dense)
    _assert_bitwise(merged, oracle)
    base_w = _weights(base)
    changed = [n for n in oracle if not torch.equal(oracle[n], base_w[n])]
    assert changed  # the adapter really moves weights
    if name == "gpt2":
        assert any("c_attn" in n for n in changed)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_merge_at_half_equals_merge_with_the_dense_copy(adapters, name, tmp_path):
    base, adapter, dense = adapters[name]
    got = _weights(merge_pair(base, adapter, 0.5, tmp_path / "a"))
    want = _weights(merge_pair(base, dense, 0.5, tmp_path / "d"))
    _assert_bitwise(got, want)
    assert set(got) == set(want)
    # the merge is a complete model: tokenizer and generation config from the adapter's
    # directory when it has them, else from its base (the GPT-2 adapter has none of its own)
    for fname in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "a" / fname).is_file(), fname


def test_virtual_checkpoint_interface(adapters):
    base, adapter, dense = adapters["llama"]
    ckpt = open_checkpoint(adapter)
    assert isinstance(ckpt, AdapterCheckpoint) and not ckpt.is_safetensors
    ref = open_checkpoint(dense)
    assert ckpt.tensor_names == open_checkpoint(base).tensor_names
    assert ckpt.num_layers == ref.num_layers and ckpt.config == open_checkpoint(base).config
    assert ckpt.fingerprint() != open_checkpoint(base).fingerprint()
    assert ckpt.chat_template == ref.chat_template
    # --base overrides the config's base path
    assert open_checkpoint(adapter, base=str(base)).base.path == Path(base)


def test_inspect_and_diff_show_the_adapter(adapters):
    base, adapter, _ = adapters["llama"]
    info = api.inspect_model(adapter)
    assert info["adapter"] == "LoRA" and info["adapter_rank"] == 4 and info["adapter_alpha"] == 8
    assert info["adapter_target_modules"] == sorted(LLAMA_TARGETS)
    assert info["adapter_base"] == str(base) and info["adapter_modules_to_save"] == ["lm_head.weight"]
    assert info["architecture"] == "LlamaForCausalLM" and info["layers"] == 2
    assert api.inspect_model(adapters["rslora"][1])["adapter"] == "LoRA (rsLoRA)"
    deltas = {d.group: d for d in api.diff_models(base, adapter)}
    assert all(deltas[f"layer {i}"].delta_norm > 0 for i in range(2))
    # only target modules (and the saved lm_head) move: embeddings and norms do not
    ckpt, b = open_checkpoint(adapter), open_checkpoint(base)
    moved = {n for n in ckpt.tensor_names if not torch.equal(ckpt.get(n), b.get(n))}
    targets = {n for n in ckpt.tensor_names if any(f".{t}." in n for t in LLAMA_TARGETS)}
    assert moved == targets | {"lm_head.weight"}
    assert not any("norm" in n or "embed" in n for n in moved)
    gpt = open_checkpoint(adapters["gpt2"][1])
    gb = open_checkpoint(adapters["gpt2"][0])
    moved = {n for n in gpt.tensor_names if not torch.equal(gpt.get(n), gb.get(n))}
    assert moved and all(n.endswith(".weight") and (".attn." in n or ".mlp." in n) for n in moved)


def _items(path: Path) -> Path:
    fruits = ["apple", "banana", "cherry", "grape", "lemon", "mango"]
    rows = [
        {"id": f"q{i}", "question": f"Question {i}: which fruit is number {i % 6}? Answer:",
         "choices": [fruits[(i + j) % 6] for j in range(4)], "answer": (i * 7) % 4}
        for i in range(12)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _eval(model: Path, data: Path):
    return api.evaluate(EvalConfig(model=str(model), data=str(data), device="cpu", n_boot=0))


def test_eval_sweep_and_export_of_an_adapter(adapters, tmp_path):
    from calmerge.results.points import point_record
    from calmerge.results.store import ResultStore

    base, adapter, dense = adapters["llama"]
    data = _items(tmp_path / "items.jsonl")
    ev_a, ev_d, ev_b = (_eval(m, data).evaluation for m in (adapter, dense, base))
    la, ld = ev_a.result.choice_logprobs, ev_d.result.choice_logprobs
    assert torch.allclose(torch.as_tensor(la), torch.as_tensor(ld), atol=1e-5, rtol=0)
    assert not torch.allclose(torch.as_tensor(la), torch.as_tensor(ev_b.result.choice_logprobs))

    before = set(Path(adapter).parent.rglob("*.safetensors")) | set(tmp_path.rglob("*.safetensors"))
    cfg = SweepConfig(
        base=str(base), aligned=str(adapter), data=str(data), grid=(0.0, 0.5, 1.0),
        extrapolate=(), refine=False, n_boot=0, store=str(tmp_path / "runs.db"),
        out=str(tmp_path / "report"), device="cpu",
    )
    api.sweep(cfg, progress=False)
    after = set(Path(adapter).parent.rglob("*.safetensors")) | set(tmp_path.rglob("*.safetensors"))
    assert after == before, sorted(after - before)  # no dense aligned checkpoint on disk
    db = ResultStore(cfg.store)
    run = db.run(None)
    for lam, ev in ((1.0, ev_d), (0.0, ev_b)):
        pid = point_record(db, run.id, "linear", lam).id
        stored = [p.logprobs for p in db.predictions(pid, "test")]
        want = [
            [float(x) for x in ev.result.choice_logprobs[i][ev.result.mask[i]]]
            for i in range(len(ev.result.ids))
        ]
        assert torch.allclose(torch.tensor(stored), torch.tensor(want), atol=1e-5, rtol=0), lam
        assert db.metrics(pid)["test"]["acc"][0] == pytest.approx(ev.metrics["acc"].value)

    out, point = api.export(cfg.store, None, pick="lambda=0.5", out=tmp_path / "export")
    assert point.lam == 0.5
    want = _weights(merge_pair(base, adapter, 0.5, tmp_path / "merged"))
    got = _weights(out)
    assert set(got) == set(want)
    _assert_bitwise(got, want)
    assert (out / "tokenizer.json").is_file()  # the adapter dir's tokenizer


def test_adapter_refusals(adapters, tmp_path):
    from calmerge.errors import CheckpointError

    _, adapter, _ = adapters["rslora"]
    bad = tmp_path / "dora"
    bad.mkdir()
    (bad / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(CheckpointError, match="DoRA"):
        open_checkpoint(bad)
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "peft_type": "LOHA"}))
    with pytest.raises(CheckpointError, match="'LOHA'"):
        open_checkpoint(bad)
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "/no/base"}))
    with pytest.raises(CheckpointError, match="/no/base") as exc:
        open_checkpoint(bad)
    assert "--base" in exc.value.hint and str(bad) in exc.value.message
    # a base of another architecture: the adapter's modules are not there
    with pytest.raises(CheckpointError, match="q_proj"):
        open_checkpoint(adapters["rslora"][1], base=adapters["gpt2"][0])
