"""Multiple-choice items and open-ended prompts: files, Hugging Face datasets, lm-eval tasks.

Every row is validated before any model work starts, and a bad row is reported with where it
came from (`file:line`, or the ref plus split and row) so the user can fix it; answers may be an
index (0-based) or a letter ("B"). Dev and test splits are kept apart by file (or by the `split`
column when one file holds both), by dataset split, or by lm-eval's split roles.

A data reference is either a path (JSONL/CSV) or `source:body`, dispatched through a registry of
sources (`@data_source("hf")`), so a new kind of data is one function plus one decorator line:

    items.jsonl                                   a file (also `file:items.jsonl?split=dev`)
    hf:cais/mmlu:abstract_algebra:test            a Hugging Face dataset (path:config:split)
    hf:json:/data/arc.jsonl?choices=opts          a packaged builder over local files
    lmeval:arc_easy?include_path=/my/tasks        an lm-evaluation-harness task, its prompts

`datasets` and `lm_eval` are imported only when such a reference is loaded.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import importlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from calmerge.errors import DataError, did_you_mean

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Item:
    """One multiple-choice question; `answer` is the 0-based index of the correct choice."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""


@dataclass(frozen=True)
class OpenPrompt:
    """One open-ended prompt for sampling (diversity)."""

    id: str
    prompt: str


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, raw row) from JSONL or CSV; line numbers are 1-based file lines."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{lineno}: not valid JSON ({exc.msg})", "one JSON object per line"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object", "one object per line")
                yield lineno, row
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                yield reader.line_num, _csv_row(row)
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}'", "use .jsonl or .csv")


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """CSV columns: choices as a JSON list in `choices`, or as columns A, B, C, …"""
    out = {k: v for k, v in row.items() if k is not None}
    if "choices" in out and isinstance(out["choices"], str):
        text = out["choices"].strip()
        try:
            out["choices"] = json.loads(text) if text.startswith("[") else text.split("|")
        except json.JSONDecodeError:
            out["choices"] = text.split("|")
    elif "A" in out:
        out["choices"] = [out.pop(c) for c in LETTERS if c in out and out[c] not in (None, "")]
    return out


def _answer_index(raw: Any, n_choices: int, where: str) -> int:
    """Index or letter → 0-based index, range-checked."""
    if isinstance(raw, bool):
        raise DataError(
            f"{where}: 'answer' must be an index or a letter, got {raw!r}",
            "use a 0-based index or a letter such as B",
        )
    if isinstance(raw, str):
        text = raw.strip()
        if len(text) == 1 and text.upper() in LETTERS:
            idx = LETTERS.index(text.upper())
        elif text.lstrip("-").isdigit():
            idx = int(text)
        else:
            raise DataError(
                f"{where}: 'answer' {raw!r} is not an index or a letter",
                "use a 0-based index or a letter such as B",
            )
    elif isinstance(raw, int):
        idx = raw
    else:
        raise DataError(
            f"{where}: 'answer' must be an index or a letter, got {raw!r}",
            "use a 0-based index or a letter such as B",
        )
    if not 0 <= idx < n_choices:
        raise DataError(
            f"{where}: answer {raw!r} out of range for {n_choices} choices",
            f"use 0..{n_choices - 1} or A..{LETTERS[n_choices - 1]}",
        )
    return idx


def _item(row: dict[str, Any], where: str, fallback_id: str) -> Item:
    for key in ("question", "choices", "answer"):
        if key not in row or row[key] is None:
            raise DataError(f"{where}: missing '{key}'", "rows need question, choices, answer")
    choices = row["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str | int | float) for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of strings", 'e.g. "choices": ["red", "blue"]')
    choices = tuple(str(c) for c in choices)
    if len(choices) < 2:
        raise DataError(
            f"{where}: {len(choices)} choice(s); at least 2 are needed",
            "a multiple-choice item needs two or more choices",
        )
    if any(not c.strip() for c in choices):
        raise DataError(f"{where}: empty choice text", "every choice needs some text")
    return Item(
        id=str(row.get("id", fallback_id)),
        question=str(row["question"]),
        choices=choices,
        answer=_answer_index(row["answer"], len(choices), where),
        subject=str(row.get("subject") or ""),
    )


def load_items(path: str | Path, *, split: str | None = None) -> list[Item]:
    """Read multiple-choice items; with `split`, keep only rows whose `split` column matches.

    Raises DataError naming `file:line` for malformed rows, out-of-range answers, fewer than two
    choices and duplicate ids; and for an empty result (a silent empty eval would report nothing).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found", "check the path")
    items: list[Item] = []
    seen: dict[str, int] = {}
    for lineno, row in _rows(path):
        if split is not None and str(row.get("split", "")) != split:
            continue
        where = f"{path}:{lineno}"
        item = _item(row, where, fallback_id=f"{path.stem}-{lineno}")
        if item.id in seen:
            raise DataError(
                f"{where}: duplicate id '{item.id}' (first seen on line {seen[item.id]})",
                "ids must be unique",
            )
        seen[item.id] = lineno
        items.append(item)
    if not items:
        extra = f" with split '{split}'" if split is not None else ""
        raise DataError(f"{path}: no items{extra}", "the file has no usable rows")
    return items


def load_prompts(path: str | Path) -> list[OpenPrompt]:
    """Read open-ended prompts (JSONL `{id, prompt}`; CSV with the same columns)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found", "check the path")
    prompts: list[OpenPrompt] = []
    seen: set[str] = set()
    for lineno, row in _rows(path):
        where = f"{path}:{lineno}"
        text = row.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: missing or empty 'prompt'", "rows need {id, prompt}")
        pid = str(row.get("id", f"{path.stem}-{lineno}"))
        if pid in seen:
            raise DataError(f"{where}: duplicate id '{pid}'", "ids must be unique")
        seen.add(pid)
        prompts.append(OpenPrompt(id=pid, prompt=text))
    if not prompts:
        raise DataError(f"{path}: no prompts", "the file has no usable rows")
    return prompts
