"""The router's exact-response cache: who may use it, keys, expiry and eviction, hits as misses were."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from llmaas.config.catalog import Catalog, ModelSpec
from llmaas.gateway.store import SQLiteStore, UsageRow
from llmaas.openai.frontend import OpenAIFrontend
from llmaas.openai.protocol import ChatCompletionRequest, CompletionRequest
from llmaas.openai.response_cache import ResponseCache, cache_status
from llmaas.openai.service import OpenAIService
from tests.unit.openai_fakes import FakeTokenizer, LogprobModel
from tests.unit.test_metrics import Collecting


def spec(**cache: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"id": "gen", "source": {"demo": "tiny-llama-chat"}, "response_cache": {"enabled": True, **cache}}
    )


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate(
        {"model": "gen", "prompt": "hi", "temperature": 0, "cache": True, **fields}
    )


def test_only_deterministic_single_choice_opted_in_requests_have_keys():
    cache, model = ResponseCache(), spec()
    assert cache.key(completion(), model, None) is not None
    assert cache.key(completion(temperature=1.0, seed=3), model, None) is not None  # seeded
    assert cache.key(completion(temperature=1.0), model, None) is None  # sampled
    assert cache.key(completion(n=2), model, None) is None
    assert cache.key(completion(cache=False), model, None) is None
    assert cache.key(completion(cache=None), model, None) is None  # opt-in by default
    assert cache.key(completion(cache=None), spec(default=True), None) is not None
    assert (
        cache.key(
            completion(), ModelSpec.model_validate({"id": "gen", "source": {"demo": "tiny-gpt2"}}), None
        )
        is None
    )


def test_keys_separate_tenants_bodies_and_revisions_but_not_labels():
    cache, model = ResponseCache(), spec()
    key = cache.key(completion(), model, "key-a")
    assert key == cache.key(completion(user="someone"), model, "key-a")
    assert key != cache.key(completion(), model, "key-b")
    assert key != cache.key(completion(prompt="ho"), model, "key-a")
    assert key != cache.key(completion(stream=True), model, "key-a")
    other = ModelSpec.model_validate({**model.model_dump(), "dtype": "bfloat16"})
    assert key != cache.key(completion(), other, "key-a")


def test_entries_expire_and_the_least_recently_used_go_first():
    clock = [0.0]
    cache = ResponseCache(clock=lambda: clock[0])
    model = spec(ttl_s=10, max_entries=2)
    answers = {k: [completion(prompt=k)] for k in "abc"}
    cache.put(model, "a", answers["a"])  # type: ignore[arg-type]
    cache.put(model, "b", answers["b"])  # type: ignore[arg-type]
    assert cache.get(model, "a") is not None  # a is now the most recent
    cache.put(model, "c", answers["c"])  # type: ignore[arg-type]
    assert cache.get(model, "b") is None and len(cache) == 2
    clock[0] = 11.0
    assert cache.get(model, "a") is None and cache.get(model, "c") is None
    small = spec(max_bytes=1024)
    cache.put(small, "big", [completion(prompt="x" * 2000)])
    assert cache.get(small, "big") is None  # larger than the whole budget: never kept


def _frontend(**cache: Any) -> tuple[OpenAIFrontend, LogprobModel, Collecting]:
    catalog = Catalog.model_validate(
        {
            "models": [
                {
                    "id": "gen",
                    "source": {"demo": "tiny-llama-chat"},
                    "response_cache": {"enabled": True, **cache},
                }
            ]
        }
    )
    model, recorder = LogprobModel(), Collecting()
    service = OpenAIService(catalog, FakeTokenizer(), {"gen": model}, metrics=recorder)
    return OpenAIFrontend(service), model, recorder


def test_a_hit_answers_without_the_model_under_a_new_id():
    front, model, recorder = _frontend()

    async def main() -> None:
        first = await front.completion(completion(max_tokens=3))
        assert cache_status() == "miss"
        second = await front.completion(completion(max_tokens=3))
        assert cache_status() == "hit"
        assert len(model.requests) == 1
        assert second.choices == first.choices and second.usage == first.usage  # type: ignore[union-attr]
        assert second.id != first.id  # type: ignore[union-attr]
        await front.completion(completion(max_tokens=3, temperature=0.7))
        assert cache_status() == "bypass" and len(model.requests) == 2

    asyncio.run(main())
    assert [r.cached for r in recorder.records] == [False, True, False]
    assert recorder.records[1].generation_tokens == 3  # the ledger holds what the answer holds


def test_a_streamed_hit_streams_the_recorded_chunks():
    front, model, _ = _frontend()
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    request = ChatCompletionRequest.model_validate({"model": "gen", "temperature": 0, "cache": True, **body})

    async def chunks() -> list[Any]:
        return [c async for c in front.chat_stream(request)]

    async def main() -> None:
        miss = await chunks()
        hit = await chunks()
        assert len(model.requests) == 1
        text = ["".join(c.choices[0].delta.content or "" for c in run if c.choices) for run in (miss, hit)]
        assert text[0] == text[1] and text[0]
        assert hit[-1].choices[0].finish_reason == miss[-1].choices[0].finish_reason
        assert len({c.id for c in hit}) == 1 and hit[0].id != miss[0].id

    asyncio.run(main())


def test_a_failed_stream_is_not_kept():
    front, model, _ = _frontend()
    request = completion(max_tokens=50, stream=True)  # beyond the fake's context: the service refuses it
    model.context = 10

    async def main() -> None:
        for _ in range(2):
            parts = [c async for c in front.completion_stream(request)]
            assert getattr(parts[-1], "status", None) == 400
        assert len(front.cache) == 0

    asyncio.run(main())


def test_a_ledger_made_before_the_cached_column_gets_it(tmp_path: Path):
    path = tmp_path / "ledger.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE usage (request_id TEXT NOT NULL, key_id TEXT, model TEXT NOT NULL, route TEXT NOT "
            "NULL, status INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT "
            "NULL, latency_ms DOUBLE PRECISION NOT NULL, created_at DOUBLE PRECISION NOT NULL)"
        )
        conn.execute("INSERT INTO usage VALUES ('old', NULL, 'gen', '/v1/completions', 200, 1, 2, 3.0, 1.0)")
    store = SQLiteStore(path)
    row = UsageRow(
        request_id="new",
        key_id=None,
        model="gen",
        route="/v1/completions",
        status=200,
        prompt_tokens=1,
        completion_tokens=2,
        latency_ms=0.1,
        created_at=2.0,
        cached=True,
    )
    store.add_usage([row])
    assert [(r.request_id, r.cached) for r in store.usage_rows()] == [("old", False), ("new", True)]
    assert store.usage()[0].cached == 1
    store.close()
