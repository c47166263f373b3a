"""Items from Hugging Face `datasets` and lm-evaluation-harness tasks (local data only, no hub).

lm-eval parity: for local YAML tasks, each item scored with the template `{question}` tokenises
to exactly the (context, continuation) ids lm-eval's own `HFLM._encode_pair` makes from the
requests its task builds, and per-choice log-likelihoods equal `HFLM.loglikelihood` on them.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

from calmerge.cli import main
from calmerge.errors import DataError
from calmerge.eval.data import (
    Item,
    data_source,
    items_digest,
    load_items,
    native_template,
    source_of,
)
from calmerge.eval.data import sources as sources_mod

datasets = pytest.importorskip("datasets")

MMLU = [
    {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1},
    {"question": "Sky?", "subject": "nature", "choices": ["blue", "red", "grey"], "answer": 0},
]
ARC = [  # ARC mixes letter keys and 1-based digit keys; the labels decide
    {"id": "arc-1", "question": "Which is a metal?",
     "choices": {"text": ["wood", "iron", "glass"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    {"id": "arc-2", "question": "Which is a gas?",
     "choices": {"text": ["air", "rock", "water", "ice"], "label": ["1", "2", "3", "4"]},
     "answerKey": "1"},
]
HELLASWAG = [
    {"ctx": "A man is on a roof. he", "endings": ["sings.", "tiles it.", "naps.", "falls."],
     "label": "1"},
]
EXPECTED = {
    "mmlu": [("2+2?", ("3", "4", "5", "6"), 1, "math"),
             ("Sky?", ("blue", "red", "grey"), 0, "nature")],
    "arc": [("Which is a metal?", ("wood", "iron", "glass"), 1, ""),
            ("Which is a gas?", ("air", "rock", "water", "ice"), 0, "")],
    "hellaswag": [("A man is on a roof. he", ("sings.", "tiles it.", "naps.", "falls."), 1, "")],
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def summary(items):
    return [(i.question, i.choices, i.answer, i.subject) for i in items]


# ───────────────────────────── Hugging Face datasets ─────────────────────────────


@pytest.mark.parametrize("schema,rows", [("mmlu", MMLU), ("arc", ARC), ("hellaswag", HELLASWAG)])
def test_hf_default_schemas_from_json(tmp_path, schema, rows):
    path = write_jsonl(tmp_path / f"{schema}.jsonl", rows)
    for ref in (f"hf:json:{path}", f"hf:{path}", f"hf:json:{path}:train"):
        items = load_items(ref)
        assert summary(items) == EXPECTED[schema]
    assert [i.id for i in load_items(f"hf:{path}")] == (
        ["arc-1", "arc-2"] if schema == "arc" else [f"train-{k}" for k in range(len(rows))]
    )


def test_hf_parquet_files_and_folders(tmp_path):
    datasets.Dataset.from_list(MMLU).to_parquet(str(tmp_path / "one.parquet"))
    assert summary(load_items(f"hf:parquet:{tmp_path / 'one.parquet'}")) == EXPECTED["mmlu"]
    assert summary(load_items(f"hf:{tmp_path / 'one.parquet'}")) == EXPECTED["mmlu"]
    folder = tmp_path / "arc"
    folder.mkdir()
    datasets.Dataset.from_list(ARC).to_parquet(str(folder / "test.parquet"))
    datasets.Dataset.from_list(ARC[1:]).to_parquet(str(folder / "validation.parquet"))
    assert summary(load_items(f"hf:{folder}")) == EXPECTED["arc"]  # test is the default split
    assert summary(load_items(f"hf:{folder}:validation")) == EXPECTED["arc"][1:]
    assert summary(load_items(f"hf:{folder}?split=validation")) == EXPECTED["arc"][1:]
    assert summary(load_items(f"hf:{folder}", split="validation")) == EXPECTED["arc"][1:]
    assert len(load_items(f"hf:{folder}:test[:1]")) == 1


def test_hf_save_to_disk(tmp_path):
    dd = datasets.DatasetDict({
        "test": datasets.Dataset.from_list(HELLASWAG),
        "validation": datasets.Dataset.from_list(MMLU),
    })
    dd.save_to_disk(str(tmp_path / "dd"))
    assert summary(load_items(f"hf:{tmp_path / 'dd'}")) == EXPECTED["hellaswag"]
    items = load_items(f"hf:{tmp_path / 'dd'}", split="validation")
    assert summary(items) == EXPECTED["mmlu"] and items[0].id == "validation-0"
    datasets.Dataset.from_list(ARC).save_to_disk(str(tmp_path / "single"))
    assert summary(load_items(f"hf:{tmp_path / 'single'}")) == EXPECTED["arc"]


def test_hf_field_overrides(tmp_path):
    piqa = write_jsonl(tmp_path / "piqa.jsonl", [
        {"pid": "p0", "goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat it",
         "label": 0, "cat": "home"},
        {"pid": "p1", "goal": "Dry hair", "sol1": "use water", "sol2": "use a towel",
         "label": 1, "cat": "body"},
    ])
    items = load_items(
        f"hf:json:{piqa}?question=goal&choices=sol1,sol2&answer=label&id=pid&subject=cat"
    )
    assert items == [
        Item("p0", "Open a jar", ("twist the lid", "eat it"), 0, "home"),
        Item("p1", "Dry hair", ("use water", "use a towel"), 1, "body"),
    ]
    nested = write_jsonl(tmp_path / "nested.jsonl", [
        {"q": "Odd one?", "opts": {"text": ["two", "three", "four"], "label": ["1", "2", "3"]},
         "key": "2"},
    ])
    got = load_items(f"hf:json:{nested}?question=q&choices=opts.text&answer=key")
    assert summary(got) == [("Odd one?", ("two", "three", "four"), 1, "")]  # key "2" = label 2
    texts = write_jsonl(tmp_path / "texts.jsonl", [
        {"question": "Capital of Italy?", "options": ["Paris", "Rome"], "gold": "Rome"},
    ])
    assert load_items(f"hf:{texts}")[0].answer == 1  # the answer given as the choice's text
    letters = write_jsonl(tmp_path / "letters.jsonl", [
        {"question": "Pick C", "A": "x", "B": "y", "C": "z", "D": "w", "answer": "C"},
    ])
    assert summary(load_items(f"hf:{letters}")) == [("Pick C", ("x", "y", "z", "w"), 2, "")]


@pytest.mark.parametrize(
    "ref,message",
    [
        ("hf:json:{tmp}/missing.jsonl", r"data files .*missing\.jsonl not found"),
        ("hf:{tmp}/missing_dir", r"missing_dir not found"),
        ("hf:json", r"the 'json' builder needs data files"),
        ("hf:{mmlu}?questoin=q", r"unknown option 'questoin' .*did you mean 'question'"),
        ("hf:{mmlu}?question=prompt", r"\?question=prompt: no column 'prompt'"),
        ("hf:{mmlu}:test", r"cannot load the dataset \(Unknown split"),
        ("hf:{mmlu}:train?split=test", r"conflicting splits test, train"),
        ("hf:{mmlu}?answer=subject", r"\[train row 0\]: 'answer' 'math' is not an index"),
        ("hf:{bad}", r"no choices column \(looked for choices, endings, options\)"),
        ("hf:cais/mmlu:abstract_algebra:test", r"hf:cais/mmlu:abstract_algebra:test: cannot load"),
        ("hff:cais/mmlu", r"'hff:' is not a data source .*did you mean 'hf'"),
        ("hf:{mmlu}:a:b:c", r"too many ':' fields"),
    ],
)
def test_hf_bad_refs_are_one_line_errors(tmp_path, ref, message):
    mmlu = write_jsonl(tmp_path / "mmlu.jsonl", MMLU)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": 0}])
    ref = ref.format(tmp=tmp_path, mmlu=mmlu, bad=bad)
    with pytest.raises(DataError) as exc:
        load_items(ref)
    assert re.search(message, exc.value.one_line()) and "\n" not in exc.value.one_line()


def test_cli_reports_bad_refs_in_one_line(tmp_path, capsys, tiny_pair):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tiny_pair[0]), "--data", f"hf:json:{tmp_path}/nope.jsonl"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "nope.jsonl not found" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_missing_packages_name_the_pip_command(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "m.jsonl", MMLU)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets → ImportError
    with pytest.raises(DataError, match=r"needs the 'datasets' package") as exc:
        load_items(f"hf:{path}")
    assert "pip install datasets" in exc.value.one_line()
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)
    with pytest.raises(DataError, match=r"needs the 'lm_eval' package") as exc:
        load_items("lmeval:arc_easy")
    assert "pip install 'calmerge[lmeval]'" in exc.value.one_line()


# ───────────────────────────── registry, refs, digest ─────────────────────────────


def test_refs_dispatch_and_files_still_load(tmp_path):
    rows = [{"id": "a", "question": "Q?", "choices": ["x", "y"], "answer": 1, "split": "dev"}]
    path = write_jsonl(tmp_path / "f.jsonl", rows)
    assert load_items(path) == load_items(f"file:{path}") == load_items(f"file:{path}?split=dev")
    odd = write_jsonl(tmp_path / "hf:odd.jsonl", rows)  # an existing file wins over a scheme
    assert load_items(str(odd))[0].id == "a"
    sources = (source_of(path), source_of(f"hf:{path}"), source_of("lmeval:x"))
    assert sources == ("file", "hf", "lmeval")
    assert native_template("lmeval:arc_easy") == "{question}"
    assert native_template(f"hf:{path}") is None and native_template(path) is None

    @data_source("calmerge_test_source")
    def _memory(body: str, split: str | None) -> list[Item]:
        return [Item(body, "Q?", ("a", "b"), 0, split or "")]

    try:
        got = load_items("calmerge_test_source:x1", split="s")
        assert got == [Item("x1", "Q?", ("a", "b"), 0, "s")]
        with pytest.raises(ValueError, match="registered twice"):
            data_source("calmerge_test_source")(_memory)
    finally:
        del sources_mod._SOURCES._entries["calmerge_test_source"]  # Registry has no removal


def test_items_digest_follows_content():
    items = [Item("a", "Q?", ("x", "y"), 0, "s"), Item("b", "R?", ("u", "v"), 1)]
    digest = items_digest(items)
    assert len(digest) == 64 and digest == items_digest(list(items))
    assert items_digest([items[0], Item("b", "R?", ("u", "v"), 0)]) != digest
    assert items_digest(items[::-1]) != digest


# ───────────────────────────── lm-evaluation-harness tasks ─────────────────────────────

DOCS = [
    {"id": "q0", "question": "What colour is the sky?", "choices": ["blue", "green apple"],
     "answer": 0, "key": "A"},
    {"id": "q1", "question": "Which animal barks at night?", "choices": ["a cat", "a dog", "a cow"],
     "answer": 1, "key": "B"},
    {"id": "q2", "question": "The capital of France is", "choices": ["Rome", "Paris"],
     "answer": 1, "key": "B"},
    {"id": "q3", "question": "one two three four", "choices": ["five", "banana split", "ten"],
     "answer": 0, "key": "A"},
    {"id": "q4", "question": "Which fruit is yellow?", "choices": ["lemon", "sky"],
     "answer": 0, "key": "A"},
]
for _doc in DOCS:
    _doc["spaced"] = [" " + c for c in _doc["choices"]]
HEAD = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
    train: {data}
test_split: test
training_split: train
output_type: {output_type}
metric_list:
  - metric: acc
"""
TASKS = {
    # the bare prompt, lm-eval's default target_delimiter " "
    "cm_bare": 'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n',
    # description, 2 sampled few-shot examples, gold as choice text
    "cm_shots": (
        'description: "Answer the questions.\\n\\n"\nfewshot_split: train\nnum_fewshot: 2\n'
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{choices[answer]}}"\n'
    ),
    # MMLU-style letters listed in the prompt; gen_prefix
    "cm_letters": (
        'doc_to_text: "{{question}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}"\n'
        'gen_prefix: "Answer:"\ndoc_to_choice: ["A", "B", "C"]\ndoc_to_target: key\n'
    ),
    # no delimiter: the choices carry their own space
    "cm_nodelim": (
        'target_delimiter: ""\ndoc_to_text: "Q: {{question}}\\nA:"\n'
        'doc_to_choice: "{{spaced}}"\ndoc_to_target: answer\n'
    ),
    # delimiters without a space: a tab; nothing at all before bare words after a newline
    "cm_tab": (
        'target_delimiter: "\\t"\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: answer\n"
    ),
    "cm_glued": (
        'target_delimiter: ""\ndoc_to_text: "{{question}}\\nAnswer:\\n"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
    ),
}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval+tasks")  # "+" in a path option stays a "+"
    data = write_jsonl(root / "docs.jsonl", DOCS)
    for name, body in TASKS.items():
        (root / f"{name}.yaml").write_text(
            HEAD.format(name=name, data=data, output_type="multiple_choice") + body
        )
    (root / "cm_group.yaml").write_text("group: cm_group\ntask:\n  - cm_bare\n  - cm_letters\n")
    (root / "cm_gen.yaml").write_text(
        HEAD.format(name="cm_gen", data=data, output_type="generate_until")
        + 'doc_to_text: "{{question}}"\ndoc_to_target: "{{choices[answer]}}"\n'
    )
    (root / "cm_winogrande.yaml").write_text(
        HEAD.format(name="cm_winogrande", data=data, output_type="multiple_choice")
        + "doc_to_text: answer\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{question}}\"\n"
    )
    return root


def lm_eval_requests(task_dir, name):
    """The requests lm-eval itself builds for a task (as simple_evaluate does: seed 1234)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    task = manager.load([name])["tasks"][name]
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(rank=0, world_size=1)
    by_doc: dict[int, list] = {}
    for inst in sorted(task.instances, key=lambda r: (r.doc_id, r.idx)):
        by_doc.setdefault(inst.doc_id, []).append(inst)
    return task, by_doc


@pytest.fixture(scope="module")
def hflm(tiny_pair):
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_pair[1]), batch_size=8, device="cpu", dtype="float32")


@pytest.mark.parametrize("name", list(TASKS))
def test_lmeval_items_reproduce_lm_eval_prompts(task_dir, hflm, name):
    from calmerge.eval.prompts import PromptBuilder

    items = load_items(f"lmeval:{name}?include_path={task_dir}")
    task, by_doc = lm_eval_requests(task_dir, name)
    assert [i.id for i in items] == [f"{name}-{d}" for d in sorted(by_doc)]
    builder = PromptBuilder(hflm.tokenizer, template=native_template("lmeval:x"))
    for item, doc_id in zip(items, sorted(by_doc), strict=True):
        requests = by_doc[doc_id]
        assert item.subject == name and len(item.choices) == len(requests)
        ctx_ids, cont_ids = builder.encode(item)
        for inst, ours in zip(requests, cont_ids, strict=True):
            context, continuation = inst.arguments
            joined = builder.context(item) + builder.delimiter(item) + item.choices[inst.idx]
            assert joined == context + continuation
            theirs_ctx, theirs_cont = hflm._encode_pair(context, continuation)
            assert (ctx_ids, ours) == (theirs_ctx, theirs_cont)
        # the default delimiter is the scorer's; any other travels with the item
        assert (item.delimiter is None) == (name not in ("cm_nodelim", "cm_tab", "cm_glued"))
    # the choices are lm-eval's own texts, so acc_norm's lengths agree
    assert [list(i.choices) for i in items] == [
        [str(c) for c in task.doc_to_choice(d)] for d in DOCS
    ]
    golds = [task.doc_to_target(d) for d in DOCS]
    choices = [task.doc_to_choice(d) for d in DOCS]
    assert [i.answer for i in items] == [
        g if isinstance(g, int) else c.index(g) for g, c in zip(golds, choices, strict=True)
    ]


@pytest.mark.parametrize("name", ["cm_shots", "cm_glued"])
def test_lmeval_loglikelihoods_equal_lm_eval(task_dir, hflm, tiny_pair, name):
    from calmerge.eval.loading import load_model
    from calmerge.eval.score import Scorer

    items = load_items(f"lmeval:{name}?include_path={task_dir}")
    _, by_doc = lm_eval_requests(task_dir, name)
    requests = [inst for d in sorted(by_doc) for inst in by_doc[d]]
    theirs = [float(ll) for ll, _ in hflm.loglikelihood(requests)]
    model, tok = load_model(tiny_pair[1], device="cpu", dtype="float32")
    result = Scorer(tok, items, template="{question}", batch_size=3).score(model)
    ours = [float(result.choice_logprobs[i, j]) for i, it in enumerate(items)
            for j in range(len(it.choices))]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_lmeval_splits_fewshot_and_yaml_paths(task_dir):
    ref = f"lmeval:cm_shots?include_path={task_dir}"
    zero = load_items(f"{ref}&fewshot=0")
    assert zero[0].question == "Answer the questions.\n\nQuestion: What colour is the sky?\nAnswer:"
    assert load_items(f"{ref}&fewshot=1&split=train")[0].question.count("Question:") == 2
    assert len(load_items(ref, split="train")) == len(DOCS)
    by_path = load_items(f"lmeval:{task_dir / 'cm_bare.yaml'}")
    assert by_path == load_items(f"lmeval:cm_bare?include_path={task_dir}")
    both = load_items(f"lmeval:cm_bare,cm_letters?include_path={task_dir}")
    assert {i.subject for i in both} == {"cm_bare", "cm_letters"} and len(both) == 2 * len(DOCS)
    assert load_items(f"lmeval:cm_group?include_path={task_dir}") == both


def test_lmeval_choices_in_the_context_load_as_partial_items(task_dir):
    """A task with one context per choice (winogrande's shape) is scored by partial scoring:
    each choice completes the context, the shared continuation is what is scored."""
    pytest.importorskip("lm_eval")
    items = load_items(f"lmeval:cm_winogrande?include_path={task_dir}")
    assert items and all(it.partial is not None for it in items)
    assert all(it.partial.startswith(" ") for it in items)  # target_delimiter + doc_to_target


@pytest.mark.parametrize(
    "ref,message",
    [
        ("lmeval:cm_gen?include_path={d}", r"task 'cm_gen' is generate_until, not multiple_choice"),
        ("lmeval:cm_bare?include_path={d}&split=validation", r"task 'cm_bare' has no validation"),
        ("lmeval:cm_bare?include_path={d}&split=holdout", r"split 'holdout' is not one of"),
        ("lmeval:cm_bare?include_path={d}&fewshot=-1", r"fewshot=-1 is not a non-negative"),
        ("lmeval:cm_bare?include_path={d}/nope", r"include_path .*nope is not a folder"),
        ("lmeval:{d}/nope.yaml", r"task file .*nope\.yaml not found"),
        ("lmeval:?include_path={d}", r"no task named"),
        ("lmeval:cm_bare?include_paths={d}", r"unknown option 'include_paths'"),
    ],
)
def test_lmeval_bad_refs_are_one_line_errors(task_dir, ref, message):
    pytest.importorskip("lm_eval")
    with pytest.raises(DataError) as exc:
        load_items(ref.format(d=task_dir))
    assert re.search(message, exc.value.one_line()) and "\n" not in exc.value.one_line()


@pytest.mark.slow
def test_lmeval_unknown_task_is_looked_up_in_the_builtin_index(task_dir):
    """A name missing from include_path may be built in, so lm-eval's full index (~15 s) is read."""
    pytest.importorskip("lm_eval")
    with pytest.raises(DataError) as exc:
        load_items(f"lmeval:arc_esy?include_path={task_dir}")
    assert re.search(r"no lm-eval task, group or tag 'arc_esy'.*did you mean 'arc_easy'",
                     exc.value.one_line())
