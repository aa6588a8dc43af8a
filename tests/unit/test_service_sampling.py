"""Sampling controls reach the engine's SamplingParams; values it cannot take are 400s, never 500s."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmaas.engine.types import SamplingParams
from llmaas.openai.errors import OpenAIError
from llmaas.openai.protocol import ChatCompletionRequest, CompletionRequest
from tests.unit.openai_fakes import service

MESSAGES = [{"role": "user", "content": "hi"}]
CONTROLS: dict[str, Any] = {
    "presence_penalty": 0.5,
    "frequency_penalty": -1.5,
    "repetition_penalty": 1.3,
    "logit_bias": {"42": -100, "7": 2.5},
    "min_tokens": 2,
    "max_tokens": 3,
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 5,
    "seed": 11,
    "stop": ["\n"],
    "ignore_eos": True,
}


def _expected(**more: Any) -> dict[str, Any]:
    return {
        "presence_penalty": 0.5,
        "frequency_penalty": -1.5,
        "repetition_penalty": 1.3,
        "logit_bias": ((7, 2.5), (42, -100.0)),
        "min_tokens": 2,
        "max_tokens": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 11,
        "stop": ("\n",),
        "ignore_eos": True,
        **more,
    }


def test_completion_controls_reach_the_engine():
    async def main() -> None:
        svc, model, _, _ = service()
        await svc.completion(CompletionRequest.model_validate({"model": "gen", "prompt": "hi", **CONTROLS}))
        sampling = model.requests[0].sampling
        assert sampling.model_dump() == {
            **SamplingParams().model_dump(),
            **_expected(logprobs=None, prompt_logprobs=None),
        }

    asyncio.run(main())


def test_chat_controls_reach_the_engine_and_bookkeeping_fields_are_ignored():
    async def main() -> None:
        svc, model, _, _ = service()
        fields = {k: v for k, v in CONTROLS.items() if k != "max_tokens"}
        reply = await svc.chat(
            ChatCompletionRequest.model_validate(
                {
                    "model": "gen",
                    "messages": MESSAGES,
                    **fields,
                    "max_completion_tokens": 3,
                    "user": "u-1",
                    "store": True,
                    "metadata": {"team": "search"},
                    "logprobs": True,
                    "top_logprobs": 4,
                }
            )
        )
        assert reply.choices[0].message.content
        sampling = model.requests[0].sampling
        assert sampling.model_dump() == {
            **SamplingParams().model_dump(),
            **_expected(logprobs=4, prompt_logprobs=None),
        }

    asyncio.run(main())


def test_unset_controls_are_the_engines_defaults():
    async def main() -> None:
        svc, model, _, _ = service()
        await svc.completion(CompletionRequest(model="gen", prompt="hi", max_tokens=1))
        sampling = model.requests[0].sampling
        assert (sampling.presence_penalty, sampling.frequency_penalty, sampling.repetition_penalty) == (
            0.0,
            0.0,
            1.0,
        )
        assert (sampling.logit_bias, sampling.min_tokens, sampling.logprobs) == ((), 0, None)

    asyncio.run(main())


@pytest.mark.parametrize("key", ["100", "5000", "99999999999999999999"])
def test_a_logit_bias_token_outside_the_vocabulary_is_400(key: str):
    async def main() -> None:
        svc, model, _, _ = service()
        with pytest.raises(OpenAIError) as refused:
            await svc.completion(
                CompletionRequest.model_validate({"model": "gen", "prompt": "hi", "logit_bias": {key: 1}})
            )
        assert (refused.value.status, refused.value.param) == (400, "logit_bias")
        assert f"token {key}" in refused.value.message and "0..99" in refused.value.message
        assert model.requests == []
        await svc.completion(
            CompletionRequest.model_validate({"model": "gen", "prompt": "hi", "logit_bias": {"99": 100}})
        )
        assert model.requests[0].sampling.logit_bias == ((99, 100.0),)

    asyncio.run(main())


def test_min_tokens_above_the_default_maximum_is_400():
    async def main() -> None:
        svc, _, _, _ = service()  # the catalog's default max_tokens is 256; the context 64
        with pytest.raises(OpenAIError) as refused:
            await svc.completion(
                CompletionRequest.model_validate({"model": "gen", "prompt": "hi", "min_tokens": 63})
            )
        assert (refused.value.status, refused.value.param) == (400, "min_tokens")
        assert "62 tokens" in refused.value.message

    asyncio.run(main())


def test_a_value_the_engine_refuses_is_a_400_naming_it(monkeypatch: pytest.MonkeyPatch):
    def refused(
        self: CompletionRequest, defaults: Any, max_tokens: int, choice: int = 0, structured: Any = None
    ) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, repetition_penalty=-1.0)

    monkeypatch.setattr(CompletionRequest, "to_sampling_params", refused)

    async def main() -> None:
        svc, _, _, recorder = service()
        for max_tokens in (2, 0):  # max_tokens 0 (echo) converts apart
            with pytest.raises(OpenAIError) as caught:
                await svc.completion(
                    CompletionRequest(model="gen", prompt="hi", max_tokens=max_tokens, echo=True)
                )
            assert (caught.value.status, caught.value.param) == (400, "repetition_penalty")
        assert [r.status for r in recorder.records] == [400, 400]

    asyncio.run(main())
