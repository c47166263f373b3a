"""Per-layer gradients and filters position every tensor as mergekit 0.1.5 does, per tower.

The oracle is mergekit itself, run in process on the same YAML (`test_merge_engine` helpers),
for GPT-2 (`transformer.h.N`), Gemma-3 text, Phi-3, Qwen2, Mistral, Llama and Gemma-3 multimodal.
mergekit cannot read the Gemma-3 multimodal fixture as transformers 5 saves it (vision keys
`vision_tower.encoder.…` and a SigLIP head, where its gemma3vl.json wants the hub layout
`vision_tower.vision_model.…` without a head), so that family is checked twice: on a copy
rewritten to the hub layout against mergekit, and on the fixture's own names against a
hand-worked table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from test_merge_engine import _assert_bitwise, _mergekit, _ours
from tiny import make_model

from calmerge.analysis.diff import layer_deltas
from calmerge.config import MergeConfig
from calmerge.io.checkpoint import layer_index
from calmerge.io.layers import LayerMap
from calmerge.io.models import open_checkpoint
from calmerge.merge.plan import plan_merge


def _linear_gradient(base: Path, aligned: Path) -> dict:
    return {
        "merge_method": "linear",
        "dtype": "float32",
        "models": [
            {"model": str(base), "parameters": {"weight": [0.0, 0.3, 1.0]}},
            {"model": str(aligned), "parameters": {"weight": [1.0, 0.7, 0.0]}},
        ],
    }


def _filtered_task_arithmetic(base: Path, aligned: Path) -> dict:
    """A filtered gradient and a shared gradient: filters match the full (prefixed) name."""
    return {
        "merge_method": "task_arithmetic",
        "dtype": "float32",
        "base_model": str(base),
        "models": [
            {
                "model": str(aligned),
                "parameters": {
                    "weight": [
                        {"filter": "self_attn", "value": [0.1, 0.9]},
                        {"filter": "attn", "value": [1.5, 0.2, 0.6]},
                        {"value": [0.4, 1.0]},
                    ]
                },
            }
        ],
        "parameters": {"lambda": [0.5, 1.0, 2.0]},
    }


def _slerp_gradient(base: Path, aligned: Path) -> dict:
    return {
        "merge_method": "slerp",
        "dtype": "float32",
        "base_model": str(base),
        "models": [{"model": str(aligned)}],
        "parameters": {"t": [0.0, 0.5, 1.0]},
    }


@pytest.fixture(scope="module")
def llama3(tmp_path_factory) -> tuple[Path, Path]:
    """Llama with 3 blocks: the middle one sits at t = 0.5."""
    root = tmp_path_factory.mktemp("llama3")
    base = make_model(root / "base", seed=0, layers=3, chat=False)
    return base, make_model(root / "aligned", seed=1, base=base, scale=0.2, layers=3, chat=False)


def _hub_layout_gemma3_mm(src: Path, out: Path) -> Path:
    """The Gemma-3 multimodal fixture as the hub ships it (and mergekit's gemma3vl.json reads
    it): vision weights under `vision_tower.vision_model.`, no SigLIP pooling head."""
    shutil.copytree(src, out)
    tensors = load_file(str(out / "model.safetensors"))
    renamed = {}
    for name, tensor in tensors.items():
        if name.startswith("vision_tower.head."):
            continue
        if name.startswith("vision_tower."):
            name = "vision_tower.vision_model." + name[len("vision_tower.") :]
        renamed[name] = tensor.contiguous()
    save_file(renamed, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["vision_config"]["vision_use_head"] = False
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text", "phi3", "qwen2", "mistral"])
@pytest.mark.parametrize("case", [_linear_gradient, _filtered_task_arithmetic])
def test_family_gradients_bitwise_equal_to_mergekit(family_pair, tmp_path, family, case):
    base, aligned = family_pair(family)
    cfg = case(base, aligned)
    _assert_bitwise(_mergekit(cfg, tmp_path / "mk"), _ours(cfg, tmp_path / "cm"))


@pytest.mark.parametrize("case", [_linear_gradient, _filtered_task_arithmetic, _slerp_gradient])
def test_llama_three_blocks_bitwise_equal_to_mergekit(llama3, tmp_path, case):
    cfg = case(*llama3)
    _assert_bitwise(_mergekit(cfg, tmp_path / "mk"), _ours(cfg, tmp_path / "cm"))


def test_gpt2_slerp_gradient_bitwise_equal_to_mergekit(family_pair, tmp_path):
    cfg = _slerp_gradient(*family_pair("gpt2"))
    _assert_bitwise(_mergekit(cfg, tmp_path / "mk"), _ours(cfg, tmp_path / "cm"))


@pytest.mark.parametrize("case", [_linear_gradient, _filtered_task_arithmetic])
def test_gemma3_multimodal_hub_layout_bitwise_equal_to_mergekit(family_pair, tmp_path, case):
    """Text tower over its 3 blocks, vision tower over its own 2, projector at t = 0."""
    base, aligned = family_pair("gemma3_mm")
    base = _hub_layout_gemma3_mm(base, tmp_path / "base")
    aligned = _hub_layout_gemma3_mm(aligned, tmp_path / "aligned")
    cfg = case(base, aligned)
    _assert_bitwise(_mergekit(cfg, tmp_path / "mk"), _ours(cfg, tmp_path / "cm"))


# ─────────────────────────── the assignment itself, by hand ───────────────────────────

#: gemma3_mm fixture (3 text blocks, 2 SigLIP blocks), worked out from gemma3vl.json:
#: text_decoder numbered over text_config.num_hidden_layers, vision_tower over
#: vision_config.num_hidden_layers, multi_modal_projector and pre/post weights at t = 0
GEMMA3_MM = {
    "language_model.model.embed_tokens.weight": ("embeddings", 0.0),
    "language_model.model.layers.0.self_attn.q_proj.weight": ("layer 0", 0.0),
    "language_model.model.layers.1.mlp.up_proj.weight": ("layer 1", 0.5),
    "language_model.model.layers.2.post_feedforward_layernorm.weight": ("layer 2", 1.0),
    "language_model.model.norm.weight": ("head/norm", 0.0),
    "multi_modal_projector.mm_input_projection_weight": ("projector", 0.0),
    "multi_modal_projector.mm_soft_emb_norm.weight": ("projector", 0.0),
    "vision_tower.embeddings.patch_embedding.weight": ("vision embeddings", 0.0),
    "vision_tower.encoder.layers.0.self_attn.q_proj.weight": ("vision layer 0", 0.0),
    "vision_tower.encoder.layers.1.mlp.fc2.bias": ("vision layer 1", 1.0),
    "vision_tower.post_layernorm.weight": ("vision head/norm", 0.0),
    "vision_tower.head.mlp.fc1.weight": ("vision head/norm", 0.0),
}

GPT2 = {
    "transformer.wte.weight": ("embeddings", 0.0),
    "transformer.wpe.weight": ("embeddings", 0.0),
    "transformer.h.0.attn.c_attn.weight": ("layer 0", 0.0),
    "transformer.h.1.attn.c_attn.weight": ("layer 1", 1.0),
    "transformer.h.1.mlp.c_proj.bias": ("layer 1", 1.0),
    "transformer.ln_f.weight": ("head/norm", 0.0),
}


@pytest.mark.parametrize(("family", "table"), [("gemma3_mm", GEMMA3_MM), ("gpt2", GPT2)])
def test_fixture_assignment_matches_hand_worked_table(family_pair, family, table):
    ckpt = open_checkpoint(family_pair(family)[0])
    layers = ckpt.layer_map
    assert set(table) <= set(ckpt.tensor_names)
    for name, (group, t) in table.items():
        assert (layers.group(name), layers.position(name)) == (group, t), name
    assert layers.notes == ()  # a family mergekit defines, counts as the config says


def test_tower_counts_and_num_layers(family_pair):
    mm = open_checkpoint(family_pair("gemma3_mm")[0])
    assert mm.layer_map.towers == {
        "language_model.model.layers": 3,
        "vision_tower.encoder.layers": 2,
    }
    assert mm.num_layers == 3  # the language model's blocks, not the vision tower's
    gpt2 = open_checkpoint(family_pair("gpt2")[0])
    assert gpt2.layer_map.towers == {"transformer.h": 2} and gpt2.num_layers == 2
    assert layer_index("transformer.h.1.attn.c_attn.weight") == 1
    for family in ("gemma3_text", "phi3", "qwen2", "mistral"):
        ckpt = open_checkpoint(family_pair(family)[0])
        assert ckpt.layer_map.towers == {"model.layers": ckpt.config["num_hidden_layers"]}


def test_plan_positions_follow_the_towers(family_pair):
    """Through the planner: GPT-2's h.1 and the vision tower's last block both sit at t = 1."""
    for family, name, want in [
        ("gpt2", "transformer.h.1.mlp.c_fc.weight", [1.0, 0.0]),
        ("gemma3_mm", "vision_tower.encoder.layers.1.mlp.fc1.weight", [1.0, 0.0]),
        ("gemma3_mm", "language_model.model.layers.1.mlp.up_proj.weight", [0.5, 0.5]),
        ("gemma3_mm", "multi_modal_projector.mm_input_projection_weight", [0.0, 1.0]),
    ]:
        base, aligned = family_pair(family)
        cfg = MergeConfig(
            method="linear",
            models=[
                {"model": str(base), "parameters": {"weight": [0.0, 1.0]}},
                {"model": str(aligned), "parameters": {"weight": [1.0, 0.0]}},
            ],
        )
        plan = plan_merge(cfg)
        job = next(j for j in plan.jobs if j.spec.name == name)
        assert job.params["weight"] == want, (family, name)


# ─────────────────────────── rules beyond the fixtures ───────────────────────────


def test_t5_encoder_and_decoder_are_numbered_separately():
    names = [f"encoder.block.{i}.layer.0.SelfAttention.q.weight" for i in range(4)]
    names += [f"decoder.block.{i}.layer.1.EncDecAttention.q.weight" for i in range(2)]
    cfg = {"architectures": ["T5ForConditionalGeneration"], "num_hidden_layers": 4}
    layers = LayerMap.build([*names, "shared.weight"], cfg)
    assert layers.position("encoder.block.1.layer.0.SelfAttention.q.weight") == pytest.approx(1 / 3)
    assert layers.position("decoder.block.1.layer.1.EncDecAttention.q.weight") == 1.0
    assert layers.position("shared.weight") == 0.0
    assert layers.notes == ()


def test_mixformer_blocks_are_shifted_like_its_mergekit_definition():
    """phi-1.json: `layers.0` is the embedding, block i is `layers.{i+1}`, `layers.{L+1}` the head."""
    names = ["layers.0.wte.weight", "layers.3.linear.weight"]
    names += [f"layers.{i + 1}.mixer.Wqkv.weight" for i in range(2)]
    layers = LayerMap.build(
        names, {"architectures": ["MixFormerSequentialForCausalLM"], "n_layer": 2}
    )
    assert [layers.position(n) for n in names] == [0.0, 0.0, 0.0, 1.0]
    assert layers.group("layers.2.mixer.Wqkv.weight") == "layer 1"


def test_unknown_architecture_uses_mergekits_inference_and_says_so(tiny_pair, tmp_path):
    base, aligned = tiny_pair
    renamed = []
    for src in (base, aligned):
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        cfg = json.loads((dst / "config.json").read_text())
        cfg["architectures"] = ["NotInMergekitForCausalLM"]
        (dst / "config.json").write_text(json.dumps(cfg))
        renamed.append(dst)
    gradient = MergeConfig(
        method="linear",
        models=[
            {"model": str(renamed[0]), "parameters": {"weight": [0.0, 1.0]}},
            {"model": str(renamed[1]), "parameters": {"weight": [1.0, 0.0]}},
        ],
    )
    plan = plan_merge(gradient)
    assert any("not in calmerge's checked table" in w for w in plan.warnings)
    job = next(j for j in plan.jobs if j.spec.name == "model.layers.1.mlp.up_proj.weight")
    assert job.params["weight"] == [1.0, 0.0]  # mergekit's auto.py numbering: still block 1 of 2
    scalar = MergeConfig(
        method="linear",
        models=[
            {"model": str(renamed[0]), "parameters": {"weight": 0.5}},
            {"model": str(renamed[1]), "parameters": {"weight": 0.5}},
        ],
    )
    assert not any("gradient" in w for w in plan_merge(scalar).warnings)  # no gradient, no noise


def test_config_layer_count_disagreeing_with_names_is_reported():
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)]
    layers = LayerMap.build(names, {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 3})
    assert any("config says 3" in n for n in layers.notes)


def test_qwen2_vl_merger_is_flagged_not_guessed():
    names = ["visual.merger.mlp.0.weight", "visual.merger.mlp.2.weight"]
    names += [f"visual.blocks.{i}.attn.qkv.weight" for i in range(2)]
    names += [f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)]
    cfg = {"architectures": ["Qwen2VLForConditionalGeneration"], "num_hidden_layers": 3}
    layers = LayerMap.build(names, cfg)
    assert layers.position("visual.merger.mlp.2.weight") == 0.0
    assert layers.position("visual.blocks.1.attn.qkv.weight") == 1.0
    assert layers.group("visual.merger.mlp.2.weight") == "projector"
    assert any("visual.merger." in n for n in layers.notes)


# ─────────────────────────── calmerge diff ───────────────────────────


def test_diff_groups_per_tower_and_block(family_pair):
    base, aligned = family_pair("gemma3_mm")
    groups = [d.group for d in layer_deltas(open_checkpoint(base), open_checkpoint(aligned))]
    assert groups == [
        "embeddings",
        "vision embeddings",
        "vision layer 0",
        "vision layer 1",
        "layer 0",
        "layer 1",
        "layer 2",
        "head/norm",
        "projector",
        "vision head/norm",
    ]
    base, aligned = family_pair("gpt2")
    deltas = layer_deltas(open_checkpoint(base), open_checkpoint(aligned))
    assert [d.group for d in deltas] == ["embeddings", "layer 0", "layer 1", "head/norm"]
    assert all(d.relative > 0 for d in deltas)
