"""calmerge inspect / diff / merge: happy paths and every bad input (one line, exit 2, no output)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import make_model

from calmerge.cli import main


@pytest.fixture(scope="module")
def m(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    base = make_model(root / "base", seed=0)
    aligned = make_model(root / "aligned", seed=1, base=base, scale=0.2)
    nan = root / "nan"
    shutil.copytree(aligned, nan)
    state = load_file(str(nan / "model.safetensors"))
    state["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(state, str(nan / "model.safetensors"), metadata={"format": "pt"})
    trunc = root / "trunc"
    shutil.copytree(aligned, trunc)
    f = trunc / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-64])
    return {
        "root": root,
        "base": base,
        "aligned": aligned,
        "nan": nan,
        "trunc": trunc,
        "qwen": make_model(root / "qwen", seed=0, arch="qwen2"),
    }


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect(m, capsys):
    code, out, _ = run(["inspect", m["aligned"]], capsys)
    assert code == 0
    assert "LlamaForCausalLM" in out and "chat_template" in out and "True" in out


def test_diff_table_and_png(m, tmp_path, capsys):
    png = tmp_path / "d.png"
    code, out, _ = run(["diff", m["base"], m["aligned"], "--png", png], capsys)
    assert code == 0 and "layer 1" in out and "embeddings" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_merge_lambda_and_yaml(m, tmp_path, capsys):
    code, out, _ = run(
        [
            "merge",
            "--base",
            m["base"],
            "--aligned",
            m["aligned"],
            "--lam",
            "1.3",
            "-o",
            tmp_path / "x",
            "--quiet",
            "--out-dtype",
            "bfloat16",
        ],
        capsys,
    )
    assert code == 0 and "wrote" in out
    yml = tmp_path / "mk.yml"
    yml.write_text(
        f"merge_method: task_arithmetic\nbase_model: {m['base']}\nmodels:\n"
        f"  - model: {m['aligned']}\n    parameters:\n      weight: 1.3\n"
        "dtype: float32\nout_dtype: bfloat16\n"
    )
    code, _, _ = run(["merge", yml, "-o", tmp_path / "y", "--quiet"], capsys)
    assert code == 0
    a = load_file(str(tmp_path / "x" / "model.safetensors"))
    b = load_file(str(tmp_path / "y" / "model.safetensors"))
    for name in a:  # linear (−0.3, 1.3) and task arithmetic 1.3 agree to bf16 rounding
        torch.testing.assert_close(a[name].float(), b[name].float(), atol=2e-2, rtol=1e-2)


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yml"
    p.write_text(text)
    return p


BAD = {
    "unknown method": (
        lambda m, t: [
            "merge",
            "--base",
            m["base"],
            "--aligned",
            m["aligned"],
            "--lam",
            "0.5",
            "--method",
            "tiess",
        ],
        "did you mean 'ties'",
    ),
    "non-numeric lambda": (
        lambda m, t: ["merge", "--base", m["base"], "--aligned", m["aligned"], "--lam", "half"],
        "--lam 'half': not a number",
    ),
    "unknown yaml key": (
        lambda m, t: [
            "merge",
            _yaml(
                t, (f"merge_method: linear\nmodels:\n  - model: {m['base']}\nout_dtyp: float16\n")
            ),
        ],
        "did you mean 'out_dtype'",
    ),
    "unknown our-yaml key": (
        lambda m, t: [
            "merge",
            _yaml(t, (f"method: linear\nmodels: [{m['base']}]\nbsae: {m['base']}\n")),
        ],
        "did you mean 'base'",
    ),
    "unknown parameter": (
        lambda m, t: [
            "merge",
            _yaml(
                t,
                (
                    f"merge_method: task_arithmetic\nbase_model: {m['base']}\nmodels:\n"
                    f"  - model: {m['aligned']}\n    parameters: {{wieght: 0.5}}\n"
                ),
            ),
        ],
        "did you mean 'weight'",
    ),
    "missing parameter": (
        lambda m, t: [
            "merge",
            _yaml(
                t,
                (
                    f"merge_method: task_arithmetic\nbase_model: {m['base']}\nmodels:\n"
                    f"  - model: {m['aligned']}\n"
                ),
            ),
        ],
        "parameter 'weight' is required",
    ),
    "unsupported slices": (
        lambda m, t: [
            "merge",
            _yaml(
                t,
                (
                    f"merge_method: linear\nslices:\n  - sources: []\nmodels:\n  - model: {m['base']}\n"
                ),
            ),
        ],
        "'slices' is not supported",
    ),
    "architecture mismatch": (
        lambda m, t: ["merge", "--base", m["base"], "--aligned", m["qwen"], "--lam", "0.5"],
        "architecture mismatch",
    ),
    "truncated shard": (
        lambda m, t: ["merge", "--base", m["base"], "--aligned", m["trunc"], "--lam", "0.5"],
        "trunc/model.safetensors: expected",
    ),
    "nan tensor": (
        lambda m, t: ["merge", "--base", m["base"], "--aligned", m["nan"], "--lam", "0.5"],
        "'model.layers.1.mlp.up_proj.weight' contains NaN",
    ),
    "missing model": (
        lambda m, t: ["merge", "--base", m["base"], "--aligned", t / "nowhere", "--lam", "0.5"],
        "no such model directory",
    ),
    "bad shard size": (
        lambda m, t: [
            "merge",
            "--base",
            m["base"],
            "--aligned",
            m["aligned"],
            "--lam",
            "0.5",
            "--max-shard-size",
            "lots",
        ],
        "not a size",
    ),
    "bad dtype": (
        lambda m, t: [
            "merge",
            "--base",
            m["base"],
            "--aligned",
            m["aligned"],
            "--lam",
            "0.5",
            "--out-dtype",
            "bfloat17",
        ],
        "did you mean 'bfloat16'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_nothing_written(m, tmp_path, capsys, case):
    make_argv, expected = BAD[case]
    argv = [*make_argv(m, tmp_path), "-o", tmp_path / "out", "--quiet"]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _out, err = run(argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip() and "warning:" not in line]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert expected in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_output_is_a_file(m, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    argv = ["merge", "--base", m["base"], "--aligned", m["aligned"], "--lam", "0.5", "--quiet"]
    code, _, err = run([*argv, "-o", target], capsys)
    assert code == 2 and "is a file" in err and target.read_text() == "keep me"
    code, _, err = run([*argv, "-o", target / "sub"], capsys)
    assert code == 2 and "cannot write into" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_existing_output_needs_force_and_force_replaces_only_calmerge_outputs(m, tmp_path, capsys):
    """A directory calmerge did not write is never replaced, `--force` or not (it could be a
    project); one calmerge wrote (its `.calmerge-output` marker) is replaced with `--force`."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious").write_text("x")
    argv = ["merge", "--base", m["base"], "--aligned", m["aligned"], "--lam", "0.5", "--quiet"]
    code, _, err = run([*argv, "-o", out], capsys)
    assert code == 2 and "--force" in err and (out / "precious").exists()
    code, _, err = run([*argv, "-o", out, "--force"], capsys)
    assert code == 2 and "not written by calmerge" in err and (out / "precious").exists()
    merged = tmp_path / "merged"
    assert run([*argv, "-o", merged], capsys)[0] == 0
    assert (merged / ".calmerge-output").is_file()
    code, _, err = run([*argv, "-o", merged], capsys)
    assert code == 2 and "--force" in err
    code, _, _ = run([*argv[:-2], "0.25", "--quiet", "-o", merged, "--force"], capsys)
    assert code == 0 and json.loads((merged / "config.json").read_text())["model_type"] == "llama"


def test_real_process_exit_code_and_single_line(m, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "calmerge.cli",
            "merge",
            "--base",
            str(m["base"]),
            "--aligned",
            str(m["aligned"]),
            "--lam",
            "x",
            "-o",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
