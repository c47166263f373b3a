"""Shared fixtures: tiny real checkpoints saved with save_pretrained (no network, seeded)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

from tiny import make_model


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> tuple[Path, Path]:
    """(base, aligned): a random tiny Llama and a seeded perturbation of it, fp32."""
    root = tmp_path_factory.mktemp("pair")
    base = make_model(root / "base", seed=0)
    aligned = make_model(root / "aligned", seed=1, base=base, scale=0.2)
    return base, aligned


@pytest.fixture(scope="session")
def llama(tiny_pair):
    """(model, tokenizer) of the tiny base, loaded once for every scoring test that reads it
    (a module may define its own `llama` for another checkpoint)."""
    from calmerge.eval.loading import load_model

    return load_model(tiny_pair[0], device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A scratch root for tests that build their own variants."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def family_pair(tmp_path_factory):
    """`family_pair("gemma3_text")` -> (base, aligned) of a family in tests/families.py, built on
    first use and shared by the whole session."""
    from families import family_pair as build

    root = tmp_path_factory.mktemp("families")
    built: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in built:
            built[name] = build(name, root)
        return built[name]

    return get
