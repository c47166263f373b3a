"""Fidelity with lm-evaluation-harness 0.4.13 on its own task programs (`tests/lmeval_tasks`).

Each test runs lm-eval's `simple_evaluate` (HFLM, float32, CPU) and calmerge (`load_benchmark`,
`Scorer`, `benchmark_metrics`) on the same tiny model and the same local copies of real task
YAMLs, and compares per-doc log-likelihoods (log_samples' `filtered_resps`) and the final metric
values: truthfulqa_mc2's own process_results, gpqa's shuffling process_docs (in fresh
processes), a YAML that fixes num_fewshot at 0, winogrande's partial scoring, lm-eval's other
multiple-choice metrics, groups weighted by size and not, and mmlu's group of groups.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from lmeval_tasks import materialize

from calmerge.eval.data import load_benchmark, load_items
from calmerge.eval.loading import load_model
from calmerge.eval.metrics import compute_metrics
from calmerge.eval.score import Scorer
from calmerge.eval.taskmetrics import benchmark_metrics

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ZERO = ["calmerge_truthfulqa_mc1", "calmerge_truthfulqa_mc2", "calmerge_winogrande_metrics",
        "calmerge_arc_sized", "calmerge_mmlu", "calmerge_gpqa_main_zeroshot"]
TWO = ["calmerge_truthfulqa_mc2", "calmerge_winogrande", "calmerge_arc_macro",
       "calmerge_mmlu_macro"]
N_BOOT = 200


@pytest.fixture(scope="module")
def model_dir(tiny_pair, tmp_path_factory):
    """The tiny aligned model with room for truthfulqa's long prompt (RoPE: positions are not
    weights, so a longer max_position_embeddings changes nothing else)."""
    out = tmp_path_factory.mktemp("fidelity") / "model"
    shutil.copytree(tiny_pair[1], out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return materialize(tmp_path_factory.mktemp("lmeval_tasks"))


@pytest.fixture(scope="module")
def lm_eval_runs(model_dir, task_dir):
    """simple_evaluate as lm-eval's CLI runs it: once zero-shot, once with num_fewshot=2."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=8)
    manager = TaskManager(include_path=str(task_dir))
    return {
        shots: simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True,
                               num_fewshot=shots or None, bootstrap_iters=0)
        for shots, tasks in ((0, ZERO), (2, TWO))
    }


@pytest.fixture(scope="module")
def calm(model_dir, task_dir):
    """`run(name, **options)` -> (benchmark, ScoreResult, BenchmarkScores), as `calmerge eval`."""
    model, tok = load_model(model_dir, device="cpu", dtype="float32")

    def run(name: str, **options: object):
        query = "&".join(f"{k}={v}" for k, v in {"include_path": task_dir, **options}.items())
        bench = load_benchmark(f"lmeval:{name}?{query}")
        result = Scorer(tok, bench.items, template="{question}", batch_size=8).score(model)
        return bench, result, benchmark_metrics(bench, result, n_boot=N_BOOT, seed=0, n_bins=10)

    return run


def lm_value(out, node, metric):
    return out["results"][node][f"{metric},none"]


def assert_lls_equal(out, bench, result):
    """Every doc's per-choice log-likelihoods equal lm-eval's (filtered_resps)."""
    for task in bench.scoring.tasks:
        samples = sorted(out["samples"][task.name], key=lambda s: s["doc_id"])
        assert len(samples) == task.size
        for d, s in enumerate(samples):
            theirs = [float(r[0]) for r in s["filtered_resps"]]
            ours = result.choice_logprobs[task.start + d, : len(theirs)]
            np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
            assert result.mask[task.start + d].sum() == len(theirs)


def test_truthfulqa_mc2_reports_its_own_process_results(lm_eval_runs, calm):
    out = lm_eval_runs[0]
    bench, result, scores = calm("calmerge_truthfulqa_mc2")
    assert_lls_equal(out, bench, result)
    theirs = lm_value(out, "calmerge_truthfulqa_mc2", "acc")
    assert scores.metrics["acc"].value == pytest.approx(theirs, abs=1e-6)
    # calmerge's old acc (does choice 0 = doc_to_target win) is another number altogether
    assert abs(float(np.mean(result.correct)) - theirs) > 0.05
    # per doc, the acc share is the doc's true-answer mass, weighted equally
    samples = sorted(out["samples"]["calmerge_truthfulqa_mc2"], key=lambda s: s["doc_id"])
    np.testing.assert_allclose(scores.score, [s["acc"] for s in samples], atol=1e-6)
    assert np.all(scores.weight == 1.0)
    # no gold answer: calmerge's answer-reading metrics are left out, and the notes say why
    assert not scores.gold and set(scores.metrics) == {"acc", "entropy"}
    assert any("own process_results (process_results_mc2)" in n for n in scores.notes)
    assert scores.higher_is_better["acc"] is True
    # the interval: the percentile bootstrap of the per-doc values on compute_metrics' draws
    draws = np.random.default_rng(0).integers(0, len(samples), size=(N_BOOT, len(samples)))
    lo, hi = np.quantile(scores.score[draws].mean(axis=1), [0.025, 0.975])
    assert (scores.metrics["acc"].lo, scores.metrics["acc"].hi) == pytest.approx((lo, hi))


def test_standard_task_acc_is_calmerges_acc(lm_eval_runs, calm):
    out = lm_eval_runs[0]
    bench, result, scores = calm("calmerge_truthfulqa_mc1")
    assert_lls_equal(out, bench, result)
    ours = compute_metrics(result, n_boot=N_BOOT, seed=0, n_bins=10)
    assert scores.metrics["acc"].value == lm_value(out, "calmerge_truthfulqa_mc1", "acc")
    assert scores.metrics["acc"] == ours["acc"]  # same value, same draws, same interval
    assert scores.gold and set(ours) <= set(scores.metrics) and not scores.notes
    np.testing.assert_array_equal(scores.score, result.correct)


def test_lm_evals_other_metrics_and_partial_scoring(lm_eval_runs, calm):
    """winogrande (one context per choice) with acc_norm, acc_bytes, exact_match, f1, mcc and
    brier_score: lm-eval's own process_results and aggregations on calmerge's scores."""
    out = lm_eval_runs[0]
    bench, result, scores = calm("calmerge_winogrande_metrics")
    assert all(it.partial is not None for it in bench.items)
    assert_lls_equal(out, bench, result)
    if getattr(result, "greedy", None) is None:
        pytest.fail("the scorer reports no greedy flags (ScoreResult.greedy)")
    samples = sorted(out["samples"]["calmerge_winogrande_metrics"], key=lambda s: s["doc_id"])
    np.testing.assert_array_equal(
        result.greedy[:, :2], [[bool(r[1]) for r in s["filtered_resps"]] for s in samples]
    )
    for metric in ("acc", "acc_norm", "acc_bytes", "exact_match", "f1", "mcc", "brier_score"):
        assert scores.metrics[metric].value == pytest.approx(
            float(lm_value(out, "calmerge_winogrande_metrics", metric)), abs=1e-6
        ), metric
    assert scores.metrics["acc_norm"].value == pytest.approx(float(np.mean(result.correct_norm)))
    assert scores.higher_is_better["brier_score"] is False
    m = scores.metrics["mcc"]  # re-aggregated per replicate (capped): a real interval
    assert np.isnan(m.lo) or m.lo <= m.hi


def test_partial_scoring_with_fewshot(lm_eval_runs, calm):
    out = lm_eval_runs[2]
    bench, result, scores = calm("calmerge_winogrande", fewshot=2)
    assert bench.items[0].question.count("\n\n") == 2  # two solved examples precede the doc
    assert_lls_equal(out, bench, result)
    assert scores.metrics["acc"].value == lm_value(out, "calmerge_winogrande", "acc")


def test_num_fewshot_fixed_by_the_yaml(lm_eval_runs, calm):
    out = lm_eval_runs[2]  # simple_evaluate(num_fewshot=2)
    bench, result, scores = calm("calmerge_truthfulqa_mc2", fewshot=2)
    zero = load_benchmark(f"{bench.ref.replace('&fewshot=2', '')}")
    assert bench.items == zero.items
    assert ("calmerge_truthfulqa_mc2 fixes num_fewshot at 0 in its YAML; fewshot=2 ignored, "
            "as lm-eval does") in scores.notes
    assert out["n-shot"]["calmerge_truthfulqa_mc2"] == 0
    assert_lls_equal(out, bench, result)
    assert scores.metrics["acc"].value == pytest.approx(
        lm_value(out, "calmerge_truthfulqa_mc2", "acc"), abs=1e-6)


def test_group_weighted_by_size(lm_eval_runs, calm):
    out = lm_eval_runs[0]
    bench, result, scores = calm("calmerge_arc_sized")
    assert_lls_equal(out, bench, result)
    for node in ("calmerge_arc_sized", "calmerge_arc_easy", "calmerge_arc_challenge"):
        for metric in ("acc", "acc_norm"):
            assert scores.breakdown[node][metric].value == pytest.approx(
                lm_value(out, node, metric), abs=1e-12), (node, metric)
    assert scores.metrics["acc"].value == lm_value(out, "calmerge_arc_sized", "acc")
    # size-weighted = pooled over items: calmerge's own accuracy, interval included
    assert scores.metrics["acc"] == compute_metrics(result, n_boot=N_BOOT, seed=0)["acc"]
    assert np.all(scores.weight == 1.0)


def test_group_not_weighted_by_size(lm_eval_runs, calm):
    out = lm_eval_runs[2]  # two-shot: also the few-shot samples must be lm-eval's
    bench, result, scores = calm("calmerge_arc_macro", fewshot=2)
    assert_lls_equal(out, bench, result)
    sizes = {t.name: t.size for t in bench.scoring.tasks}
    assert len(set(sizes.values())) == 2  # unequal tasks: the two weightings differ
    for metric in ("acc", "acc_norm"):
        assert scores.metrics[metric].value == pytest.approx(
            lm_value(out, "calmerge_arc_macro", metric), abs=1e-12)
    acc = scores.metrics["acc"].value
    assert (scores.score * scores.weight).sum() / scores.weight.sum() == pytest.approx(acc)
    assert acc != pytest.approx(float(np.mean(result.correct)))
    for task in bench.scoring.tasks:
        assert np.all(scores.weight[task.start : task.stop] == pytest.approx(1 / task.size))


def test_group_of_groups(lm_eval_runs, calm):
    """mmlu's shape: a group of subgroups of tags. lm-eval aggregates each group over its LEAF
    tasks, which `calmerge_mmlu_macro` (weight_by_size: false, unequal subgroups) pins down."""
    for shots, name in ((0, "calmerge_mmlu"), (2, "calmerge_mmlu_macro")):
        out = lm_eval_runs[shots]
        bench, result, scores = calm(name, fewshot=shots)
        assert_lls_equal(out, bench, result)
        assert len(bench.scoring.tasks) == 3
        nodes = [name, "calmerge_mmlu_stem", "calmerge_mmlu_other", "calmerge_mmlu_anatomy",
                 "calmerge_mmlu_astronomy", "calmerge_mmlu_marketing"]
        for node in nodes:
            assert scores.breakdown[node]["acc"].value == pytest.approx(
                lm_value(out, node, "acc"), abs=1e-12), node
        assert scores.metrics["acc"].value == lm_value(out, name, "acc")
    leaves = [lm_value(out, n, "acc") for n in nodes[3:]]
    subgroups = [lm_value(out, n, "acc") for n in nodes[1:3]]
    assert lm_value(out, "calmerge_mmlu_macro", "acc") == pytest.approx(np.mean(leaves))
    assert np.mean(leaves) != pytest.approx(np.mean(subgroups))


def test_a_tag_is_its_tasks_pooled(lm_eval_runs, calm):
    out = lm_eval_runs[0]
    bench, _, scores = calm("calmerge_mmlu_stem_tasks")
    assert {t.name for t in bench.scoring.tasks} == {"calmerge_mmlu_anatomy",
                                                     "calmerge_mmlu_astronomy"}
    assert any("no lm-eval aggregate" in n for n in scores.notes)
    sizes = [t.size for t in bench.scoring.tasks]
    accs = [lm_value(out, t.name, "acc") for t in bench.scoring.tasks]
    assert scores.metrics["acc"].value == pytest.approx(np.dot(accs, sizes) / sum(sizes))
    assert set(scores.breakdown) == {t.name for t in bench.scoring.tasks}


def test_loading_leaves_the_global_rngs_as_they_were(task_dir):
    import torch

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    before = random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()
    items = load_items(f"lmeval:calmerge_truthfulqa_mc1?include_path={task_dir}")
    assert items
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.random.get_rng_state(), before[2])


_CALMERGE_GPQA = """
import json, random, sys
from calmerge.eval.data import load_benchmark
names, tasks, out = sys.argv[1:]
random.seed(4321)  # a global state unlike the one lm-eval seeds
before = random.getstate()
bench = load_benchmark(f"lmeval:{names}?include_path={tasks}")
assert random.getstate() == before, "the caller's random state was changed"
gpqa = [it for it in bench.items if it.subject == "calmerge_gpqa_main_zeroshot"]
json.dump([[it.question, it.answer] for it in gpqa], open(out, "w"))
"""


def _unseeded_gpqa_answers(task_dir: Path) -> list[int]:
    """gpqa's own process_docs on the same rows under another global seed (an in-memory
    dataset, so `map` recomputes): what a loader that does not seed as lm-eval would give."""
    import datasets
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(task_dir / "gpqa" / "gpqa_main_zeroshot.yaml")
    rows = [json.loads(line) for line in (task_dir / "gpqa" / "gpqa_main.jsonl").open()]
    state = random.getstate()
    try:
        random.seed(4321)
        docs = cfg["process_docs"](datasets.Dataset.from_list(rows))
    finally:
        random.setstate(state)
    return ["ABCD".index(d["answer"][1]) for d in docs]


def test_gpqa_shuffle_is_lm_evals_in_a_fresh_process(lm_eval_runs, task_dir, tmp_path):
    """gpqa's process_docs shuffles each doc's choices with the global `random`. lm-eval ran
    in this process (its data files are new to the datasets cache, so it shuffled); calmerge
    runs in a fresh one with its own empty datasets cache and another global random state, so
    its shuffle is computed, not read back from the cache file lm-eval wrote.

    The tasks built before gpqa in the same `TaskManager.load` draw from `random` too
    (`Task.task_name` calls `random_task_id()`), so lm-eval's shuffle depends on the whole task
    list: calmerge loads the same list, in the same order, in one reference."""
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "calmerge.json"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CALMERGE_GPQA), ",".join(ZERO), str(task_dir),
         str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    samples = sorted(lm_eval_runs[0]["samples"]["calmerge_gpqa_main_zeroshot"],
                     key=lambda s: s["doc_id"])
    theirs = [[s["arguments"][0][0], "ABCD".index(s["target"][1])] for s in samples]
    assert json.loads(out.read_text()) == theirs
    # and the shuffle does depend on the seed: unseeded, the answers fall elsewhere
    assert _unseeded_gpqa_answers(task_dir) != [a for _, a in theirs]


def test_calmerge_eval_reports_lm_evals_numbers(lm_eval_runs, model_dir, task_dir):
    """`calmerge eval --data lmeval:…` (its work function): the task's own acc, the notes, and
    no reliability diagram where no gold answer exists."""
    from calmerge.config import EvalConfig
    from calmerge.eval.evaluate import evaluate_model

    ref = f"lmeval:calmerge_truthfulqa_mc2?include_path={task_dir}&fewshot=3"
    ev = evaluate_model(EvalConfig(model=str(model_dir), data=ref, device="cpu", n_boot=50))
    assert ev.metrics["acc"].value == pytest.approx(
        lm_value(lm_eval_runs[0], "calmerge_truthfulqa_mc2", "acc"), abs=1e-6)
    assert "ece" not in ev.metrics and ev.reliability == []
    assert any("fewshot=3 ignored" in n for n in ev.notes)
    assert any("process_results_mc2" in n for n in ev.notes)


def test_unknown_greedy_is_never_false(calm):
    """Scores without greedy flags: exact_match is left out (not computed from False), and a
    task's own process_results that reads is_greedy is refused."""
    import dataclasses

    from calmerge.errors import DataError
    from calmerge.eval.data.benchmark import Benchmark, BenchmarkScoring, TaskScoring

    bench, result, _ = calm("calmerge_winogrande_metrics")
    blind = dataclasses.replace(result, greedy=None)
    scores = benchmark_metrics(bench, blind, n_boot=20, seed=0, n_bins=10)
    assert "exact_match" not in scores.metrics and "mcc" in scores.metrics
    assert any("exact_match left out" in n for n in scores.notes)

    def reads_greedy(results):
        return [{"acc": float(bool(res[0][1]))} for res in results]

    own = TaskScoring(name="t", start=0, stop=len(bench.items), process=reads_greedy,
                      aggregation={}, mean=lambda v: sum(v) / len(v),
                      higher_is_better={"acc": True}, gold=False)
    items = tuple(dataclasses.replace(it, id=f"t-{i}") for i, it in enumerate(bench.items))
    other = Benchmark("lmeval:t", items, BenchmarkScoring((own,), (), "t"))
    blind = dataclasses.replace(blind, ids=tuple(it.id for it in items))
    with pytest.raises(DataError, match="reads is_greedy"):
        benchmark_metrics(other, blind, n_boot=20, seed=0, n_bins=10)


def test_files_are_their_items_and_calmerges_metrics(tmp_path, calm):
    from calmerge.eval.data.benchmark import display_name

    _, result, _ = calm("calmerge_truthfulqa_mc1")
    rows = [{"id": f"q{i}", "question": "Q?", "choices": ["a", "b"], "answer": i % 2}
            for i in range(3)]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = load_benchmark(path)
    assert bench.scoring is None and list(bench.items) == load_items(path)
    scores = benchmark_metrics(bench, result, n_boot=30, seed=1, n_bins=10)
    assert scores.metrics == compute_metrics(result, n_boot=30, seed=1, n_bins=10)
    assert scores.gold and np.all(scores.weight == 1) and not scores.notes
    assert [display_name(r) for r in (
        "lmeval:mmlu", "lmeval:a,b?fewshot=5", "lmeval:/t/my_task.yaml", str(path),
        f"file:{path}?split=dev", "hf:x/y:cfg:test", "hf:cais/mmlu:abstract_algebra",
        "hf:x/y:test", "hf:json:/data/arc.jsonl", "hf:/data/piqa.parquet",
    )] == ["mmlu", "a+b", "my_task", "items", "items", "y:cfg", "mmlu:abstract_algebra", "y",
           "arc", "piqa"]
