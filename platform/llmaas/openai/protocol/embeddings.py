"""The ``/v1/embeddings`` request and response."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    field_validator,
)

from llmaas.openai.protocol.base import Strict
from llmaas.openai.protocol.common import INTEGRAL, Int, prompt_schema


# ---- embeddings -------------------------------------------------------------------------
class EmbeddingRequest(Strict):
    model: str = Field(min_length=1)
    input: str | list[str] | list[Int] | list[list[Int]] = Field(
        json_schema_extra=prompt_schema(2048, tokens=2048)
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1), INTEGRAL] | None = Field(
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
