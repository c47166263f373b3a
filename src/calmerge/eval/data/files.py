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

#: bounds on a data file, checked while it is read so memory stays bounded: a line (a JSONL row,
#: a CSV record's physical line) of at most 1 MiB, at most a million lines
MAX_LINE_BYTES = 1 << 20
MAX_ROWS = 1_000_000


def _lines(path: Path, fh: Any, at: list[int] | None = None) -> Iterator[str]:
    """The lines of binary `fh`, each read with a bound (`readline(limit)`: a 5 GB line is never
    held) and decoded as UTF-8 on its own, so an error names the exact `path:line`."""
    lineno = 0
    while True:
        lineno += 1
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(
                f"{path}:{lineno}: line longer than {MAX_LINE_BYTES:,} bytes",
                "is this the right file? one item per line",
            )
        if lineno > MAX_ROWS:
            raise DataError(
                f"{path}:{lineno}: more than {MAX_ROWS:,} lines", "split the file or sample it"
            )
        if at is not None:
            at[0] = lineno  # the line being parsed, for errors the csv module raises
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}:{lineno}: not UTF-8 text", "save the file as UTF-8") from None


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, raw row) from JSONL or CSV; line numbers are 1-based file lines."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with path.open("rb") as fh:
            for lineno, line in enumerate(_lines(path, fh), start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{lineno}: not valid JSON ({exc.msg})", "one JSON object per line"
                    ) from None
                except RecursionError:
                    raise DataError(
                        f"{path}:{lineno}: JSON nested too deeply", "one flat object per line"
                    ) from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object", "one object per line")
                yield lineno, row
    elif suffix in (".csv", ".tsv"):
        with path.open("rb") as fh:  # lines keep their own \r\n, as newline="" would
            at = [0]
            reader = csv.DictReader(_lines(path, fh, at), delimiter="\t" if suffix == ".tsv" else ",")
            rows = iter(reader)
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    return
                except csv.Error as exc:  # a field past csv.field_size_limit(), a stray NUL, …
                    raise DataError(
                        f"{path}:{at[0]}: not valid CSV ({exc})",
                        "quote fields that contain the delimiter; keep fields under 128 KB",
                    ) from None
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
