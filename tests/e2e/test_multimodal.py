"""Gemma-3 4B–27B layout (Gemma3ForConditionalGeneration) end to end: eval, sweep, export, inspect.

Its checkpoints name text weights `language_model.model.…` and keep a SigLIP vision tower, while
the model transformers loads names them `model.language_model.…` / `model.vision_tower.…`. The
oracles are transformers itself: a plain forward of the same Auto model for the scores, and
`save_pretrained` of the live model (transformers' own live → checkpoint renaming) for weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from families import WINDOW, load_causal_lm
from safetensors.torch import load_file, save_file

from calmerge import api
from calmerge.cli import main
from calmerge.config import EvalConfig, SweepConfig
from calmerge.errors import CheckpointError

WORDS = ["red", "tan", "blue", "gold"]


def write_items(path: Path, n: int, offset: int = 0) -> Path:
    """Short questions: context + choice stays inside the fixtures' sliding window."""
    rows = [
        {"id": f"q{offset + i}", "question": f"Q{i % 10}:",
         "choices": [WORDS[(i + j) % 4] for j in range(3)], "answer": i % 3}
        for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def saved_as_checkpoint(model: torch.nn.Module, out: Path) -> dict[str, torch.Tensor]:
    """The live weights under checkpoint names, as transformers' save_pretrained writes them."""
    model.save_pretrained(out)
    return load_file(out / "model.safetensors")


def assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        assert torch.equal(ours[name], t), name


def interpolator(base: Path, aligned: Path, **kw):
    from calmerge.eval.loading import load_model
    from calmerge.io.models import open_checkpoint
    from calmerge.sweep.interpolate import LiveInterpolator

    model, _ = load_model(str(aligned), dtype="float32", device="cpu")
    return model, LiveInterpolator(model, open_checkpoint(base), open_checkpoint(aligned), **kw)


def test_eval_scores_equal_a_plain_forward(family_pair, tmp_path):
    from calmerge.eval.loading import load_tokenizer
    from calmerge.eval.prompts import PromptBuilder

    _, aligned = family_pair("gemma3_mm")
    data = write_items(tmp_path / "q.jsonl", 6)
    rep = api.evaluate(EvalConfig(
        model=str(aligned), data=str(data), prompt_template="{question}", device="cpu", n_boot=0
    ))
    result = rep.evaluation.result
    model = load_causal_lm(aligned)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    builder = PromptBuilder(load_tokenizer(aligned), template="{question}")
    from calmerge.eval.data import load_items

    for i, item in enumerate(load_items(str(data))):
        ctx, conts = builder.encode(item)
        for j, cont in enumerate(conts):
            ids = ctx + cont
            assert len(ids) <= WINDOW  # so the sliding window cannot change the number
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            logp = torch.log_softmax(logits, -1)
            want = sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))
            assert abs(float(result.choice_logprobs[i, j]) - want) < 1e-4, (i, j)


@pytest.mark.parametrize("family", ["gemma3_mm", "qwen2", "gpt2", "phi3"])
def test_live_point_equals_calmerge_merge(family_pair, tmp_path, capsys, family):
    """Every parameter (vision tower, projector, tied embeddings) of the in-place θ(0.5) is
    `calmerge merge --lam 0.5`'s tensor, under the name transformers saves it as."""
    base, aligned = family_pair(family)
    model, interp = interpolator(base, aligned)
    interp.apply("linear", 0.5)
    main(["merge", "--base", str(base), "--aligned", str(aligned), "--lam", "0.5",
          "-o", str(tmp_path / "m"), "--quiet"])
    capsys.readouterr()
    merged = load_file(tmp_path / "m" / "model.safetensors")
    assert_same(saved_as_checkpoint(model, tmp_path / "live"), merged)


def test_multimodal_parents_and_masked_family(family_pair, tmp_path):
    """λ=0 and λ=1 are the parents bit for bit; dare_ties (masks seeded by tensor name) matches
    the merge engine too, so the pairing hands the engine the checkpoint's names."""
    from calmerge.merge.engine import merge_pair

    base, aligned = family_pair("gemma3_mm")
    model, interp = interpolator(base, aligned, density=0.6, seed=3)
    assert any(".vision_tower." in n for n, _ in model.named_parameters())
    for lam, parent in ((0.0, base), (1.0, aligned)):
        interp.apply("linear", lam)
        parent_weights = load_file(parent / "model.safetensors")
        assert_same(saved_as_checkpoint(model, tmp_path / f"l{lam}"), parent_weights)
    interp.apply("dare_ties", 0.7)
    out = merge_pair(base, aligned, 0.7, tmp_path / "dare", method="dare_ties", density=0.6, seed=3)
    assert_same(saved_as_checkpoint(model, tmp_path / "dl"), load_file(out / "model.safetensors"))


def test_missing_tensor_is_one_line_naming_both_names(family_pair, tmp_path):
    from calmerge.io.models import open_checkpoint
    from calmerge.sweep.interpolate import LiveInterpolator

    base, aligned = family_pair("gemma3_mm")
    model = load_causal_lm(aligned)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((aligned / "config.json").read_text())
    state = load_file(aligned / "model.safetensors")
    del state["vision_tower.post_layernorm.weight"]
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        LiveInterpolator(model, open_checkpoint(base), open_checkpoint(broken))
    text = err.value.one_line()
    assert "\n" not in text
    assert "'model.vision_tower.post_layernorm.weight'" in text
    assert "'vision_tower.post_layernorm.weight'" in text and "renaming" in text


def test_sweep_export_and_inspect(family_pair, tmp_path):
    base, aligned = family_pair("gemma3_mm")
    test = write_items(tmp_path / "test.jsonl", 12)
    dev = write_items(tmp_path / "dev.jsonl", 9, offset=100)
    cfg = SweepConfig(
        base=str(base), aligned=str(aligned), data=str(test), dev=str(dev), grid=(0.0, 0.5, 1.0),
        extrapolate=(), refine=False, n_boot=20, store=str(tmp_path / "runs.db"),
        out=str(tmp_path / "report"), device="cpu",
    )
    res = api.sweep(cfg, progress=False)
    assert res.computed == 3
    rows = api.results_table(cfg.store)
    assert [r["lam"] for r in rows] == [0.0, 0.5, 1.0]
    assert all(0.0 <= r["test.acc"] <= 1.0 for r in rows)

    out, point = api.export(cfg.store, None, pick="lambda=0.5", out=tmp_path / "export")
    assert point.lam == 0.5
    exported = load_causal_lm(out)
    live, interp = interpolator(base, aligned)
    interp.apply("linear", 0.5)
    ids = torch.tensor([[1, 7, 9, 12, 30, 4]])
    with torch.no_grad():
        assert torch.equal(exported(input_ids=ids).logits, live(input_ids=ids).logits)

    info = api.inspect_model(aligned)
    text_cfg = json.loads((aligned / "config.json").read_text())["text_config"]
    assert info["vocab_size"] == text_cfg["vocab_size"] == info["embedding_rows"]
    assert info["hidden_size"] == 64
