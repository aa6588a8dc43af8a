"""The API's front door without Ray: keys before bodies, refusals counted, typed handle answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llmaas.config.catalog import Catalog
from llmaas.config.gateway import GatewayConfig
from llmaas.errors import AuthError, Forbidden
from llmaas.gateway.client import GatewayClient
from llmaas.gateway.keys import KeyRequest
from llmaas.gateway.service import Gateway
from llmaas.metrics import UNKNOWN_MODEL, FanOut
from llmaas.openai.errors import OpenAIError
from llmaas.openai.frontend import Caller, OpenAIFrontend
from llmaas.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    ErrorResult,
    ModelList,
)
from llmaas.openai.service import ROUTE_CHAT, ROUTE_COMPLETIONS, OpenAIService
from tests.unit.openai_fakes import FakeTokenizer
from tests.unit.test_metrics import Collecting, FakeModel, _catalog


class Handle:
    """A DeploymentHandle stand-in over a plain object: ``handle.method.remote(...)`` awaits it."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        method: Callable[..., Awaitable[Any]] = getattr(self._target, name)
        return SimpleNamespace(remote=lambda *args, **kwargs: method(*args, **kwargs))


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _front(gateway: GatewayClient | None = None, gen: Any = None) -> tuple[OpenAIFrontend, Collecting]:
    """The front door over fake models: 'gen' (``gen``, or ``FakeModel``) and 'emb'."""
    recorder = Collecting()
    models: dict[str, Any] = {"gen": gen or FakeModel(), "emb": FakeModel("embed")}
    metrics = FanOut(recorder, gateway) if gateway else recorder  # as the router wires it
    service = OpenAIService(_catalog(), FakeTokenizer(), models, metrics=metrics)
    return OpenAIFrontend(service, gateway), recorder


def test_http_requests_are_read_validated_and_answered():
    async def main() -> None:
        front, recorder = _front()
        reply = await front.create_completion(
            Caller(request_id="rid-1"), _body(b'{"model": "gen", "prompt": "hi", "max_tokens": 3}')
        )
        assert isinstance(reply, CompletionResponse) and reply.choices[0].text == "xxx"
        assert recorder.records[-1].request_id == "rid-1"
        stream = await front.create_chat_completion(
            Caller(),
            _body(b'{"model": "gen", "messages": [{"role": "user", "content": "hi"}], "stream": true}'),
        )
        assert not isinstance(stream, ChatCompletionResponse)
        chunks = [c async for c in stream]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices[0].finish_reason == "length"
        assert (
            len((await front.create_embedding(Caller(), _body(b'{"model": "emb", "input": "a"}'))).data) == 1
        )
        assert [m.id for m in (await front.list_models(Caller())).data] == ["gen", "emb"]
        assert (await front.get_model(Caller(), "emb")).task == "embed"
        with pytest.raises(OpenAIError) as missing:
            await front.get_model(Caller(), "nope")
        assert missing.value.status == 404 and "gen, emb" in missing.value.message

    asyncio.run(main())


def test_a_refused_body_is_counted_under_its_route_and_model():
    async def main() -> None:
        front, recorder = _front()
        with pytest.raises(OpenAIError) as bad:
            await front.create_completion(Caller(), _body(b'{"model": "gen", "prompt": "x", "n": 0}'))
        assert bad.value.param == "n"
        with pytest.raises(OpenAIError) as unreadable:
            await front.create_chat_completion(Caller(), _body(b"{"))
        assert unreadable.value.code == "invalid_json"
        assert [(r.route, r.model, r.status) for r in recorder.records] == [
            (ROUTE_COMPLETIONS, "gen", 400),
            (ROUTE_CHAT, UNKNOWN_MODEL, 400),
        ]

    asyncio.run(main())


def test_the_key_is_checked_before_the_body(tmp_path: Path):
    async def main() -> None:
        gateway = Gateway(GatewayConfig(database=f"sqlite:///{tmp_path / 'gw.db'}"))
        await gateway.start()
        made = await gateway.create_key(KeyRequest(name="u", models=["gen"]))
        client = GatewayClient(Handle(gateway), auth=True, ledger=True)
        front, recorder = _front(client)
        with pytest.raises(AuthError):  # no key and a bad body: still the key's refusal
            await front.create_completion(Caller(), _body(b"{"))
        with pytest.raises(Forbidden):
            await front.create_embedding(
                Caller(f"Bearer {made.secret}"), _body(b'{"model": "emb", "input": "a"}')
            )
        assert [r.status for r in recorder.records] == [401, 403]
        with pytest.raises(AuthError):
            await front.list_models(Caller())
        ok = await front.create_completion(
            Caller(f"Bearer {made.secret}", "rid-2"),
            _body(b'{"model": "gen", "prompt": "hi", "max_tokens": 2}'),
        )
        assert isinstance(ok, CompletionResponse)
        await front.settle()  # the ledger row of the current request is committed
        [usage] = [u for u in await gateway.usage() if u.key_id is not None]
        assert (usage.key_id, usage.model, usage.requests) == (made.key.id, "gen", 1)
        await gateway.stop()

    asyncio.run(main())


def test_handle_calls_answer_typed_responses_or_an_error_result():
    async def main() -> None:
        front, recorder = _front()
        listed = await front.models()
        assert isinstance(listed, ModelList)
        done = await front.completion(CompletionRequest(model="gen", prompt="hi", max_tokens=2, stream=True))
        assert isinstance(done, CompletionResponse) and done.choices[0].text == "xx"
        assert recorder.records[-1].stream is False, "a unary call does not stream"
        missing = await front.chat(
            ChatCompletionRequest.model_validate(
                {"model": "nope", "messages": [{"role": "user", "content": "x"}]}
            )
        )
        assert isinstance(missing, ErrorResult)
        assert (missing.status, missing.error.param, missing.error.code) == (404, "model", "model_not_found")
        wrong = await front.embeddings(EmbeddingRequest(model="gen", input="x"))
        assert isinstance(wrong, ErrorResult) and wrong.error.code == "wrong_task"

    asyncio.run(main())


def test_handle_streams_yield_chunks_and_end_with_an_error_result_when_refused():
    async def main() -> None:
        front, _ = _front()
        chunks = [
            c
            async for c in front.completion_stream(CompletionRequest(model="gen", prompt="hi", max_tokens=3))
        ]
        assert "".join(c.choices[0].text for c in chunks if not isinstance(c, ErrorResult)) == "xxx"
        chat = [
            c
            async for c in front.chat_stream(
                ChatCompletionRequest.model_validate(
                    {"model": "emb", "messages": [{"role": "user", "content": "x"}], "stream": False}
                )
            )
        ]
        assert len(chat) == 1 and isinstance(chat[0], ErrorResult) and chat[0].status == 400

    asyncio.run(main())


def test_http_bodies_with_the_new_fields_get_openais_shapes():
    from tests.unit.openai_fakes import LogprobModel

    async def main() -> None:
        front, _ = _front(gen=LogprobModel())
        body = (
            b'{"model": "gen", "prompt": [[7, 8], [9]], "n": 2, "max_tokens": 1, "echo": true, "logprobs": 1}'
        )
        reply = await front.create_completion(Caller(), _body(body))
        assert isinstance(reply, CompletionResponse)
        data = reply.model_dump(mode="json")
        assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
        assert [c["text"] for c in data["choices"]] == ["<7><8><60>"] * 2 + ["<9><60>"] * 2
        assert data["choices"][2]["logprobs"]["token_logprobs"] == [None, -0.25]
        assert data["usage"] == {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0},  # OpenAI's field; the fake engine caches nothing
        }
        chat = await front.create_chat_completion(
            Caller(),
            _body(
                b'{"model": "gen", "messages": [{"role": "user", "content": "x"}], "logprobs": true, '
                b'"top_logprobs": 1, "max_completion_tokens": 1, "presence_penalty": 1, '
                b'"logit_bias": {"5": -100}}'
            ),
        )
        assert isinstance(chat, ChatCompletionResponse)
        [token] = chat.model_dump(mode="json")["choices"][0]["logprobs"]["content"]
        assert token == {
            "token": "<60>",
            "logprob": -0.25,
            "bytes": list(b"<60>"),
            "top_logprobs": [{"token": "<60>", "logprob": -0.25, "bytes": list(b"<60>")}],
        }
        with pytest.raises(OpenAIError) as bias:
            await front.create_completion(
                Caller(), _body(b'{"model": "gen", "prompt": "x", "logit_bias": {"100": 1}}')
            )
        assert (bias.value.status, bias.value.param) == (400, "logit_bias")

    asyncio.run(main())


def test_a_fine_tuned_model_is_its_owners_alone(tmp_path: Path):
    """Another key gets a 404 for it, as for a model that does not exist; an admin key sees it."""

    async def main() -> None:
        gateway = Gateway(GatewayConfig(database=f"sqlite:///{tmp_path / 'gw.db'}"))
        await gateway.start()
        owner = await gateway.create_key(KeyRequest(name="owner"))
        other = await gateway.create_key(KeyRequest(name="other"))
        admin = await gateway.create_key(KeyRequest(name="admin", admin=True))
        client = GatewayClient(Handle(gateway), auth=True, ledger=False)
        catalog = _catalog().model_dump()
        tuned = {**catalog["models"][0], "id": "ft:gen:x::ftjob-1", "owner": owner.key.id, "parent": "gen"}
        catalog["models"].append(tuned)
        models: dict[str, Any] = {"gen": FakeModel(), "emb": FakeModel("embed"), tuned["id"]: FakeModel()}
        service = OpenAIService(Catalog.model_validate(catalog), FakeTokenizer(), models)
        front = OpenAIFrontend(service, client)
        body = b'{"model": "ft:gen:x::ftjob-1", "prompt": "hi", "max_tokens": 2}'
        mine = await front.create_completion(Caller(f"Bearer {owner.secret}"), _body(body))
        assert isinstance(mine, CompletionResponse)
        with pytest.raises(OpenAIError) as hidden:
            await front.create_completion(Caller(f"Bearer {other.secret}"), _body(body))
        assert hidden.value.status == 404
        assert hidden.value.message.endswith("Served models: gen, emb.")  # nothing of another tenant's
        names = {m.id for m in (await front.list_models(Caller(f"Bearer {other.secret}"))).data}
        assert names == {"gen", "emb"}
        card = await front.get_model(Caller(f"Bearer {owner.secret}"), tuned["id"])
        assert (card.owned_by, card.parent, card.root) == (owner.key.id, "gen", "gen")
        with pytest.raises(OpenAIError):
            await front.get_model(Caller(f"Bearer {other.secret}"), tuned["id"])
        assert len((await front.list_models(Caller(f"Bearer {admin.secret}"))).data) == 3
        await gateway.stop()

    asyncio.run(main())
