"""LLMClient over the router's typed handle API, with the handle faked over the real front door."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Generator, Iterator
from typing import Any

import pytest

from llmaas.client import LLMClient, LLMError
from llmaas.openai.body import parse
from llmaas.openai.errors import OpenAIError
from llmaas.openai.frontend import OpenAIFrontend
from llmaas.openai.protocol import (
    ChatCompletionChunk,
    CompletionRequest,
    CompletionResponse,
    DetokenizeResponse,
    ModelList,
    TokenizeResponse,
)
from tests.unit.openai_fakes import LogprobModel
from tests.unit.test_frontend import _front


class Response:
    """A DeploymentResponse: ``.result()`` from sync code, ``await`` from async code."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro

    def result(self) -> Any:
        return asyncio.run(self._coro)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()


class ResponseGenerator:
    """A DeploymentResponseGenerator: iterated from sync or async code."""

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._items = items

    def __iter__(self) -> Iterator[Any]:
        async def drain() -> list[Any]:
            return [item async for item in self._items]

        return iter(asyncio.run(drain()))

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items


class RouterHandle:
    """``handle.method.remote(...)`` on the router's handle API, the front door standing in for it."""

    def __init__(self, front: OpenAIFrontend, stream: bool = False) -> None:
        self.front, self.stream, self.calls = front, stream, 0

    def options(self, stream: bool = False) -> RouterHandle:
        return RouterHandle(self.front, stream)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.front, name)

        class Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                self.calls += 1
                return ResponseGenerator(method(*args)) if self.stream else Response(method(*args))

        return Method


def _client(gen: Any = None) -> tuple[LLMClient, RouterHandle]:
    front, _ = _front(gen=gen)
    client = LLMClient("test")
    handle = RouterHandle(front)
    client._handle, client._stream = handle, handle.options(stream=True)
    return client, handle


def test_sync_calls_answer_typed_responses():
    client, _ = _client()
    assert isinstance(client.models(), ModelList)
    done = client.complete("gen", "hi", max_tokens=3, stream=True)  # a unary call never streams
    assert isinstance(done, CompletionResponse) and done.choices[0].text == "xxx"
    reply = client.chat("gen", [{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.choices[0].message.content == "xx"
    assert len(client.embed("emb", ["a", "b"]).data) == 2
    chunks = list(client.stream_chat("gen", [{"role": "user", "content": "hi"}], max_tokens=2))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "xx"
    assert "".join(c.choices[0].text for c in client.stream_complete("gen", [1, 2], max_tokens=4)) == "xxxx"


def test_async_twins():
    client, _ = _client()

    async def main() -> None:
        assert [m.id for m in (await client.amodels()).data] == ["gen", "emb"]
        assert (await client.acomplete("gen", "hi", max_tokens=2)).choices[0].text == "xx"
        assert (await client.achat("gen", [{"role": "user", "content": "x"}], max_tokens=1)).usage is not None
        assert len((await client.aembed("emb", "a")).data) == 1
        pieces = [
            c.choices[0].text async for c in client.astream_complete("gen", "hi", max_tokens=3) if c.choices
        ]
        assert "".join(pieces) == "xxx"
        usage = [
            c.usage
            async for c in client.astream_chat(
                "gen",
                [{"role": "user", "content": "x"}],
                max_tokens=2,
                stream_options={"include_usage": True},
            )
            if c.usage
        ]
        assert usage[0].completion_tokens == 2

    asyncio.run(main())


def test_platform_errors_raise_llm_error_with_the_http_fields():
    client, _ = _client()
    with pytest.raises(LLMError) as missing:
        client.complete("nope", "x")
    err = missing.value
    assert (err.status, err.type, err.param, err.code) == (
        404,
        "invalid_request_error",
        "model",
        "model_not_found",
    )
    assert "Served models: gen, emb." in err.message
    with pytest.raises(LLMError) as wrong:
        list(client.stream_chat("emb", [{"role": "user", "content": "x"}]))
    assert (wrong.value.status, wrong.value.code) == (400, "wrong_task")

    async def main() -> None:
        with pytest.raises(LLMError) as caught:
            await client.aembed("gen", "x")
        assert caught.value.code == "wrong_task"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"bogus": 1}, "bogus"),
        ({"stream_options": {"include_usage": True}}, None),
    ],
)
def test_a_request_that_fails_validation_raises_the_http_apis_400_before_any_call(params, param):
    client, handle = _client()
    with pytest.raises(LLMError) as caught:
        client.complete("gen", "hi", **params)
    with pytest.raises(OpenAIError) as over_http:
        parse(CompletionRequest, {"model": "gen", "prompt": "hi", **params})
    err = caught.value
    assert (err.status, err.message, err.param, err.code) == (
        400,
        over_http.value.message,
        over_http.value.param,
        "invalid_value",
    )
    assert err.param == param and handle.calls == 0


def test_the_new_options_are_forwarded_and_answered_in_the_typed_responses():
    client, _ = _client(LogprobModel())
    reply = client.complete(
        "gen",
        [[7, 8], [9]],
        max_tokens=2,
        logprobs=1,
        echo=True,
        n=2,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        repetition_penalty=1.1,
        logit_bias={"5": -100},
        min_tokens=1,
        user="batch-job",
    )
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[2].text == "<9><60><61>"
    assert reply.choices[2].logprobs is not None and reply.choices[2].logprobs.tokens[0] == "<9>"
    chat = client.chat(
        "gen",
        [{"role": "user", "content": "hi"}],
        logprobs=True,
        top_logprobs=2,
        max_completion_tokens=1,
        store=False,
        metadata={"job": "x"},
    )
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content[0].top_logprobs) == 2
    streamed = list(client.stream_complete("gen", ["a", "b"], max_tokens=1, logprobs=0))
    assert sorted(c.choices[0].index for c in streamed) == [0, 1]
    with pytest.raises(LLMError) as bad:
        client.complete("gen", "hi", logprobs=6)
    assert (bad.value.status, bad.value.param) == (400, "logprobs")


def test_tokenize_and_detokenize():
    client, _ = _client()
    tokens = client.tokenize("gen", "hi", return_token_strs=True)
    assert isinstance(tokens, TokenizeResponse) and tokens.count == 2 and tokens.token_strs is not None
    chat = client.tokenize("gen", messages=[{"role": "user", "content": "hey"}])
    assert chat.tokens == [2, 2, 2]
    back = client.detokenize("gen", tokens.tokens)
    assert isinstance(back, DetokenizeResponse) and back.prompt == "".join(tokens.token_strs)
    with pytest.raises(TypeError):
        client.tokenize("gen")
    with pytest.raises(LLMError) as negative:
        client.detokenize("gen", [-1])
    assert negative.value.param == "tokens[0]"
    with pytest.raises(LLMError) as missing:
        client.tokenize("nope", "x")
    assert missing.value.status == 404

    async def main() -> None:
        assert (await client.atokenize("gen", "abc")).count == 3
        assert (await client.adetokenize("gen", [5])).prompt == "<5>"

    asyncio.run(main())
