"""The OpenAI service's shared core: lookups, validation against the model, fan-out to the engine.

``ServiceCore`` holds what every route needs (the catalog, the tokenizer and model clients,
metrics, model limits); each route is a subclass in its own module (``completions``, ``chat``,
``embeddings``, ``tokens``), as vLLM's serving classes are, and ``llmaas.openai.service`` puts
them together. Plain async code over two small protocols (a tokenizer and one client per
model), so it runs the same behind the Serve router, behind the handle client, and in unit
tests with fakes. Every model request is recorded once, when it ends, into a
``RequestRecorder`` (Ray's metrics in a router replica, nothing in unit tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Protocol, TypeVar

from pydantic import ValidationError

from llmaas.config.catalog import Catalog, ModelSpec, Task
from llmaas.engine.types import (
    GenerationChunk,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
)
from llmaas.metrics import UNKNOWN_MODEL, RequestRecorder, RequestTrace, default_request_recorder
from llmaas.openai import tools as tool_calling
from llmaas.openai.choices import (
    Choice,
    Prepared,
    Prompts,
    absorb,
    prepend,
)
from llmaas.openai.errors import OpenAIError, bad_request, internal, known_error, model_not_found
from llmaas.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)
from llmaas.tokenization import TokenizerClient

T = TypeVar("T")

#: The ``route`` tag of request metrics: the OpenAI route, for HTTP and handle callers alike.
ROUTE_COMPLETIONS = "/v1/completions"
ROUTE_CHAT = "/v1/chat/completions"
ROUTE_EMBEDDINGS = "/v1/embeddings"
ROUTE_CLASSIFY = "/v1/classify"
ROUTE_TOKENIZE = "/tokenize"
ROUTE_DETOKENIZE = "/detokenize"


class ModelClient(Protocol):
    async def info(self) -> ModelInfo: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]: ...

    async def classify(self, inputs: list[list[int]]) -> list[list[float]]:
        """Class probabilities per input, in the order of the model's ``ModelInfo.labels``."""
        ...


class ServiceCore:
    """What every route shares. ``metrics`` defaults to Ray's where Ray is initialized."""

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
        # NOTE: token strings by model and id, as logprobs name tokens; bounded by the vocabularies
        self._token_strs: dict[str, dict[int, str]] = {}
        self._tool_templates: dict[str, bool] = {}  # model id: its chat template renders tools
        self._response_templates: dict[str, bool] = {}  # model id: its tokenizer parses replies

    def _trace(self, model: object, route: str, stream: bool = False) -> RequestTrace:
        """A request's metrics; a model the catalog does not hold is tagged ``UNKNOWN_MODEL``."""
        label = model if isinstance(model, str) and self.catalog.get(model) is not None else UNKNOWN_MODEL
        return RequestTrace(self.metrics, label, route, stream)

    def record_cached(self, route: str, model: str, usage: Usage | None, stream: bool) -> None:
        """Count a request the router's response cache answered (the ledger marks it cached)."""
        trace = self._trace(model, route, stream)
        trace.cached = True
        if usage is not None:
            trace.prompt_tokens = usage.prompt_tokens
            trace.tokens = [usage.completion_tokens]
        trace.finish()

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
                Task.CLASSIFY: "use /v1/classify with it",
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

    # ---- inputs of /v1/embeddings and /v1/classify ----------------------------------------------
    async def _input_tokens(
        self,
        spec: ModelSpec,
        info: ModelInfo,
        items: list[str | list[int]],
        *,
        add_special_tokens: bool = True,
        refuse_empty: bool = False,
        out_of_vocab: Callable[[int, str], OpenAIError] | None = None,
    ) -> list[list[int]]:
        """Each input's token ids (its texts tokenized in one call), checked against the model's
        context length and vocabulary; an error names the input (``input``, or ``input[i]`` among
        several). ``refuse_empty`` refuses an input with no tokens; ``out_of_vocab(i, where)`` is the
        error for ids outside the vocabulary (by default one naming the vocabulary's range)."""
        texts = [(i, t) for i, t in enumerate(items) if isinstance(t, str)]
        encoded: list[list[int]] = [t if isinstance(t, list) else [] for t in items]
        if texts:
            ids = await self._call(self.tokenizer.encode(spec.id, [t for _, t in texts], add_special_tokens))
            for (i, _), tokens in zip(texts, ids, strict=True):
                encoded[i] = tokens
        for i, tokens in enumerate(encoded):
            where = "input" if len(items) == 1 else f"input[{i}]"
            if refuse_empty and not tokens:
                raise bad_request(f"{where} has no tokens: give some text", param=where)
            if len(tokens) > info.max_context_length:
                raise bad_request(
                    f"This model's maximum context length is {info.max_context_length} tokens. However, "
                    f"{where} is {len(tokens)} tokens. Shorten it or split it.",
                    param=where,
                    code="context_length_exceeded",
                )
            if any(t < 0 or t >= info.vocab_size for t in tokens):
                if out_of_vocab is not None:
                    raise out_of_vocab(i, where)
                raise bad_request(
                    f"{where} holds token ids outside the vocabulary (0..{info.vocab_size - 1})", param=where
                )
        return encoded

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
                    owned_by=spec.owner or "llmaas",
                    parent=spec.parent,
                    root=spec.parent or spec.id,
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

    async def _strings(self, model_id: str, ids: Iterable[int]) -> Mapping[int, str]:
        """The token strings of ``ids`` (and of every id asked before), from the model's tokenizer."""
        known = self._token_strs.setdefault(model_id, {})
        missing = sorted({i for i in ids if i not in known})
        if missing:
            strings = await self._call(self.tokenizer.token_strings(model_id, missing))
            known.update(zip(missing, strings, strict=True))
        return known

    # ---- generation ----------------------------------------------------------------------------
    def _sampling(
        self,
        request: CompletionRequest | ChatCompletionRequest,
        spec: ModelSpec,
        max_tokens: int,
        choice: int,
    ) -> SamplingParams:
        """The request's sampling; a value the engine refuses is a 400 naming the field, not a 500.

        A required or named tool choice constrains the reply to its calls' schema.
        """
        calls = tool_calling.call_constraint(request) if isinstance(request, ChatCompletionRequest) else None
        try:
            return request.to_sampling_params(spec.sampling, max_tokens, choice=choice, structured=calls)
        except ValidationError as exc:
            raise _refused(exc) from exc

    def _check_capacity(
        self, request: CompletionRequest | ChatCompletionRequest, spec: ModelSpec, prompts: int
    ) -> None:
        room = spec.max_ongoing_requests + spec.batching.max_queued_requests
        if request.n * prompts <= room:
            return
        held = f"({room}: {spec.max_ongoing_requests} running and {spec.batching.max_queued_requests} queued)"
        if prompts == 1 or request.n > room:
            raise bad_request(
                f"n={request.n} asks for more choices than model '{spec.id}' can ever hold at once {held}; "
                "lower n.",
                param="n",
            )
        raise bad_request(
            f"{prompts} prompts x n={request.n} ask for {prompts * request.n} sequences, more than model "
            f"'{spec.id}' can ever hold at once {held}; send fewer prompts per request or lower n.",
            param="prompt",
        )

    async def _prepare(
        self, request: CompletionRequest | ChatCompletionRequest, prompts: Prompts, param: str
    ) -> Prepared:
        spec = prompts.spec
        self._check_capacity(request, spec, len(prompts.ids))
        info = await self.model_info(spec.id)
        limit = info.max_context_length
        for token in request.stop_token_ids or ():
            if token >= info.vocab_size:
                raise bad_request(
                    f"stop_token_ids names token {token}, outside model '{spec.id}''s vocabulary "
                    f"(0..{info.vocab_size - 1})",
                    param="stop_token_ids",
                )
        for key in request.logit_bias or {}:
            if int(key) >= info.vocab_size:
                raise bad_request(
                    f"logit_bias names token {key}, outside model '{spec.id}''s vocabulary "
                    f"(0..{info.vocab_size - 1})",
                    param="logit_bias",
                )
        asked = request.requested_max_tokens()
        max_param = request.max_tokens_param() if isinstance(request, ChatCompletionRequest) else "max_tokens"
        base = uuid.uuid4().hex
        requests: list[GenerationRequest] = []
        # NOTE: max_tokens 0 (echo) needs no room after the prompt, unless the engine makes a token
        drop = asked == 0 and self._zero_max_tokens(request, spec, 0)[1]
        room = 0 if asked == 0 and not drop else 1
        for p, ids in enumerate(prompts.ids):
            where = param if len(prompts.ids) == 1 else f"{param}[{p}]"
            if any(t < 0 or t >= info.vocab_size for t in ids):
                raise bad_request(
                    f"{where} holds token ids outside the vocabulary (0..{info.vocab_size - 1})", param=where
                )
            if len(ids) + room > limit:
                raise bad_request(
                    f"This model's maximum context length is {limit} tokens. However, your {where} is "
                    f"{len(ids)} tokens, which {'leaves no room for a completion' if room else 'is longer'}. "
                    f"Shorten the {where}.",
                    param=where,
                    code="context_length_exceeded",
                )
            if asked is not None and len(ids) + asked > limit:
                raise bad_request(
                    f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{len(ids) + asked} tokens ({len(ids)} in the {where}, {asked} in the completion). "
                    "Reduce the length of the prompt or max_tokens.",
                    param=max_param,
                    code="context_length_exceeded",
                )
            max_tokens = asked if asked is not None else min(spec.sampling.max_tokens, limit - len(ids))
            if request.min_tokens and request.min_tokens > max_tokens:  # NOTE: max_tokens is the default
                raise bad_request(
                    f"min_tokens ({request.min_tokens}) is above the completion's maximum ({max_tokens} "
                    f"tokens, the default for this model and {where}): lower min_tokens or set {max_param}",
                    param="min_tokens",
                )
            for c in range(request.n):
                if max_tokens == 0:
                    sampling, _ = self._zero_max_tokens(request, spec, c)
                else:
                    sampling = self._sampling(request, spec, max_tokens, c)
                requests.append(
                    GenerationRequest(
                        request_id=f"{base}-{len(requests)}",
                        prompt_token_ids=ids,
                        sampling=sampling,
                        stream=request.stream,
                    )
                )
        return Prepared(
            spec=spec,
            prompts=prompts.ids,
            n=request.n,
            requests=requests,
            logprobs=request.engine_logprobs(),
            prompt_logprobs=request.engine_prompt_logprobs(),
            drop_generated=drop,
            cached=[0] * len(requests),
        )

    def _zero_max_tokens(
        self, request: CompletionRequest | ChatCompletionRequest, spec: ModelSpec, choice: int
    ) -> tuple[SamplingParams, bool]:
        """Sampling for no completion (echo): max_tokens 0 where the engine takes it (it does with
        prompt logprobs), else 1 and a flag that the generated token is to be dropped."""
        try:
            return request.to_sampling_params(spec.sampling, 0, choice=choice), False
        except ValidationError:
            return self._sampling(request, spec, 1, choice), True

    async def _merged(
        self, prepared: Prepared, trace: RequestTrace
    ) -> AsyncGenerator[tuple[int, GenerationChunk], None]:
        """All choices' chunks as they come; closing this cancels every choice."""
        client = self.models[prepared.spec.id]
        trace.prompt_tokens = prepared.prompt_tokens
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
                if not prepared.drop_generated:
                    generated[index] = item.num_generated_tokens
                if item.num_cached_tokens:
                    prepared.cached[index] = max(prepared.cached[index], item.num_cached_tokens)
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

    async def _collect(self, prepared: Prepared, trace: RequestTrace) -> list[Choice]:
        choices = [Choice() for _ in prepared.requests]
        async for index, chunk in self._merged(prepared, trace):
            absorb(prepared, choices[index], chunk)
        return choices

    def _usage(self, prepared: Prepared, completion_tokens: int) -> Usage:
        prompt = prepared.prompt_tokens
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=completion_tokens,
            total_tokens=prompt + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=prepared.cached_tokens),
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

    async def _start_stream(
        self,
        request: CompletionRequest | ChatCompletionRequest,
        route: str,
        opening: Awaitable[Prompts],
        param: str,
    ) -> tuple[Prompts, Prepared, RequestTrace, AsyncIterator[tuple[int, GenerationChunk]]]:
        """A stream's prompts and requests, its trace, and its chunks with the first one already in.

        NOTE: waiting for the model's first chunk here means a model that refuses the request
        (full, or not running) is a 503 with Retry-After before any byte is sent, not an error
        event inside a 200. It costs no latency: that chunk is the first one a caller sees anyway.
        A refusal here ends the trace.
        """
        trace = self._trace(request.model, route, stream=True)
        try:
            prompts = await opening
            prepared = await self._prepare(request, prompts, param)
            merged = self._merged(prepared, trace)
            try:
                first = await merged.__anext__()
            except StopAsyncIteration:
                first = None
            except BaseException:
                await merged.aclose()
                raise
            return prompts, prepared, trace, prepend(first, merged)
        except BaseException as exc:
            trace.finish(exc)
            raise

    # ---- tokenize / detokenize (vLLM's routes) ----------------------------------------------------
    def _any_spec(self, model: str) -> ModelSpec:
        """A served model of any task (every one has a tokenizer)."""
        spec = self.catalog.get(model)
        if spec is None or model not in self.models:
            raise model_not_found(model, [m.id for m in self.catalog.models])
        return spec

    async def _known_info(self, spec: ModelSpec) -> ModelInfo | None:
        """The model's info, without waking a model scaled to zero (None then, unless cached)."""
        info = self._info.get(spec.id)
        if info is None and not self._wakes(spec.id):
            info = await self.model_info(spec.id)
        return info

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


def _refused(exc: ValidationError) -> OpenAIError:
    """The engine's refusal of a sampling value as a 400 naming the field (its name is the request's)."""
    first = exc.errors(include_url=False)[0]
    reason = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if not first.get("loc"):
        return bad_request(f"Invalid request: {reason}")
    name = str(first["loc"][0])
    return bad_request(f"Invalid value for '{name}': {reason}", param=name)


async def _raise(exc: BaseException) -> None:
    raise exc
