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
from urllib.parse import unquote

from calmerge.errors import DataError, did_you_mean

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Item:
    """One multiple-choice question; `answer` is the 0-based index of the correct choice.

    `delimiter` is what joins the prompt and a choice in plain format when the item needs its
    own (an lm-eval task's `target_delimiter` other than a space); None = the scorer's (" ").
    """

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""
    delimiter: str | None = None


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
    """Read multiple-choice items from a file or a `source:body` reference (see the module doc).

    For a file, `split` keeps only rows whose `split` column matches; for a dataset or task it
    names the split to read (and must agree with a split given in the reference itself).
    Raises DataError naming where a row came from for malformed rows, out-of-range answers, fewer
    than two choices and duplicate ids; and for an empty result (a silent empty eval would report
    nothing).
    """
    source, body = parse_ref(path)
    if source is None:
        return _file_items(Path(path), split)
    return _SOURCES[source].load(body, split)


def items_digest(items: Sequence[Item]) -> str:
    """sha256 of the items' canonical JSON: ties a run to the data it saw when there is no file.

    A dataset or task reference names data that can change under the same name (a new revision,
    an edited YAML), so a sweep over one is identified by what was loaded, not by the reference.
    """
    def canonical(it: Item) -> dict[str, Any]:  # items without their own delimiter hash as before
        d = dataclasses.asdict(it)
        if d["delimiter"] is None:
            del d["delimiter"]
        return d

    payload = json.dumps(
        [canonical(it) for it in items],
        ensure_ascii=False, sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# ───────────────────────── data references and the source registry ─────────────────────────


Loader = Callable[[str, str | None], list[Item]]  # (reference body, split) -> items


@dataclass(frozen=True)
class DataSource:
    """A registered kind of data: `load(body, split)` returns validated items.

    `native_template` is the prompt template under which the items reproduce the source's own
    prompt (lm-eval items carry the whole context in `question`, so it is `{question}`).
    """

    name: str
    load: Loader
    native_template: str | None = None


_SOURCES: dict[str, DataSource] = {}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(.*)$", re.DOTALL)


def data_source(name: str, *, native_template: str | None = None) -> Callable[[Loader], Loader]:
    """Register `fn(body, split) -> list[Item]` as the loader for references `name:body`."""

    def register(fn: Loader) -> Loader:
        if name in _SOURCES:
            raise ValueError(f"data source '{name}' is registered twice")
        _SOURCES[name] = DataSource(name, fn, native_template)
        return fn

    return register


def data_sources() -> tuple[str, ...]:
    return tuple(sorted(_SOURCES))


def parse_ref(ref: str | Path) -> tuple[str | None, str]:
    """(source name, body) of a data reference; (None, path) for a plain file path.

    An existing file always wins, so a file whose name happens to contain a colon still loads.
    `word:...` that is neither a file nor a registered source is an error, not a confusing
    "file not found".
    """
    text = str(ref)
    match = _SCHEME.match(text)
    if match is None or _exists(text):
        return None, text
    name = match.group(1)
    if name in _SOURCES:
        return name, match.group(2)
    hint = did_you_mean(name, _SOURCES) or f"data sources: {', '.join(data_sources())}"
    raise DataError(f"{text}: no such file, and '{name}:' is not a data source", hint)


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except OSError:  # e.g. a long reference is not a legal file name
        return False


def source_of(ref: str | Path) -> str:
    """'file' for a plain path, else the source name ('hf', 'lmeval', …)."""
    return parse_ref(ref)[0] or "file"


def native_template(ref: str | Path) -> str | None:
    """The prompt template that reproduces the source's own prompts (None: use the default)."""
    source = parse_ref(ref)[0]
    return _SOURCES[source].native_template if source else None


def _split_query(body: str, ref: str, allowed: Sequence[str]) -> tuple[str, dict[str, str]]:
    """`target?k=v&…` → (target, params); unknown keys are errors.

    Values are %-decoded but a `+` stays a `+` (paths such as `/models/a+b` are common; a URL's
    "+ means space" rule would corrupt them).
    """
    target, _, query = body.partition("?")
    params: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = (unquote(x) for x in pair.partition("="))
        if not eq or not key:
            raise DataError(f"{ref}: cannot read option '{pair}'", "write ?key=value&key=value")
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"known keys: {', '.join(allowed)}"
            raise DataError(f"{ref}: unknown option '{key}'", hint)
        if key in params and params[key] != value:
            raise DataError(f"{ref}: option '{key}' given twice", "give each option once")
        params[key] = value
    return target, params


def _one_split(ref: str, *given: str | None) -> str | None:
    """The split named in the reference and/or by the caller; they must agree."""
    names = {g for g in given if g}
    if len(names) > 1:
        raise DataError(
            f"{ref}: conflicting splits {', '.join(sorted(names))}", "name the split once"
        )
    return names.pop() if names else None


def _require(module: str, ref: str, pip_hint: str) -> Any:
    """Import an optional dependency, or fail with one line and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"{ref}: needs the '{module.split('.')[0]}' package, which is not installed", pip_hint
        ) from None


def _reason(exc: BaseException) -> str:
    """The first line of a third-party error, shortened: enough to act on, never a traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _checked(entries: Sequence[tuple[str, Item]], ref: str) -> list[Item]:
    """Reject duplicate ids and an empty result; `entries` pair each item with its origin."""
    seen: dict[str, str] = {}
    for where, item in entries:
        if item.id in seen:
            raise DataError(
                f"{where}: duplicate id '{item.id}' (first seen at {seen[item.id]})",
                "ids must be unique",
            )
        seen[item.id] = where
    if not entries:
        raise DataError(f"{ref}: no items", "the source has no usable rows")
    return [item for _, item in entries]


# ───────────────────────────── files (JSONL / CSV) ─────────────────────────────


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


# ───────────────────────────── Hugging Face datasets ─────────────────────────────

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


# ───────────────────────────── lm-evaluation-harness tasks ─────────────────────────────

_LMEVAL_KEYS = ("include_path", "split", "fewshot", "seed")
_LMEVAL_HINT = "pip install 'calmerge[lmeval]'"
_LMEVAL_SEED = 1234  # lm-eval's default fewshot_random_seed, so few-shot draws match its runs


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None, include_defaults: bool) -> Any:
    """Indexing lm-eval's ~15k built-in task YAMLs takes ~15 s; do it once per process.

    Keyed by the include path, so `--data` and `--dev` naming tasks share one index.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def _lmeval_tasks(names: list[str], include_path: str | None, ref: str) -> dict[str, Any]:
    """Leaf tasks by name (groups and tags expand), built through lm-eval's TaskManager.

    With an include path, or only YAML paths, the built-in index is skipped unless a name is
    not found without it — a local task then loads in well under a second.
    """
    import yaml

    datasets = _require("datasets", ref, _LMEVAL_HINT)
    if include_path is not None and not Path(include_path).is_dir():
        raise DataError(f"{ref}: include_path {include_path} is not a folder", "check the path")
    paths = [n for n in names if n.endswith((".yaml", ".yml"))]
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{ref}: task file {p} not found", "check the path")
    named = [n for n in names if n not in paths]
    local_only = include_path is not None or not named
    manager = _task_manager(include_path, not local_only)
    if local_only and any(n not in manager.all_tasks for n in named):
        manager, local_only = _task_manager(include_path, True), False
    for n in named:
        if n not in manager.all_tasks:
            raise DataError(
                f"{ref}: no lm-eval task, group or tag '{n}'",
                did_you_mean(n, manager.all_tasks)
                or "see `lm_eval ls tasks`; local YAML: ?include_path=DIR",
            )
    errors = (OSError, ValueError, KeyError, ImportError, yaml.YAMLError,
              datasets.exceptions.DatasetsError)
    if not hasattr(manager, "load"):
        raise DataError(f"{ref}: needs lm-eval >= 0.4.13 (TaskManager.load)", _LMEVAL_HINT)
    try:
        try:
            loaded = manager.load(names)["tasks"]
        except KeyError:  # a local group may name built-in tasks
            if not local_only:
                raise
            loaded = _task_manager(include_path, True).load(names)["tasks"]
    except errors as exc:
        raise DataError(
            f"{ref}: cannot build the task ({_reason(exc)})",
            "offline, the task's dataset must be local or in the HF cache",
        ) from None
    return dict(sorted(loaded.items()))


def _lmeval_docs(task: Any, split: str | None, name: str, ref: str) -> Any:
    """The documents lm-eval would score (its eval split), or one split role the user named."""
    roles = {
        "test": ("has_test_docs", "test_docs"),
        "validation": ("has_validation_docs", "validation_docs"),
        "train": ("has_training_docs", "training_docs"),
    }
    aliases = {"dev": "validation", "val": "validation", "valid": "validation"}
    if split is None:
        for has, docs in (roles["test"], roles["validation"]):
            if getattr(task, has)():
                return getattr(task, docs)()
        raise DataError(f"{ref}: task '{name}' has no test or validation docs", "name a split")
    if split == "fewshot":
        docs = task.fewshot_docs()
        if docs is None:
            raise DataError(
                f"{ref}: task '{name}' has no few-shot docs", "use split=train or validation"
            )
        return docs
    role = aliases.get(split, split)
    if role not in roles:
        raise DataError(
            f"{ref}: split '{split}' is not one of test, validation, train, fewshot",
            "lm-eval splits are named by role; the task's YAML maps them to dataset splits",
        )
    has, docs = roles[role]
    if not getattr(task, has)():
        raise DataError(f"{ref}: task '{name}' has no {role} split", "use another split")
    return getattr(task, docs)()


def _lmeval_gold(gold: Any, choices: Sequence[str], where: str) -> int:
    """lm-eval's gold: an index, or a choice's text (a one-element list is unwrapped)."""
    if isinstance(gold, list):
        if len(gold) != 1:
            raise DataError(
                f"{where}: {len(gold)} correct answers", "calmerge scores one gold choice"
            )
        gold = gold[0]
    if isinstance(gold, str):
        if gold in choices:
            return list(choices).index(gold)
        raise DataError(
            f"{where}: target {gold!r} is not one of the choices", "check doc_to_target"
        )
    if isinstance(gold, int) and not isinstance(gold, bool):
        return gold
    raise DataError(f"{where}: target {gold!r} is not an index or a choice", "check doc_to_target")


def _lmeval_task_items(
    name: str, task: Any, split: str | None, fewshot: int | None, seed: int, ref: str
) -> list[tuple[str, Item]]:
    if task.OUTPUT_TYPE != "multiple_choice":
        raise DataError(
            f"{ref}: task '{name}' is {task.OUTPUT_TYPE}, not multiple_choice",
            "calmerge scores multiple-choice tasks",
        )
    if getattr(task, "multiple_input", 0):
        raise DataError(
            f"{ref}: task '{name}' puts the choices in the context (one context per choice)",
            "calmerge scores one shared context per question",
        )
    docs = _lmeval_docs(task, split, name, ref)
    shots = fewshot if fewshot is not None else int(task.config.num_fewshot or 0)
    if shots:
        if getattr(task, "sampler", None) is None:
            raise DataError(f"{ref}: task '{name}' has no few-shot docs", "use fewshot=0")
        task.set_fewshot_seed(seed=seed)
    delimiter = str(task.config.target_delimiter)
    entries: list[tuple[str, Item]] = []
    for doc_id, doc in enumerate(docs):
        where = f"{ref} [{name} doc {doc_id}]"
        extra = {"gen_prefix": task.doc_to_prefix(doc)} if hasattr(task, "doc_to_prefix") else {}
        ctx = task.fewshot_context(doc, num_fewshot=shots, **extra)
        requests = task.construct_requests(doc=doc, ctx=ctx, metadata=(name, doc_id, 1))
        choices = [str(c) for c in task.doc_to_choice(doc)]
        args = [r.arguments for r in requests[: len(choices)]]  # mutual-info requests follow
        if any(a[1] != delimiter + c for a, c in zip(args, choices, strict=True)):
            raise DataError(  # lm-eval builds every continuation as delimiter + choice
                f"{where}: continuations are not target_delimiter + choice",
                "calmerge scores lm-eval's standard multiple-choice requests",
            )
        # question = lm-eval's context, choices = its texts; the full string is lm-eval's with
        # calmerge's own " " or, for any other target_delimiter, the item's (the context's
        # trailing whitespace moves into the continuation on encoding, as in `_encode_pair`)
        record = {
            "id": f"{name}-{doc_id}", "question": args[0][0], "choices": choices,
            "answer": _lmeval_gold(task.doc_to_target(doc), choices, where), "subject": name,
        }
        item = _item(record, where, fallback_id=record["id"])
        if delimiter != " ":
            item = dataclasses.replace(item, delimiter=delimiter)
        entries.append((where, item))
    return entries


def _int_param(params: dict[str, str], key: str, ref: str) -> int | None:
    if key not in params:
        return None
    text = params[key].strip()
    if not text.isdigit():
        raise DataError(
            f"{ref}: ?{key}={params[key]} is not a non-negative integer", f"e.g. ?{key}=5"
        )
    return int(text)


@data_source("lmeval", native_template="{question}")
def _lmeval_items(body: str, split: str | None) -> list[Item]:
    """`lmeval:TASK[,TASK…][?include_path=DIR&split=…&fewshot=N&seed=S]` — lm-eval's prompts.

    Each item's question is the full context lm-eval builds (description, few-shot examples,
    doc_to_text, gen_prefix) and its choices what follows the delimiter, so the template
    `{question}` scores exactly what lm-eval scores.
    """
    ref = f"lmeval:{body}"
    target, params = _split_query(body, ref, _LMEVAL_KEYS)
    names = [n.strip() for n in target.split(",") if n.strip()]
    if not names:
        raise DataError(f"{ref}: no task named", "e.g. lmeval:arc_easy")
    fewshot = _int_param(params, "fewshot", ref)
    seed = _int_param(params, "seed", ref)
    split = _one_split(ref, params.get("split"), split)
    _require("lm_eval.tasks", ref, _LMEVAL_HINT)
    include = params.get("include_path")
    include = str(Path(include).expanduser()) if include else None
    entries: list[tuple[str, Item]] = []
    for name, task in _lmeval_tasks(names, include, ref).items():
        entries += _lmeval_task_items(
            name, task, split, fewshot, _LMEVAL_SEED if seed is None else seed, ref
        )
    return _checked(entries, ref)


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
