"""Router-side tokenization: short inputs are encoded in-process, long ones go to the tokenizer deployment."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llmaas.errors import TokenizationError
from llmaas.openai.errors import to_openai_error
from llmaas.tokenization import LocalFirstTokenizer, TokenizerPool


class CountingRemote:
    """Stands in for the tokenizer deployment: the same pool, but every call is counted."""

    def __init__(self, pool: TokenizerPool) -> None:
        self.pool = pool
        self.calls: list[str] = []

    async def encode(self, model_id: str, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        self.calls.append("encode")
        return self.pool.encode(model_id, texts, add_special_tokens)

    async def chat_template(
        self,
        model_id: str,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        self.calls.append("chat_template")
        return self.pool.chat_template(model_id, messages, add_generation_prompt, tools)

    async def supports_tools(self, model_id: str) -> bool:
        self.calls.append("supports_tools")
        return self.pool.supports_tools(model_id)

    async def parses_responses(self, model_id: str) -> bool:
        self.calls.append("parses_responses")
        return self.pool.parses_responses(model_id)

    async def parse_response(
        self, model_id: str, prompt_ids: list[int], text: str, tools: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        self.calls.append("parse_response")
        return self.pool.parse_response(model_id, prompt_ids, text, tools)

    async def token_strings(self, model_id: str, ids: list[int]) -> list[str]:
        self.calls.append("token_strings")
        return self.pool.token_strings(model_id, ids)

    async def decode(self, model_id: str, ids: list[int], skip_special_tokens: bool) -> str:
        self.calls.append("decode")
        return self.pool.decode(model_id, ids, skip_special_tokens)


@pytest.fixture(scope="module")
def pool(chat_model_path: Path) -> TokenizerPool:
    return TokenizerPool({"chat": chat_model_path})


def _tokenizer(pool: TokenizerPool, inline_max_chars: int) -> tuple[LocalFirstTokenizer, CountingRemote]:
    remote = CountingRemote(pool)
    return LocalFirstTokenizer(pool, remote, inline_max_chars=inline_max_chars), remote


def test_short_inputs_stay_in_process_long_ones_go_remote_with_equal_ids(pool: TokenizerPool):
    local, remote = _tokenizer(pool, inline_max_chars=40)
    short, long = "What is llmaas?", "How do I add a model to the catalog? " * 4
    assert asyncio.run(local.encode("chat", [short], True)) == pool.encode("chat", [short], True)
    assert remote.calls == []
    assert asyncio.run(local.encode("chat", [long], True)) == pool.encode("chat", [long], True)
    assert remote.calls == ["encode"]
    # NOTE: the limit counts the characters of every text in one call, not of each
    asyncio.run(local.encode("chat", [short, short, short], True))
    assert remote.calls == ["encode", "encode"]
    assert (local.inline_calls, local.remote_calls) == (1, 2)


def test_chat_template_follows_the_same_rule(pool: TokenizerPool):
    local, remote = _tokenizer(pool, inline_max_chars=100)
    messages = [{"role": "user", "content": "Hello"}]
    assert asyncio.run(local.chat_template("chat", messages, True)) == pool.chat_template(
        "chat", messages, True
    )
    assert remote.calls == []
    long = [{"role": "user", "content": "x" * 101}]
    asyncio.run(local.chat_template("chat", long, True))
    assert remote.calls == ["chat_template"]


def test_zero_sends_everything_to_the_tokenizer_deployment(pool: TokenizerPool):
    local, remote = _tokenizer(pool, inline_max_chars=0)
    asyncio.run(local.encode("chat", ["a"], True))
    asyncio.run(local.chat_template("chat", [{"role": "user", "content": "a"}], True))
    assert remote.calls == ["encode", "chat_template"]


def test_token_strings_are_each_tokens_own_text(pool: TokenizerPool):
    text = "Hello world, café"
    ids = pool.encode("chat", [text], True)[0]
    strings = pool.token_strings("chat", ids)
    assert len(strings) == len(ids)
    assert "".join(strings).replace("\ufffd", "") == text.replace("é", "")  # é is two byte tokens
    assert strings[1].startswith(" "), "a byte-level token keeps its leading space"
    assert pool.token_strings("chat", []) == []
    eos = pool.get("chat").eos_token_id
    assert pool.token_strings("chat", [eos]) == [pool.get("chat").eos_token], "special tokens are named"


def test_decode_keeps_or_skips_special_tokens(pool: TokenizerPool):
    tokenizer = pool.get("chat")
    ids = [*pool.encode("chat", ["Hello"], False)[0], tokenizer.eos_token_id]
    assert pool.decode("chat", ids, skip_special_tokens=False) == "Hello" + tokenizer.eos_token
    assert pool.decode("chat", ids) == "Hello"


def test_token_ids_count_one_character_each_against_the_inline_limit(pool: TokenizerPool):
    local, remote = _tokenizer(pool, inline_max_chars=3)
    ids = pool.encode("chat", ["Hello world"], True)[0]
    assert asyncio.run(local.token_strings("chat", ids[:3])) == pool.token_strings("chat", ids[:3])
    assert asyncio.run(local.decode("chat", ids[:2], False)) == pool.decode("chat", ids[:2], False)
    assert remote.calls == []
    assert asyncio.run(local.token_strings("chat", ids * 2)) == pool.token_strings("chat", ids * 2)
    assert asyncio.run(local.decode("chat", ids, True)) == "Hello world"
    assert remote.calls == ["token_strings", "decode"]


def test_unknown_model_goes_to_the_deployment_not_a_local_crash(pool: TokenizerPool):
    local, remote = _tokenizer(pool, inline_max_chars=4096)
    asyncio.run(local.encode("chat", ["a"], True))
    with pytest.raises(KeyError):  # the counting stand-in has no such model either
        asyncio.run(local.encode("other", ["a"], True))
    assert remote.calls == ["encode"]


def test_local_errors_keep_their_openai_shape(minilm_path: Path):
    # a model without a chat template (an embedding model) gets the same 400 in-process as remotely
    plain = TokenizerPool({"gpt": minilm_path})
    local = LocalFirstTokenizer(plain, CountingRemote(plain), inline_max_chars=4096)
    with pytest.raises(TokenizationError) as caught:
        asyncio.run(local.chat_template("gpt", [{"role": "user", "content": "a"}], True))
    seen = to_openai_error(caught.value)
    assert (seen.status, seen.code, seen.param) == (400, "no_chat_template", "model")
    assert local.inline_calls == 1


def test_remote_errors_keep_their_shape_across_the_handle():
    # the tokenizer deployment raises TokenizationError; Serve hands the router a RayTaskError
    import pickle
    from types import SimpleNamespace

    from ray.exceptions import RayTaskError

    from llmaas.deployments.handles import HandleTokenizer

    async def refusing(
        model_id: str, messages: list[dict[str, str]], add_generation_prompt: bool, tools: object = None
    ) -> list[int]:
        cause = TokenizationError(f"model '{model_id}' has no chat template", "model", "no_chat_template")
        raise pickle.loads(
            pickle.dumps(RayTaskError("chat_template", "traceback", cause))
        ).as_instanceof_cause()

    handle: Any = SimpleNamespace(chat_template=SimpleNamespace(remote=refusing))
    with pytest.raises(TokenizationError) as caught:
        asyncio.run(HandleTokenizer(handle).chat_template("gpt", [{"role": "user", "content": "a"}], True))
    seen = to_openai_error(caught.value)
    assert (seen.status, seen.code, seen.param, seen.message) == (
        400,
        "no_chat_template",
        "model",
        "model 'gpt' has no chat template",
    )


def test_handle_tokenizer_forwards_token_strings_and_decode():
    from types import SimpleNamespace

    from llmaas.deployments.handles import HandleTokenizer

    calls: list[tuple[Any, ...]] = []

    async def token_strings(model_id: str, ids: list[int]) -> list[str]:
        calls.append(("token_strings", model_id, ids))
        return [str(i) for i in ids]

    async def decode(model_id: str, ids: list[int], skip_special_tokens: bool) -> str:
        calls.append(("decode", model_id, ids, skip_special_tokens))
        return "text"

    handle: Any = SimpleNamespace(
        token_strings=SimpleNamespace(remote=token_strings), decode=SimpleNamespace(remote=decode)
    )
    remote = HandleTokenizer(handle)
    assert asyncio.run(remote.token_strings("m", [1, 2])) == ["1", "2"]
    assert asyncio.run(remote.decode("m", [1], False)) == "text"
    assert calls == [("token_strings", "m", [1, 2]), ("decode", "m", [1], False)]


def test_tokenizer_deployment_serves_token_strings_and_decode(pool: TokenizerPool):
    from llmaas.deployments.tokenizer import Tokenizer

    deployment = Tokenizer.__new__(Tokenizer)  # the pool it would load, without Serve
    deployment.pool = pool
    ids = pool.encode("chat", ["Hello"], False)[0]
    assert deployment.token_strings("chat", ids) == pool.token_strings("chat", ids)
    assert deployment.decode("chat", ids, False) == "Hello"
