"""Every model family users bring, end to end: merge, eval, sweep parents, export.

For each tiny fixture of tests/families.py (and the Llama pair of tests/tiny.py):
- `calmerge merge --lam` equals mergekit's linear merge of the same pair bit for bit, and a
  hand-interpolated state dict (the oracle that needs no mergekit, for every architecture);
- `calmerge eval` per-choice log-likelihoods equal lm-eval's `hf` model, plain and chat prompts
  (lm-eval's own chat rendering, no target delimiter after it, as its chat mode does);
- the sweep's λ=0 and λ=1 points score exactly what `calmerge eval` of the parents scores;
- the exported pick loads with transformers' Auto class and its logits equal the hand-merged
  state dict's.
Windowed attention on long prompts is tests/e2e/test_sliding_window.py; multimodal checkpoints'
name mapping tests/e2e/test_multimodal.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from families import load_causal_lm
from safetensors.torch import save_file

from calmerge import api
from calmerge.config import SweepConfig
from calmerge.eval.data import load_items
from calmerge.eval.loading import load_model
from calmerge.eval.score import Scorer
from calmerge.io.models import open_checkpoint
from calmerge.merge.engine import merge_pair
from calmerge.results.points import point_predictions
from calmerge.results.store import ResultStore

FAMILIES = ["llama", "gemma3_text", "gemma3_mm", "mistral", "qwen2", "gpt2", "phi3"]
LAM = 0.6


@pytest.fixture
def pair(request, family_pair, tiny_pair):
    family = request.param
    return tiny_pair if family == "llama" else family_pair(family)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    return {n: ckpt.get(n) for n in ckpt.tensor_names}


def _hand_merge(base: Path, aligned: Path, lam: float) -> dict[str, torch.Tensor]:
    """mergekit's linear, written out: Σ w_i·θ_i by addcmul from zero in fp32, ÷ Σ w_i."""
    b, a = _weights(base), _weights(aligned)
    out = {}
    for name, t in a.items():
        if not t.is_floating_point():
            out[name] = t
            continue
        w = torch.tensor([1.0 - lam, lam], dtype=torch.float32)
        acc = torch.zeros_like(t, dtype=torch.float32)
        acc.addcmul_(b[name].float(), w[0]).addcmul_(t.float(), w[1]).div_(w.sum())
        out[name] = acc.to(t.dtype)
    return out


@pytest.fixture(scope="module")
def items_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("matrix") / "items.jsonl"
    rows = [
        {"id": f"q{i}", "question": q, "choices": c, "answer": i % len(c)}
        for i, (q, c) in enumerate([
            ("The capital of France is", ["Paris", "Rome", "a dog"]),
            ("Which animal barks?", ["a dog", "cat"]),
            ("What colour is the sky?", ["blue", "green apple", "red", "lemon"]),
            ("one two three", ["four", "ten"]),
        ])
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("pair", FAMILIES, indirect=True)
def test_merge_equals_mergekit_and_the_hand_merge(pair, tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_run
    from mergekit.options import MergeOptions

    base, aligned = pair
    ours = _weights(merge_pair(base, aligned, LAM, tmp_path / "ours"))
    hand = _hand_merge(base, aligned, LAM)
    assert set(ours) == set(hand)
    for name in hand:
        assert torch.equal(ours[name], hand[name]), name
    if base.name.startswith("gemma3_mm"):
        # mergekit's Gemma-3 definition expects the hub layout (`vision_tower.vision_model.*`);
        # transformers 5.24's save_pretrained writes `vision_tower.*`, which mergekit refuses
        # ("required but not present"): the hand merge above is this family's oracle.
        return
    cfg = {"merge_method": "linear", "dtype": "float32", "models": [
        {"model": str(base), "parameters": {"weight": 1 - LAM}},
        {"model": str(aligned), "parameters": {"weight": LAM}},
    ]}
    mergekit_run(MergeConfiguration.model_validate(cfg), str(tmp_path / "mk"),
                 MergeOptions(quiet=True))
    theirs = _weights(tmp_path / "mk")
    assert set(theirs) == set(ours)
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name


@pytest.mark.parametrize("fmt", ["plain", "chat"])
@pytest.mark.parametrize("pair", FAMILIES, indirect=True)
def test_eval_equals_lm_eval_loglikelihood(pair, items_file, fmt):
    """Per-choice log-likelihoods equal lm-eval's `hf` model on the same requests: the bare
    question (plain) or lm-eval's own rendering of the family's chat template (chat)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    _, aligned = pair
    model, tok = load_model(aligned, device="cpu", dtype="float32")
    items = load_items(items_file)
    ours = Scorer(tok, items, template="{question}", prompt_format=fmt).score(model)
    lm = HFLM(pretrained=str(aligned), device="cpu", dtype="float32", batch_size=4)

    def request(item):
        if fmt == "plain":
            return item.question, " "
        return lm.apply_chat_template([{"role": "user", "content": item.question}]), ""

    requests = [
        Instance("loglikelihood", {}, (request(item)[0], request(item)[1] + c), i)
        for item in items for i, c in enumerate(item.choices)
    ]
    theirs = iter(ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True))
    for i, item in enumerate(items):
        expect = [next(theirs) for _ in item.choices]
        np.testing.assert_allclose(ours.choice_logprobs[i, : len(expect)], expect, atol=1e-4)


@pytest.mark.parametrize("pair", FAMILIES, indirect=True)
def test_sweep_parents_equal_eval_and_export_loads(pair, items_file, tmp_path):
    base, aligned = pair
    cfg = SweepConfig(
        base=str(base), aligned=str(aligned), data=str(items_file), grid=(0.0, LAM, 1.0),
        refine=False, n_boot=0, store=str(tmp_path / "runs.db"), out=str(tmp_path / "report"),
        device="cpu", prompt_template="{question}", pick=f"lambda={LAM}",
    )
    api.sweep(cfg, progress=False)
    db = ResultStore(cfg.store)
    run = db.run(None)
    items = load_items(items_file)
    for lam, parent in ((0.0, base), (1.0, aligned)):
        model, tok = load_model(parent, device="cpu", dtype="float32")
        expect = Scorer(tok, items, template="{question}").score(model)
        stored = point_predictions(db, run.id, "linear", lam, ("test",)).get("test")
        for i, p in enumerate(stored):
            np.testing.assert_allclose(p.logprobs, expect.choice_logprobs[i][expect.mask[i]],
                                       rtol=0, atol=1e-5)
    out, _ = api.export(cfg.store, None, pick=f"lambda={LAM}", out=tmp_path / "export")
    # the oracle checkpoint: the aligned model's files with the hand-merged weights
    oracle = tmp_path / "oracle"
    shutil.copytree(aligned, oracle)
    for f in oracle.glob("*.safetensors"):
        f.unlink()
    save_file(_hand_merge(base, aligned, LAM), oracle / "model.safetensors", metadata={"format": "pt"})
    exported, expected = load_causal_lm(out), load_causal_lm(oracle)
    assert type(exported) is type(expected) is type(load_causal_lm(aligned))
    ids = torch.tensor([[1, 7, 9, 11, 3, 14, 2]])
    with torch.no_grad():
        assert torch.equal(exported(ids).logits, expected(ids).logits)
