"""How much memory a device has free: the one reading every memory-aware choice starts from.

A leaf, so the sweep's choice of where the parents live (`sweep.parents`) and the scorer's choice
of batch size (`eval.batching`) read free memory the same way and cannot disagree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def available_bytes(device: Any = "cpu") -> int:
    """Bytes free for new tensors on `device`.

    CUDA: the driver's free memory (`mem_get_info`) plus what PyTorch's caching allocator holds
    but no tensor uses (free to us, though not to the driver). Any other device: the host's
    (`host_available_bytes`; MPS shares it).
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    return host_available_bytes()


def host_available_bytes(meminfo: str | Path = "/proc/meminfo") -> int:
    """Host memory available without swapping: MemAvailable of /proc/meminfo (which counts the
    reclaimable page cache), else free pages by os.sysconf; capped by a cgroup memory limit,
    which a container or a batch job imposes without /proc/meminfo showing it."""
    free = None
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = cgroup_free_bytes()
    return free if limit is None else min(free, limit)


#: (limit, usage, stat key of the reclaimable page cache) of cgroup v2, then v1
_CGROUPS = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "inactive_file"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
     "total_inactive_file"),
)


def cgroup_free_bytes() -> int | None:
    """What this process's memory cgroup still allows (limit − usage + reclaimable page cache),
    None where there is no limit or it cannot be read."""
    for limit_path, usage_path, cache_key in _CGROUPS:
        try:
            limit_text = Path(limit_path).read_text().strip()
            if limit_text == "max":
                return None
            limit, usage = int(limit_text), int(Path(usage_path).read_text())
            stat = Path(limit_path).with_name("memory.stat").read_text()
        except (OSError, ValueError):
            continue
        cache = 0
        for line in stat.splitlines():
            key, _, value = line.partition(" ")
            if key == cache_key:
                cache = int(value)
        if limit >= 1 << 60:  # cgroup v1 spells "no limit" as a huge number
            return None
        return max(0, limit - usage + cache)
    return None


def format_bytes(n: float) -> str:
    """1234567890 → '1.23 GB' (decimal units, as disk and GPU sizes are quoted)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"
