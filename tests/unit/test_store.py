"""Results store: one transaction per point, claims, resume, NaN round-trip."""

from __future__ import annotations

import math
import multiprocessing as mp
import sqlite3

import pytest

from calmerge.errors import StoreError
from calmerge.results.store import Prediction, ResultStore, round_lam


def _finish(store: ResultStore, pid: int, acc: float = 0.5) -> None:
    store.finish_point(
        pid,
        metrics={"test": {"acc": (acc, acc - 0.1, acc + 0.1), "ece": (float("nan"),) * 3}},
        predictions={
            "test": [
                Prediction("q1", 0, 1, 0.7, [-1.0, -0.5]),
                Prediction("q2", 1, 1, 0.6, [-2.0, -0.1]),
            ]
        },
        generations={"p1": ["a b", "c d"]},
        seconds=1.5,
    )


def test_run_points_and_roundtrip(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    run = store.get_or_create_run("abc123", "demo", {"x": 1}, {"base": "f0"})
    again = store.get_or_create_run("abc123", "demo", {"x": 1}, {"base": "f0"})
    assert run.id == again.id and run.config == {"x": 1}
    store.add_points(run.id, "linear", [0.0, 0.1 + 0.2, 0.3, 1.0])
    assert [p.lam for p in store.points(run.id)] == [0.0, 0.3, 1.0]
    pid = store.claim(run.id, "linear", 0.3)
    assert pid is not None
    _finish(store, pid)
    assert store.claim(run.id, "linear", 0.3) is None  # done: never recomputed
    m = store.metrics(pid)
    assert m["test"]["acc"] == pytest.approx((0.5, 0.4, 0.6))
    assert all(math.isnan(x) for x in m["test"]["ece"])
    preds = store.predictions(pid, "test")
    assert [p.item_id for p in preds] == ["q1", "q2"] and preds[1].logprobs == [-2.0, -0.1]
    assert store.generations(pid) == {"p1": ["a b", "c d"]}
    assert [p.status for p in store.points(run.id)] == ["pending", "done", "pending"]
    assert store.integrity_ok()


def test_run_lookup(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    with pytest.raises(StoreError, match="no runs yet"):
        store.run()
    a = store.get_or_create_run("aaaa1111", "first", {}, {})
    b = store.get_or_create_run("bbbb2222", "second", {}, {})
    assert store.run().id == b.id
    assert store.run("first").id == a.id
    assert store.run(str(a.id)).id == a.id
    assert store.run("bbbb").id == b.id
    with pytest.raises(StoreError, match="no run 'zzz'"):
        store.run("zzz")


def test_claim_held_by_live_process_is_refused_and_dead_one_taken_over(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    run = store.get_or_create_run("h", "n", {}, {})
    store.add_points(run.id, "linear", [0.5])
    import os
    import socket

    live = f"{socket.gethostname()}:{os.getppid()}"  # the pytest parent: certainly alive
    assert store.claim(run.id, "linear", 0.5, worker=live) is not None
    assert store.claim(run.id, "linear", 0.5) is None
    # a process that no longer exists: its claim is taken over
    proc = mp.get_context("spawn").Process(target=int)
    proc.start()
    proc.join()
    dead = f"{socket.gethostname()}:{proc.pid}"
    store.add_points(run.id, "linear", [0.6])
    assert store.claim(run.id, "linear", 0.6, worker=dead) is not None
    assert store.claim(run.id, "linear", 0.6) is not None


def test_failed_transaction_leaves_point_pending(tmp_path):
    store = ResultStore(tmp_path / "r.db")
    run = store.get_or_create_run("h", "n", {}, {})
    store.add_points(run.id, "linear", [0.5])
    pid = store.claim(run.id, "linear", 0.5)
    with pytest.raises(ValueError):
        store.finish_point(pid, metrics={"test": {"acc": (0.1, 0.2)}}, predictions={})
    assert store.metrics(pid) == {}
    assert store.points(run.id)[0].status == "running"
    store.release(pid)
    assert store.points(run.id)[0].status == "pending"


def test_not_a_store(tmp_path):
    bad = tmp_path / "junk.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"junk\.db: not a calmerge results store"):
        ResultStore(bad)
    with pytest.raises(StoreError, match="is a directory"):
        ResultStore(tmp_path)


def test_wal_mode(tmp_path):
    ResultStore(tmp_path / "r.db").close()
    conn = sqlite3.connect(tmp_path / "r.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_round_lam():
    assert round_lam(0.1 + 0.2) == round_lam(0.3)
