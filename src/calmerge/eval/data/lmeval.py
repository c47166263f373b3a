"""Items from lm-evaluation-harness tasks, as the exact prompts lm-eval itself would score.

Why a module of its own: an lm-eval task is not rows to read but a program to run (its YAML's
templates, few-shot sampler, description and delimiters), so items are built from the requests
the task constructs and checked to be lm-eval's standard multiple-choice ones; with the
template `{question}` calmerge then scores what lm-eval scores. `lm_eval` is imported only when
an `lmeval:` reference is loaded, and its task index is built once per process.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calmerge.errors import DataError, did_you_mean
from calmerge.eval.data.items import Item, _item
from calmerge.eval.data.sources import (
    _checked,
    _one_split,
    _reason,
    _require,
    _split_query,
    data_source,
)

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
