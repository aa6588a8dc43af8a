"""Bad input never gets a 5xx, a hang or a traceback; every error is in OpenAI's shape.

Two halves:

- schemathesis generates requests (schema-valid and schema-invalid) from ``/openapi.json``,
  which documents the request bodies from the pydantic models, and checks every response;
- a curated list of bad inputs, each with its status and the field or problem its message
  names (``test_errors.py`` holds the common cases; these extend it).

Unknown fields are refused with a 400 naming them, top level and inside messages, as OpenAI
does ("Unrecognized request argument supplied: ..."); values of the wrong JSON type are too
(``"5"`` or ``true`` for an integer): OpenAI does not coerce them either. An integer is what
JSON Schema says it is, so ``2.0`` is one (the documented schema and the parser agree).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

#: The fuzzer names one served model per route (others are 404s, which it tries too): tiny-llama,
#: whose 128-token context caps what any request can generate, and minilm for embeddings.
FUZZ_MODELS = {
    "/v1/completions": "tiny-llama",
    "/v1/chat/completions": "tiny-llama",
    "/v1/embeddings": "minilm",
}
CONTEXT = 128  # tiny-llama's: a longer max_tokens is always refused
EXAMPLES = 100  # per operation; half schema-valid, half not
REQUEST_TIMEOUT_S = 60.0  # a request that takes longer is a hang
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
MIB = 1024 * 1024


def assert_openai_error(response: Any, status: int | None = None) -> dict[str, Any]:
    """The body is ``{"error": {message, type, param, code}}`` with a message and no traceback."""
    if status is not None:
        assert response.status_code == status, response.text[:500]
    assert 400 <= response.status_code < 500, response.text[:500]
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert error["type"] in ("invalid_request_error", "not_found_error"), error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert "Traceback" not in error["message"] and 'File "' not in error["message"], error
    return dict(error)


# ---- schemathesis --------------------------------------------------------------------------


#: all-MiniLM-L6-v2's vocabulary (BERT's uncased WordPiece)
MINILM_VOCAB = 30522


def _bound_integers(schema: Any, most: int) -> None:
    """Every integer in ``schema`` (token ids) within 0..``most``."""
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            schema.update(minimum=0, maximum=most)
        for value in schema.values():
            _bound_integers(value, most)
    elif isinstance(schema, list):
        for value in schema:
            _bound_integers(value, most)


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> Any:
    """The platform's OpenAPI document, narrowed to what the test catalog serves: the model ids,
    and max_tokens up to the context (more is a 400 whatever the prompt)."""
    document = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    for path, model in FUZZ_MODELS.items():
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert {"model"} <= set(body["required"]), f"{path}: the request body is not documented"
        body["properties"]["model"] = {"type": "string", "enum": [model]}
        if path == "/v1/embeddings":
            # NOTE: the served model's own dimension, and token ids within its vocabulary
            body["properties"]["dimensions"] = {
                "anyOf": [{"type": "integer", "enum": [384]}, {"type": "null"}]
            }
            _bound_integers(body["properties"]["input"], MINILM_VOCAB - 1)
        for name in ("max_tokens", "max_completion_tokens"):
            if name in body["properties"]:
                # NOTE: a completion's max_tokens may be 0 with echo (the document's allOf says when)
                least = 0 if (path, name) == ("/v1/completions", "max_tokens") else 1
                bounded = {"type": "integer", "minimum": least, "maximum": CONTEXT}
                body["properties"][name] = {"anyOf": [bounded, {"type": "null"}]}
    return schemathesis.openapi.from_dict(document)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models/{model_id}"),
    ],
)
def test_fuzzed_requests_get_no_server_error(api_schema: Any, base_url: str, method: str, path: str) -> None:
    operation = api_schema[path][method]
    statuses: Counter[int] = Counter()
    started = time.monotonic()

    # NOTE: derandomized, so that a run is reproducible; no shrinking, so that a failure is quick.
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )
    )
    def fuzz(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400:
            assert_openai_error(response)

    fuzz()
    elapsed = time.monotonic() - started
    print(f"{method} {path}: {sum(statuses.values())} requests in {elapsed:.1f}s, statuses {dict(statuses)}")
    assert all(status < 500 for status in statuses), statuses
    assert any(400 <= status < 500 for status in statuses), f"the fuzzer sent nothing invalid: {statuses}"
    if method == "POST":  # the documented schema is honest: schema-valid requests reach the models
        assert statuses[200] >= EXAMPLES // 10, f"too few requests were served: {statuses}"


# ---- curated bad inputs ---------------------------------------------------------------------

CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"model": "tiny-llama", "prompt": "hi"}
EMBEDDING = {"model": "minilm", "input": "hi"}
BASES = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION, "/v1/embeddings": EMBEDDING}


def _chat(*messages: Any, **fields: Any) -> dict[str, Any]:
    return {"model": "tiny-llama", "messages": list(messages), **fields}


# (route, body, param, what the message says); every one is a 400 with type invalid_request_error
FIELD_CASES: list[tuple[str, dict[str, Any], str | None, str]] = [
    # wrong JSON types: not coerced
    ("/v1/completions", {**COMPLETION, "max_tokens": "5"}, "max_tokens", "valid integer (got a string)"),
    ("/v1/completions", {**COMPLETION, "max_tokens": True}, "max_tokens", "valid integer (got a boolean)"),
    ("/v1/completions", {**COMPLETION, "n": 2.5}, "n", "valid integer (got a number)"),
    ("/v1/completions", {**COMPLETION, "seed": "7"}, "seed", "valid integer"),
    ("/v1/completions", {**COMPLETION, "temperature": "0.5"}, "temperature", "valid number (got a string)"),
    ("/v1/completions", {**COMPLETION, "model": 5}, "model", "valid string (got an integer)"),
    ("/v1/completions", {**COMPLETION, "prompt": 5}, "prompt", "a string, an array of strings"),
    ("/v1/completions", {**COMPLETION, "prompt": None}, "prompt", "(got null)"),
    ("/v1/completions", {**COMPLETION, "prompt": [1, "a"]}, "prompt", "an array of integers"),
    ("/v1/completions", {**COMPLETION, "stop": 5}, "stop", "a string or an array of strings"),
    ("/v1/completions", {**COMPLETION, "stop": ["ok", 5]}, "stop[1]", "valid string"),
    ("/v1/completions", {**COMPLETION, "logit_bias": {"1": "x"}}, "logit_bias.1", "valid number"),
    ("/v1/completions", {**COMPLETION, "stream": True, "stream_options": 5}, "stream_options", "an object"),
    ("/v1/completions", {**COMPLETION, "logprobs": "x"}, "logprobs", "valid integer"),
    ("/v1/embeddings", {**EMBEDDING, "input": {"a": 1}}, "input", "(got an object)"),
    ("/v1/embeddings", {**EMBEDDING, "dimensions": "8"}, "dimensions", "valid integer"),
    ("/v1/chat/completions", _chat("hi"), "messages[0]", "an object (got a string)"),
    ("/v1/chat/completions", {**CHAT, "messages": {"role": "user"}}, "messages", "valid list"),
    (
        "/v1/chat/completions",
        _chat({"role": "user", "content": 5}),
        "messages[0].content",
        "(got an integer)",
    ),
    ("/v1/chat/completions", _chat({"role": "user", "content": [5]}), "messages[0].content[0]", "an object"),
    ("/v1/chat/completions", {**CHAT, "logprobs": 1}, "logprobs", "valid boolean"),
    # missing fields and empty content
    ("/v1/completions", {"model": "tiny-llama"}, "prompt", "Missing required parameter: 'prompt'"),
    ("/v1/chat/completions", {"model": "tiny-llama"}, "messages", "Missing required parameter: 'messages'"),
    ("/v1/embeddings", {"model": "minilm"}, "input", "Missing required parameter: 'input'"),
    ("/v1/chat/completions", _chat({"role": "user"}), "messages[0].content", "Missing required parameter"),
    (
        "/v1/chat/completions",
        _chat({"role": "user", "content": None}),
        "messages[0].content",
        "needs content",
    ),
    (
        "/v1/chat/completions",
        _chat({"role": "user", "content": []}),
        "messages[0].content",
        "at least 1 item",
    ),
    (
        "/v1/chat/completions",
        _chat({"role": "user", "content": [{"type": "text"}]}),
        "messages[0].content[0]",
        "needs 'text'",
    ),
    ("/v1/completions", {**COMPLETION, "prompt": ""}, "prompt", "empty"),
    ("/v1/completions", {**COMPLETION, "model": ""}, "model", "at least 1 character"),
    # numbers out of range
    ("/v1/completions", {**COMPLETION, "max_tokens": 10**30}, "max_tokens", "maximum context length is 128"),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": -1}, "max_completion_tokens", "greater than"),
    (
        "/v1/chat/completions",
        {**CHAT, "max_completion_tokens": 1000},
        "max_completion_tokens",
        "maximum context length is 128",
    ),
    ("/v1/completions", {**COMPLETION, "n": -1}, "n", "greater than or equal to 1"),
    ("/v1/completions", {**COMPLETION, "n": 10**20}, "n", "less than or equal to 16"),
    ("/v1/completions", {**COMPLETION, "temperature": -0.1}, "temperature", "greater than or equal to 0"),
    ("/v1/completions", {**COMPLETION, "top_p": -1}, "top_p", "greater than 0"),
    ("/v1/completions", {**COMPLETION, "seed": 2**64}, "seed", "less than or equal to"),
    ("/v1/completions", {**COMPLETION, "stop": ["s"] * 17}, "stop", "at most 16 stop sequences"),
    ("/v1/embeddings", {**EMBEDDING, "dimensions": 0}, "dimensions", "greater than or equal to 1"),
    ("/v1/embeddings", {**EMBEDDING, "input": ["x"] * 2049}, "input", "at most 2048 inputs"),
    # parameters this platform does not support
    (
        "/v1/chat/completions",
        {**CHAT, "logprobs": True, "top_logprobs": 21},
        "top_logprobs",
        "less than or equal to 20",
    ),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs", "needs logprobs"),
    ("/v1/completions", {**COMPLETION, "suffix": "tail"}, "suffix", "not supported"),
    ("/v1/completions", {**COMPLETION, "best_of": 3}, "(none)", "best_of is not supported"),
    ("/v1/chat/completions", {**CHAT, "presence_penalty": 3}, "presence_penalty", "less than or equal to 2"),
    ("/v1/chat/completions", {**CHAT, "logit_bias": {"5": 101}}, "logit_bias", "within -100..100"),
    ("/v1/chat/completions", {**CHAT, "logit_bias": {"999999": 1}}, "logit_bias", "vocabulary"),
    # unknown fields, nested too (OpenAI refuses them)
    ("/v1/embeddings", {**EMBEDDING, "frobnicate": 1}, "frobnicate", "Unrecognized request argument"),
    ("/v1/completions", {**COMPLETION, "max_token": 5}, "max_token", "did you mean 'max_tokens'"),
    (
        "/v1/chat/completions",
        _chat({"role": "user", "content": "x", "mood": "happy"}),
        "messages[0].mood",
        "Unrecognized request argument",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True, "x": 1}},
        "stream_options.x",
        "Unrecognized request argument",
    ),
    (
        "/v1/chat/completions",
        {**CHAT, "response_format": {"type": "text", "x": [[[]]]}},
        "response_format.x",
        "Unrecognized request argument",
    ),
    (
        "/v1/chat/completions",
        _chat({"role": "assistant", "content": None, "tool_calls": [{"id": "a", "type": "function"}]}),
        "messages[0].tool_calls[0].function",
        "Missing required parameter",
    ),
    # prompts over the context, as token ids and as chat
    ("/v1/completions", {**COMPLETION, "prompt": [5] * 200}, "prompt", "maximum context length is 128"),
    ("/v1/completions", {**COMPLETION, "prompt": [[5] * 130]}, "prompt", "maximum context length is 128"),
    ("/v1/completions", {**COMPLETION, "prompt": [-1]}, "prompt", "outside the vocabulary"),
    ("/v1/embeddings", {**EMBEDDING, "input": [[-5]]}, "input", "outside the vocabulary"),
    # nested garbage
    (
        "/v1/chat/completions",
        _chat({"role": "user", "content": [{"type": "text", "text": {"a": [1, [2, {"b": None}]]}}]}),
        "messages[0].content[0].text",
        "valid string",
    ),
    ("/v1/completions", {**COMPLETION, "prompt": [[[[[1]]]]]}, "prompt", "an array of arrays of integers"),
    ("/v1/embeddings", {**EMBEDDING, "input": [[1, [2]]]}, "input", "an array of arrays of integers"),
]


@pytest.mark.parametrize(
    ("path", "body", "param", "needle"),
    FIELD_CASES,
    ids=[f"{path.rsplit('/', 1)[1]}-{json.dumps(body)[-60:]}" for path, body, _, _ in FIELD_CASES],
)
def test_bad_field_is_400_naming_it(
    http: httpx.Client, path: str, body: dict[str, Any], param: str | None, needle: str
) -> None:
    error = assert_openai_error(http.post(path, json=body), 400)
    assert error["param"] == (None if param == "(none)" else param), error
    assert needle in error["message"], error
    assert error["type"] == "invalid_request_error"


# (raw body, what the message says); each is a 400 with code invalid_json and no param
RAW_CASES: list[tuple[bytes, str]] = [
    (b'"just a string"', "must be a JSON object, not a string"),
    (b"null", "must be a JSON object, not null"),
    (b"42", "must be a JSON object, not an integer"),
    (b"true", "must be a JSON object, not a boolean"),
    (b"  \n\t ", "empty"),
    (b'{"model": "tiny-llama", "prompt": "x"} trailing', "not valid JSON: Extra data"),
    (b'{"model": "tiny-llama", "prompt": "x", "temperature": NaN}', "NaN is not a JSON number"),
    (b'{"model": "tiny-llama", "prompt": "x", "temperature": -Infinity}', "-Infinity is not a JSON number"),
    (b'{"model": "tiny-llama", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nests too deeply"),
    # invalid UTF-8: a truncated sequence, an encoded surrogate, a lone surrogate escape, UTF-16
    (b'{"model": "tiny-llama", "prompt": "\xe2\x82"}', "not valid JSON"),
    (b'{"model": "tiny-llama", "prompt": "\xed\xa0\x80"}', "not valid JSON"),
    (b'{"model": "tiny-llama", "prompt": "a\\ud800b"}', "unpaired UTF-16 surrogate escape (\\ud800)"),
    (b'{"model": "tiny-llama", "prompt": "\\udc00"}', "unpaired UTF-16 surrogate escape (\\udc00)"),
    ('{"model": "tiny-llama", "prompt": "x"}'.encode("utf-16"), "not valid JSON"),
    (b'\xef\xbb\xbf{"model": "tiny-llama", "prompt": "x"}', "not valid JSON"),
]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize(("raw", "needle"), RAW_CASES, ids=[repr(raw[:40]) for raw, _ in RAW_CASES])
def test_body_that_is_not_a_json_object_is_400(
    http: httpx.Client, path: str, raw: bytes, needle: str
) -> None:
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert error["code"] == "invalid_json" and error["param"] is None, error
    assert needle in error["message"], error


def test_body_over_8_mib_is_413(http: httpx.Client) -> None:
    raw = json.dumps({**COMPLETION, "prompt": "x" * (9 * MIB)}).encode()
    error = assert_openai_error(http.post("/v1/completions", content=raw), 413)
    assert error["code"] == "too_large"
    assert str(len(raw)) in error["message"] and "8 MiB" in error["message"], error
    # the platform is fine afterwards
    assert http.post("/v1/completions", json={**COMPLETION, "max_tokens": 1}).status_code == 200


@pytest.mark.parametrize(
    ("path", "mib"), [("/v1/completions", 7), ("/v1/chat/completions", 1), ("/v1/embeddings", 1)]
)
def test_long_input_under_the_body_limit_is_400_context_length(
    http: httpx.Client, path: str, mib: int
) -> None:
    text = "lorem ipsum dolor sit amet " * (mib * MIB // 27)  # tokenized (remotely), then refused
    body: dict[str, Any] = {
        "/v1/completions": {**COMPLETION, "prompt": text},
        "/v1/chat/completions": _chat({"role": "user", "content": text}),
        "/v1/embeddings": {**EMBEDDING, "input": text},
    }[path]
    started = time.monotonic()
    error = assert_openai_error(http.post(path, json=body), 400)
    assert error["code"] == "context_length_exceeded", error
    assert error["param"] in ("prompt", "messages", "input"), error
    assert time.monotonic() - started < REQUEST_TIMEOUT_S


def test_unknown_model_with_odd_characters_is_404(http: httpx.Client) -> None:
    for model in ("x" * 10_000, "\u0000", "tiny-llama ", "🦙", "../tiny-llama"):
        error = assert_openai_error(http.post("/v1/completions", json={**COMPLETION, "model": model}), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model", error
    # a path that does not decode as UTF-8 is named, escaped, rather than failing the response
    error = assert_openai_error(http.get("/v1/models/%ED%A0%80"), 404)
    assert error["code"] == "model_not_found"


def test_surrogate_pairs_and_odd_text_are_served(http: httpx.Client) -> None:
    """Valid but unusual input is answered, not refused: an escaped emoji (a surrogate pair),
    NUL and control characters."""
    raw = b'{"model": "tiny-llama", "prompt": "\\ud83e\\udd99 \\u0000\\u0007 x", "max_tokens": 2}'
    response = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    chat = http.post(
        "/v1/chat/completions", json={**_chat({"role": "user", "content": "\u0000🦙"}), "max_tokens": 2}
    )
    assert chat.status_code == 200, chat.text


def test_vanishing_temperature_is_greedy_not_a_failed_batch(http: httpx.Client) -> None:
    """A temperature of 1e-300 would divide logits into inf/NaN and fail every sequence in the
    batch; below 1e-5 it is greedy decoding, the same answer as temperature 0."""
    body = {**COMPLETION, "prompt": "Once upon a time", "max_tokens": 8, "ignore_eos": True}
    greedy = http.post("/v1/completions", json={**body, "temperature": 0})
    tiny = http.post("/v1/completions", json={**body, "temperature": 1e-300, "top_p": 1e-300, "top_k": 10**9})
    assert greedy.status_code == 200 and tiny.status_code == 200, tiny.text
    assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    "body",
    [
        {**CHAT, "n": 16, "max_tokens": 1},
        {**CHAT, "n": 2.0, "max_tokens": 1.0, "seed": 7.0},  # integers, in JSON Schema's sense
        {**CHAT, "stop": ["\u0000", "x" * 10_000], "max_tokens": 2},
        {**CHAT, "seed": -(2**63), "temperature": 2, "top_k": -1, "max_tokens": 2},
        {
            **CHAT,
            "response_format": {"type": "text"},
            "tool_choice": "none",
            "parallel_tool_calls": True,
            "max_tokens": 1,
        },
        _chat({"role": "assistant", "content": None}, {"role": "user", "content": "hi"}, max_tokens=1),
        _chat(
            {"role": "user", "content": "hi", "name": "n", "refusal": None, "tool_calls": []}, max_tokens=1
        ),
    ],
    ids=[
        "n16",
        "integral-floats",
        "odd-stops",
        "extreme-sampling",
        "text-format-no-tools",
        "null-assistant",
        "openai-keys",
    ],
)
def test_edge_values_that_are_valid_are_served(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"]


def test_openapi_documents_the_request_bodies_and_errors(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    for path, model in (
        ("/v1/completions", "prompt"),
        ("/v1/chat/completions", "messages"),
        ("/v1/embeddings", "input"),
    ):
        operation = document["paths"][path]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert set(schema["required"]) == {"model", model}
        assert schema["additionalProperties"] is False
        assert "$defs" not in json.dumps(schema)
        assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    stream = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(stream) == {"application/json", "text/event-stream"}
