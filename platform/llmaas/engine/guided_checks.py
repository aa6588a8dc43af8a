"""The size bounds a structured-output spec must meet before the engine compiles it.

Cheap checks that refuse, with a reason a client can act on, what is too big to be worth
compiling: the grammar library bounds its own work too (``LLParserLimits``), but a request should
learn that its 2 MB schema is too big from a sentence, not from a compile that ran out of fuel.
The bounds follow OpenAI's for strict structured outputs where it has one (5,000 properties),
with room to spare (it allows 10 levels of nesting and 1,000 enum values).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmaas.engine.types import StructuredOutput

#: Deepest JSON nesting of a schema's text: the engine's default bound, and the OpenAI layer's
#: (a request's schema is refused there before it reaches an engine).
MAX_SCHEMA_DEPTH = 64


class GrammarRefused(Exception):
    """A spec the engine will not compile; ``reason`` completes "<the JSON schema> ..."."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GuidedLimits(BaseModel):
    """Bounds on structured-output specs and their compilation (one set per engine)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compile_timeout_s: float = Field(
        default=5.0, gt=0, description="A compile that takes longer is refused (and remembered as such)."
    )
    max_spec_chars: int = Field(
        default=256 * 1024, ge=1, description="Longest JSON schema text, or all choices together."
    )
    max_regex_chars: int = Field(default=10_000, ge=1, description="Longest regex.")
    max_schema_depth: int = Field(
        default=MAX_SCHEMA_DEPTH,
        ge=1,
        description="Deepest JSON nesting of a schema's text (a nested object property adds 2: "
        "its 'properties' and its own schema).",
    )
    max_enum_values: int = Field(default=10_000, ge=1, description="Enum values, over the whole schema.")
    max_properties: int = Field(default=5_000, ge=1, description="Object properties, over the whole schema.")
    max_choices: int = Field(default=10_000, ge=1, description="Choices of kind 'choice'.")
    # NOTE: a compiled grammar holds its lexer's states, which grow as sequences use it: 1-2 MB
    # for a typical schema, 16 MB for a 50,000-value enum, at most about 100 MB (the lexer-state
    # limit set in llmaas.engine.guided); hence a small cache.
    cache_size: int = Field(default=32, ge=1, description="Compiled grammars kept (least recently used go).")


def describe(spec: StructuredOutput) -> str:
    """What the client sent, as an error message names it."""
    if spec.kind == "json":
        return "the JSON schema" if spec.json_schema is not None else "the JSON object format"
    return "the regex" if spec.kind == "regex" else "the choices"


def check_size(spec: StructuredOutput, limits: GuidedLimits) -> None:
    """The bounds that need no parsing (cheap enough for the event loop)."""
    if spec.kind == "json" and spec.json_schema is not None and len(spec.json_schema) > limits.max_spec_chars:
        raise GrammarRefused(
            f"is {len(spec.json_schema)} characters long, more than the {limits.max_spec_chars} "
            "this server compiles"
        )
    if spec.kind == "regex" and spec.regex is not None and len(spec.regex) > limits.max_regex_chars:
        raise GrammarRefused(
            f"is {len(spec.regex)} characters long, more than the {limits.max_regex_chars} "
            "this server compiles"
        )
    if spec.kind == "choice":
        if len(spec.choice) > limits.max_choices:
            raise GrammarRefused(f"are {len(spec.choice)}, more than the {limits.max_choices} allowed")
        total = sum(len(c) for c in spec.choice)
        if total > limits.max_spec_chars:
            raise GrammarRefused(
                f"are {total} characters long together, more than the {limits.max_spec_chars} allowed"
            )


def check_schema(text: str, limits: GuidedLimits) -> None:
    """Parse the schema and check its nesting, enum values and properties against ``limits``."""
    try:
        schema = json.loads(text)
    except RecursionError:
        raise GrammarRefused(
            f"is nested more than {limits.max_schema_depth} levels deep, the most this server allows"
        ) from None
    except ValueError as exc:
        raise GrammarRefused(f"is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise GrammarRefused(f"must be a JSON object, not {type(schema).__name__}")
    depth, enums, properties = _measure(schema, limits.max_schema_depth)
    if depth > limits.max_schema_depth:
        raise GrammarRefused(
            f"is nested more than {limits.max_schema_depth} levels deep, the most this server allows"
        )
    if enums > limits.max_enum_values:
        raise GrammarRefused(
            f"has {enums} enum values in all, more than the {limits.max_enum_values} allowed"
        )
    if properties > limits.max_properties:
        raise GrammarRefused(
            f"has {properties} object properties in all, more than the {limits.max_properties} allowed"
        )


def _measure(schema: Any, max_depth: int) -> tuple[int, int, int]:
    """(deepest nesting, enum values, properties), walked without recursion; the walk stops
    descending past ``max_depth`` (the answer is then "too deep" anyway)."""
    deepest = enums = properties = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > max_depth:
            continue
        if isinstance(node, dict):
            values = node.get("enum")
            if isinstance(values, list):
                enums += len(values)
            props = node.get("properties")
            if isinstance(props, dict):
                properties += len(props)
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return deepest, enums, properties


__all__ = ["GrammarRefused", "GuidedLimits", "check_schema", "check_size", "describe"]
