"""Sweeps on a Ray cluster the test starts (`ray start --head` on this machine): the same points
as a local sweep, a worker killed mid-point re-run elsewhere with nothing lost or recorded
twice, a killed driver resumed from the store, and the cluster's bad inputs in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from calmerge import api  # noqa: E402
from calmerge.config import SweepConfig  # noqa: E402
from calmerge.errors import ConfigError  # noqa: E402
from calmerge.results.store import ResultStore  # noqa: E402
from calmerge.sweep.runner import Sweep  # noqa: E402

BIN = Path(sys.executable).parent
# the test's own throwaway cluster on localhost: Ray 2.5x's token authentication off for it (and
# for this process, which joins it), instead of sharing a token file
os.environ["RAY_AUTH_MODE"] = "disabled"
GRID = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A two-CPU Ray head on this machine, stopped (with everything it started) at the end."""
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"],
        check=True, capture_output=True, env=env, timeout=120,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("raydata")
    rows = [{"id": f"q{i}", "question": f"Which colour is number {i}?",
             "choices": ["red", "green", "blue", "amber"], "answer": i % 4} for i in range(40)]
    test = root / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dev = root / "dev.jsonl"
    dev.write_text("".join(json.dumps({**r, "id": f"d{i}"}) + "\n" for i, r in enumerate(rows[:20])))
    return test, dev


def _cfg(pair, items, tmp, **kw):
    return SweepConfig(base=str(pair[0]), aligned=str(pair[1]), data=str(items[0]),
                       dev=str(items[1]), grid=GRID, refine=False, n_boot=50, device="cpu",
                       store=str(tmp / "runs.db"), out=str(tmp / "report"), **kw)


def _numbers(store):
    return {r["lam"]: {k: v for k, v in r.items() if k.startswith(("test.", "dev."))}
            for r in api.results_table(store)}


@pytest.fixture(scope="module")
def local_numbers(tiny_pair, items, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    api.sweep(_cfg(tiny_pair, items, tmp), progress=False)
    return _numbers(tmp / "runs.db")


def test_ray_points_equal_the_local_sweep(cluster, tiny_pair, items, tmp_path, local_numbers):
    res = api.sweep(_cfg(tiny_pair, items, tmp_path, ray=cluster, workers=2), progress=False)
    assert res.computed == len(GRID)
    assert sorted(res.workers) == [0, 1] and sum(w.points for w in res.workers.values()) == 9
    assert _numbers(tmp_path / "runs.db") == local_numbers


def test_a_worker_killed_mid_point_is_replaced(cluster, tiny_pair, items, tmp_path,
                                               local_numbers):
    runner = Sweep(_cfg(tiny_pair, items, tmp_path, ray=cluster, workers=2))
    killed: list[int] = []

    def kill_one() -> None:
        store = ResultStore(tmp_path / "runs.db")
        deadline = time.time() + 120
        while time.time() < deadline:
            if runner._pool is not None and runner._pool.actors and any(
                p.status == "done" for p in store.points(runner.run.id)
            ):
                pid = runner._pool.pids()[0]
                os.kill(pid, signal.SIGKILL)  # while it holds a point: the queue is not empty
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one)
    killer.start()
    outcome = runner.execute(progress=False)
    killer.join()
    assert killed, "no worker was killed"
    assert sum(w.lost for w in outcome.workers.values()) >= 1
    points = ResultStore(tmp_path / "runs.db").points(runner.run.id)
    assert len(points) == len(GRID) and all(p.status == "done" for p in points)
    assert sorted(lam for _, lam in outcome.computed) == sorted(GRID)  # each recorded once
    assert _numbers(tmp_path / "runs.db") == local_numbers


def test_a_killed_driver_resumes_from_the_store(cluster, tiny_pair, items, tmp_path,
                                                local_numbers):
    import yaml

    cfg = _cfg(tiny_pair, items, tmp_path).model_dump(mode="json", exclude_defaults=True)
    (tmp_path / "sweep.yml").write_text(yaml.safe_dump(cfg))
    argv = [str(BIN / "calmerge"), "sweep", str(tmp_path / "sweep.yml"), "--ray", cluster,
            "--workers", "2", "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if (tmp_path / "runs.db").exists():
            db = ResultStore(tmp_path / "runs.db")
            done = sum(p.status == "done" for r in db.runs() for p in db.points(r.id))
            if done:
                break
        time.sleep(0.1)
    proc.kill()
    _, err = proc.communicate()
    assert 0 < done < len(GRID), f"the driver finished before it could be killed ({done}): {err[-1500:]}"
    shutil.rmtree(tmp_path / "report", ignore_errors=True)
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    got = _numbers(tmp_path / "runs.db")
    diff = {(lam, k): (v, local_numbers[lam].get(k)) for lam, row in got.items()
            for k, v in row.items() if v != local_numbers[lam].get(k)}
    assert not diff, list(diff.items())[:5]


def test_more_workers_than_the_cluster_has(cluster, tiny_pair, items, tmp_path):
    with pytest.raises(ConfigError, match="--workers 9: the Ray cluster has 2 CPUs"):
        Sweep(_cfg(tiny_pair, items, tmp_path, ray=cluster, workers=9))
    assert not (tmp_path / "runs.db").exists()


def test_parents_a_worker_cannot_see(cluster, tiny_pair, items, tmp_path):
    """The driver sees the parents; the workers are told a path they cannot see (as a node
    without the shared filesystem would be): one line naming the node and the path."""
    runner = Sweep(_cfg(tiny_pair, items, tmp_path, ray=cluster, workers=1))
    runner.cfg = runner.cfg.model_copy(update={"base": "/nonexistent/base-model"})
    with pytest.raises(ConfigError, match=r"worker 0 on node .*: .*/nonexistent/base-model"):
        runner.execute(progress=False)


def test_unreachable_address_and_missing_ray(tiny_pair, items, tmp_path, monkeypatch):
    port = _free_port()  # nothing listens there
    with pytest.raises(ConfigError, match=f"--ray 127.0.0.1:{port}: no Ray cluster answers"):
        Sweep(_cfg(tiny_pair, items, tmp_path, ray=f"127.0.0.1:{port}"))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match="Ray is not installed") as exc:
        Sweep(_cfg(tiny_pair, items, tmp_path, ray="local"))
    assert "pip install 'calmerge[ray]'" in exc.value.hint
    assert not (tmp_path / "runs.db").exists()


def test_a_multi_task_sweep_on_ray_equals_the_local_one(cluster, tiny_pair, items, tmp_path):
    """Two tasks per point: a worker returns every task's splits, the driver saves them (and
    the aggregate) in the point's one transaction."""
    rows = [json.loads(line) for line in items[0].read_text().splitlines()]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "id": f"o{i}", "question": f"Name shade {i}."})
                             + "\n" for i, r in enumerate(rows[:24])))

    def run(sub, **kw):
        cfg = SweepConfig(base=str(tiny_pair[0]), aligned=str(tiny_pair[1]),
                          data=({"data": str(items[0]), "dev": str(items[1])},
                                {"data": str(other), "dev": str(items[1]), "name": "other"}),
                          grid=(0.0, 0.5, 1.0), refine=False, n_boot=30, device="cpu",
                          store=str(tmp_path / sub / "runs.db"), out=str(tmp_path / sub / "r"),
                          **kw)
        api.sweep(cfg, progress=False)
        return api.results_table(cfg.store)

    local = run("local")
    remote = run("ray", ray=cluster, workers=2)
    assert len(local) == len(remote) == 9  # 3 points x (2 tasks + the aggregate)
    diff = [(a["lam"], a["task"], k, a[k], b.get(k)) for a, b in zip(local, remote, strict=True)
            for k in a if a[k] != b.get(k) and not (a[k] != a[k] and b.get(k) != b.get(k))]
    assert not diff, diff[:6]


def test_a_simplex_sweep_on_ray_equals_the_local_one(cluster, tiny_pair, items, tmp_path,
                                                     tiny_models_dir):
    """Points keyed by weights travel to the workers and back like λ points."""
    from tiny import make_model

    dpo = tiny_models_dir / "ray-dpo"
    if not dpo.exists():
        make_model(dpo, seed=5, base=tiny_pair[0], scale=0.2)

    def run(sub, **kw):
        cfg = SweepConfig(models=[f"base={tiny_pair[0]}", f"sft={tiny_pair[1]}", f"dpo={dpo}"],
                          data=str(items[0]), dev=str(items[1]), simplex_step=0.5, refine=False,
                          n_boot=30, device="cpu", store=str(tmp_path / sub / "runs.db"),
                          out=str(tmp_path / sub / "r"), **kw)
        api.sweep(cfg, progress=False)
        return api.results_table(cfg.store)

    local, remote = run("local"), run("ray", ray=cluster, workers=2)
    assert len(local) == len(remote) == 6
    key = lambda r: (r["w.base"], r["w.sft"], r["w.dpo"])  # noqa: E731
    assert sorted(local, key=key) == sorted(remote, key=key) or all(
        a[k] == b[k] or (a[k] != a[k] and b[k] != b[k])
        for a, b in zip(sorted(local, key=key), sorted(remote, key=key), strict=True) for k in a
    )
