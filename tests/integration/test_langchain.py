"""LangChain's `ChatOpenAI` (langchain-openai), unchanged, against the platform: a plain call and a
stream, structured output (`with_structured_output`, which sends `response_format: json_schema`) and
tool calling (`bind_tools`, which sends `tools`, `tool_choice` and `parallel_tool_calls`).

The model is the default chat model, SmolLM2-135M-Instruct (`smollm2` in the test catalog), greedy.
"""

from __future__ import annotations

from functools import reduce
from operator import add
from typing import Literal

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field, SecretStr

MODEL = "smollm2"


def _chat(base_url: str, max_tokens: int) -> ChatOpenAI:
    # NOTE: max_retries=0 so that an error fails the test instead of being retried.
    return ChatOpenAI(
        base_url=f"{base_url}/v1",
        api_key=SecretStr("unused"),
        model=MODEL,
        temperature=0,
        max_tokens=max_tokens,
        max_retries=0,
        timeout=120,
        stream_usage=True,
    )


@pytest.fixture(scope="module")
def chat(base_url: str) -> ChatOpenAI:
    return _chat(base_url, max_tokens=16)


@pytest.fixture(scope="module")
def chat_long(base_url: str) -> ChatOpenAI:
    """Room for a whole JSON object: a constrained reply cut by max_tokens would not parse."""
    return _chat(base_url, max_tokens=128)


class CityInfo(BaseModel):
    """A city and the country it is in."""

    city: str = Field(description="the city's name")
    country: str = Field(description="the country the city is in")


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="the city's name, e.g. Paris")
    unit: Literal["celsius", "fahrenheit"] = Field(description="the temperature unit")


class GetTime(BaseModel):
    """Get the current local time in a city."""

    city: str = Field(description="the city's name, e.g. Paris")


def test_invoke(chat: ChatOpenAI):
    reply = chat.invoke("What is the capital of France?")
    assert isinstance(reply, AIMessage)
    assert "Paris" in reply.text
    assert reply.response_metadata["finish_reason"] in {"stop", "length"}
    assert reply.response_metadata["model_name"] == MODEL
    assert reply.usage_metadata is not None
    assert 0 < reply.usage_metadata["output_tokens"] <= 16


def test_stream_matches_invoke(chat: ChatOpenAI):
    prompt = "Count: one, two,"
    chunks = list(chat.stream(prompt))
    assert len(chunks) > 1
    assert all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    streamed = reduce(add, chunks)
    assert streamed.text == chat.invoke(prompt).text  # greedy: the same text either way
    assert streamed.response_metadata["finish_reason"] == "length"
    assert streamed.usage_metadata is not None
    assert streamed.usage_metadata["output_tokens"] == 16  # stream_options.include_usage


def test_with_structured_output_json_schema(chat_long: ChatOpenAI):
    structured = chat_long.with_structured_output(CityInfo)  # method="json_schema" by default
    result = structured.invoke("Paris is the capital of France. Name the city and its country.")
    assert isinstance(result, CityInfo)
    assert result.city.strip()
    assert result.country.strip()


def test_bind_tools_required(chat_long: ChatOpenAI):
    model = chat_long.bind_tools([GetWeather], tool_choice="required", parallel_tool_calls=False)
    reply = model.invoke("What is the weather like in Paris today?")
    assert isinstance(reply, AIMessage)
    assert reply.tool_calls, reply
    assert len(reply.tool_calls) == 1  # parallel_tool_calls=False
    call = reply.tool_calls[0]
    assert call["name"] == "GetWeather"
    GetWeather.model_validate(call["args"])  # args valid for the tool's schema
    assert call["id"]


def test_bind_tools_named(chat_long: ChatOpenAI):
    model = chat_long.bind_tools([GetWeather, GetTime], tool_choice="GetTime")
    reply = model.invoke("What is the weather like in Paris today?")
    assert isinstance(reply, AIMessage)
    assert reply.tool_calls, reply
    assert {call["name"] for call in reply.tool_calls} == {"GetTime"}
    for call in reply.tool_calls:
        GetTime.model_validate(call["args"])
