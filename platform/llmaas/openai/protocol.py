"""OpenAI API request and response models, in one place.

Requests are strict, as OpenAI's are: unknown fields (top level and in messages) and values
of the wrong JSON type (``"5"`` or ``true`` for an integer) are a 400 naming the field. They
own their conversion to the engine's ``SamplingParams``. Parameters this platform cannot
honour are refused with a 400 rather than ignored. ``openapi_body`` describes a request model
in the OpenAPI document for routes that read the raw body themselves.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from llmaas.config.catalog import SamplingDefaults
from llmaas.engine.types import SamplingParams

MAX_STOP_SEQUENCES = 16
MAX_N = 16
#: A temperature below this is greedy decoding (as in vLLM): dividing logits by a vanishing
#: temperature overflows to inf and NaN probabilities, which would fail the whole batch.
GREEDY_BELOW_TEMPERATURE = 1e-5


def _integral(value: Any) -> Any:
    """JSON Schema's integer: 2.0 is 2; 2.5, "2" and true are still refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


_INTEGRAL = BeforeValidator(_integral)
#: an integer field: strict, except that a number with no fraction is one (as in JSON Schema)
Int = Annotated[int, _INTEGRAL]
_NOT_YET = "Not supported yet: leave it unset (or 0 / false)."


def _prompt_schema(batch: int, tokens: int | None = None) -> dict[str, Any]:
    """The JSON schema of a prompt or embedding input (``batch`` items at most, a flat token list
    ``tokens`` at most): what its validator accepts, for the OpenAPI document."""
    ids: dict[str, Any] = {"type": "array", "items": {"type": "integer"}, "minItems": 1}
    return {
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": batch},
            ids if tokens is None else {**ids, "maxItems": tokens},
            {"type": "array", "items": ids, "minItems": 1, "maxItems": batch},
        ]
    }


class _Strict(BaseModel):
    # NOTE: strict=True: JSON types are not coerced ("5" is not an integer, true is not 1).
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), strict=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=(), strict=True)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# ---- errors ---------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ErrorResult(ErrorResponse):
    """What a handle call answers instead of a response: OpenAI's error body with the HTTP status
    (and headers, e.g. Retry-After) the same request would get over HTTP."""

    status: int
    headers: dict[str, str] = Field(default_factory=dict)


# ---- shared request parts ---------------------------------------------------------------
class StreamOptions(_Strict):
    include_usage: StrictBool = False


_STREAM_OPTIONS_NEED_STREAM: JsonDict = {
    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
}
_NOT_BOTH_MAX_TOKENS: JsonDict = {
    "not": {
        "required": ["max_tokens", "max_completion_tokens"],
        "properties": {"max_tokens": {"type": "integer"}, "max_completion_tokens": {"type": "integer"}},
    }
}


class _SamplingFields(_Strict):
    """Fields shared by completions and chat completions."""

    # NOTE: the rules the validators below add, in JSON Schema, so that /openapi.json is honest.
    model_config = ConfigDict(json_schema_extra={"allOf": [_STREAM_OPTIONS_NEED_STREAM]})

    model: str = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1), _INTEGRAL] | None = None
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description=f"Below {GREEDY_BELOW_TEMPERATURE} is greedy decoding."
    )
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: Annotated[int, Field(ge=-1), _INTEGRAL] | None = Field(
        default=None, description="-1 or 0 disables top-k (vLLM style)."
    )
    n: Int = Field(default=1, ge=1, le=MAX_N)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        default=None,
        json_schema_extra={"minLength": 1, "items": {"minLength": 1}, "maxItems": MAX_STOP_SEQUENCES},
    )
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1), _INTEGRAL] | None = None
    presence_penalty: float | None = Field(
        default=None, ge=-2.0, le=2.0, description=_NOT_YET, json_schema_extra={"enum": [0, None]}
    )
    frequency_penalty: float | None = Field(
        default=None, ge=-2.0, le=2.0, description=_NOT_YET, json_schema_extra={"enum": [0, None]}
    )
    logit_bias: dict[str, float] | None = Field(
        default=None, description=_NOT_YET, json_schema_extra={"maxProperties": 0}
    )
    user: str | None = None
    ignore_eos: StrictBool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(items)}")
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalties(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("penalties are not supported yet: leave it unset or 0")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("logit_bias is not supported yet: leave it unset")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def to_sampling_params(
        self, defaults: SamplingDefaults, max_tokens: int, choice: int = 0
    ) -> SamplingParams:
        """Sampling for choice ``choice``; with a seed, choice i uses seed + i so that choices differ."""
        seed = None if self.seed is None else (self.seed + choice) % (2**63)
        temperature = defaults.temperature if self.temperature is None else self.temperature
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if temperature < GREEDY_BELOW_TEMPERATURE else temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=max(0, defaults.top_k if self.top_k is None else self.top_k),
            seed=seed,
            stop=self.stop_sequences(),
            ignore_eos=self.ignore_eos,
        )


# ---- completions --------------------------------------------------------------------------
class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[Int] | list[list[Int]] = Field(json_schema_extra=_prompt_schema(1))
    echo: StrictBool = Field(default=False, description="Not supported.", json_schema_extra={"enum": [False]})
    logprobs: Int | None = Field(default=None, description=_NOT_YET, json_schema_extra={"enum": [0, None]})
    best_of: Int | None = Field(default=None, description="Not supported: leave it unset or equal to n.")
    suffix: str | None = Field(
        default=None, description="Not supported.", json_schema_extra={"enum": ["", None]}
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_present(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt is an empty list: give a string or a list of strings")
            if len(value) > 1 and not all(isinstance(v, int) for v in value):
                raise ValueError(
                    "batched prompts are not supported: send one prompt per request "
                    "(use n for several choices)"
                )
            if isinstance(value[0], list) and not value[0]:
                raise ValueError("prompt holds an empty token list")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo is not supported: leave it false")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise ValueError("logprobs are not supported yet: leave it unset")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (insertion) is not supported: leave it unset")
        return value

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported: leave it unset or equal to n")
        return self

    def single_prompt(self) -> str | list[int]:
        """The one prompt, as text or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if all(isinstance(p, int) for p in prompt):
            return [int(p) for p in prompt]  # type: ignore[arg-type]
        first = prompt[0]
        return first if isinstance(first, str) else [int(t) for t in first]  # type: ignore[union-attr]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ---- chat -----------------------------------------------------------------------------
class ContentPart(_Open):
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


class ChatMessage(_Strict):
    """One message. Keys OpenAI does not know are refused, as OpenAI does; its tool-call keys are
    accepted empty (a replayed history) and refused when set, since tools are not supported."""

    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"role": {"const": "assistant"}}},
            "else": {"properties": {"content": {"not": {"type": "null"}}}},
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[ContentPart], Field(min_length=1)] | None = Field(
        description="Required; only an assistant's may be null."
    )
    name: str | None = None
    refusal: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = Field(
        default=None, description=_NOT_YET, json_schema_extra={"maxItems": 0}
    )
    function_call: dict[str, Any] | None = Field(
        default=None, description=_NOT_YET, json_schema_extra={"maxProperties": 0}
    )

    @field_validator("content")
    @classmethod
    def _content_present(cls, value: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        if value is None and role is not None and role != "assistant":
            raise ValueError(f"a {role} message needs content: a string or a list of text parts")
        return value

    @field_validator("tool_calls", "function_call")
    @classmethod
    def _no_tool_calls(cls, value: Any) -> Any:
        if value:
            raise ValueError("tool calls are not supported yet: leave it unset")
        return value

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(_SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={"allOf": [_STREAM_OPTIONS_NEED_STREAM, _NOT_BOTH_MAX_TOKENS]}
    )

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1), _INTEGRAL] | None = Field(
        default=None, description="Or max_tokens; not both."
    )
    logprobs: StrictBool | None = Field(
        default=None, description=_NOT_YET, json_schema_extra={"enum": [False, None]}
    )
    top_logprobs: Int | None = Field(
        default=None, description=_NOT_YET, json_schema_extra={"enum": [0, None]}
    )
    response_format: dict[str, Any] | None = Field(
        default=None,
        description="Only {'type': 'text'}.",
        json_schema_extra={"properties": {"type": {"enum": ["text"]}}},
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None, description=_NOT_YET, json_schema_extra={"maxItems": 0}
    )
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: StrictBool = True

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported yet: leave it unset or false")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise ValueError("top_logprobs are not supported yet: leave it unset")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type", "text") != "text":
            raise ValueError(f"response_format type {value.get('type')!r} is not supported: use 'text'")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("tool calling is not supported yet: leave tools unset")
        return value

    @model_validator(mode="after")
    def _one_max(self) -> ChatCompletionRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("set max_completion_tokens or max_tokens, not both")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
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


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# ---- embeddings -------------------------------------------------------------------------
class EmbeddingRequest(_Strict):
    model: str = Field(min_length=1)
    input: str | list[str] | list[Int] | list[list[Int]] = Field(
        json_schema_extra=_prompt_schema(2048, tokens=2048)
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1), _INTEGRAL] | None = Field(
        default=None, description="Only the model's own dimension."
    )
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input_present(cls, value: Any) -> Any:
        if isinstance(value, str) and not value:
            raise ValueError("input is an empty string: give some text")
        if isinstance(value, list):
            if not value:
                raise ValueError("input is an empty list: give a string or a list of strings")
            if len(value) > 2048:
                raise ValueError(f"at most 2048 inputs per request, got {len(value)}")
            if any(isinstance(v, str) and not v for v in value):
                raise ValueError("input holds an empty string: every input needs some text")
            if any(isinstance(v, list) and not v for v in value):
                raise ValueError("input holds an empty token list")
        return value

    def items(self) -> list[str | list[int]]:
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(v, int) for v in value):
            return [[int(v) for v in value]]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# ---- models ---------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "llmaas"
    task: str
    max_context_length: int | None = None
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- OpenAPI -------------------------------------------------------------------------------
def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """An ``openapi_extra`` that documents ``model`` as a route's JSON request body.

    For routes that read the raw body themselves (to answer in OpenAI's error shape), so
    FastAPI does not parse or describe it. The model's ``$defs`` are inlined: a ``$ref`` inside
    an operation resolves against the whole OpenAPI document, which has no ``$defs``.
    """
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

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(schema, ())}},
        }
    }


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
