"""The one look of calmerge's progress bars: what, bar, done/total, elapsed, ETA.

Long work (training, sweeping, scoring) shows the same columns everywhere; callers add their
own trailing columns (a loss, a recall) when they have something to say.
"""

from __future__ import annotations

from typing import Any


def progress_bar(label: str = "{task.description}", *extra: Any, transient: bool = False) -> Any:
    """A rich Progress on stderr with ETA; `extra` columns go after the standard ones."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        *extra,
        console=Console(stderr=True),
        transient=transient,
    )
