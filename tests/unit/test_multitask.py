"""Multi-task sweeps, the pure parts: aggregation, weighted/stratified bootstrap, the store's
per-task rows, results rows and the command line's --data/--dev pairing (hand-worked cases)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from calmerge.analysis.verdict import paired_gain_interval
from calmerge.config import task_overrides
from calmerge.errors import ConfigError
from calmerge.eval.aggregate import (
    TaskOutcome,
    aggregate_metrics,
    item_weights,
    stratified_draws,
    task_shares,
)
from calmerge.eval.calibration import brier_score, expected_calibration_error
from calmerge.eval.metrics import Metric
from calmerge.results.store import Prediction, ResultStore
from calmerge.results.table import AGGREGATE_TASK, point_rows
from calmerge.splits import parse_split, split_key


def _task(name: str, probs: list[list[float]], answer: list[int], *, gold: bool = True,
          score: list[float] | None = None) -> TaskOutcome:
    p = np.array(probs, dtype=float)
    a = np.array(answer)
    correct = (p.argmax(1) == a).astype(float)
    view = {"correct": correct, "correct_norm": correct, "confidence": p.max(1), "probs": p,
            "answer": a}
    s = correct if score is None else np.array(score, dtype=float)
    metrics = {"acc": Metric(float(s.mean()), np.nan, np.nan),
               "acc_norm": Metric(float(correct.mean()), np.nan, np.nan)}
    if gold:
        metrics["ece"] = Metric(expected_calibration_error(p.max(1), correct), np.nan, np.nan)
    return TaskOutcome(name, metrics, s, np.ones(len(s)), view, gold)


A = _task("a", [[.9, .1], [.2, .8], [.6, .4], [.7, .3]], [0, 0, 0, 1])  # acc 0.5
B = _task("b", [[.1, .3, .6], [.5, .25, .25]], [2, 0])  # acc 1.0


def test_split_names_round_trip():
    assert split_key("test", None) == "test" and parse_split("test") == ("test", None)
    assert split_key("dev", "mmlu") == "dev@mmlu" and parse_split("dev@mmlu") == ("dev", "mmlu")


def test_macro_and_micro_accuracy_by_hand():
    m = aggregate_metrics([A, B], kind="macro", n_boot=0, seed=0, n_bins=10)
    assert m["acc_macro"].value == pytest.approx((0.5 + 1.0) / 2)
    assert m["acc_micro"].value == pytest.approx((4 * 0.5 + 2 * 1.0) / 6)
    assert m["acc"] == m["acc_macro"]
    assert aggregate_metrics([A, B], kind="micro", n_boot=0, seed=0, n_bins=10)["acc"].value == (
        pytest.approx(4 / 6))


def test_pooled_calibration_is_over_all_gold_items():
    m = aggregate_metrics([A, B], kind="macro", n_boot=0, seed=0, n_bins=10)
    conf = np.r_[A.view["confidence"], B.view["confidence"]]
    ok = np.r_[A.view["correct"], B.view["correct"]]
    assert m["ece"].value == pytest.approx(expected_calibration_error(conf, ok))
    # brier over padded probabilities equals brier of each item over its own choices
    per_item = [brier_score(A.view["probs"][i:i + 1], A.view["answer"][i:i + 1]) for i in range(4)]
    per_item += [brier_score(B.view["probs"][i:i + 1], B.view["answer"][i:i + 1]) for i in range(2)]
    assert m["brier"].value == pytest.approx(np.mean(per_item))
    assert m["ece_macro"].value == pytest.approx(
        (A.metrics["ece"].value + B.metrics["ece"].value) / 2)


def test_a_task_without_gold_is_left_out_of_calibration_but_not_accuracy():
    own = _task("mc2", [[.5, .5], [.9, .1]], [0, 0], gold=False, score=[0.3, 0.6])
    m = aggregate_metrics([A, own], kind="macro", n_boot=0, seed=0, n_bins=10)
    assert m["acc"].value == pytest.approx((0.5 + 0.45) / 2)
    assert m["ece"].value == pytest.approx(A.metrics["ece"].value)


def test_item_weights_reproduce_the_aggregate():
    for kind in ("macro", "micro"):
        w = item_weights([A.weight, B.weight], kind)
        s = np.r_[A.score, B.score]
        agg = aggregate_metrics([A, B], kind=kind, n_boot=0, seed=0, n_bins=10)["acc"].value
        assert (w * s).sum() / w.sum() == pytest.approx(agg)
    assert task_shares([4, 2], "micro") == pytest.approx([4 / 6, 2 / 6])


def test_stratified_draws_stay_inside_their_task():
    d = stratified_draws([4, 2], n_boot=50, seed=1)
    assert d.shape == (50, 6)
    assert d[:, :4].min() >= 0 and d[:, :4].max() <= 3
    assert d[:, 4:].min() >= 4 and d[:, 4:].max() <= 5


def test_aggregate_interval_covers_value():
    m = aggregate_metrics([A, B], kind="macro", n_boot=400, seed=0, n_bins=10)
    assert m["acc"].lo <= m["acc"].value <= m["acc"].hi
    assert m["acc"].lo < m["acc"].hi


def test_paired_gain_weights_and_strata():
    # two tasks; within each task every item has the same score for each model, so a
    # bootstrap that resamples within tasks has no variance; one that ignores them has
    strata = np.r_[np.zeros(30), np.ones(10)]
    pick = np.r_[np.ones(30), np.zeros(10)]
    base = np.r_[np.zeros(30), np.ones(10)]
    aligned = np.zeros(40)
    w = np.r_[np.full(30, 0.5 / 30), np.full(10, 0.5 / 10)]  # macro: each task half
    g = paired_gain_interval(pick, base, aligned, n_boot=300, seed=0, weights=w, strata=strata)
    assert g.value == pytest.approx(0.5 - 0.5)
    assert g.lo == pytest.approx(0.0) and g.hi == pytest.approx(0.0)
    loose = paired_gain_interval(pick, base, aligned, n_boot=300, seed=0, weights=w)
    assert loose.hi - loose.lo > 0.05
    # without weights and strata: the plain mean difference (bit-identical to before)
    plain = paired_gain_interval(pick, base, aligned, n_boot=0)
    assert plain.value == pytest.approx(0.75 - 0.25)


def test_store_keeps_finished_tasks_of_an_unfinished_point(tmp_path):
    db = ResultStore(tmp_path / "s.db")
    run = db.get_or_create_run("h", "r", {}, {})
    db.add_points(run.id, "linear", [0.5])
    pid = db.claim(run.id, "linear", 0.5)
    rows = [Prediction("q1", 0, 0, 0.9, [-0.1, -2.0], score=0.25, weight=2.0)]
    db.save_splits(pid, metrics={"test@a": {"acc": (0.25, 0.1, 0.4)}},
                   predictions={"test@a": rows})
    assert set(db.metrics(pid)) == {"test@a"}
    assert db.points(run.id, status="done") == []
    assert db.predictions(pid, "test@a")[0].value == 0.25
    db.finish_point(pid, metrics={"test": {"acc": (0.5, 0.4, 0.6)}}, predictions={},
                    keep=["test@a"])
    assert set(db.metrics(pid)) == {"test", "test@a"}
    got = db.predictions(pid, "test@a")[0]
    assert (got.score, got.weight) == (0.25, 2.0)
    # a retry that keeps nothing drops the old task rows
    db.finish_point(pid, metrics={"test": {"acc": (0.5, 0.4, 0.6)}}, predictions={})
    assert set(db.metrics(pid)) == {"test"}


def test_a_store_written_before_item_scores_gains_the_columns(tmp_path):
    path = tmp_path / "old.db"
    db = ResultStore(path)
    db.close()
    conn = sqlite3.connect(path)  # the schema of calmerge 0.1: no score/weight columns
    conn.executescript(
        "ALTER TABLE predictions DROP COLUMN score; ALTER TABLE predictions DROP COLUMN weight;"
    )
    conn.close()
    db = ResultStore(path)
    cols = {r[1] for r in db._conn.execute("PRAGMA table_info(predictions)")}
    assert {"score", "weight"} <= cols


def test_results_rows_one_per_point_and_task(tmp_path):
    db = ResultStore(tmp_path / "s.db")
    run = db.get_or_create_run("h", "r", {}, {})
    db.add_points(run.id, "linear", [0.0])
    pid = db.claim(run.id, "linear", 0.0)
    db.finish_point(pid, metrics={
        "test": {"acc": (0.6, 0.5, 0.7)}, "test@a": {"acc": (0.5, 0.4, 0.6)},
        "test@b": {"acc": (0.7, 0.6, 0.8)}, "dev@a": {"acc": (0.4, 0.3, 0.5)},
    }, predictions={})
    rows = point_rows(db, db.run())
    assert [r["task"] for r in rows] == ["a", "b", AGGREGATE_TASK]
    assert rows[0]["test.acc"] == 0.5 and rows[0]["dev.acc"] == 0.4
    assert rows[2]["test.acc"] == 0.6


def test_command_line_pairs_dev_with_data():
    assert task_overrides(["a"], None) == {"data": "a", "dev": None}
    assert task_overrides(["a"], ["da"]) == {"data": "a", "dev": "da"}
    assert task_overrides(["a", "b"], ["da", "db"]) == {
        "data": [{"data": "a", "dev": "da"}, {"data": "b", "dev": "db"}]}
    assert task_overrides(["a", "b"], None) == {"data": [{"data": "a"}, {"data": "b"}]}
    with pytest.raises(ConfigError, match="2 --dev for 3 --data"):
        task_overrides(["a", "b", "c"], ["x", "y"])


def test_pooled_smooth_ece_has_its_value_and_no_interval():
    from calmerge.eval.calibration import smooth_ece

    m = aggregate_metrics([A, B], kind="macro", n_boot=50, seed=0, n_bins=10)
    conf = np.r_[A.view["confidence"], B.view["confidence"]]
    ok = np.r_[A.view["correct"], B.view["correct"]]
    assert m["smece"].value == pytest.approx(smooth_ece(conf, ok))
    assert np.isnan(m["smece"].lo) and np.isnan(m["smece"].hi)
    assert np.isfinite(m["ece"].lo)  # the cheap pooled metrics keep theirs


def test_a_one_entry_task_list_is_a_single_task_sweep():
    from calmerge.config import SweepConfig
    from calmerge.report.sentences import data_meta

    cfg = SweepConfig(base="b", aligned="a", data=[{"data": "t.jsonl", "dev": "d.jsonl"}])
    assert not cfg.multi_task and cfg.tasks()[0].dev == "d.jsonl"
    assert data_meta(cfg) == {"test data": "t.jsonl", "dev data": "d.jsonl"}
    with pytest.raises(Exception, match="given at the top level"):
        SweepConfig(base="b", aligned="a", data=["t.jsonl"], dev="d.jsonl")
