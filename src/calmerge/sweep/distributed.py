"""Sweeps on a Ray cluster: a pool of actors, each holding one live model; the driver alone
writes the store.

Why Ray and this split: Ray is what people already run for multi-node work (mergekit-evolve
uses it), and keeping every store write in the driver keeps the store, its resume and its
reports exactly as they are without Ray — one transaction per finished point, nothing recorded
twice. Each actor builds the same `Sweep` the driver does (same validation, same tokenised data,
same live-model interpolation) over a private scratch store it never shares, and returns a
point's metrics, per-item predictions and generations; the driver claims a point only when it
hands it to an idle worker and records it when the worker answers.

Faults: actors are created with unlimited restarts and no task retries of Ray's own: a worker
killed mid-point (kill -9 of its process) fails that call; the driver puts the point back in
the queue, and it runs on the next idle worker (the restarted one or another), at most
`MAX_ATTEMPTS` times. A killed driver leaves its claims to the store's liveness rule, so
re-running the command resumes from the store.

Ray is imported only here, and only when `--ray` is given (`pip install 'calmerge[ray]'`).
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from calmerge.coords import Coord, coord_label
from calmerge.errors import CalmergeError, ConfigError

#: attempts per point before the sweep gives up (each lost to a dead worker)
MAX_ATTEMPTS = 3


def import_ray() -> Any:
    """Ray, or one line saying which extra installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray: Ray is not installed", "pip install 'calmerge[ray]'"
        ) from None
    return ray


def check_address(address: str, timeout: float = 3.0) -> None:
    """A HOST:PORT address must answer before Ray is asked to join it (Ray itself retries for
    minutes): one line naming the address otherwise. 'local' and 'auto' are Ray's own."""
    if address in ("local", "auto"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"--ray '{address}': not HOST:PORT", "e.g. --ray 10.0.0.5:6379, or --ray local"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(
            f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc})",
            "start one with `ray start --head` on that node, or use --ray local",
        ) from None


def connect(ray: Any, address: str) -> None:
    """Join (or start, for 'local') the cluster, quietly."""
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if address == "local":  # this machine's cores, so more workers than cores is refused
        kwargs["num_cpus"] = os.cpu_count() or 1
    else:
        kwargs["address"] = address
    if not ray.is_initialized():
        ray.init(**kwargs)


def check_capacity(ray: Any, workers: int, gpu: bool) -> None:
    """More workers than the cluster has devices would queue forever: one line instead."""
    have = ray.cluster_resources()
    kind = "GPU" if gpu else "CPU"
    count = int(have.get(kind, 0))
    if workers > count:
        raise ConfigError(
            f"--workers {workers}: the Ray cluster has {count} {kind}{'s' if count != 1 else ''}",
            f"use --workers {max(count, 1)} or fewer, or add nodes (`ray start --address …`)",
        )


class PointWorker:
    """One live model on a Ray worker (wrapped by `ray.remote` in `WorkerPool`).

    Construction never raises: a user error (a parent this node cannot see, a bad file) is kept
    and reported by `ready`, with the node it happened on, so the driver prints one line.
    """

    def __init__(
        self, build: Callable[[dict[str, Any]], Any], config: dict[str, Any], threads: int | None
    ) -> None:
        self.node = socket.gethostname()
        self.error: str | None = None
        self.sweep: Any = None
        if threads:
            import torch

            torch.set_num_threads(threads)
        try:
            self.sweep = build(config)  # `runner.worker_sweep`, passed in: no import cycle
        except CalmergeError as exc:
            self.error = exc.one_line()
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def ready(self) -> tuple[str, int, str | None]:
        return self.node, os.getpid(), self.error

    def evaluate(self, family: str, lam: Coord) -> dict[str, Any]:
        start = time.perf_counter()
        metrics, preds, gens = self.sweep.evaluate_point(family, lam)
        return {"metrics": metrics, "predictions": preds, "generations": gens,
                "seconds": time.perf_counter() - start, "placement": self.sweep.placement}


@dataclass
class WorkerStats:
    """What one worker did, for the final summary."""

    node: str
    points: int = 0
    seconds: float = 0.0
    lost: int = 0  # calls that died with the worker


@dataclass
class Job:
    family: str
    lam: Coord  # λ, or a simplex sweep's weights
    point_id: int
    attempts: int = 0


@dataclass
class WorkerPool:
    """`workers` actors of `PointWorker`; `run` spreads jobs over them as they free up."""

    config: dict[str, Any]
    workers: int
    #: config → the worker's `Sweep` (`runner.worker_sweep`)
    build: Callable[[dict[str, Any]], Any] | None = None
    gpu: bool = False
    actors: list[Any] = field(default_factory=list)
    stats: dict[int, WorkerStats] = field(default_factory=dict)

    def start(self) -> None:
        ray = import_ray()
        cls = ray.remote(max_restarts=-1, max_task_retries=0)(PointWorker)
        opts = {"num_gpus": 1, "num_cpus": 1} if self.gpu else {"num_cpus": 1}
        threads = None if self.gpu else 1  # one core each: workers must not fight for cores
        self.actors = [cls.options(**opts).remote(self.build, self.config, threads)
                       for _ in range(self.workers)]
        for i, (node, _pid, error) in enumerate(ray.get([a.ready.remote() for a in self.actors])):
            if error is not None:
                raise ConfigError(f"worker {i} on node {node}: {error}",
                                  "every node must see the parents and data at the same paths"
                                  " (a shared filesystem) or load them by hub id")
            self.stats[i] = WorkerStats(node)

    def pids(self) -> list[int]:
        """The worker processes (tests kill them)."""
        ray = import_ray()
        return [r[1] for r in ray.get([a.ready.remote() for a in self.actors])]

    def run(
        self,
        jobs: Sequence[tuple[str, float]],
        claim: Callable[[str, float], int | None],
        done: Callable[[Job, dict[str, Any]], None],
        release: Callable[[int], None],
    ) -> None:
        """Run every (family, λ): `claim` it when a worker is free (None: someone else has it
        or it is done), `done` it when the worker answers. A call lost with its worker puts the
        job (still claimed) first in the queue for the next free worker, and the dead worker
        rejoins once Ray has restarted it (its `ready` answers again)."""
        ray = import_ray()
        lost_errors = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
        queue: deque[Job | tuple[str, float]] = deque(jobs)
        pending: dict[Any, tuple[str, int, Job | None]] = {}  # ref -> (kind, worker, job)
        idle = deque(range(len(self.actors)))
        try:
            while queue or any(kind == "job" for kind, _, _ in pending.values()):
                while idle and queue:
                    item = queue.popleft()
                    if not isinstance(item, Job):
                        pid = claim(*item)
                        if pid is None:
                            continue
                        item = Job(item[0], item[1], pid)
                    worker = idle.popleft()
                    item.attempts += 1
                    ref = self.actors[worker].evaluate.remote(item.family, item.lam)
                    pending[ref] = ("job", worker, item)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                kind, worker, job = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayTaskError as exc:  # the point itself failed
                    if isinstance(exc.cause, CalmergeError):
                        raise exc.cause from None  # one line, as without Ray
                    raise
                except lost_errors:
                    if job is not None:  # the point goes back, still ours, to the next worker
                        self.stats[worker].lost += 1
                        if job.attempts >= MAX_ATTEMPTS:
                            raise RuntimeError(
                                f"point {job.family} {coord_label(job.lam)} lost its worker"
                                f" {job.attempts} times; giving up") from None
                        queue.appendleft(job)
                    pending[self.actors[worker].ready.remote()] = ("ready", worker, None)
                    continue
                idle.append(worker)
                if job is not None:
                    stat = self.stats[worker]
                    stat.points += 1
                    stat.seconds += result["seconds"]
                    done(job, result)
        finally:
            for kind, _, job in pending.values():
                if kind == "job" and job is not None:
                    release(job.point_id)
            for item in queue:
                if isinstance(item, Job):
                    release(item.point_id)

    def shutdown(self) -> None:
        ray = import_ray()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
