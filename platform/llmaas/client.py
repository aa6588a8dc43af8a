"""A typed Python client over Serve handles, for Ray jobs and drivers (no HTTP).

    from llmaas.client import LLMClient

    client = LLMClient()                      # the "llmaas" Serve application
    reply = client.chat("smollm2-135m-instruct", [{"role": "user", "content": "Hello"}], max_tokens=32)
    print(reply.choices[0].message.content)
    for chunk in client.stream_chat("smollm2-135m-instruct", [{"role": "user", "content": "Hi"}]):
        print(chunk.choices[0].delta.content or "", end="")
    vectors = client.embed("all-minilm-l6-v2", ["a sentence", "another"]).data
    labels = [d.label for d in client.classify("my-classifier", ["great film", "awful film"]).data]
    batch = client.complete("smollm2-135m-instruct", ["One,", "Two,"], max_tokens=4, logprobs=1)
    ids = client.tokenize("smollm2-135m-instruct", "Hello").tokens
    text = client.detokenize("smollm2-135m-instruct", ids).prompt

Every method has an ``a``-prefixed async twin (``await client.achat(...)``,
``async for chunk in client.astream_chat(...)``). Errors raise ``LLMError`` with the same
status, type and param as the HTTP API; a request that fails validation raises it here, before
any call, with the message the HTTP API gives.

Keyword arguments are the HTTP API's request fields (``logprobs``, ``echo``, ``logit_bias``,
penalties, ``n``, ...); ``complete`` takes a prompt or a list of them, as ``/v1/completions`` does.

The router's typed handle API underneath: ``models()``, ``completion(CompletionRequest)``,
``chat(ChatCompletionRequest)``, ``embeddings(EmbeddingRequest)``, ``classify(ClassificationRequest)``,
``tokenize(TokenizeRequest)``,
``detokenize(DetokenizeRequest)``, ``completion_stream(...)`` and ``chat_stream(...)``: pydantic
requests in, pydantic responses (or an ``ErrorResult``) out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from llmaas.openai.errors import from_validation_error
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
    ModelList,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeRequest,
    TokenizeResponse,
)

#: A completion prompt: text, texts, token ids, or lists of token ids (as /v1/completions takes).
Prompt = str | list[str] | list[int] | list[list[int]]
#: What /v1/classify takes: a text, texts, token ids or lists of token ids.
Classifiable = Prompt

M = TypeVar("M", bound=BaseModel)


class LLMError(RuntimeError):
    """An error answered by the platform, in OpenAI's terms."""

    def __init__(self, status: int, message: str, type: str, param: str | None, code: str | None) -> None:
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code


def _checked(reply: M | ErrorResult) -> M:
    """The response; an ``ErrorResult`` raises ``LLMError``."""
    if isinstance(reply, ErrorResult):
        err = reply.error
        code = None if err.code is None else str(err.code)
        raise LLMError(reply.status, err.message, err.type, err.param, code)
    return reply


def _request(cls: type[M], body: dict[str, Any]) -> M:
    """``body`` validated into the request ``cls``; the HTTP API's 400 as an ``LLMError`` otherwise."""
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        error = from_validation_error(exc, cls)
        raise LLMError(error.status, error.message, error.type, error.param, error.code) from exc


def _completion(model: str, prompt: Prompt, params: dict[str, Any], stream: bool) -> CompletionRequest:
    return _request(CompletionRequest, {"model": model, "prompt": prompt, **params, "stream": stream})


def _chat(
    model: str, messages: list[dict[str, Any]], params: dict[str, Any], stream: bool
) -> ChatCompletionRequest:
    return _request(ChatCompletionRequest, {"model": model, "messages": messages, **params, "stream": stream})


def _embedding(model: str, input: str | list[str], params: dict[str, Any]) -> EmbeddingRequest:
    return _request(EmbeddingRequest, {"model": model, "input": input, **params})


def _classification(model: str, input: Classifiable, params: dict[str, Any]) -> ClassificationRequest:
    return _request(ClassificationRequest, {"model": model, "input": input, **params})


def _tokenize(
    model: str, prompt: str | None, messages: list[dict[str, Any]] | None, params: dict[str, Any]
) -> TokenizeRequest:
    if (prompt is None) == (messages is None):
        raise TypeError("tokenize takes a prompt or messages (one of them)")
    if messages is not None:
        return _request(TokenizeChatRequest, {"model": model, "messages": messages, **params})
    return _request(TokenizeCompletionRequest, {"model": model, "prompt": prompt, **params})


def _detokenize(model: str, tokens: list[int]) -> DetokenizeRequest:
    return _request(DetokenizeRequest, {"model": model, "tokens": tokens})


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
    def _call(self, method: str, *args: BaseModel) -> Any:
        handle, _ = self._handles()
        return _checked(getattr(handle, method).remote(*args).result())

    def _iter(self, method: str, request: BaseModel) -> Iterator[Any]:
        _, stream = self._handles()
        for item in getattr(stream, method).remote(request):
            yield _checked(item)

    def models(self) -> ModelList:
        reply: ModelList = self._call("models")
        return reply

    def complete(self, model: str, prompt: Prompt, **params: Any) -> CompletionResponse:
        reply: CompletionResponse = self._call("completion", _completion(model, prompt, params, False))
        return reply

    def chat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> ChatCompletionResponse:
        reply: ChatCompletionResponse = self._call("chat", _chat(model, messages, params, False))
        return reply

    def embed(self, model: str, input: str | list[str], **params: Any) -> EmbeddingResponse:
        reply: EmbeddingResponse = self._call("embeddings", _embedding(model, input, params))
        return reply

    def classify(self, model: str, input: Classifiable, **params: Any) -> ClassificationResponse:
        """Each input's label and class probabilities (``/v1/classify``), from a ``task: classify`` model."""
        reply: ClassificationResponse = self._call("classify", _classification(model, input, params))
        return reply

    def tokenize(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        **params: Any,
    ) -> TokenizeResponse:
        """A prompt's token ids (or, with ``messages``, a chat's as the chat template renders it)."""
        reply: TokenizeResponse = self._call("tokenize", _tokenize(model, prompt, messages, params))
        return reply

    def detokenize(self, model: str, tokens: list[int]) -> DetokenizeResponse:
        reply: DetokenizeResponse = self._call("detokenize", _detokenize(model, tokens))
        return reply

    def stream_complete(self, model: str, prompt: Prompt, **params: Any) -> Iterator[CompletionResponse]:
        request = _completion(model, prompt, params, True)
        return self._iter("completion_stream", request)

    def stream_chat(
        self, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> Iterator[ChatCompletionChunk]:
        request = _chat(model, messages, params, True)
        return self._iter("chat_stream", request)

    # ---- async -------------------------------------------------------------------------------
    async def _acall(self, method: str, *args: BaseModel) -> Any:
        handle, _ = self._handles()
        return _checked(await getattr(handle, method).remote(*args))

    async def _aiter(self, method: str, request: BaseModel) -> AsyncIterator[Any]:
        _, stream = self._handles()
        async for item in getattr(stream, method).remote(request):
            yield _checked(item)

    async def amodels(self) -> ModelList:
        reply: ModelList = await self._acall("models")
        return reply

    async def acomplete(self, model: str, prompt: Prompt, **params: Any) -> CompletionResponse:
        reply: CompletionResponse = await self._acall("completion", _completion(model, prompt, params, False))
        return reply

    async def achat(
        self, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> ChatCompletionResponse:
        reply: ChatCompletionResponse = await self._acall("chat", _chat(model, messages, params, False))
        return reply

    async def aembed(self, model: str, input: str | list[str], **params: Any) -> EmbeddingResponse:
        reply: EmbeddingResponse = await self._acall("embeddings", _embedding(model, input, params))
        return reply

    async def aclassify(self, model: str, input: Classifiable, **params: Any) -> ClassificationResponse:
        reply: ClassificationResponse = await self._acall("classify", _classification(model, input, params))
        return reply

    async def atokenize(
        self,
        model: str,
        prompt: str | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        **params: Any,
    ) -> TokenizeResponse:
        reply: TokenizeResponse = await self._acall("tokenize", _tokenize(model, prompt, messages, params))
        return reply

    async def adetokenize(self, model: str, tokens: list[int]) -> DetokenizeResponse:
        reply: DetokenizeResponse = await self._acall("detokenize", _detokenize(model, tokens))
        return reply

    def astream_complete(
        self, model: str, prompt: Prompt, **params: Any
    ) -> AsyncIterator[CompletionResponse]:
        request = _completion(model, prompt, params, True)
        return self._aiter("completion_stream", request)

    def astream_chat(
        self, model: str, messages: list[dict[str, Any]], **params: Any
    ) -> AsyncIterator[ChatCompletionChunk]:
        request = _chat(model, messages, params, True)
        return self._aiter("chat_stream", request)
