"""vLLM's /tokenize and /detokenize: through the service, the HTTP front door and the handle API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmaas.openai.errors import OpenAIError
from llmaas.openai.frontend import Caller, OpenAIFrontend
from llmaas.openai.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResult,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeResponse,
)
from llmaas.openai.service import ROUTE_DETOKENIZE, ROUTE_TOKENIZE
from tests.unit.openai_fakes import service


async def _body(data: dict[str, Any]) -> AsyncIterator[bytes]:
    yield json.dumps(data).encode()


def test_tokenize_a_prompt_with_its_token_strings():
    async def main() -> None:
        svc, _, _, recorder = service()
        reply = await svc.tokenize(
            TokenizeCompletionRequest(model="gen", prompt="abc", return_token_strs=True)
        )
        assert reply == TokenizeResponse(
            count=3, max_model_len=64, tokens=[48, 49, 50], token_strs=["<48>", "<49>", "<50>"]
        )
        plain = await svc.tokenize(TokenizeCompletionRequest(model="gen", prompt="abc"))
        assert plain.token_strs is None
        assert [(r.route, r.model, r.status) for r in recorder.records] == [(ROUTE_TOKENIZE, "gen", 200)] * 2

    asyncio.run(main())


def test_tokenize_a_chat_as_the_chat_template_renders_it():
    async def main() -> None:
        svc, _, _, _ = service()
        reply = await svc.tokenize(
            TokenizeChatRequest.model_validate(
                {"model": "gen", "messages": [{"role": "user", "content": "hey"}]}
            )
        )
        assert reply.tokens == [2, 2, 2] and reply.count == 3

    asyncio.run(main())


def test_any_served_model_tokenizes_an_unknown_one_is_404():
    async def main() -> None:
        svc, _, _, _ = service()
        assert (await svc.tokenize(TokenizeCompletionRequest(model="emb", prompt="a"))).count == 1
        with pytest.raises(OpenAIError) as missing:
            await svc.tokenize(TokenizeCompletionRequest(model="nope", prompt="a"))
        assert (missing.value.status, missing.value.param) == (404, "model")

    asyncio.run(main())


def test_detokenize_and_its_vocabulary_check():
    async def main() -> None:
        svc, _, _, recorder = service()
        assert await svc.detokenize(DetokenizeRequest(model="gen", tokens=[5, 6])) == DetokenizeResponse(
            prompt="<5><6>"
        )
        assert (await svc.detokenize(DetokenizeRequest(model="gen", tokens=[]))).prompt == ""
        with pytest.raises(OpenAIError) as outside:
            await svc.detokenize(DetokenizeRequest(model="gen", tokens=[5, 100]))
        assert (outside.value.status, outside.value.param) == (400, "tokens[1]")
        assert recorder.records[-1].route == ROUTE_DETOKENIZE

    asyncio.run(main())


def test_http_bodies_with_messages_are_chat_tokenize_requests():
    async def main() -> None:
        svc, _, _, _ = service()
        front = OpenAIFrontend(svc)
        chat = await front.create_tokenize(
            Caller(), _body({"model": "gen", "messages": [{"role": "user", "content": "hi"}]})
        )
        assert chat.tokens == [2, 2]
        prompt = await front.create_tokenize(
            Caller(), _body({"model": "gen", "prompt": "hi", "add_special_tokens": False})
        )
        assert prompt.count == 2
        back = await front.create_detokenize(Caller(), _body({"model": "gen", "tokens": prompt.tokens}))
        assert back.prompt == "".join(f"<{t}>" for t in prompt.tokens)
        with pytest.raises(OpenAIError) as unsupported:
            await front.create_tokenize(
                Caller(),
                _body(
                    {
                        "model": "gen",
                        "messages": [{"role": "user", "content": "x"}],
                        "continue_final_message": True,
                    }
                ),
            )
        assert unsupported.value.param == "continue_final_message"
        with pytest.raises(OpenAIError) as negative:
            await front.create_detokenize(Caller(), _body({"model": "gen", "tokens": [-1]}))
        assert negative.value.param == "tokens[0]"
        with pytest.raises(OpenAIError) as neither:
            await front.create_tokenize(Caller(), _body({"model": "gen"}))
        assert neither.value.param == "prompt" and "Missing" in neither.value.message

    asyncio.run(main())


def test_handle_calls_answer_typed_responses_or_an_error_result():
    async def main() -> None:
        svc, _, _, _ = service()
        front = OpenAIFrontend(svc)
        reply = await front.tokenize(TokenizeCompletionRequest(model="gen", prompt="a"))
        assert isinstance(reply, TokenizeResponse)
        missing = await front.detokenize(DetokenizeRequest(model="nope", tokens=[1]))
        assert isinstance(missing, ErrorResult) and missing.status == 404

    asyncio.run(main())
