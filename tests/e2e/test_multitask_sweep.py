"""Multi-task sweeps end to end: one interpolation per point, every task scored and stored per
task, per-task resume after a crash mid-point and after kill -9, results rows and report."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_sweep import write_items

from calmerge import api
from calmerge.config import load_sweep_config
from calmerge.results.store import ResultStore
from calmerge.results.table import AGGREGATE_TASK
from calmerge.sweep.runner import Sweep

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("multitask")
    return {
        "fruit": (write_items(root / "fruit.jsonl", 20), write_items(root / "fruit_dev.jsonl", 8, 50)),
        "more": (write_items(root / "more.jsonl", 12, 200), write_items(root / "more_dev.jsonl", 8, 300)),
    }


def _yaml(tmp_path: Path, pair, tasks, *, grid: str = "[0.0, 0.5, 1.0]", **extra) -> Path:
    base, aligned = pair
    lines = [
        f"base: {base}", f"aligned: {aligned}", f"grid: {grid}", "extrapolate: []",
        "refine: false", "n_boot: 40", "device: cpu",
        f"store: {tmp_path / 'runs.db'}", f"out: {tmp_path / 'report'}", "data:",
        f"  - {{data: {tasks['fruit'][0]}, dev: {tasks['fruit'][1]}, name: fruit}}",
        f"  - {{data: {tasks['more'][0]}, dev: {tasks['more'][1]}, name: more, mode: letter,"
        ' prompt_template: "{question}\\n{choices}\\nAnswer:"}',
    ]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / "sweep.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _longer_context(model: Path, out: Path) -> Path:
    import shutil

    shutil.copytree(model, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def _clean(ms: dict) -> dict:
    """Metrics with NaN as None, so equal dictionaries compare equal."""
    return {k: tuple(None if x != x else x for x in v) for k, v in ms.items()}


def _metrics(store: Path) -> list[tuple]:
    conn = sqlite3.connect(store)
    try:
        return conn.execute(
            "SELECT p.lam, m.split, m.name, m.value, m.lo, m.hi FROM metrics m JOIN points p"
            " ON p.id = m.point_id ORDER BY p.lam, m.split, m.name"
        ).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def reference(tiny_pair, tasks, tmp_path_factory):
    """An uninterrupted multi-task sweep and its single-task twins."""
    root = tmp_path_factory.mktemp("multiref")
    cfg = load_sweep_config(_yaml(root, tiny_pair, tasks), {})
    result = api.sweep(cfg, progress=False)
    return root, cfg, result


def test_each_task_equals_its_own_single_task_sweep(tiny_pair, tasks, reference, tmp_path):
    root, _, _ = reference
    with ResultStore(root / "runs.db") as db:
        multi = {p.lam: db.metrics(p.id) for p in db.points(db.run().id, status="done")}
    base, aligned = tiny_pair
    singles = {
        "fruit": dict(data=str(tasks["fruit"][0]), dev=str(tasks["fruit"][1])),
        "more": dict(data=str(tasks["more"][0]), dev=str(tasks["more"][1]), mode="letter",
                     prompt_template="{question}\n{choices}\nAnswer:"),
    }
    for name, kw in singles.items():
        one = load_sweep_config(None, dict(
            base=str(base), aligned=str(aligned), grid=(0.0, 0.5, 1.0), extrapolate=(),
            refine=False, n_boot=40, device="cpu", store=str(tmp_path / f"{name}.db"),
            out=str(tmp_path / f"{name}-report"), **kw,
        ))
        Sweep(one).execute(progress=False)
        with ResultStore(tmp_path / f"{name}.db") as db:
            for p in db.points(db.run().id, status="done"):
                got = db.metrics(p.id)
                for split in ("test", "dev"):
                    assert _clean(multi[p.lam][f"{split}@{name}"]) == _clean(got[split]), (
                        name, p.lam, split)
    for lam, ms in multi.items():  # the aggregate: macro mean of the two tasks' accuracies
        acc = (ms["test@fruit"]["acc"][0] + ms["test@more"]["acc"][0]) / 2
        assert ms["test"]["acc"][0] == pytest.approx(acc), lam
        assert ms["test"]["acc_micro"][0] == pytest.approx(
            (20 * ms["test@fruit"]["acc"][0] + 12 * ms["test@more"]["acc"][0]) / 32)


def test_results_report_and_verdicts_per_task(reference):
    root, _, result = reference
    rows = api.results_table(root / "runs.db")
    assert {(r["lam"], r["task"]) for r in rows} == {
        (lam, t) for lam in (0.0, 0.5, 1.0) for t in ("fruit", "more", AGGREGATE_TASK)
    }
    md = Path(result.markdown).read_text()
    assert "## Per task" in md and "task's own pick" in md
    assert md.count("fruit: own pick") == 1 and md.count("more: own pick") == 1
    assert (root / "report" / "figures" / "acc_by_task.png").is_file()
    a = api.analyse(root / "runs.db", None)
    assert set(a.task_verdicts) == {"fruit", "more"}
    assert a.verdict.select_split == "dev" and a.task_verdicts["more"].select_split == "dev@more"


def test_a_crash_mid_point_resumes_with_the_tasks_it_had_finished(
    tiny_pair, tasks, reference, tmp_path, monkeypatch
):
    root, _, _ = reference
    cfg = load_sweep_config(_yaml(tmp_path, tiny_pair, tasks), {})
    calls: list[tuple[str, str]] = []
    real = Sweep._score

    def crash_on_second_task(self, task, split):
        if task.name == "more" and not calls.count(("more", split)):
            calls.append((task.name, split))
            raise KeyboardInterrupt  # Ctrl-C / a crash after task 'fruit' was saved
        calls.append((task.name, split))
        return real(self, task, split)

    monkeypatch.setattr(Sweep, "_score", crash_on_second_task)
    with pytest.raises(KeyboardInterrupt):
        Sweep(cfg).execute(progress=False)
    with ResultStore(tmp_path / "runs.db") as db:
        (pid,) = [p.id for p in db.points(db.run().id) if p.lam == 0.0]
        assert set(db.metrics(pid)) == {"test@fruit", "dev@fruit"}
        assert db.points(db.run().id, status="done") == []
        before = db._conn.execute(
            "SELECT rowid FROM predictions WHERE point_id = ? ORDER BY rowid", (pid,)
        ).fetchall()
    calls.clear()
    monkeypatch.setattr(Sweep, "_score", lambda self, t, s: (calls.append((t.name, s)),
                                                             real(self, t, s))[1])
    Sweep(cfg).execute(progress=False)
    # λ=0 scored only the task that had not finished; the others every task
    assert calls.count(("fruit", "test")) == 2 and calls.count(("more", "test")) == 3
    with ResultStore(tmp_path / "runs.db") as db:
        kept = db._conn.execute(
            "SELECT rowid FROM predictions WHERE point_id = ? AND split LIKE '%@fruit'"
            " ORDER BY rowid", (pid,)
        ).fetchall()
    assert kept == before  # the finished task's rows were not rewritten
    assert _metrics(tmp_path / "runs.db") == _metrics(root / "runs.db")


def test_kill_9_during_a_multitask_sweep_loses_nothing(tiny_pair, tasks, tmp_path):
    grid = "[0.0, 0.25, 0.5, 0.75, 1.0]"
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    api.sweep(load_sweep_config(_yaml(ref_dir, tiny_pair, tasks, grid=grid), {}), progress=False)
    argv = [sys.executable, "-m", "calmerge.cli", "sweep",
            str(_yaml(run_dir, tiny_pair, tasks, grid=grid)), "--quiet"]
    rng = random.Random(3)
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(2.0, 5.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        if proc.returncode == 0:
            break
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert kills >= 1
    assert _metrics(run_dir / "runs.db") == _metrics(ref_dir / "runs.db")


def test_cli_repeats_data_and_dev(tiny_pair, tasks, tmp_path):
    base, aligned = tiny_pair
    argv = [sys.executable, "-m", "calmerge.cli", "sweep", "--base", str(base), "--aligned",
            str(aligned), "--data", str(tasks["fruit"][0]), "--dev", str(tasks["fruit"][1]),
            "--data", str(tasks["more"][0]), "--dev", str(tasks["more"][1]),
            "--grid", "0,1", "--no-extrapolate", "--no-refine", "--device", "cpu", "--quiet",
            "--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "r")]
    out = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = json.loads(subprocess.run(
        [sys.executable, "-m", "calmerge.cli", "results", "--store", str(tmp_path / "s.db"),
         "--format", "json"], env=ENV, capture_output=True, text=True).stdout)
    assert {r["task"] for r in rows} == {"fruit", "more", AGGREGATE_TASK}
    assert np.isfinite([r["test.acc"] for r in rows]).all()


def test_lmeval_group_own_metric_task_and_a_file_in_one_sweep(tiny_pair, tasks, tmp_path):
    """An lm-eval group (size-weighted over two ARC-style tasks), truthfulqa_mc2 (its own
    metric, no gold) and a file: each task's acc is what lm-eval computes for it (checked
    against the same benchmark scored alone), mc2 is left out of pooled calibration, and the
    verdict's paired bootstrap runs over the aggregate."""
    pytest.importorskip("lm_eval")
    from lmeval_tasks import materialize

    from calmerge.eval.data import load_benchmark
    from calmerge.eval.loading import load_model
    from calmerge.eval.score import Scorer
    from calmerge.eval.taskmetrics import benchmark_metrics

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    inc = materialize(tmp_path / "tasks")
    # room for truthfulqa's long 6-shot prompt (RoPE: positions are not weights)
    base, aligned = (_longer_context(m, tmp_path / m.name) for m in tiny_pair)
    refs = {
        "arc": f"lmeval:calmerge_arc_sized?include_path={inc}",
        "mc2": f"lmeval:calmerge_truthfulqa_mc2?include_path={inc}",
    }
    cfg = load_sweep_config(None, dict(
        base=str(base), aligned=str(aligned), grid=(0.0, 0.5, 1.0), extrapolate=(),
        refine=False, n_boot=40, device="cpu", store=str(tmp_path / "runs.db"),
        out=str(tmp_path / "report"), data=[
            {"data": refs["arc"], "name": "arc"}, {"data": refs["mc2"], "name": "mc2"},
            {"data": str(tasks["fruit"][0]), "name": "fruit", "prompt_template": "{question}"},
        ],
    ))
    result = api.sweep(cfg, progress=False)
    with ResultStore(tmp_path / "runs.db") as db:
        lam1 = next(p for p in db.points(db.run().id, status="done") if p.lam == 1.0)
        ms = db.metrics(lam1.id)
    model, tok = load_model(aligned, device="cpu", dtype="float32")
    for name in ("arc", "mc2"):  # λ=1 is the aligned model itself
        bench = load_benchmark(refs[name])
        alone = benchmark_metrics(
            bench, Scorer(tok, bench.items, template="{question}").score(model),
            n_boot=40, seed=0, n_bins=10,
        )
        assert ms[f"test@{name}"]["acc"][0] == pytest.approx(alone.metrics["acc"].value, abs=1e-9)
    assert "ece" not in ms["test@mc2"] and "ece" in ms["test@arc"]
    acc = [ms[f"test@{t}"]["acc"][0] for t in ("arc", "mc2", "fruit")]
    assert ms["test"]["acc"][0] == pytest.approx(np.mean(acc))
    assert result.verdict.has_items and np.isfinite(result.verdict.gain.lo)
    md = Path(result.markdown).read_text()  # the report says why mc2 has no calibration
    assert "process\\_results\\_mc2" in md and "note 1" in md


def test_a_task_with_its_own_metric_sweeps_alone(tiny_pair, tmp_path):
    """truthfulqa_mc2 alone: no gold, so no calibration; the sweep, its frontier (acc and the
    gold-free entropy), verdict and report still work and say why ECE is absent."""
    pytest.importorskip("lm_eval")
    from lmeval_tasks import materialize

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    inc = materialize(tmp_path / "tasks")
    base, aligned = (_longer_context(m, tmp_path / m.name) for m in tiny_pair)
    cfg = load_sweep_config(None, dict(
        base=str(base), aligned=str(aligned), grid=(0.0, 0.5, 1.0), extrapolate=(),
        refine=True, max_refine_points=2, n_boot=40, device="cpu",
        store=str(tmp_path / "runs.db"), out=str(tmp_path / "report"),
        data=f"lmeval:calmerge_truthfulqa_mc2?include_path={inc}",
    ))
    result = api.sweep(cfg, progress=False)
    assert "ece" not in result.verdict.objectives and result.verdict.has_items
    assert any("calibration is not measured" in s for s in result.sentences)
    with ResultStore(tmp_path / "runs.db") as db:
        p = db.points(db.run().id, status="done")[0]
        preds = db.predictions(p.id, "test")
    assert all(x.score is not None for x in preds)  # the per-doc mc2 values, not pred == 0
    assert (tmp_path / "report" / "report.html").is_file()
