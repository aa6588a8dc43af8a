"""The one pydantic base for every llmaas configuration object."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Self, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class BaseConfig(BaseModel):
    """Strict base: unknown keys are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False, protected_namespaces=())

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        """Read YAML with the safe loader and validate it."""
        text = Path(path).read_text(encoding="utf-8")
        return cls.from_yaml(text)

    @classmethod
    def from_yaml(cls, text: str) -> Self:
        data: Any = yaml.safe_load(text)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"expected a YAML mapping at the top level, got {type(data).__name__}")
        return cls.model_validate(data)


def model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class found by following ``loc`` (field names, list indexes) from ``root``."""
    current: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        if (
            not (isinstance(current, type) and issubclass(current, BaseModel))
            or part not in current.model_fields
        ):
            return None
        current = _unwrap(current.model_fields[part].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """``list[X]``, ``X | None`` and the like -> the first pydantic model inside, else the annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _unwrap(arg)
        if isinstance(found, type) and issubclass(found, BaseModel):
            return found
    return annotation


def describe_errors(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per problem: where (``models.0.batching``), what, and for a typo the likely field."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        where = ".".join(str(p) for p in loc) or "(top level)"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden" and loc:
            parent = model_at(root, loc[:-1])
            if parent is not None:
                fields = list(parent.model_fields)
                close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                message = f"unknown field; {hint}allowed here: {', '.join(fields)}"
        lines.append(f"{where}: {message}")
    return lines
