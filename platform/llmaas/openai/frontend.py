"""The OpenAI API's front door: who calls, what they sent, and the one service call that answers.

``OpenAIFrontend`` sits between a transport and ``OpenAIService``. For HTTP it tags the request
with its id, checks the caller's key (the gateway), reads and validates the JSON body, and counts
a refused body in the request metrics; for Python callers over a Serve handle it takes typed
requests and answers typed responses, or an ``ErrorResult`` in place of a raise. Either way the
request's ledger row is settled before the caller has the answer. No Starlette and no Ray here:
the router adapts a ``Request`` into a ``Caller`` and the body's byte chunks.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from llmaas.gateway.client import GatewayClient
from llmaas.metrics import current_key_id, current_request_id, set_request_id
from llmaas.openai.body import parse, read_json
from llmaas.openai.core import ROUTE_CLASSIFY
from llmaas.openai.errors import OpenAIError, known_error, model_not_found, to_openai_error
from llmaas.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ClassificationRequest,
    ClassificationResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResult,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    tokenize_request_type,
)
from llmaas.openai.response_cache import (
    CACHE_STATUS,
    ResponseCache,
    fresh,
    fresh_ids,
    recording,
    replay,
)
from llmaas.openai.service import (
    ROUTE_CHAT,
    ROUTE_COMPLETIONS,
    ROUTE_DETOKENIZE,
    ROUTE_EMBEDDINGS,
    ROUTE_TOKENIZE,
    OpenAIService,
)

logger = logging.getLogger("ray.serve")

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class Caller:
    """What the front door needs to know of an HTTP caller (its headers)."""

    authorization: str | None = None
    request_id: str | None = None  # X-Request-Id


def failure(exc: BaseException, what: str = "request failed") -> OpenAIError:
    """``exc`` as the client sees it; an unexpected one (a bug) is logged with its traceback."""
    known = known_error(exc)
    if known is not None:
        return known
    logger.exception(what)
    return to_openai_error(exc)


class OpenAIFrontend:
    """One per router replica and catalog; ``gateway`` is None without a gateway section."""

    def __init__(
        self,
        service: OpenAIService,
        gateway: GatewayClient | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.service = service
        self.gateway = gateway
        self.cache = cache if cache is not None else ResponseCache()

    # ---- the response cache --------------------------------------------------------------------
    def _cache_key(self, request: CompletionRequest | ChatCompletionRequest) -> str | None:
        """The request's cache key (None: it does not use the cache); sets ``CACHE_STATUS``."""
        spec = self.service.catalog.get(request.model)
        key = self.cache.key(request, spec, current_key_id()) if spec is not None else None
        enabled = spec is not None and spec.response_cache.enabled
        CACHE_STATUS.set(None if not enabled else "bypass" if key is None else "miss")
        return key

    async def _cached(
        self,
        route: str,
        prefix: str,
        request: CompletionRequest | ChatCompletionRequest,
        call: Callable[[], Awaitable[R]],
    ) -> R:
        """A unary answer from the cache, or ``call``'s (kept when the request may be cached)."""
        key = self._cache_key(request)
        if key is None:
            return await call()
        spec = self.service.catalog.get(request.model)
        assert spec is not None  # NOTE: a key is made only for a catalog model
        hit = self.cache.get(spec, key)
        if hit is not None:
            CACHE_STATUS.set("hit")
            response = fresh(hit[0], *fresh_ids(prefix))
            self.service.record_cached(route, spec.id, getattr(response, "usage", None), stream=False)
            return response  # type: ignore[return-value]
        response = await call()
        self.cache.put(spec, key, [response])
        return response

    async def _cached_stream(
        self,
        route: str,
        prefix: str,
        request: CompletionRequest | ChatCompletionRequest,
        opening: Callable[[], Awaitable[AsyncIterator[R]]],
    ) -> AsyncIterator[R]:
        """A stream from the cache (the recorded chunks again), or ``opening``'s, recorded."""
        key = self._cache_key(request)
        if key is None:
            return await opening()
        spec = self.service.catalog.get(request.model)
        assert spec is not None  # NOTE: a key is made only for a catalog model
        hit = self.cache.get(spec, key)
        if hit is not None:
            CACHE_STATUS.set("hit")
            usage = next((u for u in (getattr(p, "usage", None) for p in reversed(hit)) if u), None)
            self.service.record_cached(route, spec.id, usage, stream=True)
            return replay(hit, prefix)  # type: ignore[arg-type]
        return recording(await opening(), lambda parts: self.cache.put(spec, key, list(parts)))

    async def authorize(self, caller: Caller, model: object) -> str | None:
        """The caller's key id (None: auth is off); raises the gateway's refusal, and a 404 for a
        fine-tuned model another key owns (as if it did not exist)."""
        if self.gateway is None:
            return None
        named = model if isinstance(model, str) else None
        key_id, admin = await self.gateway.admit(caller.authorization, named)
        spec = self.service.catalog.get(named) if named is not None else None
        if spec is not None and not self._visible(spec.owner, key_id, admin):
            raise model_not_found(named or "", self._names(key_id, admin))
        return key_id

    @staticmethod
    def _visible(owner: str | None, key_id: str | None, admin: bool) -> bool:
        """A model is everyone's, unless a key owns it (a fine-tuned model): then its owner's."""
        return owner is None or admin or owner == key_id

    def _names(self, key_id: str | None, admin: bool) -> list[str]:
        return [m.id for m in self.service.catalog.models if self._visible(m.owner, key_id, admin)]

    # ---- the ledger ----------------------------------------------------------------------------
    async def settle(self, request_id: str | None = None) -> None:
        """Wait until the current request's (or ``request_id``'s) ledger row is committed."""
        if self.gateway is not None:
            await self.gateway.settle(request_id or current_request_id())

    def settler(self) -> Callable[[], Awaitable[None]]:
        """The current request's ``settle``, for a stream that ends in another task."""
        request_id = current_request_id()
        return lambda: self.settle(request_id)

    # ---- HTTP ------------------------------------------------------------------------------------
    async def read(self, route: str, model: type[M], caller: Caller, body: AsyncIterable[bytes]) -> M:
        """The request, validated; the key is checked first. A refusal is counted in the metrics."""
        return self._parse(route, model, await self._read_json(route, caller, body))

    async def _read_json(self, route: str, caller: Caller, body: AsyncIterable[bytes]) -> Any:
        """The body as JSON once the caller's key is checked; a refusal is counted in the metrics."""
        # NOTE: Serve's proxy takes X-Request-Id from the client (or makes one) and echoes it in the
        # response; the request log and metrics carry the same id.
        request_id = caller.request_id or uuid.uuid4().hex
        set_request_id(request_id)
        try:
            try:
                data, unreadable = await read_json(body), None
            except OpenAIError as exc:
                data, unreadable = None, exc
            # NOTE: the key is checked before the body: a caller without a valid key learns nothing.
            model_id = data.get("model") if isinstance(data, dict) else None
            set_request_id(request_id, await self.authorize(caller, model_id))
            if unreadable is not None:
                raise unreadable
        except Exception as exc:
            refused = known_error(exc)
            if refused is not None:
                self.service.record_refused(route, None, refused)
            raise
        return data

    def _parse(self, route: str, model: type[M], data: Any) -> M:
        try:
            return parse(model, data)
        except OpenAIError as exc:
            self.service.record_refused(route, data.get("model") if isinstance(data, dict) else None, exc)
            raise

    async def list_models(self, caller: Caller) -> ModelList:
        visible = set(await self._visible_models(caller))
        models = await self.service.list_models()
        return models.model_copy(update={"data": [c for c in models.data if c.id in visible]})

    async def _visible_models(self, caller: Caller) -> list[str]:
        if self.gateway is None:
            return [m.id for m in self.service.catalog.models]
        key_id, admin = await self.gateway.admit(caller.authorization, None)
        return self._names(key_id, admin)

    async def get_model(self, caller: Caller, model_id: str) -> ModelCard:
        visible = await self._visible_models(caller)
        for card in (await self.service.list_models()).data:
            if card.id == model_id and card.id in visible:
                return card
        raise model_not_found(model_id, visible)

    async def create_completion(
        self, caller: Caller, body: AsyncIterable[bytes]
    ) -> CompletionResponse | AsyncIterator[CompletionResponse]:
        request = await self.read(ROUTE_COMPLETIONS, CompletionRequest, caller, body)
        if request.stream:
            return await self._cached_stream(
                ROUTE_COMPLETIONS, "cmpl", request, lambda: self.service.completion_stream(request)
            )
        return await self._cached(
            ROUTE_COMPLETIONS, "cmpl", request, lambda: self.service.completion(request)
        )

    async def create_chat_completion(
        self, caller: Caller, body: AsyncIterable[bytes]
    ) -> ChatCompletionResponse | AsyncIterator[ChatCompletionChunk]:
        request = await self.read(ROUTE_CHAT, ChatCompletionRequest, caller, body)
        if request.stream:
            return await self._cached_stream(
                ROUTE_CHAT, "chatcmpl", request, lambda: self.service.chat_stream(request)
            )
        return await self._cached(ROUTE_CHAT, "chatcmpl", request, lambda: self.service.chat(request))

    async def create_embedding(self, caller: Caller, body: AsyncIterable[bytes]) -> EmbeddingResponse:
        request = await self.read(ROUTE_EMBEDDINGS, EmbeddingRequest, caller, body)
        return await self.service.embeddings(request)

    async def create_classify(self, caller: Caller, body: AsyncIterable[bytes]) -> ClassificationResponse:
        """vLLM's ``POST /v1/classify``."""
        request = await self.read(ROUTE_CLASSIFY, ClassificationRequest, caller, body)
        return await self.service.classify(request)

    async def create_tokenize(self, caller: Caller, body: AsyncIterable[bytes]) -> TokenizeResponse:
        """vLLM's ``POST /tokenize``: a body with ``messages`` is tokenized as a chat, else ``prompt``."""
        data = await self._read_json(ROUTE_TOKENIZE, caller, body)
        request: TokenizeRequest = self._parse(ROUTE_TOKENIZE, tokenize_request_type(data), data)
        return await self.service.tokenize(request)

    async def create_detokenize(self, caller: Caller, body: AsyncIterable[bytes]) -> DetokenizeResponse:
        request = await self.read(ROUTE_DETOKENIZE, DetokenizeRequest, caller, body)
        return await self.service.detokenize(request)

    # ---- handles (llmaas.client) -------------------------------------------------------------
    # NOTE: handle callers run inside the Ray cluster, so they need no API key; the ledger records
    # their requests with no key id. Their requests arrive validated (pydantic objects), and a
    # unary call's ``stream`` (a streaming call's) is forced off (on).
    async def models(self) -> ModelList | ErrorResult:
        return await self._unary(self.service.list_models)

    async def completion(self, request: CompletionRequest) -> CompletionResponse | ErrorResult:
        unary = _streaming(request, False)
        return await self._unary(
            lambda: self._cached(ROUTE_COMPLETIONS, "cmpl", unary, lambda: self.service.completion(unary))
        )

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse | ErrorResult:
        unary = _streaming(request, False)
        return await self._unary(
            lambda: self._cached(ROUTE_CHAT, "chatcmpl", unary, lambda: self.service.chat(unary))
        )

    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse | ErrorResult:
        return await self._unary(lambda: self.service.embeddings(request))

    async def classify(self, request: ClassificationRequest) -> ClassificationResponse | ErrorResult:
        return await self._unary(lambda: self.service.classify(request))

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse | ErrorResult:
        return await self._unary(lambda: self.service.tokenize(request))

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse | ErrorResult:
        return await self._unary(lambda: self.service.detokenize(request))

    def completion_stream(
        self, request: CompletionRequest
    ) -> AsyncIterator[CompletionResponse | ErrorResult]:
        streamed = _streaming(request, True)
        return self._stream(
            lambda: self._cached_stream(
                ROUTE_COMPLETIONS, "cmpl", streamed, lambda: self.service.completion_stream(streamed)
            )
        )

    def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk | ErrorResult]:
        streamed = _streaming(request, True)
        return self._stream(
            lambda: self._cached_stream(
                ROUTE_CHAT, "chatcmpl", streamed, lambda: self.service.chat_stream(streamed)
            )
        )

    async def _unary(self, call: Callable[[], Awaitable[R]]) -> R | ErrorResult:
        set_request_id(uuid.uuid4().hex)
        try:
            return await call()
        except Exception as exc:
            return failure(exc, "handle call failed").result()
        finally:
            await self.settle()

    async def _stream(
        self, opening: Callable[[], Awaitable[AsyncIterator[R]]]
    ) -> AsyncIterator[R | ErrorResult]:
        """The chunks; an error (before the first chunk or after) is the last item."""
        set_request_id(uuid.uuid4().hex)
        settle = self.settler()
        try:
            async for chunk in await opening():
                yield chunk
        except Exception as exc:
            yield failure(exc, "handle stream failed").result()
        await settle()


def _streaming(request: M, stream: bool) -> M:
    """``request`` with ``stream`` set (and ``stream_options`` dropped with it off)."""
    if getattr(request, "stream", stream) == stream:
        return request
    update: dict[str, object] = {"stream": stream} if stream else {"stream": False, "stream_options": None}
    return request.model_copy(update=update)
