"""Batched prompts in /v1/completions: prompt-major choices, summed usage, per-prompt checks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmaas.openai.errors import OpenAIError
from llmaas.openai.protocol import CompletionRequest, CompletionResponse
from tests.unit.openai_fakes import FIRST_GENERATED, service, token_str


def _request(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "gen", **fields})


def test_choices_are_prompt_major_and_usage_sums_every_prompt():
    async def main() -> None:
        svc, model, _, recorder = service()
        reply = await svc.completion(_request(prompt=["ab", "cde", "f"], n=2, max_tokens=2, seed=7))
        assert [c.index for c in reply.choices] == list(range(6))
        # choice index = prompt * n + choice: the engine requests go out in that order
        assert [len(r.prompt_token_ids) for r in model.requests] == [2, 2, 3, 3, 1, 1]
        # choice c of every prompt has seed + c, as it would alone
        assert [r.sampling.seed for r in model.requests] == [7, 8] * 3
        assert reply.choices[0].text == token_str(FIRST_GENERATED) + token_str(FIRST_GENERATED + 1)
        assert reply.usage is not None
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2 + 3 + 1, 6 * 2)
        assert reply.usage.total_tokens == 6 + 12
        [record] = recorder.records
        assert (record.prompt_tokens, record.generation_tokens) == (6, 12)

    asyncio.run(main())


@pytest.mark.parametrize(
    "prompt",
    [["ab", "cd"], [[1, 2], [3, 4]], [[5, 6, 7]]],
)
def test_token_id_lists_and_string_lists_are_both_prompts(prompt: Any):
    async def main() -> None:
        svc, model, _, _ = service()
        reply = await svc.completion(_request(prompt=prompt, max_tokens=1))
        assert len(reply.choices) == len(prompt)
        if isinstance(prompt[0], list):
            assert [r.prompt_token_ids for r in model.requests] == prompt

    asyncio.run(main())


def test_streamed_batches_carry_each_choice_index_and_summed_usage():
    async def main() -> None:
        svc, _, _, _ = service()
        stream = await svc.completion_stream(
            _request(
                prompt=["ab", "c"],
                n=2,
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        chunks: list[CompletionResponse] = [c async for c in stream]
        texts: dict[int, str] = {}
        finished: list[int] = []
        for chunk in chunks[:-1]:
            [choice] = chunk.choices
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished.append(choice.index)
        assert sorted(texts) == sorted(finished) == [0, 1, 2, 3]
        assert all(t == "<60><61><62>" for t in texts.values())
        usage = chunks[-1].usage
        assert usage is not None and not chunks[-1].choices
        assert (usage.prompt_tokens, usage.completion_tokens) == (3, 12)

    asyncio.run(main())


def test_every_prompt_is_checked_against_the_context_and_named_by_index():
    async def main() -> None:
        svc, model, _, _ = service()
        with pytest.raises(OpenAIError) as long:
            await svc.completion(_request(prompt=["ok", "x" * 64, "fine"]))
        assert (long.value.status, long.value.param, long.value.code) == (
            400,
            "prompt[1]",
            "context_length_exceeded",
        )
        assert "prompt[1] is 64 tokens" in long.value.message
        with pytest.raises(OpenAIError) as over:
            await svc.completion(_request(prompt=[[1] * 10, [2] * 60], max_tokens=10))
        assert over.value.param == "max_tokens" and "60 in the prompt[1]" in over.value.message
        with pytest.raises(OpenAIError) as vocab:
            await svc.completion(_request(prompt=[[1], [2, 100]]))
        assert vocab.value.param == "prompt[1]" and "outside the vocabulary" in vocab.value.message
        with pytest.raises(OpenAIError) as alone:
            await svc.completion(_request(prompt=[[5] * 64]))
        assert alone.value.param == "prompt", "a single prompt is named without an index"
        assert model.requests == [], "nothing reached the model"

    asyncio.run(main())


def test_n_times_prompts_beyond_the_models_capacity_is_400_naming_the_field():
    async def main() -> None:
        # 4 running (2 x max_batch_size) + 4 queued: 8 sequences at most
        svc, model, _, _ = service(max_batch_size=2, max_queued_requests=4)
        with pytest.raises(OpenAIError) as prompts:
            await svc.completion(_request(prompt=["a", "b", "c"], n=3, max_tokens=1))
        assert (prompts.value.status, prompts.value.param) == (400, "prompt")
        assert "3 prompts x n=3" in prompts.value.message and "(8:" in prompts.value.message
        with pytest.raises(OpenAIError) as choices:
            await svc.completion(_request(prompt=["a", "b"], n=9, max_tokens=1))
        assert choices.value.param == "n"
        with pytest.raises(OpenAIError) as many:
            await svc.completion(_request(prompt=[[1]] * 9, max_tokens=1))
        assert many.value.param == "prompt"
        assert model.requests == []
        reply = await svc.completion(_request(prompt=["a", "b"], n=4, max_tokens=1))
        assert len(reply.choices) == 8

    asyncio.run(main())


def test_a_text_prompt_that_encodes_to_nothing_is_named():
    class Empty:
        async def encode(self, model_id: str, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
            return [[1] if t == "a" else [] for t in texts]

    async def main() -> None:
        svc, _, _, _ = service()
        svc.tokenizer = Empty()  # type: ignore[assignment]
        with pytest.raises(OpenAIError) as empty:
            await svc.completion(_request(prompt=["a", "b"]))
        assert empty.value.param == "prompt[1]"

    asyncio.run(main())
