"""lm-evaluation-harness tasks as lm-eval itself runs them: its prompts, its docs, its metrics.

Why a module of its own: an lm-eval task is not rows to read but a program to run — its YAML's
templates, few-shot sampler, description and delimiters, its `process_docs`, its
`process_results` and metric list, its groups' weights. Items are built from the requests the
task constructs (checked to be lm-eval's multiple-choice ones), so with the template
`{question}` calmerge scores what lm-eval scores; and the Benchmark carries the task's own
scoring hooks (`benchmark.TaskScoring`), so `eval.taskmetrics` computes lm-eval's metrics from
the same log-likelihoods: truthfulqa_mc2's "acc" is its true-answer mass, mmlu's is lm-eval's
group aggregate.

What is reproduced of `lm_eval.simple_evaluate` (0.4.13), because each changes numbers:
- seeds: `random.seed(0)`, `np.random.seed(1234)`, torch 1234 just before the tasks are built
  (gpqa's process_docs shuffles the choices with the global `random`), and the few-shot seed
  1234 on every task (`?seed=` overrides that one). The previous global RNG states are restored
  afterwards: a library must not leave the caller's `random` changed. (Not thread-safe: another
  thread drawing from `random` meanwhile would both disturb and be disturbed.) lm-eval draws
  from `random` while building too (`Task.task_name`), so gpqa's shuffle depends on the tasks
  built before it: it is lm-eval's for a run of the same task list, in the same order — name
  them in one reference (`lmeval:a,b,gpqa_main_zeroshot`) to match one lm-eval run. A shuffle is
  drawn once, when the task is built, and `datasets` caches the mapped docs, as in lm-eval's
  own run (which reads the docs again for requests and for process_results); with that cache
  off, lm-eval itself would shuffle anew on every read.
- num_fewshot: a requested `fewshot=N` is ignored for a task whose YAML sets `num_fewshot: 0`,
  as lm-eval ignores it, and the Benchmark says so in its notes.
- multiple-input tasks (winogrande: one context per choice) become partial-scoring items.
- groups: every leaf task is scored; a group's metrics are lm-eval's own `Group.aggregate` over
  its leaves; a tag, several names, or a group without `aggregate_metric_list` has no lm-eval
  aggregate and is pooled by calmerge (size-weighted), with a note saying so.

Security: a task's `!function utils.fn` (process_docs, process_results, doc_to_text…) imports and
runs the Python file beside the YAML. Loading `lmeval:TASK?include_path=DIR` therefore runs code
from DIR, exactly as `lm_eval --include_path DIR` does: only point it at task folders you trust.

`lm_eval` is imported only when an `lmeval:` reference is loaded, and its task index is built
once per process. This module finds and builds the tasks and makes their items; the scoring
hooks over the built tasks and groups are `data.lmeval_scoring`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from calmerge.errors import DataError, did_you_mean
from calmerge.eval.data.benchmark import (
    Benchmark,
    TaskScoring,
    benchmark_source,
)
from calmerge.eval.data.items import Item, _item
from calmerge.eval.data.lmeval_scoring import (
    _Built,
    _caller_rng_kept,
    _lmeval_scoring,
    _names,
    _task_scoring,
)
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
    """Indexing lm-eval's ~15k built-in task YAMLs takes ~10 s; do it once per process.

    Keyed by the include path, so `--data` and `--dev` naming tasks share one index.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


@contextlib.contextmanager
def _lm_eval_seeds() -> Iterator[None]:
    """simple_evaluate's global seeds for the span of building tasks, then the caller's back.

    lm-eval seeds `random`, numpy and torch right before `TaskManager.load`; a process_docs
    that draws from them (gpqa shuffles its choices with `random.shuffle`) then gives the same
    docs here as in an lm-eval run. torch is seeded on the CPU generator only: lm-eval's
    `torch.manual_seed` would also queue a seed for CUDA at its first use, a change to global
    state this restore could not undo, and no task builds docs on a GPU.
    """
    import numpy as np
    import torch
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED

    with _caller_rng_kept(), _quiet():
        random.seed(DEFAULT_RANDOM_SEED)
        np.random.seed(DEFAULT_OTHER_SEED)
        torch.random.default_generator.manual_seed(DEFAULT_OTHER_SEED)
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's and datasets' chatter while tasks are built, silenced, then as it was.

    lm-eval logs a warning per metric whose YAML omits `aggregation`/`higher_is_better` (it
    then uses the defaults calmerge reproduces) and datasets draws a progress bar per split;
    calmerge's own output is one line per failure and its own progress bar.
    """
    import logging

    import datasets

    logger = logging.getLogger("lm_eval")
    level, bars = logger.level, datasets.utils.logging.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.utils.logging.enable_progress_bar()


# ───────────────────────────── finding and building the tasks ─────────────────────────────


def _group_members(manager: Any, name: str) -> list[tuple[str, str, bool]]:
    """Every name a group lists, recursively: (member, the group listing it, is a leaf task).

    Read from the index's YAML (no task is built), so that a group naming a task that does not
    exist, or one that exists only among the built-ins, is known before anything loads.
    """
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    index = manager.task_index
    out: list[tuple[str, str, bool]] = []
    seen: set[str] = set()

    def walk(group: str, members: Any) -> None:
        if group in seen:  # a group listing itself, directly or not: lm-eval fails on it
            return
        seen.add(group)
        for member in members if isinstance(members, list) else [members]:
            if isinstance(member, dict):
                if "group" in member and member["group"] not in index:  # an inline group
                    walk(f"{group}::{member['group']}", member.get("task", []))
                    continue
                member = member.get("group") or member.get("task")
                if isinstance(member, str) and member not in index:
                    continue  # an inline task: its config is the dict itself
            if not isinstance(member, str):
                continue
            entry = index.get(member)
            leaf = entry is not None and entry.kind in (Kind.TASK, Kind.PY_TASK)
            out.append((member, group, leaf))
            if entry is not None and entry.kind is Kind.GROUP:
                walk(member, (entry.cfg or {}).get("task", []))
            elif entry is not None and entry.kind is Kind.TAG:
                out.extend((t, member, True) for t in sorted(entry.tags))

    if name.endswith((".yaml", ".yml")):
        import yaml

        try:
            cfg = load_yaml(name, resolve_func=False)
        except (OSError, ValueError, yaml.YAMLError):  # reported when the task is built
            return []
        if "group" in cfg:
            walk(str(cfg["group"]), cfg.get("task", []))
        return out
    entry = index.get(name)
    if entry is not None and entry.kind is Kind.GROUP:
        walk(name, (entry.cfg or {}).get("task", []))
    return out


def _lmeval_manager(names: list[str], include_path: str | None, ref: str) -> Any:
    """The TaskManager that knows every named task and every task the named groups list.

    With an include path, or only YAML paths, the built-in index is skipped unless a name (or a
    group's member) is not found without it — a local task then loads in well under a second.
    """
    if include_path is not None and not Path(include_path).is_dir():
        raise DataError(f"{ref}: include_path {include_path} is not a folder", "check the path")
    paths = [n for n in names if n.endswith((".yaml", ".yml"))]
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{ref}: task file {p} not found", "check the path")
    named = [n for n in names if n not in paths]
    if not hasattr(_task_manager(include_path, False), "load"):
        raise DataError(f"{ref}: needs lm-eval >= 0.4.13 (TaskManager.load)", _LMEVAL_HINT)

    def unknown(manager: Any) -> list[tuple[str, str | None]]:
        missing: list[tuple[str, str | None]] = [
            (n, None) for n in named if n not in manager.all_tasks
        ]
        for n in names:
            if n in manager.all_tasks or n in paths:
                missing += [
                    (m, g) for m, g, _ in _group_members(manager, n) if m not in manager.task_index
                ]
        return missing

    local_only = include_path is not None or not named
    manager = _task_manager(include_path, not local_only)
    if local_only and unknown(manager):
        manager = _task_manager(include_path, True)
    for name, group in unknown(manager):
        where = f"no lm-eval task, group or tag '{name}'"
        if group is not None:
            where = f"group '{group}' lists '{name}', which is no lm-eval task, group or tag"
        raise DataError(
            f"{ref}: {where}",
            did_you_mean(name, manager.all_tasks)
            or "see `lm_eval ls tasks`; local YAML: ?include_path=DIR",
        )
    return manager


def _build_errors() -> tuple[type[BaseException], ...]:
    """What building a task raises for a broken task or missing data (never a calmerge bug)."""
    import yaml

    datasets = _require("datasets", "lmeval", _LMEVAL_HINT)
    return (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError,
            yaml.YAMLError, datasets.exceptions.DatasetsError)


def _lmeval_load(manager: Any, names: list[str], ref: str) -> dict[str, Any]:
    """`TaskManager.load(names)`, the call simple_evaluate makes; a failure names the task.

    lm-eval's own error rarely says which of a group's tasks failed (a missing data file is
    "Unable to find '…'"), so on failure each leaf task the names reach is built alone until
    one fails, and that one is named.
    """
    errors = _build_errors()
    hint = "offline, the task's dataset must be local or in the HF cache"
    try:
        return manager.load(names)
    except errors as exc:
        first = exc
    for name in names:
        for member, group, leaf in _group_members(manager, name):
            if not leaf:
                continue
            try:
                manager.load([member])
            except errors as exc:
                raise DataError(
                    f"{ref}: task '{member}' of group '{group}' cannot be built ({_reason(exc)})",
                    hint,
                ) from None
    raise DataError(f"{ref}: cannot build the task ({_reason(first)})", hint) from None


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


def _own_process_results(task: Any) -> str | None:
    """The name of the task's own process_results (a YAML `!function` or a Python task's
    override), or None for lm-eval's built-in multiple-choice one."""
    from lm_eval.api.task import ConfigurableTask

    fn = task.config.process_results
    if fn is not None:
        return getattr(fn, "__qualname__", None) or str(fn)
    if type(task).process_results is not ConfigurableTask.process_results:
        return f"{type(task).__name__}.process_results"
    return None


def _check_task(name: str, task: Any, ref: str) -> None:
    """Refuse what calmerge cannot score exactly as lm-eval does, before any doc is read."""
    if task.OUTPUT_TYPE != "multiple_choice":
        raise DataError(
            f"{ref}: task '{name}' is {task.OUTPUT_TYPE}, not multiple_choice",
            "calmerge scores multiple_choice tasks (the log-likelihood of each given choice)",
        )
    if "acc_mutual_info" in task.aggregation():
        raise DataError(
            f"{ref}: task '{name}' lists acc_mutual_info, which needs each choice's "
            "unconditional log-likelihood; calmerge scores the choices given the context only",
            "remove acc_mutual_info from the task's metric_list (a local copy of the YAML)",
        )
    if task.config.filter_list is not None:
        raise DataError(
            f"{ref}: task '{name}' filters its log-likelihoods (filter_list)",
            "calmerge applies lm-eval's default filter only; remove filter_list",
        )


def _shared_prefix(contexts: Sequence[str], choices: Sequence[str], where: str) -> str:
    """P such that context_j == P + choices[j] for every j (lm-eval's multiple-input contexts)."""
    first = contexts[0]
    prefix = first[: len(first) - len(choices[0])] if first.endswith(choices[0]) else None
    if prefix is None or any(c != prefix + ch for c, ch in zip(contexts, choices, strict=True)):
        raise DataError(
            f"{where}: the per-choice contexts are not one shared prefix followed by each choice",
            "calmerge's partial scoring needs context_j = prefix + choice_j "
            "(a gen_prefix after the choice breaks that)",
        )
    return prefix


def _doc_item(
    name: str, task: Any, doc: Any, doc_id: int, shots: int, own: str | None, where: str
) -> Item:
    """One doc as the Item that scores lm-eval's requests for it."""
    extra = {"gen_prefix": task.doc_to_prefix(doc)} if hasattr(task, "doc_to_prefix") else {}
    ctx = task.fewshot_context(doc, num_fewshot=shots, **extra)
    requests = task.construct_requests(doc=doc, ctx=ctx, metadata=(name, doc_id, 1))
    choices = [str(c) for c in task.doc_to_choice(doc)]
    args = [r.arguments for r in requests]
    if len(args) != len(choices) or any(len(a) != 2 for a in args):
        raise DataError(  # extra requests (mutual info) or extra inputs (images) per choice
            f"{where}: {len(args)} requests for {len(choices)} choices",
            "calmerge scores lm-eval's standard text multiple-choice requests",
        )
    multiple_input = bool(getattr(task, "multiple_input", 0))
    raw_gold = task.doc_to_text(doc) if multiple_input else task.doc_to_target(doc)
    try:
        gold = _lmeval_gold(raw_gold, choices, where)
        if not 0 <= gold < len(choices):
            raise DataError(f"{where}: answer {gold} out of range", "check doc_to_target")
    except DataError:
        if own is None:
            raise
        gold = 0  # the task's own process_results reads the doc, never this answer
    delimiter = str(task.config.target_delimiter)
    if multiple_input:
        # one context per choice (winogrande): the choice completes the context and the shared
        # continuation is scored under each — calmerge's partial scoring
        conts = {a[1] for a in args}
        if len(conts) != 1:
            raise DataError(
                f"{where}: the choices' continuations differ", "check doc_to_target"
            )
        prefix = _shared_prefix([a[0] for a in args], choices, where)
        record = {"id": f"{name}-{doc_id}", "question": prefix, "choices": choices,
                  "answer": gold, "subject": name}
        return dataclasses.replace(
            _item(record, where, fallback_id=record["id"], duplicates_ok=True), partial=conts.pop()
        )
    if any(a[1] != delimiter + c for a, c in zip(args, choices, strict=True)):
        raise DataError(  # lm-eval builds every continuation as delimiter + choice
            f"{where}: continuations are not target_delimiter + choice",
            "calmerge scores lm-eval's standard multiple-choice requests",
        )
    # question = lm-eval's context, choices = its texts; the full string is lm-eval's with
    # calmerge's own " " or, for any other target_delimiter, the item's (the context's
    # trailing whitespace moves into the continuation on encoding, as in `_encode_pair`)
    record = {"id": f"{name}-{doc_id}", "question": args[0][0], "choices": choices,
              "answer": gold, "subject": name}
    # lm-eval scores a document that lists a choice twice (MMLU and HellaSwag have some), the
    # tie going to the first copy; so does calmerge, or it would refuse the task lm-eval runs
    item = _item(record, where, fallback_id=record["id"], duplicates_ok=True)
    return dataclasses.replace(item, delimiter=delimiter) if delimiter != " " else item


def _build_task(
    name: str, task: Any, split: str | None, fewshot: int | None, seed: int, ref: str,
    ignored: list[str],
) -> _Built:
    """Read one task's docs and build its items; `ignored` collects tasks whose YAML fixes
    num_fewshot at 0 while the user asked for shots."""
    _check_task(name, task, ref)
    # simple_evaluate's rule: a requested num_fewshot overrides the YAML's unless the YAML
    # says 0 (then it is ignored, and logged); nothing requested and nothing set means 0
    configured = task.get_config("num_fewshot")
    if fewshot is not None and configured == 0:
        shots = 0
        if fewshot != 0:
            ignored.append(name)
    else:
        shots = fewshot if fewshot is not None else int(configured or 0)
    if shots and getattr(task, "sampler", None) is None:
        raise DataError(f"{ref}: task '{name}' has no few-shot docs", "use fewshot=0")
    task.set_fewshot_seed(seed=seed)
    docs = list(_lmeval_docs(task, split, name, ref))
    own = _own_process_results(task)
    entries = []
    for doc_id, doc in enumerate(docs):
        where = f"{ref} [{name} doc {doc_id}]"
        entries.append((where, _doc_item(name, task, doc, doc_id, shots, own, where)))
    return _Built(name, task, docs, entries, own)


def _int_param(params: dict[str, str], key: str, ref: str) -> int | None:
    if key not in params:
        return None
    text = params[key].strip()
    if not text.isdigit():
        raise DataError(
            f"{ref}: ?{key}={params[key]} is not a non-negative integer", f"e.g. ?{key}=5"
        )
    return int(text)


@benchmark_source("lmeval")
def lmeval_benchmark(body: str, split: str | None) -> Benchmark:
    """`lmeval:TASK[,TASK…][?include_path=DIR&split=…&fewshot=N&seed=S]` — lm-eval's prompts
    and lm-eval's scoring.

    Each item's question is the full context lm-eval builds (description, few-shot examples,
    doc_to_text, gen_prefix) and its choices what follows the delimiter, so the template
    `{question}` scores exactly what lm-eval scores; the scoring hooks turn those scores into
    the task's (or group's) own metrics.
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
    _require("datasets", ref, _LMEVAL_HINT)
    include = params.get("include_path")
    include = str(Path(include).expanduser()) if include else None
    manager = _lmeval_manager(names, include, ref)
    with _lm_eval_seeds():
        return _lmeval_benchmark(manager, ref, names, split, fewshot,
                                 _LMEVAL_SEED if seed is None else seed)


def _lmeval_benchmark(
    manager: Any, ref: str, names: list[str], split: str | None, fewshot: int | None, seed: int
) -> Benchmark:
    """The tasks built, their docs read and few-shot samples drawn in lm-eval's task order,
    under its seeds (the caller's context manager)."""
    loaded = _lmeval_load(manager, names, ref)
    ignored: list[str] = []
    built = [
        _build_task(name, task, split, fewshot, seed, ref, ignored)
        for name, task in loaded["tasks"].items()
    ]
    built.sort(key=lambda b: b.name)  # items in task-name order, as before (stable digests)
    notes: list[str] = []
    if ignored:
        verb = "fixes num_fewshot at 0 in its YAML" if len(ignored) == 1 else (
            "fix num_fewshot at 0 in their YAMLs")
        notes.append(f"{_names(ignored)} {verb}; fewshot={fewshot} ignored, as lm-eval does")
    own = [b for b in built if b.own is not None]
    for fn in dict.fromkeys(b.own for b in own):
        which = [b.name for b in own if b.own == fn]
        notes.append(
            f"{_names(which)} {'computes its' if len(which) == 1 else 'compute their'} metrics "
            f"with {'its' if len(which) == 1 else 'their'} own process_results ({fn}), so "
            "doc_to_target is not the answer: calmerge's metrics that need a gold answer "
            "(accuracy, calibration, Brier, NLL, AUROC) are left out, and acc is lm-eval's "
            "(the task's own)"
        )
    items = _checked([e for b in built for e in b.entries], ref)
    tasks: list[TaskScoring] = []
    start = 0
    for b in built:
        tasks.append(_task_scoring(b, start))
        start += len(b.docs)
    scoring = _lmeval_scoring(loaded, tuple(tasks), ref, notes)
    return Benchmark(ref, tuple(items), scoring, tuple(notes))


@data_source("lmeval", native_template="{question}")
def _lmeval_items(body: str, split: str | None) -> list[Item]:
    """The items of `lmeval_benchmark` (lm-eval's prompts; see there)."""
    return list(lmeval_benchmark(body, split).items)
