"""Logprobs and echo as OpenAI shapes them, from a fake engine that reports them."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from llmaas.engine.types import SamplingParams, TokenLogprob
from llmaas.openai.errors import OpenAIError
from llmaas.openai.logprobs import FLOOR, clamp, completion_logprobs
from llmaas.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from tests.unit.openai_fakes import LogprobModel, service, token_str

MESSAGES = [{"role": "user", "content": "hi"}]


def _completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "gen", **fields})


def _chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "gen", "messages": MESSAGES, **fields})


def _joined(chunks: list[CompletionResponse], index: int = 0) -> tuple[str, CompletionLogprobs]:
    """One choice's streamed text and logprobs, put together."""
    text, joined = "", CompletionLogprobs()
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.index != index:
                continue
            text += choice.text
            assert choice.logprobs is not None, "every chunk of a choice carries its tokens' logprobs"
            for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                getattr(joined, name).extend(getattr(choice.logprobs, name))
    return text, joined


# ---- completions ---------------------------------------------------------------------------------


def test_completion_logprobs_have_openais_legacy_shape():
    async def main() -> None:
        svc, model, _, _ = service()
        reply = await svc.completion(_completion(prompt="hey", max_tokens=3, logprobs=2))
        assert model.requests[0].sampling.logprobs == 2
        assert model.requests[0].sampling.prompt_logprobs is None
        [choice] = reply.choices
        assert choice.text == "<60><61><62>"
        logprobs = choice.logprobs
        assert logprobs is not None
        assert logprobs.tokens == ["<60>", "<61>", "<62>"]
        assert logprobs.token_logprobs == [-0.25, -0.5, -0.75]
        assert logprobs.text_offset == [0, 4, 8]
        # the two most likely tokens, the chosen one among them
        assert logprobs.top_logprobs[0] == {"<60>": -0.25, "<61>": -1.25}
        body = reply.model_dump(mode="json")["choices"][0]["logprobs"]
        assert set(body) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}

    asyncio.run(main())


def test_logprobs_zero_gives_the_chosen_token_only():
    async def main() -> None:
        svc, _, _, _ = service()
        reply = await svc.completion(_completion(prompt="hey", max_tokens=2, logprobs=0))
        logprobs = reply.choices[0].logprobs
        assert logprobs is not None and logprobs.top_logprobs == [{"<60>": -0.25}, {"<61>": -0.5}]

    asyncio.run(main())


def test_without_logprobs_there_are_none():
    async def main() -> None:
        svc, model, tokenizer, _ = service()
        reply = await svc.completion(_completion(prompt="hey", max_tokens=2))
        assert reply.choices[0].logprobs is None
        assert model.requests[0].sampling.logprobs is None
        assert tokenizer.token_string_calls == []
        assert reply.model_dump(mode="json")["choices"][0]["logprobs"] is None

    asyncio.run(main())


def test_echo_returns_the_prompt_and_its_logprobs_first():
    async def main() -> None:
        svc, model, _, _ = service()
        reply = await svc.completion(_completion(prompt=[7, 8, 9], max_tokens=2, logprobs=1, echo=True))
        sampling = model.requests[0].sampling
        assert (sampling.logprobs, sampling.prompt_logprobs, sampling.max_tokens) == (1, 1, 2)
        [choice] = reply.choices
        # token-id prompts echo as their text
        assert choice.text == "<7><8><9><60><61>"
        logprobs = choice.logprobs
        assert logprobs is not None
        assert logprobs.tokens == ["<7>", "<8>", "<9>", "<60>", "<61>"]
        assert logprobs.token_logprobs == [None, -1.0, -1.1, -0.25, -0.5]
        assert logprobs.top_logprobs[0] is None
        assert logprobs.top_logprobs[1] == {"<8>": -1.0}
        assert logprobs.text_offset == [0, 3, 6, 9, 13]
        assert reply.usage is not None and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
            3,
            2,
        )

    asyncio.run(main())


def test_echo_of_a_text_prompt_is_that_text():
    async def main() -> None:
        svc, _, _, _ = service()
        reply = await svc.completion(_completion(prompt=["hi", "yo"], max_tokens=1, echo=True))
        assert [c.text for c in reply.choices] == ["hi<60>", "yo<60>"]
        assert reply.choices[0].logprobs is None

    asyncio.run(main())


async def _only(
    svc: Any, request: CompletionRequest
) -> list[tuple[str, CompletionLogprobs | None, str | None]]:
    """Each choice's text, logprobs and finish reason, streamed or not."""
    if not request.stream:
        return [(c.text, c.logprobs, c.finish_reason) for c in (await svc.completion(request)).choices]
    chunks = [c async for c in await svc.completion_stream(request)]
    out: list[tuple[str, CompletionLogprobs | None, str | None]] = []
    for index in sorted({c.choices[0].index for c in chunks}):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        if request.logprobs is None:
            out.append(("".join(c.text for c in mine), None, mine[-1].finish_reason))
        else:
            text, logprobs = _joined(chunks, index)
            out.append((text, logprobs, mine[-1].finish_reason))
    return out


@pytest.mark.parametrize("stream", [False, True])
def test_echo_with_max_tokens_zero_scores_the_prompt_and_generates_nothing(stream: bool):
    async def main() -> None:
        svc, model, _, recorder = service()
        request = _completion(prompt=[7, 8], max_tokens=0, logprobs=0, echo=True, n=2, stream=stream)
        choices = await _only(svc, request)
        assert {(r.sampling.max_tokens, r.sampling.prompt_logprobs) for r in model.requests} == {(0, 0)}
        assert len(choices) == 2
        for text, logprobs, finish in choices:
            assert (text, finish) == ("<7><8>", "length")
            assert logprobs is not None
            assert logprobs.tokens == ["<7>", "<8>"]
            assert logprobs.token_logprobs == [None, -1.0]
            assert logprobs.top_logprobs == [None, {"<8>": -1.0}]
        assert recorder.records[-1].generation_tokens == 0
        if not stream:
            reply = await svc.completion(request)
            assert reply.usage is not None
            assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (2, 0)

    asyncio.run(main())


@pytest.mark.parametrize("stream", [False, True])
def test_echo_with_max_tokens_zero_and_no_logprobs_drops_the_one_token_the_engine_makes(stream: bool):
    async def main() -> None:
        svc, model, _, recorder = service()
        request = _completion(prompt="hey", max_tokens=0, echo=True, stream=stream)
        # NOTE: the engine takes max_tokens 0 only with prompt logprobs: it makes one token, dropped
        [(text, logprobs, finish)] = await _only(svc, request)
        assert model.requests[0].sampling.max_tokens == 1
        assert (text, logprobs, finish) == ("hey", None, "length")
        assert recorder.records[-1].generation_tokens == 0

    asyncio.run(main())


def test_echo_with_max_tokens_zero_scores_a_prompt_as_long_as_the_context():
    async def main() -> None:
        svc, model, _, _ = service()  # a 64-token context
        reply = await svc.completion(_completion(prompt=[5] * 64, max_tokens=0, logprobs=0, echo=True))
        assert model.requests[0].sampling.max_tokens == 0
        assert reply.choices[0].logprobs is not None and len(reply.choices[0].logprobs.tokens) == 64
        with pytest.raises(OpenAIError) as longer:
            await svc.completion(_completion(prompt=[5] * 65, max_tokens=0, logprobs=0, echo=True))
        assert longer.value.param == "prompt" and "65 tokens, which is longer" in longer.value.message
        with pytest.raises(OpenAIError) as generating:  # without logprobs the engine makes one token
            await svc.completion(_completion(prompt=[5] * 64, max_tokens=0, echo=True))
        assert "leaves no room" in generating.value.message

    asyncio.run(main())


@pytest.fixture
def engine_needs_one_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the engine's SamplingParams never took max_tokens 0."""
    original = CompletionRequest.to_sampling_params

    def to_sampling_params(
        self: CompletionRequest, defaults: Any, max_tokens: int, choice: int = 0, structured: Any = None
    ) -> Any:
        if max_tokens == 0:
            SamplingParams(max_tokens=-1)  # raises the engine's ValidationError
        return original(self, defaults, max_tokens, choice, structured)

    monkeypatch.setattr(CompletionRequest, "to_sampling_params", to_sampling_params)


@pytest.mark.usefixtures("engine_needs_one_token")
@pytest.mark.parametrize("stream", [False, True])
def test_echo_with_max_tokens_zero_where_the_engine_needs_a_token(stream: bool):
    async def main() -> None:
        svc, model, _, _ = service()
        request = _completion(prompt=[7, 8, 9], max_tokens=0, logprobs=1, echo=True, stream=stream)
        [(text, logprobs, finish)] = await _only(svc, request)
        assert model.requests[0].sampling.max_tokens == 1
        assert (text, finish) == ("<7><8><9>", "length")
        assert logprobs is not None
        assert logprobs.tokens == ["<7>", "<8>", "<9>"]
        assert logprobs.token_logprobs == [None, -1.0, -1.1]

    asyncio.run(main())


def test_streamed_completion_logprobs_add_up_to_the_unstreamed_ones():
    async def main() -> None:
        svc, _, _, _ = service()
        fields = {"prompt": [7, 8], "max_tokens": 4, "logprobs": 2, "echo": True, "n": 2}
        whole = await svc.completion(_completion(**fields))
        stream = await svc.completion_stream(_completion(**fields, stream=True))
        chunks = [c async for c in stream]
        for index in (0, 1):
            text, logprobs = _joined(chunks, index)
            assert text == whole.choices[index].text
            assert logprobs == whole.choices[index].logprobs
        # the echo (and the prompt's logprobs) come with each choice's first chunk
        first = next(c.choices[0] for c in chunks if c.choices[0].index == 0)
        assert first.text.startswith("<7><8>")
        assert first.logprobs is not None and first.logprobs.token_logprobs[:2] == [None, -1.0]

    asyncio.run(main())


def test_tokens_whose_text_is_held_back_send_their_logprobs_with_the_text():
    async def main() -> None:
        svc, _, _, _ = service(LogprobModel(hold=True))
        stream = await svc.completion_stream(_completion(prompt="hi", max_tokens=4, logprobs=0, stream=True))
        chunks = [c async for c in stream]
        for chunk in chunks:
            [choice] = chunk.choices
            assert choice.logprobs is not None
            assert "".join(choice.logprobs.tokens) == choice.text
        assert [len(c.choices[0].logprobs.tokens) for c in chunks] == [2, 2]  # type: ignore[union-attr]
        _, logprobs = _joined(chunks)
        assert logprobs.text_offset == [0, 4, 8, 12]

    asyncio.run(main())


def test_an_engine_without_logprobs_fails_the_request_rather_than_dropping_them():
    async def main() -> None:
        svc, _, _, _ = service(LogprobModel(no_logprobs=True))
        with pytest.raises(OpenAIError) as missing:
            await svc.completion(_completion(prompt="hi", max_tokens=2, logprobs=1))
        assert missing.value.status == 500 and "does not report the logprobs" in missing.value.message
        with pytest.raises(OpenAIError) as prompt:
            await svc.completion(_completion(prompt="hi", max_tokens=0, logprobs=1, echo=True))
        assert prompt.value.status == 500 and "prompt logprobs" in prompt.value.message
        reply = await svc.completion(_completion(prompt="hi", max_tokens=1, echo=True))
        assert reply.choices[0].text == "hi<60>", "echo without logprobs needs none"

    asyncio.run(main())


def test_token_strings_are_asked_once_per_token():
    async def main() -> None:
        svc, _, tokenizer, _ = service()
        await svc.completion(_completion(prompt="hi", max_tokens=2, logprobs=1))
        await svc.completion(_completion(prompt="hi", max_tokens=3, logprobs=1))
        asked = [t for call in tokenizer.token_string_calls for t in call]
        assert sorted(asked) == [60, 61, 62], "known tokens are not asked again"

    asyncio.run(main())


# ---- chat ----------------------------------------------------------------------------------------


def test_chat_logprobs_have_openais_content_shape():
    async def main() -> None:
        svc, model, _, _ = service()
        reply = await svc.chat(_chat(logprobs=True, top_logprobs=2, max_tokens=2))
        assert model.requests[0].sampling.logprobs == 2
        logprobs = reply.choices[0].logprobs
        assert logprobs is not None and logprobs.content is not None
        first = logprobs.content[0]
        assert (first.token, first.logprob, first.bytes) == ("<60>", -0.25, list(b"<60>"))
        assert [(t.token, t.logprob) for t in first.top_logprobs] == [("<60>", -0.25), ("<61>", -1.25)]
        assert [t.token for t in logprobs.content] == ["<60>", "<61>"]
        body = reply.model_dump(mode="json")["choices"][0]["logprobs"]
        assert body["refusal"] is None
        assert set(body["content"][0]) == {"token", "logprob", "bytes", "top_logprobs"}
        assert set(body["content"][0]["top_logprobs"][0]) == {"token", "logprob", "bytes"}

    asyncio.run(main())


def test_chat_logprobs_without_top_logprobs_list_no_alternatives():
    async def main() -> None:
        svc, model, _, _ = service()
        reply = await svc.chat(_chat(logprobs=True, max_tokens=1))
        assert model.requests[0].sampling.logprobs == 0
        content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
        assert content is not None and content[0].top_logprobs == []
        plain = await svc.chat(_chat(max_tokens=1, logprobs=False))
        assert plain.choices[0].logprobs is None and model.requests[-1].sampling.logprobs is None

    asyncio.run(main())


@pytest.mark.parametrize("hold", [False, True])
def test_streamed_chat_chunks_carry_their_deltas_logprobs(hold: bool):
    async def main() -> None:
        svc, _, _, _ = service(LogprobModel(hold=hold))
        stream = await svc.chat_stream(_chat(logprobs=True, top_logprobs=1, max_tokens=4, stream=True, n=2))
        chunks: list[ChatCompletionChunk] = [c async for c in stream]
        role = [c for c in chunks if c.choices[0].delta.role == "assistant"]
        assert len(role) == 2 and all(c.choices[0].logprobs is None for c in role)
        tokens: dict[int, list[str]] = {0: [], 1: []}
        for chunk in chunks[2:]:
            [choice] = chunk.choices
            assert choice.logprobs is not None and choice.logprobs.content is not None
            got = [t.token for t in choice.logprobs.content]
            assert "".join(got) == (choice.delta.content or "")
            assert all(len(t.top_logprobs) == 1 for t in choice.logprobs.content)
            tokens[choice.index] += got
        assert tokens[0] == tokens[1] == ["<60>", "<61>", "<62>", "<63>"]

    asyncio.run(main())


# ---- values JSON can carry ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [(-0.5, -0.5), (-1e6, FLOOR), (-math.inf, FLOOR), (math.nan, FLOOR), (0.0, 0.0)],
)
def test_logprobs_are_clamped_as_openai_does(value: float, shown: float):
    assert clamp(value) == shown


def test_two_alternatives_with_the_same_text_keep_the_larger_logprob():
    entry = TokenLogprob(token_id=1, logprob=-2.0, top=[(2, -0.5), (3, -0.7), (1, -2.0)])
    strings = {1: "a", 2: "b", 3: "b"}
    logprobs, end = completion_logprobs([1], [entry], strings, top=3, offset=5)
    assert logprobs.top_logprobs == [{"b": -0.5, "a": -2.0}]
    assert (logprobs.text_offset, end) == ([5], 6)
    token = token_str(1)
    assert token == "<1>"
