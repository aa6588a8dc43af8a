"""Structured output and tools through the official `openai` client, on the real default chat model.

SmolLM2-135M-Instruct (`smollm2`) is tiny: what these tests check is that its replies are valid
for their schemas by construction (constrained decoding), not that they are good answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Annotated, Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "smollm2"


class CityInfo(BaseModel):
    # NOTE: bounded strings and lists: a 135M model may ramble inside a string; the bounds are part
    # of the schema, so the grammar holds the reply to them
    city: str = Field(max_length=24, description="the city's name")
    country: str = Field(max_length=24)
    is_capital: bool
    languages: list[Annotated[str, Field(max_length=16)]] = Field(max_length=3)


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
ASK: Any = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_parse_returns_an_instance_of_the_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=CityInfo,
        temperature=0,
        max_tokens=200,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(choice.message.parsed, CityInfo)


def test_streamed_json_schema_is_valid_too(client: openai.OpenAI) -> None:
    schema = CityInfo.model_json_schema()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Rome as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
        temperature=0,
        max_tokens=200,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), schema)


def test_json_object_is_an_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=100,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("parallel", [True, False])
def test_required_tool_calls_have_valid_arguments(client: openai.OpenAI, parallel: bool) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice="required",
        parallel_tool_calls=parallel,
        temperature=0,
        max_tokens=120,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls or []
    assert calls and (parallel or len(calls) == 1)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER_TOOL, TIME_TOOL)}
    for call in calls:
        assert call.type == "function" and call.id
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_named_tool_call_streams_as_tool_call_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            assert delta.index == 0
            name += (delta.function.name or "") if delta.function else ""
            arguments += (delta.function.arguments or "") if delta.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert finish == "tool_calls"
    jsonschema.validate(json.loads(arguments), WEATHER_TOOL["function"]["parameters"])


def test_a_conversation_with_tool_results_is_answered(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            *ASK,
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city": "Paris", "unit": "celsius"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
        ],
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=30,
    )
    message = completion.choices[0].message
    assert message.content or message.tool_calls


def test_regex_and_choice_extensions(client: openai.OpenAI) -> None:
    regex = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a US phone number."}],
        extra_body={"structured_outputs": {"regex": r"\(\d{3}\) \d{3}-\d{4}"}},
        temperature=0,
        max_tokens=20,
    )
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", regex.choices[0].message.content or "")
    choice = client.completions.create(
        model=MODEL,
        prompt="Is the sky blue? Answer:",
        extra_body={"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
        temperature=0,
        max_tokens=5,
    )
    assert choice.choices[0].text in {"yes", "no", "maybe"}


# ---- hostile schemas --------------------------------------------------------------------------------
def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "h", "schema": schema}}}


#: Constraints built to be expensive, each refused: by the API's size bound, or by the engine's
#: compiler (off the step loop) within its bounds.
HOSTILE: list[dict[str, Any]] = [
    _schema({"type": "string", "enum": [f"value-{i}" for i in range(50_000)]}),  # beyond the size bound
    _schema(_nested(100)),  # deeper than the engine allows
    {"structured_outputs": {"regex": "(a{1000}){1000}"}},  # a lexer that explodes once text starts
]


def test_hostile_schemas_are_refused_and_a_running_stream_keeps_its_pace(base_url: str) -> None:
    """While hostile schemas are refused, a stream already running keeps stepping: its largest gap
    between tokens stays within a small multiple of its median (they compile off the step loop)."""

    async def run() -> tuple[list[float], list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            gaps: list[float] = []

            async def stream() -> None:
                body = {
                    "model": MODEL,
                    "prompt": "Once upon a time",
                    "max_tokens": 48,
                    "temperature": 0,
                    "ignore_eos": True,
                    "stream": True,
                }
                last = None
                async with http.stream("POST", "/v1/completions", json=body) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data: {"):
                            now = time.perf_counter()
                            if last is not None:
                                gaps.append(now - last)
                            last = now

            async def hostile() -> list[httpx.Response]:
                await asyncio.sleep(0.5)
                out = []
                for constraint in HOSTILE:
                    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **constraint}
                    out.append(await http.post("/v1/chat/completions", json=body))
                return out

            _, refused = await asyncio.gather(stream(), hostile())
            return gaps, refused

    gaps, refused = asyncio.run(run())
    for response in refused:
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"].startswith(("response_format", "structured_outputs"))
    assert len(gaps) >= 40
    ordered = sorted(gaps)
    assert ordered[-1] <= 10 * ordered[len(ordered) // 2] + 0.5, gaps
