"""The ``/v1/classify`` request and response, in vLLM's shape (OpenAI has no such route).

vLLM's ``ClassificationCompletionRequest`` and ``ClassificationResponse``: ``input`` is a text,
texts, token ids or lists of them; each input gets its most likely ``label``, every class's
``probs`` (in the model's label order) and ``num_classes``. vLLM's scheduling and truncation
extras (``priority``, ``truncate_prompt_tokens``, ``use_activation``, chat ``messages``) are
refused like any unknown field rather than ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictBool

from llmaas.openai.protocol.base import Strict
from llmaas.openai.protocol.common import IGNORED, MAX_INPUTS, Inputs, Usage, input_items, new_id, now

#: inputs in one request (and token ids in one flat list), as /v1/embeddings allows
MAX_CLASSIFY_INPUTS = MAX_INPUTS


class ClassificationRequest(Strict):
    model: str = Field(min_length=1)
    input: Inputs
    add_special_tokens: StrictBool = Field(
        default=True,
        description="vLLM's: add the tokenizer's special tokens ([CLS] and [SEP] for BERT) to texts.",
    )
    user: str | None = Field(default=None, description=IGNORED)

    def items(self) -> list[str | list[int]]:
        """One entry per input: a text, or its token ids (a flat id list is one input)."""
        return input_items(self.input)


class ClassificationData(BaseModel):
    index: int
    label: str | None = Field(description="The most likely class's name (the model's id2label).")
    probs: list[float] = Field(description="Every class's probability, in the model's label order.")
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("classify"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=now)
    model: str
    data: list[ClassificationData]
    usage: Usage
