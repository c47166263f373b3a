"""Bounds checked before work (issue 14): what is refused, and what legitimate input still passes."""

from __future__ import annotations

import sys
import time

import pytest

from calmerge.config import MAX_GRID_POINTS, load_yaml, parse_grid
from calmerge.errors import ConfigError, DataError
from calmerge.eval.data import load_items
from calmerge.eval.prompts import TemplateCheck, _OverBudget, within_seconds
from calmerge.merge.methods import resolve_setting


def test_grid_at_the_limit_is_built_and_one_past_is_refused():
    assert len(parse_grid(f"0:1:{1 / (MAX_GRID_POINTS - 1)}")) == MAX_GRID_POINTS
    assert parse_grid("0:1:0.25") == (0.0, 0.25, 0.5, 0.75, 1.0)
    with pytest.raises(ConfigError, match="10,001 λ points"):
        parse_grid(f"0:1:{1 / MAX_GRID_POINTS}")


def test_yaml_anchors_that_do_not_explode_are_allowed(tmp_path):
    y = tmp_path / "m.yml"
    y.write_text("p: &p {weight: 0.5}\nmodels:\n  - {model: a, parameters: *p}\n  - {model: b, parameters: *p}\n")
    assert load_yaml(y)["models"][1]["parameters"] == {"weight": 0.5}


def test_a_gradient_of_any_length_interpolates_as_in_mergekit():
    # a gradient is a curve over depth, not one value per layer: 3 values over any layer count
    assert resolve_setting([0.0, 1.0, 0.0], "x", 0.25) == pytest.approx(0.5)
    assert resolve_setting([0.0, 1.0], "x", 1.0) == pytest.approx(1.0)


def test_crlf_csv_still_reads(tmp_path):
    p = tmp_path / "items.csv"
    p.write_bytes(b'id,question,A,B,answer\r\na,"Q, with comma",x,y,B\r\n')
    [item] = load_items(str(p))
    assert item.question == "Q, with comma" and item.choices == ("x", "y") and item.answer == 1


def test_duplicate_choices_differing_in_text_are_kept(tmp_path):
    p = tmp_path / "items.jsonl"
    p.write_text('{"id": "a", "question": "Q", "choices": ["x", "x "], "answer": 0}\n')
    assert load_items(str(p))[0].choices == ("x", "x ")
    p.write_text('{"id": "a", "question": "Q", "choices": ["x", "x"], "answer": 0}\n')
    with pytest.raises(DataError, match="item 'a' lists choice 'x' twice"):
        load_items(str(p))


def test_budget_stops_a_python_loop_and_restores_the_tracer():
    def spin():
        while True:
            pass

    before = sys.gettrace()
    start = time.monotonic()
    with pytest.raises(_OverBudget):
        within_seconds(0.2, spin)
    assert time.monotonic() - start < 2
    assert within_seconds(1.0, lambda: 42) == 42
    assert sys.gettrace() is before  # coverage's or a debugger's tracer is back


def test_template_checks_are_few():
    check = TemplateCheck()
    sizes = [10, 12, 15, 21, 25, 100, 150, 201, 1000]
    due = [check.due([{"role": "user", "content": "x" * n}]) for n in sizes]
    assert due == [True, False, False, False, True, True, False, False, True]  # past 2x the longest
