"""benchmarks/gpu_sweep.py runs end to end (tiny sizes) and its sweeps agree with each other
and with mergekit + lm-eval: the script the GPU figures would come from is itself tested."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_sweep.py"), "--smoke"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "resident and streamed points identical: True" in text, text
    assert "max |diff| 0.0000" in text, text  # the same accuracy as mergekit + lm_eval
    for needle in ("speed-up", "sweep / floor", "tokens/s", "parents resident", "streamed from"):
        assert needle in text, (needle, text)
