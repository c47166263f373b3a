"""io.checkpoint: lazy reading equals safetensors' own loader; every broken input is named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_model

from calmerge.errors import CheckpointError
from calmerge.io.models import open_checkpoint
from calmerge.io.validate import check_finite, validate_pair


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    base = make_model(root / "base", seed=0)
    return {
        "base": base,
        "aligned": make_model(root / "aligned", seed=1, base=base, scale=0.2),
        "sharded": make_model(
            root / "sharded", seed=1, base=base, scale=0.2, max_shard_size="150KB"
        ),
        "extended": make_model(root / "extended", seed=2, base=base, extra_vocab=3),
        "bf16": make_model(root / "bf16", seed=1, base=base, dtype=torch.bfloat16),
        "qwen": make_model(root / "qwen", seed=0, arch="qwen2"),
        "tied": make_model(root / "tied", seed=0, tie=True),
        "deep": make_model(root / "deep", seed=0, layers=3),
    }


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tensors_equal_safetensors_loader(models):
    ckpt = open_checkpoint(models["aligned"])
    ref = load_file(str(models["aligned"] / "model.safetensors"))
    assert sorted(ckpt.tensor_names) == sorted(ref)
    for name, tensor in ref.items():
        assert ckpt.shape(name) == tuple(tensor.shape)
        assert ckpt.dtype(name) == tensor.dtype
        assert torch.equal(ckpt.get(name), tensor)
    assert ckpt.has_chat_template
    assert ckpt.num_layers == 2


def test_sharded_checkpoint_reads_all_shards(models):
    sharded, single = open_checkpoint(models["sharded"]), open_checkpoint(models["aligned"])
    assert len(sharded.shard_files) > 1
    assert sorted(sharded.tensor_names) == sorted(single.tensor_names)
    for name in single.tensor_names:
        assert torch.equal(sharded.get(name), single.get(name))


def test_fingerprint_is_stable_and_content_sensitive(models):
    a1, a2 = open_checkpoint(models["aligned"]), open_checkpoint(models["aligned"])
    assert a1.fingerprint() == a2.fingerprint()
    assert a1.fingerprint() != open_checkpoint(models["base"]).fingerprint()


def test_bf16_dtype_and_values(models):
    ckpt = open_checkpoint(models["bf16"])
    ref = load_file(str(models["bf16"] / "model.safetensors"))
    assert ckpt.main_dtype == torch.bfloat16
    name = next(iter(ref))
    assert torch.equal(ckpt.get(name), ref[name])


def test_truncated_file_is_named(models, tmp_path):
    bad = _copy(models["aligned"], tmp_path / "trunc")
    f = bad / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*expected .* bytes"):
        open_checkpoint(bad)


def test_corrupt_header_is_named(models, tmp_path):
    bad = _copy(models["aligned"], tmp_path / "corrupt")
    f = bad / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"\x00garbage!!!\x00"
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="header is not valid JSON"):
        open_checkpoint(bad)


def test_missing_shard_is_named(models, tmp_path):
    bad = _copy(models["sharded"], tmp_path / "missing")
    victim = sorted(bad.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"shard '{victim.name}'.*missing"):
        open_checkpoint(bad)


def test_pickle_refused_unless_allowed(models, tmp_path):
    d = tmp_path / "pickled"
    d.mkdir()
    shutil.copy(models["aligned"] / "config.json", d)
    state = load_file(str(models["aligned"] / "model.safetensors"))
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled"):
        open_checkpoint(d)
    ckpt = open_checkpoint(d, allow_pickle=True)
    name = next(iter(state))
    assert torch.equal(ckpt.get(name), state[name])


def test_remote_code_refused_unless_trusted(models, tmp_path):
    d = _copy(models["aligned"], tmp_path / "remote")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="custom code"):
        open_checkpoint(d)
    assert open_checkpoint(d, trust_remote_code=True).config["auto_map"]


def test_missing_directory_and_offline_hub_id_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="no such model directory"):
        open_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not fetchable from the Hugging Face hub") as exc:
        open_checkpoint("someone/some-model-that-is-not-cached")
    assert "\n" not in exc.value.one_line()


def test_validate_pair_accepts_a_fine_tune(models):
    report = validate_pair(open_checkpoint(models["base"]), open_checkpoint(models["aligned"]))
    assert report.warnings == []
    assert not report.vocab_extended


def test_vocab_extension_is_a_warning(models):
    report = validate_pair(open_checkpoint(models["base"]), open_checkpoint(models["extended"]))
    assert report.vocab_extended
    assert (report.vocab_base, report.vocab_aligned) == (320, 323)
    assert sorted(report.vocab_tensors) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert "rows past the base vocab" in report.warnings[0]


def test_dtype_difference_is_a_warning(models):
    report = validate_pair(open_checkpoint(models["base"]), open_checkpoint(models["bf16"]))
    assert any("dtypes differ" in w for w in report.warnings)


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ("qwen", "architecture mismatch"),
        ("tied", "tied vs untied embeddings"),
        ("deep", "extra tensor 'model.layers.2"),
    ],
)
def test_validate_pair_rejects_mismatches(models, other, message):
    with pytest.raises(CheckpointError, match=message):
        validate_pair(open_checkpoint(models["base"]), open_checkpoint(models[other]))


def test_shape_mismatch_names_tensor(models, tmp_path):
    d = tmp_path / "wide"
    make_model(d, seed=0)
    from safetensors.torch import save_file

    state = load_file(str(d / "model.safetensors"))
    state["model.norm.weight"] = torch.ones(65)
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"shape mismatch for 'model\.norm\.weight'"):
        validate_pair(open_checkpoint(models["base"]), open_checkpoint(d))


def test_check_finite_names_the_tensor(models):
    ckpt = open_checkpoint(models["base"])
    check_finite(ckpt, "x", torch.ones(3))
    with pytest.raises(CheckpointError, match="tensor 'x' contains NaN or Inf"):
        check_finite(ckpt, "x", torch.tensor([1.0, float("inf")], dtype=torch.bfloat16))
