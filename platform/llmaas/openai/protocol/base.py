"""The two kinds of request model: strict (unknown keys refused) and open (kept)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError


class Strict(BaseModel):
    # NOTE: strict=True: JSON types are not coerced ("5" is not an integer, true is not 1).
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), strict=True)


class Open(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=(), strict=True)


def field_error(field: str, message: str) -> ValidationError:
    """A cross-field rule's error, located at ``field`` (so the 400 names it), for a model validator."""
    error = PydanticCustomError("value_error", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        "request", [InitErrorDetails(type=error, loc=(field,), input=message)]
    )


def missing_error(field: str) -> ValidationError:
    """A required key left out, located at ``field``, for a model validator (the 400 says
    "Missing required parameter", as for a field pydantic requires itself)."""
    return ValidationError.from_exception_data(
        "request", [InitErrorDetails(type="missing", loc=(field,), input={})]
    )
