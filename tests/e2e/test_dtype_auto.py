"""`--dtype auto`: a model is scored in the dtype its checkpoint is stored in, and says so."""

from __future__ import annotations

import json

import pytest
import torch

from calmerge.dtypes import auto_eval_dtype
from calmerge.eval.loading import load_model, resolve_dtype


@pytest.fixture(scope="module")
def bf16_pair(tmp_path_factory):
    from tiny import make_model

    root = tmp_path_factory.mktemp("bf16")
    base = make_model(root / "base", seed=0, dtype=torch.bfloat16)
    aligned = make_model(root / "aligned", seed=1, base=base, scale=0.2, dtype=torch.bfloat16)
    return base, aligned


def test_the_largest_float_share_decides():
    assert auto_eval_dtype({"BF16": 900, "F32": 100, "I64": 5000}) == "bfloat16"
    assert auto_eval_dtype({"F16": 10}) == "float16"
    assert auto_eval_dtype({"F64": 10}) == "float32"  # no fast float64 kernels
    assert auto_eval_dtype({"I8": 10}) == "float32"


def test_auto_picks_bf16_for_a_bf16_checkpoint(bf16_pair, tiny_pair):
    assert resolve_dtype("auto", bf16_pair[1]) == "bfloat16"
    assert resolve_dtype("auto", tiny_pair[1]) == "float32"
    assert resolve_dtype("float32", bf16_pair[1]) == "float32"  # fp32 stays available
    model, _ = load_model(str(bf16_pair[1]), device="cpu", dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_a_sweep_states_the_dtype_it_used(bf16_pair, tmp_path):
    from calmerge import api
    from calmerge.config import SweepConfig

    items = tmp_path / "t.jsonl"
    items.write_text("".join(
        json.dumps({"id": f"q{i}", "question": f"Pick {i}", "choices": ["a b", "c", "d e f"],
                    "answer": i % 3}) + "\n" for i in range(8)))
    cfg = SweepConfig(base=str(bf16_pair[0]), aligned=str(bf16_pair[1]), data=str(items),
                      grid=(0.0, 1.0), refine=False, n_boot=20, device="cpu",
                      store=str(tmp_path / "runs.db"), out=str(tmp_path / "r"))
    assert cfg.dtype == "auto"
    res = api.sweep(cfg, progress=False)
    assert res.dtype == "bfloat16"
    stored = json.loads(json.dumps(api.results_table(cfg.store)))
    assert len(stored) == 2
    assert "bfloat16" in (tmp_path / "r" / "report.md").read_text()
