"""Parity with lm-evaluation-harness 0.4 (`hf` model, multiple_choice) on a local task."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from calmerge.eval.data import load_items
from calmerge.eval.loading import load_model
from calmerge.eval.score import Scorer

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task reads a local JSONL only
pytest.importorskip("lm_eval")

QUESTIONS = [
    "What colour is the sky on a clear day?",
    "Which animal barks at night?",
    "The capital of France is",
    "one two three four five six seven eight nine",
    "Which fruit is yellow and long?",
    "The capital of Italy is",
]
CHOICES = ["blue", "green apple", "red", "a dog", "Paris", "Rome", "ten", "banana split", "lemon"]

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{text}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def local_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    data = root / "items.jsonl"
    with data.open("w") as fh:
        for i in range(24):
            q = QUESTIONS[i % len(QUESTIONS)]
            choices = [CHOICES[(3 * i + j) % len(CHOICES)] for j in range(2 + i % 3)]
            fh.write(json.dumps({"id": f"q{i}", "question": q, "choices": choices,
                                 "answer": i % len(choices)}) + "\n")
    (root / "bare.yaml").write_text(
        TASK.format(name="calmerge_bare", data=data, text="{{question}}"))
    (root / "qa.yaml").write_text(
        TASK.format(name="calmerge_qa", data=data, text="Question: {{question}}\\nAnswer:"))
    return root, data


def test_loglik_and_acc_match_lm_eval(tiny_pair, local_task):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    root, data = local_task
    lm = HFLM(pretrained=str(tiny_pair[1]), batch_size=8, device="cpu", dtype="float32")
    out = simple_evaluate(
        model=lm, tasks=["calmerge_bare", "calmerge_qa"],
        task_manager=TaskManager(include_path=str(root)), log_samples=True,
    )
    model, tok = load_model(tiny_pair[1], device="cpu", dtype="float32")
    items = load_items(data)
    for task, template in (("calmerge_bare", "{question}"),
                           ("calmerge_qa", "Question: {question}\nAnswer:")):
        samples = {s["doc"]["id"]: s for s in out["samples"][task]}
        ours = Scorer(tok, items, template=template, batch_size=5).score(model)
        for i, item in enumerate(items):
            s = samples[item.id]
            theirs = np.array([float(r[0]) for r in s["filtered_resps"]])
            np.testing.assert_allclose(ours.choice_logprobs[i, : len(theirs)], theirs, atol=1e-4)
            assert float(ours.correct[i]) == s["acc"]
            assert float(ours.correct_norm[i]) == s["acc_norm"]
        res = out["results"][task]
        assert np.mean(ours.correct) == pytest.approx(res["acc,none"])
        assert np.mean(ours.correct_norm) == pytest.approx(res["acc_norm,none"])


def test_a_choice_listed_twice_is_scored_as_lm_eval_scores_it(tiny_pair, tmp_path):
    """lm-eval runs documents that list a choice twice (some MMLU and HellaSwag docs do); the
    copies tie and argmax takes the first. calmerge must run them too, with the same result."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from calmerge.eval.data import load_benchmark
    from calmerge.eval.taskmetrics import benchmark_metrics

    data = tmp_path / "dup.jsonl"
    rows = [{"question": "The capital of France is", "choices": ["Rome", "Paris", "Rome"],
             "answer": 2},
            {"question": "Which animal barks at night?", "choices": ["a dog", "a dog"],
             "answer": 1},
            {"question": "The capital of Italy is", "choices": ["Rome", "ten"], "answer": 0}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "dup.yaml").write_text(
        TASK.format(name="calmerge_dup", data=data, text="{{question}}"))
    lm = HFLM(pretrained=str(tiny_pair[1]), batch_size=8, device="cpu", dtype="float32")
    out = simple_evaluate(model=lm, tasks=["calmerge_dup"], log_samples=True,
                          task_manager=TaskManager(include_path=str(tmp_path)))
    bench = load_benchmark(f"lmeval:calmerge_dup?include_path={tmp_path}")
    assert [len(it.choices) for it in bench.items] == [3, 2, 2]
    model, tok = load_model(tiny_pair[1], device="cpu", dtype="float32")
    result = Scorer(tok, bench.items, template="{question}").score(model)
    theirs = {s["doc_id"]: s for s in out["samples"]["calmerge_dup"]}
    for i in range(3):
        assert float(result.correct[i]) == theirs[i]["acc"]
    got = benchmark_metrics(bench, result, n_boot=0, seed=0, n_bins=10)
    assert got.metrics["acc"].value == pytest.approx(out["results"]["calmerge_dup"]["acc,none"])
    assert result.correct[0] == 0 and result.correct[1] == 0  # the tie goes to the first copy
