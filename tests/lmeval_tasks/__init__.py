"""Local copies of real lm-evaluation-harness 0.4.13 tasks, over tiny local data in each
dataset's own schema, for the fidelity tests (`tests/e2e/test_lmeval_fidelity.py`).

Why copies: the point is to run lm-eval's *own* task programs (truthfulqa's process_results,
gpqa's shuffling process_docs, winogrande's one-context-per-choice, mmlu's group of groups)
without the hub. Each YAML differs from lm-eval's only in its names (a `calmerge_` prefix, so
they never collide with the built-ins) and its dataset (`dataset_path: json` over the JSONL
files here); the Python files are verbatim. HF `datasets` resolves relative data paths against
the working directory, so the YAMLs say `__DATA__/…` and `materialize` writes a copy of the
tree with that replaced by the copy's absolute path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLACEHOLDER = "__DATA__"


def materialize(dst: Path) -> Path:
    """Copy the task tree into `dst` with every `__DATA__` in a YAML set to `dst`; returns `dst`
    (the folder to pass as lm-eval's `include_path`)."""
    dst = Path(dst).resolve()
    shutil.copytree(HERE, dst, ignore=shutil.ignore_patterns("__init__.py", "__pycache__"),
                    dirs_exist_ok=True)
    for path in dst.rglob("*"):
        if path.is_file() and (path.suffix == ".yaml" or path.name.endswith("_yaml")):
            path.write_text(path.read_text().replace(PLACEHOLDER, str(dst)))
    return dst
