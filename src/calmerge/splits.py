"""Split names: "test", "dev", and per task of a multi-task run "test@mmlu".

Why a leaf module: the sweep writes these names, the store keeps them, analysis and report read
them; the one rule for building and reading them lives below all of those.
"""

from __future__ import annotations

#: joins a split and a task in the split names of a multi-task run ("test@mmlu"); task names
#: cannot contain it
TASK_SEP = "@"


def split_key(split: str, task: str | None) -> str:
    """The store's split name of a task's split ("test@mmlu"); the plain split for None."""
    return split if task is None else f"{split}{TASK_SEP}{task}"


def parse_split(key: str) -> tuple[str, str | None]:
    """("test", "mmlu") from "test@mmlu"; ("test", None) from "test"."""
    split, sep, task = key.partition(TASK_SEP)
    return split, (task if sep else None)
