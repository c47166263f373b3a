"""The merge engine: plan (validate everything), then stream tensor by tensor to disk.

Why two phases: every user mistake (bad method, missing parameter, incompatible checkpoints,
no disk space, existing output) is found by `plan_merge` before a byte is written. `execute`
then streams: a thread pool reads the next tensors (preadv, GIL released) while the current
one is merged, and a writer thread puts results at their final offsets in pre-sized shards.
Resident memory is a few tensors (the prefetch window), not the model.

The weighted-average methods (linear, soup) on safetensors in fp32/bf16/fp16 take a faster
road: kernels (`merge/kernels.py`: C, or numpy without a compiler; bit-identical to the torch
functions) run in a few threads over fixed-size blocks read with preadv into reused buffers and
written with pwrite, and torch is never imported — its import alone costs more time and memory
than merging a 200M model.
"""

from __future__ import annotations

import math
import os
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmerge.config import MergeConfig, load_merge_config
from calmerge.errors import CalmergeError, CheckpointError, ConfigError, OutputError, did_you_mean
from calmerge.io import export
from calmerge.io.checkpoint import (
    FLOAT_TAGS,
    Checkpoint,
    check_finite,
    dtype_name,
    layer_index,
    open_checkpoint,
    pread_into,
    torch_dtype,
    validate_pair,
)
from calmerge.merge.methods import (
    REQUIRED,
    Group,
    MergeMethod,
    get_method,
    layer_position,
    resolve_setting,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    import torch

#: compute / output dtypes a merge accepts, by name → safetensors tag.
DTYPES = {"float32": "F32", "float64": "F64", "bfloat16": "BF16", "float16": "F16"}
_BLOCK_ELEMENTS = 1 << 18  # row-block size for elementwise methods (fits in L2 cache)
PREFETCH = 2
_KERNEL_BLOCK = 1 << 18  # elements per numpy-kernel work item (a few MB of scratch per thread)
_KERNEL_METHODS = ("linear", "soup")
_KERNEL_MAX_INPUTS = 4


def to_tag(name: Any, what: str = "dtype") -> str | None:
    """'bfloat16' / torch.bfloat16 / 'BF16' / None → safetensors tag; one-line error otherwise."""
    if name is None:
        return None
    key = str(name).removeprefix("torch.")
    if key in DTYPES.values():
        return key
    if key not in DTYPES:
        raise ConfigError(
            f"{what} '{name}' is not supported", did_you_mean(key, DTYPES) or f"use {list(DTYPES)}"
        )
    return DTYPES[key]


def to_dtype(name: Any, what: str = "dtype") -> torch.dtype | None:
    """'bfloat16' / torch.bfloat16 / None → torch dtype; one-line error otherwise."""
    tag = to_tag(name, what)
    return None if tag is None else torch_dtype(tag)


@dataclass(frozen=True)
class Job:
    """One output tensor: its spec, resolved parameters, and rows merged vs copied."""

    spec: export.TensorSpec
    params: dict[str, Any]
    merge: bool
    common_rows: int | None = None


@dataclass
class MergePlan:
    """Everything `execute` needs, all validated."""

    config: MergeConfig
    method: MergeMethod
    inputs: list[Checkpoint]
    base_index: int | None
    ref_index: int
    compute_tag: str | None
    out_tag: str
    jobs: list[Job]
    warnings: list[str] = field(default_factory=list)

    @property
    def reference(self) -> Checkpoint:
        return self.inputs[self.ref_index]

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return None if self.compute_tag is None else torch_dtype(self.compute_tag)

    @property
    def out_dtype(self) -> torch.dtype:
        return torch_dtype(self.out_tag)

    @property
    def out_bytes(self) -> int:
        return sum(j.spec.nbytes for j in self.jobs)

    @property
    def in_bytes(self) -> int:
        return sum(c.nbytes(j.spec.name) for j in self.jobs for c in self.inputs)


@dataclass(frozen=True)
class MergeResult:
    path: Path
    seconds: float
    bytes_read: int
    bytes_written: int
    warnings: list[str]


# ───────────────────────────── planning ─────────────────────────────


def _same_model(a: str, b: str) -> bool:
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _check_param_keys(method: MergeMethod, settings: dict[str, Any], where: str) -> None:
    for key in settings:
        if key not in method.parameters:
            raise ConfigError(
                f"{where}: unknown parameter '{key}' for method '{method.name}'",
                did_you_mean(key, method.parameters) or f"allowed: {method.parameters}",
            )


def _resolve(
    key: str, default: Any, sources: list[dict[str, Any]], name: str, t: float, who: str
) -> Any:
    """First source (highest precedence first) giving a value for `key`, else the default."""
    for src in sources:
        if key in src:
            value = resolve_setting(src[key], name, t, key)
            if value is not None:
                return value
    if default is REQUIRED:
        raise ConfigError(
            f"parameter '{key}' is required for {who} (tensor '{name}')",
            "set it under the model's 'parameters:' or the top-level 'parameters:'",
        )
    return default


def _tensor_params(
    plan_method: MergeMethod,
    cfg: MergeConfig,
    models: list[str],
    base_index: int | None,
    per_model: list[dict[str, Any]],
    name: str,
    t: float,
) -> dict[str, Any]:
    """Resolve every parameter of `plan_method` for one tensor (mergekit precedence)."""
    top = dict(cfg.parameters)
    params: dict[str, Any] = {}
    for key, default in plan_method.per_input.items():
        params[key] = [
            _resolve(key, default, [per_model[i], top], name, t, models[i])
            for i in range(len(models))
        ]
    for key, default in plan_method.per_delta.items():
        params[key] = [
            None
            if i == base_index
            else _resolve(key, default, [per_model[i], top], name, t, models[i])
            for i in range(len(models))
        ]
    for key, default in plan_method.shared.items():
        params[key] = _resolve(key, default, [top], name, t, "the merge")
    return params


def _validate_inputs(inputs: list[Checkpoint], base_index: int | None) -> list[str]:
    """Pairwise validation against the anchor (base, else the first model)."""
    anchor_i = base_index if base_index is not None else 0
    warnings: list[str] = []
    for i, ckpt in enumerate(inputs):
        if i != anchor_i:
            for w in validate_pair(inputs[anchor_i], ckpt).warnings:
                if w not in warnings:
                    warnings.append(w)
    return warnings


def plan_merge(
    config: MergeConfig,
    *,
    compute_dtype: str | torch.dtype | None = None,
    out_dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> MergePlan:
    """Open and validate all inputs and resolve every tensor's parameters; no output yet."""
    method = get_method(config.method)
    _check_param_keys(method, config.parameters, "parameters")
    for m in config.models:
        _check_param_keys(method, m.parameters, f"parameters of {m.model}")
    models = [m.model for m in config.models]
    per_model = [dict(m.parameters) for m in config.models]
    base_index = None
    if config.base is not None:
        found = [i for i, m in enumerate(models) if _same_model(m, config.base)]
        if found:
            base_index = found[0]
        else:
            models.append(config.base)
            per_model.append({})
            base_index = len(models) - 1
    elif method.needs_base:
        raise ConfigError(f"method '{method.name}' needs a base model", "set 'base:'")
    n_others = len(models) - (base_index is not None)
    if n_others < method.min_models or (method.max_models and n_others > method.max_models):
        want = (
            method.min_models
            if method.max_models == method.min_models
            else (f"at least {method.min_models}")
        )
        raise ConfigError(
            f"method '{method.name}' takes {want} non-base model(s), got {n_others}",
            "adjust 'models:'",
        )
    opened = [
        open_checkpoint(m, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        for m in models
    ]
    warnings = _validate_inputs(opened, base_index)
    ref_index = next(i for i in range(len(models)) if i != base_index) if n_others else 0
    ref = opened[ref_index]
    cd = (
        to_tag(compute_dtype, "--compute-dtype")
        if compute_dtype is not None
        else to_tag(config.compute_dtype)
    )
    od = to_tag(out_dtype, "--out-dtype") or to_tag(config.out_dtype) or ref.main_tag
    num_layers = ref.num_layers
    jobs = []
    for name in sorted(ref.tensor_names, key=lambda n: _file_order(ref, n)):
        shape = ref.shape(name)
        is_float = ref.tag(name) in FLOAT_TAGS
        rows = min(c.shape(name)[0] for c in opened) if shape else None
        common = rows if shape and rows != shape[0] else None
        if common is not None and any(c.shape(name)[0] > shape[0] for c in opened):
            warnings.append(f"'{name}': rows past the reference vocab ({shape[0]}) are dropped")
        t = layer_position(layer_index(name), num_layers)
        params = _tensor_params(method, config, models, base_index, per_model, name, t)
        jobs.append(
            Job(
                spec=export.TensorSpec(name, od if is_float else ref.tag(name), shape),
                params=params,
                merge=is_float,
                common_rows=common,
            )
        )
    return MergePlan(config, method, opened, base_index, ref_index, cd, od, jobs, warnings)


def _file_order(ckpt: Checkpoint, name: str) -> tuple[str, int]:
    """Read tensors in on-disk order (sequential IO); pickled checkpoints keep their order."""
    try:
        info = ckpt.info(name)
    except CalmergeError:
        return ("", ckpt.tensor_names.index(name))
    return (str(info.file), info.start)


# ───────────────────────────── execution ─────────────────────────────


def tensor_seed(seed: int, name: str) -> int:
    """Per-tensor seed: randomized methods give the same bits regardless of order or threads."""
    return (seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (2**63)


def merge_one(
    plan: MergePlan, job: Job, tensors: list[torch.Tensor], device: str = "cpu"
) -> torch.Tensor:
    """Merge one tensor: cast to the compute dtype, apply the method, cast to the output."""
    import torch

    ref = tensors[plan.ref_index]
    if not job.merge:
        return ref
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
    return out


def _read(ckpt: Checkpoint, name: str) -> torch.Tensor:
    tensor = ckpt.get(name)
    check_finite(ckpt, name, tensor)
    return tensor


class _NoProgress:
    """Stands in for rich's Progress under --quiet (so rich is not even imported)."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, task: int, amount: float) -> None:
        return None


def _progress(quiet: bool):
    if quiet:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=quiet,
        transient=False,
    )


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


# ───────────────────────────── numpy kernel path (linear, soup) ─────────────────────────────


def _kernel_inputs(plan: MergePlan, job: Job) -> tuple[list[int], list[float], bool]:
    """Which inputs enter the weighted average, their weights, and whether to normalise."""
    weight = job.params["weight"]
    if plan.method.name == "soup":
        used = [i for i in range(len(plan.inputs)) if i != plan.base_index]
        return used, [weight[i] for i in used], True
    used = list(range(len(plan.inputs)))
    return used, [weight[i] for i in used], bool(job.params["normalize"])


def kernel_ok(plan: MergePlan, device: str = "cpu") -> bool:
    """Whether the kernels (merge/kernels.py) can run this merge; else it takes the torch path."""
    from calmerge.merge.kernels import KERNEL_TAGS

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


def _nonfinite(ckpt: Checkpoint, name: str) -> CheckpointError:
    return CheckpointError(
        f"{ckpt.path}: tensor '{name}' contains NaN or Inf",
        "the checkpoint is damaged; nothing was written",
    )


class _KernelWorker:
    """One thread's kernel and buffers; merges blocks until the queue is empty."""

    def __init__(
        self,
        plan: MergePlan,
        writer: export.ShardedWriter,
        fds: dict[Path, int],
        native: bool | None = None,
    ):
        from calmerge.merge.kernels import LinearKernel

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
                raise _nonfinite(plan.inputs[ref], name)
        else:
            used, weights, normalize = _kernel_inputs(plan, job)
            raws = [self._read(i, name, block.start, block.stop) for i in used]
            tags = [plan.inputs[i].tag(name) for i in used]
            compute = plan.compute_tag or plan.inputs[ref].tag(name)
            status = self.kernel.run(raws, tags, weights, normalize, compute, out, spec.tag)
            if status != "ok":  # NaN/Inf in an input (named, as the torch path does) or overflow
                for i, raw, tag in zip(used, raws, tags, strict=True):
                    if not self.kernel.finite(raw, tag):
                        raise _nonfinite(plan.inputs[i], name)
                if status == "nan":
                    return len(out), True
        self.writer.write_at(name, block.start * out_size, memoryview(out))
        return len(out), False


def _run_kernels(
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
        with _progress(quiet) as progress:
            task = progress.add_task("merging", total=plan.out_bytes)

            def advance(nbytes: int) -> None:
                progress.advance(task, nbytes)

            if kernels and kernel_ok(plan, device):
                redo = _run_kernels(plan, writer, advance, native)
                if redo:
                    _run_torch(plan, redo, writer, device, lambda nbytes: None)
            else:
                _run_torch(plan, plan.jobs, writer, device, advance)
    finally:
        writer.close()


# ───────────────────────────── public entry points ─────────────────────────────


def recipe(plan: MergePlan) -> dict[str, Any]:
    """The merge as a config dict (for the model card)."""
    data = plan.config.model_dump(mode="json", exclude_defaults=False)
    data["compute_dtype"] = (
        dtype_name(plan.compute_tag) if plan.compute_tag else "input dtype"
    )
    data["out_dtype"] = dtype_name(plan.out_tag)
    return data


def run_merge(
    config: MergeConfig | str | Path,
    out: str | Path,
    *,
    force: bool = False,
    max_shard_size: str | int = "5GB",
    compute_dtype: str | torch.dtype | None = None,
    out_dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    device: str = "cpu",
    model_card_extra: str = "",
    extra_files: dict[str, bytes] | None = None,
    quiet: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> MergeResult:
    """Validate, then merge `config` into the directory `out` (atomically). See docs/merging.md."""
    start = time.perf_counter()
    if not isinstance(config, MergeConfig):
        config = load_merge_config(Path(config))
    out = Path(out).expanduser()
    shard_bytes = export.parse_size(max_shard_size)
    device = _device(device)
    export.check_output(out, force=force)
    plan = plan_merge(
        config,
        compute_dtype=compute_dtype,
        out_dtype=out_dtype,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    for w in plan.warnings:
        if on_warning:
            on_warning(w)
    export.check_output(out, force=force, needed_bytes=plan.out_bytes)
    tmp = export.make_temp_dir(out)
    try:
        execute(plan, tmp, max_shard_size=shard_bytes, device=device, quiet=quiet)
        ref = plan.reference
        tok = ref
        if config.tokenizer_source:
            tok = next(
                (
                    c
                    for c, m in zip(plan.inputs, _input_refs(config), strict=True)
                    if _same_model(m, config.tokenizer_source)
                ),
                None,
            ) or open_checkpoint(config.tokenizer_source, allow_pickle=True)
        export.write_config(tmp, ref, dtype_name(plan.out_tag))
        export.copy_tokenizer(tmp, tok, ref)
        card = export.model_card(recipe(plan), base=config.base, extra=model_card_extra)
        (tmp / "README.md").write_text(card)
        for rel, data in (extra_files or {}).items():  # e.g. figures the model card shows
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        export.commit_dir(tmp, out)
    except OSError as exc:  # full disk, quota, file-size limit, I/O error while writing
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(
            f"{out}: writing failed ({exc.strerror or exc}); nothing was written",
            "free disk space or choose another output directory",
        ) from None
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(
        out, time.perf_counter() - start, plan.in_bytes, plan.out_bytes, plan.warnings
    )


def _input_refs(config: MergeConfig) -> list[str]:
    refs = [m.model for m in config.models]
    if config.base and not any(_same_model(m, config.base) for m in refs):
        refs.append(config.base)
    return refs


def _device(device: str) -> str:
    if device == "cpu":
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available", "use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"--device {device}: unknown device", "use cpu, cuda or auto")
    return device


def pair_config(
    base: str | Path,
    aligned: str | Path,
    lam: float,
    *,
    method: str = "linear",
    params: dict[str, Any] | None = None,
    compute_dtype: str | torch.dtype | None = "float32",
    out_dtype: str | torch.dtype | None = None,
) -> MergeConfig:
    """The config for θ(λ) between two models: linear weights (1−λ, λ); slerp t=λ; task-vector
    methods one delta pruned at `params['density']` and scaled by λ (`params['seed']` seeds DARE)."""
    if not isinstance(lam, int | float) or lam != lam or lam in (float("inf"), float("-inf")):
        raise ConfigError(f"λ '{lam}' is not a finite number", "use e.g. --lam 0.6")
    lam = float(lam)
    b, a = str(base), str(aligned)
    extra = dict(params or {})
    if method == "linear":
        models = [
            {"model": b, "parameters": {"weight": 1.0 - lam}},
            {"model": a, "parameters": {"weight": lam}},
        ]
    elif method == "slerp":
        models = [{"model": a}]
        extra.setdefault("t", lam)
    else:
        # one task vector Δ, weight 1, pruned to `density`, scaled by λ: θ_B + λ·prune(Δ), as the
        # sweep computes it (a weight of λ would cancel under TIES' normalisation)
        density = extra.pop("density", 1.0)
        models = [{"model": a, "parameters": {"weight": 1.0, "density": density}}]
        extra["lambda"] = lam
    seed = int(extra.pop("seed", 0))
    cd = to_tag(compute_dtype)
    od = to_tag(out_dtype)
    return MergeConfig(
        method=method,
        base=b,
        seed=seed,
        models=models,
        parameters=extra,
        compute_dtype=dtype_name(cd) if cd else None,
        out_dtype=dtype_name(od) if od else None,
    )


def merge_pair(
    base: str | Path,
    aligned: str | Path,
    lam: float,
    out: str | Path,
    *,
    method: str = "linear",
    compute_dtype: str | torch.dtype | None = "float32",
    out_dtype: str | torch.dtype | None = None,
    force: bool = False,
    model_card_extra: str = "",
    extra_files: dict[str, bytes] | None = None,
    max_shard_size: str | int = "5GB",
    params: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    quiet: bool = True,
    on_warning: Callable[[str], None] | None = None,
) -> Path:
    """θ = θ_base + λ(θ_aligned − θ_base) (any real λ) written to `out`; returns the path."""
    config = pair_config(
        base,
        aligned,
        lam,
        method=method,
        params=params,
        compute_dtype=compute_dtype,
        out_dtype=out_dtype,
    )
    return run_merge(
        config,
        out,
        force=force,
        max_shard_size=max_shard_size,
        model_card_extra=model_card_extra,
        extra_files=extra_files,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        quiet=quiet,
        on_warning=on_warning,
    ).path


# ───────────────────────────── diff ─────────────────────────────


@dataclass(frozen=True)
class LayerDelta:
    """‖θ_A − θ_B‖ / ‖θ_B‖ over all tensors of one block (or embeddings / head)."""

    group: str
    params: int
    delta_norm: float
    base_norm: float

    @property
    def relative(self) -> float:
        return self.delta_norm / self.base_norm if self.base_norm else float("inf")


def _group_of(name: str) -> str:
    layer = layer_index(name)
    if layer is not None:
        return f"layer {layer}"
    return "embeddings" if "embed" in name else "head/norm"


def layer_deltas(base: Checkpoint, aligned: Checkpoint) -> list[LayerDelta]:
    """Per-layer relative change, streamed (vocab-extended rows compare the shared rows only)."""
    validate_pair(base, aligned)
    sums: dict[str, list[float]] = {}
    for name in aligned.tensor_names:
        if not aligned.dtype(name).is_floating_point:
            continue
        a = aligned.get(name).double()
        b = base.get(name).double()
        a = a[: b.shape[0]] if a.shape != b.shape else a
        acc = sums.setdefault(_group_of(name), [0, 0.0, 0.0])
        acc[0] += b.numel()
        acc[1] += float((a - b).pow(2).sum())
        acc[2] += float(b.pow(2).sum())

    def order(g: str) -> tuple[int, int]:
        if g == "embeddings":
            return (0, 0)
        if g.startswith("layer "):
            return (1, int(g.split()[1]))
        return (2, 0)

    return [
        LayerDelta(g, int(v[0]), v[1] ** 0.5, v[2] ** 0.5)
        for g, v in sorted(sums.items(), key=lambda kv: order(kv[0]))
    ]


def plot_deltas(deltas: list[LayerDelta], png: Path, title: str = "") -> Path:
    """Bar chart of relative ‖Δ‖ per layer, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    if png.is_dir():
        raise CheckpointError(f"{png}: is a directory", "give a .png file path")
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(deltas) + 2), 3))
    ax.bar([d.group for d in deltas], [d.relative for d in deltas], color="#4c72b0")
    ax.set_ylabel("‖Δ‖ / ‖θ_base‖")
    ax.set_title(title or "relative weight change per layer")
    ax.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, png)
    return png
