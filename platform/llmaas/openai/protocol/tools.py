"""Tools and structured output in chat requests and responses, in OpenAI's shapes.

Requests: ``tools`` (functions with a JSON-schema ``parameters``), ``tool_choice`` (``none``,
``auto``, ``required`` or a named function), assistant messages' ``tool_calls`` and ``tool``
messages; ``response_format`` (``text``, ``json_object``, ``json_schema``) and vLLM's
``structured_outputs`` extension (``json``, ``regex``, ``choice``). Responses: a message's
``tool_calls`` and the stream's ``tool_calls`` deltas (the first delta of a call carries its id,
type and name; later ones add to its ``arguments``).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from llmaas.engine.guided_checks import MAX_SCHEMA_DEPTH
from llmaas.openai.protocol.base import Open, Strict, field_error

#: OpenAI's rule for function and schema names.
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)
MAX_TOOLS = 128
#: Bytes of one JSON schema (a response format's or a tool's parameters), as JSON text.
MAX_SCHEMA_BYTES = 64 * 1024
MAX_CHOICES = 1024


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a JSON schema a request may constrain output to (None: it is).

    Checked against the metaschema (``jsonschema``), and for size, before anything compiles it.
    """
    from jsonschema import exceptions, validators

    depth = _depth(schema)
    if depth > MAX_SCHEMA_DEPTH:
        # NOTE: checked first, without recursion: the metaschema check recurses per level
        return f"the schema is nested {depth} levels deep; at most {MAX_SCHEMA_DEPTH} are allowed"
    text = json.dumps(schema)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        return f"the schema is {len(text.encode())} bytes of JSON; at most {MAX_SCHEMA_BYTES} are allowed"
    try:
        validators.validator_for(schema).check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        return f"it is not a valid JSON schema: {exc.message}" + (f" (at {where})" if where else "")
    return None


def _depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (iteratively: a hostile value cannot
    exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


# ---- tools in requests ---------------------------------------------------------------------------
class FunctionDefinition(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="a-z, A-Z, 0-9, _ and -, up to 64 characters.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="A JSON schema of the arguments (an object); none: no arguments."
    )
    strict: StrictBool | None = Field(
        default=None, description="Arguments are always valid for the schema when the call is constrained."
    )

    @field_validator("parameters")
    @classmethod
    def _a_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (problem := schema_problem(value)) is not None:
            raise ValueError(f"parameters: {problem}")
        return value

    def arguments_schema(self) -> dict[str, Any]:
        """The schema arguments must meet (an object without properties when none is given)."""
        return self.parameters if self.parameters is not None else {"type": "object", "properties": {}}


class ChatTool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: str = Field(pattern=NAME_PATTERN)


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(Open):
    """A call's function: its name and its arguments as JSON text (as OpenAI sends them)."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """A tool call, in a response message or an assistant message of the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def arguments(self) -> Any:
        """The arguments as JSON; their text when it is not JSON (a model's own history, say)."""
        try:
            return json.loads(self.function.arguments)
        except ValueError:
            return self.function.arguments


# ---- tool calls in responses ----------------------------------------------------------------------
class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A stream's piece of tool call ``index``: the first carries id, type and name."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


# ---- structured output --------------------------------------------------------------------------
class JSONSchemaFormat(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema", description="The JSON schema of the reply; none: any JSON object."
    )
    strict: StrictBool | None = Field(
        default=None, description="Accepted; the reply is valid for the schema either way (constrained)."
    )

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("schema_")
    @classmethod
    def _a_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (problem := schema_problem(value)) is not None:
            raise ValueError(problem)
        return value


class ResponseFormat(Strict):
    """``text``, ``json_object`` (any JSON object) or ``json_schema`` (with ``json_schema``)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = Field(default=None, description="With type json_schema only.")

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise field_error("json_schema", "type json_schema needs json_schema: {name, schema}")
        if self.type != "json_schema" and self.json_schema is not None:
            raise field_error("json_schema", f"json_schema is for type json_schema, not {self.type}")
        return self


class StructuredOutputs(Strict):
    """vLLM's ``structured_outputs`` extension: exactly one of ``json``, ``regex``, ``choice``."""

    json_: dict[str, Any] | None = Field(default=None, alias="json", description="A JSON schema.")
    regex: str | None = Field(default=None, min_length=1, max_length=4096)
    choice: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1, max_length=MAX_CHOICES
    )

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("json_")
    @classmethod
    def _a_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and (problem := schema_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [n for n, v in (("json", self.json_), ("regex", self.regex), ("choice", self.choice)) if v]
        if len(given) != 1:
            raise ValueError(f"give exactly one of json, regex and choice (got {', '.join(given) or 'none'})")
        return self


__all__ = [
    "MAX_SCHEMA_BYTES",
    "MAX_TOOLS",
    "ChatTool",
    "FunctionCall",
    "FunctionCallDelta",
    "FunctionDefinition",
    "JSONSchemaFormat",
    "NamedFunction",
    "NamedToolChoice",
    "ResponseFormat",
    "StructuredOutputs",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "schema_problem",
]
