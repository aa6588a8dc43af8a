"""Automatic prefix caching (issue 18): greedy outputs identical with the cache on and off."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from llmaas.config.catalog import ModelSpec
from llmaas.engine.deepspeed_engine import DeepSpeedEngine
from llmaas.engine.prefix_cache import PrefixCache, block_hashes
from llmaas.engine.runner import ShardRunner
from llmaas.engine.types import GenerationRequest, SamplingParams
from tests.engines import start_engine, stop_engine

BLOCK = 4


def _engine(path: Path, **prefix_cache: Any) -> tuple[DeepSpeedEngine, asyncio.AbstractEventLoop]:
    return start_engine(
        path,
        id="pc",
        batching={"max_batch_size": 8, "batch_wait_ms": 20},
        prefix_cache={"block_size": BLOCK, **prefix_cache},
    )


@pytest.fixture(scope="module")
def engines(chat_model_path: Path):
    made = {
        "off": _engine(chat_model_path, enabled=False),
        "on": _engine(chat_model_path),
        "tiny": _engine(chat_model_path, max_tokens=3 * BLOCK),
    }
    yield made
    for eng, loop in made.values():
        stop_engine(eng, loop)


@pytest.fixture(scope="module")
def tokenizer(chat_model_path: Path):
    return AutoTokenizer.from_pretrained(chat_model_path)


async def _run(eng: DeepSpeedEngine, prompt: list[int], max_tokens: int = 12, **request: Any):
    req = GenerationRequest(
        request_id="r",
        prompt_token_ids=prompt,
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
        **request,
    )
    ids: list[int] = []
    cached = []
    async for chunk in eng.generate(req):
        ids.extend(chunk.token_ids)
        cached.append(chunk.num_cached_tokens)
    assert len(set(cached)) == 1, "every chunk of a sequence reports the same cached tokens"
    return ids, cached[-1]


def _solo(engines, name: str, prompts: list[list[int]], **kw: Any) -> list[tuple[list[int], int]]:
    eng, loop = engines[name]
    return [loop.run_until_complete(_run(eng, p, **kw)) for p in prompts]


def _together(engines, name: str, prompts: list[list[int]], **kw: Any) -> list[tuple[list[int], int]]:
    eng, loop = engines[name]

    async def all_() -> list[tuple[list[int], int]]:
        return list(await asyncio.gather(*(_run(eng, p, **kw) for p in prompts)))

    return loop.run_until_complete(all_())


SYSTEM = "You are a helpful assistant. Answer briefly and politely, in one short sentence. "
QUESTIONS = ["What is llmaas?", "Hello", "The capital of Japan is", "Monday, Tuesday,", "Count: one two"]


def _shared(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(SYSTEM + q) for q in QUESTIONS]


def test_sequential_hits_are_identical_to_cache_off(engines, tokenizer):
    prompts = _shared(tokenizer)
    off = _solo(engines, "off", prompts)
    on = _solo(engines, "on", prompts)
    assert [ids for ids, _ in on] == [ids for ids, _ in off]
    assert all(cached == 0 for _, cached in off)
    assert on[0][1] == 0 or on[0][1] % BLOCK == 0
    assert all(cached >= 4 * BLOCK for _, cached in on[1:]), "later prompts reuse the shared prefix"


def test_concurrent_shared_prefix_and_mixed_hits_and_misses(engines, tokenizer):
    prompts = _shared(tokenizer)
    misses = [tokenizer.encode(t) for t in ("Tell me a story about a cat", "Once upon a time", "2 + 2 =")]
    questions = [tokenizer.encode(SYSTEM + q + " Why?") for q in QUESTIONS]
    batch = [*questions, *misses, *prompts]
    off = _together(engines, "off", batch, max_tokens=20)
    on = _together(engines, "on", batch, max_tokens=20)
    assert [ids for ids, _ in on] == [ids for ids, _ in off]
    assert sum(cached > 0 for _, cached in on) >= len(questions)


def test_remainder_of_one_token_and_full_prompt_hits(engines, tokenizer):
    base = tokenizer.encode(SYSTEM + "Go on")
    aligned = base[: (len(base) // BLOCK) * BLOCK]
    one_more = [*aligned, base[-1] if len(base) > len(aligned) else base[0]]
    prompts = [aligned, aligned, one_more, one_more]
    off = _solo(engines, "off", prompts)
    on = _solo(engines, "on", prompts)
    assert [ids for ids, _ in on] == [ids for ids, _ in off]
    # the second run of a block-aligned prompt reuses all but its last block: the last token runs
    assert on[1][1] == len(aligned) - BLOCK
    # aligned + 1 token: every block is cached, only the last token is prefilled
    assert on[2][1] == on[3][1] == len(aligned)


def test_prefixes_evicted_mid_run_keep_outputs_identical(engines, tokenizer):
    eng, _ = engines["tiny"]
    prompts = [
        *_shared(tokenizer),
        *(tokenizer.encode(f"{i} apples and {i} pears, {SYSTEM}") for i in range(6)),
    ]
    off = _together(engines, "off", prompts * 2, max_tokens=16)
    on = _together(engines, "tiny", prompts * 2, max_tokens=16)
    solo = _solo(engines, "tiny", prompts, max_tokens=16)
    assert [ids for ids, _ in on] == [ids for ids, _ in off]
    assert [ids for ids, _ in solo] == [ids for ids, _ in off[: len(prompts)]]
    assert eng.scheduler.prefix_cache.evicted > 0
    health = eng.health()
    assert health.prefix_cache_tokens <= health.prefix_cache_capacity_tokens == 3 * BLOCK


def test_hit_counters_and_salt(engines, tokenizer):
    eng, loop = engines["on"]
    prompt = tokenizer.encode(SYSTEM + "A brand new question about salt and pepper")
    before = eng.health()
    first = loop.run_until_complete(_run(eng, prompt))
    again = loop.run_until_complete(_run(eng, prompt))
    salted = loop.run_until_complete(_run(eng, prompt, cache_salt="tenant-b"))
    after = eng.health()
    assert again[0] == first[0] == salted[0]
    assert again[1] == ((len(prompt) - 1) // BLOCK) * BLOCK
    assert salted[1] == 0, "another salt never shares cached KV"
    assert after.prefix_cache == "on"
    assert after.prefix_cache_queries - before.prefix_cache_queries == 3 * len(prompt)
    assert after.prefix_cache_hits - before.prefix_cache_hits == first[1] + again[1]
    assert after.prefix_cache_hit_rate is not None and 0 < after.prefix_cache_hit_rate < 1
    assert 0 < after.prefix_cache_tokens <= after.prefix_cache_capacity_tokens


def test_prompt_logprobs_rows_bypass_the_cache(engines, tokenizer):
    eng, loop = engines["on"]
    prompt = _shared(tokenizer)[0]
    loop.run_until_complete(_run(eng, prompt))

    async def scored():
        req = GenerationRequest(
            request_id="s",
            prompt_token_ids=prompt,
            sampling=SamplingParams(max_tokens=4, temperature=0.0, prompt_logprobs=0),
        )
        return [chunk async for chunk in eng.generate(req)]

    chunks = loop.run_until_complete(scored())
    assert chunks[0].prompt_logprobs is not None and len(chunks[0].prompt_logprobs) == len(prompt)
    assert chunks[-1].num_cached_tokens == 0


def test_disabled_with_a_reason(engines):
    eng, _ = engines["off"]
    assert eng.health().prefix_cache.startswith("off: disabled in the catalog")
    assert eng.scheduler.prefix_cache is None

    def state(**spec: Any) -> str:
        model_spec = ModelSpec.model_validate({"id": "x", "source": {"demo": "tiny-llama-chat"}, **spec})
        return ShardRunner(model_spec, Path("/nonexistent")).prefix_cache_state()

    assert state(tensor_parallel_size=2).startswith("off: tensor-parallel")
    from transformers import MistralConfig

    runner = ShardRunner(
        ModelSpec.model_validate({"id": "x", "source": {"demo": "tiny-llama-chat"}}), Path(".")
    )
    config = MistralConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, sliding_window=16
    )
    runner.model = SimpleNamespace(config=config)
    assert runner.prefix_cache_state() == "off: sliding-window or non-standard KV cache"


def test_store_evicts_leaves_first_and_chains_on_the_salt():
    cache = PrefixCache(block_size=2, capacity_tokens=8)  # 4 blocks
    kv = torch.zeros((1, 2, 1, 6, 1))
    a = cache.keys([1, 2, 3, 4, 5, 6])
    cache.put(a, 0, kv)
    b = cache.keys([1, 2, 9, 9])
    assert cache.match(b, 5) == 1
    cache.put(b, 1, kv[:, :, :, :2])  # block 0 shared: only b's second block is new
    assert cache.num_tokens == 8
    assert cache.match(a, 7) == 3, "a's chain is whole"
    c = cache.keys([7, 7])
    cache.put(c, 0, kv[:, :, :, :2])
    assert cache.match(a, 7) == 2 and cache.match(b, 5) == 2, "the least recent leaf went first"
    assert block_hashes([1, 2], 2) != block_hashes([1, 2], 2, salt="t")
    assert cache.match(cache.keys([1, 2, 3, 4]), 4) == 1, "the last token is never taken from the cache"


def test_status_shows_the_prefix_cache_state():
    from llmaas.engine.types import EngineHealth
    from llmaas.status import AppStatus, DeploymentRow, render

    def row(name: str, **health: Any) -> DeploymentRow:
        return DeploymentRow(
            name=name,
            kind="model",
            status="HEALTHY",
            replicas={"RUNNING": 1},
            health=EngineHealth(healthy=True, **health),
        )

    table = render(
        AppStatus(
            app="llmaas",
            status="RUNNING",
            deployments=[
                row(
                    "a",
                    prefix_cache="on",
                    prefix_cache_queries=200,
                    prefix_cache_hits=150,
                    prefix_cache_tokens=64,
                    prefix_cache_capacity_tokens=1024,
                ),
                row("b", prefix_cache="off: sliding-window or non-standard KV cache"),
            ],
        )
    )
    assert "  a: on, 75% of prompt tokens cached, holds 64/1024 tokens" in table.splitlines()
    assert "  b: off: sliding-window or non-standard KV cache" in table.splitlines()
