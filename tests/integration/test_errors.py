"""Every user-facing error: status, OpenAI error shape, type and the field named."""

from __future__ import annotations

import pytest


def _error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:  # "(none)": an error about the whole request names no field
        assert error["param"] == (None if param == "(none)" else param), error
    return error


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
def test_unknown_model_is_404_listing_served_models(http, path):
    extra: dict[str, dict[str, object]] = {
        "/v1/completions": {"prompt": "x"},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": "x"}]},
        "/v1/embeddings": {"input": "x"},
    }
    payload = {"model": "no-such-model", **extra[path]}
    error = _error(http.post(path, json=payload), 404, "model")
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]
    for served in ("tiny-llama", "tiny-llama-tp2", "tiny-gpt2", "minilm"):
        assert served in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -5}, "top_k"),
        ({"n": 0}, "n"),
        ({"n": 100}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["a"] * 40}, "stop"),
        ({"seed": "abc"}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"logprobs": 6}, "logprobs"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"prompt": []}, "prompt"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"echo": "yes"}, "echo"),
        ({"stream_options": {"include_usage": True}}, "(none)"),
    ],
)
def test_invalid_completion_parameters_are_400_naming_the_field(http, body, param):
    payload = {"model": "tiny-llama", "prompt": "hi", **body}
    error = _error(http.post("/v1/completions", json=payload), 400, param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": "hello"}, "messages"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            None,
        ),
    ],
)
def test_invalid_chat_parameters_are_400(http, body, param):
    payload = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], **body}
    error = _error(http.post("/v1/chat/completions", json=payload), 400, param)
    if param is None:
        assert error["param"].startswith("messages[0].content")


def test_missing_model_and_bad_json(http):
    error = _error(http.post("/v1/completions", json={"prompt": "hi"}), 400, "model")
    assert "model" in error["message"]
    error = _error(
        http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    assert error["code"] == "invalid_json"
    _error(
        http.post("/v1/completions", content=b"\xff\xfe\xfa", headers={"content-type": "application/json"}),
        400,
    )
    _error(http.post("/v1/completions", json=[1, 2]), 400)
    _error(http.post("/v1/completions", content=b""), 400)


def test_prompt_longer_than_context_is_400_with_both_lengths(http):
    prompt = "one two three four " * 60  # far more than the test model's 128-token context
    error = _error(
        http.post("/v1/completions", json={"model": "tiny-llama", "prompt": prompt}), 400, "prompt"
    )
    assert error["code"] == "context_length_exceeded"
    assert "128" in error["message"]
    prompt_tokens = int(error["message"].split("is ")[-1].split(" tokens")[0])
    assert prompt_tokens > 128
    chat = http.post(
        "/v1/chat/completions",
        json={"model": "tiny-llama", "messages": [{"role": "user", "content": prompt}]},
    )
    assert _error(chat, 400, "messages")["code"] == "context_length_exceeded"


def test_prompt_plus_max_tokens_over_context_is_400(http):
    error = _error(
        http.post(
            "/v1/completions", json={"model": "tiny-llama", "prompt": "hello there", "max_tokens": 500}
        ),
        400,
        "max_tokens",
    )
    assert "128" in error["message"] and "500" in error["message"]


def test_token_prompt_outside_vocabulary_is_400(http):
    _error(http.post("/v1/completions", json={"model": "tiny-llama", "prompt": [1, 2, 10**7]}), 400, "prompt")


def test_wrong_task_is_400(http):
    error = _error(http.post("/v1/embeddings", json={"model": "tiny-llama", "input": "x"}), 400, "model")
    assert error["code"] == "wrong_task" and "minilm" in error["message"]
    error = _error(http.post("/v1/completions", json={"model": "minilm", "prompt": "x"}), 400, "model")
    assert error["code"] == "wrong_task"
    _error(
        http.post(
            "/v1/chat/completions", json={"model": "minilm", "messages": [{"role": "user", "content": "x"}]}
        ),
        400,
        "model",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": 5}, "input"),
        ({"encoding_format": "hex"}, "encoding_format"),
        ({"dimensions": 10}, "dimensions"),
        ({"input": "word " * 600}, "input"),
        ({"input": ["fine", "word " * 600]}, "input[1]"),
    ],
)
def test_invalid_embedding_requests_are_400(http, body, param):
    _error(http.post("/v1/embeddings", json={"model": "minilm", "input": "hi", **body}), 400, param)


def test_unknown_route_and_method_in_error_shape(http):
    _error(http.get("/v1/nothing"), 404)
    _error(http.get("/v1/completions"), 405)


def test_health_and_readiness(http):
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["models"] == {
        m: "ready" for m in ("tiny-llama", "tiny-llama-tp2", "tiny-gpt2", "minilm", "tiny-gguf", "smollm2")
    }
