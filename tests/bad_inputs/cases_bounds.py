"""Bad inputs of issue 14: work bounded before it is allocated (grids, YAML size and aliases,
data lines, rows and choices, chat-template time, config sizes), decode and parse errors as one
line naming file and line, and duplicate choices. Each would hang, exhaust memory or print a
traceback without its check; each finishes in seconds."""

from __future__ import annotations

import json
from pathlib import Path

# Bound before `bad_inputs.cases` is imported, filled in place at the end: run as a script,
# cases.py imports itself again and collects this module while it is still half-imported.
CASES: list = []

from bad_inputs.cases import GOOD, OUT, Case, copy_model, eval_argv, items_file, sweep_argv  # noqa: E402


def merge_yaml(tmp: Path, pair, body: str | bytes) -> list[str]:
    y = tmp / "m.yml"
    head = f"merge_method: linear\nmodels:\n  - model: {pair[0]}\n  - model: {pair[1]}\n"
    if isinstance(body, bytes):
        y.write_bytes(head.encode() + body)
    else:
        y.write_text(head + body)
    return ["merge", str(y), "-o", OUT]


# ── YAML ──
def yaml_too_large(tmp, pair):
    return merge_yaml(tmp, pair, "# " + "x" * (2 << 20) + "\n")


def yaml_alias_bomb(tmp, pair):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return merge_yaml(tmp, pair, "\n".join(lines) + "\n")


def yaml_recursive_alias(tmp, pair):
    return merge_yaml(tmp, pair, "loop: &x [*x]\n")


def yaml_deep(tmp, pair):
    return merge_yaml(tmp, pair, "deep: " + "[" * 5000 + "]" * 5000 + "\n")


def yaml_not_utf8(tmp, pair):
    return merge_yaml(tmp, pair, b"# caf\xe9\n")


def gradient_nested_list(tmp, pair):
    y = tmp / "m.yml"
    y.write_text(f"merge_method: linear\nmodels:\n  - model: {pair[0]}\n    parameters:\n"
                 f"      weight: [[0.1, 0.2], 0.3]\n  - model: {pair[1]}\n    parameters:\n"
                 "      weight: 0.5\n")
    return ["merge", str(y), "-o", OUT]


# ── grids ──
def grid_huge_range(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD]), "--grid", "0:1:1e-9")


def grid_long_list(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD]), "--grid", ",".join(["0.5"] * 20_000))


def grid_long_yaml_list(tmp, pair):
    y = tmp / "s.yml"
    grid = ", ".join(f"{i / 20_000:.5f}" for i in range(20_001))
    y.write_text(f"base: {pair[0]}\naligned: {pair[1]}\ndata: {items_file(tmp, [GOOD])}\n"
                 f"grid: [{grid}]\nstore: {OUT}/runs.db\nout: {OUT}\n")
    return ["sweep", str(y), "--quiet"]


def grid_infinite(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD]), "--grid", "0:inf:1")


# ── data files ──
def line_too_long(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, {**GOOD, "id": "b", "question": "x" * (2 << 20)}]))


def too_many_rows(tmp, pair):
    p = tmp / "items.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" * 1_000_001)
    return sweep_argv(pair, p)


def data_not_utf8(tmp, pair):
    p = tmp / "items.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b'\n{"id": "b", "question": "caf\xe9"}\n')
    return sweep_argv(pair, p)


def data_deep_json(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, "[" * 100_000 + "]" * 100_000]))


def csv_field_too_large(tmp, pair):
    p = tmp / "items.csv"
    p.write_text("id,question,A,B,answer\nb," + "x" * 200_000 + ",x,y,0\n")
    return sweep_argv(pair, p)


def too_many_choices(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, {**GOOD, "id": "b", "choices": [str(i) for i in range(300)]}]))


def answer_float(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, {**GOOD, "id": "b", "answer": 1.5}]))


def answer_nested(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, {**GOOD, "id": "b", "answer": [[1]]}]))


def letter_27_choices(tmp, pair):
    row = {**GOOD, "id": "b", "choices": [f"c{i}" for i in range(27)]}
    return sweep_argv(pair, items_file(tmp, [GOOD, row]), "--mode", "letter")


def duplicate_choices(tmp, pair):
    return sweep_argv(pair, items_file(tmp, [GOOD, {**GOOD, "id": "b", "choices": ["x", "y", "x"]}]))


# ── chat templates and tokenizer files ──
def with_template(tmp, pair, template: str | bytes) -> Path:
    m = copy_model(pair[1], tmp / "tmpl")
    f = m / "chat_template.jinja"
    f.write_bytes(template if isinstance(template, bytes) else template.encode())
    return m


def slow_template(tmp, pair):
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}"
    m = with_template(tmp, pair, loop)
    return eval_argv(m, items_file(tmp, [GOOD]), "--prompt-format", "chat")


def raising_template(tmp, pair):
    m = with_template(tmp, pair, "{{ raise_exception('roles must alternate') }}")
    return eval_argv(m, items_file(tmp, [GOOD]), "--prompt-format", "chat")


def template_not_utf8(tmp, pair):
    m = with_template(tmp, pair, b"{% for m in messages %}\xff{{ m.content }}{% endfor %}")
    return eval_argv(m, items_file(tmp, [GOOD]), "--prompt-format", "chat")


def tokenizer_config_not_json(tmp, pair):
    m = copy_model(pair[1], tmp / "tokjson")
    (m / "tokenizer_config.json").write_text("{not json")
    return eval_argv(m, items_file(tmp, [GOOD]))


# ── config sizes ──
def with_config(tmp, pair, **change) -> Path:
    m = copy_model(pair[1], tmp / "bigcfg")
    cfg = json.loads((m / "config.json").read_text())
    cfg.update(change)
    (m / "config.json").write_text(json.dumps(cfg))
    return m


def config_vocab_huge(tmp, pair):
    return sweep_argv((pair[0], with_config(tmp, pair, vocab_size=10**9)), items_file(tmp, [GOOD]))


def config_hidden_huge(tmp, pair):
    return eval_argv(with_config(tmp, pair, hidden_size=10**6), items_file(tmp, [GOOD]))


CASES += [
    Case("yaml-too-large", "A merge YAML over 1 MiB, refused before it is parsed", yaml_too_large, "m.yml"),
    Case("yaml-alias-bomb", "A YAML whose aliases expand to 10⁹ values", yaml_alias_bomb, "expands to more than"),
    Case("yaml-recursive-alias", "A YAML alias that refers to itself", yaml_recursive_alias, "refers to itself"),
    Case("yaml-deep-nesting", "A YAML nested 5,000 levels deep", yaml_deep, "nested too deeply"),
    Case("yaml-not-utf8", "A merge YAML that is not UTF-8", yaml_not_utf8, "m.yml:5"),
    Case("gradient-nested-list", "A nested list as a merge parameter", gradient_nested_list, "parameter 'weight'"),
    Case("grid-huge-range", "`--grid 0:1:1e-9`, counted before a λ is built", grid_huge_range, "1,000,000,001 λ points"),
    Case("grid-long-list", "A comma list of 20,000 λ", grid_long_list, "20,000 λ points"),
    Case("grid-long-yaml-list", "A YAML grid list of 20,001 λ", grid_long_yaml_list, "20,001 λ points"),
    Case("grid-infinite", "A λ range to infinity", grid_infinite, "0:inf:1"),
    Case("line-too-long", "A data line over 1 MiB", line_too_long, "items.jsonl:2"),
    Case("too-many-rows", "A data file over a million lines", too_many_rows, "more than 1,000,000 lines"),
    Case("data-not-utf8", "A JSONL line that is not UTF-8", data_not_utf8, "items.jsonl:2"),
    Case("data-deep-json", "A JSONL line nested 100,000 levels deep", data_deep_json, "items.jsonl:2"),
    Case("csv-field-too-large", "A CSV field over the csv module's limit", csv_field_too_large, "items.csv:2"),
    Case("too-many-choices", "An item with 300 choices", too_many_choices, "items.jsonl:2"),
    Case("answer-float", "A fractional answer", answer_float, "items.jsonl:2"),
    Case("answer-nested-list", "A nested list as the answer", answer_nested, "items.jsonl:2"),
    Case("letter-mode-27-choices", "27 choices in letter mode, blamed on the item and the mode", letter_27_choices, "item 'b': 27 choices, but --mode letter"),
    Case("duplicate-choices", "The same choice twice in an item", duplicate_choices, "item 'b' lists choice 'x' twice"),
    Case("slow-chat-template", "A chat template that loops 10¹⁰ times, stopped after 5 s", slow_template, "chat template still rendering"),
    Case("raising-chat-template", "A chat template that raises", raising_template, "roles must alternate"),
    Case("chat-template-not-utf8", "A chat template that is not UTF-8", template_not_utf8, "chat_template.jinja:1"),
    Case("tokenizer-config-not-json", "tokenizer_config.json that is not JSON", tokenizer_config_not_json, "tokenizer_config.json:1"),
    Case("config-vocab-huge", "config.json with vocab_size 10⁹ beside small weights", config_vocab_huge, "vocab_size × hidden size"),
    Case("config-hidden-huge", "config.json with hidden_size 10⁶ beside small weights", config_hidden_huge, "1,000,000 parameters"),
]
