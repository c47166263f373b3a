"""The kernel road: linear and soup merges of safetensors inputs without torch.

Why a road of its own: those merges are bound by memory traffic, and importing torch alone
costs more time and memory than merging a 200M model. The kernels (C, or numpy without a
compiler; bit-identical to the torch functions) run in a few threads over fixed-size blocks
read with preadv into reused buffers and written with pwrite at their final offsets. A block
that overflows to NaN is handed back so `stream` recomputes that tensor with torch.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from calmerge.dtypes import KERNEL_TAGS
from calmerge.io import export
from calmerge.io.safetensors import pread_into
from calmerge.io.validate import nonfinite_error
from calmerge.merge.fastpath import LinearKernel
from calmerge.merge.plan import Job, MergePlan, overflow_error

_KERNEL_BLOCK = 1 << 18  # elements per numpy-kernel work item (a few MB of scratch per thread)
_KERNEL_METHODS = ("linear", "soup")
_KERNEL_MAX_INPUTS = 4


def _kernel_inputs(plan: MergePlan, job: Job) -> tuple[list[int], list[float], bool]:
    """Which inputs enter the weighted average, their weights, and whether to normalise."""
    weight = job.params["weight"]
    if plan.method.name == "soup":
        used = [i for i in range(len(plan.inputs)) if i != plan.base_index]
        return used, [weight[i] for i in used], True
    used = list(range(len(plan.inputs)))
    return used, [weight[i] for i in used], bool(job.params["normalize"])


def kernel_ok(plan: MergePlan, device: str = "cpu") -> bool:
    """Whether the kernels (`fastpath`) can run this merge; else it takes the torch path."""
    if device != "cpu" or plan.method.name not in _KERNEL_METHODS:
        return False
    if plan.compute_tag not in (None, "F32") or plan.out_tag not in KERNEL_TAGS:
        return False
    if not all(c.is_safetensors for c in plan.inputs):
        return False
    for job in plan.jobs:
        if not job.merge:
            continue
        used, weights, _ = _kernel_inputs(plan, job)
        if len(used) > _KERNEL_MAX_INPUTS:
            return False
        if any(c.tag(job.spec.name) not in KERNEL_TAGS for c in plan.inputs):
            return False
        if not all(
            isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w)
            for w in weights
        ):
            return False
    return True


@dataclass(frozen=True)
class _Block:
    """A slice [start, stop) (elements) of one output tensor: merged, copied rows, or raw bytes."""

    job: Job
    kind: str  # "merge" | "tail" (rows past the shared vocab, from the reference) | "copy"
    start: int
    stop: int


def _blocks(plan: MergePlan, size: int) -> Iterator[_Block]:
    for job in plan.jobs:
        numel = job.spec.numel
        if not job.merge:
            kinds = [("copy", 0, numel)]
        else:
            shared = numel
            if job.common_rows is not None:
                shared = job.common_rows * (numel // job.spec.shape[0])
            kinds = [("merge", 0, shared), ("tail", shared, numel)]
        for kind, lo, hi in kinds:
            for s in range(lo, hi, size):
                yield _Block(job, kind, s, min(hi, s + size))


class _KernelWorker:
    """One thread's kernel and buffers; merges blocks until the queue is empty."""

    def __init__(
        self,
        plan: MergePlan,
        writer: export.ShardedWriter,
        fds: dict[Path, int],
        native: bool | None = None,
    ):
        self.plan, self.writer, self.fds = plan, writer, fds
        self.kernel = LinearKernel(_KERNEL_BLOCK, native=native)
        self.bufs = [self.kernel.buffer(_KERNEL_BLOCK * 4) for _ in plan.inputs]
        self.out = self.kernel.buffer(_KERNEL_BLOCK * 4)

    def _read(self, i: int, name: str, start: int, stop: int):
        info = self.plan.inputs[i].info(name)
        size = info.nbytes // max(1, self.plan.inputs[i].numel(name))
        raw = self.bufs[i][: (stop - start) * size]
        pread_into(self.fds[info.file], info.start + start * size, raw, info.file)
        return raw

    def run(self, block: _Block) -> tuple[int, bool]:
        """Merge and write one block; returns (bytes written, whether torch must redo it)."""
        plan, job = self.plan, block.job
        name, spec = job.spec.name, job.spec
        out_size = spec.nbytes // max(1, spec.numel)
        out = self.out[: (block.stop - block.start) * out_size]
        ref = plan.ref_index
        if block.kind == "copy":
            out = self._read(ref, name, block.start, block.stop)
        elif block.kind == "tail":
            raw = self._read(ref, name, block.start, block.stop)
            if not self.kernel.convert(raw, plan.inputs[ref].tag(name), out, spec.tag):
                raise nonfinite_error(plan.inputs[ref], name)
        else:
            used, weights, normalize = _kernel_inputs(plan, job)
            raws = [self._read(i, name, block.start, block.stop) for i in used]
            tags = [plan.inputs[i].tag(name) for i in used]
            compute = plan.compute_tag or plan.inputs[ref].tag(name)
            status = self.kernel.run(raws, tags, weights, normalize, compute, out, spec.tag)
            if status != "ok":  # NaN/Inf in an input (named, as the torch path does) or overflow
                for i, raw, tag in zip(used, raws, tags, strict=True):
                    if not self.kernel.finite(raw, tag):
                        raise nonfinite_error(plan.inputs[i], name)
                if status == "nan":  # inf − inf: torch recomputes the tensor and judges it
                    return len(out), True
                raise overflow_error(plan, job)  # finite inputs, an overflow to ±inf
            if (spec.tag != "F32" or compute != "F32") and not self.kernel.finite(out, spec.tag):
                # finite in fp32 but beyond the narrower dtype's range: rounded to ±inf there
                # (the kernels' status judges the fp32 accumulator); the block is still in cache
                raise overflow_error(plan, job)
        self.writer.write_at(name, block.start * out_size, memoryview(out))
        return len(out), False


def run_kernels(
    plan: MergePlan,
    writer: export.ShardedWriter,
    advance: Callable[[int], None],
    native: bool | None = None,
) -> list[Job]:
    """Merge every tensor with the kernels in a few threads; return jobs torch must redo.

    Each thread takes the next block (a few hundred thousand elements), preads its slice of
    every input, merges it and pwrites the result at its final offset: reads, arithmetic and
    writes of different blocks overlap, and memory is a few blocks per thread. Inputs that do
    not enter the average (a soup's base) are not read.
    """
    fds: dict[Path, int] = {}
    blocks = _blocks(plan, _KERNEL_BLOCK)
    lock = threading.Lock()
    errors: list[BaseException] = []
    redo: set[str] = set()

    def work() -> None:
        try:
            worker = _KernelWorker(plan, writer, fds, native)
            while True:
                with lock:
                    block = None if errors else next(blocks, None)
                if block is None:
                    return
                nbytes, again = worker.run(block)
                if again:
                    with lock:
                        redo.add(block.job.spec.name)
                advance(nbytes)
        except BaseException as exc:  # handed to the caller's thread below
            with lock:
                errors.append(exc)

    try:
        for ckpt in plan.inputs:
            for f in ckpt.shard_files:
                fds.setdefault(f, os.open(f, os.O_RDONLY))
        n_threads = max(2, min(4, (os.cpu_count() or 2) + 1))
        threads = [
            threading.Thread(target=work, name=f"calmerge-merge-{k}", daemon=True)
            for k in range(n_threads)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        except BaseException as exc:  # Ctrl-C: stop handing out blocks, let threads finish
            with lock:
                errors.append(exc)
            for t in threads:
                t.join()
    finally:
        for fd in fds.values():
            os.close(fd)
    if errors:
        raise errors[0]
    return [job for job in plan.jobs if job.spec.name in redo]
