"""Adapters from Serve DeploymentHandles to the service's TokenizerClient / ModelClient protocols.

Serve wraps a replica's exception in RayTaskError; we unwrap it so that the router sees the
original error (an OpenAIError from the tokenizer, an engine error), and map Serve's own
backpressure and availability errors to the engine's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from llmaas.engine.errors import EngineError, EngineNotReady, EngineOverloaded
from llmaas.engine.types import GenerationChunk, GenerationRequest, ModelInfo

T = TypeVar("T")


def translate(exc: BaseException) -> BaseException:
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
        self, model_id: str, messages: list[dict[str, str]], add_generation_prompt: bool
    ) -> list[int]:
        result: list[int] = await _await(
            lambda: self._handle.chat_template.remote(model_id, messages, add_generation_prompt)
        )
        return result


class HandleModel:
    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle
        self._stream = handle.options(stream=True)

    async def info(self) -> ModelInfo:
        result: ModelInfo = await _await(lambda: self._handle.info.remote())
        return result

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        response: Any = None
        finished = False
        try:
            response = self._stream.generate.remote(request)  # NOTE: may raise (backpressure)
            async for chunk in response:
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
        result: list[list[float]] = await _await(lambda: self._handle.embed.remote(inputs))
        return result
