"""``POST /v1/classify`` without Ray: the route over fake models, its errors, metrics, the ledger and the
handle API. The fake classifier (tests/unit/test_metrics.py ``FakeModel("classify")``) has labels
["no", "yes"] and answers "yes" for an input of an odd number of tokens; the fake tokenizer makes
one token per character."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmaas.config.catalog import Catalog
from llmaas.config.gateway import GatewayConfig
from llmaas.gateway.client import GatewayClient
from llmaas.gateway.keys import KeyRequest
from llmaas.gateway.service import Gateway
from llmaas.metrics import UNKNOWN_MODEL, FanOut
from llmaas.openai.core import ROUTE_CLASSIFY
from llmaas.openai.errors import OpenAIError
from llmaas.openai.frontend import Caller, OpenAIFrontend
from llmaas.openai.openapi import openapi_body
from llmaas.openai.protocol import ClassificationRequest, ClassificationResponse, ErrorResult
from llmaas.openai.service import OpenAIService
from tests.unit.openai_fakes import FakeTokenizer
from tests.unit.test_frontend import Handle
from tests.unit.test_metrics import Collecting, FakeModel


def _catalog() -> Catalog:
    return Catalog.model_validate(
        {
            "models": [
                {"id": "gen", "source": {"demo": "tiny-llama-chat"}},
                {"id": "emb", "task": "embed", "source": {"demo": "all-minilm-l6-v2"}},
                {"id": "clf", "task": "classify", "source": {"path": "/models/clf"}},
            ]
        }
    )


def _service(metrics: Any = None) -> tuple[OpenAIService, Collecting]:
    recorder = Collecting()
    models: dict[str, Any] = {"gen": FakeModel(), "emb": FakeModel("embed"), "clf": FakeModel("classify")}
    service = OpenAIService(_catalog(), FakeTokenizer(), models, metrics=metrics or recorder)
    return service, recorder


def _classify(**body: Any) -> ClassificationResponse:
    service, _ = _service()
    return asyncio.run(service.classify(ClassificationRequest.model_validate({"model": "clf", **body})))


def _refusal(**body: Any) -> OpenAIError:
    service, _ = _service()
    with pytest.raises(OpenAIError) as caught:
        asyncio.run(service.classify(ClassificationRequest.model_validate(body)))
    return caught.value


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


def test_texts_are_classified_in_vllm_shape():
    reply = _classify(input=["abc", "ab"])
    body = reply.model_dump(mode="json")
    assert set(body) == {"id", "object", "created", "model", "data", "usage"}
    assert body["id"].startswith("classify-") and body["object"] == "list" and body["model"] == "clf"
    assert body["data"] == [
        {"index": 0, "label": "yes", "probs": [0.1, 0.9], "num_classes": 2},
        {"index": 1, "label": "no", "probs": [0.8, 0.2], "num_classes": 2},
    ]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 0,
        "total_tokens": 5,
        "prompt_tokens_details": None,  # as vLLM's UsageInfo: nothing is cached for a classifier
    }


def test_one_text_and_token_ids_are_inputs_too():
    assert [d.label for d in _classify(input="abc").data] == ["yes"]
    flat = _classify(input=[5, 6])  # one input of two tokens
    assert [(d.index, d.label) for d in flat.data] == [(0, "no")]
    assert flat.usage.prompt_tokens == 2
    assert [d.label for d in _classify(input=[[5], [6, 7]]).data] == ["yes", "no"]


def test_a_generative_or_embedding_model_is_a_400_wrong_task():
    for model, task in (("gen", "generate"), ("emb", "embed")):
        error = _refusal(model=model, input="hi")
        assert (error.status, error.param, error.code) == (400, "model", "wrong_task")
        assert f"has task '{task}'" in error.message and "Models for this route: clf" in error.message


def test_an_unknown_model_is_a_404():
    error = _refusal(model="nope", input="hi")
    assert error.status == 404 and "gen, emb, clf" in error.message


def test_a_classifier_on_another_route_is_told_where_to_go():
    from llmaas.openai.protocol import EmbeddingRequest

    service, _ = _service()
    with pytest.raises(OpenAIError) as caught:
        asyncio.run(service.embeddings(EmbeddingRequest(model="clf", input="hi")))
    assert caught.value.code == "wrong_task" and "use /v1/classify with it" in caught.value.message


def test_over_long_inputs_are_a_400_naming_the_input():
    error = _refusal(model="clf", input=["ok", "x" * 65])
    assert (error.status, error.param, error.code) == (400, "input[1]", "context_length_exceeded")
    assert "64 tokens" in error.message and "65 tokens" in error.message
    assert _refusal(model="clf", input="x" * 65).param == "input"
    outside = _refusal(model="clf", input=[[1], [100]])
    assert (outside.status, outside.param) == (400, "input[1]")


def test_bad_bodies_are_400s_naming_the_field():
    for body, param in (
        ({"model": "clf", "input": ""}, "input"),
        ({"model": "clf", "input": []}, "input"),
        ({"model": "clf", "input": "a", "priority": 1}, "priority"),
        ({"model": "clf"}, "input"),
    ):
        service, recorder = _service()
        front = OpenAIFrontend(service)
        with pytest.raises(OpenAIError) as caught:
            asyncio.run(front.create_classify(Caller(), _body(json.dumps(body).encode())))
        assert (caught.value.status, caught.value.param) == (400, param), caught.value.message
        assert [(r.route, r.model, r.status) for r in recorder.records] == [(ROUTE_CLASSIFY, "clf", 400)]


def test_requests_are_recorded_with_their_input_tokens():
    service, recorder = _service()
    asyncio.run(service.classify(ClassificationRequest(model="clf", input=["ab", "cde"])))
    [record] = recorder.records
    assert (record.model, record.route, record.status) == ("clf", ROUTE_CLASSIFY, 200)
    assert record.prompt_tokens == 5
    with pytest.raises(OpenAIError):
        asyncio.run(service.classify(ClassificationRequest(model="nope", input="a")))
    assert (recorder.records[-1].model, recorder.records[-1].status) == (UNKNOWN_MODEL, 404)


def test_the_ledger_meters_classify_like_embeddings(tmp_path: Path):
    async def main() -> None:
        gateway = Gateway(GatewayConfig(database=f"sqlite:///{tmp_path / 'gw.db'}"))
        await gateway.start()
        made = await gateway.create_key(KeyRequest(name="u", models=["clf"]))
        client = GatewayClient(Handle(gateway), auth=True, ledger=True)
        service, _ = _service(FanOut(Collecting(), client))
        front = OpenAIFrontend(service, client)
        reply = await front.create_classify(
            Caller(f"Bearer {made.secret}"), _body(b'{"model": "clf", "input": ["abc", "de"]}')
        )
        assert [d.label for d in reply.data] == ["yes", "no"]
        await front.settle()
        [usage] = [u for u in await gateway.usage() if u.key_id is not None]
        assert (usage.model, usage.requests, usage.prompt_tokens, usage.completion_tokens) == ("clf", 1, 5, 0)
        await gateway.stop()

    asyncio.run(main())


def test_the_handle_api_answers_a_response_or_an_error_result():
    async def main() -> None:
        service, _ = _service()
        front = OpenAIFrontend(service)
        reply = await front.classify(ClassificationRequest(model="clf", input="abc"))
        assert isinstance(reply, ClassificationResponse) and reply.data[0].label == "yes"
        wrong = await front.classify(ClassificationRequest(model="gen", input="abc"))
        assert isinstance(wrong, ErrorResult) and (wrong.status, wrong.error.code) == (400, "wrong_task")

    asyncio.run(main())


def test_models_lists_the_classifier_with_its_task():
    service, _ = _service()
    cards = {card.id: card.task for card in asyncio.run(service.list_models()).data}
    assert cards["clf"] == "classify"


def test_the_openapi_body_documents_vllms_request():
    schema = openapi_body(ClassificationRequest)["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"model", "input"}
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"model", "input", "add_special_tokens", "user"}


def test_the_client_classifies_sync_and_async():
    from llmaas.client import LLMClient, LLMError
    from tests.unit.test_client import RouterHandle

    service, _ = _service()
    client = LLMClient("test")
    handle = RouterHandle(OpenAIFrontend(service))
    client._handle, client._stream = handle, handle.options(stream=True)
    assert [d.label for d in client.classify("clf", ["abc", "ab"]).data] == ["yes", "no"]
    assert asyncio.run(client.aclassify("clf", [[1, 2, 3]])).data[0].probs == [0.1, 0.9]
    with pytest.raises(LLMError) as wrong:
        client.classify("gen", "abc")
    assert (wrong.value.status, wrong.value.param, wrong.value.code) == (400, "model", "wrong_task")
    calls = handle.calls
    with pytest.raises(LLMError) as invalid:  # refused before any call, as the HTTP API would
        client.classify("clf", "abc", truncate_prompt_tokens=3)
    assert (invalid.value.status, invalid.value.param, handle.calls) == (400, "truncate_prompt_tokens", calls)
