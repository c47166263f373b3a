"""Where alignment changed the weights: relative ‖θ_aligned − θ_base‖ per layer, and its chart.

Why here and not in the merge engine: it reads two checkpoints and reports on them, it writes
no model. Tensors are streamed one at a time, so memory stays one tensor pair. The chart is a
standalone `Figure` on the Agg canvas (no pyplot global state or GUI backend) written
atomically like every other file calmerge writes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from calmerge.errors import CheckpointError
from calmerge.io.atomic import atomic_write_bytes
from calmerge.io.checkpoint import Checkpoint
from calmerge.io.layers import LayerMap
from calmerge.io.validate import validate_pair


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


def _group_of(name: str, layers: LayerMap) -> str:
    """The block a tensor is charted under: its tower's label and its block number within that
    tower ('layer 3', 'vision layer 1'), numbered as merges number gradients (`io.layers`)."""
    return layers.group(name)


def _order(group: str) -> tuple[int, int, str, int]:
    """Embeddings, then each tower's blocks (vision first, the language model last), then the
    rest (projector, norms, heads)."""
    words = group.rsplit(" layer ", 1) if " layer " in group else None
    if group.startswith("layer "):
        return (1, 1, "", int(group.split()[1]))
    if words is not None and words[1].isdigit():
        return (1, 0, words[0], int(words[1]))
    if group.endswith("embeddings"):
        return (0, 0, group, 0)
    return (2, 0, group, 0)


def layer_deltas(base: Checkpoint, aligned: Checkpoint) -> list[LayerDelta]:
    """Per-layer relative change, streamed (vocab-extended rows compare the shared rows only)."""
    validate_pair(base, aligned)
    layers = aligned.layer_map
    sums: dict[str, list[float]] = {}
    for name in aligned.tensor_names:
        if not aligned.dtype(name).is_floating_point:
            continue
        a = aligned.get(name).double()
        b = base.get(name).double()
        a = a[: b.shape[0]] if a.shape != b.shape else a
        acc = sums.setdefault(_group_of(name, layers), [0, 0.0, 0.0])
        acc[0] += b.numel()
        acc[1] += float((a - b).pow(2).sum())
        acc[2] += float(b.pow(2).sum())
    return [
        LayerDelta(g, int(v[0]), v[1] ** 0.5, v[2] ** 0.5)
        for g, v in sorted(sums.items(), key=lambda kv: _order(kv[0]))
    ]


def plot_deltas(deltas: list[LayerDelta], png: Path, title: str = "") -> Path:
    """Bar chart of relative ‖Δ‖ per layer, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    png = Path(png)
    if png.is_dir():
        raise CheckpointError(f"{png}: is a directory", "give a .png file path")
    fig = Figure(figsize=(max(4, 0.35 * len(deltas) + 2), 3))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar([d.group for d in deltas], [d.relative for d in deltas], color="#4c72b0")
    ax.set_ylabel("‖Δ‖ / ‖θ_base‖")
    ax.set_title(title or "relative weight change per layer")
    ax.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return atomic_write_bytes(png, buf.getvalue())
