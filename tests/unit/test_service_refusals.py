"""The service refuses what a model can never or cannot now take, before any byte of a stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmaas.config.catalog import Catalog
from llmaas.engine.errors import EngineOverloaded
from llmaas.engine.types import GenerationChunk, GenerationRequest
from llmaas.openai.errors import OpenAIError
from llmaas.openai.protocol import ChatCompletionRequest, CompletionRequest
from llmaas.openai.service import OpenAIService
from tests.unit.openai_fakes import FakeTokenizer
from tests.unit.test_metrics import Collecting, FakeModel


class FullModel(FakeModel):
    """Refuses every request the way a replica with a full queue does."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.calls += 1
        raise EngineOverloaded("the model is at capacity and its queue is full")
        yield  # pragma: no cover  (an async generator)


def _service(model: Any, **batching: int) -> tuple[OpenAIService, Collecting]:
    catalog = Catalog.model_validate(
        {"models": [{"id": "gen", "source": {"demo": "tiny-llama-chat"}, "batching": batching}]}
    )
    recorder = Collecting()
    return OpenAIService(catalog, FakeTokenizer(), {"gen": model}, metrics=recorder), recorder


@pytest.mark.parametrize("chat", [False, True])
def test_a_full_model_refuses_a_stream_with_503_before_the_stream_starts(chat: bool):
    async def main() -> None:
        model = FullModel()
        service, recorder = _service(model)
        opening = (
            service.chat_stream(
                ChatCompletionRequest.model_validate(
                    {"model": "gen", "messages": [{"role": "user", "content": "hi"}], "stream": True}
                )
            )
            if chat
            else service.completion_stream(CompletionRequest(model="gen", prompt="hi", stream=True))
        )
        with pytest.raises(OpenAIError) as refused:
            await opening
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
        assert model.calls == 1
        [record] = recorder.records
        assert record.status == 503

    asyncio.run(main())


def test_a_stream_still_yields_its_first_chunk_and_the_rest():
    async def main() -> None:
        service, recorder = _service(FakeModel())
        stream = await service.completion_stream(
            CompletionRequest(model="gen", prompt="hi", stream=True, max_tokens=5)
        )
        texts = [chunk.choices[0].text async for chunk in stream]
        assert "".join(texts) == "xxxxx"
        [record] = recorder.records
        assert record.status == 200 and record.generation_tokens == 5

    asyncio.run(main())


def test_n_beyond_what_the_model_can_ever_hold_is_400():
    async def main() -> None:
        service, _ = _service(FakeModel(), max_batch_size=2, max_queued_requests=4)  # 4 running + 4 queued
        with pytest.raises(OpenAIError) as refused:
            await service.completion(CompletionRequest(model="gen", prompt="hi", n=9, max_tokens=2))
        assert refused.value.status == 400 and refused.value.param == "n" and "8" in refused.value.message
        answer = await service.completion(CompletionRequest(model="gen", prompt="hi", n=8, max_tokens=2))
        assert len(answer.choices) == 8

    asyncio.run(main())
