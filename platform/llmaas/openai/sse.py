"""Server-sent events: a stream of response chunks as OpenAI's streaming API frames it.

Each chunk is one ``data: {json}`` event; an error part-way is one more event holding the error
in OpenAI's shape (the status line has long been sent); the stream always ends ``data: [DONE]``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from pydantic import BaseModel

from llmaas.openai.errors import known_error, to_openai_error

logger = logging.getLogger("ray.serve")

MEDIA_TYPE = "text/event-stream"
DONE = "data: [DONE]\n\n"


def event(data: str) -> str:
    """One server-sent event carrying ``data`` (a line of JSON)."""
    return f"data: {data}\n\n"


async def _nothing() -> None:
    """What ``sse`` awaits before its last event when there is nothing to settle."""


async def sse(
    chunks: AsyncIterator[BaseModel], settle: Callable[[], Awaitable[None]] = _nothing
) -> AsyncIterator[str]:
    """``chunks`` as events, then ``[DONE]``; ``settle`` is awaited before ``[DONE]``."""
    try:
        async for chunk in chunks:
            yield event(chunk.model_dump_json())
    except Exception as exc:
        if known_error(exc) is None:
            logger.exception("stream failed")
        yield event(json.dumps(to_openai_error(exc).body()))
    await settle()  # NOTE: the request's ledger row is committed before the caller sees the end
    yield DONE
