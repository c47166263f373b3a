"""Simplex sweeps without a model: the grid, refinement, the store's weight keys and the v1
migration, the weights pick rule, the simplex verdict on hand-made points."""

from __future__ import annotations

import itertools
import sqlite3
from math import comb

import numpy as np
import pytest

from calmerge.analysis.pareto import Point
from calmerge.analysis.pick import pick
from calmerge.analysis.simplex import simplex_verdict
from calmerge.coords import weights_label, weights_of
from calmerge.errors import ConfigError, StoreError
from calmerge.eval.metrics import Metric
from calmerge.results.store import ResultStore
from calmerge.sweep.simplex import UNIT, Geometry, edge_extrapolation, grid, grid_size, refine, snap

NAMES = ("base", "sft", "dpo")
SIMPLEX = Geometry(NAMES, task_vectors=False)
BOX = Geometry(NAMES, task_vectors=True)


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("step", [0.5, 0.25, 0.1])
def test_simplex_grid_is_every_composition(n, step):
    geo = Geometry(tuple(f"m{i}" for i in range(n)), task_vectors=False)
    pts = grid(geo, step)
    k = round(1 / step)
    assert len(pts) == len(set(pts)) == comb(k + n - 1, n - 1) == grid_size(n, step, False)
    assert all(sum(p) == UNIT and min(p) >= 0 for p in pts)
    assert all(x % round(step * UNIT) == 0 for p in pts for x in p)
    assert set(geo.vertices().values()) <= set(pts)


def test_box_grid_and_vertices():
    pts = grid(BOX, 0.5)
    assert len(pts) == 9 == grid_size(2, 0.5, True)
    assert BOX.vertices() == {"base": (0, 0), "sft": (UNIT, 0), "dpo": (0, UNIT)}
    assert BOX.edges() == [("base", "sft"), ("base", "dpo")]
    # a box that stops short of 1 holds the base but not the models themselves
    assert Geometry(NAMES, True, UNIT // 2).vertices() == {"base": (0, 0)}


def test_steps_that_do_not_divide_are_refused():
    with pytest.raises(ConfigError, match="does not divide 1"):
        grid(SIMPLEX, 0.3)
    with pytest.raises(ConfigError, match="finer than 1e-6"):
        grid(SIMPLEX, 1e-8)


def test_edge_extrapolation_lies_on_the_edge_lines():
    t = round(1.2 * UNIT)
    pts = edge_extrapolation(SIMPLEX, t)
    assert len(pts) == 6  # every ordered pair of models
    for p in pts:
        assert sum(p) == UNIT and sorted(p) == sorted([t, UNIT - t, 0])
        assert SIMPLEX.edge_of(p) is not None and not SIMPLEX.inside(p)
    assert edge_extrapolation(BOX, t) == [(t, 0), (0, t)]


def test_snap_keeps_the_sum_exactly_one():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w = rng.dirichlet(np.ones(4)) * UNIT
        r = 25_000
        s = snap(w, r, Geometry(tuple("abcd"), False))
        assert sum(s) == UNIT and all(x % r == 0 for x in s)
        assert max(abs(a - b) for a, b in zip(s, w, strict=True)) < r


def test_refinement_stays_on_the_simplex_and_halves_towards_neighbours():
    done = grid(SIMPLEX, 0.25)
    front = [p == (0, UNIT // 2, UNIT // 2) for p in done]
    new = refine(SIMPLEX, done, front, resolution=0.025, limit=100)
    assert new and all(SIMPLEX.inside(p) for p in new)
    f = (0, UNIT // 2, UNIT // 2)
    # each new point is the snapped midpoint towards a grid neighbour (distance 0.125)
    assert all(max(abs(a - b) for a, b in zip(p, f, strict=True)) == UNIT // 8 for p in new)
    assert len(new) == len(set(new)) and not set(new) & set(done)
    # below 2·resolution nothing more is added
    tight = grid(SIMPLEX, 0.05)
    assert refine(SIMPLEX, tight, [True] * len(tight), resolution=0.025, limit=100) == []
    # the limit holds
    assert len(refine(SIMPLEX, done, [True] * len(done), resolution=0.025, limit=3)) == 3


def test_refinement_stays_in_the_box():
    done = grid(BOX, 0.5)
    new = refine(BOX, done, [True] * len(done), resolution=0.05, limit=1000)
    assert new and all(BOX.inside(p) for p in new)


def test_store_keys_points_by_weights(tmp_path):
    db = ResultStore(tmp_path / "r.db")
    run = db.get_or_create_run("h", "soup", {}, {})
    a = weights_of([("base", 0.2), ("sft", 0.3), ("dpo", 0.5)])
    b = weights_of([("base", 0.1 + 0.1), ("sft", 0.3), ("dpo", 0.5)])  # the same point
    c = weights_of([("base", 0.5), ("sft", 0.3), ("dpo", 0.2)])
    db.add_points(run.id, "linear", [a, b, c, 0.5])
    pts = db.points(run.id)
    assert len(pts) == 3 and {p.coord for p in pts} == {a, c, 0.5}
    pid = db.claim(run.id, "linear", a)
    assert pid is not None and db.claim(run.id, "linear", c) not in (None, pid)
    with pytest.raises(StoreError, match=r"base \.5 · sft \.5"):
        db.claim(run.id, "linear", weights_of([("base", 0.5), ("sft", 0.5)]))


def test_a_version_1_store_is_migrated_with_its_points(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript("""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta VALUES ('schema_version', '1');
    CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, config_hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL, created REAL NOT NULL, config_json TEXT NOT NULL,
        fingerprints_json TEXT NOT NULL);
    CREATE TABLE points (id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs(id), family TEXT NOT NULL, lam REAL NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done')), worker TEXT,
        heartbeat REAL, seconds REAL, UNIQUE (run_id, family, lam));
    CREATE TABLE metrics (point_id INTEGER NOT NULL REFERENCES points(id), split TEXT NOT NULL,
        name TEXT NOT NULL, value REAL, lo REAL, hi REAL, PRIMARY KEY (point_id, split, name));
    INSERT INTO runs VALUES (1, 'h', 'old', 0, '{}', '{}');
    INSERT INTO points VALUES (7, 1, 'linear', 0.5, 'done', NULL, NULL, 1.0);
    INSERT INTO metrics VALUES (7, 'test', 'acc', 0.6, 0.5, 0.7);
    """)
    con.commit()
    con.close()
    db = ResultStore(path)
    (p,) = db.points(1)
    assert (p.id, p.lam, p.weights, p.status) == (7, 0.5, None, "done")
    assert db.metrics(7)["test"]["acc"] == pytest.approx((0.6, 0.5, 0.7))
    # the wider key now admits simplex points of the same run beside it
    db.add_points(1, "linear", [weights_of([("a", 0.5), ("b", 0.5)])])
    assert len(db.points(1)) == 2 and db.integrity_ok()
    assert db._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
    db.close()
    assert {p.id for p in ResultStore(path).points(1)} == {7, 8}  # a second open: a no-op


# ── analysis on hand-made points ──

def _point(w, acc_dev, acc_test, ece, family="linear", n=400, seed=0):
    """A point with per-item correctness: `acc_test` of `n` items right (first ones)."""
    mix = weights_of(zip(NAMES if family == "linear" else NAMES[1:], w, strict=True))
    k = round(acc_test * n)
    correct = np.r_[np.ones(k), np.zeros(n - k)]
    m = {s: {"acc": Metric(a, a - .01, a + .01), "ece": Metric(ece, ece, ece)}
         for s, a in (("dev", acc_dev), ("test", acc_test))}
    return Point(family=family, lam=0.0, mix=mix, metrics=m, reliability={},
                 correct={"test": correct, "dev": correct})


def _triangle(acc):
    """Every point of the 0.5 simplex grid with accuracy acc(weights) on dev and test."""
    pts = []
    for u in grid(SIMPLEX, 0.5):
        w = [x / UNIT for x in u]
        a = acc(w)
        pts.append(_point(w, a, a, 0.3 - 0.1 * w[0]))
    return pts


def test_the_interior_pick_beats_every_parent_and_every_edge():
    # the centre of the triangle knows more than any parent or any pair; refinement-style point
    pts = _triangle(lambda w: 0.5 + 0.05 * w[1] + 0.05 * w[2])
    centre = _point([0.25, 0.375, 0.375], 0.75, 0.75, 0.2)
    v = simplex_verdict([*pts, centre], NAMES, n_boot=300)
    assert v.pick is centre and v.interior and v.pick_is_parent is None
    assert v.is_superior and v.beats_edges
    assert {s.name for s in v.parents} == set(NAMES)
    assert len(v.edges) == 3 and v.best_edge is not None
    # the gain over the best parent is against the best (sft and dpo at 0.55)
    assert v.gain.value == pytest.approx(0.75 - 0.55)
    assert v.edge_gain.value == pytest.approx(0.75 - 0.55)  # the edge sft–dpo's midpoint
    # ECE 0.2 at the base, 0.3 at dpo (the last model), 0.2 at the pick: all of it recovered
    assert v.recovered == pytest.approx(1.0)


def test_a_pick_on_an_edge_is_not_called_interior():
    pts = _triangle(lambda w: 0.5 + 0.2 * (w[1] == 0.5 and w[2] == 0.5))
    v = simplex_verdict(pts, NAMES, n_boot=200)
    assert weights_label(v.pick.mix) == "base 0 · sft .5 · dpo .5"
    assert not v.interior and not v.beats_edges
    assert v.is_superior  # more accurate than every parent all the same


def test_weights_pick_rule():
    pts = _triangle(lambda w: 0.5)
    got = pick(pts, "weights=base:0,sft:0.5,dpo:0.5", split="dev")
    assert got.mix == weights_of([("base", 0.0), ("sft", 0.5), ("dpo", 0.5)])
    for rule, msg in [
        ("weights=base:0.5,sft:0.6,dpo:0", "sum to 1.1"),
        ("weights=base:0.5,sft:0.5", "no weight for dpo"),
        ("weights=base:0.5,sft:0.5,rlhf:0", "'rlhf' is not a model"),
        ("weights=base:0.25,sft:0.25,dpo:0.5", "no finished linear point"),
        ("weights=base=0.5", "cannot read .base=0.5."),
        ("lambda=0.5", "sweeps several models"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            pick(pts, rule, split="dev")
    # every permutation of the same weights names the same point
    for order in itertools.permutations([("base", 0), ("sft", 0.5), ("dpo", 0.5)]):
        rule = "weights=" + ",".join(f"{n}:{w}" for n, w in order)
        assert pick(pts, rule, split="dev").mix == got.mix


@pytest.mark.parametrize("rule", ["max-acc", "min-ece", "knee"])
def test_every_named_rule_picks_on_a_simplex(rule):
    pts = _triangle(lambda w: 0.5 + 0.1 * w[1] + 0.05 * w[2])
    v = simplex_verdict(pts, NAMES, rule=rule, n_boot=50)
    assert v.pick.mix is not None and v.edge_rule == (rule if rule != "min-ece" else "max-acc")
    if rule == "min-ece":  # lowest ECE at least as accurate as dpo (the last model): ECE falls
        # with the base's weight (0.3 − 0.1·w_base), so the most base-heavy point that keeps
        # dpo's accuracy (0.55) wins: base .5 · sft .5 (0.55, ECE 0.25)
        assert weights_label(v.pick.mix) == "base .5 · sft .5 · dpo 0"
