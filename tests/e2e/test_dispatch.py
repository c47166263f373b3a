"""Models dispatched by accelerate (`--device-map auto`): a sweep rewrites their weights in place,
offloaded ones included, without touching the checkpoint files the dispatch reads from.

On this CPU-only machine the dispatch is exercised with a `max_memory` cap that sends some
layers to disk (meta parameters behind accelerate's offload hooks); the GPU placements of the
same code path are untested here.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from calmerge.config import parse_max_memory
from calmerge.eval.loading import load_model
from calmerge.io.models import open_checkpoint
from calmerge.merge.engine import merge_pair
from calmerge.sweep.interpolate import LiveInterpolator

#: the tiny Llama (~460 kB) under this cap: embeddings and layer 0 in RAM, the rest on disk
CAP = 400_000


def _digest(folder):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()
            if f.is_file()}


def _dispatched(path, cap=CAP):
    model, _ = load_model(str(path), dtype="float32", device="cpu", device_map="auto",
                          max_memory={"cpu": cap})
    return model


def test_the_cap_really_offloads(tiny_pair):
    model = _dispatched(tiny_pair[1])
    assert "disk" in model.hf_device_map.values() and "cpu" in model.hf_device_map.values()
    assert any(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("family,lam", [("linear", 0.4), ("dare_linear", 0.7)])
def test_offloaded_point_equals_merge_and_leaves_the_checkpoint_alone(
    tiny_pair, tmp_path, family, lam
):
    base, aligned = tiny_pair
    before = {p: _digest(p) for p in (base, aligned)}
    model = _dispatched(aligned)
    interp = LiveInterpolator(model, open_checkpoint(base), open_checkpoint(aligned),
                              density=0.6, seed=3)
    assert interp.placement.where == "disk"  # the weights did not fit, the parents neither
    interp.apply(family, lam)
    out = merge_pair(base, aligned, lam, tmp_path / "m", method=family, density=0.6, seed=3)
    merged = load_file(out / "model.safetensors")
    plain, _ = load_model(str(out), dtype="float32", device="cpu")
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    with torch.inference_mode():
        got, want = model(input_ids=ids).logits, plain(input_ids=ids).logits
    assert torch.equal(got, want)  # the same weights, the same CPU arithmetic
    for name, p in model.named_parameters():
        value = interp._scratch.view(name) if p.device.type == "meta" else p.detach()
        assert torch.equal(value, merged[name]), name
    assert {p: _digest(p) for p in (base, aligned)} == before
    folder = interp._scratch.folder
    assert any(folder.iterdir())
    interp.close()
    assert not folder.exists()


def test_a_second_point_overwrites_the_first(tiny_pair):
    base, aligned = tiny_pair
    model = _dispatched(aligned)
    interp = LiveInterpolator(model, open_checkpoint(base), open_checkpoint(aligned))
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.inference_mode():
        interp.apply("linear", 0.0)
        at0 = model(input_ids=ids).logits
        interp.apply("linear", 1.0)
        at1 = model(input_ids=ids).logits
        interp.apply("linear", 0.0)
        again = model(input_ids=ids).logits
    assert not torch.equal(at0, at1) and torch.equal(at0, again)
    interp.close()


def test_sweep_with_a_device_map_equals_the_plain_sweep(tiny_pair, tmp_path):
    import json

    from calmerge import api
    from calmerge.config import SweepConfig

    items = tmp_path / "t.jsonl"
    items.write_text("".join(
        json.dumps({"id": f"q{i}", "question": f"Pick {i}", "choices": ["red", "blue", "green"],
                    "answer": i % 3}) + "\n" for i in range(12)))

    def run(sub, **kw):
        cfg = SweepConfig(base=str(tiny_pair[0]), aligned=str(tiny_pair[1]), data=str(items),
                          grid=(0.0, 0.5, 1.0), refine=False, n_boot=50, device="cpu",
                          store=str(tmp_path / sub / "runs.db"), out=str(tmp_path / sub / "r"),
                          **kw)
        res = api.sweep(cfg, progress=False)
        return res, api.results_table(cfg.store)

    _, rows = run("plain")
    dispatched, drows = run("dispatched", device_map="auto", max_memory=f"cpu={CAP}")
    assert "disk" in (dispatched.placement or "")
    keys = [k for k in rows[0] if k.startswith("test.")]
    for a, b in zip(rows, drows, strict=True):
        assert a["lam"] == b["lam"]
        assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in keys), a["lam"]


def test_max_memory_is_parsed_as_accelerate_takes_it():
    assert parse_max_memory("0=20GiB, cuda:1=10GiB,cpu=60GiB") == {0: "20GiB", 1: "10GiB",
                                                                   "cpu": "60GiB"}
    assert parse_max_memory(None) is None
