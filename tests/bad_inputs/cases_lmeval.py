"""Bad lm-eval task references: names that do not exist, groups whose tasks cannot be built,
tasks calmerge cannot score exactly as lm-eval does (generation, rolling log-likelihood,
acc_mutual_info's unconditional requests), and a task's own metrics asked of letter mode."""

from __future__ import annotations

import compileall
import json
from pathlib import Path

# Bound before `bad_inputs.cases` is imported and filled in place at the end, as in cases_files:
# run as a script, cases.py collects this module while it is still half-imported.
CASES: list = []

from bad_inputs.cases import Case, eval_argv  # noqa: E402

DOCS = [{"question": "What colour is the sky?", "choices": ["blue", "green"], "answer": 0},
        {"question": "Which animal barks?", "choices": ["cat", "dog"], "answer": 1}]


DATA = "DOCS_JSONL"  # replaced by the folder's data file


def _task(name: str, data: Path | str = DATA, **fields: str) -> str:
    """A local task YAML over `data` (no `!function`: nothing is imported, nothing compiled)."""
    lines = {
        "task": name, "dataset_path": "json", "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": '"{{question}}"',
        "doc_to_choice": '"{{choices}}"', "doc_to_target": "answer", **fields,
    }
    body = "\n".join(f"{k}: {v}" for k, v in lines.items() if k != "dataset_kwargs")
    return f"{body}\ndataset_kwargs:\n  data_files:\n    test: {data}\n"


def _tasks(tmp: Path, **yamls: str) -> Path:
    """A task folder with one JSONL of DOCS and `name: yaml text` files (DATA filled in)."""
    root = tmp / "tasks"
    root.mkdir()
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    for name, text in yamls.items():
        (root / f"{name}.yaml").write_text(text.replace(DATA, str(data)))
    return root


def _eval(pair, root: Path, target: str, *extra: str) -> list[str]:
    return eval_argv(pair[1], f"lmeval:{target}?include_path={root}", *extra)  # type: ignore[arg-type]


def unknown_task(tmp, pair):
    root = _tasks(tmp, cm_sky=_task("cm_sky"))
    return _eval(pair, root, "cm_skyy")  # not local: lm-eval's own index is searched too


def group_subtask_broken(tmp, pair):
    root = _tasks(
        tmp, cm_sky=_task("cm_sky"),
        cm_lost=_task("cm_lost", tmp / "tasks" / "moved_away.jsonl"),
        cm_pair=("group: cm_pair\ntask:\n  - cm_sky\n  - cm_lost\n"
                 "aggregate_metric_list:\n  - metric: acc\n"),
    )
    return _eval(pair, root, "cm_pair")


def generate_until(tmp, pair):
    root = _tasks(tmp, cm_gen=_task("cm_gen", output_type="generate_until"))
    return _eval(pair, root, "cm_gen")


def loglikelihood_rolling(tmp, pair):
    root = _tasks(tmp, cm_ppl=_task("cm_ppl",
                                    output_type="loglikelihood_rolling"))
    return _eval(pair, root, "cm_ppl")


def acc_mutual_info(tmp, pair):
    metrics = "\n  - metric: acc\n  - metric: acc_mutual_info"
    root = _tasks(tmp, cm_mi=_task("cm_mi", metric_list=metrics))
    return _eval(pair, root, "cm_mi")


def _own_metric_task(tmp: Path, metric: str) -> Path:
    """A task whose process_results is its own `!function` (truthfulqa_mc2's shape), its
    utils.py compiled now so that loading it writes no __pycache__ during the run."""
    root = _tasks(tmp, cm_mass=_task(
        "cm_mass", process_results="!function utils.mass",
        metric_list=f"\n  - metric: {metric}\n    aggregation: mean\n    higher_is_better: true",
    ))
    (root / "utils.py").write_text(
        "import math\n\n\ndef mass(doc, results):\n"
        "    p = [math.exp(ll) for ll, _ in results]\n"
        f"    return {{'{metric}': p[doc['answer']] / sum(p)}}\n"
    )
    compileall.compile_dir(root, quiet=1)
    return root


def own_metric_without_acc(tmp, pair):
    return _eval(pair, _own_metric_task(tmp, "mass"), "cm_mass")


def own_metric_in_letter_mode(tmp, pair):
    return _eval(pair, _own_metric_task(tmp, "acc"), "cm_mass", "--mode", "letter")


CASES += [
    Case("lmeval-unknown-task", "`lmeval:` naming no task, group or tag (local or built-in)", unknown_task, "no lm-eval task, group or tag 'cm_skyy'"),
    Case("lmeval-group-subtask-broken", "An lm-eval group one of whose tasks cannot be built (its data file is gone)", group_subtask_broken, "task 'cm_lost' of group 'cm_pair' cannot be built"),
    Case("lmeval-generate-until", "An lm-eval generate_until task", generate_until, "task 'cm_gen' is generate_until, not multiple_choice"),
    Case("lmeval-loglikelihood-rolling", "An lm-eval loglikelihood_rolling (perplexity) task", loglikelihood_rolling, "task 'cm_ppl' is loglikelihood_rolling"),
    Case("lmeval-acc-mutual-info", "An lm-eval task listing acc_mutual_info (unconditional requests)", acc_mutual_info, "task 'cm_mi' lists acc_mutual_info"),
    Case("lmeval-own-metric-no-acc", "A task with its own process_results and no acc", own_metric_without_acc, "'cm_mass' reports no acc"),
    Case("lmeval-own-metric-letter", "A task with its own process_results scored in --mode letter", own_metric_in_letter_mode, "--mode letter scores option letters"),
]
