"""OpenAI request models and errors: strict parsing, 400s that name the field, sampling conversion."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from llmaas.config.catalog import SamplingDefaults
from llmaas.engine.types import SamplingParams
from llmaas.openai.errors import (
    OpenAIError,
    bad_request,
    from_validation_error,
    internal,
    model_not_found,
    unavailable,
)
from llmaas.openai.protocol import (
    MAX_STOP_SEQUENCES,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": "m", "messages": list(MESSAGES)}
    data.update(fields)
    return data


def completion(**fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": "m", "prompt": "hello"}
    data.update(fields)
    return data


def error_for(model: type[BaseModel], data: dict[str, Any]) -> OpenAIError:
    """Validate ``data``, expect a ValidationError, and convert it the way the router does."""
    with pytest.raises(ValidationError) as exc_info:
        model.model_validate(data)
    err = from_validation_error(exc_info.value)
    assert isinstance(err, OpenAIError)
    assert err.status == 400
    assert err.type == "invalid_request_error"
    assert err.code == "invalid_value"
    return err


# ---- from_validation_error -------------------------------------------------------------


def test_out_of_range_value_names_the_field():
    err = error_for(ChatCompletionRequest, chat(temperature=5))
    assert err.param == "temperature"
    assert err.message.startswith("Invalid value for 'temperature':")
    assert "less than or equal to 2" in err.message


def test_unknown_field_is_unrecognized():
    err = error_for(ChatCompletionRequest, chat(frobnicate=True))
    assert err.param == "frobnicate"
    assert "Unrecognized request argument" in err.message
    assert "frobnicate" in err.message


def test_unknown_nested_field_has_a_dotted_param():
    err = error_for(ChatCompletionRequest, chat(stream=True, stream_options={"include_usag": True}))
    assert err.param == "stream_options.include_usag"
    assert "Unrecognized request argument" in err.message


def test_missing_model():
    err = error_for(ChatCompletionRequest, {"messages": MESSAGES})
    assert err.param == "model"
    assert err.message == "Missing required parameter: 'model'."


def test_missing_everything_counts_the_other_problems():
    err = error_for(ChatCompletionRequest, {})
    assert err.param == "model"
    assert "(1 more problem in this request)" in err.message


def test_bad_message_role_names_the_index():
    err = error_for(ChatCompletionRequest, chat(messages=[{"role": "bot", "content": "x"}]))
    assert err.param == "messages[0].role"
    assert "Invalid value for 'messages[0].role'" in err.message


def test_bad_second_message_role():
    messages = [{"role": "system", "content": "s"}, {"role": "robot", "content": "x"}]
    assert error_for(ChatCompletionRequest, chat(messages=messages)).param == "messages[1].role"


def test_union_branch_names_are_dropped_from_param():
    err = error_for(ChatCompletionRequest, chat(messages=[{"role": "user", "content": [{"type": "image"}]}]))
    assert err.param == "messages[0].content[0]"
    assert "not supported" in err.message  # the reason, not the str branch's "valid string"
    err = error_for(CompletionRequest, completion(prompt=5))
    assert err.param == "prompt"
    assert "(3 more problems in this request)" in err.message


def test_model_level_error_names_no_param():
    err = error_for(CompletionRequest, completion(n=2, best_of=3))
    assert err.param is None
    assert "best_of is not supported" in err.message
    assert "Value error" not in err.message


def test_validator_reason_is_passed_through():
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    err = error_for(
        ChatCompletionRequest,
        chat(tools=tools, tool_choice={"type": "function", "function": {"name": "get_time"}}),
    )
    assert err.param == "tool_choice"
    assert err.message == (
        "Invalid value for 'tool_choice': tool_choice names function 'get_time', which is not among the "
        "tools (get_weather)"
    )


def test_empty_messages_list():
    assert error_for(ChatCompletionRequest, chat(messages=[])).param == "messages"


# ---- strictness of individual fields -----------------------------------------------------


@pytest.mark.parametrize("value", ["yes", "true", 1, "1"])
def test_stream_is_strict_bool(value: Any):
    err = error_for(ChatCompletionRequest, chat(stream=value))
    assert err.param == "stream"
    assert "valid boolean" in err.message


def test_stream_true_is_fine():
    assert ChatCompletionRequest.model_validate(chat(stream=True)).stream is True


def test_stream_options_need_stream():
    err = error_for(ChatCompletionRequest, chat(stream_options={"include_usage": True}))
    assert "stream_options is only allowed when stream is true" in err.message


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"top_p": 0}, "top_p", "greater than 0"),
        ({"top_k": -2}, "top_k", "greater than or equal to -1"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"n": 17}, "n", "less than or equal to 16"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_completion_tokens": 0}, "max_completion_tokens", "greater than or equal to 1"),
        ({"model": ""}, "model", "at least 1 character"),
        (
            {"response_format": {"type": "json_schema"}},
            "response_format.json_schema",
            "type json_schema needs json_schema",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type", "Input should be"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": 5}}}},
            "response_format.json_schema.schema",
            "not a valid JSON schema",
        ),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "Missing required parameter"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name", "pattern"),
        ({"tool_choice": "required"}, "tool_choice", "no tools are given"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objet"}}}]},
            "tools[0].function.parameters",
            "not a valid JSON schema",
        ),
        (
            {"structured_outputs": {"regex": "a+", "choice": ["a"]}},
            "structured_outputs",
            "exactly one of json, regex and choice",
        ),
        ({"stop": ""}, "stop", "non-empty"),
        ({"stop": ["a", ""]}, "stop", "non-empty"),
        ({"stop": ["s"] * (MAX_STOP_SEQUENCES + 1)}, "stop", "at most 16 stop sequences"),
    ],
)
def test_chat_rejections(fields: dict[str, Any], param: str, needle: str):
    err = error_for(ChatCompletionRequest, chat(**fields))
    assert err.param == param
    assert needle in err.message


def test_zero_penalties_and_text_format_are_accepted():
    req = ChatCompletionRequest.model_validate(
        chat(presence_penalty=0, frequency_penalty=0.0, response_format={"type": "text"}, logprobs=False)
    )
    assert req.presence_penalty == 0


# (field, the lowest and highest values accepted, a value below and one above); None: no bound there
SAMPLING_BOUNDS: list[tuple[str, Any, Any, Any, Any]] = [
    ("presence_penalty", -2, 2.0, -2.01, 2.5),
    ("frequency_penalty", -2.0, 2, -3, 2.01),
    ("repetition_penalty", 0.01, 10, 0, 10.5),
    ("min_tokens", 0, 10**6, -1, None),
]


@pytest.mark.parametrize("request_model", [CompletionRequest, ChatCompletionRequest])
@pytest.mark.parametrize(("field", "low", "high", "below", "above"), SAMPLING_BOUNDS)
def test_sampling_control_bounds(
    request_model: type[BaseModel], field: str, low: Any, high: Any, below, above
):
    base = completion if request_model is CompletionRequest else chat
    for ok in (low, high):
        assert getattr(request_model.model_validate(base(**{field: ok})), field) == ok
    for bad in (below, above):
        if bad is not None:
            err = error_for(request_model, base(**{field: bad}))
            assert err.param == field


@pytest.mark.parametrize(
    ("value", "param", "needle"),
    [
        ({"a": 1}, "logit_bias", "keys are token ids"),
        ({"-1": 1}, "logit_bias", "keys are token ids"),
        ({"1.5": 1}, "logit_bias", "keys are token ids"),
        ({" 7": 1}, "logit_bias", "keys are token ids"),
        ({"7": 100.5}, "logit_bias", "within -100..100"),
        ({"7": -101}, "logit_bias", "within -100..100"),
        ({"7": "x"}, "logit_bias.7", "valid number"),
        ({str(i): 1 for i in range(1025)}, "logit_bias", "at most 1024 tokens"),
        ([1], "logit_bias", "an object (got an array)"),
    ],
)
@pytest.mark.parametrize("request_model", [CompletionRequest, ChatCompletionRequest])
def test_logit_bias_keys_are_token_ids_and_values_in_range(
    request_model: type[BaseModel], value: Any, param: str, needle: str
):
    base = completion if request_model is CompletionRequest else chat
    err = error_for(request_model, base(logit_bias=value))
    assert err.param == param
    assert needle in err.message


def test_logit_bias_pairs_are_sorted_ids():
    req = CompletionRequest.model_validate(completion(logit_bias={"50": -100, "7": 2, "0": 0.5}))
    assert req.logit_bias_pairs() == ((0, 0.5), (7, 2.0), (50, -100.0))


def test_min_tokens_above_max_tokens_is_named():
    err = error_for(CompletionRequest, completion(min_tokens=5, max_tokens=4))
    assert err.param == "min_tokens" and "above" in err.message
    err = error_for(ChatCompletionRequest, chat(min_tokens=5, max_completion_tokens=4))
    assert err.param == "min_tokens"
    assert ChatCompletionRequest.model_validate(chat(min_tokens=4, max_tokens=4)).min_tokens == 4


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"logprobs": -1}, "logprobs", "greater than or equal to 0"),
        ({"logprobs": 6}, "logprobs", "less than or equal to 5"),
        ({"logprobs": True}, "logprobs", "valid integer"),
        ({"echo": "yes"}, "echo", "valid boolean"),
        ({"max_tokens": 0}, "max_tokens", "only with echo"),
        ({"max_tokens": -1, "echo": True}, "max_tokens", "greater than or equal to 0"),
    ],
)
def test_completion_logprobs_and_echo_bounds(fields: dict[str, Any], param: str, needle: str):
    err = error_for(CompletionRequest, completion(**fields))
    assert err.param == param
    assert needle in err.message


def test_completion_logprobs_and_echo_reach_the_engine():
    defaults = SamplingDefaults()
    for logprobs in (0, 5):
        req = CompletionRequest.model_validate(completion(logprobs=logprobs, echo=True, max_tokens=0))
        params = req.to_sampling_params(defaults, max_tokens=1)
        assert (params.logprobs, params.prompt_logprobs) == (logprobs, logprobs)
    req = CompletionRequest.model_validate(completion(logprobs=2))
    params = req.to_sampling_params(defaults, max_tokens=1)
    assert (params.logprobs, params.prompt_logprobs) == (2, None)
    echo_only = CompletionRequest.model_validate(completion(echo=True)).to_sampling_params(defaults, 1)
    assert (echo_only.logprobs, echo_only.prompt_logprobs) == (None, None)


@pytest.mark.parametrize(
    ("fields", "param", "needle"),
    [
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs", "less than or equal to 20"),
        ({"top_logprobs": -1, "logprobs": True}, "top_logprobs", "greater than or equal to 0"),
        ({"top_logprobs": 3}, "top_logprobs", "needs logprobs: true"),
        ({"top_logprobs": 3, "logprobs": False}, "top_logprobs", "needs logprobs: true"),
        ({"logprobs": 1}, "logprobs", "valid boolean"),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "differ"),
        ({"store": "yes"}, "store", "valid boolean"),
        ({"metadata": {"k": 1}}, "metadata.k", "valid string"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata", "at most 16"),
        ({"metadata": {"k" * 65: "v"}}, "metadata", "up to 64"),
        ({"user": 5}, "user", "valid string"),
    ],
)
def test_chat_logprobs_and_bookkeeping_bounds(fields: dict[str, Any], param: str, needle: str):
    err = error_for(ChatCompletionRequest, chat(**fields))
    assert err.param == param
    assert needle in err.message


def test_chat_logprobs_reach_the_engine():
    defaults = SamplingDefaults()
    for fields, expected in (
        ({}, None),
        ({"logprobs": False}, None),
        ({"logprobs": True}, 0),
        ({"logprobs": True, "top_logprobs": 20}, 20),
        ({"logprobs": False, "top_logprobs": 0}, None),
    ):
        req = ChatCompletionRequest.model_validate(chat(**fields))
        params = req.to_sampling_params(defaults, max_tokens=1)
        assert (params.logprobs, params.prompt_logprobs) == (expected, None)


def test_user_store_and_metadata_are_accepted():
    req = ChatCompletionRequest.model_validate(chat(user="u", store=False, metadata={"a": "b"}))
    assert (req.user, req.store, req.metadata) == ("u", False, {"a": "b"})
    assert CompletionRequest.model_validate(completion(user="u")).user == "u"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"prompt": []}, "empty list"),
        ({"prompt": ""}, "empty string"),
        ({"prompt": ["a", ""]}, "prompt[1] is an empty string"),
        ({"prompt": [[1], []]}, "prompt[1] is an empty token list"),
        ({"prompt": [[]]}, "prompt[0] is an empty token list"),
        ({"prompt": ["x"] * 2049}, "at most 2048 prompts"),
        ({"suffix": "tail"}, "suffix (insertion) is not supported"),
    ],
)
def test_completion_rejections(fields: dict[str, Any], needle: str):
    err = error_for(CompletionRequest, completion(**fields))
    assert err.param == next(iter(fields))
    assert needle in err.message


def test_completion_best_of_must_equal_n():
    err = error_for(CompletionRequest, completion(n=2, best_of=3))
    assert "best_of is not supported" in err.message
    assert CompletionRequest.model_validate(completion(n=2, best_of=2)).best_of == 2


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("", "empty string"),
        ([], "empty list"),
        (["a", ""], "holds an empty string"),
        ([[1], []], "empty token list"),
        (["x"] * 2049, "at most 2048 inputs"),
    ],
)
def test_embedding_input_rejections(value: Any, needle: str):
    err = error_for(EmbeddingRequest, {"model": "m", "input": value})
    assert err.param == "input"
    assert needle in err.message


def test_embedding_unknown_field_and_format():
    err = error_for(EmbeddingRequest, {"model": "m", "input": "x", "dimension": 3})
    assert err.param == "dimension"
    assert "Unrecognized request argument" in err.message
    err = error_for(EmbeddingRequest, {"model": "m", "input": "x", "encoding_format": "hex"})
    assert err.param == "encoding_format"


# ---- stop, max tokens, prompts, inputs ---------------------------------------------------


def test_stop_string_and_list():
    assert ChatCompletionRequest.model_validate(chat()).stop_sequences() == ()
    assert ChatCompletionRequest.model_validate(chat(stop="\n")).stop_sequences() == ("\n",)
    req = ChatCompletionRequest.model_validate(chat(stop=["a", "bc"]))
    assert req.stop_sequences() == ("a", "bc")
    assert isinstance(req.stop_sequences(), tuple)


def test_requested_max_tokens_chat():
    assert ChatCompletionRequest.model_validate(chat()).requested_max_tokens() is None
    assert ChatCompletionRequest.model_validate(chat(max_tokens=7)).requested_max_tokens() == 7
    assert ChatCompletionRequest.model_validate(chat(max_completion_tokens=5)).requested_max_tokens() == 5


def test_chat_max_tokens_both_set_must_agree():
    with pytest.raises(ValidationError, match=r"max_completion_tokens \(5\) and max_tokens \(7\) differ"):
        ChatCompletionRequest.model_validate(chat(max_tokens=7, max_completion_tokens=5))
    same = ChatCompletionRequest.model_validate(chat(max_tokens=5, max_completion_tokens=5))
    assert same.requested_max_tokens() == 5


def test_requested_max_tokens_completion():
    assert CompletionRequest.model_validate(completion()).requested_max_tokens() is None
    assert CompletionRequest.model_validate(completion(max_tokens=9)).requested_max_tokens() == 9


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("hello", ["hello"]),
        (["hello"], ["hello"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([7], [[7]]),
        ([[4, 5, 6]], [[4, 5, 6]]),
        ([[4, 5], [6]], [[4, 5], [6]]),
        ([2.0, 3], [[2, 3]]),
    ],
)
def test_prompts(prompt: Any, expected: Any):
    assert CompletionRequest.model_validate(completion(prompt=prompt)).prompts() == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("one", ["one"]),
        (["one", "two"], ["one", "two"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_embedding_items(value: Any, expected: list[Any]):
    assert EmbeddingRequest.model_validate({"model": "m", "input": value}).items() == expected


def test_template_messages_joins_text_parts():
    req = ChatCompletionRequest.model_validate(
        chat(
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": None},
            ]
        )
    )
    assert req.template_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]


# ---- to_sampling_params ------------------------------------------------------------------


def test_sampling_controls_are_passed_through():
    req = ChatCompletionRequest.model_validate(
        chat(
            presence_penalty=1.5,
            frequency_penalty=-0.5,
            repetition_penalty=1.2,
            logit_bias={"9": -100, "3": 5},
            min_tokens=3,
        )
    )
    params = req.to_sampling_params(SamplingDefaults(), max_tokens=8)
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (1.5, -0.5, 1.2)
    assert (params.logit_bias, params.min_tokens) == (((3, 5.0), (9, -100.0)), 3)


def test_sampling_uses_catalog_defaults_when_unset():
    defaults = SamplingDefaults(temperature=0.3, top_p=0.9, top_k=40, max_tokens=99)
    params = ChatCompletionRequest.model_validate(chat()).to_sampling_params(defaults, max_tokens=12)
    assert params == SamplingParams(
        max_tokens=12, temperature=0.3, top_p=0.9, top_k=40, seed=None, stop=(), ignore_eos=False
    )


def test_sampling_uses_request_values_when_set():
    defaults = SamplingDefaults(temperature=0.3, top_p=0.9, top_k=40)
    req = ChatCompletionRequest.model_validate(
        chat(temperature=1.5, top_p=0.5, top_k=3, seed=11, stop=["END"], ignore_eos=True)
    )
    params = req.to_sampling_params(defaults, max_tokens=20)
    assert params == SamplingParams(
        max_tokens=20, temperature=1.5, top_p=0.5, top_k=3, seed=11, stop=("END",), ignore_eos=True
    )


def test_sampling_zero_temperature_overrides_default():
    # 0.0 is a value, not "unset": the request's greedy choice wins over the catalog default
    defaults = SamplingDefaults(temperature=0.7)
    params = CompletionRequest.model_validate(completion(temperature=0)).to_sampling_params(defaults, 5)
    assert params.temperature == 0.0
    assert params.greedy


@pytest.mark.parametrize(("top_k", "expected"), [(-1, 0), (0, 0), (5, 5)])
def test_sampling_top_k_minus_one_disables(top_k: int, expected: int):
    req = ChatCompletionRequest.model_validate(chat(top_k=top_k))
    assert req.to_sampling_params(SamplingDefaults(top_k=50), max_tokens=4).top_k == expected


def test_sampling_seed_per_choice():
    req = ChatCompletionRequest.model_validate(chat(seed=42, n=3))
    seeds = [req.to_sampling_params(SamplingDefaults(), 8, choice=i).seed for i in range(req.n)]
    assert seeds == [42, 43, 44]


def test_sampling_seed_wraps_at_int63():
    req = ChatCompletionRequest.model_validate(chat(seed=2**63 - 1))
    assert req.to_sampling_params(SamplingDefaults(), 8, choice=1).seed == 0


def test_sampling_without_seed_stays_unseeded():
    req = ChatCompletionRequest.model_validate(chat(n=2))
    assert [req.to_sampling_params(SamplingDefaults(), 8, choice=i).seed for i in range(2)] == [None, None]


# ---- OpenAIError and helpers -------------------------------------------------------------


def test_body_has_exactly_the_openai_keys():
    body = OpenAIError(400, "bad", param="temperature", code="invalid_value").body()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }


def test_body_keeps_null_param_and_code():
    body = internal("boom").body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] is None
    assert body["error"]["type"] == "server_error"


def test_from_validation_error_body():
    with pytest.raises(ValidationError) as exc_info:
        ChatCompletionRequest.model_validate(chat(temperature=5))
    body = from_validation_error(exc_info.value).body()
    assert body["error"]["param"] == "temperature"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_value"


def test_model_not_found():
    err = model_not_found("gpt-9", ["tiny-llama-chat", "all-minilm-l6-v2"])
    assert err.status == 404
    assert err.code == "model_not_found"
    assert err.param == "model"
    assert "gpt-9" in err.message
    assert "tiny-llama-chat, all-minilm-l6-v2" in err.message
    assert err.body()["error"]["code"] == "model_not_found"


def test_model_not_found_with_nothing_served():
    assert "Served models: none." in model_not_found("x", []).message


def test_unavailable():
    err = unavailable("every replica is busy", retry_after_s=7)
    assert err.status == 503
    assert err.headers == {"Retry-After": "7"}
    assert err.type == "server_error"
    assert err.code == "overloaded"
    assert err.body()["error"]["message"] == "every replica is busy"
    assert unavailable("busy").headers["Retry-After"] == "1"


def test_bad_request_and_internal():
    err = bad_request("nope", param="n")
    assert (err.status, err.param, err.type, err.headers) == (400, "n", "invalid_request_error", {})
    assert str(err) == "nope"
    assert internal("boom").status == 500
    assert internal("boom").code == "internal_error"


def test_a_deeply_nested_schema_is_a_400_not_a_recursion_error():
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(500):
        schema = {"type": "object", "properties": {"a": schema}}
    fmt = {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}
    err = error_for(ChatCompletionRequest, chat(response_format=fmt))
    assert err.param == "response_format.json_schema.schema"
    assert "nested 1001 levels deep; at most 64" in err.message
