"""Where a sweep's parent tensors live between points, chosen by the memory there is.

Every point recomputes each parameter from the same two (or more) parent tensors. Re-reading
them from disk per point costs a checkpoint read per point; holding them where the arithmetic
runs costs their size once. Three placements:

- `device`: read once, kept on each live parameter's device (RAM on CPU, GPU memory on CUDA);
  a point is pure arithmetic on the device. Chosen by `auto` when they fit beside the live
  model with a margin left for the forwards.
- `host` (CUDA only): read once into pinned RAM, copied to the GPU per tensor; the copy of the
  next tensor runs on a side stream while the current one is merged.
- `disk`: read from the checkpoint files per point (as before), the next tensor's read
  prefetched in a thread while the current one is merged. Always possible.

`--parents resident` asks for `device`, `--parents streamed` for `host` when RAM holds them
(CUDA) else `disk`; `auto` takes the first that fits. The values are the checkpoint's, in its
dtype, in every placement, so the merge arithmetic (and its result) is the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from calmerge.errors import ConfigError
from calmerge.memory import available_bytes, format_bytes

ParentsMode = Literal["auto", "resident", "streamed"]
PARENTS_MODES: tuple[str, ...] = ("auto", "resident", "streamed")

#: the share of a device's free memory the parents may take: the rest is for the forwards
#: (activations, attention, logits at the scored positions) and the allocator's slack
FIT_FRACTION = 0.75


@dataclass(frozen=True)
class Placement:
    """The resolved placement and why, for the run notes and the report."""

    where: Literal["device", "host", "disk"]
    nbytes: int
    why: str

    def describe(self) -> str:
        size = format_bytes(self.nbytes)
        return {
            "device": f"parents resident where the weights are ({size}): {self.why}",
            "host": f"parents in pinned host memory ({size}), streamed to the GPU: {self.why}",
            "disk": f"parents streamed from disk per point ({size} per point): {self.why}",
        }[self.where]


def choose_placement(
    mode: str,
    need: dict[str, int],
    *,
    offloaded: bool = False,
    free: dict[str, int] | None = None,
) -> Placement:
    """Resolve `mode` for parents needing `need[device]` bytes on each device.

    `free`: free bytes per device (measured with `memory.available_bytes` when None; given by
    tests to impose a cap). A model with offloaded parameters keeps its parents on disk: the
    weights themselves did not fit, so neither do two more copies.
    """
    if mode not in PARENTS_MODES:
        raise ConfigError(f"--parents '{mode}': unknown", f"use one of {', '.join(PARENTS_MODES)}")
    total = sum(need.values())
    if offloaded:  # known only once the dispatch is done; said in the sweep's summary
        why = "the model is partly offloaded to disk, so two more copies do not fit either"
        if mode == "resident":
            why = "--parents resident asked, but " + why
        return Placement("disk", total, why)
    free = free if free is not None else {d: available_bytes(d) for d in need}
    short = [d for d, n in need.items() if n > FIT_FRACTION * free.get(d, 0)]
    cuda = any(d.startswith("cuda") for d in need)
    if mode == "resident":
        return Placement("device", total, "asked for (--parents resident)")
    if mode == "auto" and not short:
        return Placement("device", total, "they fit in free memory")
    if cuda:
        host_free = free.get("cpu") if "cpu" in free else available_bytes("cpu")
        cuda_need = sum(n for d, n in need.items() if d.startswith("cuda"))
        if cuda_need <= FIT_FRACTION * host_free:
            why = "asked for (--parents streamed)" if mode == "streamed" else (
                f"they do not fit on {short[0]} beside the model")
            return Placement("host", total, why)
    if mode == "streamed":
        return Placement("disk", total, "asked for (--parents streamed)")
    where = short[0] if short else "cpu"
    return Placement("disk", total, f"they do not fit in the free memory of {where}")


class ParentSource:
    """Serves each parameter's parent tensors on its compute device, in the placement chosen.

    `order`: (checkpoint name, compute device) of every parameter, in the order `tensors` is
    asked for them each point (the interpolator's parameter order), so streamed placements can
    fetch the next one while the current one is merged.
    """

    def __init__(
        self, checkpoints: Sequence[Any], order: Sequence[tuple[str, str]], placement: Placement
    ) -> None:
        self.checkpoints = list(checkpoints)
        self.order = list(order)
        self.placement = placement
        self._held: dict[tuple[int, str], Any] = {}
        self._stream: Any = None
        if placement.where in ("device", "host"):
            self._hold(pin=placement.where == "host")

    def _hold(self, pin: bool) -> None:
        for name, device in self.order:
            for i, ckpt in enumerate(self.checkpoints):
                t = ckpt.get(name)
                if pin:
                    t = t.pin_memory()
                elif device != "cpu":
                    t = t.to(device)
                self._held[(i, name)] = t

    def tensors(self, indices: Sequence[int]) -> Iterator[tuple[str, str, list[Any]]]:
        """(name, device, [tensor of each checkpoint]) for every parameter, in `order`.

        `indices`: the positions (in `checkpoints`) of the tensors the point's plan reads, in
        the plan's input order.
        """
        if self.placement.where == "device":
            for name, device in self.order:
                yield name, device, [self._held[(i, name)] for i in indices]
        elif self.placement.where == "host":
            yield from self._from_host(indices)
        else:
            yield from self._from_disk(indices)

    def _from_disk(self, indices: Sequence[int]) -> Iterator[tuple[str, str, list[Any]]]:
        """Read per point; the next parameter's reads run in threads while this one merges."""
        if not self.order:
            return
        pool = ThreadPoolExecutor(max(2, len(indices)), thread_name_prefix="calmerge-parents")

        def submit(k: int) -> list[Any]:
            name = self.order[k][0]
            return [pool.submit(self.checkpoints[i].get, name) for i in indices]

        try:
            nxt = submit(0)
            for k, (name, device) in enumerate(self.order):
                cur = nxt
                if k + 1 < len(self.order):
                    nxt = submit(k + 1)
                tensors = [f.result() for f in cur]
                if device != "cpu":
                    tensors = [t.to(device, non_blocking=True) for t in tensors]
                yield name, device, tensors
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _from_host(self, indices: Sequence[int]) -> Iterator[tuple[str, str, list[Any]]]:
        """Pinned RAM → GPU on a side stream, one parameter ahead of the merge (CUDA only).

        The merge of parameter k runs on the default stream while the copies of k+1 run on
        `copy`; the default stream waits on k's copies before reading them.
        """
        import torch

        copy = torch.cuda.Stream()

        def start(k: int) -> tuple[list[Any], Any]:
            name, device = self.order[k]
            with torch.cuda.stream(copy):
                ts = [self._held[(i, name)].to(device, non_blocking=True) for i in indices]
                done = torch.cuda.Event()
                done.record(copy)
            return ts, done

        if not self.order:
            return
        nxt = start(0)
        for k, (name, device) in enumerate(self.order):
            tensors, done = nxt
            if k + 1 < len(self.order):
                nxt = start(k + 1)
            torch.cuda.current_stream().wait_event(done)
            for t in tensors:  # the caching allocator must not reuse them before the merge ends
                t.record_stream(torch.cuda.current_stream())
            yield name, device, tensors
