"""Item/prompt loading and the `calmerge eval` CLI: good runs and one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from calmerge.cli import main
from calmerge.errors import DataError
from calmerge.eval.data import load_items, load_prompts

GOOD = [
    {"id": "a", "question": "Sky?", "choices": ["blue", "green"], "answer": 0},
    {"id": "b", "question": "Barks?", "choices": ["cat", "dog", "cow"], "answer": "B",
     "subject": "animals"},
]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_and_csv_load(tmp_path):
    items = load_items(write_jsonl(tmp_path / "i.jsonl", GOOD))
    assert [i.answer for i in items] == [0, 1] and items[1].subject == "animals"
    assert items[1].choices == ("cat", "dog", "cow")
    csv = tmp_path / "i.csv"
    csv.write_text('id,question,A,B,C,answer\nx,"Sky, today?",blue,green,,A\ny,Barks?,cat,dog,cow,2\n')
    got = load_items(csv)
    assert got[0].question == "Sky, today?" and got[0].choices == ("blue", "green")
    assert got[1].answer == 2


def test_split_column_keeps_dev_and_test_apart(tmp_path):
    rows = [{**GOOD[0], "split": "dev"}, {**GOOD[1], "split": "test"}]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    assert [i.id for i in load_items(path, split="dev")] == ["a"]
    assert [i.id for i in load_items(path, split="test")] == ["b"]


@pytest.mark.parametrize(
    "row,message",
    [
        ("{not json", r"bad\.jsonl:2: not valid JSON"),
        ({"id": "c", "question": "Q", "choices": ["x", "y"], "answer": 2}, r":2: answer 2 out of range"),
        ({"id": "c", "question": "Q", "choices": ["x", "y"], "answer": "E"}, r":2: answer 'E' out of"),
        ({"id": "c", "question": "Q", "choices": ["x"], "answer": 0}, r":2: 1 choice\(s\)"),
        ({"id": "a", "question": "Q", "choices": ["x", "y"], "answer": 0}, r":2: duplicate id 'a'"),
        ({"id": "c", "choices": ["x", "y"], "answer": 0}, r":2: missing 'question'"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], row])
    with pytest.raises(DataError, match=message):
        load_items(path)


def test_empty_sets_are_errors(tmp_path):
    with pytest.raises(DataError, match="no items"):
        load_items(write_jsonl(tmp_path / "e.jsonl", []))
    with pytest.raises(DataError, match="no prompts"):
        load_prompts(write_jsonl(tmp_path / "p.jsonl", []))
    with pytest.raises(DataError, match="not found"):
        load_items(tmp_path / "missing.jsonl")


def test_prompts_load(tmp_path):
    got = load_prompts(write_jsonl(tmp_path / "p.jsonl", [{"id": "p", "prompt": "Hi"}]))
    assert got[0].id == "p" and got[0].prompt == "Hi"


def run_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr().err


@pytest.fixture()
def data(tmp_path):
    rows = [
        {"id": f"q{i}", "question": f"Which colour number {i}?",
         "choices": ["blue", "green", "red", "dog"], "answer": i % 4}
        for i in range(12)
    ]
    return write_jsonl(tmp_path / "items.jsonl", rows)


def test_cli_eval_writes_json_and_png(tiny_pair, data, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "open.jsonl", [{"id": "p1", "prompt": "The capital of"}])
    out = tmp_path / "res.json"
    main(["eval", str(tiny_pair[1]), "--data", str(data), "--prompts", str(prompts), "--samples", "3",
          "--max-new-tokens", "4", "--no-embed", "--n-boot", "50", "--output", str(out),
          "--mode", "letter", "--prompt-template", "{question}\\n{choices}\\nAnswer:"])
    text = capsys.readouterr().out
    assert "accuracy" in text and "95% interval" in text and "self_bleu" in text
    payload = json.loads(out.read_text())
    assert payload["config"]["prompt_template"] == "{question}\n{choices}\nAnswer:"
    assert len(payload["predictions"]) == 12 and len(payload["samples"]["p1"]) == 3
    acc = sum(p["correct"] for p in payload["predictions"]) / 12
    assert payload["metrics"]["acc"]["value"] == pytest.approx(acc)
    png = tmp_path / "res.reliability.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize(
    "case,message",
    [
        ("malformed", r"items\.jsonl:2: not valid JSON"),
        ("range", r"items\.jsonl:1: answer 7 out of range"),
        ("one_choice", r"items\.jsonl:1: 1 choice\(s\)"),
        ("duplicate", r"items\.jsonl:2: duplicate id"),
        ("empty", r"items\.jsonl: no items"),
        ("chat", r"no chat template"),
        ("long", r"item 'long'.*longer than the model's context"),
        ("missing_model", r"no such model directory"),
        ("bad_mode", r"'mode'"),
        ("outdir", r"does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(case, message, tiny_pair, tiny_models_dir, tmp_path,
                                          capsys):
    from tiny import make_model

    items = tmp_path / "items.jsonl"
    ok = {"id": "x", "question": "Sky?", "choices": ["a", "b"], "answer": 0}
    rows = {
        "malformed": [ok, "{oops"],
        "range": [{**ok, "answer": 7}],
        "one_choice": [{**ok, "choices": ["a"]}],
        "duplicate": [ok, ok],
        "empty": [],
        "long": [ok, {**ok, "id": "long", "question": "apple banana " * 300}],
    }.get(case, [ok])
    write_jsonl(items, rows)
    model = str(tiny_pair[0])
    extra: list[str] = []
    if case == "chat":
        model = str(make_model(tiny_models_dir / "cli_nochat", seed=5, chat=False))
        extra = ["--prompt-format", "chat"]
    elif case == "missing_model":
        model = str(tmp_path / "nope")
    elif case == "bad_mode":
        extra = ["--mode", "letters"]
    elif case == "outdir":
        extra = ["--output", str(tmp_path / "no" / "res.json")]
    code, err = run_cli(capsys, "eval", model, "--data", str(items), "--n-boot", "0", *extra)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert __import__("re").search(message, err), err
