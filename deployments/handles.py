"""Adapters from Serve DeploymentHandles to the plain protocols the router's services call.

``HandleTokenizer`` and ``HandleModel`` are the service's TokenizerClient / ModelClient;
``HandleCatalogAdmin`` is the admin API's catalog changer. Serve wraps a replica's exception in
RayTaskError; we unwrap it so that the router sees the original error (a ``TokenizationError``
or ``CatalogEditError`` from ``llmaas.errors``, an engine error), which the API layer maps in one
place, and map Serve's own backpressure and availability errors to the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from llmaas.catalog_edit import CatalogEdit
from llmaas.config.catalog import ModelSpec
from llmaas.deploy import CatalogChange
from llmaas.engine.errors import EngineError, EngineNotReady, EngineOverloaded
from llmaas.engine.types import AdapterRef, GenerationChunk, GenerationRequest, ModelInfo

T = TypeVar("T")


def translate(exc: BaseException) -> BaseException:
    """The error a replica raised (the cause of Serve's RayTaskError), or Serve's own as the engine's."""
    if isinstance(exc, RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            return translate(cause)
    if isinstance(exc, BackPressureError):
        return EngineOverloaded(f"the model is at capacity and its queue is full: {exc}")
    if isinstance(exc, DeploymentUnavailableError):
        return EngineNotReady(f"the model has no running replica: {exc}")
    if isinstance(exc, RayActorError):
        return EngineError(f"the model replica died while serving this request: {exc}")
    return exc


async def _await(call: Callable[[], Awaitable[T]]) -> T:
    """Make the handle call and await it; NOTE: ``.remote()`` itself may raise (backpressure)."""
    try:
        return await call()
    except Exception as exc:
        translated = translate(exc)
        if translated is exc:
            raise
        raise translated from exc


class HandleTokenizer:
    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def encode(self, model_id: str, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        result: list[list[int]] = await _await(
            lambda: self._handle.encode.remote(model_id, texts, add_special_tokens)
        )
        return result

    async def chat_template(
        self,
        model_id: str,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        result: list[int] = await _await(
            lambda: self._handle.chat_template.remote(model_id, messages, add_generation_prompt, tools)
        )
        return result

    async def supports_tools(self, model_id: str) -> bool:
        result: bool = await _await(lambda: self._handle.supports_tools.remote(model_id))
        return result

    async def parses_responses(self, model_id: str) -> bool:
        result: bool = await _await(lambda: self._handle.parses_responses.remote(model_id))
        return result

    async def parse_response(
        self, model_id: str, prompt_ids: list[int], text: str, tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = await _await(
            lambda: self._handle.parse_response.remote(model_id, prompt_ids, text, tools)
        )
        return result

    async def token_strings(self, model_id: str, ids: list[int]) -> list[str]:
        result: list[str] = await _await(lambda: self._handle.token_strings.remote(model_id, ids))
        return result

    async def decode(self, model_id: str, ids: list[int], skip_special_tokens: bool) -> str:
        result: str = await _await(lambda: self._handle.decode.remote(model_id, ids, skip_special_tokens))
        return result


class HandleCatalogAdmin:
    """The catalog-admin deployment (``llmaas.deployments.catalog_admin``) as the admin API calls it."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    async def change(self, edit: CatalogEdit) -> CatalogChange:
        result: CatalogChange = await _await(lambda: self._handle.change.remote(edit))
        return result


def adapter_ref(spec: ModelSpec) -> AdapterRef | None:
    """What a LoRA model's requests carry to its base's replica (None for any other model)."""
    if spec.adapter_of is None or spec.source.path is None:
        return None
    return AdapterRef(name=spec.id, path=str(Path(spec.source.path).expanduser()))


class HandleModel:
    """A model deployment's handle, with a bound on how long a call waits for a replica to take it.

    NOTE: Serve's handle waits without limit while no replica has room, or none runs (a model
    scaled to zero; Serve starts one because the call waits). ``queue_timeout_s`` bounds that
    wait: past it the call is withdrawn and fails with ``EngineNotReady`` (a 503 with
    Retry-After), naming the model. A unary call's bound is its whole time (info, embed
    and classify calls are short); a stream's is the time to its first chunk.
    """

    def __init__(
        self,
        handle: DeploymentHandle,
        model_id: str = "",
        queue_timeout_s: float | None = None,
        *,
        adapter: AdapterRef | None = None,
    ) -> None:
        self._handle = handle
        self._adapter = adapter  # a LoRA model: its requests run this adapter on its base's replicas
        self._stream = handle.options(stream=True)
        self._model_id = model_id or handle.deployment_name
        self._timeout_s = queue_timeout_s

    def _not_taken(self) -> EngineNotReady:
        return EngineNotReady(
            f"no replica of model {self._model_id!r} took the request within {self._timeout_s:.0f}s: "
            "the model is starting (it may be scaled to zero) or every replica is busy; retry shortly"
        )

    async def _bounded(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await asyncio.wait_for(_await(call), timeout=self._timeout_s)
        except TimeoutError as exc:
            raise self._not_taken() from exc

    async def info(self) -> ModelInfo:
        result: ModelInfo = await self._bounded(lambda: self._handle.info.remote())
        return result

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        response: Any = None
        finished = False
        try:
            if self._adapter is not None:
                request = request.model_copy(update={"adapter": self._adapter})
            response = self._stream.generate.remote(request)  # NOTE: may raise (backpressure)
            chunks = aiter(response)
            try:
                first = await asyncio.wait_for(anext(chunks), timeout=self._timeout_s)
            except TimeoutError as exc:
                raise self._not_taken() from exc
            finished = first.finish_reason is not None
            yield first
            async for chunk in chunks:
                finished = chunk.finish_reason is not None
                yield chunk
        except Exception as exc:
            translated = translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            if response is not None and not finished:
                # NOTE: frees the replica's slot when the caller left. Skipped after the last chunk:
                # a cancel is a Ray call of its own (3% of the router's CPU under load). cancel()
                # also re-raises the call's error (backpressure included), which would replace the
                # translated one being raised.
                with contextlib.suppress(Exception):
                    response.cancel()

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        result: list[list[float]] = await self._bounded(lambda: self._handle.embed.remote(inputs))
        return result

    async def classify(self, inputs: list[list[int]]) -> list[list[float]]:
        result: list[list[float]] = await self._bounded(lambda: self._handle.classify.remote(inputs))
        return result


class HandleFineTuning:
    """The fine-tuning deployment's methods as awaitables (``llmaas.finetune.frontend.FineTuningBackend``)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._handle, name)

        async def call(*args: Any) -> Any:
            return await _await(lambda: method.remote(*args))

        return call
