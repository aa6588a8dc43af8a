"""The ``/v1/models`` list."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    Field,
)

from llmaas.openai.protocol.common import now


# ---- models ---------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "llmaas"
    parent: str | None = Field(default=None, description="A fine-tuned model: the model it was tuned from.")
    root: str | None = Field(default=None, description="The catalog model its weights come from.")
    task: str
    max_context_length: int | None = None
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
