"""Server-sent events: chunks as events, an error as one more event, always [DONE] after settling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from llmaas.engine.errors import EngineOverloaded
from llmaas.openai.errors import bad_request
from llmaas.openai.protocol import ModelCard
from llmaas.openai.sse import DONE, sse


async def _cards(n: int, then: BaseException | None = None) -> AsyncIterator[ModelCard]:
    for i in range(n):
        yield ModelCard(id=f"m{i}", task="generate", created=0)
    if then is not None:
        raise then


def _events(chunks: AsyncIterator[ModelCard]) -> tuple[list[str], list[str]]:
    order: list[str] = []

    async def settle() -> None:
        order.append("settled")

    async def main() -> list[str]:
        out = []
        async for event in sse(chunks, settle):
            if event == DONE:
                order.append("done")
            out.append(event)
        return out

    return asyncio.run(main()), order


def test_each_chunk_is_one_event_and_the_stream_ends_done_after_settling():
    events, order = _events(_cards(2))
    assert events[:2] == [
        f"data: {ModelCard(id=f'm{i}', task='generate', created=0).model_dump_json()}\n\n" for i in range(2)
    ]
    assert events[2] == "data: [DONE]\n\n"
    assert order == ["settled", "done"]


def test_an_error_part_way_is_an_event_in_openai_shape():
    events, _ = _events(_cards(1, bad_request("nope", param="n")))
    assert len(events) == 3 and events[-1] == DONE
    assert json.loads(events[1].removeprefix("data: "))["error"]["param"] == "n"
    events, _ = _events(_cards(0, EngineOverloaded("queue full")))
    assert json.loads(events[0].removeprefix("data: "))["error"]["code"] == "overloaded"
    events, order = _events(_cards(0, KeyError("x")))
    error = json.loads(events[0].removeprefix("data: "))["error"]
    assert (error["type"], error["message"]) == ("server_error", "KeyError: 'x'")
    assert order == ["settled", "done"]
