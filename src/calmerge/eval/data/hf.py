"""Items from Hugging Face `datasets`: hub names, local folders, packaged builders over files.

Why a module of its own: a dataset reference has its own grammar (`PATH[:CONFIG][:SPLIT]`), a
split chosen when none is named (test > validation), and schemas to recognise (MMLU, ARC,
OpenBookQA, HellaSwag) or to be told with `?question=…&choices=…&answer=…`. `datasets` is
imported only when an `hf:` reference is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calmerge.errors import DataError, did_you_mean
from calmerge.eval.data.items import LETTERS, Item, _answer_index, _item
from calmerge.eval.data.sources import (
    _checked,
    _one_split,
    _reason,
    _require,
    _split_query,
    data_source,
)

_HF_KEYS = ("config", "split", "question", "choices", "labels", "answer", "id", "subject")
_HF_BUILDERS = ("json", "csv", "parquet", "arrow", "pandas")  # packaged builders over data files
_HF_SUFFIXES = {
    ".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv",
    ".parquet": "parquet", ".arrow": "arrow",
}
_SPLIT_WORDS = ("train", "validation", "valid", "val", "dev", "test")
_DEFAULT_SPLITS = ("test", "validation", "dev", "val", "valid")
# Common multiple-choice schemas, tried in order: MMLU (question/choices/answer), ARC and
# CommonsenseQA (question + choices{text,label} + answerKey), OpenBookQA (question_stem),
# HellaSwag (ctx/endings/label).
_QUESTION_COLUMNS = ("question", "question_stem", "ctx", "query", "prompt")
_CHOICE_COLUMNS = ("choices", "endings", "options")
_ANSWER_COLUMNS = ("answer", "answerKey", "label", "gold", "target")
_HF_HINT = "pip install datasets  (or: pip install 'calmerge[lmeval]')"


def _is_split_word(text: str) -> bool:
    """`hf:PATH:X` — X is a split if it looks like one (`test`, `train[:100]`), else a config."""
    return "[" in text or text.split("[")[0] in _SPLIT_WORDS


@dataclass(frozen=True)
class _HfSpec:
    path: str
    config: str | None
    split: str | None
    data_files: str | None
    builder: str | None
    from_disk: bool


def _hf_spec(target: str, params: dict[str, str], split: str | None, ref: str) -> _HfSpec:
    parts = re.split(r":(?![^\[]*\])", target)  # a slice such as test[:100] keeps its colon
    path, rest = parts[0], parts[1:]
    if not path:
        raise DataError(f"{ref}: no dataset named", "e.g. hf:cais/mmlu:abstract_algebra:test")
    config = ref_split = data_files = builder = None
    from_disk = False
    if path in _HF_BUILDERS:
        if not rest or not rest[0]:
            raise DataError(
                f"{ref}: the '{path}' builder needs data files",
                f"e.g. hf:{path}:/data/items.{path}",
            )
        builder, data_files, rest = path, str(Path(rest[0]).expanduser()), rest[1:]
        if not any(c in data_files for c in "*?[") and not Path(data_files).exists():
            raise DataError(f"{ref}: data files {data_files} not found", "check the path")
        if len(rest) > 1:
            raise DataError(f"{ref}: too many ':' fields", f"hf:{path}:FILES[:SPLIT]")
        ref_split = rest[0] if rest else None
    else:
        if len(rest) == 1:
            config, ref_split = (None, rest[0]) if _is_split_word(rest[0]) else (rest[0], None)
        elif len(rest) == 2:
            config, ref_split = rest
        elif len(rest) > 2:
            raise DataError(f"{ref}: too many ':' fields", "hf:PATH[:CONFIG][:SPLIT]")
        local = Path(path).expanduser()
        if path.startswith(("/", ".", "~")) or local.exists():
            if not local.exists():
                raise DataError(f"{ref}: {local} not found", "check the path")
            path = str(local)
            if local.is_file():
                builder = _HF_SUFFIXES.get(local.suffix.lower())
                if builder is None:
                    raise DataError(
                        f"{ref}: cannot read '{local.suffix}' files",
                        f"use one of {', '.join(sorted(_HF_SUFFIXES))}",
                    )
                data_files = path
            else:
                from_disk = any((local / f).is_file() for f in ("dataset_dict.json", "state.json"))
    if "config" in params:
        if config not in (None, params["config"]):
            raise DataError(
                f"{ref}: conflicting configs {config}, {params['config']}", "name it once"
            )
        config = params["config"]
    return _HfSpec(path, config, _one_split(ref, ref_split, params.get("split"), split),
                   data_files, builder, from_disk)


def _hf_load(spec: _HfSpec, ref: str) -> tuple[Any, str | None]:
    """(Dataset, split name) — one split, chosen as the user said or test > validation > train."""
    datasets = _require("datasets", ref, _HF_HINT)
    errors = (OSError, ValueError, KeyError, datasets.exceptions.DatasetsError)
    try:
        if spec.from_disk:
            loaded = datasets.load_from_disk(spec.path)
        else:
            kwargs: dict[str, Any] = {"split": spec.split}
            if spec.data_files is not None:
                kwargs["data_files"] = spec.data_files
                if spec.data_files.lower().endswith(".tsv"):
                    kwargs["delimiter"] = "\t"
            elif spec.config is not None:
                kwargs["name"] = spec.config
            loaded = datasets.load_dataset(spec.builder or spec.path, **kwargs)
    except errors as exc:
        raise DataError(
            f"{ref}: cannot load the dataset ({_reason(exc)})",
            "check the name, config and split; offline, only local files and the HF cache work",
        ) from None
    if isinstance(loaded, datasets.Dataset):
        split_name = str(loaded.split) if loaded.split is not None else spec.split
        if spec.from_disk and spec.split is not None and split_name != spec.split:
            raise DataError(
                f"{ref}: {spec.path} holds one dataset without splits", "leave out the split"
            )
        return loaded, split_name
    names = list(loaded.keys())
    if spec.split is not None:
        if spec.split not in loaded:
            raise DataError(f"{ref}: no split '{spec.split}'", f"splits: {', '.join(names)}")
        return loaded[spec.split], spec.split
    if len(names) == 1:
        return loaded[names[0]], names[0]
    for name in _DEFAULT_SPLITS:
        if name in loaded:
            return loaded[name], name
    raise DataError(f"{ref}: several splits and none is test or validation",
                    f"name one: {', '.join(names)}")


def _get(row: dict[str, Any], path: str) -> Any:
    """Follow a dotted path (`choices.text`) into a row; None when any step is missing."""
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _hf_fields(columns: Sequence[str], params: dict[str, str], ref: str) -> dict[str, Any]:
    """Column paths for each Item field: explicit `?question=…` options, else a known schema."""

    def check(path: str, key: str) -> str:
        if path.split(".")[0] not in columns:
            raise DataError(
                f"{ref}: ?{key}={path}: no column '{path.split('.')[0]}'",
                did_you_mean(path.split(".")[0], columns) or f"columns: {', '.join(columns)}",
            )
        return path

    def pick(key: str, defaults: Sequence[str]) -> str:
        if key in params:
            return check(params[key], key)
        for name in defaults:
            if name in columns:
                return name
        raise DataError(
            f"{ref}: no {key} column (looked for {', '.join(defaults)})",
            f"name it with ?{key}=COLUMN; columns: {', '.join(columns)}",
        )

    if "choices" in params:
        choices = [check(c.strip(), "choices") for c in params["choices"].split(",") if c.strip()]
    elif not any(c in columns for c in _CHOICE_COLUMNS) and {"A", "B"} <= set(columns):
        choices = [c for c in LETTERS if c in columns]  # one column per option: A, B, C, …
    else:
        choices = [pick("choices", _CHOICE_COLUMNS)]
    fields: dict[str, Any] = {
        "question": pick("question", _QUESTION_COLUMNS),
        "choices": choices,
        "answer": pick("answer", _ANSWER_COLUMNS),
        "labels": check(params["labels"], "labels") if "labels" in params else None,
    }
    for key in ("id", "subject"):
        default = key if key in columns else None
        fields[key] = check(params[key], key) if key in params else default
    return fields


def _hf_choices(row: dict[str, Any], fields: dict[str, Any]) -> tuple[Any, Any]:
    """(choice texts, their labels or None). Labels map keys like ARC's "1"/"A" to positions."""
    paths = fields["choices"]
    labels = _get(row, fields["labels"]) if fields["labels"] else None
    if len(paths) > 1:
        values = [_get(row, p) for p in paths]
        return [v for v in values if v not in (None, "")], labels
    value = _get(row, paths[0])
    if isinstance(value, dict) and "text" in value:
        return value["text"], labels if labels is not None else value.get("label")
    if labels is None and paths[0].endswith(".text"):
        labels = _get(row, paths[0][: -len("text")] + "label")
    return value, labels


def _hf_answer(raw: Any, choices: Any, labels: Any, where: str) -> Any:
    """The answer, resolved through choice labels (ARC's 1-based "1" keys) or a choice's text."""
    if labels is not None and raw is not None:
        keys = [str(label) for label in labels]
        if str(raw) in keys:
            return keys.index(str(raw))
    if isinstance(raw, str) and isinstance(choices, list):
        try:
            return _answer_index(raw, len(choices), where)
        except DataError:
            if raw in [str(c) for c in choices]:
                return [str(c) for c in choices].index(raw)
            raise
    return raw


@data_source("hf")
def _hf_items(body: str, split: str | None) -> list[Item]:
    """`hf:PATH[:CONFIG][:SPLIT][?question=…&choices=…&answer=…]` — see docs/evaluation.md."""
    ref = f"hf:{body}"
    target, params = _split_query(body, ref, _HF_KEYS)
    spec = _hf_spec(target, params, split, ref)
    dataset, split_name = _hf_load(spec, ref)
    fields = _hf_fields(list(dataset.column_names), params, ref)
    label = split_name or "row"
    entries: list[tuple[str, Item]] = []
    for i, row in enumerate(dataset):
        where = f"{ref} [{label} row {i}]"
        choices, labels = _hf_choices(row, fields)
        record = {
            "id": _get(row, fields["id"]) if fields["id"] else None,
            "question": _get(row, fields["question"]),
            "choices": choices,
            "answer": _hf_answer(_get(row, fields["answer"]), choices, labels, where),
            "subject": (_get(row, fields["subject"]) if fields["subject"] else None) or spec.config,
        }
        if record["id"] is None:
            del record["id"]
        entries.append((where, _item(record, where, fallback_id=f"{label}-{i}")))
    return _checked(entries, ref)
