"""Fakes of the OpenAI service's two clients: a tokenizer and a model that reports logprobs.

``FakeTokenizer`` names token i ``<i>`` (so a text is its tokens' strings joined); ``LogprobModel``
generates tokens 60, 61, ... (token i's text is ``<i>``) with the logprobs and prompt logprobs
the engine contract describes, and records every request it is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from llmaas.config.catalog import Catalog
from llmaas.engine.types import FinishReason, GenerationChunk, GenerationRequest, ModelInfo, TokenLogprob
from llmaas.openai.service import OpenAIService
from tests.unit.test_metrics import Collecting
from tests.unit.test_metrics import FakeTokenizer as _EncodingTokenizer

VOCAB = 100
FIRST_GENERATED = 60


def token_str(token: int) -> str:
    return f"<{token}>"


class FakeTokenizer(_EncodingTokenizer):
    """The metrics tests' tokenizer (one token per character), with token strings and decoding."""

    def __init__(self) -> None:
        self.token_string_calls: list[list[int]] = []

    async def token_strings(self, model_id: str, ids: list[int]) -> list[str]:
        self.token_string_calls.append(list(ids))
        return [token_str(i) for i in ids]

    async def decode(self, model_id: str, ids: list[int], skip_special_tokens: bool) -> str:
        return "".join(token_str(i) for i in ids)


def entry(token: int, logprob: float, top: int) -> TokenLogprob:
    """Token ``token`` with logprob ``logprob``; its alternatives are it and the tokens after it."""
    return TokenLogprob(
        token_id=token,
        logprob=logprob,
        top=[((token + k) % VOCAB, logprob - k) for k in range(top)],
    )


class LogprobModel:
    """Generates ``max_tokens`` tokens (60, 61, ...), one chunk each when streaming (one chunk in all
    when not), with logprobs and prompt logprobs when asked.

    ``hold``: every other streamed chunk carries its token with no text yet (a detokenizer holding
    back part of a character); the next chunk carries both tokens' text. ``no_logprobs``: an
    engine that ignores the logprob fields.
    """

    def __init__(self, *, hold: bool = False, no_logprobs: bool = False, context: int = 64) -> None:
        self.hold = hold
        self.no_logprobs = no_logprobs
        self.context = context
        self.requests: list[GenerationRequest] = []

    async def info(self) -> ModelInfo:
        return ModelInfo(model_id="x", task="generate", max_context_length=self.context, vocab_size=VOCAB)

    def _logprobs(self, request: GenerationRequest, tokens: list[int]) -> list[TokenLogprob] | None:
        top = request.sampling.logprobs
        if top is None or self.no_logprobs:
            return None
        return [entry(t, -0.25 * (t - FIRST_GENERATED + 1), top) for t in tokens]

    def _prompt_logprobs(self, request: GenerationRequest) -> list[TokenLogprob | None] | None:
        top = request.sampling.prompt_logprobs
        if top is None or self.no_logprobs:
            return None
        ids = request.prompt_token_ids
        return [None] + [entry(t, -1.0 - i / 10, top) for i, t in enumerate(ids[1:])]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        n = request.sampling.max_tokens
        tokens = [FIRST_GENERATED + i for i in range(n)]
        common: dict[str, Any] = {
            "request_id": request.request_id,
            "num_prompt_tokens": len(request.prompt_token_ids),
        }
        if not request.stream or n == 0:
            yield GenerationChunk(
                **common,
                text="".join(token_str(t) for t in tokens),
                token_ids=tokens,
                logprobs=self._logprobs(request, tokens),
                prompt_logprobs=self._prompt_logprobs(request),
                num_generated_tokens=n,
                finish_reason=FinishReason.LENGTH,
            )
            return
        held = ""
        for i, token in enumerate(tokens):
            await asyncio.sleep(0)
            text = held + token_str(token)
            held = ""
            if self.hold and i % 2 == 0 and i < n - 1:
                held, text = text, ""
            yield GenerationChunk(
                **common,
                text=text,
                token_ids=[token],
                logprobs=self._logprobs(request, [token]),
                prompt_logprobs=self._prompt_logprobs(request) if i == 0 else None,
                num_generated_tokens=i + 1,
                finish_reason=FinishReason.LENGTH if i == n - 1 else None,
            )

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        raise AssertionError("a generation model")

    async def classify(self, inputs: list[list[int]]) -> list[list[float]]:
        raise AssertionError("a generation model")


def catalog(**batching: int) -> Catalog:
    return Catalog.model_validate(
        {
            "models": [
                {"id": "gen", "source": {"demo": "tiny-llama-chat"}, "batching": batching},
                {"id": "emb", "task": "embed", "source": {"demo": "all-minilm-l6-v2"}},
            ]
        }
    )


def service(
    model: Any | None = None, **batching: int
) -> tuple[OpenAIService, LogprobModel, FakeTokenizer, Collecting]:
    """A service over ``model`` (a ``LogprobModel`` by default) as 'gen'; 'emb' is an embedding model."""
    from tests.unit.test_metrics import FakeModel

    gen = model if model is not None else LogprobModel()
    tokenizer = FakeTokenizer()
    recorder = Collecting()
    models: dict[str, Any] = {"gen": gen, "emb": FakeModel("embed")}
    return OpenAIService(catalog(**batching), tokenizer, models, metrics=recorder), gen, tokenizer, recorder
