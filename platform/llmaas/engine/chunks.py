"""How an engine's per-step chunks become the messages a caller reads (shared by every engine).

No torch here: the fake engine uses it as the real scheduler does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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


async def coalesced(
    out: asyncio.Queue[GenerationChunk], stream: bool, interval: int
) -> AsyncIterator[GenerationChunk]:
    """The chunks of ``out`` as messages, until the one that finishes the sequence.

    NOTE: a slow reader gets what piled up as one chunk, and after the first token a message
    carries ``interval`` tokens, so per-message costs (Serve streaming, SSE) scale with messages,
    not with tokens; without ``stream`` the whole sequence is one message.
    """
    first = True
    while True:
        chunk = await out.get()
        while chunk.finish_reason is None and (
            not stream or not out.empty() or (not first and len(chunk.token_ids) < interval)
        ):
            chunk = merge_chunks(chunk, await out.get())
        yield chunk
        first = False
        if chunk.finish_reason is not None:
            return


__all__ = ["coalesced", "merge_chunks"]
