"""Error hierarchy for user mistakes.

A user mistake must end as one readable line plus a hint and exit code 2, never a traceback.
Everything that can be caused by input (files, configs, datasets, flags) raises a subclass of
`CalmergeError`; anything else escaping to the CLI is a bug in calmerge.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CalmergeError(Exception):
    """A problem the user can fix. `str()` is the one-line message; `hint` says how."""

    exit_code = 2
    default_hint = "see `calmerge --help`"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint

    def one_line(self) -> str:
        """The single line the CLI prints (message and hint joined)."""
        text = self.message.replace("\n", " ")
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class ConfigError(CalmergeError):
    """A config file or CLI value is invalid (unknown key, bad type, out of range)."""

    default_hint = "check the config file or flag against the README"


class CheckpointError(CalmergeError):
    """A model checkpoint is missing, corrupt or incompatible with its partner."""

    default_hint = "check that the path is a complete Hugging Face model directory"


class DataError(CalmergeError):
    """A dataset file or row is malformed."""

    default_hint = "fix the data file and re-run"


class OutputError(CalmergeError):
    """An output path cannot be written (exists, is a file, not writable, disk full)."""

    default_hint = "choose another output path"


class StoreError(CalmergeError):
    """The results store is missing a run/point or is unusable."""

    default_hint = "check the --store path"


def did_you_mean(word: str, options: Iterable[str]) -> str | None:
    """Return a 'did you mean X?' hint for the closest option, or None."""
    matches = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"did you mean '{matches[0]}'?" if matches else None
