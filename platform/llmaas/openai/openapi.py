"""The OpenAPI document of routes that read their JSON body themselves (to answer in OpenAI's
error shape): ``openapi_body`` describes the request, ``openapi_responses`` the answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from llmaas.openai.protocol import ErrorResponse


def openapi_body(*models: type[BaseModel]) -> dict[str, Any]:
    """An ``openapi_extra`` that documents ``models`` (any one of them) as a route's JSON request body.

    For routes that read the raw body themselves (to answer in OpenAI's error shape), so
    FastAPI does not parse or describe it. The models' ``$defs`` are inlined: a ``$ref`` inside
    an operation resolves against the whole OpenAPI document, which has no ``$defs``.
    """
    schemas = [_inlined(model) for model in models]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _inlined(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` inlined."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen:
                raise ValueError(f"{model.__name__} is recursive through {name}: it cannot be inlined")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**inline(defs[name], (*seen, name)), **inline(rest, seen)}
        return {key: inline(value, seen) for key, value in node.items()}

    inlined: dict[str, Any] = inline(schema, ())
    return inlined


_ERROR_STATUSES = {
    400: "Invalid request: the message says why, param names the field.",
    404: "Unknown model (the message lists the served ones) or route.",
    413: "The request body is larger than the limit.",
    500: "Internal error.",
    503: "Overloaded or not ready: retry after Retry-After seconds.",
    504: "The request took longer than the platform's timeout.",
}


def openapi_responses(ok: type[BaseModel], *, stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for a route: ``ok`` on 200 (or server-sent events of it when
    ``stream`` is true), and every error in OpenAI's shape."""
    success: dict[str, Any] = {"model": ok, "description": "Success."}
    if stream:
        success["description"] = "Success; with stream=true, server-sent events ending in [DONE]."
        event = {  # NOTE: before OpenAPI 3.2, an event stream's schema describes one event
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "type": "string",
                    "description": "A chunk of the response as JSON (or an error in OpenAI's shape), "
                    "and last [DONE].",
                }
            },
        }
        success["content"] = {"text/event-stream": {"schema": event}}
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": why} for status, why in _ERROR_STATUSES.items()
    }
    return {200: success, **errors}
