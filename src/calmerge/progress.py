"""The one look of calmerge's progress bars: what, bar, done/total, elapsed, ETA.

Long work (training, sweeping, scoring, merging) shows the same columns everywhere; byte-sized
work (a merge) shows sizes and a transfer rate instead of a count. Callers add their own
trailing columns (a loss, a recall) when they have something to say. A disabled bar (--quiet)
is a `NoProgress`, so rich is not even imported.
"""

from __future__ import annotations

from typing import Any, Literal


class NoProgress:
    """Stands in for rich's Progress when progress is off: same calls, nothing drawn."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, task: int, amount: float = 1) -> None:
        return None

    def update(self, task: int, **kwargs: Any) -> None:
        return None


def progress_bar(
    label: str = "{task.description}",
    *extra: Any,
    transient: bool = False,
    unit: Literal["count", "bytes"] = "count",
    enabled: bool = True,
) -> Any:
    """A rich Progress on stderr with ETA; `extra` columns go after the standard ones."""
    if not enabled:
        return NoProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    amount = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    return Progress(
        TextColumn(label),
        BarColumn(),
        *amount,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        *extra,
        console=Console(stderr=True),
        transient=transient,
    )
