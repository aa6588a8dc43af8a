"""How an engine's per-step chunks become the messages a caller reads (shared by every engine).

No torch here: the fake engine uses it as the real scheduler does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Literal

from llmaas.engine.types import GenerationChunk


def merge_chunks(first: GenerationChunk, second: GenerationChunk) -> GenerationChunk:
    """Two consecutive chunks of one sequence as one (logprobs stay one per token)."""
    logprobs = (
        None
        if first.logprobs is None and second.logprobs is None
        else [*(first.logprobs or []), *(second.logprobs or [])]
    )
    return second.model_copy(
        update={
            "text": first.text + second.text,
            "token_ids": [*first.token_ids, *second.token_ids],
            "logprobs": logprobs,
            "prompt_logprobs": first.prompt_logprobs
            if first.prompt_logprobs is not None
            else second.prompt_logprobs,
        }
    )


# "auto" stream_interval: the messages a replica sends per decoding step, at most, once more than
# this many streams run (each message crosses Serve's streaming handle twice and becomes an SSE event,
# a cost on the CPU the model shares that grows with the streams, not with the step)
AUTO_MESSAGES_PER_STEP = 8


def auto_stream_interval(running: int) -> int:
    """Tokens per message after the first, for ``running`` streams: 1 up to ``AUTO_MESSAGES_PER_STEP``
    streams, then as many as keep a step's messages within it (32 streams: 4 tokens a message)."""
    return max(1, -(-running // AUTO_MESSAGES_PER_STEP))


def interval_policy(setting: int | Literal["auto"], running: Callable[[], int]) -> Callable[[], int]:
    """The catalog's ``stream_interval`` as what ``coalesced`` asks before each message."""
    if setting == "auto":
        return lambda: auto_stream_interval(running())
    return lambda: setting


async def coalesced(
    out: asyncio.Queue[GenerationChunk], stream: bool, interval: Callable[[], int]
) -> AsyncIterator[GenerationChunk]:
    """The chunks of ``out`` as messages, until the one that finishes the sequence.

    NOTE: a slow reader gets what piled up as one chunk, and after the first token a message
    carries ``interval()`` tokens (asked as it fills: it follows the load), so per-message costs
    (Serve streaming, SSE) scale with messages, not with tokens; without ``stream`` the whole
    sequence is one message.
    """
    first = True
    while True:
        chunk = await out.get()
        while chunk.finish_reason is None and (
            not stream or not out.empty() or (not first and len(chunk.token_ids) < interval())
        ):
            chunk = merge_chunks(chunk, await out.get())
        yield chunk
        first = False
        if chunk.finish_reason is not None:
            return


__all__ = ["AUTO_MESSAGES_PER_STEP", "auto_stream_interval", "coalesced", "interval_policy", "merge_chunks"]
