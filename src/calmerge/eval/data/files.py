"""Items and prompts from local files: JSONL (one object a line), CSV/TSV, by `file:line`.

Why a module of its own: a file is the one source whose rows carry line numbers, so its errors
say `path:line` and its duplicate-id check names the first line. `load_prompts` lives here, not
in `items`, because open-ended prompts are only ever read from files and share this reader.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calmerge.errors import DataError
from calmerge.eval.data.items import LETTERS, Item, OpenPrompt, _item
from calmerge.eval.data.sources import _one_split, _split_query, data_source


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


@data_source("file")
def _file_ref(body: str, split: str | None) -> list[Item]:
    """`file:PATH[?split=NAME]` — the same as a plain path, with the split in the reference."""
    target, params = _split_query(body, f"file:{body}", ("split",))
    return _file_items(Path(target), _one_split(f"file:{body}", params.get("split"), split))


def _file_items(path: Path, split: str | None) -> list[Item]:
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
