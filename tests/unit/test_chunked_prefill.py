"""Chunked prefill (issue 18): a long prompt arriving while others decode is prefilled a chunk per
step, so running streams keep stepping; every greedy output is the one of a whole prefill."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llmaas.engine.batcher import MIN_CHUNK_TOKENS, chunk_size
from llmaas.engine.deepspeed_engine import DeepSpeedEngine
from llmaas.engine.types import GenerationRequest, SamplingParams
from tests.engines import start_engine, stop_engine

CHUNK = 16
SHORT = [[5, 17, 29, 41, 7], [11, 23, 35, 47, 9, 3], [13, 19, 31, 43]]


def _engine(path: Path, **batching: Any) -> tuple[DeepSpeedEngine, asyncio.AbstractEventLoop]:
    return start_engine(
        path,
        id="cp",
        batching={"max_batch_size": 8, "batch_wait_ms": 5, **batching},
        prefix_cache={"block_size": 8},
    )


@pytest.fixture(scope="module")
def engines(chat_model_path: Path):
    made = {
        "chunked": _engine(chat_model_path, prefill_chunk_tokens=CHUNK),
        "whole": _engine(chat_model_path, chunked_prefill=False),
        "auto": _engine(chat_model_path),
    }
    yield made
    for eng, loop in made.values():
        stop_engine(eng, loop)


class _Log:
    """Which stream each token came from, in the order they arrived; awaitable counts."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._changed = asyncio.Event()

    def add(self, name: str, tokens: int) -> None:
        self.names.extend(name for _ in range(tokens))
        self._changed.set()

    async def until(self, name: str, count: int) -> None:
        while self.names.count(name) < count:
            self._changed.clear()
            await self._changed.wait()


def _long(seed: int, length: int = 300) -> list[int]:
    return [(seed * 7919 + i * 104729) % 250 + 3 for i in range(length)]


async def _stream(eng: DeepSpeedEngine, prompt: list[int], max_tokens: int, log: _Log, name: str):
    request = GenerationRequest(
        request_id=name,
        prompt_token_ids=prompt,
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
    )
    ids: list[int] = []
    cached = 0
    async for chunk in eng.generate(request):
        log.add(name, len(chunk.token_ids))
        ids.extend(chunk.token_ids)
        cached = chunk.num_cached_tokens
    return ids, cached


async def _arrives_during(
    eng: DeepSpeedEngine, long_prompt: list[int], short_tokens: int = 60
) -> tuple[list[tuple[list[int], int]], int]:
    """Short streams decode; the long prompt arrives once they run. Returns every output, and how
    many tokens the first short stream got between that arrival and the long prompt's first token."""
    log = _Log()
    shorts = [asyncio.create_task(_stream(eng, p, short_tokens, log, f"s{i}")) for i, p in enumerate(SHORT)]
    await log.until("s0", 2)
    arrived = len(log.names)
    long = asyncio.create_task(_stream(eng, long_prompt, 8, log, "long"))
    results = list(await asyncio.gather(*shorts, long))
    first = log.names.index("long")
    return results, log.names[arrived:first].count("s0")


def _run(engines, name: str, coro_fn, *args: Any) -> Any:
    eng, loop = engines[name]
    return loop.run_until_complete(coro_fn(eng, *args))


def test_running_streams_keep_stepping_and_outputs_match_a_whole_prefill(engines):
    prompt = _long(1)
    whole, whole_gap = _run(engines, "whole", _arrives_during, prompt)
    before = engines["chunked"][0].health().chunked_prompts
    chunked, chunked_gap = _run(engines, "chunked", _arrives_during, prompt)
    assert [ids for ids, _ in chunked] == [ids for ids, _ in whole]
    assert engines["chunked"][0].health().chunked_prompts == before + 1
    # 300 tokens in chunks of 16: the running stream stepped once per chunk meanwhile
    assert chunked_gap >= len(prompt) // CHUNK - 3
    assert whole_gap <= 3, "a whole prefill is one step: the running stream waited for it"


def test_streams_that_end_mid_prefill_leave_the_rest_to_one_step(engines):
    prompt = _long(2)
    whole, _ = _run(engines, "whole", _arrives_during, prompt, 6)
    chunked, gap = _run(engines, "chunked", _arrives_during, prompt, 6)
    assert [ids for ids, _ in chunked] == [ids for ids, _ in whole]
    assert gap <= 6, "the prompt was not held back in chunks once nobody decoded"


def test_a_cached_prefix_is_prefilled_only_from_where_it_ends(engines):
    shared = _long(3, 200)
    first = [*shared, *_long(4, 60)]
    second = [*shared, *_long(5, 80)]
    _run(engines, "chunked", _arrives_during, first)
    (*_, (ids, cached)), _ = _run(engines, "chunked", _arrives_during, second)
    whole, _ = _run(engines, "whole", _arrives_during, second)
    assert ids == whole[-1][0]
    assert cached >= 192, "the shared 200 tokens (24 blocks of 8) came from the prefix cache"


def test_a_prompt_cancelled_mid_prefill_leaves_the_others_alone(engines):
    eng, loop = engines["chunked"]

    async def scenario() -> tuple[list[tuple[list[int], int]], tuple[list[tuple[list[int], int]], int]]:
        log = _Log()
        shorts = [asyncio.create_task(_stream(eng, p, 40, log, f"s{i}")) for i, p in enumerate(SHORT)]
        await log.until("s0", 2)
        long = asyncio.create_task(_stream(eng, _long(6), 8, log, "long"))
        await log.until("s0", log.names.count("s0") + 4)  # a few chunks ran
        long.cancel()
        done = list(await asyncio.gather(*shorts))
        return done, await _arrives_during(eng, _long(7))

    done, (after, _) = loop.run_until_complete(scenario())
    whole, _ = _run(engines, "whole", _arrives_during, _long(7))
    assert all(len(ids) == 40 for ids, _ in done)
    assert [ids for ids, _ in after] == [ids for ids, _ in whole]
    assert eng.health().running == 0


def test_chunks_sized_from_step_times(engines):
    # the auto engine sizes its chunks itself, within the bounds
    _run(engines, "auto", _arrives_during, _long(8, 400))
    health = engines["auto"][0].health()
    assert MIN_CHUNK_TOKENS <= health.prefill_chunk_tokens <= 8192
    # a step costs a + b * tokens: the size converges to the one whose step takes the target
    size = 64
    for _ in range(30):
        size = chunk_size(size, 0.05 + 0.002 * size, 0.1, most=8192)
    assert abs(size - 25) <= 1
    assert chunk_size(64, 1.0, 0.01, most=8192) == MIN_CHUNK_TOKENS
    assert chunk_size(64, 0.001, 1.0, most=512) == 512
