"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from llmaas.config.base import model_at
from llmaas.openai.protocol import ErrorDetail, ErrorResponse


class OpenAIError(Exception):
    """An error a client sees; the router turns it into a JSON response with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str, served: list[str]) -> OpenAIError:
    listing = ", ".join(served) if served else "none"
    return OpenAIError(
        404,
        f"The model '{model}' does not exist. Served models: {listing}.",
        param="model",
        code="model_not_found",
    )


def unavailable(message: str, retry_after_s: int = 1) -> OpenAIError:
    return OpenAIError(
        503,
        message,
        type="server_error",
        code="overloaded",
        headers={"Retry-After": str(retry_after_s)},
    )


def internal(message: str) -> OpenAIError:
    return OpenAIError(500, message, type="server_error", code="internal_error")


def _loc_to_param(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("body",) and not parts:
            continue
        elif isinstance(item, str) and ("[" in item or item.startswith(("function-", "union"))):
            continue  # pydantic's union/tagged branch names, not field names
        elif item in ("str", "int", "list[str]", "list[int]", "list[list[int]]", "float", "bool"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def from_validation_error(exc: ValidationError, model: type[BaseModel] | None = None) -> OpenAIError:
    """A 400 naming the first bad field, with pydantic's reason."""
    errors = exc.errors(include_url=False)
    # NOTE: a union field (str | list[...]) fails once per branch; our own value errors say more.
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    param = _loc_to_param(tuple(first.get("loc", ()))) or None
    if first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
        parent = model_at(model, tuple(first.get("loc", ()))[:-1]) if model else None
        close = (
            difflib.get_close_matches(str(first["loc"][-1]), list(parent.model_fields), n=1) if parent else []
        )
        if close:
            message += f" (did you mean '{close[0]}'?)"
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    else:
        reason = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        message = f"Invalid value for '{param}': {reason}" if param else f"Invalid request: {reason}"
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} in this request)"
    return OpenAIError(400, message, param=param, code="invalid_value")
