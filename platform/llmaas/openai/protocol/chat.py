"""The ``/v1/chat/completions`` request, messages, response and stream chunks."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from llmaas.engine.types import StructuredOutput
from llmaas.openai.protocol.base import Open, Strict, field_error, missing_error
from llmaas.openai.protocol.common import (
    IGNORED,
    INTEGRAL,
    MAX_METADATA,
    MAX_TOP_LOGPROBS,
    STREAM_OPTIONS_NEED_STREAM,
    ChoiceLogprobs,
    Int,
    SamplingFields,
    Usage,
)
from llmaas.openai.protocol.tools import (
    MAX_TOOLS,
    ChatTool,
    NamedToolChoice,
    ResponseFormat,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)


# ---- chat -----------------------------------------------------------------------------
class ContentPart(Open):
    model_config = ConfigDict(json_schema_extra={"required": ["type", "text"]})

    type: str = Field(description="Only 'text' is supported.", json_schema_extra={"enum": ["text"]})
    text: str | None = Field(default=None, json_schema_extra={"type": "string"})

    @model_validator(mode="after")
    def _text_only(self) -> ContentPart:
        if self.type != "text":
            raise ValueError(f"content part type {self.type!r} is not supported: this platform serves text")
        if self.text is None:
            raise ValueError("a text content part needs 'text'")
        return self


class ChatMessage(Strict):
    """One message. Keys OpenAI does not know are refused, as OpenAI does. An assistant message may
    carry ``tool_calls`` (its content may then be null or absent); a ``tool`` message answers one
    of them by ``tool_call_id``."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"role": {"const": "assistant"}}},
            "else": {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)] | None = Field(
        default=None, description="Required, except an assistant's, which may be null with tool_calls."
    )
    name: str | None = None
    refusal: str | None = None
    tool_call_id: str | None = Field(default=None, description="A tool message: the call it answers.")
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant message's calls.")
    function_call: dict[str, Any] | None = Field(
        default=None,
        description="OpenAI's deprecated single call: use tool_calls.",
        json_schema_extra={"maxProperties": 0},
    )

    @model_validator(mode="after")
    def _content_present(self) -> ChatMessage:
        # NOTE: raised at the field, so that the 400 names messages[i].content (or the other key)
        if "content" not in self.model_fields_set and self.role != "assistant":
            raise missing_error("content")
        if self.content is None and self.role != "assistant":
            raise field_error(
                "content", f"a {self.role} message needs content: a string or a list of text parts"
            )
        if self.tool_calls and self.role != "assistant":
            raise field_error(
                "tool_calls", f"only an assistant message has tool_calls, not a {self.role} message"
            )
        if self.role == "tool" and not self.tool_call_id:
            raise field_error(
                "tool_call_id", "a tool message needs tool_call_id: the id of the call it answers"
            )
        return self

    @field_validator("function_call")
    @classmethod
    def _no_function_call(cls, value: Any) -> Any:
        if value:
            raise ValueError("function_call is OpenAI's deprecated form: send tool_calls instead")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


_TOP_LOGPROBS_NEED_LOGPROBS: JsonDict = {
    "if": {
        "required": ["top_logprobs"],
        "properties": {"top_logprobs": {"type": "integer", "exclusiveMinimum": 0}},
    },
    "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
}


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={"allOf": [STREAM_OPTIONS_NEED_STREAM, _TOP_LOGPROBS_NEED_LOGPROBS]}
    )

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = Field(
        default=None, description="OpenAI's newer name for max_tokens; both may be set only to one value."
    )
    logprobs: StrictBool | None = Field(
        default=None, description="Return the logprob of each generated token (logprobs.content)."
    )
    top_logprobs: Int | None = Field(
        default=None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="With logprobs: this many most likely alternatives per token (0-20).",
    )
    response_format: ResponseFormat | None = Field(
        default=None,
        description="text, json_object (any JSON object) or json_schema (valid for the schema): the "
        "reply is constrained to it token by token.",
    )
    tools: list[ChatTool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = Field(
        default=None,
        description="none, auto (the default with tools), required (at least one call) or a named "
        "function; required and named calls are constrained to the tools' schemas.",
    )
    parallel_tool_calls: StrictBool | None = Field(
        default=None, description="Whether a reply may hold more than one call (default true)."
    )
    store: StrictBool | None = Field(default=None, description=IGNORED + " Nothing is stored.")
    metadata: dict[str, str] | None = Field(
        default=None,
        description=IGNORED + f" At most {MAX_METADATA} pairs (keys up to 64 characters, values up to 512).",
        json_schema_extra={
            "maxProperties": MAX_METADATA,
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
    )
    add_generation_prompt: StrictBool = True

    @field_validator("tools")
    @classmethod
    def _distinct_tools(cls, value: list[ChatTool] | None) -> list[ChatTool] | None:
        names = [tool.function.name for tool in value or []]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"tool names must be distinct; {', '.join(twice)} is defined more than once")
        return value

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        choice = self.tool_choice
        if (choice == "required" or isinstance(choice, NamedToolChoice)) and not self.tools:
            raise field_error("tool_choice", "tool_choice asks for a tool call, but no tools are given")
        if isinstance(choice, NamedToolChoice):
            names = [tool.function.name for tool in self.tools or []]
            if choice.function.name not in names:
                raise field_error(
                    "tool_choice",
                    f"tool_choice names function {choice.function.name!r}, which is not among the tools "
                    f"({', '.join(names)})",
                )
        return self

    @model_validator(mode="after")
    def _one_constraint(self) -> ChatCompletionRequest:
        constrained = self.response_format is not None and self.response_format.type != "text"
        if constrained and self.structured_outputs is not None:
            raise field_error("structured_outputs", "give response_format or structured_outputs, not both")
        if (constrained or self.structured_outputs is not None) and self.calls_tools():
            raise field_error(
                "tool_choice",
                "a required or named tool call is constrained to the tool's schema already: leave "
                "response_format and structured_outputs unset with it",
            )
        return self

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} metadata pairs, got {len(value)}")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError(f"metadata key {key[:64]!r}: keys are up to 64 characters, values up to 512")
        return value

    @model_validator(mode="after")
    def _one_max(self) -> ChatCompletionRequest:
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise field_error(
                "max_completion_tokens",
                f"max_completion_tokens ({self.max_completion_tokens}) and max_tokens ({self.max_tokens}) "
                "differ: set one of them (max_completion_tokens is the newer name)",
            )
        return self

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise field_error("top_logprobs", "top_logprobs needs logprobs: true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def max_tokens_param(self) -> str:
        """The field a too-large maximum came from, for errors."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def engine_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def effective_tool_choice(self) -> Literal["none", "auto", "required"] | NamedToolChoice:
        """``tool_choice`` as OpenAI defaults it: auto with tools, none without."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    def calls_tools(self) -> bool:
        """Whether the reply must be tool calls (required or a named function)."""
        choice = self.effective_tool_choice()
        return choice == "required" or isinstance(choice, NamedToolChoice)

    def structured_output(self) -> StructuredOutput | None:
        """The constraint ``response_format`` or ``structured_outputs`` puts on the reply."""
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            return StructuredOutput(kind="json", param="response_format")
        if fmt is not None and fmt.json_schema is not None:
            schema = fmt.json_schema.schema_
            return StructuredOutput(
                kind="json",
                json_schema=None if schema is None else json.dumps(schema),
                param="response_format",
            )
        return super().structured_output()

    def template_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
