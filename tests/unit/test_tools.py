"""Tool calling in the OpenAI layer: prompts, constraints, parsing (whole and streamed), responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest

from llmaas.engine.types import FinishReason, GenerationChunk, GenerationRequest, ModelInfo
from llmaas.openai import tools as tool_calling
from llmaas.openai.protocol import ChatCompletionRequest
from tests.unit.openai_fakes import service

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "gen", "messages": [{"role": "user", "content": "Weather in Paris?"}], **fields}
    return ChatCompletionRequest.model_validate(body)


# ---- prompts --------------------------------------------------------------------------------------
def test_platform_prompt_carries_the_tools_and_history_as_text():
    request = chat(
        tools=[WEATHER, TIME],
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        ],
    )
    messages, tools = tool_calling.template_messages(request, native_tools=False)
    assert tools is None
    assert messages[0]["role"] == "system"
    assert messages[0]["content"].startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in messages[0]["content"]
    assert '"name": "get_time"' in messages[0]["content"]
    assert messages[2] == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    }
    assert messages[3] == {"role": "user", "content": "<tool_response>\n18C, sunny\n</tool_response>"}


def test_native_templates_get_tools_and_calls_as_hugging_face_takes_them():
    request = chat(
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        ],
    )
    messages, tools = tool_calling.template_messages(request, native_tools=True)
    assert tools == [WEATHER]
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert messages[2] == {"role": "tool", "content": "18C", "tool_call_id": "call_1"}


def test_no_tool_prompt_without_tools_or_with_choice_none():
    assert tool_calling.template_messages(chat(), native_tools=False)[0] == [
        {"role": "user", "content": "Weather in Paris?"}
    ]
    messages, _ = tool_calling.template_messages(
        chat(tools=[WEATHER], tool_choice="none"), native_tools=False
    )
    assert messages == [{"role": "user", "content": "Weather in Paris?"}]


# ---- constraints ----------------------------------------------------------------------------------
def test_required_constrains_to_an_array_of_valid_calls():
    constraint = tool_calling.call_constraint(chat(tools=[WEATHER, TIME], tool_choice="required"))
    assert constraint is not None and constraint.kind == "json" and constraint.param == "tools"
    schema = json.loads(constraint.json_schema or "")
    jsonschema.validate([{"name": "get_weather", "arguments": {"city": "Paris"}}], schema)
    jsonschema.validate(
        [{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {}}], schema
    )
    for bad in ([], [{"name": "get_weather", "arguments": {}}], [{"name": "nope", "arguments": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_no_parallel_calls_allows_one_item():
    constraint = tool_calling.call_constraint(
        chat(tools=[TIME], tool_choice="required", parallel_tool_calls=False)
    )
    assert constraint is not None
    schema = json.loads(constraint.json_schema or "")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_time", "arguments": {}}] * 2, schema)


def test_named_choice_constrains_to_its_arguments():
    named = {"type": "function", "function": {"name": "get_weather"}}
    constraint = tool_calling.call_constraint(chat(tools=[WEATHER, TIME], tool_choice=named))
    assert constraint is not None
    assert json.loads(constraint.json_schema or "") == WEATHER["function"]["parameters"]  # type: ignore[index]
    assert tool_calling.call_constraint(chat(tools=[WEATHER])) is None  # auto is free


# ---- parsing --------------------------------------------------------------------------------------
def test_auto_parses_hermes_blocks_and_keeps_the_rest():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = tool_calling.parse_auto(text, ["get_weather"])
    assert content == "Let me check."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert calls[0].id.startswith("call_")


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "get_weather"',
        "no call at all",
    ],
)
def test_auto_keeps_what_does_not_parse_as_content(text: str):
    assert tool_calling.parse_auto(text, ["get_weather"]) == (text, [])


def test_constrained_replies_parse_and_a_cut_one_does_not():
    request = chat(tools=[WEATHER, TIME], tool_choice="required")
    calls = tool_calling.parse_constrained(
        request, '[{"name":"get_weather","arguments":{"city":"Paris"}},{"name":"get_time","arguments":{}}]'
    )
    assert calls is not None and [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2
    assert tool_calling.parse_constrained(request, '[{"name":"get_weather","argu') is None


# ---- streaming ------------------------------------------------------------------------------------
def _stream(request: ChatCompletionRequest, pieces: list[str]) -> tuple[str, dict[int, dict[str, str]], int]:
    stream = tool_calling.ToolStream(request)
    content, calls = "", dict[int, dict[str, str]]()
    for piece in [*pieces, None]:
        text, deltas = stream.push(piece) if piece is not None else stream.finish()
        content += text
        for d in deltas:
            call = calls.setdefault(d.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += d.id or ""
            call["name"] += d.function.name or ""
            call["arguments"] += d.function.arguments or ""
    return content, calls, stream.calls


def test_auto_stream_holds_a_block_back_until_it_closes():
    text = 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    content, calls, count = _stream(chat(tools=[WEATHER]), pieces)
    assert content == "Sure. "
    assert count == 1
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Oslo"}
    assert calls[0]["id"].startswith("call_")


def test_auto_stream_gives_back_what_only_looked_like_a_call():
    content, calls, _ = _stream(chat(tools=[WEATHER]), ["a <tool", "_cal", "l> b", " <to"])
    assert content == "a <tool_call> b <to"
    assert calls == {}


def test_named_stream_sends_the_header_then_arguments_as_they_come():
    named = {"type": "function", "function": {"name": "get_weather"}}
    content, calls, count = _stream(chat(tools=[WEATHER], tool_choice=named), ['{"ci', 'ty": "Rome"}'])
    assert content == "" and count == 1
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Rome"}


def test_required_stream_sends_calls_at_the_end():
    _, calls, count = _stream(
        chat(tools=[TIME], tool_choice="required"), ['[{"name":"get_time",', '"arguments":{}}]']
    )
    assert count == 1 and calls[0]["name"] == "get_time" and calls[0]["arguments"] == "{}"


# ---- the service ----------------------------------------------------------------------------------
class ScriptedModel:
    """Answers every request with ``reply``, in pieces of 4 characters, and records the requests."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.requests: list[GenerationRequest] = []

    async def info(self) -> ModelInfo:
        return ModelInfo(model_id="gen", task="generate", max_context_length=4096, vocab_size=100)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        pieces = (
            [self.reply[i : i + 4] for i in range(0, len(self.reply), 4)] if request.stream else [self.reply]
        )
        for i, piece in enumerate(pieces):
            await asyncio.sleep(0)
            last = i == len(pieces) - 1
            yield GenerationChunk(
                request_id=request.request_id,
                text=piece,
                token_ids=[1],
                num_prompt_tokens=len(request.prompt_token_ids),
                num_generated_tokens=i + 1,
                finish_reason=FinishReason.STOP if last else None,
            )

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        raise AssertionError("a generation model")


def test_required_tool_choice_answers_with_calls_and_constrains_the_engine():
    reply = '[{"name":"get_weather","arguments":{"city":"Paris"}}]'
    model = ScriptedModel(reply)
    svc, _, tokenizer, _ = service(model)

    async def main() -> None:
        response = await svc.chat(chat(tools=[WEATHER], tool_choice="required"))
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.tool_calls is not None
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Paris"}
        structured = model.requests[0].sampling.structured
        assert structured is not None and structured.param == "tools"
        rendered, tools = tokenizer.rendered
        assert tools is None and "<tools>" in rendered[0]["content"]  # the fake's template has no tools

    asyncio.run(main())


def test_auto_streams_content_and_tool_call_deltas():
    reply = 'Checking.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    svc, _, _, _ = service(ScriptedModel(reply))

    async def main() -> None:
        chunks = [c async for c in await svc.chat_stream(chat(tools=[WEATHER], stream=True))]
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
        assert content == "Checking."
        assert len(deltas) == 1 and deltas[0].function.name == "get_weather"
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

    asyncio.run(main())


def test_response_format_reaches_the_engine_as_a_constraint():
    model = ScriptedModel('{"a": 1}')
    svc, _, _, _ = service(model)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}

    async def main() -> None:
        fmt = {"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": True}}
        response = await svc.chat(chat(response_format=fmt))
        assert response.choices[0].message.content == '{"a": 1}'
        structured = model.requests[0].sampling.structured
        assert structured is not None and json.loads(structured.json_schema or "") == schema
        await svc.chat(chat(response_format={"type": "json_object"}))
        assert model.requests[1].sampling.structured is not None
        assert model.requests[1].sampling.structured.json_schema is None

    asyncio.run(main())


def test_stop_token_ids_reach_the_engine_and_are_checked_against_the_vocabulary():
    model = ScriptedModel("done")
    svc, _, _, _ = service(model)

    async def main() -> None:
        await svc.chat(chat(stop_token_ids=[5, 7]))
        assert model.requests[0].sampling.stop_token_ids == (5, 7)
        from llmaas.openai.errors import OpenAIError

        with pytest.raises(OpenAIError) as refused:
            await svc.chat(chat(stop_token_ids=[100]))  # the fake's vocabulary is 0..99
        assert refused.value.param == "stop_token_ids"

    asyncio.run(main())


def test_prompt_tokens_the_prefix_cache_held_are_reported_once_per_prompt():
    class Cached(ScriptedModel):
        async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
            async for chunk in super().generate(request):
                yield chunk.model_copy(update={"num_cached_tokens": 3})

    svc, _, _, _ = service(Cached("ok"))

    async def main() -> None:
        response = await svc.chat(chat(n=2))
        assert response.usage is not None and response.usage.prompt_tokens_details is not None
        assert response.usage.prompt_tokens_details.cached_tokens == 3  # one prompt, two choices
        chunks = [
            c async for c in await svc.chat_stream(chat(stream=True, stream_options={"include_usage": True}))
        ]
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 3

    asyncio.run(main())


def test_echoed_token_ids_outside_the_vocabulary_are_a_400_before_decoding():
    from llmaas.openai.errors import OpenAIError
    from llmaas.openai.protocol import CompletionRequest

    svc, _, _, _ = service(ScriptedModel("x"))
    body = {"model": "gen", "prompt": [[1, 2], [3, 2**70]], "echo": True, "max_tokens": 1}

    async def main() -> None:
        with pytest.raises(OpenAIError) as refused:
            await svc.completion(CompletionRequest.model_validate(body))
        assert refused.value.status == 400 and refused.value.param == "prompt[1]"

    asyncio.run(main())


def test_a_template_with_a_response_parser_parses_auto_replies_whole_and_streamed():
    """transformers' parse_response, where the tokenizer ships a response template."""
    reply = "[TOOL]get_weather(Oslo)"
    svc, _, tokenizer, _ = service(ScriptedModel(reply))
    seen: list[tuple[list[int], str]] = []

    async def supports_tools(model_id: str) -> bool:
        return True

    async def parses_responses(model_id: str) -> bool:
        return True

    async def parse_response(
        model_id: str, prompt_ids: list[int], text: str, tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        seen.append((prompt_ids, text))
        assert tools == [WEATHER]
        call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
        return {"role": "assistant", "content": "", "tool_calls": [call]}

    tokenizer.supports_tools, tokenizer.parses_responses = supports_tools, parses_responses  # type: ignore[method-assign]
    tokenizer.parse_response = parse_response  # type: ignore[method-assign]

    async def main() -> None:
        response = await svc.chat(chat(tools=[WEATHER]))
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert choice.message.tool_calls is not None
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Oslo"}
        chunks = [c async for c in await svc.chat_stream(chat(tools=[WEATHER], stream=True))]
        deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
        assert [d.function.name for d in deltas] == ["get_weather"]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        assert [text for _, text in seen] == [reply, reply]  # the whole reply, streamed or not

    asyncio.run(main())


def test_the_pool_parses_replies_only_with_a_response_template(chat_model_path: Any):
    from llmaas.tokenization import TokenizerPool

    pool = TokenizerPool({"chat": chat_model_path})
    assert not pool.parses_responses("chat")
    assert pool.parse_response("chat", [1, 2], "hello", None) == {"role": "assistant", "content": "hello"}
