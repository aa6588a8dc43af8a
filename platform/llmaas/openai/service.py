"""The OpenAI-compatible service: validation, tokenization, fan-out to models, responses.

Plain async code over two small protocols (a tokenizer and one client per model), so it runs
the same behind the Serve router, behind the handle client, and in unit tests with fakes.
Every model request is recorded once, when it ends, into a ``RequestRecorder`` (Ray's metrics
in a router replica, nothing in unit tests).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from llmaas.config.catalog import Catalog, ModelSpec, Task
from llmaas.engine.types import FinishReason, GenerationChunk, GenerationRequest, ModelInfo
from llmaas.metrics import UNKNOWN_MODEL, RequestRecorder, RequestTrace, default_request_recorder
from llmaas.openai.errors import OpenAIError, bad_request, internal, known_error, model_not_found
from llmaas.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    ModelCard,
    ModelList,
    Usage,
    new_id,
    now,
)

T = TypeVar("T")

#: The ``route`` tag of request metrics: the OpenAI route, for HTTP and handle callers alike.
ROUTE_COMPLETIONS = "/v1/completions"
ROUTE_CHAT = "/v1/chat/completions"
ROUTE_EMBEDDINGS = "/v1/embeddings"


class TokenizerClient(Protocol):
    async def encode(self, model_id: str, texts: list[str], add_special_tokens: bool) -> list[list[int]]: ...

    async def chat_template(
        self, model_id: str, messages: list[dict[str, str]], add_generation_prompt: bool
    ) -> list[int]: ...


class ModelClient(Protocol):
    async def info(self) -> ModelInfo: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]: ...


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass(frozen=True)
class _Prepared:
    spec: ModelSpec
    prompt_ids: list[int]
    requests: list[GenerationRequest]


def _finish_reason(chunk: GenerationChunk) -> str | None:
    if chunk.finish_reason is None:
        return None
    return "length" if chunk.finish_reason is FinishReason.LENGTH else "stop"


class OpenAIService:
    """One instance per router replica. ``metrics`` defaults to Ray's where Ray is initialized."""

    def __init__(
        self,
        catalog: Catalog,
        tokenizer: TokenizerClient,
        models: dict[str, ModelClient],
        *,
        metrics: RequestRecorder | None = None,
    ) -> None:
        self.catalog = catalog
        self.tokenizer = tokenizer
        self.models = models
        self.metrics = metrics if metrics is not None else default_request_recorder()
        self._info: dict[str, ModelInfo] = {}

    def _trace(self, model: object, route: str, stream: bool = False) -> RequestTrace:
        """A request's metrics; a model the catalog does not hold is tagged ``UNKNOWN_MODEL``."""
        label = model if isinstance(model, str) and self.catalog.get(model) is not None else UNKNOWN_MODEL
        return RequestTrace(self.metrics, label, route, stream)

    def record_refused(self, route: str, model: object, exc: BaseException) -> None:
        """Count a request refused before it reached this service (a body that does not parse),
        so that request metrics see it too; errors the service raises are counted already."""
        self._trace(model, route).finish(exc)

    # ---- lookups ---------------------------------------------------------------------------
    def _spec(self, model: str, task: Task, param_hint: str) -> ModelSpec:
        spec = self.catalog.get(model)
        if spec is None or model not in self.models:
            raise model_not_found(model, [m.id for m in self.catalog.models])
        if spec.task is not task:
            fix = {
                Task.GENERATE: "use /v1/completions or /v1/chat/completions with it",
                Task.EMBED: "use /v1/embeddings with it",
            }.get(spec.task, "")
            wanted = [m.id for m in self.catalog.models if m.task is task]
            raise bad_request(
                f"Model '{model}' has task '{spec.task.value}' and cannot serve {param_hint}: {fix}. "
                f"Models for this route: {', '.join(wanted) or 'none'}.",
                param="model",
                code="wrong_task",
            )
        return spec

    async def model_info(self, model_id: str) -> ModelInfo:
        info = self._info.get(model_id)
        if info is None:
            info = await self._call(self.models[model_id].info())
            self._info[model_id] = info
        return info

    async def _try_info(self, model_id: str) -> None:
        with contextlib.suppress(Exception):  # a model still loading is listed without its limits
            self._info[model_id] = await asyncio.wait_for(self.models[model_id].info(), timeout=2)

    def _wakes(self, model_id: str) -> bool:
        """Whether a call to the model may start a replica: one scaled to zero is not probed."""
        spec = self.catalog.get(model_id)
        return spec is not None and spec.scales_to_zero

    async def list_models(self) -> ModelList:
        await asyncio.gather(
            *(self._try_info(m) for m in self.models if m not in self._info and not self._wakes(m))
        )
        cards = []
        for spec in self.catalog.models:
            info = self._info.get(spec.id)
            cards.append(
                ModelCard(
                    id=spec.id,
                    task=spec.task.value,
                    max_context_length=info.max_context_length if info else spec.max_context_length,
                    description=spec.description,
                )
            )
        return ModelList(data=cards)

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Await a model or tokenizer call, turning engine and domain errors into OpenAI errors."""
        try:
            return await awaitable
        except Exception as exc:
            mapped = known_error(exc)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc

    # ---- generation ----------------------------------------------------------------------------
    async def _prepare(
        self,
        request: CompletionRequest | ChatCompletionRequest,
        prompt_ids: list[int],
        spec: ModelSpec,
        param: str,
    ) -> _Prepared:
        room = spec.max_ongoing_requests + spec.batching.max_queued_requests
        if request.n > room:
            raise bad_request(
                f"n={request.n} asks for more choices than model '{spec.id}' can ever hold at once "
                f"({room}: {spec.max_ongoing_requests} running and {spec.batching.max_queued_requests} "
                "queued); lower n.",
                param="n",
            )
        info = await self.model_info(spec.id)
        limit = info.max_context_length
        if any(t < 0 or t >= info.vocab_size for t in prompt_ids):
            raise bad_request(
                f"prompt holds token ids outside the vocabulary (0..{info.vocab_size - 1})", param=param
            )
        if len(prompt_ids) >= limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, your {param} is "
                f"{len(prompt_ids)} tokens, which leaves no room for a completion. Shorten the {param}.",
                param=param,
                code="context_length_exceeded",
            )
        asked = request.requested_max_tokens()
        if asked is not None and len(prompt_ids) + asked > limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(prompt_ids) + asked} tokens ({len(prompt_ids)} in the {param}, "
                f"{asked} in the completion). "
                "Reduce the length of the prompt or max_tokens.",
                param="max_completion_tokens"
                if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None
                else "max_tokens",
                code="context_length_exceeded",
            )
        max_tokens = asked if asked is not None else min(spec.sampling.max_tokens, limit - len(prompt_ids))
        base = uuid.uuid4().hex
        requests = [
            GenerationRequest(
                request_id=f"{base}-{i}",
                prompt_token_ids=prompt_ids,
                sampling=request.to_sampling_params(spec.sampling, max_tokens, choice=i),
                stream=request.stream,
            )
            for i in range(request.n)
        ]
        return _Prepared(spec=spec, prompt_ids=prompt_ids, requests=requests)

    async def _completion_prompt(self, request: CompletionRequest) -> tuple[ModelSpec, list[int]]:
        spec = self._spec(request.model, Task.GENERATE, "completions")
        prompt = request.single_prompt()
        if isinstance(prompt, str):
            if not prompt:
                raise bad_request("prompt is empty: give some text", param="prompt")
            ids = (await self._call(self.tokenizer.encode(spec.id, [prompt], True)))[0]
        else:
            ids = prompt
        if not ids:
            raise bad_request("prompt encodes to no tokens", param="prompt")
        return spec, ids

    async def _chat_prompt(self, request: ChatCompletionRequest) -> tuple[ModelSpec, list[int]]:
        spec = self._spec(request.model, Task.GENERATE, "chat completions")
        ids = await self._call(
            self.tokenizer.chat_template(spec.id, request.template_messages(), request.add_generation_prompt)
        )
        if not ids:
            raise bad_request("messages render to an empty prompt", param="messages")
        return spec, ids

    async def _merged(
        self, prepared: _Prepared, trace: RequestTrace
    ) -> AsyncGenerator[tuple[int, GenerationChunk], None]:
        """All choices' chunks as they come; closing this cancels every choice."""
        client = self.models[prepared.spec.id]
        trace.prompt_tokens = len(prepared.prompt_ids)
        generated = trace.tokens = [0] * len(prepared.requests)
        queue: asyncio.Queue[tuple[int, GenerationChunk | BaseException]] = asyncio.Queue()

        async def pump(index: int, req: GenerationRequest) -> None:
            try:
                async for chunk in client.generate(req):
                    await queue.put((index, chunk))
            except BaseException as exc:  # delivered to the consumer, which raises it
                await queue.put((index, exc))

        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(prepared.requests)]
        open_choices = len(tasks)
        try:
            while open_choices:
                index, item = await queue.get()
                if isinstance(item, BaseException):
                    await self._call(_raise(item))
                    return
                if item.error:
                    raise internal(f"generation failed: {item.error}")
                generated[index] = item.num_generated_tokens
                if trace.first_token_at is None and (item.text or item.token_ids):
                    trace.first_token()
                if item.finish_reason is not None:
                    open_choices -= 1
                yield index, item
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def _collect(self, prepared: _Prepared, trace: RequestTrace) -> list[_Choice]:
        choices = [_Choice() for _ in prepared.requests]
        async for index, chunk in self._merged(prepared, trace):
            choice = choices[index]
            choice.text.append(chunk.text)
            choice.completion_tokens = chunk.num_generated_tokens
            if chunk.finish_reason is not None:
                choice.finish_reason = _finish_reason(chunk)
        return choices

    def _usage(self, prepared: _Prepared, completion_tokens: int) -> Usage:
        prompt = len(prepared.prompt_ids)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion_tokens, total_tokens=prompt + completion_tokens
        )

    async def _with_timeout(self, awaitable: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(awaitable, timeout=self.catalog.request_timeout_s)
        except TimeoutError as exc:
            raise OpenAIError(
                504,
                f"the request took longer than {self.catalog.request_timeout_s:.0f}s and was cancelled",
                type="server_error",
                code="timeout",
            ) from exc

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        with self._trace(request.model, ROUTE_COMPLETIONS) as trace:
            spec, ids = await self._completion_prompt(request)
            prepared = await self._prepare(request, ids, spec, "prompt")
            choices = await self._with_timeout(self._collect(prepared, trace))
        return CompletionResponse(
            id=new_id("cmpl"),
            created=now(),
            model=spec.id,
            choices=[
                CompletionChoice(index=i, text="".join(c.text), finish_reason=c.finish_reason)
                for i, c in enumerate(choices)
            ],
            usage=self._usage(prepared, sum(c.completion_tokens for c in choices)),
        )

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        with self._trace(request.model, ROUTE_CHAT) as trace:
            spec, ids = await self._chat_prompt(request)
            prepared = await self._prepare(request, ids, spec, "messages")
            choices = await self._with_timeout(self._collect(prepared, trace))
        return ChatCompletionResponse(
            id=new_id("chatcmpl"),
            created=now(),
            model=spec.id,
            choices=[
                ChatChoice(
                    index=i, message=AssistantMessage(content="".join(c.text)), finish_reason=c.finish_reason
                )
                for i, c in enumerate(choices)
            ],
            usage=self._usage(prepared, sum(c.completion_tokens for c in choices)),
        )

    async def completion_stream(self, request: CompletionRequest) -> AsyncIterator[CompletionResponse]:
        """Validate first (errors raise before any byte is sent), then stream chunks."""
        prepared, trace, merged = await self._start_stream(
            request, ROUTE_COMPLETIONS, self._completion_prompt(request), "prompt"
        )
        return self._completion_chunks(request, prepared, trace, merged)

    async def _start_stream(
        self,
        request: CompletionRequest | ChatCompletionRequest,
        route: str,
        prompt: Awaitable[tuple[ModelSpec, list[int]]],
        param: str,
    ) -> tuple[_Prepared, RequestTrace, AsyncIterator[tuple[int, GenerationChunk]]]:
        """A stream's prompt and requests, its trace, and its chunks with the first one already in.

        NOTE: waiting for the model's first chunk here means a model that refuses the request
        (full, or not running) is a 503 with Retry-After before any byte is sent, not an error
        event inside a 200. It costs no latency: that chunk is the first one a caller sees anyway.
        A refusal here ends the trace.
        """
        trace = self._trace(request.model, route, stream=True)
        try:
            spec, ids = await prompt
            prepared = await self._prepare(request, ids, spec, param)
            merged = self._merged(prepared, trace)
            try:
                first = await merged.__anext__()
            except StopAsyncIteration:
                first = None
            except BaseException:
                await merged.aclose()
                raise
            return prepared, trace, _prepend(first, merged)
        except BaseException as exc:
            trace.finish(exc)
            raise

    async def _completion_chunks(
        self,
        request: CompletionRequest,
        prepared: _Prepared,
        trace: RequestTrace,
        merged: AsyncIterator[tuple[int, GenerationChunk]],
    ) -> AsyncIterator[CompletionResponse]:
        rid, created, total = new_id("cmpl"), now(), 0
        with trace:
            async for index, chunk in merged:
                if not chunk.text and chunk.finish_reason is None:
                    continue
                if chunk.finish_reason is not None:
                    total += chunk.num_generated_tokens
                yield CompletionResponse(
                    id=rid,
                    created=created,
                    model=prepared.spec.id,
                    choices=[
                        CompletionChoice(index=index, text=chunk.text, finish_reason=_finish_reason(chunk))
                    ],
                )
            if request.stream_options and request.stream_options.include_usage:
                yield CompletionResponse(
                    id=rid,
                    created=created,
                    model=prepared.spec.id,
                    choices=[],
                    usage=self._usage(prepared, total),
                )

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        prepared, trace, merged = await self._start_stream(
            request, ROUTE_CHAT, self._chat_prompt(request), "messages"
        )
        return self._chat_chunks(request, prepared, trace, merged)

    async def _chat_chunks(
        self,
        request: ChatCompletionRequest,
        prepared: _Prepared,
        trace: RequestTrace,
        merged: AsyncIterator[tuple[int, GenerationChunk]],
    ) -> AsyncIterator[ChatCompletionChunk]:
        rid, created, total = new_id("chatcmpl"), now(), 0
        model = prepared.spec.id
        with trace:
            for index in range(len(prepared.requests)):
                yield ChatCompletionChunk(
                    id=rid,
                    created=created,
                    model=model,
                    choices=[ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))],
                )
            async for index, chunk in merged:
                if not chunk.text and chunk.finish_reason is None:
                    continue
                if chunk.finish_reason is not None:
                    total += chunk.num_generated_tokens
                delta = DeltaMessage(content=chunk.text) if chunk.text else DeltaMessage()
                yield ChatCompletionChunk(
                    id=rid,
                    created=created,
                    model=model,
                    choices=[ChatChunkChoice(index=index, delta=delta, finish_reason=_finish_reason(chunk))],
                )
            if request.stream_options and request.stream_options.include_usage:
                yield ChatCompletionChunk(
                    id=rid, created=created, model=model, choices=[], usage=self._usage(prepared, total)
                )

    # ---- embeddings ------------------------------------------------------------------------------
    async def embeddings(self, request: EmbeddingRequest) -> EmbeddingResponse:
        with self._trace(request.model, ROUTE_EMBEDDINGS) as trace:
            return await self._embeddings(request, trace)

    async def _embeddings(self, request: EmbeddingRequest, trace: RequestTrace) -> EmbeddingResponse:
        spec = self._spec(request.model, Task.EMBED, "embeddings")
        info = await self.model_info(spec.id)
        items = request.items()
        texts = [(i, t) for i, t in enumerate(items) if isinstance(t, str)]
        encoded: list[list[int]] = [t if isinstance(t, list) else [] for t in items]
        if texts:
            ids = await self._call(self.tokenizer.encode(spec.id, [t for _, t in texts], True))
            for (i, _), tokens in zip(texts, ids, strict=True):
                encoded[i] = tokens
        for i, tokens in enumerate(encoded):
            if len(tokens) > info.max_context_length:
                where = "input" if len(items) == 1 else f"input[{i}]"
                raise bad_request(
                    f"This model's maximum context length is {info.max_context_length} tokens. However, "
                    f"{where} is {len(tokens)} tokens. Shorten it or split it.",
                    param=where,
                    code="context_length_exceeded",
                )
            if any(t < 0 or t >= info.vocab_size for t in tokens):
                raise bad_request(f"input[{i}] holds token ids outside the vocabulary", param="input")
        if request.dimensions is not None and request.dimensions != info.embedding_dim:
            raise bad_request(
                f"model '{spec.id}' makes {info.embedding_dim}-dimensional embeddings; "
                f"dimensions={request.dimensions} is not supported (leave it unset)",
                param="dimensions",
            )
        vectors = await self._with_timeout(self._call(self.models[spec.id].embed(encoded)))
        used = trace.prompt_tokens = sum(len(t) for t in encoded)
        data = [
            EmbeddingData(index=i, embedding=_b64(v) if request.encoding_format == "base64" else v)
            for i, v in enumerate(vectors)
        ]
        return EmbeddingResponse(
            data=data, model=spec.id, usage=EmbeddingUsage(prompt_tokens=used, total_tokens=used)
        )

    async def ready(self) -> dict[str, str]:
        """Per model: 'ready' or why not. Cached model info is refreshed so a dead model shows.

        A model that may scale to zero is 'ready' unprobed: a probe would start a replica.
        """
        out: dict[str, str] = {}

        async def probe(model_id: str) -> None:
            if self._wakes(model_id):
                out[model_id] = "ready"
                return
            try:
                self._info[model_id] = await asyncio.wait_for(self.models[model_id].info(), timeout=5)
                out[model_id] = "ready"
            except Exception as exc:
                out[model_id] = f"not ready: {type(exc).__name__}: {exc}"[:300]

        await asyncio.gather(*(probe(m) for m in self.models))
        return out


async def _prepend(
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


async def _raise(exc: BaseException) -> None:
    raise exc


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
