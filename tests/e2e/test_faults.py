"""Faults done for real, in subprocesses: kill -9 mid-sweep, two sweeps on one store, re-runs.

Nothing finished may be lost, nothing may be computed twice, and the store must end with the
same numbers as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import write_items

from calmerge import api

GRID = "0:1:0.125"  # 9 points


def sweep_argv(pair, data: Path, store: Path, out: Path) -> list[str]:
    """A sweep command with a small bootstrap (the faults, not the statistics, are under test)."""
    base, aligned = pair
    store.parent.mkdir(parents=True, exist_ok=True)
    cfg = store.parent / "sweep.yml"
    cfg.write_text(f"n_boot: 20\nsamples: 2\nstore: {store}\nout: {out}\n")
    return [
        sys.executable, "-m", "calmerge.cli", "sweep", str(cfg), "--base", str(base), "--aligned",
        str(aligned), "--data", str(data), "--grid", GRID, "--no-extrapolate", "--no-refine",
        "--device", "cpu", "--quiet",
    ]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def point_state(store: Path) -> dict[float, tuple[str, float | None]]:
    conn = sqlite3.connect(store)
    rows = conn.execute("SELECT lam, status, heartbeat FROM points").fetchall()
    conn.close()
    return {lam: (status, beat) for lam, status, beat in rows}


def metrics_of(store: Path) -> dict:
    conn = sqlite3.connect(store)
    rows = conn.execute(
        "SELECT p.lam, m.split, m.name, m.value, m.lo, m.hi FROM metrics m JOIN points p"
        " ON p.id = m.point_id ORDER BY p.lam, m.split, m.name"
    ).fetchall()
    preds = conn.execute(
        "SELECT p.lam, d.item_id, d.pred, d.confidence, d.logprobs_json FROM predictions d"
        " JOIN points p ON p.id = d.point_id ORDER BY p.lam, d.idx"
    ).fetchall()
    conn.close()
    return {"metrics": rows, "predictions": preds}


def integrity(store: Path) -> str:
    conn = sqlite3.connect(store)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def fault_data(tmp_path_factory):
    return write_items(tmp_path_factory.mktemp("faults") / "test.jsonl", 48)


@pytest.fixture(scope="module")
def reference(tiny_pair, fault_data, tmp_path_factory):
    """An uninterrupted run: the numbers every interrupted run must end with."""
    root = tmp_path_factory.mktemp("reference")
    store = root / "runs.db"
    start = time.perf_counter()
    subprocess.run(sweep_argv(tiny_pair, fault_data, store, root / "out"), env=ENV, check=True)
    return store, time.perf_counter() - start


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(tiny_pair, fault_data, reference, tmp_path):
    ref_store, ref_seconds = reference
    expected = metrics_of(ref_store)
    rng = random.Random(1234)
    trials = 12  # kills at random moments, over 3 stores (each then finished and compared)
    stores = 3
    for s in range(stores):
        store = tmp_path / f"s{s}" / "runs.db"
        argv = sweep_argv(tiny_pair, fault_data, store, tmp_path / f"s{s}" / "out")
        for _ in range(trials // stores):
            before = point_state(store) if store.exists() else {}
            proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.2, ref_seconds))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            if not store.exists():
                continue
            assert integrity(store) == "ok"
            after = point_state(store)
            for lam, (status, beat) in before.items():
                if status == "done":  # a finished point is never recomputed
                    assert after[lam] == (status, beat)
        done_before = {k for k, v in point_state(store).items() if v[0] == "done"} if store.exists() else set()
        proc = subprocess.run(argv, env=ENV, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert integrity(store) == "ok"
        final = point_state(store)
        assert all(v[0] == "done" for v in final.values()) and len(final) == 9
        assert f"{9 - len(done_before)} points computed" in proc.stdout.replace("\n", " ")
        assert metrics_of(store) == expected


def test_two_sweeps_on_one_store_share_the_work(tiny_pair, fault_data, reference, tmp_path):
    ref_store, _ = reference
    store = tmp_path / "runs.db"
    # create the run and its points first so both processes race for the same claims
    a = subprocess.Popen(sweep_argv(tiny_pair, fault_data, store, tmp_path / "a"), env=ENV,
                         stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    b = subprocess.Popen(sweep_argv(tiny_pair, fault_data, store, tmp_path / "b"), env=ENV,
                         stdout=subprocess.PIPE, text=True)
    out_a, _ = a.communicate()
    out_b, _ = b.communicate()
    assert a.returncode == 0 and b.returncode == 0
    computed = [int(o.split(" points computed")[0].split()[-1]) for o in (out_a, out_b)]
    assert sum(computed) == 9  # every point computed exactly once across both
    assert integrity(store) == "ok"
    assert metrics_of(store) == metrics_of(ref_store)


def test_same_seed_same_predictions(tiny_pair, fault_data, reference, tmp_path):
    ref_store, _ = reference
    store = tmp_path / "again.db"
    base, aligned = tiny_pair
    cfg = api.SweepConfig(
        base=str(base), aligned=str(aligned), data=str(fault_data),
        grid=tuple(i / 8 for i in range(9)), extrapolate=(), refine=False, device="cpu", n_boot=20,
        store=str(store), out=str(tmp_path / "out"),
    )
    api.sweep(cfg, progress=False)
    assert metrics_of(store)["predictions"] == metrics_of(ref_store)["predictions"]
    assert json.dumps(metrics_of(store)["metrics"]) == json.dumps(metrics_of(ref_store)["metrics"])


@pytest.fixture
def small_disk(tmp_path):
    """A real 600 KB filesystem (tmpfs); skipped where this process may not mount one."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_sweep_keeps_finished_points(tiny_pair, fault_data, small_disk, tmp_path):
    """The store fills the disk mid-sweep: one clear line, exit 2, finished points intact."""
    store = small_disk / "runs.db"
    argv = sweep_argv(tiny_pair, fault_data, store, tmp_path / "out")
    argv[argv.index("--grid") + 1] = "0:1:0.0625"  # 17 points: more than 600 KB of predictions
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "runs.db" in lines[0] and "full" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert integrity(store) == "ok"
    states = point_state(store)
    done = [lam for lam, (status, _) in states.items() if status == "done"]
    assert 0 < len(done) < 17
    assert all(status in ("done", "pending") for status, _ in states.values())


@pytest.fixture(scope="module")
def bigger_pair(tmp_path_factory):
    """A pair large enough (~13 MB each, 4 shards) that a merge takes a moment to write."""
    from tiny import make_model

    root = tmp_path_factory.mktemp("bigger")
    base = make_model(root / "base", seed=0, layers=24, max_shard_size="4MB")
    aligned = make_model(root / "aligned", seed=1, base=base, scale=0.2, max_shard_size="4MB")
    return base, aligned


def test_kill_9_during_merge_leaves_nothing_or_a_complete_model(bigger_pair, tmp_path):
    from safetensors.torch import load_file

    base, aligned = bigger_pair
    out = tmp_path / "merged"
    argv = [sys.executable, "-m", "calmerge.cli", "merge", "--base", str(base), "--aligned",
            str(aligned), "--lam", "0.5", "-o", str(out), "--max-shard-size", "2MB", "--quiet"]
    start = time.perf_counter()
    subprocess.run(argv, env=ENV, check=True, capture_output=True)
    full = time.perf_counter() - start
    expected = {f.name for f in out.iterdir()}
    rng = random.Random(7)
    outcomes = set()
    for _ in range(8):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3 * full, full))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if out.exists():  # complete and loadable, never half-written
            outcomes.add("complete")
            assert {f.name for f in out.iterdir()} == expected
            for shard in out.glob("*.safetensors"):
                load_file(shard)
        else:
            outcomes.add("absent")
    # the next run cleans whatever a killed run left beside the output
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(argv, env=ENV, check=True, capture_output=True)
    assert not [p for p in tmp_path.iterdir() if "calmerge-tmp" in p.name]
    assert "absent" in outcomes  # at least one kill landed mid-merge


def _merge_argv(pair, out: Path) -> list[str]:
    base, aligned = pair
    return [sys.executable, "-m", "calmerge.cli", "merge", "--base", str(base), "--aligned",
            str(aligned), "--lam", "0.6", "-o", str(out), "--max-shard-size", "2MB", "--quiet"]


def _one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stderr, stderr
    return lines[0]


def test_merge_onto_a_too_small_disk_is_refused_up_front(bigger_pair, small_disk):
    out = small_disk / "merged"
    proc = subprocess.run(_merge_argv(bigger_pair, out), env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "free" in _one_error_line(proc.stderr)
    assert list(small_disk.iterdir()) == []


def test_write_failure_mid_merge_is_one_line_and_leaves_nothing(bigger_pair, tmp_path):
    """Files may not grow past 1 MB (RLIMIT_FSIZE): the write fails half-way through a shard."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "merged"
    proc = subprocess.run(_merge_argv(bigger_pair, out), env=ENV, capture_output=True, text=True,
                          preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr
    assert "writing failed" in _one_error_line(proc.stderr)
    assert list(tmp_path.iterdir()) == []
