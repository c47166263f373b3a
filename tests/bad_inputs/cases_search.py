"""Bad inputs of `calmerge search`: found before a model is loaded or a store is written."""

from __future__ import annotations

from bad_inputs.cases import GOOD, OUT, Case, items_file


def _argv(tmp, pair, *extra: str) -> list[str]:
    rows = [{**GOOD, "id": f"q{i}"} for i in range(30)]
    test = items_file(tmp, rows, "test.jsonl")
    dev = items_file(tmp, [{**r, "id": f"d{i}"} for i, r in enumerate(rows)], "dev.jsonl")
    return ["search", "--base", str(pair[0]), "--aligned", str(pair[1]), "--data", str(test),
            "--dev", str(dev), "--store", f"{OUT}/runs.db", "--out", OUT, "--quiet", *extra]


def budget_too_small(tmp, pair):
    return _argv(tmp, pair, "--budget", "50", "--space", "blocks:2")


def unknown_space(tmp, pair):
    return _argv(tmp, pair, "--space", "layers:4")


def malformed_space(tmp, pair):
    return _argv(tmp, pair, "--space", "blocks")


def space_too_deep(tmp, pair):
    return _argv(tmp, pair, "--space", "blocks:9")  # the tiny pair has 2 layers


def unknown_objective(tmp, pair):
    return _argv(tmp, pair, "--objectives", "acc,ecee")


def diversity_objective(tmp, pair):
    return _argv(tmp, pair, "--objectives", "acc,distinct_2")


def _prompts(tmp, n: int) -> str:
    import json

    path = tmp / f"prompts{n}.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) + "\n"
                            for i in range(n)))
    return str(path)


def too_few_prompts(tmp, pair):
    return _argv(tmp, pair, "--objectives", "acc,ece,diversity", "--prompts", _prompts(tmp, 3),
                 "--space", "blocks:2")


def two_diversity_metrics(tmp, pair):
    return _argv(tmp, pair, "--objectives", "acc,distinct_2,self_bleu", "--prompts",
                 _prompts(tmp, 8))


def choice_metric_objective(tmp, pair):
    return _argv(tmp, pair, "--objectives", "acc,brier")


def no_dev(tmp, pair):
    argv = _argv(tmp, pair)
    i = argv.index("--dev")
    return argv[:i] + argv[i + 2:]


CASES = [
    Case("search-budget-too-small", "search --budget smaller than one step (parents + one generation on the anchors)", budget_too_small, "--budget 50 item-evaluations is less than one step"),
    Case("search-unknown-space", "search --space layers:4 (no such kind)", unknown_space, "unknown search space 'layers'"),
    Case("search-malformed-space", "search --space blocks (no K)", malformed_space, "is not KIND:K"),
    Case("search-space-too-deep", "search --space blocks:9 on a 2-layer model", space_too_deep, "9 anchors but"),
    Case("search-unknown-objective", "search --objectives acc,ecee", unknown_objective, "ecee"),
    Case("search-diversity-without-prompts", "search --objectives acc,distinct_2 without --prompts (diversity needs generations)", diversity_objective, "objective 'distinct_2' is measured on sampled generations"),
    Case("search-diversity-too-few-prompts", "search --objectives acc,ece,diversity with 3 prompts (no dev and test halves)", too_few_prompts, "3 prompts; a diversity search splits them"),
    Case("search-two-diversity-metrics", "search --objectives acc,distinct_2,self_bleu", two_diversity_metrics, "at most one diversity metric"),
    Case("search-choice-metric-objective", "search --objectives acc,brier (not raced)", choice_metric_objective, "objective 'brier': a search's candidates are raced"),
    Case("search-no-dev", "search without --dev", no_dev, "'dev' is required"),
]


def sweep_budget_too_small(tmp, pair):
    argv = _argv(tmp, pair)  # the search's flags are the sweep's, but for the command
    return ["sweep", *argv[1:], "--budget", "70"]


def sweep_budget_without_dev(tmp, pair):
    rows = [{**GOOD, "id": f"q{i}"} for i in range(30)]
    test = items_file(tmp, rows, "test.jsonl")
    return ["sweep", "--base", str(pair[0]), "--aligned", str(pair[1]), "--data", str(test),
            "--budget", "1000", "--store", f"{OUT}/runs.db", "--out", OUT, "--quiet"]


CASES += [
    Case("sweep-budget-too-small", "sweep --budget smaller than the parents on dev plus every λ on the anchors", sweep_budget_too_small, "--budget 70 item-evaluations is less than one look at every λ"),
    Case("sweep-budget-without-dev", "sweep --budget without --dev", sweep_budget_without_dev, "--budget chooses on dev"),
]
