"""The merge (plan, stream, engine) end to end on tiny real checkpoints, against mergekit in process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge as mergekit_run
from mergekit.merge_methods import merge_tensors
from mergekit.options import MergeOptions
from safetensors.torch import load_file
from tiny import make_model

from calmerge.config import MergeConfig
from calmerge.io.models import open_checkpoint
from calmerge.merge import engine, stream
from calmerge.merge.engine import merge_pair, run_merge
from calmerge.merge.mergekit_compat import from_mergekit
from calmerge.merge.plan import tensor_seed


@pytest.fixture(scope="module")
def m(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("engine")
    base = make_model(root / "base", seed=0, chat=False)
    return {
        "root": root,
        "base": base,
        "a": make_model(root / "a", seed=1, base=base, scale=0.2),
        "b": make_model(root / "b", seed=2, base=base, scale=0.3),
        "a_sharded": make_model(root / "as", seed=1, base=base, scale=0.2, max_shard_size="150KB"),
        "a_bf16": make_model(root / "abf", seed=1, base=base, scale=0.2, dtype=torch.bfloat16),
        "base_bf16": make_model(root / "bbf", seed=0, dtype=torch.bfloat16),
        "a_ext": make_model(root / "ax", seed=3, base=base, scale=0.2, extra_vocab=3),
    }


def weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    return {n: ckpt.get(n) for n in ckpt.tensor_names}


def _mergekit(cfg: dict, out: Path) -> dict[str, torch.Tensor]:
    mergekit_run(MergeConfiguration.model_validate(cfg), str(out), MergeOptions(quiet=True))
    return weights(out)


def _ours(cfg: dict, out: Path, **kw) -> dict[str, torch.Tensor]:
    run_merge(from_mergekit(cfg, "test"), out, quiet=True, **kw)
    return weights(out)


def _assert_bitwise(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def _cases(m) -> dict[str, dict]:
    B, A, Bm = str(m["base"]), str(m["a"]), str(m["b"])
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": B, "parameters": {"weight": 0.4}},
                {"model": A, "parameters": {"weight": 0.6}},
            ],
        },
        "linear_gradient": {
            "merge_method": "linear",
            "models": [
                {"model": B, "parameters": {"weight": [1.0, 0.2]}},
                {"model": A, "parameters": {"weight": [0.1, 0.9]}},
            ],
        },
        "task_arithmetic_filters": {
            "merge_method": "task_arithmetic",
            "base_model": B,
            "models": [
                {
                    "model": A,
                    "parameters": {
                        "weight": [{"filter": "self_attn", "value": [0.2, 0.8]}, {"value": -0.3}]
                    },
                },
                {"model": Bm, "parameters": {"weight": 0.5}},
            ],
            "parameters": {"lambda": 1.2},
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": B,
            "models": [{"model": A}],
            "parameters": {"t": [0.0, 0.7]},
        },
        "ties": {
            "merge_method": "ties",
            "base_model": B,
            "models": [
                {"model": A, "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": Bm, "parameters": {"weight": 0.4, "density": 0.7}},
            ],
        },
    }


@pytest.mark.parametrize(
    "case", ["linear", "linear_gradient", "task_arithmetic_filters", "slerp", "ties"]
)
@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
def test_bitwise_equal_to_mergekit(m, tmp_path, case, out_dtype, monkeypatch):
    # a small row block makes the engine's blocked elementwise path run on these tiny tensors
    monkeypatch.setattr(stream, "_BLOCK_ELEMENTS", 1000)
    cfg = {**_cases(m)[case], "dtype": "float32", "out_dtype": out_dtype}
    _assert_bitwise(_mergekit(cfg, tmp_path / "mk"), _ours(cfg, tmp_path / "cm"))


def test_mergekit_semantics_without_dtype(m, tmp_path):
    """No `dtype` in a mergekit YAML: compute in the stored dtype (bf16 here), like mergekit."""
    cfg = {
        "merge_method": "task_arithmetic",
        "base_model": str(m["base_bf16"]),
        "models": [{"model": str(m["a_bf16"]), "parameters": {"weight": 0.7}}],
    }
    mk, ours = _mergekit(cfg, tmp_path / "mk"), _ours(cfg, tmp_path / "cm")
    _assert_bitwise(mk, ours)
    fp32 = _ours({**cfg, "dtype": "float32", "out_dtype": "bfloat16"}, tmp_path / "cm32")
    assert any(not torch.equal(ours[n], fp32[n]) for n in ours)  # the dtype really mattered


def test_dare_per_tensor_seeds_match_mergekit(m, tmp_path):
    """DARE draws from a generator seeded per tensor name; mergekit seeded the same way agrees."""
    cfg = MergeConfig(
        method="dare_ties",
        base=str(m["base"]),
        seed=7,
        models=[
            {"model": str(m["a"]), "parameters": {"weight": 0.7, "density": 0.4}},
            {"model": str(m["b"]), "parameters": {"weight": 0.5, "density": 0.6}},
        ],
    )
    run_merge(cfg, tmp_path / "cm", quiet=True)
    ours = weights(tmp_path / "cm")
    parents = [weights(m[k]) for k in ("a", "b", "base")]
    for name, tensor in ours.items():
        torch.manual_seed(tensor_seed(7, name))
        ref = merge_tensors(
            [p[name] for p in parents],
            "dare_ties",
            base_index=2,
            parameters={"weight": [0.7, 0.5], "density": [0.4, 0.6]},
        )
        assert torch.equal(tensor, ref), name
    run_merge(cfg, tmp_path / "again", quiet=True)
    _assert_bitwise(ours, weights(tmp_path / "again"))


def test_soup_equals_mergekit_linear(m, tmp_path):
    ours = MergeConfig(
        method="soup",
        base=str(m["base"]),
        models=[{"model": str(m["a"]), "parameters": {"weight": 2.0}}, str(m["b"])],
    )
    run_merge(ours, tmp_path / "cm", quiet=True)
    mk = {
        "merge_method": "linear",
        "dtype": "float32",
        "models": [
            {"model": str(m["a"]), "parameters": {"weight": 2.0}},
            {"model": str(m["b"]), "parameters": {"weight": 1.0}},
        ],
    }
    _assert_bitwise(_mergekit(mk, tmp_path / "mk"), weights(tmp_path / "cm"))


def test_lambda_zero_and_one_are_the_parents(m, tmp_path):
    base, a = weights(m["base"]), weights(m["a"])
    _assert_bitwise(base, weights(merge_pair(m["base"], m["a"], 0.0, tmp_path / "l0")))
    _assert_bitwise(a, weights(merge_pair(m["base"], m["a"], 1.0, tmp_path / "l1")))


def test_extrapolation_is_theta_base_plus_lambda_delta(m, tmp_path):
    base, a = weights(m["base"]), weights(m["a"])
    out = weights(merge_pair(m["base"], m["a"], -0.5, tmp_path / "neg"))
    for name in out:
        torch.testing.assert_close(out[name], base[name] - 0.5 * (a[name] - base[name]))


def test_sharded_in_and_out(m, tmp_path):
    single = weights(merge_pair(m["base"], m["a"], 0.6, tmp_path / "single"))
    out = merge_pair(m["base"], m["a_sharded"], 0.6, tmp_path / "sharded", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((out / f).is_file() for f in files)
    assert all(os.path.getsize(out / f) < 100_000 + 40_000 for f in files)
    _assert_bitwise(single, weights(out))
    loaded = {}
    for f in files:
        loaded.update(load_file(str(out / f)))
    _assert_bitwise(single, loaded)


def test_output_is_a_loadable_model_with_aligned_chat_template(m, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = merge_pair(
        m["base"], m["a_bf16"], 0.5, tmp_path / "out", model_card_extra="## Metrics\nacc 0.5"
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    assert open_checkpoint(out).main_dtype == torch.bfloat16
    assert not open_checkpoint(m["base"]).has_chat_template
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == open_checkpoint(m["a_bf16"]).chat_template
    card = (out / "README.md").read_text()
    assert "method: linear" in card and "## Metrics\nacc 0.5" in card
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits.float()).all()


def test_vocab_extension_rows_come_from_aligned(m, tmp_path):
    warnings: list[str] = []
    out = engine.merge_pair(
        m["base"], m["a_ext"], 0.5, tmp_path / "ext", on_warning=warnings.append
    )
    assert any("rows past the base vocab" in w for w in warnings)
    base, ext, merged = weights(m["base"]), weights(m["a_ext"]), weights(out)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        n = base[name].shape[0]
        assert merged[name].shape == ext[name].shape
        assert torch.equal(merged[name][n:], ext[name][n:])
        ref = merge_tensors(
            [base[name], ext[name][:n]], "linear", parameters={"weight": [0.5, 0.5]}
        )
        assert torch.equal(merged[name][:n], ref)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 323


def test_leftovers_of_killed_runs_are_cleaned(m, tmp_path):
    stale = tmp_path / ".out.calmerge-tmp-999999999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    merge_pair(m["base"], m["a"], 0.5, tmp_path / "out")
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_replaces_existing_output(m, tmp_path):
    out = merge_pair(m["base"], m["a"], 0.2, tmp_path / "out")
    merge_pair(m["base"], m["a"], 0.8, out, force=True)
    expected = weights(merge_pair(m["base"], m["a"], 0.8, tmp_path / "ref"))
    _assert_bitwise(expected, weights(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref"]


@pytest.mark.parametrize(
    ("method", "top", "per_model", "culprit"),
    [
        ("linear", {}, {"weight": float("nan")}, "parameter 'weight' of model"),
        ("linear", {}, {"weight": [0.5, float("inf")]}, "parameter 'weight' of model"),
        ("linear", {}, {"weight": "nan"}, "parameter 'weight' of model"),
        (  # a filter that matches no tensor is checked too: the recipe is wrong either way
            "task_arithmetic",
            {},
            {"weight": [{"filter": "no_such_tensor", "value": [0.2, float("nan")]}, {"value": 1}]},
            "parameter 'weight' of model",
        ),
        ("slerp", {"t": float("-inf")}, {}, "parameter 't' of the merge"),
        ("task_arithmetic", {"lambda": "1e400"}, {"weight": 1.0}, "parameter 'lambda' of the"),
    ],
    ids=["nan", "gradient-inf", "nan-string", "filter-value", "slerp-t", "overflowing-string"],
)
def test_nonfinite_parameters_are_refused_before_any_output(
    m, tmp_path, method, top, per_model, culprit
):
    from calmerge.errors import ConfigError

    models = [{"model": str(m["a"]), "parameters": per_model}]
    if method == "linear":
        models.append({"model": str(m["base"]), "parameters": {"weight": 0.5}})
    cfg = MergeConfig(
        method=method, base=None if method == "linear" else str(m["base"]), models=models,
        parameters=top,
    )
    with pytest.raises(ConfigError, match=culprit) as err:
        run_merge(cfg, tmp_path / "out", quiet=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_yaml_whose_reference_has_the_smaller_vocabulary_is_refused(m, tmp_path):
    """Base listed first, no base_model: the reference (first non-base model) is the base, so
    the aligned model's added rows would be dropped while validation says they are kept.
    mergekit refuses this YAML ("Tensor size mismatch"); so does calmerge, naming both."""
    from calmerge.errors import ConfigError

    cfg = {"merge_method": "linear", "models": [
        {"model": str(m["base"]), "parameters": {"weight": 0.5}},
        {"model": str(m["a_ext"]), "parameters": {"weight": 0.5}},
    ]}
    warnings: list[str] = []
    with pytest.raises(ConfigError) as err:
        run_merge(from_mergekit(cfg, "t.yml"), tmp_path / "out", quiet=True,
                  on_warning=warnings.append)
    assert "has 323 rows, more than the reference model" in str(err.value)
    assert "--lam" in err.value.hint
    assert warnings == [] and not (tmp_path / "out").exists()


def test_a_yaml_with_the_aligned_model_as_reference_equals_lam(m, tmp_path):
    """base_model set, the aligned model the only other input: the same merge as `--lam`, bit
    for bit — its added rows, its tokenizer and its chat template."""
    cfg = {"merge_method": "linear", "base_model": str(m["base"]), "dtype": "float32", "models": [
        {"model": str(m["base"]), "parameters": {"weight": 0.5}},
        {"model": str(m["a_ext"]), "parameters": {"weight": 0.5}},
    ]}
    yaml_out = tmp_path / "yaml"
    run_merge(from_mergekit(cfg, "t.yml"), yaml_out, quiet=True)
    lam_out = merge_pair(m["base"], m["a_ext"], 0.5, tmp_path / "lam")
    _assert_bitwise(weights(lam_out), weights(yaml_out))
    ours, ext = open_checkpoint(yaml_out), open_checkpoint(m["a_ext"])
    assert ours.chat_template == ext.chat_template is not None
    assert json.loads((yaml_out / "tokenizer.json").read_text()) == json.loads(
        (m["a_ext"] / "tokenizer.json").read_text())
