"""The OpenAI API that client frameworks send, with the official client against the session platform:
batched prompts, echo and logprobs (shapes; the engine's tests check the values), sampling
controls, vLLM's /tokenize and /detokenize."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def _tokens(http: httpx.Client, model: str, prompt: str) -> list[int]:
    response = http.post("/tokenize", json={"model": model, "prompt": prompt})
    assert response.status_code == 200, response.text
    tokens: list[int] = response.json()["tokens"]
    return tokens


def _bad_request(caught: pytest.ExceptionInfo[openai.BadRequestError]) -> dict[str, Any]:
    body = caught.value.body
    assert caught.value.status_code == 400 and isinstance(body, dict)
    return body


# ---- batched prompts -----------------------------------------------------------------------------


def test_batched_prompts_are_prompt_major_with_summed_usage(client: openai.OpenAI, http: httpx.Client):
    prompts = ["The capital of France is", "One, two, three,"]
    result = client.completions.create(model="tiny-llama", prompt=prompts, n=2, max_tokens=4, temperature=0)
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    assert result.usage is not None
    assert result.usage.prompt_tokens == sum(len(_tokens(http, "tiny-llama", p)) for p in prompts)
    assert 4 <= result.usage.completion_tokens <= 4 * 4
    if all(c.finish_reason == "length" for c in result.choices):
        assert result.usage.completion_tokens == 4 * 4
    # greedy: each prompt's choices are what the prompt gets alone
    for p, prompt in enumerate(prompts):
        alone = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=4, temperature=0)
        assert result.choices[2 * p].text == result.choices[2 * p + 1].text == alone.choices[0].text


def test_batched_token_id_prompts_stream_with_each_choice_index(client: openai.OpenAI, http: httpx.Client):
    prompts = [_tokens(http, "tiny-llama", "Hello"), _tokens(http, "tiny-llama", "The capital of France is")]
    texts: dict[int, str] = {}
    finished = set()
    for chunk in client.completions.create(
        model="tiny-llama", prompt=prompts, max_tokens=3, temperature=0, stream=True
    ):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert sorted(texts) == sorted(finished) == [0, 1]
    whole = client.completions.create(model="tiny-llama", prompt=prompts, max_tokens=3, temperature=0)
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]


def test_n_times_prompts_beyond_the_models_capacity_is_400(client: openai.OpenAI):
    # tiny-gpt2 holds 2 x 2 running and 4 queued: 8 sequences at most
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-gpt2", prompt=["a", "b", "c"], n=3, max_tokens=1)
    assert _bad_request(caught)["param"] == "prompt"


def test_an_overlong_prompt_in_a_batch_is_named_by_index(client: openai.OpenAI):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-llama", prompt=[[5], [5] * 200], max_tokens=1)
    body = _bad_request(caught)
    assert (body["param"], body["code"]) == ("prompt[1]", "context_length_exceeded")


# ---- echo and logprobs ---------------------------------------------------------------------------


def test_completion_echo_and_logprobs_shapes(client: openai.OpenAI, http: httpx.Client):
    prompt = "The capital of France is"
    count = len(_tokens(http, "tiny-llama", prompt))
    result = client.completions.create(
        model="tiny-llama", prompt=prompt, echo=True, logprobs=2, max_tokens=3, temperature=0
    )
    [choice] = result.choices
    assert choice.text.startswith(prompt)
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens is not None
    assert result.usage is not None
    generated = len(logprobs.tokens) - count
    assert 1 <= generated <= result.usage.completion_tokens <= 3
    if choice.finish_reason == "length":
        assert generated == 3
    assert logprobs.token_logprobs is not None and logprobs.top_logprobs is not None
    assert logprobs.text_offset is not None
    assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.text_offset)
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(isinstance(v, float) and v <= 0 for v in logprobs.token_logprobs[1:])
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs[1:])
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0
    # greedy: each generated token is the most likely one there
    for token, value, top in list(
        zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True)
    )[count:]:
        assert value == pytest.approx(max(top.values()), abs=1e-4), token


def test_echo_with_max_tokens_zero_returns_only_the_prompts_logprobs(
    client: openai.OpenAI, http: httpx.Client
):
    prompts = ["Hello world", "One, two"]
    result = client.completions.create(
        model="tiny-llama", prompt=prompts, echo=True, logprobs=1, max_tokens=0
    )
    for prompt, choice in zip(prompts, result.choices, strict=True):
        assert choice.text == prompt and choice.finish_reason == "length"
        assert choice.logprobs is not None and choice.logprobs.tokens is not None
        assert len(choice.logprobs.tokens) == len(_tokens(http, "tiny-llama", prompt))
        assert choice.logprobs.token_logprobs is not None and choice.logprobs.token_logprobs[0] is None
    assert result.usage is not None and result.usage.completion_tokens == 0


def test_chat_logprobs_shapes_streamed_and_not(client: openai.OpenAI):
    result = client.chat.completions.create(
        model="smollm2", messages=MESSAGES, logprobs=True, top_logprobs=3, max_tokens=5, temperature=0
    )
    [choice] = result.choices
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert result.usage is not None and 1 <= len(content) <= result.usage.completion_tokens
    if choice.finish_reason == "length":
        assert len(content) == 5
    for token in content:
        assert token.bytes == list(token.token.encode("utf-8"))
        assert len(token.top_logprobs) == 3
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob, abs=1e-4)  # greedy
    streamed = []
    for chunk in client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        logprobs=True,
        top_logprobs=3,
        max_tokens=5,
        temperature=0,
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed.extend(chunk.choices[0].logprobs.content)
    assert [t.token for t in streamed] == [t.token for t in content]


# ---- sampling controls ---------------------------------------------------------------------------


def test_penalties_bias_and_bookkeeping_fields_are_accepted(client: openai.OpenAI):
    completion = client.completions.create(
        model="tiny-llama",
        prompt="One, two, three,",
        max_tokens=4,
        presence_penalty=1.0,
        frequency_penalty=0.5,
        logit_bias={"5": -100},
        user="integration",
        extra_body={"repetition_penalty": 1.2, "min_tokens": 2},
    )
    assert completion.choices[0].finish_reason in ("stop", "length")
    chat = client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        max_completion_tokens=4,
        presence_penalty=-0.5,
        frequency_penalty=2,
        logit_bias={"0": 10},
        store=False,
        metadata={"suite": "integration"},
        user="integration",
    )
    assert chat.usage is not None and chat.usage.completion_tokens <= 4


@pytest.mark.parametrize("key", ["99999999", "hello"])
def test_a_bad_logit_bias_key_is_400(client: openai.OpenAI, key: str):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=1, logit_bias={key: 1})
    assert _bad_request(caught)["param"] == "logit_bias"


def test_out_of_range_controls_are_400_naming_the_field(client: openai.OpenAI):
    for field, value in (("presence_penalty", 2.5), ("frequency_penalty", -3), ("top_logprobs", 21)):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model="smollm2", messages=MESSAGES, max_tokens=1, logprobs=True, extra_body={field: value}
            )
        assert _bad_request(caught)["param"] == field
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=1, logprobs=6)
    assert _bad_request(caught)["param"] == "logprobs"


# ---- /tokenize and /detokenize -------------------------------------------------------------------


def test_tokenize_detokenize_round_trip(http: httpx.Client):
    text = "The capital of France is Paris."
    response = http.post(
        "/tokenize",
        json={"model": "smollm2", "prompt": text, "add_special_tokens": False, "return_token_strs": True},
    )
    assert response.status_code == 200, response.text
    tokenized = response.json()
    assert tokenized["count"] == len(tokenized["tokens"]) == len(tokenized["token_strs"]) > 0
    assert tokenized["max_model_len"] == 512
    assert "".join(tokenized["token_strs"]) == text
    back = http.post("/detokenize", json={"model": "smollm2", "tokens": tokenized["tokens"]})
    assert back.status_code == 200, back.text
    assert back.json() == {"prompt": text}


def test_tokenize_a_chat_counts_what_the_model_is_sent(client: openai.OpenAI, http: httpx.Client):
    response = http.post("/tokenize", json={"model": "smollm2", "messages": MESSAGES})
    assert response.status_code == 200, response.text
    chat = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=1)
    assert chat.usage is not None and response.json()["count"] == chat.usage.prompt_tokens


def test_tokenize_errors_are_openai_shaped(http: httpx.Client):
    missing = http.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"
    bad = http.post("/detokenize", json={"model": "smollm2", "tokens": [-1]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens[0]"


# ---- one row never fails the batch ---------------------------------------------------------------

EXTREMES: list[dict[str, Any]] = [
    {"top_p": 1e-300, "temperature": 1.0},
    {"temperature": 2.0, "top_k": 1},
    {"temperature": 1e-9},
    {"temperature": 2.0, "top_p": 1e-9, "top_k": 100000},
    {"presence_penalty": 2, "frequency_penalty": 2, "repetition_penalty": 10},
    {"presence_penalty": -2, "frequency_penalty": -2, "repetition_penalty": 0.01},
    {"logit_bias": {str(i): 100 for i in range(1, 300)}},
    {"logit_bias": {str(i): -100 for i in range(0, 300)}},
    {"temperature": 1.5, "seed": 2**63 - 1, "min_tokens": 16},
]


def test_extreme_sampling_values_next_to_plain_requests_fail_no_plain_row(http: httpx.Client):
    """Every extreme row decodes in the same batches as plain greedy rows: the plain rows all answer
    what they answer alone, and no extreme row gets a 5xx."""
    from concurrent.futures import ThreadPoolExecutor

    prompts = ["Once upon a time", "The capital of France is", "One, two, three,"]

    def complete(body: dict[str, Any]) -> httpx.Response:
        payload = {"model": "tiny-llama", "max_tokens": 16, "ignore_eos": True, **body}
        return http.post("/v1/completions", json=payload)

    alone = {p: complete({"prompt": p, "temperature": 0}).json()["choices"][0]["text"] for p in prompts}
    plain: list[dict[str, Any]] = [{"prompt": p, "temperature": 0} for p in prompts * 3]
    extreme = [{"prompt": prompts[i % len(prompts)], **e} for i, e in enumerate(EXTREMES)]
    with ThreadPoolExecutor(max_workers=len(plain) + len(extreme)) as pool:
        answers = list(pool.map(complete, plain + extreme))
    for body, response in zip(plain, answers[: len(plain)], strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["text"] == alone[body["prompt"]]
    for body, response in zip(extreme, answers[len(plain) :], strict=True):
        assert response.status_code < 500, (body, response.text)
