"""The fake engine (no Ray, no weights): the engine contract as the Serve layer sees it."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from llmaas.autoscaling import SEQUENCES_METRIC, autoscaling_stats
from llmaas.config.catalog import ModelSpec
from llmaas.engine import (
    EngineError,
    EngineNotReady,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    UnsupportedTask,
    default_engine_cls,
)
from llmaas.engine.fake import FAKE_ENGINE_PATH, FakeEngine

T = TypeVar("T")


def make_spec(model_id: str = "fake", *, args: dict[str, Any] | None = None, **fields: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "id": model_id,
            "source": {"path": "/nowhere"},
            "engine": {"cls": FAKE_ENGINE_PATH, "args": args or {}},
            **fields,
        }
    )


def run(body: Callable[[FakeEngine], Awaitable[T]], spec: ModelSpec | None = None) -> T:
    """Start a fake engine for ``spec``, run ``body`` on it, shut it down."""

    async def main() -> T:
        engine = FakeEngine(spec or make_spec(), Path("/nowhere"))
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.shutdown()

    return asyncio.run(main())


def request(prompt: list[int], *, rid: str = "r", stream: bool = True, **sampling: Any) -> GenerationRequest:
    sampling.setdefault("temperature", 0.0)
    return GenerationRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=SamplingParams(**sampling), stream=stream
    )


async def collect(engine: FakeEngine, req: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(req)]


def tokens(chunks: list[GenerationChunk]) -> list[int]:
    return [t for c in chunks for t in c.token_ids]


def test_streams_one_token_per_chunk_with_counts_and_length_finish():
    chunks = run(lambda e: collect(e, request([5, 6, 7], max_tokens=5)))
    assert len(chunks) == 5
    assert [c.num_generated_tokens for c in chunks] == [1, 2, 3, 4, 5]
    assert all(c.num_prompt_tokens == 3 and c.request_id == "r" for c in chunks)
    assert [c.finish_reason for c in chunks] == [None] * 4 + [FinishReason.LENGTH]
    assert "".join(c.text for c in chunks) == "".join(f" w{t}" for t in tokens(chunks))
    assert all(c.error is None for c in chunks)


def test_greedy_is_reproducible_and_depends_on_prompt_model_and_seed():
    async def body(engine: FakeEngine) -> dict[str, list[int]]:
        return {
            "a": tokens(await collect(engine, request([1, 2, 3], max_tokens=8))),
            "a again": tokens(await collect(engine, request([1, 2, 3], max_tokens=8))),
            "b": tokens(await collect(engine, request([1, 2, 4], max_tokens=8))),
            "seed 1": tokens(await collect(engine, request([1, 2, 3], max_tokens=8, temperature=1, seed=1))),
            "seed 1 again": tokens(
                await collect(engine, request([1, 2, 3], max_tokens=8, temperature=1, seed=1))
            ),
            "seed 2": tokens(await collect(engine, request([1, 2, 3], max_tokens=8, temperature=1, seed=2))),
            "no seed": tokens(await collect(engine, request([1, 2, 3], max_tokens=8, temperature=1))),
            "no seed again": tokens(await collect(engine, request([1, 2, 3], max_tokens=8, temperature=1))),
        }

    out = run(body)
    other_model = run(lambda e: collect(e, request([1, 2, 3], max_tokens=8)), make_spec("other"))
    assert out["a"] == out["a again"]
    assert out["a"] != out["b"]
    assert out["a"] != tokens(other_model)
    assert out["seed 1"] == out["seed 1 again"] != out["seed 2"]
    assert out["no seed"] != out["no seed again"]
    assert all(3 <= t < 32000 and t != 2 for ids in out.values() for t in ids)


def test_stream_false_gives_one_chunk_at_the_end():
    streamed = run(lambda e: collect(e, request([9, 9], max_tokens=6)))
    whole = run(lambda e: collect(e, request([9, 9], max_tokens=6, stream=False)))
    assert len(whole) == 1
    assert whole[0].finish_reason is FinishReason.LENGTH
    assert whole[0].token_ids == tokens(streamed)
    assert whole[0].text == "".join(c.text for c in streamed)
    assert whole[0].num_generated_tokens == 6


def test_stream_interval_groups_tokens_after_the_first():
    spec = make_spec(args={"step_delay_s": 0.01}, batching={"stream_interval": 3})
    chunks = run(lambda e: collect(e, request([4], max_tokens=10)), spec)
    sizes = [len(c.token_ids) for c in chunks]
    assert sizes[0] == 1 and sum(sizes) == 10
    assert all(size >= 3 for size in sizes[1:-1])
    assert chunks[-1].finish_reason is FinishReason.LENGTH


def test_auto_stream_interval_is_one_token_alone_and_more_per_message_under_load():
    # the default ("auto"): alone, every token is its own message; with 24 streams, a message
    # carries at least 3 tokens after the first, so the replica sends about 8 messages a step
    spec = make_spec(args={"step_delay_s": 0.01}, batching={"max_batch_size": 32, "batch_wait_ms": 20})
    assert spec.batching.stream_interval == "auto"
    alone = run(lambda e: collect(e, request([4], max_tokens=12)), spec)
    assert [len(c.token_ids) for c in alone] == [1] * 12

    async def crowd(engine: FakeEngine) -> list[list[GenerationChunk]]:
        return list(
            await asyncio.gather(
                *(collect(engine, request([i], rid=f"r{i}", max_tokens=12)) for i in range(24))
            )
        )

    for chunks in run(crowd, spec):
        sizes = [len(c.token_ids) for c in chunks]
        assert sizes[0] == 1 and sum(sizes) == 12
        assert all(size >= 3 for size in sizes[1:-1]), sizes
        assert chunks[-1].finish_reason is FinishReason.LENGTH


def test_max_batch_size_is_respected_and_the_rest_wait_in_health():
    spec = make_spec(args={"step_delay_s": 0.03}, batching={"max_batch_size": 2, "batch_wait_ms": 0})

    async def body(engine: FakeEngine) -> tuple[list[tuple[int, int]], list[list[GenerationChunk]]]:
        seen: list[tuple[int, int]] = []
        jobs = [
            asyncio.create_task(collect(engine, request([i], rid=f"r{i}", max_tokens=4))) for i in range(5)
        ]
        while not all(job.done() for job in jobs):
            health = engine.health()
            seen.append((health.running, health.waiting))
            await asyncio.sleep(0.003)
        return seen, [job.result() for job in jobs]

    seen, results = run(body, spec)
    assert max(running for running, _ in seen) == 2
    assert (2, 3) in seen  # two decode, three wait for a row
    assert all(r[-1].finish_reason is FinishReason.LENGTH and len(tokens(r)) == 4 for r in results)


def test_health_and_autoscaling_stats_count_running_and_waiting():
    spec = make_spec(args={"step_delay_s": 0.01}, batching={"max_batch_size": 1, "batch_wait_ms": 0})

    async def body(engine: FakeEngine) -> None:
        assert engine.health().steps == 0
        streams = [engine.generate(request([i], rid=f"r{i}", max_tokens=50)) for i in range(3)]
        firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await firsts[0]
        health = engine.health()
        assert (health.running, health.waiting) == (1, 2)
        assert autoscaling_stats(health) == {SEQUENCES_METRIC: 3.0}
        assert health.healthy and health.steps >= 1 and health.peak_batch == 1
        assert 0 < health.kv_used_tokens <= health.kv_capacity_tokens == 2048
        for first in firsts[1:]:
            first.cancel()  # as Serve cancels a call whose caller went away
        await asyncio.gather(*firsts[1:], return_exceptions=True)
        assert (engine.health().running, engine.health().waiting) == (1, 0)
        await streams[0].aclose()  # type: ignore[attr-defined]
        assert (engine.health().running, engine.health().waiting) == (0, 0)

    run(body, spec)


def test_closing_a_stream_frees_its_slot_for_a_waiting_request():
    spec = make_spec(args={"step_delay_s": 0.01}, batching={"max_batch_size": 1, "batch_wait_ms": 0})

    async def body(engine: FakeEngine) -> list[GenerationChunk]:
        long = engine.generate(request([1], rid="long", max_tokens=1000))
        first = await long.__anext__()
        assert first.request_id == "long"
        short = asyncio.create_task(collect(engine, request([2], rid="short", max_tokens=3)))
        await asyncio.sleep(0.05)
        assert (engine.health().running, engine.health().waiting) == (1, 1)
        await long.aclose()  # type: ignore[attr-defined]  # the client went away
        assert engine.health().running == 0  # freed at once, not at the next step
        chunks = await asyncio.wait_for(short, timeout=5)
        assert engine.health().steps < 50  # the long sequence stopped decoding
        return chunks

    chunks = run(body, spec)
    assert [c.finish_reason for c in chunks][-1] is FinishReason.LENGTH
    assert len(tokens(chunks)) == 3


def test_context_end_finishes_with_length():
    spec = make_spec(max_context_length=16, sampling={"max_tokens": 8})

    async def body(engine: FakeEngine) -> tuple[list[GenerationChunk], list[GenerationChunk]]:
        assert engine.info.max_context_length == 16
        return (
            await collect(engine, request(list(range(3, 13)), max_tokens=100)),
            await collect(engine, request(list(range(3, 19)), max_tokens=5)),
        )

    partly, full = run(body, spec)
    assert len(tokens(partly)) == 6 and partly[-1].finish_reason is FinishReason.LENGTH
    assert full == [GenerationChunk(request_id="r", num_prompt_tokens=16, finish_reason=FinishReason.LENGTH)]


def test_eos_stops_unless_ignore_eos():
    spec = make_spec(args={"eos_after_tokens": 3})

    async def body(engine: FakeEngine) -> tuple[list[GenerationChunk], list[GenerationChunk]]:
        return (
            await collect(engine, request([7], max_tokens=10)),
            await collect(engine, request([7], max_tokens=10, ignore_eos=True)),
        )

    stopped, ignored = run(body, spec)
    assert tokens(stopped)[-1] == 2 and len(tokens(stopped)) == 3
    assert stopped[-1].finish_reason is FinishReason.STOP
    assert "".join(c.text for c in stopped).count(" w") == 2  # EOS has no text
    assert len(tokens(ignored)) == 10 and ignored[-1].finish_reason is FinishReason.LENGTH
    assert tokens(ignored)[:3] == tokens(stopped)


def test_stop_strings_cut_the_text():
    plain = run(lambda e: collect(e, request([8, 8], max_tokens=6)))
    words = "".join(c.text for c in plain)
    stop = f" w{tokens(plain)[3]}"
    cut = run(lambda e: collect(e, request([8, 8], max_tokens=6, stop=(stop,))))
    assert cut[-1].finish_reason is FinishReason.STOP
    assert "".join(c.text for c in cut) == words[: words.index(stop)]


def test_stop_token_ids_end_the_sequence_and_min_tokens_holds_stop_strings_back():
    plain = run(lambda e: collect(e, request([8, 8], max_tokens=6)))
    ids = tokens(plain)
    at = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])
    cut = run(lambda e: collect(e, request([8, 8], max_tokens=6, stop_token_ids=(ids[at],))))
    assert tokens(cut) == ids[: at + 1] and cut[-1].finish_reason is FinishReason.STOP
    assert "".join(c.text for c in cut) == "".join(f" w{t}" for t in ids[:at])
    stop = f" w{ids[1]}"
    held = run(lambda e: collect(e, request([8, 8], max_tokens=6, stop=(stop,), min_tokens=6)))
    assert held[-1].finish_reason is FinishReason.LENGTH and tokens(held) == ids


def test_structured_output_is_refused_naming_the_field():
    from llmaas.engine.errors import InvalidStructuredOutput
    from llmaas.engine.types import StructuredOutput

    structured = StructuredOutput(kind="choice", choice=("yes", "no"), param="guided_choice")
    with pytest.raises(InvalidStructuredOutput, match="the fake engine does not constrain output") as caught:
        run(lambda e: collect(e, request([8], max_tokens=3, structured=structured)))
    assert caught.value.param == "guided_choice"


def test_info_and_health_before_and_after_start():
    async def main() -> None:
        engine = FakeEngine(make_spec(tensor_parallel_size=2), Path("/nowhere"), peers=object())
        with pytest.raises(EngineNotReady):
            _ = engine.info
        assert engine.health().healthy is False
        with pytest.raises(EngineNotReady):
            await collect(engine, request([1]))
        await engine.start()
        info = engine.info
        assert (info.architecture, info.max_context_length, info.tensor_parallel_size) == ("fake", 2048, 2)
        assert (info.task, info.vocab_size, info.eos_token_ids, info.embedding_dim) == (
            "generate",
            32000,
            [2],
            None,
        )
        assert engine.health().healthy
        await engine.shutdown()

    asyncio.run(main())


def test_load_delay_and_failed_start():
    async def main() -> None:
        slow = FakeEngine(make_spec(args={"load_delay_s": 0.05}), Path("/nowhere"))
        started = asyncio.get_running_loop().time()
        await slow.start()
        assert asyncio.get_running_loop().time() - started >= 0.05
        await slow.shutdown()
        with pytest.raises(EngineError, match="fail_start"):
            await FakeEngine(make_spec(args={"fail_start": True}), Path("/nowhere")).start()

    asyncio.run(main())


def test_embed_gives_deterministic_unit_vectors():
    spec = make_spec(task="embed", args={"embedding_dim": 8}, batching={"max_batch_size": 2})

    async def body(engine: FakeEngine) -> list[list[float]]:
        assert engine.info.embedding_dim == 8 and engine.info.task == "embed"
        first = await engine.embed([[1, 2], [3], [1, 2], [4, 5, 6]])
        assert first == await engine.embed([[1, 2], [3], [1, 2], [4, 5, 6]])
        assert engine.health().steps == 4  # two batches of two, twice
        with pytest.raises(UnsupportedTask):
            await collect(engine, request([1]))
        return first

    vectors = run(body, spec)
    assert all(len(v) == 8 and math.isclose(sum(x * x for x in v), 1.0) for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]


def test_generating_model_refuses_embed():
    async def body(engine: FakeEngine) -> None:
        with pytest.raises(UnsupportedTask, match="does not make embeddings"):
            await engine.embed([[1]])

    run(body)


def test_fail_after_tokens_ends_each_sequence_with_an_error():
    chunks = run(lambda e: collect(e, request([3], max_tokens=10)), make_spec(args={"fail_after_tokens": 2}))
    assert len(tokens(chunks)) == 2
    assert chunks[-1].finish_reason is FinishReason.ABORT
    assert chunks[-1].error is not None and "fail_after_tokens" in chunks[-1].error


def test_fatal_after_tokens_breaks_the_engine_and_tells_the_replica():
    spec = make_spec(args={"fatal_after_tokens": 2, "step_delay_s": 0.001})
    reasons: list[str] = []

    async def body(engine: FakeEngine) -> list[list[GenerationChunk]]:
        engine.on_fatal(reasons.append)
        results = await asyncio.gather(
            *(collect(engine, request([i], rid=f"r{i}", max_tokens=10)) for i in range(3))
        )
        assert not engine.health().healthy
        with pytest.raises(EngineNotReady, match="fatal_after_tokens"):
            await collect(engine, request([1]))
        return list(results)

    results = run(body, spec)
    assert len(reasons) == 1 and "fatal_after_tokens" in reasons[0]
    assert all(r[-1].finish_reason is FinishReason.ABORT and r[-1].error for r in results)


def test_unknown_or_bad_engine_args_are_refused_with_the_fix():
    with pytest.raises(
        ValueError, match=r"'step_delay' \(did you mean 'step_delay_s'\?\).*it takes: step_delay_s"
    ):
        FakeEngine(make_spec(args={"step_delay": 0.1}), Path("/nowhere"))
    with pytest.raises(ValueError, match=r"model 'fake': engine.args of .*step_delay_s"):
        FakeEngine(make_spec(args={"step_delay_s": -1}), Path("/nowhere"))
    with pytest.raises(ValueError, match="eos_token_id"):
        FakeEngine(make_spec(args={"vocab_size": 100, "eos_token_id": 100}), Path("/nowhere"))


def test_default_engine_cls_honours_the_catalog_engine():
    assert default_engine_cls(make_spec()) is FakeEngine


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("llmaas.engine.nope:FakeEngine", "cannot import module 'llmaas.engine.nope'"),
        ("llmaas.engine.fake:NoSuchEngine", "has no 'NoSuchEngine'"),
        ("llmaas.engine.types:ModelInfo", "not a subclass of llmaas.engine.Engine"),
        ("llmaas.engine.protocol:Engine", "is abstract"),
    ],
)
def test_a_bad_engine_path_names_the_path_and_the_fix(path: str, message: str):
    spec = make_spec().model_copy(update={"engine": make_spec().engine.model_copy(update={"cls": path})})  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=message) as raised:
        default_engine_cls(spec)
    assert f"model 'fake': engine.cls {path!r}" in str(raised.value)


def test_logprobs_are_one_per_token_plausible_and_merged_with_stream_interval():
    spec = make_spec(args={"step_delay_s": 0.005}, batching={"stream_interval": 3})
    chunks = run(lambda e: collect(e, request([4, 5], max_tokens=10, logprobs=3)), spec)
    assert all(c.logprobs is not None and len(c.logprobs) == len(c.token_ids) for c in chunks)
    entries = [lp for c in chunks for lp in c.logprobs or []]
    assert [lp.token_id for lp in entries] == tokens(chunks)
    for lp in entries:
        assert lp.logprob < 0 and len(lp.top) == 3
        assert lp.top[0] == (lp.token_id, lp.logprob), "a greedy token is the most likely"
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        assert len({t for t, _ in lp.top}) == 3
    again = run(lambda e: collect(e, request([4, 5], max_tokens=10, logprobs=3, stream=False)), spec)
    assert again[0].logprobs == entries, "deterministic, and kept whole when chunks merge"
    plain = run(lambda e: collect(e, request([4, 5], max_tokens=3)))
    assert all(c.logprobs is None and c.prompt_logprobs is None for c in plain)


def test_prompt_logprobs_come_first_and_max_tokens_zero_scores_the_prompt():
    prompt = [7, 8, 9, 10]
    chunks = run(lambda e: collect(e, request(prompt, max_tokens=4, prompt_logprobs=2)))
    first = chunks[0].prompt_logprobs
    assert first is not None and len(first) == 4 and first[0] is None
    assert [lp.token_id for lp in first[1:] if lp is not None] == prompt[1:]
    assert all(lp is not None and lp.logprob < 0 and len(lp.top) == 2 for lp in first[1:])
    assert all(c.prompt_logprobs is None for c in chunks[1:])
    [echo] = run(lambda e: collect(e, request(prompt, max_tokens=0, prompt_logprobs=0)))
    assert echo.finish_reason is FinishReason.LENGTH and echo.token_ids == [] and echo.error is None
    assert echo.prompt_logprobs is not None and len(echo.prompt_logprobs) == 4
    assert all(lp is None or lp.top == [] for lp in echo.prompt_logprobs)
