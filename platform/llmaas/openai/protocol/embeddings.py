"""The ``/v1/embeddings`` request and response."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from llmaas.openai.protocol.base import Strict
from llmaas.openai.protocol.common import INTEGRAL, Inputs, input_items


# ---- embeddings -------------------------------------------------------------------------
class EmbeddingRequest(Strict):
    model: str = Field(min_length=1)
    input: Inputs
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1), INTEGRAL] | None = Field(
        default=None, description="Only the model's own dimension."
    )
    user: str | None = None

    def items(self) -> list[str | list[int]]:
        return input_items(self.input)


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
