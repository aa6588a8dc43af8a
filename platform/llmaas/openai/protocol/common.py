"""Parts every route's models share: strictness, ids, errors, the sampling fields of completions and
chat, logprobs in responses and usage.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from llmaas.config.catalog import SamplingDefaults
from llmaas.engine.types import SamplingParams, StructuredOutput
from llmaas.openai.protocol.base import Strict, field_error
from llmaas.openai.protocol.tools import StructuredOutputs

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


def integral(value: Any) -> Any:
    """JSON Schema's integer: 2.0 is 2; 2.5, "2" and true are still refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


INTEGRAL = BeforeValidator(integral)
#: an integer field: strict, except that a number with no fraction is one (as in JSON Schema)
Int = Annotated[int, INTEGRAL]
NOT_YET = "Not supported yet: leave it unset (or 0 / false)."
IGNORED = "Accepted for compatibility with OpenAI's API and ignored."


def prompt_schema(batch: int, tokens: int | None = None) -> dict[str, Any]:
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


#: inputs in one /v1/embeddings or /v1/classify request (and token ids in one flat list)
MAX_INPUTS = 2048


def _inputs_present(value: Any) -> Any:
    if isinstance(value, str) and not value:
        raise ValueError("input is an empty string: give some text")
    if isinstance(value, list):
        if not value:
            raise ValueError("input is an empty list: give a string or a list of strings")
        if len(value) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request, got {len(value)}")
        if any(isinstance(v, str) and not v for v in value):
            raise ValueError("input holds an empty string: every input needs some text")
        if any(isinstance(v, list) and not v for v in value):
            raise ValueError("input holds an empty token list")
    return value


#: The ``input`` of /v1/embeddings and /v1/classify: a text, texts, token ids or lists of them.
Inputs = Annotated[
    str | list[str] | list[Int] | list[list[Int]],
    AfterValidator(_inputs_present),
    Field(json_schema_extra=prompt_schema(MAX_INPUTS, tokens=MAX_INPUTS)),
]


def input_items(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """One entry per input: a text, or its token ids (a flat id list is one input)."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(v, int) for v in value):
        return [[int(v) for v in value]]  # type: ignore[arg-type]
    return list(value)  # type: ignore[arg-type]


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
class StreamOptions(Strict):
    include_usage: StrictBool = False


STREAM_OPTIONS_NEED_STREAM: JsonDict = {
    "if": {"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
    "then": {"required": ["stream"], "properties": {"stream": {"const": True}}},
}
_LOGIT_BIAS_SCHEMA: JsonDict = {
    "propertyNames": {"pattern": "^[0-9]+$"},
    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
    "maxProperties": MAX_LOGIT_BIAS,
}


class SamplingFields(Strict):
    """Fields shared by completions and chat completions."""

    # NOTE: the rules the validators below add, in JSON Schema, so that /openapi.json is honest.
    model_config = ConfigDict(json_schema_extra={"allOf": [STREAM_OPTIONS_NEED_STREAM]})

    model: str = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    temperature: float | None = Field(
        default=None, ge=0.0, le=2.0, description=f"Below {GREEDY_BELOW_TEMPERATURE} is greedy decoding."
    )
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: Annotated[int, Field(ge=-1), INTEGRAL] | None = Field(
        default=None, description="-1 or 0 disables top-k (vLLM style)."
    )
    n: Int = Field(default=1, ge=1, le=MAX_N)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        default=None,
        json_schema_extra={"minLength": 1, "items": {"minLength": 1}, "maxItems": MAX_STOP_SEQUENCES},
    )
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1), INTEGRAL] | None = None
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
    user: str | None = Field(default=None, description=IGNORED)
    ignore_eos: StrictBool = False
    stop_token_ids: list[Annotated[int, Field(ge=0), INTEGRAL]] | None = Field(
        default=None,
        max_length=MAX_STOP_SEQUENCES * 4,
        description="vLLM's extension: token ids that end the completion (finish_reason stop), kept out of "
        "its text; held back before min_tokens.",
    )
    cache: StrictBool | None = Field(
        default=None,
        description="llmaas: answer from (and into) the model's response cache when its catalog entry "
        "enables one (true), or never (false); unset: the model's default. Only greedy or seeded "
        "requests with n = 1 are cached; the X-LLMaaS-Cache response header says hit, miss or bypass.",
    )
    structured_outputs: StructuredOutputs | None = Field(
        default=None,
        description="vLLM's extension: constrain the output to a JSON schema (json), a regular "
        "expression (regex) or one of some strings (choice).",
    )

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
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @model_validator(mode="after")
    def _min_below_max(self) -> SamplingFields:
        asked = self.requested_max_tokens()
        if self.min_tokens and asked is not None and self.min_tokens > asked:
            raise field_error(
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

    def structured_output(self) -> StructuredOutput | None:
        """The constraint ``structured_outputs`` puts on the output."""
        given = self.structured_outputs
        if given is None:
            return None
        if given.json_ is not None:
            return StructuredOutput(
                kind="json", json_schema=json.dumps(given.json_), param="structured_outputs"
            )
        if given.regex is not None:
            return StructuredOutput(kind="regex", regex=given.regex, param="structured_outputs")
        return StructuredOutput(kind="choice", choice=tuple(given.choice or ()), param="structured_outputs")

    def to_sampling_params(
        self,
        defaults: SamplingDefaults,
        max_tokens: int,
        choice: int = 0,
        structured: StructuredOutput | None = None,
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
            stop_token_ids=tuple(self.stop_token_ids or ()),
            logprobs=self.engine_logprobs(),
            prompt_logprobs=self.engine_prompt_logprobs(),
            structured=structured if structured is not None else self.structured_output(),
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


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(default=0, description="Prompt tokens read from the prefix cache.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
