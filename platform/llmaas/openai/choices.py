"""The pieces of one generation request between the API and the engine: its prompts, the engine
requests it fans out to (prompt-major), and each choice as its chunks come in.

Plain data and functions, no I/O: ``llmaas.openai.service`` drives them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from llmaas.config.catalog import ModelSpec
from llmaas.engine.types import FinishReason, GenerationChunk, GenerationRequest, TokenLogprob
from llmaas.openai.errors import internal


@dataclass
class Choice:
    """One choice as its chunks come in (generated tokens only; the prompt is the request's)."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass(frozen=True)
class Prompts:
    """A request's prompts as token ids; ``echo`` the text each echoes (completions with echo)."""

    spec: ModelSpec
    ids: list[list[int]]
    echo: list[str] | None = None


@dataclass(frozen=True)
class Prepared:
    """The engine requests of one API request, prompt-major: request ``p * n + c`` is prompt p's
    choice c.

    ``drop_generated``: the request asked for no completion (``max_tokens`` 0, with echo) of an
    engine that generates at least one token; it generates one, which is dropped.
    """

    spec: ModelSpec
    prompts: list[list[int]]
    n: int
    requests: list[GenerationRequest]
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    drop_generated: bool = False
    #: per engine request: its prompt tokens the prefix cache held (filled in as chunks arrive)
    cached: list[int] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompts)

    @property
    def cached_tokens(self) -> int:
        """Cached prompt tokens, each prompt counted once (as its prompt tokens are): its first choice's."""
        return sum(self.cached[p * self.n] for p in range(len(self.prompts)) if p * self.n < len(self.cached))

    def prompt_of(self, index: int) -> int:
        return index // self.n


def finish_reason(chunk: GenerationChunk) -> str | None:
    if chunk.finish_reason is None:
        return None
    return "length" if chunk.finish_reason is FinishReason.LENGTH else "stop"


def chunk_output(prepared: Prepared, chunk: GenerationChunk) -> tuple[str, list[int], list[TokenLogprob]]:
    """A chunk's text, token ids and (when asked) their logprobs, as the caller sees them."""
    if prepared.drop_generated:
        return "", [], []
    if prepared.logprobs is None or not chunk.token_ids:
        return chunk.text, chunk.token_ids, []
    if chunk.logprobs is None or len(chunk.logprobs) != len(chunk.token_ids):
        got = 0 if chunk.logprobs is None else len(chunk.logprobs)
        raise internal(
            f"model '{prepared.spec.id}' returned {got} logprobs for {len(chunk.token_ids)} tokens: "
            "its engine does not report the logprobs asked for"
        )
    return chunk.text, chunk.token_ids, chunk.logprobs


def prompt_entries(
    prepared: Prepared, index: int, got: list[TokenLogprob | None] | None
) -> list[TokenLogprob | None]:
    """``got``, the prompt logprobs of choice ``index``; an error if the engine did not send them."""
    expected = len(prepared.prompts[prepared.prompt_of(index)])
    if got is None or len(got) != expected:
        raise internal(
            f"model '{prepared.spec.id}' returned {0 if got is None else len(got)} prompt logprobs for "
            f"{expected} prompt tokens: its engine does not report the prompt logprobs asked for"
        )
    return got


def chunk_finish(prepared: Prepared, chunk: GenerationChunk) -> str | None:
    """The finish reason the caller sees."""
    if prepared.drop_generated and chunk.finish_reason is not None:
        return "length"  # NOTE: as asked: max_tokens 0
    return finish_reason(chunk)


def absorb(prepared: Prepared, choice: Choice, chunk: GenerationChunk) -> None:
    """Add ``chunk`` to ``choice`` (an unstreamed answer)."""
    text, ids, logprobs = chunk_output(prepared, chunk)
    choice.text.append(text)
    choice.token_ids.extend(ids)
    choice.logprobs.extend(logprobs)
    if chunk.prompt_logprobs is not None and choice.prompt_logprobs is None:
        choice.prompt_logprobs = chunk.prompt_logprobs
    if not prepared.drop_generated:
        choice.completion_tokens = chunk.num_generated_tokens
    if chunk.finish_reason is not None:
        choice.finish_reason = chunk_finish(prepared, chunk)


@dataclass
class StreamState:
    """A streamed choice: whether its first chunk went out, its text's length in token strings so
    far (the next ``text_offset``), and the tokens whose logprobs are not sent yet."""

    started: bool = False
    offset: int = 0
    ids: list[int] = field(default_factory=list)
    entries: list[TokenLogprob | None] = field(default_factory=list)


async def prepend(
    first: tuple[int, GenerationChunk] | None, rest: AsyncIterator[tuple[int, GenerationChunk]]
) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """``first`` (when there is one), then ``rest``; closing this closes ``rest`` (cancelling it)."""
    try:
        if first is not None:
            yield first
        async for item in rest:
            yield item
    finally:
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()
