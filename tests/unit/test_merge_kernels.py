"""Both linear kernels (the C extension and the numpy fallback) against the torch method
(`methods._linear`) bit for bit, and the engine's kernel path against its torch path on whole
tiny checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import make_model

from calmerge.merge import engine, fastpath
from calmerge.merge.fastpath import LinearKernel
from calmerge.merge.fastpath.numpy_kernel import significant_bits
from calmerge.merge.fastpath.road import kernel_ok
from calmerge.merge.methods import _linear
from calmerge.merge.plan import plan_merge
from calmerge.merge.stream import execute

TAGS = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def _raw(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def _inputs(n: int, dtypes: list[torch.dtype], seed: int, scale: float = 0.02):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for dt in dtypes:
        x = torch.randn(n, generator=gen) * scale
        x[:40] = 0.0
        x[40:80] = -0.0
        x[80:90] = 3e-39  # fp32 subnormals (tiny products)
        x[90:100] = -1.4e-45  # products that underflow: fma gives −0, not +0
        out.append(x.to(dt))
    return out


CASES = [
    # weights, normalize, input dtypes, compute (None = the first input's), out dtype
    ([0.5, 0.5], True, [torch.bfloat16] * 2, None, torch.bfloat16),
    ([0.4, 0.6], True, [torch.bfloat16] * 2, torch.float32, torch.bfloat16),
    ([0.3, 0.9], True, [torch.bfloat16] * 2, torch.float32, torch.float32),
    ([1.7, -0.7], False, [torch.bfloat16] * 2, torch.float32, torch.float16),
    ([0.0, 1.0], True, [torch.float32] * 2, torch.float32, torch.bfloat16),
    ([0.25, 0.75, 0.5], True, [torch.float16, torch.bfloat16, torch.float32], None, torch.bfloat16),
    ([0.2, 0.3, 0.1, 0.4], False, [torch.float32] * 4, torch.float32, torch.float32),
    ([1 / 3, 2 / 3], True, [torch.float32, torch.bfloat16], torch.bfloat16, torch.float32),
]


BACKENDS = pytest.mark.parametrize("native", [True, False], ids=["C", "numpy"])


def test_c_kernel_is_built():
    """The install builds the C kernel wherever a compiler exists (as here and in CI)."""
    assert fastpath._fastlinear is not None, "calmerge.merge.fastpath._fastlinear was not built"
    assert LinearKernel(8).native
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and " avx2" in cpuinfo.read_text():  # the AVX2+FMA loop is chosen
        flags = cpuinfo.read_text().split()
        assert int("avx2" in flags and "fma" in flags) == fastpath._fastlinear.AVX2_FMA


@BACKENDS
@pytest.mark.parametrize(("weights", "normalize", "dtypes", "compute", "out_dtype"), CASES)
def test_kernel_is_bitwise_the_torch_linear(native, weights, normalize, dtypes, compute, out_dtype):
    n = 70_001
    xs = _inputs(n, dtypes, seed=len(weights) + int(normalize))
    cd = compute or xs[0].dtype
    ref = _linear([x.to(cd) for x in xs], weights, normalize).to(cd).to(out_dtype)
    out = np.empty(n * out_dtype.itemsize, np.uint8)
    status = LinearKernel(n, native=native).run(
        [_raw(x) for x in xs], [TAGS[x.dtype] for x in xs], weights, normalize, TAGS[cd], out,
        TAGS[out_dtype],
    )
    assert status == "ok"
    assert np.array_equal(out, _raw(ref))


@BACKENDS
def test_kernel_reports_overflow_and_nan(native):
    big = torch.full((64,), 3e38)
    out = np.empty(64 * 4, np.uint8)  # room for fp32
    kernel = LinearKernel(64, native=native)
    assert kernel.run([_raw(big), _raw(big)], ["F32", "F32"], [2.0, 0.5], False, "F32", out,
                      "F32") == "nonfinite"
    # weights summing to 0 with normalize: 0/0 — the engine hands such tensors to torch
    assert kernel.run([_raw(big), _raw(big)], ["F32", "F32"], [1.0, -1.0], True, "F32", out,
                      "BF16") == "nan"


def test_significant_bits():
    assert significant_bits(np.float32(0.5)) == 1
    assert significant_bits(np.float32(0.75)) == 2
    assert significant_bits(np.float32(0.0)) == 0
    assert significant_bits(np.float32(0.6)) == 23  # 0x3F19999A


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kernels")
    base = make_model(root / "base", seed=0, chat=False, dtype=torch.bfloat16)
    return {
        "base": base,
        "a": make_model(root / "a", seed=1, base=base, scale=0.2, dtype=torch.bfloat16),
        "ext": make_model(root / "ext", seed=3, base=base, scale=0.2, extra_vocab=3),
    }


def _bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.safetensors"))}


@pytest.mark.parametrize(("aligned", "lam", "out_dtype"), [
    ("a", 0.5, None), ("a", 0.6, None), ("a", 1.3, "float16"), ("ext", 0.6, "bfloat16"),
    ("ext", 0.6, "float32"),
])
def test_engine_kernel_paths_equal_torch_path(models, tmp_path, aligned, lam, out_dtype):
    cfg = engine.pair_config(models["base"], models[aligned], lam, out_dtype=out_dtype)
    plan = plan_merge(cfg)
    assert kernel_ok(plan)
    outs = {}
    for kernels, native in ((False, None), (True, True), (True, False)):
        d = tmp_path / f"k{kernels}{native}"
        d.mkdir()
        execute(plan, d, max_shard_size=200_000, quiet=True, kernels=kernels, native=native)
        outs[kernels, native] = _bytes(d)
    torch_out = outs.pop((False, None))
    assert len(torch_out) > 1
    assert outs[True, True] == torch_out
    assert outs[True, False] == torch_out


def test_engine_kernel_path_names_a_nonfinite_input(models, tmp_path):
    from safetensors.torch import load_file, save_file

    from calmerge.errors import CheckpointError

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in models["a"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    shard = next(bad.glob("*.safetensors"))
    state = load_file(shard)
    name = sorted(state)[-1]
    state[name].view(-1)[-1] = float("nan")
    save_file(state, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=name):
        engine.merge_pair(models["base"], bad, 0.6, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_linear_merge_does_not_import_torch(models, tmp_path):
    code = (
        "import sys\n"
        "from calmerge.merge.engine import merge_pair\n"
        f"merge_pair({str(models['base'])!r}, {str(models['a'])!r}, 0.6, {str(tmp_path / 'o')!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@BACKENDS
@pytest.mark.parametrize("out_tag", ["F16", "BF16"])
def test_narrowing_matches_numpy_and_torch_over_the_whole_range(native, out_tag):
    """fp32 → fp16/bf16 on random bit patterns of every exponent (subnormals, rounding ties at
    the overflow edge, ±inf) and every finite fp16/bf16 pattern back to fp32."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 0x7F800000, 200_000, dtype=np.uint32)
    bits[:2000] = rng.integers(0x33000000, 0x38800000, 2000)  # fp16 subnormal range
    bits[2000:2100] = 0x477FF000 + np.arange(-50, 50)  # around 65520 (fp16 overflow tie)
    bits[2100:2200] = 0x7F7FFF00 + np.arange(100)  # bf16 overflow to inf
    bits[::2] |= 0x80000000
    x = bits.view(np.float32) + np.float32(0)  # fma(x, 1, +0) turns −0 into +0
    kernel = LinearKernel(len(x), native=native)
    out = np.empty(len(x) * 2, np.uint8)
    assert kernel.run([x.view(np.uint8)], ["F32"], [1.0], False, "F32", out, out_tag) in (
        "ok", "nonfinite"
    )
    dt = torch.float16 if out_tag == "F16" else torch.bfloat16
    assert np.array_equal(out, _raw(torch.from_numpy(x).to(dt)))
    # every finite pattern of the narrow type, widened back (exact)
    small = np.arange(0x10000, dtype=np.uint16)
    finite = torch.from_numpy(small.view(np.int16)).view(dt).float().isfinite().numpy()
    small = small[finite]
    wide = np.empty(len(small) * 4, np.uint8)
    assert LinearKernel(len(small), native=native).run(
        [small.view(np.uint8)], [out_tag], [1.0], False, "F32", wide, "F32"
    ) == "ok"
    expect = torch.from_numpy(small.view(np.int16)).view(dt).float() + 0.0
    assert np.array_equal(wide, _raw(expect))


def test_without_the_c_extension_the_numpy_kernel_is_chosen(monkeypatch, models, tmp_path):
    """An install without a C compiler merges with the numpy kernel, to the same bytes."""
    plan = plan_merge(engine.pair_config(models["base"], models["a"], 0.6))
    (tmp_path / "c").mkdir()
    execute(plan, tmp_path / "c", max_shard_size=200_000, quiet=True)
    monkeypatch.setattr(fastpath, "_fastlinear", None)
    assert not LinearKernel(8).native
    with pytest.raises(RuntimeError, match="not built"):
        LinearKernel(8, native=True)
    (tmp_path / "numpy").mkdir()
    execute(plan, tmp_path / "numpy", max_shard_size=200_000, quiet=True)
    assert _bytes(tmp_path / "numpy") == _bytes(tmp_path / "c")
