"""Reading a request's JSON body: bounded in size, strict JSON, validated into a request model.

Plain async code over the body's byte chunks (Starlette's ``request.stream()`` in the router),
so that every refusal (413, and 400s naming what is wrong) is unit-testable without a server.
Bodies no strict JSON parser (OpenAI's) accepts are refused: NaN and Infinity, unpaired UTF-16
surrogate escapes, invalid UTF-8, nesting Python cannot parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from llmaas.openai.errors import OpenAIError, bad_request, from_validation_error, json_type

M = TypeVar("M", bound=BaseModel)

MAX_BODY_BYTES = 8 * 1024 * 1024
#: a JSON escape of a UTF-16 surrogate (\ud800-\udfff): a body holding one is checked for a lone one
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


async def read_body(chunks: AsyncIterable[bytes], limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body; a 413 past ``limit`` bytes."""
    kept: list[bytes] = []
    size = 0
    # NOTE: past the limit the rest is read and dropped, not kept: the client, still sending,
    # gets its 413 rather than a reset connection, and memory stays bounded.
    async for chunk in chunks:
        size += len(chunk)
        if size <= limit:
            kept.append(chunk)
    if size > limit:
        raise OpenAIError(
            413,
            f"the request body is {size} bytes; the limit is {limit} bytes ({limit / 2**20:g} MiB)",
            code="too_large",
        )
    return b"".join(kept)


def _float(literal: str) -> float:
    """A JSON number as a float; one too small to be a float is refused, not read as 0.

    NOTE: ``-1e-400`` would be ``-0.0``: an integer 0 to a field that takes integers, a value its
    JSON Schema refuses (below a minimum of 0). Too large a number becomes inf, which every bound
    refuses already.
    """
    value = float(literal)
    if value == 0.0 and re.search(r"[1-9]", re.split(r"[eE]", literal)[0]):
        raise ValueError(f"the number {literal[:40]} is too small to be represented (it is not 0)")
    return value


def parse_json(body: bytes) -> Any:
    """``body`` as JSON, refusing what no strict JSON parser accepts with a 400."""
    if not body.strip():
        raise bad_request("the request body is empty: send a JSON object", code="invalid_json")
    try:
        text = body.decode("utf-8")  # strict: no UTF-16, no encoded surrogates
        data = json.loads(text, parse_constant=_not_json, parse_float=_float)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(data, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    except RecursionError as exc:
        raise bad_request(
            "the request body is not valid JSON: it nests too deeply", code="invalid_json"
        ) from exc
    except UnicodeEncodeError as exc:
        raise bad_request(
            "the request body is not valid JSON: a string holds an unpaired UTF-16 surrogate escape "
            f"(\\u{ord(exc.object[exc.start]):04x}); escape a character outside the BMP as a pair",
            code="invalid_json",
        ) from exc
    except ValueError as exc:  # bad syntax or UTF-8, NaN/Infinity, an integer over 4300 digits
        raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from exc
    return data


async def read_json(chunks: AsyncIterable[bytes], limit: int = MAX_BODY_BYTES) -> Any:
    """The body as JSON: ``read_body`` then ``parse_json``."""
    return parse_json(await read_body(chunks, limit))


def json_object(data: Any, what: str = "the request body") -> dict[str, Any]:
    """``data`` if it is a JSON object; a 400 naming its JSON type otherwise."""
    if not isinstance(data, dict):
        raise bad_request(f"{what} must be a JSON object, not {json_type(data)}", code="invalid_json")
    return data


def parse(model: type[M], data: Any) -> M:
    """``data`` (parsed JSON) validated into ``model``; a 400 naming the first bad field."""
    try:
        return model.model_validate(json_object(data))
    except ValidationError as exc:
        raise from_validation_error(exc, model) from exc
