"""Bad inputs of multi-task sweeps: tasks that cannot be told apart, dev splits that do not pair
with their tasks, names the store cannot keep."""

from __future__ import annotations

from bad_inputs.cases import GOOD, OUT, Case, items_file, sweep_argv


def _two(tmp):
    a = items_file(tmp, [GOOD, {**GOOD, "id": "b"}], "a.jsonl")
    b = items_file(tmp, [{**GOOD, "id": "c"}, {**GOOD, "id": "d"}], "b.jsonl")
    return a, b


def same_name_twice(tmp, pair):
    a, _ = _two(tmp)
    (tmp / "other").mkdir()
    twin = items_file(tmp / "other", [{**GOOD, "id": "z"}], "a.jsonl")  # also named 'a'
    return sweep_argv(pair, a, "--data", str(twin))


def dev_count_mismatch(tmp, pair):
    a, b = _two(tmp)
    dev = items_file(tmp, [{**GOOD, "id": "x"}], "dev.jsonl")
    c = items_file(tmp, [{**GOOD, "id": "e"}], "c.jsonl")
    return sweep_argv(pair, a, "--data", str(b), "--data", str(c), "--dev", str(dev),
                      "--dev", str(dev))


def _yaml(tmp, pair, data_lines: list[str]):
    base, aligned = pair
    cfg = tmp / "sweep.yml"
    cfg.write_text("\n".join([f"base: {base}", f"aligned: {aligned}", f"store: {OUT}/runs.db",
                              f"out: {OUT}", "data:", *data_lines]) + "\n")
    return ["sweep", str(cfg), "--quiet"]


def dev_once_for_many(tmp, pair):
    a, b = _two(tmp)
    dev = items_file(tmp, [{**GOOD, "id": "x"}], "dev.jsonl")
    argv = _yaml(tmp, pair, [f"  - {a}", f"  - {b}"])
    (tmp / "sweep.yml").write_text((tmp / "sweep.yml").read_text() + f"dev: {dev}\n")
    return argv


def some_tasks_without_dev(tmp, pair):
    a, b = _two(tmp)
    dev = items_file(tmp, [{**GOOD, "id": "x"}], "dev.jsonl")
    return _yaml(tmp, pair, [f"  - {{data: {a}, dev: {dev}}}", f"  - {b}"])


def task_name_with_at(tmp, pair):
    a, b = _two(tmp)
    return _yaml(tmp, pair, [f"  - {{data: {a}, name: 'a@1'}}", f"  - {b}"])


def task_key_typo(tmp, pair):
    a, b = _two(tmp)
    return _yaml(tmp, pair, [f"  - {{data: {a}, prompt_templat: '{{question}}'}}", f"  - {b}"])


def task_dev_is_its_data(tmp, pair):
    a, b = _two(tmp)
    return _yaml(tmp, pair, [f"  - {{data: {a}, dev: {a}}}", f"  - {{data: {b}, dev: {a}}}"])


def unknown_aggregate(tmp, pair):
    a, b = _two(tmp)
    return sweep_argv(pair, a, "--data", str(b), "--aggregate", "median")


CASES = [
    Case("task-name-twice", "Two --data files with the same name (a.jsonl in two folders)", same_name_twice, "two tasks are named 'a'"),
    Case("task-dev-count", "Two --dev for three --data", dev_count_mismatch, "2 --dev for 3 --data"),
    Case("task-dev-once", "One top-level dev for several tasks", dev_once_for_many, "'dev' is given at the top level while 'data' lists tasks"),
    Case("task-dev-some", "One task with a dev split, another without", some_tasks_without_dev, "has a dev split and task"),
    Case("task-name-at", "A task name containing '@' (the store's task separator)", task_name_with_at, "data.0.name"),
    Case("task-key-typo", "A misspelt key in a task entry", task_key_typo, "did you mean"),
    Case("task-dev-is-data", "A task whose dev is its own test data", task_dev_is_its_data, "holds the same items as --data"),
    Case("aggregate-unknown", "--aggregate median", unknown_aggregate, "aggregate"),
]


def lmeval_task_with_fewshot(tmp, pair):
    """--fewshot would take the first dev docs of an lm-eval task as examples, while lm-eval's
    program scores those docs: its numbers would no longer be lm-eval's."""
    a, _ = _two(tmp)
    b = items_file(tmp, [{**GOOD, "id": "c", "question": "Other?"}], "b.jsonl")
    task = tmp / "tasks"
    task.mkdir()
    (task / "cm_t.yaml").write_text(
        "task: cm_t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {a}\n    validation: {b}\ntest_split: test\nvalidation_split: validation\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
    )
    ref = f"lmeval:cm_t?include_path={task}"
    return _yaml(tmp, pair, [f"  - {{data: '{ref}', dev: '{ref}&split=validation', fewshot: 1}}",
                             f"  - {{data: {a}, dev: {b}, name: other}}"])


CASES.append(Case("task-lmeval-fewshot", "--fewshot on an lm-eval task of a sweep", lmeval_task_with_fewshot, "its few-shot examples are lm-eval's own"))
