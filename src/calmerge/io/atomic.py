"""Write a file so that it is either absent, the old version, or complete — never half-written.

Every file calmerge writes (results JSON/CSV, figures, reports) goes through here: written under
a fresh temporary name beside the target, then renamed into place (rename is atomic within a
filesystem). The temporary file is created with mode 0666 so the umask applies, unlike
mkstemp's 0600, which would make a report nobody else can open.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

from calmerge.errors import OutputError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to produce the file, then rename it to `path`.

    OS errors (full disk, permissions) become an OutputError naming `path`; the temporary file
    is removed whatever happens.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory", "give a file path")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot write ({exc.strerror or exc})", "check free space and permissions"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
