"""The one pydantic base for every llmaas configuration object."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict


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
