"""The ``/v1/classify`` request and response, in vLLM's shape (OpenAI has no such route).

vLLM's ``ClassificationCompletionRequest`` and ``ClassificationResponse``: ``input`` is a text,
texts, token ids or lists of them; each input gets its most likely ``label``, every class's
``probs`` (in the model's label order) and ``num_classes``. vLLM's scheduling and truncation
extras (``priority``, ``truncate_prompt_tokens``, ``use_activation``, chat ``messages``) are
refused like any unknown field rather than ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, field_validator

from llmaas.openai.protocol.base import Strict
from llmaas.openai.protocol.common import IGNORED, Int, Usage, new_id, now, prompt_schema

#: inputs in one request (and token ids in one flat list), as /v1/embeddings allows
MAX_CLASSIFY_INPUTS = 2048


class ClassificationRequest(Strict):
    model: str = Field(min_length=1)
    input: str | list[str] | list[Int] | list[list[Int]] = Field(
        json_schema_extra=prompt_schema(MAX_CLASSIFY_INPUTS, tokens=MAX_CLASSIFY_INPUTS)
    )
    add_special_tokens: StrictBool = Field(
        default=True,
        description="vLLM's: add the tokenizer's special tokens ([CLS] and [SEP] for BERT) to texts.",
    )
    user: str | None = Field(default=None, description=IGNORED)

    @field_validator("input")
    @classmethod
    def _input_present(cls, value: Any) -> Any:
        if isinstance(value, str) and not value:
            raise ValueError("input is an empty string: give some text")
        if isinstance(value, list):
            if not value:
                raise ValueError("input is an empty list: give a string or a list of strings")
            if len(value) > MAX_CLASSIFY_INPUTS:
                raise ValueError(f"at most {MAX_CLASSIFY_INPUTS} inputs per request, got {len(value)}")
            if any(isinstance(v, str) and not v for v in value):
                raise ValueError("input holds an empty string: every input needs some text")
            if any(isinstance(v, list) and not v for v in value):
                raise ValueError("input holds an empty token list")
        return value

    def items(self) -> list[str | list[int]]:
        """One entry per input: a text, or its token ids (a flat id list is one input)."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if all(isinstance(v, int) for v in value):
            return [[int(v) for v in value]]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]


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
