"""Reading a JSON body without a server: the size limit, strict JSON, and validation into a request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from llmaas.openai.body import MAX_BODY_BYTES, parse, parse_json, read_body, read_json
from llmaas.openai.errors import OpenAIError
from llmaas.openai.protocol import CompletionRequest


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _refusal(body: bytes) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        asyncio.run(read_json(_chunks(body)))
    return caught.value


def test_a_body_in_chunks_is_joined_and_parsed():
    assert asyncio.run(read_json(_chunks(b'{"model": ', b'"m", "n": 2}'))) == {"model": "m", "n": 2}


def test_past_the_limit_is_413_after_reading_it_all():
    seen: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            seen.append(i)
            yield b"x" * 4

    with pytest.raises(OpenAIError) as caught:
        asyncio.run(read_body(chunks(), limit=10))
    assert (caught.value.status, caught.value.code) == (413, "too_large")
    assert seen == [0, 1, 2, 3, 4], "the rest is read (and dropped), so the client gets its answer"
    assert "the limit is 10 bytes" in caught.value.message
    big = _refusal(b" " * (MAX_BODY_BYTES + 1))
    assert big.status == 413 and big.message == (
        f"the request body is {MAX_BODY_BYTES + 1} bytes; the limit is {MAX_BODY_BYTES} bytes (8 MiB)"
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "the request body is empty: send a JSON object"),
        (b"  \n", "the request body is empty"),
        (b"{not json", "the request body is not valid JSON"),
        (b"\xff\xfe\xfa", "not valid JSON"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": Infinity}', "Infinity is not a JSON number"),
        (b'{"a": "\\ud800"}', "unpaired UTF-16 surrogate escape (\\ud800)"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ],
)
def test_what_no_strict_json_parser_accepts_is_400_invalid_json(body: bytes, says: str):
    err = _refusal(body)
    assert (err.status, err.code, err.type) == (400, "invalid_json", "invalid_request_error")
    assert says in err.message


def test_a_surrogate_pair_is_fine():
    assert parse_json(b'{"a": "\\ud83e\\udd99"}') == {"a": "\U0001f999"}


def test_parse_wants_an_object_and_names_the_bad_field():
    with pytest.raises(OpenAIError) as caught:
        parse(CompletionRequest, [1, 2])
    assert caught.value.message == "the request body must be a JSON object, not an array"
    assert caught.value.code == "invalid_json"
    with pytest.raises(OpenAIError) as caught:
        parse(CompletionRequest, {"model": "m", "prompt": "x", "temperature": 9})
    assert (caught.value.status, caught.value.param) == (400, "temperature")
    assert parse(CompletionRequest, {"model": "m", "prompt": "x"}).model == "m"
