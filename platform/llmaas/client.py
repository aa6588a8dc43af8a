"""A typed Python client over Serve handles, for Ray jobs and drivers (no HTTP).

    from llmaas.client import LLMClient

    client = LLMClient()                      # the "llmaas" Serve application
    reply = client.chat("tiny-llama-chat", [{"role": "user", "content": "Hello"}], max_tokens=32)
    print(reply.choices[0].message.content)
    for chunk in client.stream_chat("tiny-llama-chat", [{"role": "user", "content": "Hi"}]):
        print(chunk.choices[0].delta.content or "", end="")
    vectors = client.embed("all-minilm-l6-v2", ["a sentence", "another"]).data

Every method has an ``a``-prefixed async twin (``await client.achat(...)``,
``async for chunk in client.astream_chat(...)``). Errors raise ``LLMError`` with the same
status, type and param as the HTTP API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

from llmaas.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionResponse,
    EmbeddingResponse,
    ModelList,
)

R = TypeVar("R", bound=BaseModel)


class LLMError(RuntimeError):
    """An error answered by the platform, in OpenAI's terms."""

    def __init__(self, status: int, message: str, type: str, param: str | None, code: str | None) -> None:
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def _check(body: dict[str, Any]) -> dict[str, Any]:
    if "error" in body:
        err = body["error"]
        raise LLMError(
            int(body.get("status", 500)), err["message"], err["type"], err.get("param"), err.get("code")
        )
    return body


class LLMClient:
    """Calls the platform's router deployment through a DeploymentHandle."""

    def __init__(self, app_name: str = "llmaas") -> None:
        self.app_name = app_name
        self._handle: Any = None
        self._stream: Any = None

    def _handles(self) -> tuple[Any, Any]:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_app_handle(self.app_name)
            self._stream = self._handle.options(stream=True)
        return self._handle, self._stream

    # ---- sync --------------------------------------------------------------------------------
    def _call(self, route: str, body: dict[str, Any], cls: type[R]) -> R:
        handle, _ = self._handles()
        return cls.model_validate(_check(handle.call.remote(route, body).result()))

    def _iter(self, route: str, body: dict[str, Any], cls: type[R]) -> Iterator[R]:
        _, stream = self._handles()
        for item in stream.stream.remote(route, body):
            yield cls.model_validate(_check(item))

    def models(self) -> ModelList:
        return self._call("models", {}, ModelList)

    def complete(self, model: str, prompt: str | list[int], **params: Any) -> CompletionResponse:
        return self._call("completions", {"model": model, "prompt": prompt, **params}, CompletionResponse)

    def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> ChatCompletionResponse:
        return self._call(
            "chat.completions", {"model": model, "messages": messages, **params}, ChatCompletionResponse
        )

    def embed(self, model: str, input: str | list[str], **params: Any) -> EmbeddingResponse:
        return self._call("embeddings", {"model": model, "input": input, **params}, EmbeddingResponse)

    def stream_complete(
        self, model: str, prompt: str | list[int], **params: Any
    ) -> Iterator[CompletionResponse]:
        return self._iter("completions", {"model": model, "prompt": prompt, **params}, CompletionResponse)

    def stream_chat(
        self, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> Iterator[ChatCompletionChunk]:
        return self._iter(
            "chat.completions", {"model": model, "messages": messages, **params}, ChatCompletionChunk
        )

    # ---- async -------------------------------------------------------------------------------
    async def _acall(self, route: str, body: dict[str, Any], cls: type[R]) -> R:
        handle, _ = self._handles()
        return cls.model_validate(_check(await handle.call.remote(route, body)))

    async def _aiter(self, route: str, body: dict[str, Any], cls: type[R]) -> AsyncIterator[R]:
        _, stream = self._handles()
        async for item in stream.stream.remote(route, body):
            yield cls.model_validate(_check(item))

    async def amodels(self) -> ModelList:
        return await self._acall("models", {}, ModelList)

    async def acomplete(self, model: str, prompt: str | list[int], **params: Any) -> CompletionResponse:
        return await self._acall(
            "completions", {"model": model, "prompt": prompt, **params}, CompletionResponse
        )

    async def achat(
        self, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> ChatCompletionResponse:
        body = {"model": model, "messages": messages, **params}
        return await self._acall("chat.completions", body, ChatCompletionResponse)

    async def aembed(self, model: str, input: str | list[str], **params: Any) -> EmbeddingResponse:
        return await self._acall("embeddings", {"model": model, "input": input, **params}, EmbeddingResponse)

    def astream_complete(
        self, model: str, prompt: str | list[int], **params: Any
    ) -> AsyncIterator[CompletionResponse]:
        return self._aiter("completions", {"model": model, "prompt": prompt, **params}, CompletionResponse)

    def astream_chat(
        self, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncIterator[ChatCompletionChunk]:
        body = {"model": model, "messages": messages, **params}
        return self._aiter("chat.completions", body, ChatCompletionChunk)
