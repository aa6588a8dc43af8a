"""``POST /tokenize`` and ``/detokenize``, in vLLM's shapes."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
)

from llmaas.openai.protocol.base import Strict
from llmaas.openai.protocol.chat import ChatMessage
from llmaas.openai.protocol.common import INTEGRAL

# ---- tokenize / detokenize (vLLM's shapes) -------------------------------------------------
_TOKEN_STRS = "Also return each token's string (token_strs)."


class TokenizeCompletionRequest(Strict):
    """``POST /tokenize`` with a prompt: its token ids, as /v1/completions would send them."""

    model: str = Field(min_length=1)
    prompt: str
    add_special_tokens: StrictBool = Field(default=True, description="Add the tokenizer's BOS and the like.")
    return_token_strs: StrictBool | None = Field(
        default=False, description="Also return each token's string."
    )


class TokenizeChatRequest(Strict):
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


class DetokenizeRequest(Strict):
    model: str = Field(min_length=1)
    tokens: list[Annotated[int, Field(ge=0), INTEGRAL]] = Field(max_length=1 << 20)


class DetokenizeResponse(BaseModel):
    prompt: str
