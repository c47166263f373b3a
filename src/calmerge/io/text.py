"""Text files users hand calmerge (configs, tokenizer configs, chat templates) decoded as UTF-8,
with the line of the first bad byte in the one-line error — never a UnicodeDecodeError."""

from __future__ import annotations

from pathlib import Path

from calmerge.errors import CalmergeError


def utf8_text(path: Path, raw: bytes, error: type[CalmergeError], hint: str) -> str:
    """`raw` (the bytes of `path`) as text, or `error` naming `path:line`."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise error(f"{path}:{line}: not UTF-8 text", hint) from None
