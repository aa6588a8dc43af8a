"""The ``/v1/completions`` request and response."""

from __future__ import annotations

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

from llmaas.openai.protocol.base import field_error
from llmaas.openai.protocol.common import (
    INTEGRAL,
    MAX_COMPLETION_LOGPROBS,
    MAX_PROMPTS,
    STREAM_OPTIONS_NEED_STREAM,
    CompletionLogprobs,
    Int,
    SamplingFields,
    Usage,
    prompt_schema,
)

# ---- completions --------------------------------------------------------------------------
_ECHO_FOR_ZERO_MAX_TOKENS: JsonDict = {
    "if": {"required": ["max_tokens"], "properties": {"max_tokens": {"const": 0}}},
    "then": {"required": ["echo"], "properties": {"echo": {"const": True}}},
}


class CompletionRequest(SamplingFields):
    model_config = ConfigDict(
        json_schema_extra={"allOf": [STREAM_OPTIONS_NEED_STREAM, _ECHO_FOR_ZERO_MAX_TOKENS]}
    )

    prompt: str | list[str] | list[Int] | list[list[Int]] = Field(
        description="A string, a list of strings, a list of token ids, or a list of token-id lists: "
        "one choice set per prompt; choices are prompt-major (index = prompt * n + choice).",
        json_schema_extra=prompt_schema(MAX_PROMPTS),
    )
    max_tokens: Annotated[int, Field(ge=0), INTEGRAL] | None = Field(
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
            raise field_error(
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


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
