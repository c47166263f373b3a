"""One registry type for every extension point: merge methods, sweep families, metrics, pick
rules, data sources.

Why one type: six hand-made dicts used to disagree (some refused a second registration, some
silently overwrote the first, some answered an unknown name with a KeyError). A registry here
refuses a duplicate name at import time (two definitions of one concept are a bug, never a
choice), keeps registration order (tables and figures list entries the way they were declared),
and answers an unknown name with one `ConfigError` line carrying "did you mean".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from calmerge.errors import CalmergeError, ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind. `kind` names it in errors ('merge method', 'metric', …)."""

    def __init__(self, kind: str, *, error: type[CalmergeError] = ConfigError) -> None:
        self.kind = kind
        self._error = error
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name`; a second registration of a name is refused."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`: `@REG.register("name")` above the entry."""

        def deco(entry: T) -> T:
            return self.add(name, entry)

        return deco

    def get(self, name: str) -> T:
        """The entry, or one line naming the unknown name with the closest registered one."""
        try:
            return self._entries[name]
        except KeyError:
            raise self._error(
                f"unknown {self.kind} '{name}'",
                did_you_mean(name, self._entries) or f"choose from {', '.join(self._entries)}",
            ) from None

    def check(self, name: str) -> str:
        """`name` if registered (else the same error as `get`): for validating configs."""
        self.get(name)
        return name

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def values(self) -> list[T]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
