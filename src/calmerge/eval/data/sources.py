"""Data references (`name:body?k=v`) and the registry of the sources that read them.

Why a module of its own: every source (files, `hf:`, `lmeval:`, one a user adds) is one loader
plus one `@data_source("name")` line, and they all read their references the same way — the
options after `?`, a split that may be named in the reference and by the caller but must agree,
an optional package imported only when needed, a third-party error cut to one line, duplicate
ids and an empty result refused. Those shared rules live here, once, beside the registry; the
sources themselves live in their own modules and import from this one, never the other way.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from calmerge.errors import DataError, did_you_mean
from calmerge.eval.data.items import Item
from calmerge.registry import Registry

Loader = Callable[[str, str | None], list[Item]]  # (reference body, split) -> items


@dataclass(frozen=True)
class DataSource:
    """A registered kind of data: `load(body, split)` returns validated items.

    `native_template` is the prompt template under which the items reproduce the source's own
    prompt (lm-eval items carry the whole context in `question`, so it is `{question}`).
    """

    name: str
    load: Loader
    native_template: str | None = None


_SOURCES: Registry[DataSource] = Registry("data source", error=DataError)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(.*)$", re.DOTALL)


def data_source(name: str, *, native_template: str | None = None) -> Callable[[Loader], Loader]:
    """Register `fn(body, split) -> list[Item]` as the loader for references `name:body`."""

    def register(fn: Loader) -> Loader:
        _SOURCES.add(name, DataSource(name, fn, native_template))  # a second `name` is refused
        return fn

    return register


def data_sources() -> tuple[str, ...]:
    return tuple(sorted(_SOURCES))


def parse_ref(ref: str | Path) -> tuple[str | None, str]:
    """(source name, body) of a data reference; (None, path) for a plain file path.

    An existing file always wins, so a file whose name happens to contain a colon still loads.
    `word:...` that is neither a file nor a registered source is an error, not a confusing
    "file not found".
    """
    text = str(ref)
    match = _SCHEME.match(text)
    if match is None or _exists(text):
        return None, text
    name = match.group(1)
    if name in _SOURCES:
        return name, match.group(2)
    hint = did_you_mean(name, _SOURCES) or f"data sources: {', '.join(data_sources())}"
    raise DataError(f"{text}: no such file, and '{name}:' is not a data source", hint)


def _exists(text: str) -> bool:
    try:
        return Path(text).exists()
    except OSError:  # e.g. a long reference is not a legal file name
        return False


def source_of(ref: str | Path) -> str:
    """'file' for a plain path, else the source name ('hf', 'lmeval', …)."""
    return parse_ref(ref)[0] or "file"


def native_template(ref: str | Path) -> str | None:
    """The prompt template that reproduces the source's own prompts (None: use the default)."""
    source = parse_ref(ref)[0]
    return _SOURCES.get(source).native_template if source else None


def _split_query(body: str, ref: str, allowed: Sequence[str]) -> tuple[str, dict[str, str]]:
    """`target?k=v&…` → (target, params); unknown keys are errors.

    Values are %-decoded but a `+` stays a `+` (paths such as `/models/a+b` are common; a URL's
    "+ means space" rule would corrupt them).
    """
    target, _, query = body.partition("?")
    params: dict[str, str] = {}
    for pair in filter(None, query.split("&")):
        key, eq, value = (unquote(x) for x in pair.partition("="))
        if not eq or not key:
            raise DataError(f"{ref}: cannot read option '{pair}'", "write ?key=value&key=value")
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"known keys: {', '.join(allowed)}"
            raise DataError(f"{ref}: unknown option '{key}'", hint)
        if key in params and params[key] != value:
            raise DataError(f"{ref}: option '{key}' given twice", "give each option once")
        params[key] = value
    return target, params


def _one_split(ref: str, *given: str | None) -> str | None:
    """The split named in the reference and/or by the caller; they must agree."""
    names = {g for g in given if g}
    if len(names) > 1:
        raise DataError(
            f"{ref}: conflicting splits {', '.join(sorted(names))}", "name the split once"
        )
    return names.pop() if names else None


def _require(module: str, ref: str, pip_hint: str) -> Any:
    """Import an optional dependency, or fail with one line and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(
            f"{ref}: needs the '{module.split('.')[0]}' package, which is not installed", pip_hint
        ) from None


def _reason(exc: BaseException) -> str:
    """The first line of a third-party error, shortened: enough to act on, never a traceback."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _checked(entries: Sequence[tuple[str, Item]], ref: str) -> list[Item]:
    """Reject duplicate ids and an empty result; `entries` pair each item with its origin."""
    seen: dict[str, str] = {}
    for where, item in entries:
        if item.id in seen:
            raise DataError(
                f"{where}: duplicate id '{item.id}' (first seen at {seen[item.id]})",
                "ids must be unique",
            )
        seen[item.id] = where
    if not entries:
        raise DataError(f"{ref}: no items", "the source has no usable rows")
    return [item for _, item in entries]
