"""OpenAI API request and response models, in one place.

Requests are strict, as OpenAI's are: unknown fields (top level and in messages) and values
of the wrong JSON type (``"5"`` or ``true`` for an integer) are a 400 naming the field. They
own their conversion to the engine's ``SamplingParams``. Parameters this platform cannot
honour (tools, structured output, ``suffix``) are refused with a 400 rather than ignored; the few
that only label a request for OpenAI's own bookkeeping (``user``, ``store``, ``metadata``) are
accepted and ignored. ``llmaas.openai.openapi`` describes these models in the OpenAPI document.

Logprobs are the model's log-softmax over the vocabulary before any sampling processor
(temperature, penalties, ``logit_bias``, top-k/p), as vLLM reports them; a value below -9999
(or not finite) is reported as -9999.0, as OpenAI does.
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
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict
from pydantic_core import InitErrorDetails, PydanticCustomError

from llmaas.config.catalog import SamplingDefaults
from llmaas.engine.types import SamplingParams

MAX_STOP_SEQUENCES = 16
MAX_N = 16
#: prompts in one /v1/completions request (the model's capacity bounds prompts x n further)
MAX_PROMPTS = 2048
#: entries in one logit_bias
MAX_LOGIT_BIAS = 1024
#: OpenAI's bounds: completions logprobs 0..5, chat top_logprobs 0..20
MAX_COMPLETION_LOGPROBS = 5
MAX_TOP_LOGPROBS = 20
#: OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512
MAX_METADATA = 16
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
_IGNORED = "Accepted for compatibility with OpenAI's API and ignored."


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


def _field_error(field: str, message: str) -> ValidationError:
    """A cross-field rule's error, located at ``field`` (so the 400 names it), for a model validator."""
    error = PydanticCustomError("value_error", "{message}", {"message": message})
    return ValidationError.from_exception_data(
        "request", [InitErrorDetails(type=error, loc=(field,), input=message)]
    )


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
_LOGIT_BIAS_SCHEMA: JsonDict = {
    "propertyNames": {"pattern": "^[0-9]+$"},
    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
    "maxProperties": MAX_LOGIT_BIAS,
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
        default=None,
        ge=-2.0,
        le=2.0,
        description="Penalise tokens already in the completion (once each): -2..2.",
    )
    frequency_penalty: float | None = Field(
        default=None,
        ge=-2.0,
        le=2.0,
        description="Penalise tokens by how often they are in the completion: -2..2.",
    )
    repetition_penalty: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="vLLM's extension: divide (multiply, if negative) the logits of tokens in the prompt "
        "or the completion by this; 1 is off, above 1 discourages repetition.",
    )
    logit_bias: dict[str, float] | None = Field(
        default=None,
        description="Token id (as a string) -> bias in -100..100 added to its logit before sampling; "
        "-100 bans a token, 100 forces it. Ids must be in the model's vocabulary.",
        json_schema_extra=_LOGIT_BIAS_SCHEMA,
    )
    min_tokens: Int | None = Field(
        default=None,
        ge=0,
        description="vLLM's extension: EOS and stop sequences are ignored before this many tokens.",
    )
    user: str | None = Field(default=None, description=_IGNORED)
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

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if not value:
            return value
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased, got {len(value)}")
        for key, bias in value.items():
            if not (key.isascii() and key.isdigit()):
                raise ValueError(
                    f'keys are token ids (decimal strings such as "50256"), not {key[:40]!r}: '
                    "use /tokenize to find a text's token ids"
                )
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"the bias of token {key} is {bias}; biases must be within -100..100")
        return value

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as the engine takes it: (token id, bias) pairs, by id."""
        return tuple(sorted((int(key), float(bias)) for key, bias in (self.logit_bias or {}).items()))

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @model_validator(mode="after")
    def _min_below_max(self) -> _SamplingFields:
        asked = self.requested_max_tokens()
        if self.min_tokens and asked is not None and self.min_tokens > asked:
            raise _field_error(
                "min_tokens",
                f"min_tokens ({self.min_tokens}) is above the maximum ({asked}): lower min_tokens",
            )
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def engine_logprobs(self) -> int | None:
        """How many top alternatives the engine reports per generated token (None: no logprobs)."""
        return None

    def engine_prompt_logprobs(self) -> int | None:
        """How many top alternatives the engine reports per prompt token (None: no prompt logprobs)."""
        return None

    def to_sampling_params(
        self, defaults: SamplingDefaults, max_tokens: int, choice: int = 0
    ) -> SamplingParams:
        """Sampling for choice ``choice``; with a seed, choice i uses seed + i so that choices differ.

        Raises pydantic's ``ValidationError`` for values the engine refuses (the service answers
        it with a 400 naming the field).
        """
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
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            logit_bias=self.logit_bias_pairs(),
            min_tokens=self.min_tokens or 0,
            logprobs=self.engine_logprobs(),
            prompt_logprobs=self.engine_prompt_logprobs(),
        )


# ---- logprobs in responses ------------------------------------------------------------------
class CompletionLogprobs(BaseModel):
    """A completion choice's logprobs, one entry per token of its text (OpenAI's legacy shape).

    With ``echo`` the prompt's tokens come first; the first of them has no logprob (null), as
    nothing precedes it. ``top_logprobs`` maps token strings to logprobs (the sampled token's
    included); ``text_offset`` is each token's character offset in the choice's text.
    """

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(default=None, description="The token's text as UTF-8 bytes.")


class TokenLogprobInfo(TopLogprob):
    """One generated token of a chat choice with its most likely alternatives (most likely first)."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """A chat choice's logprobs: ``content`` holds one entry per generated token."""

    content: list[TokenLogprobInfo] | None = None
    refusal: list[TokenLogprobInfo] | None = None


# ---- completions --------------------------------------------------------------------------
_ECHO_FOR_ZERO_MAX_TOKENS: JsonDict = {
    "if": {"required": ["max_tokens"], "properties": {"max_tokens": {"const": 0}}},
    "then": {"required": ["echo"], "properties": {"echo": {"const": True}}},
}


class CompletionRequest(_SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={"allOf": [_STREAM_OPTIONS_NEED_STREAM, _ECHO_FOR_ZERO_MAX_TOKENS]}
    )

    prompt: str | list[str] | list[Int] | list[list[Int]] = Field(
        description="A string, a list of strings, a list of token ids, or a list of token-id lists: "
        "one choice set per prompt; choices are prompt-major (index = prompt * n + choice).",
        json_schema_extra=_prompt_schema(MAX_PROMPTS),
    )
    max_tokens: Annotated[int, Field(ge=0), _INTEGRAL] | None = Field(
        default=None, description="0 only with echo: the prompt (and its logprobs) without a completion."
    )
    echo: StrictBool = Field(
        default=False,
        description="Return the prompt before the completion (and its logprobs, with logprobs).",
    )
    logprobs: Int | None = Field(
        default=None,
        ge=0,
        le=MAX_COMPLETION_LOGPROBS,
        description="Return each token's logprob and this many most likely alternatives (0-5).",
    )
    best_of: Int | None = Field(default=None, description="Not supported: leave it unset or equal to n.")
    suffix: str | None = Field(
        default=None, description="Not supported.", json_schema_extra={"enum": ["", None]}
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_present(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("prompt is an empty string: give some text")
            return value
        if not value:
            raise ValueError("prompt is an empty list: give a string, a list of strings or token ids")
        if all(isinstance(v, int) for v in value):
            return value
        if len(value) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(value)}")
        for i, item in enumerate(value):
            if isinstance(item, str) and not item:
                raise ValueError(f"prompt[{i}] is an empty string: every prompt needs some text")
            if isinstance(item, list) and not item:
                raise ValueError(f"prompt[{i}] is an empty token list")
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

    @model_validator(mode="after")
    def _zero_max_tokens_needs_echo(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            # NOTE: raised as a field error so that the 400 names max_tokens
            raise _field_error(
                "max_tokens", "max_tokens is 0 (no completion) only with echo: set echo or max_tokens >= 1"
            )
        return self

    def prompts(self) -> list[str | list[int]]:
        """Every prompt, as text or token ids, in order."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [[int(p) for p in prompt]]  # type: ignore[arg-type]
        return [p if isinstance(p, str) else [int(t) for t in p] for p in prompt]  # type: ignore[union-attr]

    def engine_logprobs(self) -> int | None:
        return self.logprobs

    def engine_prompt_logprobs(self) -> int | None:
        return self.logprobs if self.echo else None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
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


_TOP_LOGPROBS_NEED_LOGPROBS: JsonDict = {
    "if": {
        "required": ["top_logprobs"],
        "properties": {"top_logprobs": {"type": "integer", "exclusiveMinimum": 0}},
    },
    "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
}


class ChatCompletionRequest(_SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={"allOf": [_STREAM_OPTIONS_NEED_STREAM, _TOP_LOGPROBS_NEED_LOGPROBS]}
    )

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1), _INTEGRAL] | None = Field(
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
    store: StrictBool | None = Field(default=None, description=_IGNORED + " Nothing is stored.")
    metadata: dict[str, str] | None = Field(
        default=None,
        description=_IGNORED + f" At most {MAX_METADATA} pairs (keys up to 64 characters, values up to 512).",
        json_schema_extra={
            "maxProperties": MAX_METADATA,
            "propertyNames": {"maxLength": 64},
            "additionalProperties": {"type": "string", "maxLength": 512},
        },
    )
    add_generation_prompt: StrictBool = True

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
            raise _field_error(
                "max_completion_tokens",
                f"max_completion_tokens ({self.max_completion_tokens}) and max_tokens ({self.max_tokens}) "
                "differ: set one of them (max_completion_tokens is the newer name)",
            )
        return self

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise _field_error("top_logprobs", "top_logprobs needs logprobs: true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def max_tokens_param(self) -> str:
        """The field a too-large maximum came from, for errors."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def engine_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


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


# ---- tokenize / detokenize (vLLM's shapes) -------------------------------------------------
_TOKEN_STRS = "Also return each token's string (token_strs)."


class TokenizeCompletionRequest(_Strict):
    """``POST /tokenize`` with a prompt: its token ids, as /v1/completions would send them."""

    model: str = Field(min_length=1)
    prompt: str
    add_special_tokens: StrictBool = Field(default=True, description="Add the tokenizer's BOS and the like.")
    return_token_strs: StrictBool | None = Field(
        default=False, description="Also return each token's string."
    )


class TokenizeChatRequest(_Strict):
    """``POST /tokenize`` with messages: the token ids /v1/chat/completions would send."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = Field(
        default=False, description="Not supported: leave it false.", json_schema_extra={"enum": [False]}
    )
    add_special_tokens: StrictBool = Field(
        default=False,
        description="Not supported: the chat template writes the special tokens.",
        json_schema_extra={"enum": [False]},
    )
    return_token_strs: StrictBool | None = Field(
        default=False, description="Also return each token's string."
    )

    @field_validator("continue_final_message", "add_special_tokens")
    @classmethod
    def _not_supported(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            raise ValueError(f"{info.field_name} is not supported: leave it false")
        return value

    def template_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


TokenizeRequest = TokenizeCompletionRequest | TokenizeChatRequest


def tokenize_request_type(data: Any) -> type[TokenizeCompletionRequest] | type[TokenizeChatRequest]:
    """Which tokenize request a JSON body is: one with ``messages`` is a chat one (as in vLLM)."""
    return TokenizeChatRequest if isinstance(data, dict) and "messages" in data else TokenizeCompletionRequest


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Strict):
    model: str = Field(min_length=1)
    tokens: list[Annotated[int, Field(ge=0), _INTEGRAL]] = Field(max_length=1 << 20)


class DetokenizeResponse(BaseModel):
    prompt: str
