"""Time `calmerge merge` against `mergekit-yaml` (linear 0.5) and the IO floor, in one run.

Builds (once, cached) a bf16 Llama pair in 3 safetensors shards (~200M parameters with the
default 10 layers), warms the page cache, then runs each contender as a child process under
/usr/bin/time -v (wall time, peak RSS):

- mergekit: `mergekit-yaml` on the equivalent linear recipe;
- calmerge: the `calmerge merge` CLI, end to end;
- calmerge engine: `merge_pair` in a child that has already imported calmerge; the child times
  the merge itself, so Python and library start-up (constant in model size) is left out;
- io floor: a child that reads both inputs once and writes one model-sized output, with no
  arithmetic (its own timing of that is the in-process floor).

    .venv/bin/python benchmarks/merge_vs_mergekit.py [--cache /tmp/calmerge-bench] [--repeat 2]
        [--lam 0.5] [--layers 10] [--no-mergekit]

`--lam 0.6` is the general case next to λ = 0.5 (exact products). Ratios are given for the
medians and for the best runs of each contender: on a shared VM the floor's best run is at times
an outlier (0.33 s against a median of 0.53 s on the 2-CPU machine of the README), so the medians
are the robust comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 10,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
}
IO_FLOOR = r"""
import os, sys, time
start = time.perf_counter()
buf = bytearray(64 << 20)
total = 0
for path in sys.argv[2:]:
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            total += n
out = sys.argv[1]
size = sum(os.path.getsize(p) for p in sys.argv[2:]) // 2
with open(out, "wb", buffering=0) as fh:
    written = 0
    while written < size:
        written += fh.write(memoryview(buf)[: min(len(buf), size - written)])
print(f"inprocess {time.perf_counter() - start}", file=sys.stderr)
"""
ENGINE = r"""
import sys, time
from calmerge.merge.engine import merge_pair
start = time.perf_counter()
merge_pair(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[1], out_dtype="bfloat16")
print(f"inprocess {time.perf_counter() - start}", file=sys.stderr)
"""


def shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    out = {"model.embed_tokens.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        for proj in ("q", "k", "v", "o"):
            out[f"{p}self_attn.{proj}_proj.weight"] = (h, h)
        out[f"{p}mlp.gate_proj.weight"] = (i, h)
        out[f"{p}mlp.up_proj.weight"] = (i, h)
        out[f"{p}mlp.down_proj.weight"] = (h, i)
        out[f"{p}input_layernorm.weight"] = (h,)
        out[f"{p}post_attention_layernorm.weight"] = (h,)
    out["model.norm.weight"] = (h,)
    out["lm_head.weight"] = (v, h)
    return out


def build(path: Path, seed: int, base: Path | None) -> None:
    """A random bf16 Llama in 3 shards (aligned = base + small seeded noise)."""
    import torch
    from safetensors.torch import load_file, save_file

    if (path / "model.safetensors.index.json").is_file():
        return
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    names = list(shapes(CONFIG).items())
    parts = [names[k::3] for k in range(3)]
    parts = [
        names[: len(names) // 3],
        names[len(names) // 3 : 2 * len(names) // 3],
        names[2 * len(names) // 3 :],
    ]
    weight_map = {}
    base_state: dict = {}
    if base is not None:
        for f in sorted(base.glob("model-*.safetensors")):
            base_state.update(load_file(str(f)))
    for k, part in enumerate(parts):
        fname = f"model-{k + 1:05d}-of-00003.safetensors"
        state = {}
        for name, shape in part:
            if base is None:
                t = torch.randn(shape, generator=gen) * 0.02
            else:
                t = base_state[name].float() + torch.randn(shape, generator=gen) * 0.002
            state[name] = t.to(torch.bfloat16)
            weight_map[name] = fname
        save_file(state, str(tmp / fname), metadata={"format": "pt"})
    size = sum((tmp / f).stat().st_size for f in set(weight_map.values()))
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map})
    )
    (tmp / "config.json").write_text(json.dumps(CONFIG))
    os.replace(tmp, path)


def timed(cmd: list[str]) -> tuple[float, float | None, float]:
    """(wall seconds, the child's own `inprocess` seconds if it prints them, peak RSS MB) of a
    child process via /usr/bin/time -v."""
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    h, mnt, s = wall.groups()
    seconds = int(h or 0) * 3600 + int(mnt) * 60 + float(s)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    own = re.search(r"^inprocess ([\d.]+)$", proc.stderr, re.MULTILINE)
    return seconds, (float(own.group(1)) if own else None), rss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "calmerge-bench")
    ap.add_argument("--repeat", type=int, default=2, help="runs per contender (best is kept)")
    ap.add_argument("--lam", type=float, default=0.5, help="θ_base + λ·Δ (mergekit: 1−λ, λ)")
    ap.add_argument("--layers", type=int, default=10, help="decoder layers (10 ≈ 200M params)")
    ap.add_argument("--no-mergekit", action="store_true", help="skip mergekit (large models)")
    args = ap.parse_args()
    CONFIG["num_hidden_layers"] = args.layers
    root = args.cache if args.layers == 10 else args.cache / f"layers{args.layers}"
    base, aligned = root / "base", root / "aligned"
    build(base, 0, None)
    build(aligned, 1, base)
    n_params = sum(
        a * (b if len(s) > 1 else 1) for s in shapes(CONFIG).values() for a, b in [(s[0], s[-1])]
    )
    files = [str(f) for d in (base, aligned) for f in sorted(d.glob("*.safetensors"))]
    work = root / "runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    yml = work / "linear.yml"
    yml.write_text(
        f"merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {{weight: {1 - args.lam!r}}}\n"
        f"  - model: {aligned}\n    parameters: {{weight: {args.lam!r}}}\ndtype: float32\n"
        "out_dtype: bfloat16\n"
    )
    contenders = {
        "mergekit": lambda o: [
            str(BIN / "mergekit-yaml"), str(yml), o, "--quiet", "--no-copy-tokenizer",
        ],
        "calmerge": lambda o: [
            str(BIN / "calmerge"), "merge", "--base", str(base), "--aligned", str(aligned),
            "--lam", repr(args.lam), "-o", o, "--quiet", "--out-dtype", "bfloat16",
        ],
        "calmerge engine": lambda o: [
            sys.executable, "-c", ENGINE, o, str(base), str(aligned), repr(args.lam),
        ],
        "io floor": lambda o: [sys.executable, "-c", IO_FLOOR, o, *files],
    }
    if args.no_mergekit:
        del contenders["mergekit"]
    timed(contenders["io floor"](str(work / "warm")))  # warm the page cache
    (work / "warm").unlink()
    runs: dict[str, list[tuple[float, float | None, float]]] = {n: [] for n in contenders}
    for _ in range(args.repeat):
        for name, cmd in contenders.items():
            out = work / name.replace(" ", "_")
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
            runs[name].append(timed(cmd(str(out))))
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)

    def best(name: str, k: int) -> float:
        return min(r[k] for r in runs[name])

    def median(name: str, k: int) -> float:
        return statistics.median(r[k] for r in runs[name])

    print(
        f"model: {n_params / 1e6:.0f}M params bf16 ({args.layers} layers), 3 shards; linear "
        f"λ={args.lam}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':16s} {'best s':>7s} {'median s':>9s} {'in-process s':>13s} {'peak RSS MB':>12s}")
    for name, r in runs.items():
        own = f"{median(name, 1):13.2f}" if r[0][1] is not None else f"{'':13s}"
        print(f"{name:16s} {best(name, 0):7.2f} {median(name, 0):9.2f} {own} {best(name, 2):12.0f}")
    print("ratios (median / best):")

    def ratio(label: str, a: str, b: str, k: int, target: str) -> None:
        print(f"  {label:24s} {median(a, k) / median(b, k):5.2f}x / "
              f"{best(a, k) / best(b, k):5.2f}x   {target}")

    if "mergekit" in runs:
        ratio("speed-up vs mergekit", "mergekit", "calmerge", 0, "(target >= 3x)")
        print(f"  {'peak RSS vs mergekit':24s} {best('calmerge', 2) / best('mergekit', 2):5.2f}x"
              "            (target <= 0.5x)")
    ratio("wall vs IO floor", "calmerge", "io floor", 0, "(target <= 1.5x)")
    ratio("engine vs in-process IO", "calmerge engine", "io floor", 1, "(start-up left out)")
    print(f"  start-up (wall − engine) {median('calmerge', 0) - median('calmerge engine', 1):.2f} s")


if __name__ == "__main__":
    main()
