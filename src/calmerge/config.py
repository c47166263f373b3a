"""Pydantic models for every config file: YAML in, frozen validated objects out.

Errors name the file and the field, and suggest the closest key for typos.
Sections, one per subsystem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from calmerge.errors import ConfigError, did_you_mean


class Frozen(BaseModel):
    """Base for all configs: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for missing/malformed files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found", "check the path")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML", "check indentation and quoting") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level", "see README examples")
    return data


def validate(model: type[BaseModel], data: dict[str, Any], source: str) -> Any:
    """Build `model` from `data`; turn pydantic's error into one line naming source and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, model, source) from None


def config_error(exc: ValidationError, model: type[BaseModel], source: str) -> ConfigError:
    """The first pydantic error as a ConfigError with 'did you mean' for unknown keys."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        fields = _fields_at(model, err["loc"][:-1])
        return ConfigError(
            f"{source}: unknown key '{loc}'", did_you_mean(key, fields) or f"allowed: {sorted(fields)}"
        )
    return ConfigError(f"{source}: '{loc}': {err['msg']}", "fix the value and re-run")


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at `loc`, best effort for suggestions."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or (ann,)
        nxt = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if nxt is None:
            for a in args:
                for b in getattr(a, "__args__", ()):
                    if isinstance(b, type) and issubclass(b, BaseModel):
                        nxt = b
        if nxt is None:
            return []
        current = nxt
    return list(getattr(current, "model_fields", {}))


# ───────────────────────────── merge engine ─────────────────────────────


# ───────────────────────────── evaluation ─────────────────────────────


# ───────────────────────────── sweep ─────────────────────────────
