"""Execute a plan: stream tensor by tensor from the inputs into pre-sized output shards.

Why streaming: resident memory must stay a few tensors (the prefetch window), not the model.
On the torch path a thread pool reads the next tensors (preadv, GIL released) while the
current one is merged, and a writer thread puts results at their final offsets. `execute`
sends the merges the kernels can do down the kernel road (`fastpath.road`, no torch at all)
and everything else, plus any tensor the kernels hand back, through `merge_one`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from calmerge.io import export
from calmerge.io.checkpoint import Checkpoint
from calmerge.io.validate import check_finite
from calmerge.merge.fastpath.road import kernel_ok, run_kernels
from calmerge.merge.methods import Group
from calmerge.merge.plan import Job, MergePlan, overflow_error, tensor_seed
from calmerge.progress import progress_bar

if TYPE_CHECKING:
    from concurrent.futures import Future

    import torch

_BLOCK_ELEMENTS = 1 << 18  # row-block size for elementwise methods (fits in L2 cache)
PREFETCH = 2


def merge_one(
    plan: MergePlan,
    job: Job,
    tensors: list[torch.Tensor],
    device: str = "cpu",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Merge one tensor: cast to the compute dtype, apply the method, cast to the output.

    `out`: a tensor of the job's shape and output dtype to write into instead of a new one (the
    sweep's live parameters: row blocks land straight in the model, no second copy).
    """
    import torch

    ref = tensors[plan.ref_index]
    if not job.merge:
        return ref
    if out is None:
        out = torch.empty(job.spec.shape, dtype=job.spec.dtype)
    rows = job.common_rows
    views = [t[:rows] for t in tensors] if rows is not None else tensors
    target = out[:rows] if rows is not None else out
    compute = plan.compute_dtype or ref.dtype
    gen = None
    if plan.method.randomized:
        gen = torch.Generator(device=device).manual_seed(
            tensor_seed(plan.config.seed, job.spec.name)
        )

    def run(parts: list[torch.Tensor]) -> torch.Tensor:
        group = Group(
            tuple(p.to(device=device, dtype=compute) for p in parts), plan.base_index, job.spec.name
        )
        return plan.method(group, gen, **job.params)

    row_elems = max(1, target[0].numel()) if target.dim() >= 1 and target.shape[0] else 1
    block = max(1, _BLOCK_ELEMENTS // row_elems)
    if plan.method.elementwise and target.dim() >= 1 and target.shape[0] > block:
        for s in range(0, target.shape[0], block):
            target[s : s + block].copy_(run([v[s : s + block] for v in views]))
    else:
        target.copy_(run(views))
    if rows is not None:
        out[rows:].copy_(ref[rows:])
    if not bool(torch.isfinite(out).all()):  # inputs are checked finite: the merge overflowed
        raise overflow_error(plan, job)
    return out


def _read(ckpt: Checkpoint, name: str) -> torch.Tensor:
    tensor = ckpt.get(name)
    check_finite(ckpt, name, tensor)
    return tensor


def _run_torch(
    plan: MergePlan,
    jobs: list[Job],
    writer: export.ShardedWriter,
    device: str,
    advance: Callable[[int], None],
) -> None:
    """The general path: whole tensors through the torch method, reads prefetched in threads."""
    from concurrent.futures import ThreadPoolExecutor

    reads = ThreadPoolExecutor(max(2, len(plan.inputs)), thread_name_prefix="calmerge-read")
    writes = ThreadPoolExecutor(1, thread_name_prefix="calmerge-write")
    pending: deque[tuple[Job, list[Future]]] = deque()
    written: deque[Future] = deque()
    todo = iter(jobs)

    def submit_next() -> None:
        job = next(todo, None)
        if job is not None:
            pending.append((job, [reads.submit(_read, c, job.spec.name) for c in plan.inputs]))

    try:
        for _ in range(PREFETCH):
            submit_next()
        while pending:
            job, futures = pending.popleft()
            submit_next()
            tensors = [f.result() for f in futures]
            merged = merge_one(plan, job, tensors, device)
            del tensors
            while len(written) >= 1:
                written.popleft().result()
            written.append(writes.submit(writer.write, job.spec.name, merged))
            del merged
            advance(job.spec.nbytes)
        while written:
            written.popleft().result()
    finally:
        for _job, futures in pending:
            for f in futures:
                f.cancel()
        reads.shutdown(wait=True, cancel_futures=True)
        writes.shutdown(wait=True)


def execute(
    plan: MergePlan,
    directory: Path,
    *,
    max_shard_size: int,
    device: str = "cpu",
    quiet: bool = False,
    kernels: bool = True,
    native: bool | None = None,
) -> None:
    """Stream every job through the method into sharded safetensors in `directory`.

    For tests: `kernels=False` forces the torch path even where the kernels apply; `native`
    picks the C kernel (True) or the numpy one (False) instead of the best available.
    """
    specs = [j.spec for j in plan.jobs]
    writer = export.ShardedWriter(directory, specs, max_shard_size)
    try:
        with progress_bar("[bold]{task.description}", unit="bytes", enabled=not quiet) as progress:
            task = progress.add_task("merging", total=plan.out_bytes)

            def advance(nbytes: int) -> None:
                progress.advance(task, nbytes)

            if kernels and kernel_ok(plan, device):
                redo = run_kernels(plan, writer, advance, native)
                if redo:
                    _run_torch(plan, redo, writer, device, lambda nbytes: None)
            else:
                _run_torch(plan, plan.jobs, writer, device, advance)
    finally:
        writer.close()
