"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

``to_openai_error`` is the one place where what went wrong (the platform's domain errors,
``llmaas.errors``, and the engine's, ``llmaas.engine.errors``) becomes what a client sees: a
status, an error type, a code and headers. The service and the router both answer through it.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from llmaas.config.base import model_at
from llmaas.engine.errors import (
    EngineError,
    EngineNotReady,
    EngineOverloaded,
    InvalidStructuredOutput,
    UnsupportedTask,
)
from llmaas.errors import (
    AuthError,
    CatalogModelNotFound,
    CatalogNotDeclarative,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    PlatformError,
    RateLimited,
)
from llmaas.openai.protocol import ErrorDetail, ErrorResponse, ErrorResult


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
        # NOTE: a message or param may quote the client's input; a lone surrogate in it
        # ("\ud800", or an undecodable URL) cannot be encoded as UTF-8, so it is escaped here
        # rather than failing the error response itself.
        message, param = _printable(message), None if param is None else _printable(param)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def detail(self) -> ErrorDetail:
        return ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=self.detail()).model_dump()

    def result(self) -> ErrorResult:
        """This error as a handle call answers it (a value, not a raise)."""
        return ErrorResult(status=self.status, error=self.detail(), headers=dict(self.headers))

    def __reduce__(self) -> tuple[Any, ...]:
        # NOTE: picklable (it may cross a Serve handle): rebuilt from its constructor's arguments
        return (_rebuild, (self.status, self.message, self.type, self.param, self.code, self.headers))


def _rebuild(
    status: int, message: str, type: str, param: str | None, code: str | None, headers: dict[str, str]
) -> OpenAIError:
    return OpenAIError(status, message, type=type, param=param, code=code, headers=headers)


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


def unavailable(message: str, retry_after_s: int = 1, code: str = "overloaded") -> OpenAIError:
    return OpenAIError(
        503,
        message,
        type="server_error",
        code=code,
        headers={"Retry-After": str(retry_after_s)},
    )


def internal(message: str) -> OpenAIError:
    return OpenAIError(500, message, type="server_error", code="internal_error")


def unauthorized(message: str, code: str = "invalid_api_key") -> OpenAIError:
    return OpenAIError(401, message, code=code, headers={"WWW-Authenticate": 'Bearer realm="llmaas"'})


def known_error(exc: BaseException) -> OpenAIError | None:
    """What a client sees of ``exc``: an ``OpenAIError`` as it is, a domain or engine error
    mapped to its status; None for anything else (a bug: the caller answers 500 and logs it)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, PlatformError):
        return _platform_error(exc)
    if isinstance(exc, EngineOverloaded):
        return unavailable(str(exc))
    if isinstance(exc, EngineNotReady):
        return unavailable(str(exc), retry_after_s=5, code="model_not_ready")
    if isinstance(exc, UnsupportedTask):
        return bad_request(str(exc), param="model", code="wrong_task")
    if isinstance(exc, InvalidStructuredOutput):
        return bad_request(exc.message, param=exc.param, code="invalid_structured_output")
    if isinstance(exc, EngineError):
        return internal(str(exc))
    return None


def to_openai_error(exc: BaseException) -> OpenAIError:
    """``known_error``, or a 500 naming the exception."""
    return known_error(exc) or internal(f"{type(exc).__name__}: {exc}")


def _platform_error(exc: PlatformError) -> OpenAIError:
    if isinstance(exc, AuthError):
        return unauthorized(exc.message, exc.code or "invalid_api_key")
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return OpenAIError(429, exc.message, type="rate_limit_error", code=exc.code, headers=headers)
    if isinstance(exc, Forbidden):
        return OpenAIError(403, exc.message, type="permission_error", code=exc.code)
    if isinstance(exc, NotFound):
        return OpenAIError(404, exc.message, type="invalid_request_error", param=exc.param, code=exc.code)
    if isinstance(exc, PayloadTooLarge):
        return OpenAIError(413, exc.message, type="invalid_request_error", param=exc.param, code=exc.code)
    if isinstance(exc, Conflict):
        return OpenAIError(409, exc.message, type="invalid_request_error", param=exc.param, code=exc.code)
    if isinstance(exc, CatalogModelNotFound):
        return OpenAIError(404, exc.message, type="not_found_error", param=exc.param, code=exc.code)
    if isinstance(exc, CatalogNotDeclarative):
        return OpenAIError(409, exc.message, param=exc.param, code=exc.code)
    # TokenizationError, CatalogEditError: the caller's input is refused
    return bad_request(exc.message, param=exc.param, code=exc.code)


#: pydantic's union branch names, as a client would say them.
_BRANCHES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "list[str]": "an array of strings",
    "list[int]": "an array of integers",
    "list[list[int]]": "an array of arrays of integers",
    "dict[str,any]": "an object",
}


def _describe(tag: str) -> str:
    # a validated type's branch reads "function-before[_integral(), int]": it is an int
    tag = re.sub(r"function-\w+\[\w+\(\), (\w+)\]", r"\1", tag)
    if tag in _BRANCHES:
        return _BRANCHES[tag]
    if tag == "list[ContentPart]":
        return "an array of content parts"
    return "an array" if tag.startswith("list[") else "an object" if tag.startswith("dict[") else tag


#: pydantic's errors for a value of the wrong JSON type
_TYPE_ERRORS = {"string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type", "model_type"}


def _is_branch(item: Any) -> bool:
    return isinstance(item, str) and (
        item in _BRANCHES or "[" in item or item.startswith(("function-", "union"))
    )


def _loc_to_param(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("body",) and not parts:
            continue
        elif _is_branch(item):
            continue  # pydantic's union/tagged branch names, not field names
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def json_type(value: Any) -> str:
    """How a client would name the JSON type of a parsed value: "an integer", "null", ..."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else "a value"


def _split_branch(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str] | None:
    """``loc`` up to its first union branch name, and that name; None outside a union."""
    for i, item in enumerate(loc):
        if _is_branch(item):
            return tuple(loc[:i]), str(item)
    return None


def _union_error(errors: list[Any], first: Any) -> tuple[Any, str | None]:
    """For a value that matched no branch of a union (``str | list[str]``): the one branch whose
    JSON type it has, if exactly one (its error says more), else a reason listing the branches."""
    split = _split_branch(tuple(first.get("loc", ())))
    if split is None:
        return first, None
    prefix, _ = split
    branches: dict[str, list[Any]] = {}
    for error in errors:
        other = _split_branch(tuple(error.get("loc", ())))
        if other is not None and other[0] == prefix:
            branches.setdefault(other[1], []).append(error)
    fitting = [
        errs
        for tag, errs in branches.items()
        if not any(e["type"] in _TYPE_ERRORS and tuple(e["loc"]) == (*prefix, tag) for e in errs)
    ]
    if len(fitting) == 1:
        return fitting[0][0], None
    options = [_describe(tag) for tag in branches]
    expected = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]
    got = "" if fitting else f" (got {json_type(first.get('input'))})"
    return first, f"Input should be {expected}{got}"


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
        first, union = _union_error(errors, first)
        param = _loc_to_param(tuple(first.get("loc", ()))) or None
        reason = union or str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if first.get("type") in ("dict_type", "model_type"):
            reason = "Input should be an object"  # not pydantic's "... or instance of ChatMessage"
        if union is None and first.get("type") in _TYPE_ERRORS:
            reason += f" (got {json_type(first.get('input'))})"
        message = f"Invalid value for '{param}': {reason}" if param else f"Invalid request: {reason}"
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more problem{'s' if len(errors) > 2 else ''} in this request)"
    return OpenAIError(400, message, param=param, code="invalid_value")
